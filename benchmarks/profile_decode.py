"""Where a decode step's time goes (GPU): scheduler, the executor step (packing + graph replay), sampling.

Usage: python benchmarks/profile_decode.py ENGINE_DIR BATCH [--trace]
Prints per-phase milliseconds (each phase synchronised) and, with --trace, torch.profiler's top ops.
"""
from __future__ import annotations

import sys
import time

import torch

from trt_gpt import LLM, SamplingParams


def ms(t0: float) -> float:
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1e3


def main() -> None:
    engine, batch = sys.argv[1], int(sys.argv[2])
    llm = LLM(engine, max_batch_size=max(batch, 1))
    g = llm.executor.graphs
    print(f"backend={llm.engine.model.backend.name} graphs={g.sizes if g else None}")
    overlap, llm.overlap = llm.overlap, None   # phases are timed on the synchronous path
    params = SamplingParams(max_tokens=400, min_tokens=400, end_id=None)
    for _ in range(batch):
        llm.add_request(list(range(1, 129)), params)
    while any(s.in_prefill for s in llm.scheduler.running) or llm.scheduler.waiting:
        llm.step()
    for _ in range(5):
        llm.step()
    phases = {"schedule": 0.0, "executor.step": 0.0, "advance": 0.0}
    n = 30
    for _ in range(n):
        t = time.perf_counter(); b = llm.scheduler.schedule(); phases["schedule"] += ms(t)
        t = time.perf_counter(); logits = llm.executor.step(b); phases["executor.step"] += ms(t)
        t = time.perf_counter(); llm._advance(b, logits); phases["advance"] += ms(t)
    print("  ".join(f"{k}={v / n:.3f}ms" for k, v in phases.items()))
    t = time.perf_counter()
    for _ in range(n):
        llm.step()
    print(f"llm.step (synchronous, unsynchronised loop) = {ms(t) / n:.3f} ms/step, batch {batch}")
    if overlap is not None:
        llm.overlap = overlap
        for _ in range(3):
            llm.step()
        t = time.perf_counter()
        for _ in range(n):
            llm.step()
        print(f"llm.step (overlapped decoding) = {ms(t) / n:.3f} ms/step, batch {batch}")
    if "--trace" in sys.argv:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                llm.step()
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12, max_name_column_width=50))
        print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15, max_name_column_width=50))


if __name__ == "__main__":
    main()
