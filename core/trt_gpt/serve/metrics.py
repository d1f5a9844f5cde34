"""Prometheus metrics of the server (`GET /metrics`), in a registry of the app's own.

Gauges read the engine's state when scraped (lengths of the scheduler's queues and the block allocator's
free list, which other threads may read at any time); counters and histograms are fed by the request
handlers as updates arrive.
"""
from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
                   30.0, 60.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self, llm: Any, num_in_flight: Any):
        r = self.registry = CollectorRegistry()
        sched, cache = llm.scheduler, llm.cache
        Gauge("trtgpt_requests_running", "Requests in the running batch (every choice of a request counts).",
              registry=r).set_function(lambda: len(sched.running))
        Gauge("trtgpt_requests_waiting", "Requests waiting for a place in the batch.",
              registry=r).set_function(lambda: len(sched.waiting))
        Gauge("trtgpt_requests_in_flight", "Requests accepted by the server and not finished.",
              registry=r).set_function(num_in_flight)
        Gauge("trtgpt_kv_cache_blocks_used", "KV cache blocks held by requests.",
              registry=r).set_function(lambda: cache.num_blocks - cache.allocator.num_free)
        Gauge("trtgpt_kv_cache_blocks_total", "KV cache blocks in the pool.",
              registry=r).set_function(lambda: cache.num_blocks)
        self.prompt_tokens = Counter("trtgpt_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.generation_tokens = Counter("trtgpt_generation_tokens", "Tokens generated.", registry=r)
        self.requests = Counter("trtgpt_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=r)
        self.finished = Counter("trtgpt_request_finished", "Generations ended, by finish reason.",
                                ["finish_reason"], registry=r)
        self.rejected = Counter("trtgpt_requests_rejected", "Requests refused with 429 (queue full).", registry=r)
        self.ttft = Histogram("trtgpt_time_to_first_token_seconds", "From request arrival to its first token.",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("trtgpt_time_per_output_token_seconds",
                              "Mean time between tokens of a request after the first.", buckets=TPOT_BUCKETS,
                              registry=r)
        self.e2e = Histogram("trtgpt_e2e_request_latency_seconds", "From request arrival to its last token.",
                             buckets=LATENCY_BUCKETS, registry=r)

    def observe_choice(self, arrival: float, first: float | None, last: float | None, num_tokens: int,
                       finish_reason: str | None) -> None:
        """One generation (a choice) has ended: its latencies and token count."""
        self.generation_tokens.inc(num_tokens)
        self.finished.labels(finish_reason or "none").inc()
        if first is not None:
            self.ttft.observe(first - arrival)
            if last is not None and num_tokens > 1 and last > first:
                self.tpot.observe((last - first) / (num_tokens - 1))
        if last is not None:
            self.e2e.observe(last - arrival)

    def render(self) -> bytes:
        return generate_latest(self.registry)
