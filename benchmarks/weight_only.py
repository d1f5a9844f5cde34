"""GPU benchmark of the weight-only INT8/INT4 linear layer (`trt_gpt.kernels.triton_weight_only`) against fp16
cuBLAS, with a config sweep.

Not a test (needs a CUDA GPU). For the linear layers of StarCoder2-7B and SantaCoder-1B (qkv, dense, fc,
proj) at M in {1, 16, 64, 256} it times, per weight format (int8 and int4 per channel, int4 with groups of
128 by default):
  * fp16   - `x @ w.T` on fp16 weights (cuBLAS), the baseline;
  * default - weight_only_linear with `wo_config`'s choice for the shape;
  * dequant - dequantize to fp16, then cuBLAS (the explicit fallback kernel);
  * with --sweep, GEMV tiles (M <= 16) and tensor-core GEMM tiles (M >= 16) around the heuristic's; every
    trial is checked against the torch reference first, and a wrong or failing config never wins.
Then, per model and format, one decode layer's four linear layers at M=1 with their fusions (norm +
qkv, dense + residual, norm + fc + gelu, proj + residual): fp16 `fused_linear` against weight-only with the
norm fused into the GEMV or applied apart. Each timing replays back-to-back calls captured in one CUDA
graph (M <= --graph-max-m, default all; else eager calls between CUDA events), median over replays,
cycling weight copies totalling > --flush-mb so that weights come from HBM, not L2. Results: a table,
per-model sums over the four layers, a WO_CONFIGS literal for kernels/weight_only_configs.py, and JSON
(--out, rewritten after every phase and swept case; the tuned table also as a TRT_GPT_WO_CONFIGS file,
--configs-out).

    PYTHONPATH=core:plugins python benchmarks/weight_only.py --out $OUT/wo.json [--sweep] [--budget-s 450]
    python benchmarks/weight_only.py --try gemv:16x512w4s1 gemv:8x256w4s1k2 --ms 1 --models starcoder2-7b
    python benchmarks/weight_only.py --dry-run          # CPU: tiny shapes, every code path, interpreter
"""
from __future__ import annotations

import argparse
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
sys.path.insert(0, str(Path(__file__).resolve().parent))     # gemv.py beside this file, however it is loaded

from gemv import Timer, copies_for, make_norm  # noqa: E402  (benchmarks/gemv.py: graph timer, L2 flushing)

import torch.nn.functional as F  # noqa: E402

from trt_gpt.kernels.triton_gemv import fused_linear  # noqa: E402
from trt_gpt.kernels.fp8_ref import fp8_gemm_ref, quantize_fp8  # noqa: E402
from trt_gpt.kernels.triton_weight_only import fp8_gemv, weight_only_linear  # noqa: E402
from trt_gpt.kernels.weight_only_configs import (GEMV_MAX_M, WoConfig, dump_wo_configs,  # noqa: E402
                                                 format_key, fp8_config, heuristic_config, interpreter_config)
from trt_gpt.kernels.weight_only_ref import pack_int4, weight_only_linear_ref  # noqa: E402

MODELS = {   # (N, K) of each linear layer
    "starcoder2-7b": dict(qkv=(5632, 4608), dense=(4608, 4608), fc=(18432, 4608), proj=(4608, 18432)),
    "santacoder-1b": dict(qkv=(2304, 2048), dense=(2048, 2048), fc=(8192, 2048), proj=(2048, 8192)),
}
DRY_MODELS = {"tiny": dict(qkv=(48, 128), dense=(128, 128), fc=(256, 128), proj=(128, 256))}
# name -> (bits, group); "fp8" is e4m3 weights and x with per-tensor scales (triton_weight_only.fp8_gemv, M <= 16
# only; its x is quantized once, outside the timed call)
FORMATS = {"int8": (8, None), "int4": (4, None), "int4g128": (4, 128), "int8g128": (8, 128), "fp8": (8, None)}


class EagerTimer:
    """Per-call µs of `calls` eager calls between CUDA events, median over replays."""

    def __init__(self, replays: int):
        self.replays = replays

    def __call__(self, step, calls: int) -> float:
        for i in range(2):
            step(i)
        torch.cuda.synchronize()
        times = []
        for _ in range(self.replays):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for i in range(calls):
                step(i)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e3 / calls)
        return statistics.median(times)


