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
        try:
            model.forward = torch.compile(model.forward, mode="reduce-overhead", fullgraph=True)
            mode = "compiled"
            with torch.inference_mode():
                for _ in range(max(warmup, 2)):
                    _generate(model, torch.zeros(batch_size, wl.input_len, dtype=torch.long, device=device),
                              wl.output_len, True)
        except Exception as e:  # compile support varies by model and version: fall back, and say so
            print(f"note: HF compiled path failed ({type(e).__name__}); using eager")
            model = hf_twin(cfg).to(device=device, dtype=torch_dtype(cfg.dtype)).eval()
            mode = "eager"
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
