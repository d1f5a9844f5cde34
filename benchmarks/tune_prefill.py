"""Tune the fused prompt GEMM's tiles (`kernels/triton_gemm_small`) inside the real prefill CUDA graph.

For one prompt length, the prefill graph of a batch-1 request is captured and timed back to back; then,
shape by shape (qkv, dense, fc, proj, in rounds), each tile dimension is moved one step at a time and
a move is kept when the whole graph gets faster (the kernels overlap under PDL, so the graph, not the
kernel alone, is the measure). Writes the best table as a TRT_GPT_GEMM_CONFIGS file, and prints the
graph's time with the fused path off (cuBLAS + separate kernels) beside it.

Usage: python benchmarks/tune_prefill.py ENGINE_DIR --out gemm.json [--prompt_len 128] [--budget-s 150]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch

from trt_gpt import LLM, SamplingParams
from trt_gpt.kernels import triton_gemm_small as tg
from trt_gpt.kernels.triton_common import next_pow2

AXES = {"block_m": (16, 32, 64, 128), "block_n": (16, 32, 64, 128), "block_k": (32, 64, 128, 256),
        "num_warps": (2, 4, 8), "num_stages": (1, 2, 3, 4)}


class PrefillTimer:
    """Median ms of one replay of the prefill graph of `prompt`, recaptured with the current tables."""

    def __init__(self, llm: LLM, prompt: list[int]):
        self.llm, self.prompt = llm, prompt
        self.params = SamplingParams(max_tokens=1, end_id=None)

    def graph(self) -> torch.cuda.CUDAGraph:
        pg = self.llm.executor.prefill_graphs
        pg.entries.clear()
        pg.seen.clear()
        for _ in range(2):          # eager first, captured on the second sight
            self.llm.generate([self.prompt], self.params)
        (_, graph, _), = pg.entries.values()
        return graph

    def kernels(self, label: str, replays: int = 5) -> None:
        """Each kernel of one replay: count and median duration (torch.profiler over `replays` replays)."""
        from torch.profiler import ProfilerActivity, profile

        graph = self.graph()
        graph.replay()
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(replays):
                graph.replay()
            torch.cuda.synchronize()
        durs: dict[str, list[float]] = {}
        for e in prof.events():
            if e.device_type == torch.autograd.DeviceType.CUDA:
                durs.setdefault(e.name[:60], []).append(e.device_time)
        total = sum(sum(d) for d in durs.values()) / replays
        print(f"{label}: kernel time {total:.1f} us a replay (sum of durations; they overlap under PDL)")
        for name, d in sorted(durs.items(), key=lambda kv: -sum(kv[1])):
            print(f"{label}:   {len(d) // replays:4d} x {statistics.median(d):6.2f} us  {name}")

    def __call__(self) -> float:
        graph = self.graph()
        for _ in range(3):
            graph.replay()
        times = []
        for _ in range(3):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(20):
                graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 20)
        return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine_dir")
    ap.add_argument("--out", required=True)
    ap.add_argument("--prompt_len", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=150)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--table", default="", help="start from this TRT_GPT_GEMM_CONFIGS file")
    ap.add_argument("--kernels", action="store_true", help="print each kernel of the graph, fused path off and on")
    args = ap.parse_args()
    llm = LLM(args.engine_dir)
    model = llm.engine.model
    if model.fused is None or llm.executor.prefill_graphs is None:
        raise SystemExit("tune_prefill: the engine has no fused path or no prefill graphs on this device")
    layer = model.transformer.layers[0]
    shapes = {"qkv": layer.attention.qkv.weight.shape, "dense": layer.attention.dense.weight.shape,
              "fc": layer.mlp.fc.weight.shape, "proj": layer.mlp.proj.weight.shape}
    m = args.prompt_len
    keys = {name: (next_pow2(m), int(s[0]), int(s[1])) for name, s in shapes.items()}
    timer = PrefillTimer(llm, [(11 * i + 5) % llm.cfg.vocab_size for i in range(m)])
    table_file = os.path.join(tempfile.mkdtemp(), "gemm.json")
    table: dict[str, list[int]] = {}

    def measure(tbl: dict) -> float:
        with open(table_file, "w") as f:
            json.dump(tbl, f)
        os.environ[tg.CONFIG_ENV] = table_file
        tg._TABLE = None          # same path, new contents: drop the parsed copy
        return timer()

    model.fused.prefill_tokens = 0            # the module path: cuBLAS GEMMs and the separate small kernels
    off = timer()
    model.fused.prefill_tokens = max(m, 1)
    start_table = json.load(open(args.table)) if args.table else {}
    for name, key in keys.items():
        k = f"{key[0]},{key[1]},{key[2]}"
        c = tg.gemm_config(m, key[1], key[2], torch.device("cuda"))
        table[k] = start_table.get(k, [c.block_m, c.block_n, c.block_k, c.num_warps, c.num_stages])
    best = start = measure(table)
    print(f"prefill {m} tokens: fused path off {off:.4f} ms, starting tiles {start:.4f} ms", flush=True)
    trials = []
    deadline = time.monotonic() + args.budget_s
    for rnd in range(args.rounds):
        for name, key in keys.items():
            k = f"{key[0]},{key[1]},{key[2]}"
            for ax, values in enumerate(AXES.values()):
                cur = table[k][ax]
                i = values.index(cur) if cur in values else 0
                for j in (i - 1, i + 1):
                    if not 0 <= j < len(values) or time.monotonic() > deadline:
                        continue
                    cand = list(table[k])
                    cand[ax] = values[j]
                    if cand[0] > next_pow2(m) * 2:
                        continue
                    try:
                        t = measure({**table, k: cand})
                    except Exception as e:   # e.g. out of shared memory / registers: not a candidate
                        print(f"  {name} {cand}: failed ({type(e).__name__})", flush=True)
                        continue
                    trials.append({"shape": name, "key": k, "config": cand, "ms": t})
                    if t < best * 0.995:
                        best, table[k] = t, cand
                        print(f"  round {rnd} {name} {cand}: {t:.4f} ms (kept)", flush=True)
    final = measure(table)
    if args.kernels:
        model.fused.prefill_tokens = 0
        timer.kernels("module path")
        model.fused.prefill_tokens = max(m, 1)
        timer.kernels("fused path")
    print(f"prefill {m} tokens: fused path off {off:.4f} ms, start {start:.4f}, tuned {final:.4f} ms "
          f"({len(trials)} trials)", flush=True)
    with open(args.out, "w") as f:
        json.dump(table, f, indent=1)
    with open(args.out.replace(".json", "-trials.json"), "w") as f:
        json.dump({"off_ms": off, "heuristic_ms": start, "tuned_ms": final, "trials": trials}, f, indent=1)


if __name__ == "__main__":
    main()
