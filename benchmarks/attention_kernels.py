"""GPU benchmark of the Triton paged-attention kernels against the torch reference and torch SDPA.

Not a test (needs a CUDA GPU; CI never runs it). For each model shape, batch and context it first checks
the Triton output against `paged_attention_ref` computed in fp32 (relative max error), then times with
`triton.testing.do_bench` (median ms):
  * triton    - paged_decode_attention / paged_prefill_attention on a paged cache with shuffled blocks;
  * torch_ref - paged_attention_ref (per-sequence gather + matmul, the CPU path);
  * sdpa      - torch.nn.functional.scaled_dot_product_attention on K/V already laid out densely
                ([B, KVH, ctx, D], gathered outside the timed region): the "no paging" baseline.
Decode rows also report achieved bandwidth: bytes of K and V read / Triton time.

    python benchmarks/attention_kernels.py --out out/attention_kernels.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))

from trt_gpt.kernels.attention_ref import paged_attention_ref  # noqa: E402
from trt_gpt.kernels.triton_attention import (choose_num_splits, paged_decode_attention,  # noqa: E402
                                              paged_prefill_attention)
from trt_gpt.kernels.metadata import AttentionMetadata  # noqa: E402

MODELS = {
    "santacoder": dict(heads=16, kv_heads=1, head_dim=128),      # MQA
    "starcoder2-7b": dict(heads=36, kv_heads=4, head_dim=128),   # GQA, group of 9
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


def build(model: dict, batch: int, ctx: int, q_len: int, block_size: int, dtype: torch.dtype, seed: int = 0):
    """q, a paged cache holding `ctx` random tokens per sequence in shuffled blocks, metadata, dense K/V."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    h, kvh, d = model["heads"], model["kv_heads"], model["head_dim"]
    nblk = math.ceil(ctx / block_size)
    pool = batch * nblk
    k_cache = torch.randn(pool, kvh, block_size, d, device="cuda", dtype=dtype, generator=gen)
    v_cache = torch.randn(pool, kvh, block_size, d, device="cuda", dtype=dtype, generator=gen)
    perm = torch.randperm(pool, device="cuda", generator=gen).to(torch.int32)
    block_tables = perm.view(batch, nblk).contiguous()
    cu = torch.arange(0, (batch + 1) * q_len, q_len, device="cuda", dtype=torch.int32)
    pos = torch.arange(ctx - q_len, ctx, device="cuda")
    slots = (block_tables[:, pos // block_size].long() * block_size + pos % block_size).reshape(-1)
    meta = AttentionMetadata(cu_q_lens=cu, context_lens=torch.full((batch,), ctx, device="cuda", dtype=torch.int32),
                             block_tables=block_tables, slot_mapping=slots, max_q_len=q_len, max_context_len=ctx,
                             q_lens_host=[q_len] * batch, context_lens_host=[ctx] * batch)
    q = torch.randn(batch * q_len, h, d, device="cuda", dtype=dtype, generator=gen)

    def dense(cache):  # [B, KVH, ctx, D]
        g = cache[block_tables.long()]                                  # [B, nblk, KVH, bs, D]
        return g.permute(0, 2, 1, 3, 4).reshape(batch, kvh, nblk * block_size, d)[:, :, :ctx].contiguous()
    return q, k_cache, v_cache, meta, dense(k_cache), dense(v_cache)


def sdpa_fn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: int, q_len: int, scale: float):
    """A callable running SDPA on dense K/V; GQA through enable_gqa when supported, else pre-expanded K/V."""
    h = q.shape[1]
    qd = q.view(batch, q_len, h, -1).transpose(1, 2)                    # [B, H, q_len, D]
    causal = q_len > 1
    if q_len > 1 and q_len != k.shape[2]:
        return None, "n/a"  # chunked prefill: SDPA's is_causal aligns to the top-left, not our layout
    sdpa = torch.nn.functional.scaled_dot_product_attention
    try:
        sdpa(qd, k, v, is_causal=causal, scale=scale, enable_gqa=True)
        return (lambda: sdpa(qd, k, v, is_causal=causal, scale=scale, enable_gqa=True)), "gqa"
    except (TypeError, RuntimeError):
        rep = h // k.shape[1]
        ke, ve = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return (lambda: sdpa(qd, ke, ve, is_causal=causal, scale=scale)), "expanded"


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).abs().max() / ref.abs().max()).item()


