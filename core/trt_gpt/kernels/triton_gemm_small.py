"""Fused GEMM for short prompt chunks: [norm] -> x @ W^T [+ bias] -> [act] [* gate] -> [+ residual], with
tensor-core tiles, for the steps of more rows than the decode GEMV (`triton_gemv`) takes.

A 128-token prefill of a small model is a chain of small kernels: each linear layer is a cuBLAS GEMM of
a few microseconds plus a norm kernel before it and bias, activation and residual kernels after it
(H200, GPT-2 medium, 128 tokens: 1.34 ms for the whole prefill graph, ~14 kernels a layer, half of them
elementwise). This kernel is the decode GEMV's function over [BLOCK_M, BLOCK_N] output tiles:

* the grid is (N tiles, M tiles) and every program walks all of K, so the epilogue sees complete sums
  (no split-K); each W tile is read by the M tiles of its column, which for a prompt of <= BLOCK_M
  rows means once;
* the norm prologue computes each row's statistics in a first pass over the program's x rows (L2
  resident), then normalises every x tile and rounds it to x's dtype before the dot: the rounding of the
  unfused path, which stores the norm output;
* the epilogue, the K/V cache scatter (`KVWrite`) and the host-side checks are the GEMV's own
  (`triton_gemv._store_kv`, `_check_args`), so both kernels compute one function;
* under programmatic dependent launch (Hopper) the first W tile, the biases and the cache slots load
  before `gdc_wait`, like the GEMV (rules in `triton_common.use_pdl`).

`gemv_ref.fused_linear_ref` is the reference (it takes any M). Tile sizes: `gemm_config`.

Measured on an H200 it lost to cuBLAS plus the separate kernels (GPT-2 medium's 128-token prefill graph:
1.42-1.45 ms with tiles tuned in the graph against 1.33-1.34 ms; docs/benchmarks.md, eighth session), so
the fused path takes it only where TRT_GPT_FUSED_PREFILL_TOKENS asks for it (model/fused_decode.py).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_common import dot_precision, next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl
from .triton_gemv import KVWrite, NormArgs, _check_args, _check_kv_write, _epilogue, _epilogue_inputs, _store_kv

CONFIG_ENV = "TRT_GPT_GEMM_CONFIGS"


@dataclass(frozen=True)
class GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


def gemm_config(m: int, n: int, k: int, device: torch.device) -> GemmConfig:
    """Tiles for an [m, k] x [k, n] product: a file named by TRT_GPT_GEMM_CONFIGS (JSON {"M,N,K": [bm, bn,
    bk, warps, stages]}, M rounded up to a power of two) first, else the heuristic below.

    The heuristic keeps every prompt of up to 64 rows in one M tile (W is then read once) and narrows the
    N tile until the grid has at least ~one program per SM: at these sizes the time is the W stream,
    spread over as many SMs as there are programs.
    """
    if device.type != "cuda":
        return GemmConfig(16, 16, 16, 1, 1)   # interpreter: small tiles so tests span several of each
    table = env_table()
    hit = table.get((next_pow2(m), n, k))
    if hit is not None:
        return hit
    block_m = max(16, min(64, next_pow2(m)))
    block_n = 64
    while block_n > 16 and triton.cdiv(n, block_n) * triton.cdiv(m, block_m) < 128:
        block_n //= 2
    return GemmConfig(block_m, block_n, 128 if k % 128 == 0 else 64, 4, 3)


_TABLE: dict | None = None


def env_table() -> dict[tuple[int, int, int], GemmConfig]:
    """The TRT_GPT_GEMM_CONFIGS file's table (parsed once per path); ValueError naming the file if it is bad."""
    global _TABLE
    path = os.environ.get(CONFIG_ENV, "")
    if _TABLE is None or _TABLE.get("__path__") != path:
        table: dict = {"__path__": path}
        if path:
            try:
                with open(path) as f:
                    raw = json.load(f)
                for key, vals in raw.items():
                    m, n, k = (int(v) for v in key.split(","))
                    table[(m, n, k)] = GemmConfig(*(int(v) for v in vals))
            except (OSError, ValueError, TypeError) as e:
                raise ValueError(f"{CONFIG_ENV}={path}: expected JSON {{\"M,N,K\": [block_m, block_n, block_k, "
                                 f"num_warps, num_stages]}} ({e})") from None
        _TABLE = table
    return _TABLE


@triton.jit
def _load_tile(ptrs, mask, EVEN: tl.constexpr):
    if EVEN:
        return tl.load(ptrs)
    return tl.load(ptrs, mask=mask, other=0.0)


