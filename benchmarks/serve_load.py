"""Load test of `trt-gpt serve`: N concurrent streaming clients for T seconds.

Each client repeats: a seeded, sampled (temperature 1, top_k 40), streamed /v1/completions (include_usage), then the same request
non-streamed; the streamed text and token count must equal the non-streamed ones (a lost or duplicated
token, or a delta from another request, would differ). Counts errors (HTTP, a stream without [DONE], a
mismatch), samples the server's resident memory every second, and prints a JSON report and a one-line
summary. Starts the server itself from --engine_dir (on CPU by default), or drives --url with --pid.

    python benchmarks/serve_load.py --engine_dir ENGINE --clients 64 --duration 20
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROMPTS = ["The quick brown fox", "Once upon a time", "In the beginning the", "Numbers: 1, 2, 3,",
           "Dear diary, today", "Ünïcödé and 東京 🙂 text", "def main():", "A"]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def stream(client: httpx.AsyncClient, url: str, body: dict) -> tuple[str, int]:
    text, tokens, done = "", -1, False
    async with client.stream("POST", url, json=body | {"stream": True, "stream_options": {"include_usage": True}}) as r:
        if r.status_code != 200:
            raise RuntimeError(f"stream: HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    text += chunk["choices"][0]["text"]
                else:
                    tokens = chunk["usage"]["completion_tokens"]
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    return text, tokens


async def client_loop(i: int, base: str, deadline: float, stats: dict, max_tokens: tuple[int, int]) -> None:
    rng = random.Random(i)
    url = base + "/v1/completions"
    async with httpx.AsyncClient(timeout=300) as client:
        k = 0
        while time.monotonic() < deadline:
            body = {"prompt": rng.choice(PROMPTS), "max_tokens": rng.randint(*max_tokens), "temperature": 1.0,
                    "top_k": 40, "seed": i * 100_000 + k}
            k += 1
            try:
                s_text, s_tokens = await stream(client, url, body)
                r = await client.post(url, json=body)
                if r.status_code != 200:
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
                out = r.json()
                ok = out["choices"][0]["text"] == s_text and out["usage"]["completion_tokens"] == s_tokens
                stats["requests"] += 2
                stats["tokens"] += 2 * s_tokens
                if not ok:
                    stats["mismatches"] += 1
                    stats["examples"].append({"body": body, "stream": s_text, "plain": out["choices"][0]["text"]})
            except Exception as e:  # noqa: BLE001  (counted; the load goes on)
                stats["errors"] += 1
                stats["examples"].append({"error": f"{type(e).__name__}: {e}"})


async def sample_rss(pid: int, stop: asyncio.Event, samples: list) -> None:
    while not stop.is_set():
        samples.append(rss_mib(pid))
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass
    samples.append(rss_mib(pid))


async def run(base: str, pid: int, clients: int, duration: float, max_tokens: tuple[int, int]) -> dict:
    stats = {"requests": 0, "tokens": 0, "errors": 0, "mismatches": 0, "examples": []}
    rss: list = []
    start = time.monotonic()
    deadline = start + duration
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, stop, rss))
    await asyncio.gather(*(client_loop(i, base, deadline, stats, max_tokens) for i in range(clients)))
    wall = time.monotonic() - start
    stop.set()
    await sampler
    rss = [round(r, 1) for r in rss if r is not None]
    return {"clients": clients, "duration_s": duration, "wall_s": round(wall, 1), "requests": stats["requests"],
            "output_tokens": stats["tokens"], "output_tok_per_s": round(stats["tokens"] / wall, 1),
            "errors": stats["errors"], "mismatches": stats["mismatches"], "examples": stats["examples"][:3],
            "rss_mib": {"first": rss[0] if rss else None, "max": max(rss) if rss else None,
                        "last": rss[-1] if rss else None,
                        "every_5s": rss[::5]}}


def start_server(engine: str, device: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).parent / "trt-gpt"
    proc = subprocess.Popen([str(exe), "serve", "--engine_dir", engine, "--port", str(port), "--device", device,
                             "--log_level", "warning", *extra], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"serve exited with {proc.returncode}")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("serve did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine_dir", "--engine-dir")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--url", help="a running server (with --pid for its memory)")
    ap.add_argument("--pid", type=int)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--min_tokens", "--min-tokens", type=int, default=8)
    ap.add_argument("--max_tokens", "--max-tokens", type=int, default=32)
    ap.add_argument("--serve_args", "--serve-args", default="", help="extra flags for trt-gpt serve")
    ap.add_argument("--output", help="also write the JSON report here")
    a = ap.parse_args()
    if (a.engine_dir is None) == (a.url is None):
        ap.error("give --engine_dir (the script starts the server) or --url")
    proc = None
    if a.engine_dir:
        proc, base = start_server(a.engine_dir, a.device, a.serve_args.split())
        pid = proc.pid
    else:
        base, pid = a.url.rstrip("/"), a.pid or 0
    try:
        report = asyncio.run(run(base, pid, a.clients, a.duration, (a.min_tokens, a.max_tokens)))
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(120)
    report["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                         "device": a.device, "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if a.output:
        Path(a.output).write_text(text + "\n")
    rss = report["rss_mib"]
    print(f"serve_load: {a.clients} clients x {a.duration:.0f} s: {report['requests']} requests, "
          f"{report['output_tokens']} tokens ({report['output_tok_per_s']} tok/s), {report['errors']} errors, "
          f"{report['mismatches']} stream/plain mismatches, RSS {rss['first']} -> {rss['last']} MiB "
          f"(max {rss['max']})", file=sys.stderr)
    if report["errors"] or report["mismatches"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
