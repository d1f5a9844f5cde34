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
    """Tiles of 4K-32K elements, K-blocks of 512, 1024 or the whole row, warps giving 16-64 elements a thread.

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
                    # stages 2: hand double-buffered K loop (only meaningful with more than one K tile)
                    out.extend(GemvConfig(bn, bk, warps, st) for st in ((1, 2) if bk < k else (1,)))
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
        g.graphs[key] = (None, None)        # free the old graph first
        torch.cuda.synchronize()
        g.graphs[key] = g.capture(key)      # warm-up forwards compile the new kernels, then capture
        graph = g.graphs[key][0]
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


def argmax_ab(timer: StepTimer, llm: LLM) -> None:
    """Step time with the greedy picks from the lm_head's epilogue, and from torch.argmax, twice interleaved."""
    fused = llm.engine.model.fused
    seen: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(2):
        for on in (True, False):
            fused.fuse_argmax = on
            seen[on].append(timer())
    fused.fuse_argmax = True
    for on, times in seen.items():
        print(f"picks from {'the lm_head epilogue' if on else 'torch.argmax       '}: "
              + ", ".join(f"{t:.4f}" for t in times) + " ms/step", flush=True)


def gap_probe(timer: StepTimer, llm: LLM) -> None:
    """Where the time between replays goes, in ms per step: the graph back to back; with the per-step input
    upload and a picks copy after it (the stream before host picks); with the upload alone (the graph
    stores its picks in host memory itself, `triton_argmax.HostPicks`); and the real overlapped decoding
    loop (`LLM.step`, host work included)."""
    timer()                                   # (re)captures the graph of the current step
    g = timer.g
    graph = g.graphs[timer.key()][0]
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
        g.static[:n_up].copy_(g.host[:n_up], non_blocking=True)
        graph.replay()

    def upload_and_copy() -> None:
        upload()
        host_tok.copy_(g.tokens_out[:1], non_blocking=True)

    bare, copies, up = timed(graph.replay), timed(upload_and_copy), timed(upload)
    llm.add_request(list(range(1, 129)), SamplingParams(max_tokens=200, min_tokens=200, end_id=None))
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
          f"overlapped LLM.step loop {loop:.4f} ms/step (host picks {'on' if g.host_picks else 'off'})",
          flush=True)


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
            rest = [c for c in candidates(n, k) if c != best[name]]
            random.Random(n * 131 + k).shuffle(rest)
            for cfg in [best[name]] + rest:
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
    table = {f"1,{n},{k}": [best[name].block_n, best[name].block_k, best[name].num_warps, best[name].num_stages]
             for name, (n, k) in shapes.items()}
    write_json(args.out, table)
    write_json(args.out.replace(".json", "") + "-trials.json",
               {"start_ms": base, "final_ms": final, "device": torch.cuda.get_device_name(), "top5": results})
    for name, (n, k) in shapes.items():
        c = best[name]
        print(f"    (1, {n}, {k}): GemvConfig(block_n={c.block_n}, block_k={c.block_k}, "
              f"num_warps={c.num_warps}, num_stages={c.num_stages}),  # {name}")
    if args.gap_probe:   # last: it runs more requests through the engine
        gap_probe(timer, llm)


if __name__ == "__main__":
    main()
