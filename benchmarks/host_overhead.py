"""Host (Python) cost of one in-flight-batching decode step, measured on CPU with a tiny random engine.

The model is tiny (1 layer, hidden 32) so the forward is cheap and the host phases dominate: the
scheduler, input packing, sampling + stop checks. These are pure Python/numpy/CPU-torch work whose
cost is the same whether the forward later runs on a GPU or not.

Usage: python benchmarks/host_overhead.py [--batch 256 1] [--steps 50] [--repeats 3] [--fixed-logits]
Prints, per batch size, the median microseconds per step (and per request) of each phase.

The CPU forward streams the whole KV cache through the CPU's caches, so the host phase after it
starts cold, which a GPU forward would not do. `--fixed-logits` replaces the model call with a fixed
random logits tensor (the host phases do not read the KV cache) to show the host cost without that
penalty; the tokens still come from the sampler, so every phase does its usual work.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, ModelConfig
from trt_gpt.runtime.llm import LLM
from trt_gpt.runtime.sampling_params import SamplingParams

PHASES = ("schedule", "build_inputs", "forward", "advance", "llm.step")
PROMPT_LEN, MAX_TOKENS = 32, 200


def make_engine(out: Path) -> Path:
    cfg = ModelConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                      max_position_embeddings=512)
    build(out, BuildConfig(max_batch_size=256, max_input_len=64, max_seq_len=512, tokens_per_block=16),
          model_config=cfg)
    return out


def start_batch(llm: LLM, batch: int) -> list:
    """`batch` greedy requests that never stop early, stepped until every one of them is decoding."""
    params = SamplingParams(max_tokens=MAX_TOKENS, min_tokens=MAX_TOKENS, end_id=None)
    seqs = [llm.add_request([(7 * i + j) % 1000 for j in range(PROMPT_LEN)], params) for i in range(batch)]
    sched = llm.scheduler
    while sched.waiting or any(s.in_prefill for s in sched.running):
        llm.step()
    for _ in range(3):    # warm-up decode steps
        llm.step()
    return seqs


@torch.inference_mode()   # as in LLM.step: the sampler edits the executor's logits in place
def phased_step(llm: LLM, times: dict[str, list[float]]) -> None:
    """One decode step, phase by phase (the same work as LLM.step with a single attention window)."""
    ex = llm.executor
    t0 = time.perf_counter()
    batch = llm.scheduler.schedule()
    t1 = time.perf_counter()
    ids, pos, meta, _ = ex.build_inputs(batch)
    t2 = time.perf_counter()
    logits = ex.forward(ids, pos, meta, ex._rows, None)
    for seq, n in batch:                 # what Executor.step does after its forward
        seq.num_computed += n
    t3 = time.perf_counter()
    llm._advance(batch, logits)
    t4 = time.perf_counter()
    for k, a, b in (("schedule", t0, t1), ("build_inputs", t1, t2), ("forward", t2, t3), ("advance", t3, t4)):
        times[k].append(b - a)


def measure(llm: LLM, batch: int, steps: int, repeats: int) -> dict[str, float]:
    """Median seconds per step of each phase over `repeats` rounds of `steps` phased + `steps` whole steps."""
    times: dict[str, list[float]] = {k: [] for k in PHASES}
    for _ in range(repeats):
        seqs = start_batch(llm, batch)
        for _ in range(steps):
            phased_step(llm, times)
        for _ in range(steps):
            t = time.perf_counter()
            llm.step()
            times["llm.step"].append(time.perf_counter() - t)
        if any(s.is_finished for s in seqs):
            raise RuntimeError("requests finished during timing: raise MAX_TOKENS or lower --steps")
        for s in seqs:
            llm.cancel(s)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[256, 1])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fixed-logits", action="store_true", help="skip the model: a fixed logits tensor")
    args = ap.parse_args()
    if 2 * args.steps + 3 >= MAX_TOKENS:
        ap.error(f"--steps must be below {(MAX_TOKENS - 3) // 2}")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        llm = LLM(make_engine(Path(tmp) / "engine"), device="cpu")
        if args.fixed_logits:
            fixed = torch.randn(max(args.batch), llm.cfg.vocab_size)
            llm.executor.forward = lambda ids, pos, meta, rows, window: fixed[:meta.block_tables.shape[0]]
        print(f"{'batch':>5} {'phase':>13} {'us/step':>10} {'us/request':>11}")
        for b in args.batch:
            res = measure(llm, b, args.steps, args.repeats)
            for k in PHASES:
                us = res[k] * 1e6
                print(f"{b:>5} {k:>13} {us:>10.1f} {us / b:>11.2f}")
            host = sum(res[k] for k in ("schedule", "build_inputs", "advance")) * 1e6
            print(f"{b:>5} {'host total':>13} {host:>10.1f} {host / b:>11.2f}")


if __name__ == "__main__":
    main()
