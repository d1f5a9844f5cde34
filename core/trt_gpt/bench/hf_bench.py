"""The same workload on HF transformers `generate`, for side-by-side numbers in one process.

HF has no in-flight batching: requests run in static batches of `batch_size`. Where it works the
model uses a static KV cache and a `torch.compile`d forward; otherwise eager.
"""
from __future__ import annotations

import time
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import TrtGptError
from ..checkpoint import torch_dtype
from .workload import RequestTiming, Workload, summarize


def hf_twin(cfg: ModelConfig) -> Any:
    """An HF model of the same shape as `cfg` (random weights): GPT-2, GPTBigCode (MQA) or StarCoder2 (RoPE)."""
    import transformers as tf

    common = dict(vocab_size=cfg.vocab_size)
    if cfg.position_embedding_type == "rope_gpt_neox":
        hf_cfg = tf.Starcoder2Config(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
                                     num_attention_heads=cfg.num_attention_heads,
                                     num_key_value_heads=cfg.num_key_value_heads,
                                     intermediate_size=cfg.intermediate_size, rope_theta=cfg.rotary_base,
                                     max_position_embeddings=cfg.max_position_embeddings,
                                     sliding_window=cfg.sliding_window, **common)
        return tf.Starcoder2ForCausalLM(hf_cfg)
    if cfg.num_key_value_heads == 1:
        hf_cfg = tf.GPTBigCodeConfig(n_embd=cfg.hidden_size, n_layer=cfg.num_hidden_layers,
                                     n_head=cfg.num_attention_heads, n_inner=cfg.intermediate_size,
                                     n_positions=cfg.max_position_embeddings, multi_query=True, **common)
        return tf.GPTBigCodeForCausalLM(hf_cfg)
    if cfg.num_key_value_heads == cfg.num_attention_heads:
        hf_cfg = tf.GPT2Config(n_embd=cfg.hidden_size, n_layer=cfg.num_hidden_layers, n_head=cfg.num_attention_heads,
                               n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings, **common)
        return tf.GPT2LMHeadModel(hf_cfg)
    raise TrtGptError("--compare_hf: no HF twin for this shape (supported: MHA/MQA learned positions, RoPE GQA)")


def _generate(model: Any, ids: torch.Tensor, n: int, compiled: bool) -> torch.Tensor:
    kw: dict = dict(max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0,
                    attention_mask=torch.ones_like(ids))
    if compiled:
        kw["cache_implementation"] = "static"
    return model.generate(ids, **kw)


def _timed(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def run_hf(cfg: ModelConfig, wl: Workload, device: torch.device, batch_size: int, compile: bool,
           warmup: int = 1) -> dict:
    """Returns the same summary as `run_engine`, plus `mode` ('compiled' or 'eager')."""
    torch.manual_seed(0)
    model = hf_twin(cfg).to(device=device, dtype=torch_dtype(cfg.dtype)).eval()
    mode = "eager"
    if compile:
        model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
        mode = "compiled"
        with torch.inference_mode():
            for _ in range(max(warmup, 2)):
                _generate(model, torch.zeros(batch_size, wl.input_len, dtype=torch.long, device=device),
                          wl.output_len, True)
    compiled = mode == "compiled"
    prompts = torch.tensor(wl.prompts(cfg.vocab_size), device=device)
    with torch.inference_mode():
        if not compiled:
            for _ in range(warmup):
                _generate(model, prompts[:batch_size], min(wl.output_len, 8), False)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        timings: list[RequestTiming] = []
        wall = 0.0   # time inside full generate calls only; the TTFT probes run off the clock
        for b in range(0, wl.num_requests, batch_size):
            ids = prompts[b:b + batch_size]
            ttft = _timed(lambda: _generate(model, ids, 1, compiled), device)
            total = _timed(lambda: _generate(model, ids, wl.output_len, compiled), device)
            tpot = (total - ttft) / max(wl.output_len - 1, 1)
            for _ in range(ids.shape[0]):
                times = [wall + ttft + tpot * k for k in range(wl.output_len)]
                timings.append(RequestTiming(arrival=wall, token_times=times))
            wall += total
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return summarize(timings, wall, peak) | {"mode": mode, "batch_size": batch_size}


def _child(conn, cfg_dict: dict, wl: Workload, device: str, batch_size: int, compile: bool) -> None:
    try:
        conn.send(run_hf(ModelConfig.from_dict(cfg_dict), wl, torch.device(device), batch_size, compile))
    except Exception as e:  # reported to the parent as a note, never a crash of the benchmark
        conn.send({"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})


def run_hf_isolated(cfg: ModelConfig, wl: Workload, device: torch.device, batch_size: int, compile: bool,
                    timeout: float = 900) -> dict:
    """`run_hf` in a child process: a crash inside HF or inductor (seen: a segfault in compiled static-cache
    decoding) must not take our own results down. Falls back to eager when the compiled run dies."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for attempt in ([True, False] if compile else [False]):
        parent, child = ctx.Pipe(duplex=False)
        d = cfg.to_dict()
        proc = ctx.Process(target=_child, args=(child, d, wl, str(device), batch_size, attempt))
        proc.start()
        child.close()
        result = parent.recv() if parent.poll(timeout) else {"error": f"no result within {timeout:.0f}s"}
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        if "error" not in result:
            return result
        print(f"note: HF {'compiled' if attempt else 'eager'} run failed ({result['error']}; exit code "
              f"{proc.exitcode})")
    return result
