"""Tune the fused GEMV tiles of a batch-1 decode step *in place*: inside the engine's real CUDA graph (GPU).

`benchmarks/gemv.py` times each GEMV alone, but in a decode step the kernels overlap: with programmatic
dependent launch a GEMV starts while its predecessor drains and prefetches its first weight tile, so the
tile that is fastest alone (small tiles, many waves) is not the one that hides the most of its
neighbours' ramp-up and drain (fewer, larger tiles loaded before `gdc_wait`). This script times the
whole batch-1 decode graph of an engine (embedding, every layer, lm_head, argmax) and, one GEMV shape at
a time (coordinate descent), replaces that shape's tile config, recaptures the graph and keeps the
fastest. It writes the result as a `TRT_GPT_GEMV_CONFIGS` file and prints `GEMV_CONFIGS` lines.

    python3 benchmarks/tune_decode.py ENGINE_DIR --out gemv.json [--budget-s 240] [--rounds 1]

The engine needs random weights only (`trt-gpt config` + `trt-gpt build`). The graph replays one step
with a 128-token prompt's context, back to back; the median over repeats is reported.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import time

import torch
import triton

from trt_gpt import LLM, SamplingParams
from trt_gpt.kernels import gemv_configs
from trt_gpt.kernels.gemv_configs import GemvConfig, gemv_config


def candidates(n: int, k: int) -> list[GemvConfig]:
    """Tiles of 4K-32K elements, K-blocks of 512, 1024 or the whole row, warps giving 16-64 elements a thread,
    and where a row takes several K-blocks, a hand double-buffered loop or two K-blocks loaded before the wait.

    Whole-row tiles (block_k >= K) load a program's entire weight slice before `gdc_wait`: under PDL the
    slice streams in while the previous kernel runs. Grids below 64 programs leave too many SMs idle.
    """
    kp = gemv_configs.next_pow2(k)
    out = []
    for bk in sorted({512, 1024, min(kp, 4096)}):
        if bk > kp:
            continue
        for tile in (4096, 8192, 16384, 32768):
            bn = tile // bk
            if bn < 1 or triton.cdiv(n, bn) < 64:
                continue
            for warps in (4, 8, 16):
                per_thread = tile // (32 * warps)
                if 16 <= per_thread <= 64:
                    # stages 2: hand double-buffered K loop; prefetch 2: two K tiles loaded before the
                    # wait (both only meaningful with more than one K tile)
                    out.append(GemvConfig(bn, bk, warps, 1))
                    if bk < k:
                        out += [GemvConfig(bn, bk, warps, 2), GemvConfig(bn, bk, warps, 1, prefetch_tiles=2)]
    return out


class StepTimer:
    """Median ms of one replay of the batch-1 decode graph, recaptured after each config change."""

    def __init__(self, llm: LLM, replays: int = 60, repeats: int = 3):
        self.llm, self.replays, self.repeats = llm, replays, repeats
        self.g = llm.executor.graphs

    def key(self) -> tuple[int, int]:
        """The graph this step replays in serving."""
        return self.g.key_for(1, int(self.g.ctx[0]))

    def __call__(self) -> float:
        g = self.g
        key = self.key()
        g.recapture(key)                    # warm-up forwards compile the new kernels, then capture
        graph = g.graphs[g.entry(key)][0]
        for _ in range(10):
            graph.replay()
        times = []
        for _ in range(self.repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(self.replays):
                graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / self.replays)
        return statistics.median(times)


def model_shapes(llm: LLM) -> dict[str, tuple[int, int]]:
    model = llm.engine.model
    layer = model.transformer.layers[0]
    shapes = {"qkv": layer.attention.qkv.weight.shape, "dense": layer.attention.dense.weight.shape,
              "fc": layer.mlp.fc.weight.shape, "proj": layer.mlp.proj.weight.shape,
              "lm_head": model.lm_head.weight.shape}
    return {name: (int(s[0]), int(s[1])) for name, s in shapes.items()}


def write_json(path: str, obj: object) -> None:
    """Write through a temporary file and rename, so a killed run never leaves a half-written table."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def split_sweep(timer: StepTimer, spec: str) -> None:
    """Step time against the decode attention's split size, KV tile and warps (patched in triton_decode);
    `auto` is the built-in rule."""
    from trt_gpt.kernels import triton_decode as td

    default_tiling, default_config, one_tile_warps = td.split_tiling, td._decode_config, td.ONE_TILE_WARPS
    items = [item.strip() for item in spec.split(",") if item.strip()]
    seen: dict[str, list[float]] = {item: [] for item in items}
    for _ in range(2):
        for item in items:
            if item != "auto":
                min_tokens, block_n, *warps = (int(v) for v in item.split(":"))
                td.split_tiling = lambda *a, mt=min_tokens, bn=block_n: (bn, mt)
                if warps:
                    td._decode_config = lambda bd, dev, w=warps[0]: (default_config(bd, dev)[0], w,
                                                                      default_config(bd, dev)[2])
                    td.ONE_TILE_WARPS = warps[0]
            seen[item].append(timer())
            td.split_tiling, td._decode_config, td.ONE_TILE_WARPS = default_tiling, default_config, one_tile_warps
    for item, times in seen.items():
        print(f"decode split:tile[:warps] {item:12s}: " + ", ".join(f"{t:.4f}" for t in times) + " ms/step",
              flush=True)


