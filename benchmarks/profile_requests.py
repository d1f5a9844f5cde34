"""Per-step timeline of requests served one after another (concurrency 1), to find time spent between
requests rather than inside decode steps. Usage: python benchmarks/profile_requests.py ENGINE_DIR"""
from __future__ import annotations

import sys
import time

import torch

from trt_gpt import LLM, SamplingParams


def main() -> None:
    llm = LLM(sys.argv[1], max_batch_size=8)
    params = SamplingParams(max_tokens=128, min_tokens=128, end_id=None)
    llm.generate([list(range(1, 129))], params)
    for r in range(2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        seq = llm.add_request(list(range(2 + r, 130 + r)), params)
        t_add = time.perf_counter() - t0
        steps = []
        while seq.finish_reason is None:
            t = time.perf_counter()
            llm.step()
            torch.cuda.synchronize()
            steps.append((time.perf_counter() - t) * 1e3)
        total = (time.perf_counter() - t0) * 1e3
        print(f"request {r}: add {t_add * 1e3:.2f} ms, {len(steps)} steps, first steps "
              f"{[round(s, 2) for s in steps[:4]]} ms, median {sorted(steps)[len(steps) // 2]:.2f} ms, "
              f"max {max(steps):.2f} ms, sum {sum(steps):.1f} ms, wall {total:.1f} ms")
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        llm.generate([list(range(5, 133))], params)
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=14, max_name_column_width=45))


if __name__ == "__main__":
    main()
