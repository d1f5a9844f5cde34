"""Drive the in-flight batching runtime with a workload and time every token of every request."""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import torch

from ..runtime.sampling_params import SamplingParams
from .workload import RequestTiming, Workload, summarize


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_engine(llm: Any, wl: Workload, warmup: int = 2, progress: Callable[[int], None] | None = None,
               loras: list[str] | None = None) -> dict:
    """Serve `wl` with `llm` (a trt_gpt LLM); every request generates exactly `output_len` tokens. With
    `loras`, request i uses adapter loras[i % len(loras)] (bench/lora_mix.py)."""
    device = llm.engine.device
    params = SamplingParams(max_tokens=wl.output_len, min_tokens=wl.output_len, end_id=None)
    vocab = llm.cfg.vocab_size
    if warmup:
        # the same loop and concurrency as the timed run, so every kernel specialisation the timed run
        # needs (e.g. a one-sequence prefill at concurrency 1) is compiled before the clock starts
        run_engine(llm, dataclasses.replace(wl, num_requests=warmup, seed=wl.seed + 7, request_rate=None),
                   warmup=0, loras=loras)
    prompts, arrivals = wl.prompts(vocab), wl.arrivals()
    limit = wl.concurrency or wl.num_requests
    timings: dict[int, RequestTiming] = {}
    seqs = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _sync(device)
    start = time.perf_counter()
    nxt, done = 0, 0
    in_flight: set[int] = set()
    while done < wl.num_requests:
        now = time.perf_counter() - start
        while nxt < wl.num_requests and len(in_flight) < limit and arrivals[nxt] <= now:
            seq = llm.add_request(prompts[nxt], dataclasses.replace(params, lora=loras[nxt % len(loras)])
                                  if loras else params)
            timings[seq.request_id] = RequestTiming(arrival=max(arrivals[nxt], now) if wl.request_rate else now)
            in_flight.add(seq.request_id)
            seqs.append(seq)
            nxt += 1
        if not in_flight:
            time.sleep(max(0.0, min(arrivals[nxt] - now, 0.01)))
            continue
        stepped = llm.step()
        t = time.perf_counter() - start
        for seq in stepped:
            timings[seq.request_id].token_times.append(t)
            if seq.finish_reason is not None and seq.request_id in in_flight:
                in_flight.discard(seq.request_id)
                done += 1
                if progress:
                    progress(done)
    wall = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return summarize(list(timings.values()), wall, peak)