def interleaved(timer: StepTimer, label: str, settings: dict) -> None:
    """Step time under each setting (name -> a function applying it), twice interleaved; the first applies last."""
    seen: dict[str, list[float]] = {name: [] for name in settings}
    for _ in range(2):
        for name, apply in settings.items():
            apply()
            seen[name].append(timer())
    next(iter(settings.values()))()
    for name, times in seen.items():
        print(f"{label} {name:20s}: " + ", ".join(f"{t:.4f}" for t in times) + " ms/step", flush=True)


def argmax_ab(timer: StepTimer, llm: LLM) -> None:
    """Step time with the greedy picks from the lm_head's epilogue, and from torch.argmax."""
    fused = llm.engine.model.fused
    interleaved(timer, "picks from", {"the lm_head epilogue": lambda: setattr(fused, "fuse_argmax", True),
                                      "torch.argmax": lambda: setattr(fused, "fuse_argmax", False)})


def mha_ab(timer: StepTimer) -> None:
    """Step time with multi-head decode attention in registers (triton_decode.MHA_WITHOUT_DOT, the
    default) and through the grouped path's 16-row padded tensor-core dots."""
    from trt_gpt.kernels import triton_decode as td

    interleaved(timer, "MHA attention", {"multiply-and-sum": lambda: setattr(td, "MHA_WITHOUT_DOT", True),
                                         "padded dots": lambda: setattr(td, "MHA_WITHOUT_DOT", False)})


def gap_probe(timer: StepTimer, llm: LLM) -> None:
    """Where the time between replays goes, in ms per step: the graph back to back (a staged graph's input
    stage kernel included, `triton_stage`); with an input copy before it and a picks copy after it (the
    stream without host picks); with the input copy alone (picks stored in host memory by the graph,
    `triton_argmax.HostPicks`); and the real overlapped decoding loop (`LLM.step`,
    host work included)."""
    timer()                                   # (re)captures the graph of the current step
    g = timer.g
    graph = g.graphs[g.entry(timer.key())][0]
    n_up = g.upload_len(1)
    host_tok = g.tok_host[0][:1]

    def timed(body, steps: int = 200) -> float:
        body()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            body()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / steps

    def upload() -> None:
        g.static[:n_up].copy_(g.mirrors[0][:n_up], non_blocking=True)
        graph.replay()

    def upload_and_copy() -> None:
        upload()
        host_tok.copy_(g.tokens_out[:1], non_blocking=True)

    bare, copies, up = timed(graph.replay), timed(upload_and_copy), timed(upload)
    # a 32-token prompt: every step of the loop and of gap_trace stays within the 256-token context cap, as in
    # the 128 + 128-token bench (one decode-attention split)
    llm.add_request(list(range(1, 33)), SamplingParams(max_tokens=200, min_tokens=200, end_id=None))
    while not llm.scheduler.running or llm.scheduler.running[-1].in_prefill:
        llm.step()
    for _ in range(10):
        llm.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    steps = 150
    for _ in range(steps):
        llm.step()
    torch.cuda.synchronize()
    loop = (time.perf_counter() - t0) * 1e3 / steps
    print(f"gap probe: graph back to back {bare:.4f}, upload + picks copy {copies:.4f}, upload only {up:.4f}, "
          f"overlapped LLM.step loop {loop:.4f} ms/step (host picks {'on' if g.host_picks else 'off'}, "
          f"inputs {'staged by the graph' if g.staged_sizes else 'copied'} at batch 1)",
          flush=True)


