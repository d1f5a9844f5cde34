"""GPU benchmark of the 8-bit GEMMs at StarCoder2-7B's shapes: bf16 cuBLAS vs torch._int_mm vs our Triton
INT8 GEMM (`trt_gpt.kernels.triton_int8_gemm`) vs FP8 torch._scaled_mm, with an optional tile sweep.

Shapes (N, K): qkv (5632, 4608), dense (4608, 4608), fc (18432, 4608), proj (4608, 18432); M tokens in
{1, 16, 256, 1024, 4096}. Methods:
  * bf16      - F.linear(x, W) (cuBLAS), the baseline;
  * int_mm    - torch._int_mm(x_q, W_q^T) alone (int32 out, no scales; M padded to 17, its minimum);
  * int8      - our Triton GEMM on pre-quantized int8 x (per-token x per-channel scales, bf16 out);
  * int8+q    - the whole W8A8 layer: per-token activation quantization kernel + our GEMM;
  * int8_static - the W8A8 layer with a static per-tensor activation scale: quantization inside the GEMM;
  * fp8       - torch._scaled_mm on pre-quantized e4m3 x (per-tensor scales, bf16 out);
  * fp8_triton - the same product with our Triton kernel (fp8 tensor-core dots, fp32 accumulation);
  * fp8+q     - the whole FP8 layer with a static activation scale: the Triton FP8 quantization + _scaled_mm;
  * fp8_fused - the same layer as one Triton kernel (quantization inside the FP8 GEMM; fp8_ref's
                FP8_TRITON_MAX_ROWS picks it for steps where it beats fp8+q).
Correctness first, at every (M, shape): our INT8 GEMM against the exact integer product (a float64 matmul
of the integer values, exact below 2^53) with the definition's epilogue, the quantization kernels against
the torch definitions (bit-equal, INT8 and FP8), _scaled_mm against the fp32 emulation of the same FP8
values (TF32 off). Timing: each measurement replays a CUDA graph of `--reps` back-to-back calls (launch overhead
excluded, as in our decode and prefill graphs) cycling through weight copies that total more than L2,
so weights stream from HBM; median of --iters replays. Prints a TFLOP/s table; --out writes JSON.

    PYTHONPATH=core:plugins python benchmarks/w8a8_gemm.py --out $OUT/w8a8.json [--sweep] [--m 1,16]
    python benchmarks/w8a8_gemm.py --dry-run         # CPU: tiny shapes, the interpreter, every code path
"""
from __future__ import annotations

import argparse
import itertools
import json
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

from trt_gpt.kernels.fp8_ref import (fp8_gemm, fp8_gemm_ref, fp8_linear, fp8_supported,  # noqa: E402
                                     quantize_fp8, quantize_weight_fp8)
from trt_gpt.kernels.int8_gemm_ref import (int8_matmul_exact, quantize_activations,  # noqa: E402
                                           quantize_weight)
from trt_gpt.kernels.triton_int8_gemm import (Int8GemmConfig, fp8_gemm_triton, int8_gemm,  # noqa: E402
                                              int8_gemm_config, static_linear, w8a8_linear)
from trt_gpt.kernels.triton_quant import quantize_rows, quantize_rows_fp8  # noqa: E402

SHAPES = {"qkv": (5632, 4608), "dense": (4608, 4608), "fc": (18432, 4608), "proj": (4608, 18432)}
DRY_SHAPES = {"qkv": (96, 64), "proj": (64, 128)}
M_LIST = (1, 16, 256, 1024, 4096)
DTYPE = torch.bfloat16


