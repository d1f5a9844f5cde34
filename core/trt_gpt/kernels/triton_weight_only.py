"""Weight-only quantized linear layer on the GPU: y = round_x(x * prequant) @ (q * s)^T + bias with INT8 or
packed INT4 weights q and per-channel or group-wise scales s (format and torch reference: weight_only_ref).

At batch 1 a decode step is bound by reading the weights once, so the integer weights are streamed as they
are stored and dequantized in registers; nothing float-sized is ever written. Three kernels, picked per
shape by `weight_only_configs.wo_config` (or a `config=` argument), compute the same function:

* `_gemv_kernel` (decode, M <= 16): each program owns BLOCK_N rows of W and a K range; the fp32 partial
  products stay [M_PAD, BLOCK_N, BLOCK_KB]-shaped across the K loop and are reduced once at the end (no
  cross-lane reduction per tile), as in triton_gemv. x is read through pointers broadcast to the weight
  tile's shape, at the columns each weight element holds (INT4 bytes: two stride-2 views of x), so the
  weights are never interleaved in registers;
* `_gemm_kernel` (prompt steps): tensor-core tiles; the integer tile is converted to x's dtype in
  registers and fed to tl.dot. Integers up to 127 are exact in fp16/bf16, so per-channel scales are
  applied to the fp32 result, not to the weights;
* "dequant": `_dequant_kernel` writes the float weight, then cuBLAS (a baseline for large M).

INT4 at batch 1 is bound by instructions, not bytes: at the H200's ~4.8 TB/s a 132-SM GPU must retire ~30
INT4 weights a cycle per SM, ~4 issue slots each. How integers become floats (`WoConfig.cvt`) is therefore
a tuned choice: "i2f" conversion instructions (a quarter of the FMA rate), "magic" bit tricks (a logic op
and a float subtract), or for INT4 "fold", which reads 32-bit words of 8 nibbles and shifts each straight
into an fp32/fp16/bf16 mantissa (`weight_only_tiles._nibble_mantissa`), leaving the constant offset to be
removed once per row or per tile through sums of x (sm_90 SASS of the loops: ~4.4 instructions a weight in
both kernels, against ~5.7 (GEMV) and ~8-9 (GEMM) with "magic").

Both tiled kernels can split K over `split_k` programs per output tile when N alone gives too few
programs; the fp32 partials then go through `_splitk_reduce_kernel`, which runs the epilogue and casts.
Host-side checks read shapes only, so every path is CUDA-graph capturable.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .triton_common import dot_precision, next_pow2
from .triton_gemv import ACTIVATIONS, NORMS, NormArgs, _row_stats, _stats_tile
from .triton_quant import norm_rows
from .weight_only_configs import GEMV_MAX_M, WoConfig, fp8_config, wo_config
from .weight_only_ref import check_weight_only_args, scaled_input
from .weight_only_tiles import (_group_scale, _int4_to_dot, _int4_to_float, _int8_to_dot, _int8_to_float, _load_w,
                                _nibble_mantissa, _plane, _scaled_x, _splitk_reduce_kernel, _store_result, _x_in,
                                _x_sums, dequantize_weight)

MANTISSA = {torch.float32: 23, torch.float16: 10, torch.bfloat16: 7}


@triton.jit
def _gemv_kernel(X, W, S, B, PQ, OUT, P, M, N, K, KB, kb_split, stride_xm, stride_wn, stride_sn, stride_om,
                 NW, NB, R, stride_rm, eps, residual_scale,
                 M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KB: tl.constexpr,
                 BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PQ: tl.constexpr,
                 EVEN_K: tl.constexpr, CVT: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
                 NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr,
                 STATS_K: tl.constexpr, PREFETCH: tl.constexpr):
    # Optionally the decode GEMV's whole function (triton_gemv): a layernorm / rmsnorm prologue over K
    # (row statistics recomputed by every program from the L2-resident x) and the bias / activation /
    # residual epilogue.
    # W elements are int8 (INT8: a column each; INT4: two) or, with CVT "fold", int32 words of 8 INT4
    # columns; KB, kb_split and BLOCK_KB count these elements, COLS the columns in each.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = tl.arange(0, M_PAD)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_KB)[None, None, :]              # weight element within the tile
    # Padding rows / columns re-read the last real one (in bounds, never stored), so only K needs masks.
    # x pointers are broadcast to the weight tile's shape so that both get one register layout (see
    # triton_gemv); the redundant x reads hit L1.
    x_rows = X + tl.minimum(rows, M - 1).to(tl.int64)[:, None, None] * stride_xm
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)[None, :, None]
    w_ptrs = W + n_ld * stride_wn + offs_b
    s_row = n_ld * stride_sn
    x_ty = X.dtype.element_ty
    mean, rstd = _row_stats(X + tl.minimum(rows, M - 1).to(tl.int64) * stride_xm, K, eps, M_PAD, NORM, STATS_K)
    x_ptrs = tl.broadcast_to(x_rows + COLS * offs_b, [M_PAD, BLOCK_N, BLOCK_KB])
    nw_ptrs = tl.broadcast_to(NW + COLS * offs_b, [1, BLOCK_N, BLOCK_KB])
    nb_ptrs = tl.broadcast_to(NB + COLS * offs_b, [1, BLOCK_N, BLOCK_KB])
    acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_KB], tl.float32)
    s_act = 1.0
    if CVT == "fp8":
        s_act = tl.load(PQ).to(tl.float32)
    # The loop runs over weight elements: kb_split is a multiple of 16 on the GPU, so the compiler knows
    # every tile starts 16-byte aligned and loads it with 16-byte accesses (a loop over INT4 columns halved
    # to bytes lost that and issued 8-byte loads).
    kb_lo = pid_k * kb_split
    kb_hi = tl.minimum(KB, kb_lo + kb_split)
    if PREFETCH:
        wb_next = _load_w(w_ptrs, offs_b, kb_lo, KB, EVEN_K)
    for kb0 in range(kb_lo, kb_hi, BLOCK_KB):
        k0 = kb0 * COLS
        col = COLS * (offs_b + kb0)
        if PREFETCH:
            # Software double-buffering (num_stages >= 2): the next tile's load is issued before this
            # tile's math, two tiles in flight a thread (Triton pipelines only loads that feed a tl.dot).
            # With whole tiles the last iteration re-reads its own tile (an L1 hit) rather than masking
            # every load; with a K tail the masks are there anyway.
            wb = wb_next
            if EVEN_K:
                wb_next = _load_w(w_ptrs, offs_b, tl.maximum(tl.minimum(kb0 + BLOCK_KB, kb_hi - BLOCK_KB), kb_lo),
                                  KB, EVEN_K)
            else:
                wb_next = _load_w(w_ptrs, offs_b, kb0 + BLOCK_KB, KB, EVEN_K)
        else:
            wb = _load_w(w_ptrs, offs_b, kb0, KB, EVEN_K)
        if CVT == "fold":
            # Column 8c + p is nibble p (bits 4p..4p+3) of word c: shifted straight into the top of an fp32
            # mantissa under the exponent of 1.0, with p ^ 8 set, it reads f = 1 + (v + 8) / 16, i.e.
            # v = 16 f - 24. One shift and one logic op a weight, no byte extraction and no float op: the
            # -24 is applied once per row through sum(x) after the loop (fp32 loses ~3 bits to that
            # cancellation). sm_90 SASS: ~3 instructions a weight plus x, against ~4.5 with bytes.
            # With groups (a word lies in one group), the word's 8 products are summed first and the offset
            # and scale applied once a word: s * (sum x f - 1.5 sum x), the x sum shared by every row a
            # thread holds.
            part = tl.zeros([M_PAD, BLOCK_N, BLOCK_KB], tl.float32)
            xsum = tl.zeros([M_PAD, BLOCK_N, BLOCK_KB], tl.float32)
            for p in tl.static_range(8):
                f = _nibble_mantissa(wb, p, 23).to(tl.float32, bitcast=True)
                xp = _x_in(x_ptrs + k0 + p, nw_ptrs + k0 + p, nb_ptrs + k0 + p, col + p, K, mean, rstd, PQ, x_ty,
                           NORM, HAS_NORM_BIAS, HAS_PQ, EVEN_K)
                if GROUP > 0:
                    part += xp * f
                    xsum += xp
                else:
                    acc += xp * f
            if GROUP > 0:
                acc += (part - 1.5 * xsum) * _group_scale(S, s_row, col, k0, K, GROUP, BLOCK_K)
        elif CVT == "fp8":
            # e4m3 x (quantized once by triton_quant, not per weight tile) and e4m3 weights, both handed over
            # as int8 views (a masked load's zero fill needs an integer type): the product of two e4m3
            # values is exact in fp32
            if EVEN_K:
                xb = tl.load(x_ptrs + k0, eviction_policy="evict_last")
            else:
                xb = tl.load(x_ptrs + k0, mask=col < K, other=0, eviction_policy="evict_last")
            acc += xb.to(tl.float8e4nv, bitcast=True).to(tl.float32) * wb.to(tl.float8e4nv, bitcast=True).to(tl.float32)
        elif BITS == 4:
            lo, hi = _int4_to_float(wb, CVT)
            xe = _x_in(x_ptrs + k0, nw_ptrs + k0, nb_ptrs + k0, col, K, mean, rstd, PQ, x_ty, NORM,
                       HAS_NORM_BIAS, HAS_PQ, EVEN_K)
            xo = _x_in(x_ptrs + k0 + 1, nw_ptrs + k0 + 1, nb_ptrs + k0 + 1, col + 1, K, mean, rstd, PQ, x_ty, NORM,
                       HAS_NORM_BIAS, HAS_PQ, EVEN_K)
            # Instruction count decides INT4 at batch 1 (two weights a byte against ~4 issue slots a weight
            # at full HBM rate): two FMAs a byte per channel; with groups, the byte's pair sum is scaled
            # once (3 FP ops a byte instead of scaling both weights, 4).
            if GROUP > 0:
                acc += (xe * lo + xo * hi) * _group_scale(S, s_row, col, k0, K, GROUP, BLOCK_K)
            else:
                acc += xe * lo
                acc += xo * hi
        else:
            prod = _x_in(x_ptrs + k0, nw_ptrs + k0, nb_ptrs + k0, col, K, mean, rstd, PQ, x_ty, NORM, HAS_NORM_BIAS,
                         HAS_PQ, EVEN_K) * _int8_to_float(wb, CVT)
            if GROUP > 0:
                prod = prod * _group_scale(S, s_row, col, k0, K, GROUP, BLOCK_K)
            acc += prod
    y = tl.sum(acc, 2)
    if CVT == "fold" and GROUP > 0:
        y = 16.0 * y
    elif CVT == "fold":
        xs = _x_sums(x_rows, NW, NB, PQ, mean, rstd, COLS * kb_lo, tl.minimum(K, COLS * kb_hi), x_ty, M_PAD, 256,
                     NORM, HAS_NORM_BIAS, HAS_PQ)
        y = 16.0 * y - 24.0 * xs
    if CVT == "fp8":
        y = y * (s_act * tl.load(S).to(tl.float32))   # per-tensor scales: alpha = s_x * s_w
    elif GROUP == 0:
        y = y * tl.load(S + tl.minimum(offs_n, N - 1)).to(tl.float32)[None, :]
    _store_result(y, rows, offs_n, M, N, B, R, OUT, P, stride_rm, stride_om, pid_k, residual_scale, HAS_BIAS,
                  HAS_RESIDUAL, ACT, SPLIT)


@triton.jit
def _gemm_kernel(X, W, S, B, PQ, OUT, P, M, N, K, KB, kb_split, stride_xm, stride_wn, stride_sn, stride_om,
                 NW, NB, R, stride_rm, eps, residual_scale,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_KB: tl.constexpr,
                 BITS: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PQ: tl.constexpr,
                 EVEN_K: tl.constexpr, CVT: tl.constexpr, SPLIT: tl.constexpr, COLS: tl.constexpr,
                 DOT_PREC: tl.constexpr, MANT: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_k = tl.program_id(2)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_b = tl.arange(0, BLOCK_KB)
    x_rows = X + tl.minimum(rows, M - 1).to(tl.int64)[:, None] * stride_xm          # [BLOCK_M, 1]
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)[None, :]                          # [1, BLOCK_N]
    w_ptrs = W + n_ld * stride_wn + offs_b[:, None]                                 # [BLOCK_KB, BLOCK_N]
    s_row = n_ld * stride_sn
    x_ty = X.dtype.element_ty
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # over weight elements (int8, or int32 words with "fold"), as in _gemv_kernel
    kb_lo = pid_k * kb_split
    kb_hi = tl.minimum(KB, kb_lo + kb_split)
    for kb0 in range(kb_lo, kb_hi, BLOCK_KB):
        k0 = kb0 * COLS
        kb = offs_b + kb0
        if EVEN_K:
            wb = tl.load(w_ptrs + kb0, eviction_policy="evict_first")
        else:
            wb = tl.load(w_ptrs + kb0, mask=(kb < KB)[:, None], other=0, eviction_policy="evict_first")
        if CVT == "fold":
            # The 8 nibble planes [BLOCK_KB words, BLOCK_N] as (v + 24) / 16 in x's dtype (see
            # _nibble_mantissa), interleaved back to column order [BLOCK_K, BLOCK_N] for one dot with the
            # contiguous x tile; sum(x v) = 16 sum(x f) - 24 sum(x) is restored per row after the loop
            # (per channel) or per tile (groups: BLOCK_K <= GROUP).
            # join stacks on a new last axis: fj[c, n, k, j, i] is nibble i + 2 j + 4 k of word c
            fj = tl.join(tl.join(tl.join(_plane(wb, 0, MANT, x_ty), _plane(wb, 4, MANT, x_ty)),
                                 tl.join(_plane(wb, 2, MANT, x_ty), _plane(wb, 6, MANT, x_ty))),
                         tl.join(tl.join(_plane(wb, 1, MANT, x_ty), _plane(wb, 5, MANT, x_ty)),
                                 tl.join(_plane(wb, 3, MANT, x_ty), _plane(wb, 7, MANT, x_ty))))
            wt = tl.reshape(tl.permute(fj, (0, 2, 3, 4, 1)), [BLOCK_K, BLOCK_N])
            cols = k0 + tl.arange(0, BLOCK_K)
            xt = _scaled_x(x_rows + cols[None, :], cols[None, :], K, PQ, x_ty, HAS_PQ, EVEN_K)
            if GROUP > 0:
                t = tl.dot(xt, wt, input_precision=DOT_PREC)
                t -= 1.5 * tl.sum(xt.to(tl.float32), 1)[:, None]
                acc += t * _group_scale(S, s_row, cols[:, None], k0, K, GROUP, BLOCK_K)
            else:
                acc = tl.dot(xt, wt, acc, input_precision=DOT_PREC)
        elif BITS == 4:
            col = 2 * kb
            xe = _scaled_x(x_rows + col[None, :], col[None, :], K, PQ, x_ty, HAS_PQ, EVEN_K)
            xo = _scaled_x(x_rows + col[None, :] + 1, col[None, :] + 1, K, PQ, x_ty, HAS_PQ, EVEN_K)
            if GROUP >= BLOCK_K:
                # the tile lies in one group: integer weights into the dots (in fp16 without an fp32 round
                # trip, `_int4_to_dot`), the group's scale on the tile's fp32 sums
                lo, hi = _int4_to_dot(wb, CVT, x_ty)
                t = tl.dot(xe, lo, input_precision=DOT_PREC)
                t = tl.dot(xo, hi, t, input_precision=DOT_PREC)
                acc += t * _group_scale(S, s_row, col[:, None], k0, K, GROUP, BLOCK_K)
            elif GROUP > 0:
                lo, hi = _int4_to_float(wb, CVT)
                s = _group_scale(S, s_row, col[:, None], k0, K, GROUP, BLOCK_K)
                acc = tl.dot(xe, (lo * s).to(x_ty), acc, input_precision=DOT_PREC)
                acc = tl.dot(xo, (hi * s).to(x_ty), acc, input_precision=DOT_PREC)
            else:
                lo, hi = _int4_to_dot(wb, CVT, x_ty)
                acc = tl.dot(xe, lo, acc, input_precision=DOT_PREC)
                acc = tl.dot(xo, hi, acc, input_precision=DOT_PREC)
        elif CVT == "fp8":
            # e4m3 x (quantized by triton_quant) and e4m3 weights, both int8 views, straight into the FP8
            # tensor cores (sm_89+), fp32 accumulation: no conversion instruction a weight
            xt = _scaled_x(x_rows + kb[None, :], kb[None, :], K, PQ, x_ty, False, EVEN_K)
            acc = tl.dot(xt.to(tl.float8e4nv, bitcast=True), wb.to(tl.float8e4nv, bitcast=True), acc)
        else:
            w = _int8_to_dot(wb, CVT, x_ty)
            if GROUP > 0:
                w = w * _group_scale(S, s_row, kb[:, None], k0, K, GROUP, BLOCK_K)
            xt = _scaled_x(x_rows + kb[None, :], kb[None, :], K, PQ, x_ty, HAS_PQ, EVEN_K)
            acc = tl.dot(xt, w.to(x_ty), acc, input_precision=DOT_PREC)
    if CVT == "fp8":
        acc = acc * (tl.load(PQ).to(tl.float32) * tl.load(S).to(tl.float32))   # alpha = s_x * s_w
    elif CVT == "fold" and GROUP > 0:
        acc = 16.0 * acc
    elif CVT == "fold":
        # [BLOCK_M, 4096 / BLOCK_M] tiles: 32 fp32 a thread at 4 warps (256 wide spilled at BLOCK_M 64)
        xs = _x_sums(x_rows[:, :, None], NW, NB, PQ, 0.0, 1.0, COLS * kb_lo, tl.minimum(K, COLS * kb_hi), x_ty,
                     BLOCK_M, max(16, 4096 // BLOCK_M), "none", False, HAS_PQ)
        acc = 16.0 * acc - 24.0 * xs
    if GROUP == 0 and CVT != "fp8":
        acc = acc * tl.load(S + tl.minimum(offs_n, N - 1)).to(tl.float32)[None, :]
    _store_result(acc, rows, offs_n, M, N, B, R, OUT, P, stride_rm, stride_om, pid_k, residual_scale, HAS_BIAS,
                  HAS_RESIDUAL, ACT, SPLIT)


def weight_only_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                       bias: torch.Tensor | None = None, *, bits: int, group_size: int | None = None,
                       prequant: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                       config: WoConfig | None = None, norm: NormArgs | None = None, activation: str | None = None,
                       residual: torch.Tensor | None = None, residual_scale: float = 1.0) -> torch.Tensor:
    """y = round_x(x * prequant) @ (q * s)^T + bias for x [..., K] and INT8 [N, K] / packed INT4 [N, K // 2]
    weights with per-channel [N] or group-wise [N, K // group_size] scales; returns [..., N] in `out_dtype`
    (default x's). `config` forces a kernel and tiles (default: `wo_config`'s choice for this shape).

    The decode GEMV's fusions (`triton_gemv.fused_linear`'s meaning): `norm` normalises x first (rounded
    to x's dtype; gemv kernel only), `activation` and `residual` (+ residual_scale * y) follow the bias."""
    n, k = check_weight_only_args(x, weight, scales, bias, bits, group_size, prequant)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(1) != 1 or scales.stride(-1) != 1:
        raise ValueError("weight_only_linear: weight and scales must be contiguous along their last dimension")
    m = x2.shape[0]
    out_dtype = out_dtype or x.dtype
    if m == 0:
        return torch.empty(*lead, n, device=x.device, dtype=out_dtype)
    cfg = config or wo_config(m, n, k, bits, group_size, interpret=os.environ.get("TRITON_INTERPRET") == "1")
    if norm is not None and config is None and (cfg.kernel != "gemv" or x2.device.type == "cuda"):
        # The norm runs before the kernel (one small kernel), as the module path's norm does: the GEMM has
        # no norm prologue, and the GEMV's recomputes the row statistics in every program, which with 4-row
        # programs reads as many bytes of x from L2 as the layer has weights (a StarCoder2-7B INT8 decode
        # step: 3.5 ms of weight-only GEMVs in the engine against 2.4 ms for the same GEMVs without it).
        # The prologue stays for a forced config (and the interpreter's tests of it).
        x2, norm = norm_rows(x2, norm), None
    _check_config(cfg, m, k, weight, bits, group_size)
    _check_fusions(cfg, x2, m, n, k, norm, activation, residual)
    if cfg.kernel == "dequant":
        w = dequantize_weight(weight, scales, bits=bits, group_size=group_size, dtype=x.dtype, config=cfg)
        b = bias.to(x.dtype) if bias is not None else None
        return F.linear(scaled_input(x2, prequant), w, b).to(out_dtype).reshape(*lead, n)

    return _launch(x2, weight, scales, bias, prequant, cfg, bits, group_size, out_dtype, norm, activation, residual,
                   residual_scale).reshape(*lead, n)


def fp8_gemv(x_q: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor, act_scale: torch.Tensor,
             bias: torch.Tensor | None = None, *, out_dtype: torch.dtype, activation: str | None = None,
             residual: torch.Tensor | None = None, residual_scale: float = 1.0,
             config: WoConfig | None = None) -> torch.Tensor:
    """`fp8_ref.fp8_gemm`'s function for a step of at most GEMV_MAX_M rows, in the weight-only kernels: e4m3
    x_q [M, K] (`triton_quant.quantize_rows_fp8`, which can also normalise x first) and e4m3 weight [N, K],
    their per-tensor scales, fp32 accumulation, then the [bias, activation, residual] epilogue, one cast.
    The kernel is `weight_only_configs.fp8_config`'s choice (or `config`, whose cvt must be "fp8"): the GEMV
    (fp32 FMAs) or the GEMM (FP8 tensor cores, the rows padded to a tile)."""
    m, k = x_q.shape
    n = weight.shape[0]
    for name, t in (("x_q", x_q), ("weight", weight)):
        if t.dtype != torch.float8_e4m3fn or t.dim() != 2 or t.shape[1] != k or t.stride(1) != 1:
            raise ValueError(f"fp8_gemv: {name} must be a float8_e4m3fn [*, {k}] matrix contiguous along K, got "
                             f"{t.dtype} {tuple(t.shape)}")
    if weight_scale.numel() != 1 or act_scale.numel() != 1:
        raise ValueError("fp8_gemv: weight_scale and act_scale must be per-tensor (one element each)")
    if m > GEMV_MAX_M:
        raise ValueError(f"fp8_gemv: at most {GEMV_MAX_M} rows, got {m}")
    cfg = config or fp8_config(m, n, k, interpret=os.environ.get("TRITON_INTERPRET") == "1")
    if cfg.cvt != "fp8" or cfg.kernel == "dequant":
        raise ValueError(f"fp8_gemv: the config must be a gemv or gemm one with cvt 'fp8', got {cfg.short()}")
    _check_config(cfg, m, k, weight, 8, None)
    _check_fusions(cfg, x_q, m, n, k, None, activation, residual)
    return _launch(x_q.view(torch.int8), weight.view(torch.int8), weight_scale.float(), bias, act_scale.float(), cfg,
                   8, None, out_dtype, None, activation, residual, residual_scale)


def _launch(x2: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None,
            prequant: torch.Tensor | None, cfg: WoConfig, bits: int, group_size: int | None, out_dtype: torch.dtype,
            norm: NormArgs | None, activation: str | None, residual: torch.Tensor | None,
            residual_scale: float) -> torch.Tensor:
    """The tiled kernels' launch for checked arguments: out [M, N]."""
    m, k = x2.shape
    n = weight.shape[0]
    out = torch.empty(m, n, device=x2.device, dtype=out_dtype)
    cols = 8 if cfg.cvt == "fold" else (2 if bits == 4 else 1)      # logical columns a weight element holds
    w_arg = weight.view(torch.int32) if cfg.cvt == "fold" else weight  # _check_config made sure it can
    kb = w_arg.shape[1]
    # k_split: logical columns a split walks, a multiple of BLOCK_K so that tiles never straddle splits
    k_split = triton.cdiv(triton.cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    splits = triton.cdiv(k, k_split)
    part = torch.empty(splits, m, n, device=x2.device, dtype=torch.float32) if splits > 1 else out
    dummy = scales   # never dereferenced: the matching HAS_* / NORM constexpr is off
    res = residual.reshape(m, n) if residual is not None else out
    b = bias if bias is not None else dummy
    args = (x2, w_arg, scales, b, prequant if prequant is not None else dummy,
            out, part, m, n, k, kb, k_split // cols, x2.stride(0), w_arg.stride(0),
            scales.stride(0) if group_size else 0, out.stride(0),
            norm.weight if norm is not None else dummy,
            norm.bias if norm is not None and norm.bias is not None else dummy,
            res, res.stride(0), float(norm.eps) if norm is not None else 0.0, float(residual_scale))
    epilogue = dict(HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, ACT=activation or "none")
    common = dict(BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, BLOCK_KB=cfg.block_k // cols,
                  BITS=bits, GROUP=group_size or 0, HAS_PQ=prequant is not None and cfg.cvt != "fp8",
                  EVEN_K=k % cfg.block_k == 0, CVT=cfg.cvt, SPLIT=splits > 1, COLS=cols,
                  num_warps=cfg.num_warps, num_stages=cfg.num_stages, **epilogue)
    if cfg.kernel == "gemv":
        _gemv_kernel[(triton.cdiv(n, cfg.block_n), splits)](
            *args, M_PAD=next_pow2(m), PREFETCH=cfg.num_stages >= 2, NORM=norm.kind if norm is not None else "none",
            HAS_NORM_BIAS=norm is not None and norm.bias is not None,
            STATS_K=_stats_tile(m, k, cfg) if norm is not None else 1, **common)
    else:
        grid = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, cfg.block_m), splits)
        # MANT: the fold planes' mantissa width (x's float type; an FP8 step's int8 view has none)
        _gemm_kernel[grid](*args, BLOCK_M=cfg.block_m, DOT_PREC=dot_precision(x2.dtype),
                           MANT=MANTISSA.get(x2.dtype, 0), **common)
    if splits > 1:
        block = 1024
        _splitk_reduce_kernel[(triton.cdiv(m * n, block),)](part, b, res, out, m, n, splits, res.stride(0),
                                                            out.stride(0), float(residual_scale), BLOCK=block,
                                                            num_warps=4, **epilogue)
    return out


def _check_fusions(cfg: WoConfig, x: torch.Tensor, m: int, n: int, k: int, norm: NormArgs | None,
                   activation: str | None, residual: torch.Tensor | None) -> None:
    fn = "weight_only_linear"
    if norm is not None:
        if cfg.kernel != "gemv":
            raise ValueError(f"{fn}: the norm prologue exists in the gemv kernel only, got {cfg.short()}")
        if norm.kind not in NORMS or (norm.kind == "rmsnorm" and norm.bias is not None):
            raise ValueError(f"{fn}: norm kind must be one of {NORMS} (rmsnorm without bias), got {norm.kind!r}")
        for name, t in (("norm.weight", norm.weight), ("norm.bias", norm.bias)):
            if t is not None and (t.shape != (k,) or t.device != x.device or t.stride(0) != 1):
                raise ValueError(f"{fn}: {name} must be a contiguous [{k}] tensor on {x.device}, got "
                                 f"{tuple(t.shape)}")
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation {activation!r} is not one of {ACTIVATIONS}")
    if residual is not None and (residual.shape[-1] != n or residual.numel() != m * n
                                 or residual.device != x.device or residual.stride(-1) != 1):
        raise ValueError(f"{fn}: residual must be [..., {n}] with x's {m} rows on {x.device}, contiguous along N, "
                         f"got {tuple(residual.shape)}")
    if cfg.kernel == "dequant" and (norm is not None or activation is not None or residual is not None):
        raise ValueError(f"{fn}: the dequant kernel takes no norm, activation or residual")


def _check_config(cfg: WoConfig, m: int, k: int, weight: torch.Tensor, bits: int, group_size: int | None) -> None:
    if cfg.cvt == "fold":
        if bits != 4 or (group_size or 8) < 8:
            raise ValueError(f"weight_only_linear: cvt 'fold' is for int4 with groups of >= 8 columns only, got "
                             f"{cfg.short()} for int{bits}{f' group {group_size}' if group_size else ''}")
        if k % 8 or cfg.block_k < 8 or weight.stride(0) % 4 or weight.storage_offset() % 4:
            raise ValueError(f"weight_only_linear: cvt 'fold' reads int4 weights as 32-bit words: K={k} and "
                             f"block_k={cfg.block_k} must be multiples of 8, rows 4-byte aligned")
        if cfg.kernel == "gemm" and group_size and cfg.block_k > group_size:
            raise ValueError(f"weight_only_linear: gemm cvt 'fold' needs block_k <= group_size {group_size}, "
                             f"got {cfg.short()}")
    if cfg.kernel == "gemv" and m > GEMV_MAX_M:
        raise ValueError(f"weight_only_linear: the gemv kernel takes M <= {GEMV_MAX_M} rows, got M={m}")
    if bits == 4 and cfg.block_k < 2:
        raise ValueError(f"weight_only_linear: int4 tiles need block_k >= 2 (a byte), got {cfg.short()}")
    # the dots' K: the whole tile with "fold" (one dot), else its bytes (INT4: one dot a nibble)
    if cfg.kernel == "gemm" and (cfg.block_k if cfg.cvt == "fold" else cfg.block_k // (2 if bits == 4 else 1)) < 16:
        raise ValueError(f"weight_only_linear: gemm tiles need >= 16 bytes of K (tensor-core shapes), got "
                         f"{cfg.short()}")