def run_case(name: str, model: dict, batch: int, ctx: int, q_len: int, args, do_bench, do_bench_cudagraph) -> dict:
    dtype = DTYPES[args.dtype]
    q, kc, vc, meta, kd, vd = build(model, batch, ctx, q_len, args.block_size, dtype)
    scale = model["head_dim"] ** -0.5
    decode = q_len == 1
    if decode:
        fn = lambda: paged_decode_attention(q, kc, vc, meta, scale)  # noqa: E731
    else:
        fn = lambda: paged_prefill_attention(q, kc, vc, meta, scale)  # noqa: E731
    ref32 = paged_attention_ref(q.float(), kc.float(), vc.float(), meta, scale)
    err = rel_err(fn(), ref32)
    del ref32
    row = dict(model=name, kind="decode" if decode else "prefill", batch=batch, ctx=ctx, q_len=q_len,
               dtype=args.dtype, block_size=args.block_size, rel_err=err, ok=err <= args.tol)
    row["triton_ms"] = do_bench(fn, warmup=args.warmup, rep=args.rep)
    # The reference loops over sequences in Python; skip it where one call would take seconds.
    ref_flops = 4.0 * batch * q_len * ctx * model["heads"] * model["head_dim"]
    row["torch_ref_ms"] = (do_bench(lambda: paged_attention_ref(q, kc, vc, meta, scale), warmup=args.warmup,
                                    rep=args.rep) if ref_flops < args.max_ref_flops else None)
    sdpa, mode = sdpa_fn(q, kd, vd, batch, q_len, scale)
    row["sdpa_mode"] = mode
    row["sdpa_ms"] = do_bench(sdpa, warmup=args.warmup, rep=args.rep) if sdpa is not None else None
    if decode:
        # Serving replays decode steps as CUDA graphs, which removes the Python launch cost that dominates
        # small decode calls; report that time too, and the bandwidth it implies.
        row["triton_graph_ms"] = do_bench_cudagraph(fn, rep=args.rep, return_mode="median")
        kv_bytes = 2 * batch * ctx * model["kv_heads"] * model["head_dim"] * kc.element_size()
        row["num_splits"] = choose_num_splits(batch, model["kv_heads"], ctx,
                                              torch.cuda.get_device_properties(0).multi_processor_count)
        row["kv_bytes"] = kv_bytes
        row["triton_gbps"] = kv_bytes / (row["triton_ms"] * 1e-3) / 1e9
        row["triton_graph_gbps"] = kv_bytes / (row["triton_graph_ms"] * 1e-3) / 1e9
    else:
        causal_flops = 4.0 * batch * model["heads"] * model["head_dim"] * (q_len * ctx - q_len * (q_len - 1) / 2)
        row["triton_tflops"] = causal_flops / (row["triton_ms"] * 1e-3) / 1e12
    return row


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="write the result rows here as JSON")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    ap.add_argument("--contexts", nargs="+", type=int, default=[128, 512, 1024, 2048, 4096])
    ap.add_argument("--kinds", nargs="+", default=["decode", "prefill"], choices=["decode", "prefill", "chunk"],
                    help="chunk = a 512-token prefill chunk at the end of the context")
    ap.add_argument("--dtype", default="fp16", choices=list(DTYPES))
    ap.add_argument("--block-size", type=int, default=64, help="tokens per cache block")
    ap.add_argument("--tol", type=float, default=1e-2, help="max relative error vs the fp32 reference")
    ap.add_argument("--warmup", type=int, default=10, help="do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time (ms)")
    ap.add_argument("--max-ref-flops", type=float, default=2e12, help="skip timing torch_ref above this")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("attention_kernels.py needs a CUDA GPU", file=sys.stderr)
        return 2
    from triton.testing import do_bench, do_bench_cudagraph

    rows = []
    print("times in ms (do_bench median); graph = Triton decode replayed in a CUDA graph; x_sdpa = sdpa/triton;"
          " GB/s (decode, from the graph time) or TFLOP/s (prefill)")
    print(f"{'model':14} {'kind':7} {'B':>3} {'ctx':>5} {'q':>5} {'relerr':>8} {'triton':>9} {'graph':>9} "
          f"{'ref':>9} {'sdpa':>9} {'x_sdpa':>6} {'GB/s|TF':>8}")
    for name in args.models:
        for kind in args.kinds:
            for batch in args.batches:
                for ctx in args.contexts:
                    q_len = {"decode": 1, "prefill": ctx, "chunk": min(512, ctx)}[kind]
                    if kind == "chunk" and q_len == ctx:
                        continue
                    row = run_case(name, MODELS[name], batch, ctx, q_len, args, do_bench, do_bench_cudagraph)
                    rows.append(row)
                    speed = row.get("triton_graph_gbps", row.get("triton_tflops"))
                    vs = row["sdpa_ms"] / row["triton_ms"] if row["sdpa_ms"] else None
                    print(f"{name:14} {row['kind']:7} {batch:>3} {ctx:>5} {q_len:>5} {row['rel_err']:>8.1e} "
                          f"{fmt(row['triton_ms'], '9.4f')} {fmt(row.get('triton_graph_ms'), '9.4f')} {fmt(row['torch_ref_ms'], '9.3f')} "
                          f"{fmt(row['sdpa_ms'], '9.4f')} {fmt(vs, '6.2f')} {fmt(speed, '8.1f')}"
                          f"{'' if row['ok'] else '  WRONG'}", flush=True)
                    torch.cuda.empty_cache()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=torch.cuda.get_device_name(0), torch=torch.__version__,
                triton=__import__("triton").__version__)
    args.out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