@triton.jit
def _x_tile(x_ptrs, k0, offs_k, K, NW, NB, mean, rstd, NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr,
            EVEN_K: tl.constexpr):
    """One [BLOCK_M, BLOCK_K] tile of the (normalised, rounded) input, in x's dtype for the dot."""
    kk = k0 + offs_k
    h = _load_tile(x_ptrs + k0, (kk < K)[None, :], EVEN_K)
    if NORM != "none":
        hf = h.to(tl.float32)
        if NORM == "layernorm":
            hf = hf - mean
        hf = hf * rstd * _load_tile(NW + kk, kk < K, EVEN_K).to(tl.float32)[None, :]
        if HAS_NORM_BIAS:
            hf += _load_tile(NB + kk, kk < K, EVEN_K).to(tl.float32)[None, :]
        h = hf.to(h.dtype)
    return h


@triton.jit
def _row_stats_2d(x_rows, x_ptrs, offs_k, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                  NORM: tl.constexpr):
    """(mean, rstd) [BLOCK_M, 1] of the program's rows: one pass of sums shifted by each row's first element
    (as the GEMV's prologue: no cancellation when |mean| >> std)."""
    mean = tl.zeros([BLOCK_M, 1], tl.float32)
    rstd = tl.full([BLOCK_M, 1], 1.0, tl.float32)
    if NORM == "layernorm":
        shift = tl.load(x_rows).to(tl.float32)[:, None]
        s1 = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        s2 = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ok = (k0 + offs_k < K)[None, :]
            d = tl.where(ok, tl.load(x_ptrs + k0, mask=ok, other=0.0).to(tl.float32) - shift, 0.0)
            s1 += d
            s2 += d * d
        mean_d = tl.sum(s1, 1)[:, None] / K
        var = tl.maximum(tl.sum(s2, 1)[:, None] / K - mean_d * mean_d, 0.0)
        mean = shift + mean_d
        rstd = 1.0 / tl.sqrt(var + eps)
    elif NORM == "rmsnorm":
        s2 = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ok = (k0 + offs_k < K)[None, :]
            xv = tl.load(x_ptrs + k0, mask=ok, other=0.0).to(tl.float32)
            s2 += xv * xv
        rstd = 1.0 / tl.sqrt(tl.sum(s2, 1)[:, None] / K + eps)
    return mean, rstd


@triton.jit
def _fused_gemm_kernel(X, W, B, G, GB, R, OUT, NW, NB, KC, VC, SLOTS,
                       M, N, K, stride_xm, stride_wn, stride_gn, stride_rm, stride_om,
                       eps, residual_scale, q_cols, kv_cols, stride_cb, stride_ch, stride_ct,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
                       GATED: tl.constexpr, HAS_GATE_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                       ACT: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr, KV_WRITE: tl.constexpr,
                       HEAD_DIM: tl.constexpr, CACHE_BLOCK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pdl_start(PDL)
    rows = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Rows and columns past the end re-read the last real one (always in bounds): only K needs a load mask.
    x_rows = X + tl.minimum(rows, M - 1).to(tl.int64) * stride_xm
    x_ptrs = x_rows[:, None] + offs_k[None, :]
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)[None, :]
    w_ptrs = W + n_ld * stride_wn + offs_k[:, None]          # [BLOCK_K, BLOCK_N]: W^T's tile
    g_ptrs = G + n_ld * stride_gn + offs_k[:, None]
    kmask = (offs_k < K)[:, None]
    # Weights, biases and cache slots do not depend on earlier kernels: load them under their tails.
    w_first = _load_tile(w_ptrs, kmask, EVEN_K)
    if GATED:
        g_first = _load_tile(g_ptrs, kmask, EVEN_K)
    bias, gate_bias, slot = _epilogue_inputs(B, GB, SLOTS, offs_n, rows, M, N, HAS_BIAS, HAS_GATE_BIAS, KV_WRITE)
    pdl_wait(PDL)
    pdl_release(PDL)
    omask = (rows < M)[:, None] & (offs_n < N)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    res = 0.0
    if HAS_RESIDUAL:
        res = tl.load(R + rows64 * stride_rm + offs_n[None, :], mask=omask, other=0.0)
    mean, rstd = _row_stats_2d(x_rows, x_ptrs, offs_k, K, eps, BLOCK_M, BLOCK_K, NORM)

    h = _x_tile(x_ptrs, 0, offs_k, K, NW, NB, mean, rstd, NORM, HAS_NORM_BIAS, EVEN_K)
    acc = tl.dot(h, w_first, input_precision=DOT_PRECISION)
    if GATED:
        acc_g = tl.dot(h, g_first, input_precision=DOT_PRECISION)
    for k0 in range(BLOCK_K, K, BLOCK_K):
        kk = (k0 + offs_k < K)[:, None]
        h = _x_tile(x_ptrs, k0, offs_k, K, NW, NB, mean, rstd, NORM, HAS_NORM_BIAS, EVEN_K)
        acc = tl.dot(h, _load_tile(w_ptrs + k0, kk, EVEN_K), acc, input_precision=DOT_PRECISION)
        if GATED:
            acc_g = tl.dot(h, _load_tile(g_ptrs + k0, kk, EVEN_K), acc_g, input_precision=DOT_PRECISION)

    yg = acc
    if GATED:
        yg = acc_g
    y = _epilogue(acc, yg, bias, gate_bias, res, residual_scale, ACT, HAS_BIAS, GATED, HAS_GATE_BIAS,
                  HAS_RESIDUAL).to(OUT.dtype.element_ty)
    tl.store(OUT + rows64 * stride_om + offs_n[None, :], y, mask=omask)
    if KV_WRITE:
        _store_kv(y, KC, VC, slot, rows, offs_n, M, N, q_cols, kv_cols, stride_cb, stride_ch, stride_ct,
                  HEAD_DIM, CACHE_BLOCK)


