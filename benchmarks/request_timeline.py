"""Where a batch-1 request's time goes, end to end: the bench loop (`engine_bench.run_engine`'s) untraced,
then the GPU timeline of the same loop under torch.profiler.

Untraced, per request: TTFT, the decode steps' median, and the request's wall time, against the prefill
graph replayed back to back (its pure GPU time) and the decode graph back to back. Traced: the union of
busy GPU intervals per request, split into the prefill's span, decode steps' spans and every idle gap of
at least 5 us, with the kernels either side, so that idle time between phases shows up by name.

Usage: python benchmarks/request_timeline.py ENGINE_DIR [--requests N] [--trace FILE.json.gz]
"""
from __future__ import annotations

import argparse
import gzip
import json
import statistics
import time

import torch

from trt_gpt import LLM, SamplingParams


def replay_ms(graph: torch.cuda.CUDAGraph, n: int = 50) -> float:
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def serve(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> list[dict]:
    """One request at a time, as `trt-gpt bench --concurrency 1` serves them; host timestamps per request."""
    out = []
    for p in prompts:
        t0 = time.perf_counter()
        seq = llm.add_request(p, params)
        times = []
        while seq.finish_reason is None:
            for s in llm.step():
                if s is seq:
                    times.append(time.perf_counter())
        t1 = time.perf_counter()
        steps = [b - a for a, b in zip(times, times[1:])]
        out.append({"ttft_ms": (times[0] - t0) * 1e3, "tpot_ms": (times[-1] - times[0]) * 1e3 / (len(times) - 1),
                    "step_p50_ms": statistics.median(steps) * 1e3, "wall_ms": (t1 - t0) * 1e3,
                    "first_steps_ms": [round(s * 1e3, 3) for s in steps[:3]],
                    "last_steps_ms": [round(s * 1e3, 3) for s in steps[-2:]]})
    return out


def gpu_timeline(path: str) -> None:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = [e for e in json.load(f)["traceEvents"]
                  if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    events.sort(key=lambda e: e["ts"])
    # decode steps start at their input stage kernel (staged graphs) or embedding kernel
    is_start = [("_stage_kernel" in e["name"]) or ("_embed_kernel" in e["name"] and
                                                  (i == 0 or "_stage_kernel" not in events[i - 1]["name"]))
                for i, e in enumerate(events)]
    gaps, reach, prev = [], events[0]["ts"], events[0]
    busy = 0.0
    for e in events:
        if e["ts"] > reach + 5:
            gaps.append((e["ts"] - reach, prev["name"][:50], e["name"][:50]))
        if e["ts"] + e["dur"] > reach:
            busy += e["ts"] + e["dur"] - max(reach, e["ts"])
            reach, prev = e["ts"] + e["dur"], e
    span = reach - events[0]["ts"]
    print(f"timeline: {len(events)} GPU events over {span / 1e3:.2f} ms, busy {busy / 1e3:.2f} ms, "
          f"idle (gaps > 5 us) {sum(g for g, *_ in gaps) / 1e3:.2f} ms in {len(gaps)} gaps")
    by_pair: dict[tuple[str, str], list[float]] = {}
    for g, a, b in gaps:
        by_pair.setdefault((a, b), []).append(g)
    for (a, b), gs in sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[:12]:
        print(f"timeline:   idle {sum(gs) / 1e3:7.3f} ms total, x{len(gs):4d}, median {statistics.median(gs):7.1f} us: "
              f"after {a} -> before {b}")
    # prefill regions: runs of events between two decode steps that hold no decode start and > 20 kernels
    starts = [i for i, s in enumerate(is_start) if s]
    for a, b in zip(starts, starts[1:]):
        seg = events[a:b]
        if len(seg) > 250:   # a decode step of GPT-2 medium is ~130 kernels; longer: a prefill inside
            names = [e["name"] for e in seg]
            # the decode graph's last kernel: the argmax finish
            ends = [i for i, n in enumerate(names[:300]) if "_finish_argmax" in n]
            if not ends:
                print(f"timeline: a {len(seg)}-event step without the argmax finish kernel: not split")
                continue
            last_dec = ends[-1]
            pre = seg[last_dec + 1:]
            p_first = next(e for e in pre if e["cat"] == "kernel")
            p_end = max(e["ts"] + e["dur"] for e in pre)
            print(f"timeline: prefill region: {len(pre)} events, first kernel {p_first['name'][:40]}, "
                  f"span {(p_end - p_first['ts']) / 1e3:.3f} ms; gap before it "
                  f"{(p_first['ts'] - (seg[last_dec]['ts'] + seg[last_dec]['dur'])) / 1e3:.3f} ms, "
                  f"gap after it {(events[b]['ts'] - p_end) / 1e3:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine_dir")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--input_len", type=int, default=128)
    ap.add_argument("--output_len", type=int, default=128)
    ap.add_argument("--trace", default="")
    args = ap.parse_args()
    llm = LLM(args.engine_dir)
    params = SamplingParams(max_tokens=args.output_len, min_tokens=args.output_len, end_id=None)
    vocab = llm.cfg.vocab_size
    prompts = [[(7 * i + 13 * r) % vocab for i in range(args.input_len)] for r in range(args.requests + 3)]
    serve(llm, prompts[:3], params)          # warm-up: the prefill graph is captured on its second sight
    cuda = llm.engine.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
    rows = serve(llm, prompts[3:], params)
    for r in rows:
        print("request:", json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
    per_req = statistics.median(r["wall_ms"] for r in rows)
    print(f"requests: median wall {per_req:.3f} ms -> {args.output_len / per_req * 1e3:.0f} tok/s; TTFT p50 "
          f"{statistics.median(r['ttft_ms'] for r in rows):.3f} ms, TPOT p50 "
          f"{statistics.median(r['tpot_ms'] for r in rows):.4f} ms")
    if not cuda:
        return
    pg = llm.executor.prefill_graphs
    for key, (_, graph, _) in (pg.entries.items() if pg is not None else []):
        if graph is not None:
            print(f"prefill graph {key}: {replay_ms(graph):.4f} ms back to back")
    g = llm.executor.graphs
    for key, (graph, _) in sorted(g.graphs.items()):
        if key[0] == 1 and graph is not None and key[1] <= 2 * (args.input_len + args.output_len):
            print(f"decode graph {key} (batch, context cap, mirror): {replay_ms(graph, 200):.4f} ms back to back")
    if args.trace:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            serve(llm, prompts[3:5], params)
            torch.cuda.synchronize()
        prof.export_chrome_trace(args.trace)
        gpu_timeline(args.trace)


if __name__ == "__main__":
    main()