def gemv_candidates(m: int, k: int, bits: int, group: int | None) -> list[WoConfig]:
    """(block_n, bytes of K a tile) grid at 4 warps: tiles of 0.5-8 KB of weight bytes, with the fp32 partials
    (M_PAD x tile bytes) <= 64 a thread."""
    per_byte = 2 if bits == 4 else 1
    lo = max(256, min(1024, 8192 // pow2(m)))
    out = []
    cvt = heuristic_config(m, 4096, k, bits, group).cvt      # the heuristic's int->float variant
    for bn in (1, 2, 4, 8, 16, 32, 64):
        for kb in (64, 128, 256, 512):
            tile = bn * kb
            if not lo <= tile <= 8192 or pow2(m) * tile > 8192 or kb * per_byte > max(64, pow2(k)):
                continue
            out.append(WoConfig("gemv", bn, kb * per_byte, num_warps=4, cvt=cvt))
            if m == 1:   # more bytes in flight: a prefetched second tile, K split over more programs
                out += [WoConfig("gemv", bn, kb * per_byte, num_warps=4, num_stages=st, split_k=sk, cvt=cvt)
                        for st, sk in ((2, 1), (1, 2), (2, 2), (1, 4)) if kb * per_byte * sk * 4 <= max(64, k)]
    return out


def gemm_candidates(m: int, n: int, k: int, bits: int, group: int | None) -> list[WoConfig]:
    out = []
    for bm in (16, 32, 64, 128):
        if bm > max(16, pow2(m)) or (m >= 64 and bm < 64):
            continue
        for bn in (32, 64, 128):
            for bk in (64, 128):
                if bm * bn > 128 * 128 // (2 if bk == 128 else 1):
                    continue
                warps = 8 if bm * bn >= 128 * 128 else 4
                cvt = "fold" if bits == 4 and (group or 8) >= 8 and (group or bk) >= bk else "magic"
                base = WoConfig("gemm", bn, bk, num_warps=warps, num_stages=3, block_m=bm, cvt=cvt)
                split = heuristic_config(m, n, k, bits, None).split_k if m > GEMV_MAX_M else 1
                out.append(replace(base, split_k=split))
    return out


def neighbours(best: WoConfig, k: int, bits: int, group: int | None) -> list[WoConfig]:
    """Phase 2 around the phase-1 winner: warps, K splits, conversion instructions, pipeline depth."""
    out = [replace(best, num_warps=w) for w in (2, 4, 8) if w != best.num_warps]
    out += [replace(best, split_k=s) for s in (1, 2, 4, 8) if s != best.split_k and k // (s * best.block_k) >= 2]
    fold_ok = (best.kernel != "dequant" and bits == 4 and k % 8 == 0 and (group or 8) >= 8
               and (best.kernel == "gemv" or (group or best.block_k) >= best.block_k))
    out += [replace(best, cvt=c) for c in ("magic", "i2f", "fold") if c != best.cvt and (c != "fold" or fold_ok)]
    if best.kernel == "gemm":
        out += [replace(best, num_stages=s) for s in (2, 4) if s != best.num_stages]
    return out


def replace(cfg: WoConfig, **kw) -> WoConfig:
    return WoConfig(**(cfg.__dict__ | kw))


def pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


class Case:
    """One (model, layer, format, M): its weight copies, input, torch reference and timings."""

    def __init__(self, model, layer, n, k, m, fmt, args, device):
        self.model, self.layer, self.n, self.k, self.m, self.fmt = model, layer, n, k, m, fmt
        self.bits, self.group = FORMATS[fmt]
        gen = torch.Generator(device=device).manual_seed(n * 7 + k)
        self.x = torch.randn(m, k, device=device, generator=gen).to(torch.float16)
        self.prequant = ((torch.rand(k, device=device, generator=gen) + 0.5).to(torch.float16)
                         if args.prequant and fmt != "fp8" else None)
        if fmt == "fp8":
            w = (torch.randn(n, k, device=device, generator=gen) * 64).clamp(-448, 448).to(torch.float8_e4m3fn)
            self.scales = torch.full((1,), 0.02 / k ** 0.5, device=device)
            self.x_scale = torch.full((1,), 4.0 / 448, device=device)
            self.x_q = quantize_fp8(self.x, self.x_scale)
            self.ref = fp8_gemm_ref(self.x_q, w, self.x_scale, self.scales, out_dtype=torch.float32)
        else:
            qmax = 7 if self.bits == 4 else 127
            q = torch.randint(-qmax - 1, qmax + 1, (n, k), device=device, generator=gen, dtype=torch.int8)
            w = pack_int4(q) if self.bits == 4 else q
            del q
            ns = k // self.group if self.group else 1
            s = (torch.rand(n, ns, device=device, generator=gen) + 0.5) / (qmax * k ** 0.5)
            self.scales = (s if self.group else s[:, 0]).to(torch.float16).contiguous()
            self.ref = weight_only_linear_ref(self.x, w, self.scales, bits=self.bits, group_size=self.group,
                                              prequant=self.prequant, out_dtype=torch.float32)
        self.ncopy = copies_for(w.numel(), args.flush_mb)
        self.weights = [w] + [w.clone() for _ in range(self.ncopy - 1)]
        self.calls = max(args.calls, self.ncopy)
        self.wbytes = w.numel() + self.scales.numel() * 2
        self.row = dict(model=model, layer=layer, N=n, K=k, M=m, format=fmt, weight_bytes=self.wbytes,
                        weight_copies=self.ncopy, trials={}, errors={})

    def step(self, cfg: WoConfig | None):
        if self.fmt == "fp8":
            return lambda i: fp8_gemv(self.x_q, self.weights[i % self.ncopy], self.scales, self.x_scale,
                                      out_dtype=torch.float16, config=cfg)

        def run(i):
            return weight_only_linear(self.x, self.weights[i % self.ncopy], self.scales, bits=self.bits,
                                      group_size=self.group, prequant=self.prequant, config=cfg)
        return run

    def trial(self, cfg: WoConfig, timer, tol: float) -> float | None:
        """Check `cfg` against the reference, then time it; None (and an error entry) if it fails either."""
        label = cfg.short()
        if label in self.row["trials"] or label in self.row["errors"]:
            return self.row["trials"].get(label)
        try:
            got = self.step(cfg)(0).float()
            err = ((got - self.ref).abs().max() / self.ref.abs().max()).item()
            if not err <= tol:
                self.row["errors"][label] = f"wrong: rel err {err:.2e} > {tol}"
                return None
            us = timer(self.step(cfg), self.calls)
        except Exception as e:  # noqa: BLE001 - a bad config must never abort the sweep
            self.row["errors"][label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            return None
        self.row["trials"][label] = us
        return us

    def best(self) -> tuple[str | None, float | None]:
        t = {c: v for c, v in self.row["trials"].items() if v is not None}
        if not t:
            return None, None
        c = min(t, key=t.get)
        return c, t[c]


def run_defaults(case: Case, args, timer, device, fp16_cache: dict) -> None:
    """fp16 cuBLAS, the default config and the dequant fallback of one case."""
    row = case.row
    key = (case.n, case.k, case.m)
    if key not in fp16_cache:
        gen = torch.Generator(device=device).manual_seed(1)
        w16 = (torch.randn(case.n, case.k, device=device, generator=gen) * case.k ** -0.5).to(torch.float16)
        ncopy = copies_for(w16.numel() * 2, args.flush_mb)
        ws = [w16] + [w16.clone() for _ in range(ncopy - 1)]
        fp16_cache[key] = timer(lambda i: case.x @ ws[i % ncopy].T, max(args.calls, ncopy))
        del ws, w16
    row["fp16_us"] = fp16_cache[key]
    if case.fmt == "fp8":
        default = fp8_config(case.m, case.n, case.k, interpret=device.type == "cpu")
    else:
        default = (interpreter_config if device.type == "cpu" else heuristic_config)(case.m, case.n, case.k,
                                                                                    case.bits, case.group)
    row["default_config"] = default.short()
    row["default_us"] = case.trial(default, timer, args.tol)
    if case.fmt != "fp8":
        row["dequant_us"] = case.trial(WoConfig("dequant", 16, 128), timer, args.tol)
    for text in args.try_configs or []:
        cfg = WoConfig.from_short(text)
        if (cfg.cvt == "fp8") != (case.fmt == "fp8") or cfg.cvt == "fold" and case.bits != 4:
            continue
        if cfg.kernel != "gemv" or case.m <= GEMV_MAX_M:
            case.trial(cfg, timer, args.tol)


def run_sweep(case: Case, args, timer, deadline: float) -> None:
    m, n, k = case.m, case.n, case.k
    if case.fmt == "fp8":
        return     # fp8: the defaults and --try configs only
    families = []
    if m <= GEMV_MAX_M:
        families.append(gemv_candidates(m, k, case.bits, case.group))
    if m >= 16:
        families.append(gemm_candidates(m, n, k, case.bits, case.group))
    for cands in families:
        for cfg in cands:
            if time.perf_counter() > deadline:
                case.row["sweep_cut"] = True
                return
            case.trial(cfg, timer, args.tol)
        ranked = sorted((c for c in cands if case.row["trials"].get(c.short()) is not None),
                        key=lambda c: case.row["trials"][c.short()])
        for cfg in neighbours(ranked[0], k, case.bits, case.group) if ranked else []:
            if time.perf_counter() > deadline:
                case.row["sweep_cut"] = True
                return
            case.trial(cfg, timer, args.tol)


def finish_row(case: Case) -> dict:
    row = case.row
    row["best_config"], row["best_us"] = case.best()
    if row["best_us"] and row.get("fp16_us"):
        row["speedup_vs_fp16"] = row["fp16_us"] / row["best_us"]
        row["best_weight_gbps"] = case.wbytes / (row["best_us"] * 1e-6) / 1e9
    return row


def run_chain(model: str, shapes: dict, fmt_: str, args, timer, device) -> dict:
    """One decode layer's four linear layers at M=1 with their fusions, as the fused decode path runs them
    (norm + qkv, dense + residual, norm + fc + gelu, proj + residual; attention left out): fp16 through
    triton_gemv.fused_linear, and the weight-only format with the norm fused into the GEMV ("fused") or
    computed once by F.layer_norm first ("norm apart": the INT4 loop is instruction-bound, and the fused norm
    is recomputed for every weight tile)."""
    bits, group = FORMATS[fmt_]
    gen = torch.Generator(device=device).manual_seed(3)
    hidden = shapes["dense"][1]
    names = ("qkv", "dense", "fc", "proj")
    qmax = 7 if bits == 4 else 127

    def int_layer(n, k):
        q = torch.randint(-qmax - 1, qmax + 1, (n, k), device=device, generator=gen, dtype=torch.int8)
        ns = k // group if group else 1
        s = ((torch.rand(n, ns, device=device, generator=gen) + 0.5) / (qmax * k ** 0.5)).to(torch.float16)
        return dict(w=pack_int4(q) if bits == 4 else q, s=s if group else s[:, 0].contiguous(),
                    w16=(q.float() * (s.float().repeat_interleave(group, 1) if group else s.float())).half(),
                    b=(0.1 * torch.randn(n, device=device, generator=gen)).half())

    layer_bytes = sum(shapes[nm][0] * shapes[nm][1] * 2 for nm in names)
    ncopy = copies_for(layer_bytes, args.flush_mb)
    layers = []
    for _ in range(ncopy):
        ly = {nm: int_layer(*shapes[nm]) for nm in names}
        ly["ln1"] = make_norm(hidden, torch.float16, device, gen)
        ly["ln2"] = make_norm(hidden, torch.float16, device, gen)
        layers.append(ly)
    x = torch.randn(1, hidden, device=device, generator=gen).half()
    attn = torch.randn(1, hidden, device=device, generator=gen).half()

    def fp16(i):
        ly = layers[i % ncopy]
        qkv = fused_linear(x, ly["qkv"]["w16"], ly["qkv"]["b"], norm=ly["ln1"])
        r1 = fused_linear(attn, ly["dense"]["w16"], ly["dense"]["b"], residual=x)
        h = fused_linear(r1, ly["fc"]["w16"], ly["fc"]["b"], norm=ly["ln2"], activation="gelu")
        return qkv, fused_linear(h, ly["proj"]["w16"], ly["proj"]["b"], residual=r1)

    def wo(norm_apart):
        def lin(inp, lw, norm=None, **kw):
            if norm is not None and norm_apart:
                inp = F.layer_norm(inp, (hidden,), norm.weight, norm.bias, norm.eps)
                norm = None
            return weight_only_linear(inp, lw["w"], lw["s"], lw["b"], bits=bits, group_size=group, norm=norm, **kw)

        def step(i):
            ly = layers[i % ncopy]
            qkv = lin(x, ly["qkv"], norm=ly["ln1"])
            r1 = lin(attn, ly["dense"], residual=x)
            h = lin(r1, ly["fc"], norm=ly["ln2"], activation="gelu")
            return qkv, lin(h, ly["proj"], residual=r1)
        return step

    row = dict(model=model, format=fmt_, M=1, layer_copies=ncopy, errors={})
    ref = [t.float() for t in fp16(0)]
    for key, step in (("fp16_us", fp16), ("wo_fused_us", wo(False)), ("wo_norm_apart_us", wo(True))):
        try:
            if key != "fp16_us":
                got = step(0)
                row[key.replace("_us", "_rel_err")] = max(((g.float() - r).abs().max() / r.abs().max()).item()
                                                          for g, r in zip(got, ref))
            row[key] = timer(step, max(args.chain_calls, ncopy))
        except Exception as e:  # noqa: BLE001
            row[key] = None
            row["errors"][key] = f"{type(e).__name__}: {str(e)[:200]}"
    return row


def fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def print_row(row: dict, elapsed: float) -> None:
    print(f"[{elapsed:6.1f}s] {row['model']:14} {row['layer']:6} {row['format']:9} M={row['M']:<4} "
          f"{row['N']:>6}x{row['K']:<6} fp16 {fmt(row.get('fp16_us'), '8.2f')}us | default "
          f"{fmt(row.get('default_us'), '8.2f')}us | dequant {fmt(row.get('dequant_us'), '8.2f')}us | best "
          f"{fmt(row.get('best_us'), '8.2f')}us {row.get('best_config') or '-':>24} "
          f"x{fmt(row.get('speedup_vs_fp16'), '.2f')} {fmt(row.get('best_weight_gbps'), '5.0f')}GB/s "
          f"({len(row['trials'])} ok, {len(row['errors'])} err)", flush=True)


def summaries(rows: list[dict]) -> list[dict]:
    """Per (model, format, M): the four layers' summed fp16 and best times (a decode layer's GEMMs)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["model"], r["format"], r["M"]), []).append(r)
    out = []
    for (model, fmt_, m), rs in groups.items():
        if any(r.get("best_us") is None or r.get("fp16_us") is None for r in rs):
            continue
        fp16, best = sum(r["fp16_us"] for r in rs), sum(r["best_us"] for r in rs)
        out.append(dict(model=model, format=fmt_, M=m, layers=len(rs), fp16_us=fp16, best_us=best,
                        speedup=fp16 / best))
    return out


def tuned_table(rows: list[dict]) -> dict:
    table = {}
    for r in rows:
        if r.get("best_config"):
            bits, group = FORMATS[r["format"]]
            table[("fp8" if r["format"] == "fp8" else format_key(bits, group), pow2(r["M"]), r["N"], r["K"])] = WoConfig.from_short(r["best_config"])
    return table


def write(args, meta: dict, rows: list[dict]) -> None:
    if not args.out:
        return
    table = tuned_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(dict(meta=meta, cases=rows, summaries=summaries(rows),
                                   configs=json.loads(dump_wo_configs(table))), indent=1))
    tmp.replace(args.out)
    cfg_out = args.configs_out or args.out.with_name(args.out.stem + ".configs.json")
    cfg_out.write_text(dump_wo_configs(table))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="write all rows here as JSON")
    ap.add_argument("--configs-out", "--configs_out", type=Path,
                    help="the tuned table as a TRT_GPT_WO_CONFIGS file (default: <out stem>.configs.json)")
    ap.add_argument("--sweep", action="store_true", help="also sweep GEMV / GEMM tiles per case")
    ap.add_argument("--try", dest="try_configs", nargs="+", metavar="CFG",
                    help="extra configs to time on every case, e.g. gemv:16x512w4s1 gemm:64x128x64w4s3k2")
    ap.add_argument("--dry-run", "--dry_run", action="store_true", help="CPU/interpreter: tiny shapes")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--formats", nargs="+", default=["int8", "int4", "int4g128"], choices=list(FORMATS))
    ap.add_argument("--ms", nargs="+", type=int, default=[1, 16, 64, 256])
    ap.add_argument("--prequant", action="store_true", help="include an AWQ pre-quant scale in every call")
    ap.add_argument("--flush-mb", "--flush_mb", type=float, default=256.0,
                    help="weight copies per case total at least this")
    ap.add_argument("--calls", type=int, default=20, help="calls per timing (at least one per weight copy)")
    ap.add_argument("--replays", type=int, default=10, help="timings per measurement; the median is reported")
    ap.add_argument("--graph-max-m", "--graph_max_m", type=int, default=1 << 30,
                    help="capture calls in a CUDA graph up to this M (eager calls between events above)")
    ap.add_argument("--tol", type=float, default=1e-2, help="max relative error vs the torch reference")
    ap.add_argument("--no-chain", "--no_chain", action="store_true", help="skip the decode-layer chains")
    ap.add_argument("--chain-calls", "--chain_calls", type=int, default=8, help="layer chains per timing")
    ap.add_argument("--budget-s", "--budget_s", type=float, default=450.0,
                    help="stop sweeping this many seconds after the start (defaults, fp16 and the chains come "
                         "first); keep it ~100 s under the call's time limit")
    args = ap.parse_args(argv)
    if args.dry_run:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        models, ms = DRY_MODELS, [1, 17]
        args.flush_mb, args.calls, args.replays = 0.0, 1, 1
    else:
        if not torch.cuda.is_available():
            print("weight_only.py needs a CUDA GPU (or --dry-run)", file=sys.stderr)
            return 2
        device = torch.device("cuda")
        models, ms = {m: MODELS[m] for m in args.models}, args.ms
    graph_timer = Timer(device, args.replays)
    eager_timer = EagerTimer(args.replays) if device.type == "cuda" else graph_timer
    t0 = time.perf_counter()
    meta = dict(device=torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu (interpreter)",
                torch=torch.__version__, triton=__import__("triton").__version__,
                args={k: str(v) for k, v in vars(args).items()})
    print("per-call µs (CUDA-graph replays, weights cycled past L2); x = fp16 / best weight-only; GB/s = weight "
          "bytes / best time; configs: kernel:[block_m x]block_n x block_k w<warps> s<stages> [k<split>]", flush=True)
    cases, fp16_cache = [], {}
    for m in ms:       # phase 1: baseline, default config and fallback of every case (phase 2: the chains)
        timer = graph_timer if m <= args.graph_max_m else eager_timer
        for model, shapes in models.items():
            for fmt_ in args.formats:
                if fmt_ == "fp8" and m > GEMV_MAX_M:
                    continue
                for layer, (n, k) in shapes.items():
                    case = Case(model, layer, n, k, m, fmt_, args, device)
                    run_defaults(case, args, timer, device, fp16_cache)
                    print_row(finish_row(case), time.perf_counter() - t0)
                    case.weights = case.weights[:1]          # keep one copy for the sweep
                    cases.append(case)
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    write(args, meta, [c.row for c in cases])
    chains = []
    if not args.no_chain and 1 in ms:
        print("\n# one decode layer's linear layers at M=1 with their fusions (CUDA graph; attention left out)")
        for model, shapes in models.items():
            for fmt_ in (f for f in args.formats if f != "fp8"):
                c = run_chain(model, shapes, fmt_, args, graph_timer, device)
                chains.append(c)
                print(f"{model:14} {fmt_:9} fp16 fused {fmt(c.get('fp16_us'), '8.2f')}us | weight-only, norm fused "
                      f"{fmt(c.get('wo_fused_us'), '8.2f')}us (err {fmt(c.get('wo_fused_rel_err'), '.1e')}) | norm "
                      f"apart {fmt(c.get('wo_norm_apart_us'), '8.2f')}us {c['errors'] or ''}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    meta["chains"] = chains
    write(args, meta, [c.row for c in cases])
    if args.sweep:     # phase 3, in the order of the cases (M=1 first), until the budget runs out
        deadline = t0 + args.budget_s
        print("\n# sweep", flush=True)
        for case in cases:
            if time.perf_counter() > deadline:
                case.row["sweep_cut"] = True
                continue
            case.ncopy = copies_for(case.weights[0].numel(), args.flush_mb)
            case.weights = [case.weights[0]] + [case.weights[0].clone() for _ in range(case.ncopy - 1)]
            run_sweep(case, args, graph_timer if case.m <= args.graph_max_m else eager_timer, deadline)
            case.weights = case.weights[:1]
            print_row(finish_row(case), time.perf_counter() - t0)
            write(args, meta | dict(elapsed_s=time.perf_counter() - t0), [c.row for c in cases])
    rows = [c.row for c in cases]
    print("\n# sums over each model's layers (one decode layer's linear layers)")
    for s in summaries(rows):
        print(f"{s['model']:14} {s['format']:9} M={s['M']:<4} fp16 {s['fp16_us']:9.2f}us  weight-only "
              f"{s['best_us']:9.2f}us  x{s['speedup']:.2f}")
    print("\n# WO_CONFIGS entries (kernels/weight_only_configs.py)")
    for key, cfg in sorted(tuned_table(rows).items()):
        print(f"    {key}: WoConfig.from_short({cfg.short()!r}),")
    meta["elapsed_s"] = time.perf_counter() - t0
    write(args, meta, rows)
    bad = [r for r in rows if r.get("default_us") is None]
    print(f"done in {meta['elapsed_s']:.1f}s: {len(rows)} cases, {len(bad)} whose default config failed"
          + (f"; wrote {args.out}" if args.out else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