def fused_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
               norm: NormArgs | None = None, activation: str | None = None,
               gate_weight: torch.Tensor | None = None, gate_bias: torch.Tensor | None = None,
               residual: torch.Tensor | None = None, residual_scale: float = 1.0,
               out_dtype: torch.dtype | None = None, config: GemmConfig | None = None,
               kv_write: KVWrite | None = None) -> torch.Tensor:
    """`triton_gemv.fused_linear`'s function for x [M, K] of any M (meant for a few hundred rows at most),
    weight [N, K]; returns a new [M, N] tensor (`residual` is read, never written)."""
    m, n, k = _check_args(x, weight, bias, norm, activation, gate_weight, gate_bias, residual, max_m=None)
    _check_kv_write(kv_write, m, n, x.device)
    out = torch.empty(m, n, device=x.device, dtype=out_dtype or x.dtype)
    cfg = config or gemm_config(m, n, k, x.device)
    for v in (cfg.block_m, cfg.block_n, cfg.block_k):
        if v < 16 or v & (v - 1):
            raise ValueError(f"fused_gemm: tile sizes must be powers of two >= 16 (tl.dot), got {cfg}")
    pdl = use_pdl(x.device, gemv=True)
    dummy = x   # never dereferenced: the matching constexpr is False
    kvw = kv_write
    kc = kvw.k_cache if kvw is not None else dummy
    grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m))
    _fused_gemm_kernel[grid](
        x, weight, bias if bias is not None else dummy,
        gate_weight if gate_weight is not None else weight, gate_bias if gate_bias is not None else dummy,
        residual if residual is not None else out, out,
        norm.weight if norm is not None else dummy,
        norm.bias if norm is not None and norm.bias is not None else dummy,
        kc, kvw.v_cache if kvw is not None else dummy, kvw.slots if kvw is not None else dummy,
        m, n, k, x.stride(0), weight.stride(0), gate_weight.stride(0) if gate_weight is not None else 0,
        residual.stride(0) if residual is not None else 0, out.stride(0),
        float(norm.eps) if norm is not None else 0.0, float(residual_scale),
        kvw.q_cols if kvw is not None else 0, kvw.kv_heads * kvw.head_dim if kvw is not None else 0,
        *((kc.stride(0), kc.stride(1), kc.stride(2)) if kvw is not None else (0, 0, 0)),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NORM=norm.kind if norm is not None else "none",
        HAS_NORM_BIAS=norm is not None and norm.bias is not None, HAS_BIAS=bias is not None,
        GATED=gate_weight is not None, HAS_GATE_BIAS=gate_bias is not None,
        HAS_RESIDUAL=residual is not None, ACT=activation or "none", EVEN_K=k % cfg.block_k == 0,
        PDL=pdl, KV_WRITE=kvw is not None, HEAD_DIM=kvw.head_dim if kvw is not None else 1,
        CACHE_BLOCK=kc.shape[2] if kvw is not None else 1, DOT_PRECISION=dot_precision(x.dtype),
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **(pdl_launch(x.device) if pdl else {}),
    )
    return out


__all__ = ["GemmConfig", "gemm_config", "env_table", "fused_gemm", "KVWrite", "NormArgs"]