def gap_trace(llm: LLM, path: str, steps: int = 25) -> None:
    """The GPU timeline of the overlapped `LLM.step` loop (torch.profiler, written to `path` as a Chrome
    trace): per step, the graph's own span (first kernel start, the input stage's where there is one, to
    last kernel end), what runs between two graphs (copies, stray kernels, idle time) and the critical
    path by kernel. Run after `gap_probe`, which leaves a request decoding."""
    import json as _json

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            llm.step()
        torch.cuda.synchronize()
    prof.export_chrome_trace(path)
    events = [e for e in _json.loads(open(path).read())["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    events.sort(key=lambda e: e["ts"])
    # a step starts at its embedding kernel, or at the input stage kernel just before it (staged graphs)
    starts = [i - 1 if i and "_stage_kernel" in events[i - 1]["name"] else i
              for i, e in enumerate(events) if "_embed_kernel" in e["name"]]
    spans, gaps, between = [], [], {}
    for a, b in zip(starts, starts[1:]):
        body = [e for e in events[a:b] if e["cat"] == "kernel"]
        # the graph's last kernel: the argmax finish (host picks) or whatever kernel ends latest
        last = max(e["ts"] + e["dur"] for e in body)
        spans.append(last - events[a]["ts"])
        gaps.append(events[b]["ts"] - last)
        for e in events[a:b]:
            if e["ts"] >= last - 1e-3 and e is not events[a]:
                between.setdefault(e["name"][:60], []).append(e["dur"])
    if not spans:
        print("gap trace: no embedding kernel in the trace (graph kernels not traced?)", flush=True)
        return
    med = statistics.median
    # the step's critical path by kernel: each kernel's end past every earlier kernel's end (PDL overlaps
    # starts, so durations would double-count), summed per kernel name within a step
    exposed: dict[str, list[float]] = {}
    for a, b in zip(starts, starts[1:]):
        per: dict[str, float] = {}
        reach = events[a]["ts"]
        for e in events[a:b]:
            end = e["ts"] + e["dur"]
            if e["cat"] == "kernel" and end > reach:
                args = e.get("args", {})   # GEMVs share a name: grid and registers tell the shapes apart
                name = f'{e["name"].split("(")[0][:28]} {args.get("grid", "")} r{args.get("registers per thread", "")}'
                per[name] = per.get(name, 0.0) + end - reach
                reach = end
        for name, t in per.items():
            exposed.setdefault(name, []).append(t)
    for name, ts in sorted(exposed.items(), key=lambda kv: -med(kv[1])):
        print(f"gap trace:   critical path {name:52s} {med(ts):7.1f} us a step", flush=True)
    print(f"gap trace: {len(spans)} steps, graph span {med(spans):.1f} us, last kernel end -> next graph's first "
          f"{med(gaps):.1f} us (p90 {sorted(gaps)[int(0.9 * len(gaps))]:.1f})", flush=True)
    for name, durs in sorted(between.items(), key=lambda kv: -len(kv[1])):
        print(f"gap trace:   between graphs: {name} x{len(durs)} median {med(durs):.1f} us", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--budget-s", type=float, default=240)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--split-sweep", default="",
                    help="comma-separated MIN_TOKENS:BLOCK_N[:WARPS] of the decode attention (tokens per context "
                         "split, KV tile, warps) or 'auto': time the step with each, twice interleaved")
    ap.add_argument("--argmax-ab", action="store_true",
                    help="time the step with the greedy picks fused into the lm_head and with torch.argmax")
    ap.add_argument("--mha-ab", action="store_true",
                    help="time MHA decode attention in registers against the padded tensor-core dots")
    ap.add_argument("--gap-trace", default="",
                    help="with --gap-probe: also trace the decoding loop on the GPU into this Chrome trace file")
    ap.add_argument("--gap-probe", action="store_true",
                    help="time the graph alone, with its per-step copies, and in the real decoding loop")
    args = ap.parse_args()
    deadline = time.time() + args.budget_s

    llm = LLM(args.engine_dir, max_batch_size=1)
    if llm.executor.graphs is None or llm.executor.graphs.eager or llm.engine.model.fused is None:
        raise SystemExit("tune_decode: needs a CUDA device, the Triton backend, decode graphs and the fused path")
    llm.add_request(list(range(1, 129)), SamplingParams(max_tokens=16, min_tokens=16, end_id=None))
    for _ in range(8):       # prefill, then a few decode steps: the static graph inputs now hold a real step
        llm.step()
    timer = StepTimer(llm)
    shapes = model_shapes(llm)
    device = torch.cuda.get_device_name()
    best = {name: gemv_config(1, n, k, torch.float16, device) for name, (n, k) in shapes.items()}
    if args.split_sweep:
        split_sweep(timer, args.split_sweep)
    if args.argmax_ab:
        argmax_ab(timer, llm)
    if args.mha_ab:
        mha_ab(timer)
    base = timer()
    print(f"start: {base:.4f} ms/step  shapes {shapes}", flush=True)
    results: dict[str, list] = {}
    share = args.budget_s / (args.rounds * len(shapes))   # every shape gets its slice of the budget
    for rnd in range(args.rounds):
        for name, (n, k) in shapes.items():
            key = (1, n, k)
            tried = []
            shape_deadline = min(deadline, time.time() + share)
            # a fixed shuffle: when the budget cuts the list short, what was tried is still a spread
            # the current tile with the other PDL release point, and with the other prefetch depth, first:
            # the cheapest questions to ask
            cur = best[name]
            variants = [cur, dataclasses.replace(cur, early_release=not cur.early_release)]
            if cur.block_k < k:
                variants.append(dataclasses.replace(cur, num_stages=1, prefetch_tiles=3 - cur.prefetch_tiles))
            rest = [c for c in candidates(n, k) if c not in variants]
            random.Random(n * 131 + k).shuffle(rest)
            for cfg in variants + rest:
                if time.time() > shape_deadline:
                    break
                gemv_configs.OVERRIDES[key] = cfg
                t = timer()
                tried.append((t, cfg))
            if not tried:
                continue
            t_best, cfg_best = min(tried, key=lambda tc: tc[0])
            best[name] = cfg_best
            gemv_configs.OVERRIDES[key] = cfg_best
            results[f"{name} {n}x{k} round {rnd}"] = [(round(t, 4), cfg.__dict__) for t, cfg in sorted(tried, key=lambda x: x[0])[:5]]
            print(f"{name:8s} N={n:6d} K={k:6d}: best {cfg_best} -> {t_best:.4f} ms/step "
                  f"({len(tried)} tried)", flush=True)
    final = timer()
    print(f"done: {base:.4f} -> {final:.4f} ms/step ({base / final:.3f}x)", flush=True)
    table = {f"1,{n},{k}": best[name].as_list() for name, (n, k) in shapes.items()}
    write_json(args.out, table)
    write_json(args.out.replace(".json", "") + "-trials.json",
               {"start_ms": base, "final_ms": final, "device": torch.cuda.get_device_name(), "top5": results})
    for name, (n, k) in shapes.items():
        c = best[name]
        print(f"    (1, {n}, {k}): GemvConfig(block_n={c.block_n}, block_k={c.block_k}, "
              f"num_warps={c.num_warps}, num_stages={c.num_stages}"
              f"{', early_release=True' if c.early_release else ''}"
              f"{', prefetch_tiles=2' if c.prefetch_tiles == 2 else ''}),  # {name}")
    if args.gap_probe:   # last: it runs more requests through the engine
        gap_probe(timer, llm)
        if args.gap_trace:
            gap_trace(llm, args.gap_trace)


if __name__ == "__main__":
    main()
