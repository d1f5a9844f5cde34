"""Synthetic request streams and the latency statistics of a run."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Workload:
    num_requests: int
    input_len: int
    output_len: int
    concurrency: int | None = None        # at most this many requests in flight (closed loop)
    request_rate: float | None = None     # Poisson arrivals per second (open loop); None: all at t=0
    seed: int = 0

    def prompts(self, vocab_size: int) -> list[list[int]]:
        rng = np.random.default_rng(self.seed)
        return rng.integers(0, vocab_size, (self.num_requests, self.input_len)).tolist()

    def arrivals(self) -> list[float]:
        if not self.request_rate:
            return [0.0] * self.num_requests
        rng = np.random.default_rng(self.seed + 1)
        return np.cumsum(rng.exponential(1.0 / self.request_rate, self.num_requests)).tolist()


@dataclass
class RequestTiming:
    arrival: float
    token_times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        return self.token_times[0] - self.arrival

    @property
    def tpot(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None


def percentiles(values: list[float], ps=(50, 90, 99)) -> dict[str, float]:
    if not values:
        return {f"p{p}": float("nan") for p in ps}
    arr = np.asarray(values)
    return {f"p{p}": float(np.percentile(arr, p)) for p in ps} | {"mean": float(arr.mean())}


def summarize(timings: list[RequestTiming], wall: float, peak_mem: int | None) -> dict:
    out_tokens = sum(len(t.token_times) for t in timings)
    return {
        "num_requests": len(timings),
        "output_tokens": out_tokens,
        "wall_s": wall,
        "output_tok_per_s": out_tokens / wall if wall > 0 else float("nan"),
        "requests_per_s": len(timings) / wall if wall > 0 else float("nan"),
        "ttft_ms": {k: v * 1e3 for k, v in percentiles([t.ttft for t in timings]).items()},
        "tpot_ms": {k: v * 1e3 for k, v in percentiles([t.tpot for t in timings if t.tpot is not None]).items()},
        "peak_gpu_mem_gib": peak_mem / 2**30 if peak_mem is not None else None,
    }
