"""GPU benchmark of the fused decode GEMV (`trt_gpt.kernels.triton_gemv`) against cuBLAS, with a config sweep.

Not a test (needs a CUDA GPU). For the decode GEMVs of GPT-2 medium, SantaCoder-1B and StarCoder2-7B at
M in {1, 2, 4, 8} (fp16) it times:
  * cublas - F.linear(x, W) alone (no bias, no norm: the bare bandwidth baseline);
  * fused  - fused_linear with the epilogue that layer really runs in decode (qkv: layernorm + bias;
             dense/proj: bias + residual; fc: layernorm + bias + gelu; lm_head: ln_f, fp32 logits),
             first with `gemv_config`'s current choice, then over a sweep of GemvConfigs.
Every timing replays ~20+ back-to-back calls captured in one CUDA graph (launch overhead excluded, as in
our decode graphs) and cycles through weight copies totalling > --flush-mb so that W comes from HBM, not
L2. Sweep: phase 1 tries (block_n, block_k) at 2 or 4 warps; phase 2 tries the other warp counts and
num_stages 1/3 around the best two. Then, per model, one decode layer's GEMV chain at M=1: fused
(norm+qkv, dense+residual, norm+fc+gelu, proj+residual) vs unfused torch (layer_norm, F.linear with
bias, gelu, residual adds). Prints a table and a `GEMV_CONFIGS` dict literal to paste into triton_gemv.py.

    python3 benchmarks/gemv.py --out out/gemv.json [--quick]    # --quick: M=1 only
    python3 benchmarks/gemv.py --dry-run                       # CPU: one tiny shape, every code path
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

if "--dry-run" in sys.argv:
    import torch as _torch
    if not _torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
        os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from trt_gpt.kernels.gemv_ref import fused_linear_ref  # noqa: E402
from trt_gpt.kernels.triton_gemv import (GemvConfig, NormArgs, fused_linear,  # noqa: E402
                                         gemv_config)

# (N, K) of each decode GEMV; "kind" picks the fused epilogue the decode step runs for that layer.
MODELS = {
    "gpt2-medium": dict(qkv=(3072, 1024), dense=(1024, 1024), fc=(4096, 1024), proj=(1024, 4096),
                        lm_head=(50257, 1024)),
    "santacoder-1b": dict(qkv=(2304, 2048), dense=(2048, 2048), fc=(8192, 2048), proj=(2048, 8192),
                          lm_head=(49280, 2048)),
    "starcoder2-7b": dict(qkv=(5632, 4608), dense=(4608, 4608), fc=(18432, 4608), proj=(4608, 18432),
                          lm_head=(49152, 4608)),
}
LAYER_KINDS = {  # norm, bias, residual, activation, fp32 out
    "qkv": dict(norm=True, bias=True, residual=False, act=None, fp32_out=False),
    "dense": dict(norm=False, bias=True, residual=True, act=None, fp32_out=False),
    "fc": dict(norm=True, bias=True, residual=False, act="gelu", fp32_out=False),
    "proj": dict(norm=False, bias=True, residual=True, act=None, fp32_out=False),
    "lm_head": dict(norm=True, bias=False, residual=False, act=None, fp32_out=True),
}
DRY_MODELS = {"tiny": dict(qkv=(96, 32), dense=(32, 32), fc=(128, 32), proj=(32, 128), lm_head=(40, 256))}
BLOCK_NS, BLOCK_KS, WARPS, STAGES = (1, 2, 4, 8, 16), (128, 256, 512, 1024), (2, 4, 8), (1, 2, 3)
MAX_TILE = 16384          # M_PAD * block_n * block_k fp32 partial sums: beyond this registers spill
MIN_TILE = 512            # block_n * block_k below 8 fp16 per thread at 2 warps: narrow loads, idle lanes


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def phase1_configs(m: int, k: int) -> list[GemvConfig]:
    """(block_n, block_k) grid, 4 warps when the tile gives each thread >= 8 elements, else 2."""
    out = []
    for bn in BLOCK_NS:
        for bk in BLOCK_KS:
            tile = bn * bk
            if bk > max(BLOCK_KS[0], next_pow2(k)) or tile < MIN_TILE or next_pow2(m) * tile > MAX_TILE:
                continue
            out.append(GemvConfig(bn, bk, 4 if tile >= 1024 else 2, 2))
    return out


def phase2_configs(best: GemvConfig | None) -> list[GemvConfig]:
    """Other warp counts and num_stages around the phase-1 winner (each new config is a compile: keep few).

    On sm_90 with Triton 3.9 num_stages did not change the generated code (no tl.dot: nothing for the
    pipeliner); it is swept anyway in case another Triton version differs.
    """
    if best is None:
        return []
    c = best
    return ([GemvConfig(c.block_n, c.block_k, w, c.num_stages) for w in WARPS
             if w != c.num_warps and c.block_n * c.block_k >= 32 * w]     # at least one element per thread
            + [GemvConfig(c.block_n, c.block_k, c.num_warps, s) for s in STAGES if s != c.num_stages])


def cfg_str(c: GemvConfig) -> str:
    return f"{c.block_n}x{c.block_k}w{c.num_warps}s{c.num_stages}"


class Timer:
    """Per-call µs: a CUDA graph of `calls` back-to-back calls, median over replays (CPU: one wall-clock call)."""

    def __init__(self, device: torch.device, replays: int):
        self.device, self.replays = device, replays

    def __call__(self, step, calls: int) -> float:
        if self.device.type != "cuda":
            t0 = time.perf_counter()
            step(0)
            return (time.perf_counter() - t0) * 1e6
        for i in range(min(calls, 2)):     # compile / autotune outside the capture
            step(i)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for i in range(calls):
                step(i)
        graph.replay()
        torch.cuda.synchronize()
        times = []
        for _ in range(self.replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / calls)
        del graph
        return statistics.median(times)


def copies_for(nbytes: int, flush_mb: float) -> int:
    return max(1, math.ceil(flush_mb * 2 ** 20 / max(1, nbytes)))


def make_layer(n: int, k: int, kind: dict, dtype, device, gen) -> dict:
    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, dtype=torch.float32, generator=gen) * scale).to(dtype)
    return dict(w=rnd(n, k, scale=k ** -0.5), b=rnd(n) if kind["bias"] else None)


def make_norm(k: int, dtype, device, gen) -> NormArgs:
    w = 1.0 + 0.1 * torch.randn(k, device=device, generator=gen)
    return NormArgs("layernorm", w.to(dtype), (0.1 * torch.randn(k, device=device, generator=gen)).to(dtype), 1e-5)


def run_case(model: str, layer: str, m: int, n: int, k: int, args, timer: Timer, deadline: float) -> dict:
    kind = LAYER_KINDS[layer]
    device, dtype = timer.device, torch.float16
    gen = torch.Generator(device=device).manual_seed(0)
    wbytes = n * k * 2
    ncopy = copies_for(wbytes, args.flush_mb)
    calls = max(args.calls, ncopy)
    layers = [make_layer(n, k, kind, dtype, device, gen) for _ in range(ncopy)]
    x = torch.randn(m, k, device=device, generator=gen).to(dtype)
    norm = make_norm(k, dtype, device, gen) if kind["norm"] else None
    residual = torch.randn(m, n, device=device, generator=gen).to(dtype) if kind["residual"] else None
    out_dtype = torch.float32 if kind["fp32_out"] else dtype
    out = torch.empty(m, n, device=device, dtype=out_dtype)
    nbytes = wbytes + m * k * 2 + m * n * out.element_size() + (m * n * 2 if residual is not None else 0)
    row = dict(model=model, layer=layer, M=m, N=n, K=k, bytes=nbytes, weight_copies=ncopy, calls_per_graph=calls)

    def fused(cfg):
        def step(i):
            lw = layers[i % ncopy]
            fused_linear(x, lw["w"], lw["b"], norm=norm, activation=kind["act"], residual=residual,
                         out_dtype=out_dtype, out=out, config=cfg)
        return step

    def gbps(us):
        return None if us is None else nbytes / (us * 1e-6) / 1e9

    def attempt(label: str, step) -> float | None:
        try:
            return timer(step, calls)
        except Exception as e:  # noqa: BLE001 - a bad config must never abort the sweep
            first = str(e).splitlines()[0][:200] if str(e) else ""
            row.setdefault("errors", {})[label] = f"{type(e).__name__}: {first}"
            return None

    # Correctness of the default config once, against the torch reference of the same math.
    lw = layers[0]
    try:
        got = fused_linear(x, lw["w"], lw["b"], norm=norm, activation=kind["act"], residual=residual,
                           out_dtype=out_dtype).float()
        ref = fused_linear_ref(x, lw["w"], lw["b"], norm=norm, activation=kind["act"], residual=residual,
                               out_dtype=torch.float32)
        row["rel_err"] = ((got - ref).abs().max() / ref.abs().max().clamp_min(1e-6)).item()
    except Exception as e:  # noqa: BLE001
        row["rel_err"] = None
        row.setdefault("errors", {})["check"] = f"{type(e).__name__}: {e}"[:300]
    row["ok"] = row["rel_err"] is not None and row["rel_err"] <= args.tol

    row["cublas_us"] = attempt("cublas", lambda i: F.linear(x, layers[i % ncopy]["w"]))
    default = gemv_config(m, n, k, dtype, torch.cuda.get_device_name())
    row["default_config"] = cfg_str(default)
    row["default_us"] = attempt(cfg_str(default), fused(default))
    timings = {cfg_str(default): row["default_us"]}
    cfgs = {cfg_str(default): default}
    if time.perf_counter() < deadline and not args.no_sweep:
        for cfg in phase1_configs(m, k) + ([GemvConfig(3, 64, 4, 2)] if args.dry_run else []):
            if cfg_str(cfg) not in timings:   # the dry run's 3x64 config checks the error reporting
                cfgs[cfg_str(cfg)] = cfg
                timings[cfg_str(cfg)] = attempt(cfg_str(cfg), fused(cfg))
        ranked = sorted((c for c in timings if timings[c] is not None), key=timings.get)
        for cfg in phase2_configs(cfgs[ranked[0]] if ranked else None):
            if cfg_str(cfg) not in timings:
                cfgs[cfg_str(cfg)] = cfg
                timings[cfg_str(cfg)] = attempt(cfg_str(cfg), fused(cfg))
    else:
        row["sweep_skipped"] = True
    row["configs"] = timings
    ok = {c: t for c, t in timings.items() if t is not None}
    best = min(ok, key=ok.get) if ok else None
    row["best_config"] = best
    row["best"] = None if best is None else cfgs[best].__dict__
    row["best_us"] = ok.get(best)
    for key in ("cublas", "default", "best"):
        row[f"{key}_gbps"] = gbps(row[f"{key}_us"])
    row["speedup_vs_cublas"] = (row["cublas_us"] / row["best_us"]) if row["cublas_us"] and row["best_us"] else None
    return row


def run_chain(model: str, shapes: dict, tuned: dict, args, timer: Timer) -> dict:
    """One decode layer's GEMVs at M=1, fused vs unfused torch (attention itself is not included)."""
    device, dtype = timer.device, torch.float16
    gen = torch.Generator(device=device).manual_seed(1)
    hidden = shapes["dense"][1]
    names = ("qkv", "dense", "fc", "proj")
    layer_bytes = sum(shapes[nm][0] * shapes[nm][1] * 2 for nm in names)
    ncopy = copies_for(layer_bytes, args.flush_mb)
    calls = max(args.chain_calls, ncopy)
    layers = []
    for _ in range(ncopy):
        ly = {nm: make_layer(*shapes[nm], LAYER_KINDS[nm], dtype, device, gen) for nm in names}
        ly["ln1"], ly["ln2"] = make_norm(hidden, dtype, device, gen), make_norm(hidden, dtype, device, gen)
        layers.append(ly)
    x = torch.randn(1, hidden, device=device, generator=gen).to(dtype)
    attn = torch.randn(1, hidden, device=device, generator=gen).to(dtype)  # stands in for attention's output
    bufs = {nm: torch.empty(1, shapes[nm][0], device=device, dtype=dtype) for nm in names}

    def cfg(nm, use_tuned):
        n, k = shapes[nm]
        return tuned.get((1, n, k)) if use_tuned and (1, n, k) in tuned else gemv_config(1, n, k, dtype, torch.cuda.get_device_name())

    def fused(use_tuned):
        def step(i):
            ly = layers[i % ncopy]
            fused_linear(x, ly["qkv"]["w"], ly["qkv"]["b"], norm=ly["ln1"], out=bufs["qkv"],
                         config=cfg("qkv", use_tuned))
            fused_linear(attn, ly["dense"]["w"], ly["dense"]["b"], residual=x, out=bufs["dense"],
                         config=cfg("dense", use_tuned))
            fused_linear(bufs["dense"], ly["fc"]["w"], ly["fc"]["b"], norm=ly["ln2"], activation="gelu",
                         out=bufs["fc"], config=cfg("fc", use_tuned))
            fused_linear(bufs["fc"], ly["proj"]["w"], ly["proj"]["b"], residual=bufs["dense"], out=bufs["proj"],
                         config=cfg("proj", use_tuned))
            return bufs["proj"]
        return step

    def unfused(i):
        ly = layers[i % ncopy]
        ln = lambda t, na: F.layer_norm(t, (hidden,), na.weight, na.bias, na.eps)  # noqa: E731
        F.linear(ln(x, ly["ln1"]), ly["qkv"]["w"], ly["qkv"]["b"])
        r1 = x + F.linear(attn, ly["dense"]["w"], ly["dense"]["b"])
        h = F.gelu(F.linear(ln(r1, ly["ln2"]), ly["fc"]["w"], ly["fc"]["b"]))
        return r1 + F.linear(h, ly["proj"]["w"], ly["proj"]["b"])

    row = dict(model=model, M=1, weight_bytes=layer_bytes, layer_copies=ncopy, calls_per_graph=calls)
    try:
        ref = unfused(0).float()
        row["rel_err"] = ((fused(True)(0).float() - ref).abs().max() / ref.abs().max()).item()
    except Exception as e:  # noqa: BLE001
        row["rel_err"], row["error"] = None, f"{type(e).__name__}: {e}"[:300]
    for key, step in (("unfused_us", unfused), ("fused_default_us", fused(False)), ("fused_tuned_us", fused(True))):
        try:
            row[key] = timer(step, calls)
        except Exception as e:  # noqa: BLE001
            row[key] = None
            row.setdefault("errors", {})[key] = f"{type(e).__name__}: {e}"[:300]
        row[key.replace("_us", "_gbps")] = layer_bytes / (row[key] * 1e-6) / 1e9 if row[key] else None
    best = min((row[k] for k in ("fused_default_us", "fused_tuned_us") if row[k]), default=None)
    row["speedup"] = row["unfused_us"] / best if best and row["unfused_us"] else None
    return row


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_case(row: dict, elapsed: float) -> None:
    nerr = len(row.get("errors", {}))
    print(f"[{elapsed:6.1f}s] {row['model']:14} {row['layer']:8} M={row['M']} {row['N']:>6}x{row['K']:<6} "
          f"cublas {fmt(row['cublas_us'], '8.2f')}us {fmt(row['cublas_gbps'], '6.0f')}GB/s | default "
          f"{fmt(row['default_us'], '8.2f')}us | best {fmt(row['best_us'], '8.2f')}us "
          f"{fmt(row['best_gbps'], '6.0f')}GB/s {row['best_config'] or '-':>12} x{fmt(row['speedup_vs_cublas'], '.2f')}"
          f" ({len(row['configs'])} cfgs, {nerr} err){'' if row['ok'] else '  WRONG rel_err=' + str(row['rel_err'])}",
          flush=True)