def timer(device: torch.device, reps: int, iters: int):
    """ms per call of fn(i) (i: the call's index, to cycle weight copies): a CUDA graph of `reps` calls
    replayed `iters` times (eager on CPU)."""
    def run(fn) -> tuple[float, str]:
        if device.type != "cuda":
            t0 = time.perf_counter()
            for i in range(reps):
                fn(i)
            return (time.perf_counter() - t0) * 1e3 / reps, "eager"
        for i in range(min(reps, 3)):   # compile / autotune outside the capture
            fn(i)
        torch.cuda.synchronize()
        try:
            g = torch.cuda.CUDAGraph()
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.cuda.graph(g, stream=s):
                for i in range(reps):
                    fn(i)
            torch.cuda.current_stream().wait_stream(s)
            replay, mode = g.replay, "graph"
        except Exception:   # a path that cannot be captured is timed eagerly, and says so
            torch.cuda.synchronize()

            def replay():
                for i in range(reps):
                    fn(i)
            mode = "eager"
        replay()
        torch.cuda.synchronize()
        ts = []
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            replay()
            b.record()
            torch.cuda.synchronize()
            ts.append(a.elapsed_time(b) / reps)
        return statistics.median(ts), mode
    return run


def weight_copies(n: int, k: int, device: torch.device, l2_bytes: int) -> int:
    """How many copies of an [n, k] weight to cycle so that the bf16 set exceeds twice L2 (at most 8)."""
    if device.type != "cuda":
        return 1
    return max(1, min(8, -(-2 * l2_bytes // (n * k * 2))))


def make_layer(n: int, k: int, copies: int, device: torch.device, gen: torch.Generator) -> dict:
    ws = [(torch.randn(n, k, generator=gen) * 0.02).to(device, DTYPE) for _ in range(copies)]
    w8 = [quantize_weight(w, per_channel=True) for w in ws]
    f8 = [quantize_weight_fp8(w) for w in ws]
    return dict(w=ws, w_q=[q for q, _ in w8], s_w=[s for _, s in w8], w_f8=[q for q, _ in f8],
                s_f8=[s for _, s in f8])


def check(m: int, name: str, layer: dict, x: torch.Tensor, fp8_ok: bool) -> dict:
    """Correctness of every path at this (M, shape) before it is timed."""
    out: dict = {"m": m, "shape": name}
    q, s = quantize_rows(x)
    q_ref, s_ref = quantize_activations(x)
    out["quant_rows_equal"] = bool(torch.equal(q, q_ref) and torch.equal(s, s_ref))
    w_q, s_w = layer["w_q"][0], layer["s_w"][0]
    got = int8_gemm(q, w_q, s, s_w, out_dtype=torch.float32)
    want = int8_matmul_exact(q, w_q).float() * s[:, None] * s_w[None, :]
    out["int8_max_rel_err"] = float(((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item())
    s_st = torch.tensor([float(x.abs().max()) / 127], device=x.device)
    q_st, _ = quantize_rows(x, s_st)
    st_want = int8_matmul_exact(q_st, w_q).float() * s_st * s_w[None, :]
    st = static_linear(x, w_q, s_w, s_st, out_dtype=torch.float32)
    out["int8_static_max_rel_err"] = float(((st - st_want).abs().max() / st_want.abs().max().clamp(min=1e-30)).item())
    out["int8_ok"] = max(out["int8_max_rel_err"], out["int8_static_max_rel_err"]) <= 1e-6
    if fp8_ok:
        s_x = torch.tensor([float(x.abs().max()) / 448], device=x.device)
        x_f8 = quantize_fp8(x, s_x)
        out["fp8_quant_rows_equal"] = bool(torch.equal(quantize_rows_fp8(x, s_x).view(torch.uint8),
                                                       x_f8.view(torch.uint8)))
        got = fp8_gemm(x_f8, layer["w_f8"][0], s_x, layer["s_f8"][0], out_dtype=torch.float32)
        want = fp8_gemm_ref(x_f8, layer["w_f8"][0], s_x, layer["s_f8"][0], out_dtype=torch.float32)
        out["fp8_max_rel_err"] = float(((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item())
        fused = static_linear(x, layer["w_f8"][0], layer["s_f8"][0], s_x, out_dtype=torch.float32, fp8=True)
        out["fp8_fused_max_rel_err"] = float(((fused - want).abs().max() / want.abs().max().clamp(min=1e-30)).item())
        got = fp8_gemm_triton(x_f8, layer["w_f8"][0], s_x, layer["s_f8"][0], out_dtype=torch.float32)
        out["fp8_triton_max_rel_err"] = float(((got - want).abs().max() / want.abs().max().clamp(min=1e-30)).item())
        out["fp8_ok"] = (max(out["fp8_max_rel_err"], out["fp8_triton_max_rel_err"], out["fp8_fused_max_rel_err"])
                         <= 1e-4 and out["fp8_quant_rows_equal"])   # fp32 sums in other orders
    return out


def sweep_configs(m: int) -> list[Int8GemmConfig]:
    """Tile candidates for M rows: M tiles no taller than the next power of two of M (min 16)."""
    cap = max(16, 1 << (m - 1).bit_length())
    out = []
    for bm, bn, bk, warps, stages in itertools.product((16, 32, 64, 128), (32, 64, 128, 256), (64, 128, 256),
                                                       (4, 8), (3, 4, 5)):
        smem = stages * (bm + bn) * bk
        too_few_warps = bm * bn >= 128 * 256 and warps == 4
        too_many_warps = bm * bn <= 64 * 64 and warps == 8
        if bm > cap or smem > 220 * 1024 or too_few_warps or too_many_warps:
            continue
        out.append(Int8GemmConfig(bm, bn, bk, 8 if bm >= 64 else 1, warps, stages))
    return out


def sweep_point(time_it, fn, m: int, budget_s: float, dry_run: bool):
    """(ms, config) of the fastest tile config of `fn(i, cfg)` for M rows within `budget_s` seconds, or None."""
    deadline = time.time() + budget_s
    best = None
    for cfg in sweep_configs(m) if not dry_run else [Int8GemmConfig(16, 16, 32, 1, 1, 1)]:
        if time.time() > deadline:
            break
        try:
            t, _ = time_it(lambda i, cfg=cfg: fn(i, cfg))
        except Exception:   # out of shared memory / registers: not a candidate
            continue
        if best is None or t < best[0]:
            best = (t, cfg)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--m", default=",".join(map(str, M_LIST)), help="comma-separated token counts")
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated subset of " + ",".join(SHAPES))
    p.add_argument("--reps", type=int, default=20, help="calls per timed CUDA graph")
    p.add_argument("--iters", type=int, default=10, help="timed replays (median)")
    p.add_argument("--sweep", action="store_true", help="also time Triton INT8 / FP8 tile configs, report the best")
    p.add_argument("--sweep-budget", type=float, default=420.0, help="seconds the sweep may take in all")
    p.add_argument("--dry-run", action="store_true", help="CPU: tiny shapes under the Triton interpreter")
    args = p.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() and not args.dry_run else "cpu")
    torch.backends.cuda.matmul.allow_tf32 = False      # the FP8 emulation must be fp32, not TF32
    shapes = DRY_SHAPES if args.dry_run else {s: SHAPES[s] for s in args.shapes.split(",")}
    ms = [1, 5, 33] if args.dry_run else [int(v) for v in args.m.split(",")]
    reps, iters = (2, 1) if args.dry_run else (args.reps, args.iters)
    l2 = torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else 0
    fp8_reason = fp8_supported(device) if device.type == "cuda" else None
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": __import__("triton").__version__, "dtype": str(DTYPE),
            "fp8": fp8_reason or "supported", "reps": reps, "iters": iters}
    print(json.dumps(info), flush=True)
    time_it = timer(device, reps, iters)
    gen = torch.Generator().manual_seed(0)
    results, checks, sweep = [], [], {}
    t_start = time.time()
    for name, (n, k) in shapes.items():
        copies = weight_copies(n, k, device, l2)
        layer = make_layer(n, k, copies, device, gen)
        for m in ms:
            x = torch.randn(m, k, generator=gen).to(device, DTYPE)
            c = check(m, name, layer, x, fp8_reason is None)
            checks.append(c)
            flop = 2.0 * m * n * k
            x_q, s_x = quantize_rows(x)
            x_pad = torch.cat([x_q, x_q.new_zeros(max(0, 17 - m), k)]) if m < 17 else x_q
            s_static = torch.tensor([float(x.abs().max()) / 448], device=device)
            s_i8 = torch.tensor([float(x.abs().max()) / 127], device=device)
            x_f8 = quantize_fp8(x, s_static)
            L = layer
            runs = {
                "bf16": lambda i: F.linear(x, L["w"][i % copies]),
                "int_mm": lambda i: torch._int_mm(x_pad, L["w_q"][i % copies].t()),
                "int8": lambda i: int8_gemm(x_q, L["w_q"][i % copies], s_x, L["s_w"][i % copies], out_dtype=DTYPE),
                "int8+q": lambda i: w8a8_linear(x, L["w_q"][i % copies], L["s_w"][i % copies], out_dtype=DTYPE),
                "int8_static": lambda i: static_linear(x, L["w_q"][i % copies], L["s_w"][i % copies], s_i8,
                                                       out_dtype=DTYPE),
            }
            if fp8_reason is None:
                runs["fp8"] = lambda i: fp8_gemm(x_f8, L["w_f8"][i % copies], s_static, L["s_f8"][i % copies],
                                                 out_dtype=DTYPE)
                runs["fp8_triton"] = lambda i: fp8_gemm_triton(x_f8, L["w_f8"][i % copies], s_static,
                                                               L["s_f8"][i % copies], out_dtype=DTYPE)
                runs["fp8_fused"] = lambda i: static_linear(x, L["w_f8"][i % copies], L["s_f8"][i % copies],
                                                            s_static, out_dtype=DTYPE, fp8=True)
                runs["fp8+q"] = lambda i: fp8_linear(x, L["w_f8"][i % copies], L["s_f8"][i % copies],
                                                     act_scale=s_static)
            row = {"m": m, "shape": name, "n": n, "k": k, "ok": bool(c["int8_ok"] and c["quant_rows_equal"]
                                                                     and c.get("fp8_ok", True))}
            for meth, fn in runs.items():
                try:
                    ms_, mode = time_it(fn)
                    row[meth] = {"ms": ms_, "tflops": flop / ms_ / 1e9, "mode": mode}
                except Exception as e:   # recorded, never hidden: a path that fails at a shape says why
                    row[meth] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            row["int8_config"] = int8_gemm_config(m, n, k, device).as_list()
            results.append(row)
            cells = " ".join(f"{meth} {row[meth]['tflops']:7.1f}" if "tflops" in row[meth] else f"{meth}   error"
                             for meth in runs)
            print(f"M={m:5d} {name:5s} ok={row['ok']!s:5s} TFLOP/s  {cells}", flush=True)
            if args.sweep:
                kernels = {"int8": lambda i, cfg: int8_gemm(x_q, L["w_q"][i % copies], s_x, L["s_w"][i % copies],
                                                            out_dtype=DTYPE, config=cfg)}
                if fp8_reason is None:
                    kernels["fp8_triton"] = lambda i, cfg: fp8_gemm_triton(
                        x_f8, L["w_f8"][i % copies], s_static, L["s_f8"][i % copies], out_dtype=DTYPE, config=cfg)
                share = args.sweep_budget / (len(shapes) * len(ms) * len(kernels))   # an equal share each
                for kind, fn in kernels.items():
                    best = sweep_point(time_it, fn, m, share, args.dry_run)
                    if best is None:
                        continue
                    sweep.setdefault(kind, {})[f"{m},{n},{k}"] = {
                        "ms": best[0], "tflops": flop / best[0] / 1e9, "config": best[1].as_list(),
                        "default_ms": row[kind].get("ms")}
                    print(f"    sweep {kind} best {best[1].as_list()} {flop / best[0] / 1e9:7.1f} TFLOP/s "
                          f"(default {row[kind].get('tflops', float('nan')):7.1f})", flush=True)
        del layer
        if device.type == "cuda":
            torch.cuda.empty_cache()
    bad = [c for c in checks if not (c["int8_ok"] and c["quant_rows_equal"] and c.get("fp8_ok", True))]
    summary = (f"{len(results)} (M, shape) points, {len(checks) - len(bad)} of {len(checks)} correct, "
               f"{time.time() - t_start:.0f} s")
    print(summary, flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"info": info, "checks": checks, "results": results, "sweep": sweep,
                                        "summary": summary}, indent=1))
    if bad:
        sys.exit(f"correctness failed at {len(bad)} points: {bad[:3]}")


if __name__ == "__main__":
    main()
