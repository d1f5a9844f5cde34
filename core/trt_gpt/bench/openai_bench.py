"""Drive a running OpenAI-compatible server (`trt-gpt serve`, or any other) with the bench workload.

Every request is a streamed /v1/completions of `input_len` token ids asking for exactly `output_len` tokens
(`min_tokens` and `ignore_eos`, greedy), sent with the workload's arrivals and concurrency. TTFT is the
time to the first chunk with text; TPOT spreads the rest of the request's time over its other tokens
(token counts from the final `usage` chunk). The report has the engine bench's shape.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Callable

from .workload import Workload, percentiles

DEFAULT_VOCAB = 1000    # prompt ids below this are valid in any real vocabulary


async def _one(client, url: str, headers: dict, body: dict) -> dict:
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    async with client.stream("POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            text = (await r.aread()).decode(errors="replace")
            raise RuntimeError(f"HTTP {r.status_code}: {text[:200]}")
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            now = time.perf_counter()
            if chunk.get("choices"):
                if chunk["choices"][0].get("text"):
                    first = first or now
                    last = now
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
    return {"start": t0, "first": first, "last": last, "tokens": tokens}


async def _run(wl: Workload, base_url: str, model: str | None, api_key: str | None, vocab: int,
               progress: Callable[[int], None] | None) -> dict:
    import httpx

    url = base_url.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    prompts, arrivals = wl.prompts(vocab), wl.arrivals()
    limit = asyncio.Semaphore(wl.concurrency or wl.num_requests)
    results: list[dict] = []
    errors: list[str] = []
    done = 0
    conns = httpx.Limits(max_connections=(wl.concurrency or wl.num_requests) + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=conns) as client:
        start = time.perf_counter()

        async def request(i: int) -> None:
            nonlocal done
            delay = arrivals[i] - (time.perf_counter() - start)
            if delay > 0:
                await asyncio.sleep(delay)
            body = {"prompt": prompts[i], "max_tokens": wl.output_len, "min_tokens": wl.output_len,
                    "ignore_eos": True, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            if model:
                body["model"] = model
            async with limit:
                try:
                    results.append(await _one(client, url, headers, body))
                except Exception as e:  # noqa: BLE001  (counted and reported, the run goes on)
                    errors.append(f"{type(e).__name__}: {e}")
            done += 1
            if progress:
                progress(done)

        await asyncio.gather(*(request(i) for i in range(wl.num_requests)))
        wall = time.perf_counter() - start
    ok = [r for r in results if r["first"] is not None]
    out_tokens = sum(r["tokens"] for r in results)
    tpots = [(r["last"] - r["first"]) / (r["tokens"] - 1) for r in ok if r["tokens"] > 1]
    return {
        "num_requests": len(results), "errors": len(errors), "first_errors": errors[:3],
        "output_tokens": out_tokens, "wall_s": wall,
        "output_tok_per_s": out_tokens / wall if wall > 0 else float("nan"),
        "requests_per_s": len(results) / wall if wall > 0 else float("nan"),
        "ttft_ms": {k: v * 1e3 for k, v in percentiles([r["first"] - r["start"] for r in ok]).items()},
        "tpot_ms": {k: v * 1e3 for k, v in percentiles(tpots).items()},
        "peak_gpu_mem_gib": None,
    }


def run_openai(wl: Workload, base_url: str, model: str | None = None, api_key: str | None = None,
               vocab: int = DEFAULT_VOCAB, warmup: int = 2, progress: Callable[[int], None] | None = None) -> dict:
    """Serve `wl` through the server at `base_url`; the engine bench's report keys plus `errors`."""
    if warmup:
        import dataclasses

        asyncio.run(_run(dataclasses.replace(wl, num_requests=warmup, seed=wl.seed + 7, request_rate=None),
                         base_url, model, api_key, vocab, None))
    return asyncio.run(_run(wl, base_url, model, api_key, vocab, progress))