def config_dict_literal(rows: list[dict]) -> str:
    lines = ["GEMV_CONFIGS: dict[tuple[int, int, int], GemvConfig] = {"]
    seen = set()
    for r in sorted(rows, key=lambda r: (r["M"], r["N"], r["K"])):
        key = (next_pow2(r["M"]), r["N"], r["K"])
        if r["best"] is None or key in seen:
            continue
        seen.add(key)
        b = r["best"]
        lines.append(f"    {key}: GemvConfig(block_n={b['block_n']}, block_k={b['block_k']}, "
                     f"num_warps={b['num_warps']}, num_stages={b['num_stages']}),  # {r['model']} {r['layer']} "
                     f"{fmt(r['best_us'], '.2f')}us {fmt(r['best_gbps'], '.0f')}GB/s")
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write all rows here as JSON")
    ap.add_argument("--quick", action="store_true", help="M=1 only")
    ap.add_argument("--dry-run", action="store_true", help="CPU/interpreter: one tiny model, one call per config")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--ms", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--flush-mb", type=float, default=128.0, help="weight copies per case total at least this")
    ap.add_argument("--calls", type=int, default=20, help="GEMV calls per captured graph (at least one per copy)")
    ap.add_argument("--chain-calls", type=int, default=8, help="decode-layer chains per captured graph")
    ap.add_argument("--replays", type=int, default=10, help="graph replays; the median is reported")
    ap.add_argument("--tol", type=float, default=1e-2, help="max relative error vs fused_linear_ref")
    ap.add_argument("--budget-s", type=float, default=180.0,
                    help="after this many seconds, remaining cases time only the default config")
    ap.add_argument("--no-sweep", action="store_true", help="time only gemv_config's choice")
    args = ap.parse_args(argv)
    if args.dry_run:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models, ms = DRY_MODELS, [1, 2]
        args.flush_mb = 0.0                     # one weight copy: the interpreter is slow enough
    else:
        if not torch.cuda.is_available():
            print("gemv.py needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        models, ms = {m: MODELS[m] for m in args.models}, ([1] if args.quick else args.ms)
    timer = Timer(device, args.replays)
    t0 = time.perf_counter()
    deadline = t0 + args.budget_s
    print("per-call µs from CUDA-graph replays (weights cycled past L2); GB/s = weight+activation bytes / time;"
          " config = {block_n}x{block_k}w{warps}s{stages}; x = cuBLAS / best fused", flush=True)
    rows, chains = [], []

    def sweep(m_values):
        for m in m_values:
            for model, shapes in models.items():
                for layer, (n, k) in shapes.items():
                    rows.append(run_case(model, layer, m, n, k, args, timer, deadline))
                    print_case(rows[-1], time.perf_counter() - t0)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()

    sweep(ms[:1])                               # M=1 first: it matters most, and the chains use its results
    tuned = {(r["M"], r["N"], r["K"]): GemvConfig(**r["best"]) for r in rows if r["best"]}
    for model, shapes in models.items():
        chains.append(run_chain(model, shapes, tuned, args, timer))
        c = chains[-1]
        print(f"[{time.perf_counter() - t0:6.1f}s] chain {model:14} unfused {fmt(c['unfused_us'], '8.2f')}us | fused "
              f"default {fmt(c['fused_default_us'], '8.2f')}us tuned {fmt(c['fused_tuned_us'], '8.2f')}us "
              f"({fmt(c['fused_tuned_gbps'], '.0f')}GB/s) x{fmt(c['speedup'], '.2f')} "
              f"rel_err {fmt(c['rel_err'], '.1e')}",
              flush=True)
    sweep(ms[1:])

    print("\n# best config per (next_pow2(M), N, K); paste into core/trt_gpt/kernels/triton_gemv.py")
    print(config_dict_literal(rows))
    meta = dict(device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (interpreter)",
                torch=torch.__version__, triton=__import__("triton").__version__,
                args=vars(args) | {"out": str(args.out)},
                elapsed_s=time.perf_counter() - t0)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(dict(meta=meta, cases=rows, chains=chains,
                                            best_configs_literal=config_dict_literal(rows)), indent=1))
        print(f"wrote {len(rows)} cases and {len(chains)} chains to {args.out}")
    print(f"done in {meta['elapsed_s']:.1f}s")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
