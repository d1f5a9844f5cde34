"""Triton building blocks of the weight-only kernels (`triton_weight_only`): integers to floats, the input
loaders, group scales, the result store, and the two small kernels beside the GEMV and GEMM (the split-K
reduction and the whole-weight dequantization).

Kept apart from the kernels so that each file holds one responsibility; the kernels compose these pieces
and tests/kernels/test_triton_weight_only.py exercises every one of them through the kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .triton_gemv import _epilogue, _input_tile
from .weight_only_configs import WoConfig

# ---- integer -> float, shared by every kernel -------------------------------------------------------------
# CVT "magic": an integer u in [0, 2^23) with the bits of 2^23 ORed in is the float 2^23 + u, so one logic op
# and one float subtract replace the integer-to-float conversion ("i2f"), which runs at a quarter of the FMA
# rate. "fold" (INT4): see `_nibble_mantissa`.
@triton.jit
def _int8_to_float(b, CVT: tl.constexpr):
    """int8 tile -> fp32 values in [-128, 127]."""
    if CVT == "magic":
        # the byte zero-extended (no sign extension needed), then ^ 0x80 = b + 128 in [0, 255]
        u = b.to(tl.uint8, bitcast=True).to(tl.int32)
        return (u ^ 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    return b.to(tl.float32)


@triton.jit
def _int8_to_dot(b, CVT: tl.constexpr, X_TY: tl.constexpr):
    """int8 tile -> values in [-128, 127] for a tensor-core dot with x of type X_TY. With "magic" and fp16
    x the byte goes straight into an fp16 mantissa (0x6400 | (b + 128) reads 1024 + b + 128, exact, then
    one fp16 subtract): no fp32 round trip, whose fp32-to-fp16 conversions run at a quarter of the FMA rate
    on sm_90 and would bind a decode step's M = 1 tiles."""
    if CVT == "magic" and X_TY == tl.float16:
        u = b.to(tl.uint8, bitcast=True).to(tl.int16)
        # the literal makes the xor 32-bit: back to 16 bits before the bitcast (the interpreter does not care)
        return (u ^ 0x6480).to(tl.int16).to(tl.float16, bitcast=True) - 1152.0
    return _int8_to_float(b, CVT)


@triton.jit
def _int4_to_float(b, CVT: tl.constexpr):
    """int8 tile of packed pairs -> (low nibbles, high nibbles) as fp32 values in [-8, 7]."""
    if CVT == "magic":
        # the byte zero-extended; nibble ^ 8 = value + 8 in [0, 15]
        u = b.to(tl.uint8, bitcast=True).to(tl.int32)
        lo = ((u & 0xF) ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
        hi = ((u >> 4) ^ 0x4B000008).to(tl.float32, bitcast=True) - 8388616.0
    else:
        b32 = b.to(tl.int32)
        lo = ((b32 << 28) >> 28).to(tl.float32)   # arithmetic shifts sign-extend the nibble
        hi = (b32 >> 4).to(tl.float32)
    return lo, hi


@triton.jit
def _int4_to_dot(b, CVT: tl.constexpr, X_TY: tl.constexpr):
    """`_int4_to_float` for a tensor-core dot with x of type X_TY: with "magic" and fp16 x each nibble goes
    straight into an fp16 mantissa (0x6400 | (v + 8) reads 1024 + v + 8, one fp16 subtract), as
    `_int8_to_dot` does for bytes; otherwise the fp32 values cast to X_TY (exact: |v| <= 8)."""
    if CVT == "magic" and X_TY == tl.float16:
        u = b.to(tl.uint8, bitcast=True).to(tl.int16)
        lo = ((u & 0xF) ^ 0x6408).to(tl.int16).to(tl.float16, bitcast=True) - 1032.0
        hi = ((u >> 4) ^ 0x6408).to(tl.int16).to(tl.float16, bitcast=True) - 1032.0
        return lo, hi
    lo, hi = _int4_to_float(b, CVT)
    return lo.to(X_TY), hi.to(X_TY)


@triton.jit
def _nibble_mantissa(w, P: tl.constexpr, MANT: tl.constexpr):
    """Nibble P (bits 4P..4P+3) of int32 words w, two's complement v, as the bits of the float
    1 + (v + 8) / 16 = (v + 24) / 16 in a format with MANT mantissa bits (23 fp32, 10 fp16, 7 bf16): the
    nibble ^ 8 shifted into the mantissa's top 4 bits under the exponent of 1.0. One shift and one logic op;
    exact in all three formats."""
    # the nibble goes to bits MANT-4 .. MANT-1 (plain constexpr arithmetic: no annotated assignments, which
    # older Triton versions reject inside jit functions)
    if 4 * P <= MANT - 4:
        v = w << (MANT - 4 - 4 * P)
    else:
        v = w >> (4 * P - MANT + 4)      # the arithmetic shift's sign bits are masked off below
    if MANT == 23:
        one = 0x3F800000
    elif MANT == 10:
        one = 0x3C00
    else:
        one = 0x3F80
    return (v & (0xF << (MANT - 4))) ^ (one | (8 << (MANT - 4)))


@triton.jit
def _plane(w, P: tl.constexpr, MANT: tl.constexpr, TY: tl.constexpr):
    """Nibble P of int32 words as (v + 24) / 16 in TY (fp32, fp16 or bf16, MANT mantissa bits)."""
    bits = _nibble_mantissa(w, P, MANT)
    if MANT == 23:
        f = bits.to(tl.float32, bitcast=True)
    else:
        f = bits.to(tl.int16).to(TY, bitcast=True)
    return f


@triton.jit
def _x_sums(x_rows, NW, NB, PQ, mean, rstd, k_lo, k_hi, X_TY: tl.constexpr, M_PAD: tl.constexpr,
            BLOCK: tl.constexpr, NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_PQ: tl.constexpr):
    """sum over columns [k_lo, k_hi) of each row's input as the main loop sees it (normalised, times
    prequant, each rounded to x's dtype), [M_PAD, 1] fp32; x_rows: [M_PAD, 1, 1] row pointers. x is
    L2-resident and read contiguously: a few percent of the GEMV's loop."""
    offs = tl.arange(0, BLOCK)[None, None, :]
    acc = tl.zeros([M_PAD, 1, BLOCK], tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK):
        col = k0 + offs
        acc += _x_in(x_rows + col, NW + col, NB + col, col, k_hi, mean, rstd, PQ, X_TY, NORM, HAS_NORM_BIAS,
                     HAS_PQ, False)
    return tl.sum(acc, 2)


@triton.jit
def _x_in(x_ptrs, nw_ptrs, nb_ptrs, col, K, mean, rstd, PQ, X_TY: tl.constexpr, NORM: tl.constexpr,
          HAS_NORM_BIAS: tl.constexpr, HAS_PQ: tl.constexpr, EVEN_K: tl.constexpr):
    """The GEMV's input at columns `col` in fp32: [norm (triton_gemv's prologue), rounded to x's dtype]
    [* prequant, rounded again], as the unfused modules store each."""
    h = _input_tile(x_ptrs, nw_ptrs, nb_ptrs, col, K, mean, rstd, X_TY, NORM, HAS_NORM_BIAS, EVEN_K)
    if HAS_PQ:
        pq = tl.load(PQ + col, mask=col < K, other=0.0, eviction_policy="evict_last")
        h = (h * pq.to(tl.float32)).to(X_TY).to(tl.float32)
    return h


@triton.jit
def _group_scale(S, s_row, col, k0, K, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """Group-wise scales of the tile whose logical columns are `col` (k0 its first): a scale a row when
    the tile lies inside one group (BLOCK_K <= GROUP, k0 a multiple of BLOCK_K), else one an element
    (columns past K read the last group; their weights are 0)."""
    if BLOCK_K <= GROUP:
        s = tl.load(S + s_row + k0 // GROUP)
    else:
        s = tl.load(S + s_row + tl.minimum(col, K - 1) // GROUP)
    return s.to(tl.float32)


@triton.jit
def _scaled_x(ptrs, col, K, PQ, X_TY: tl.constexpr, HAS_PQ: tl.constexpr, EVEN_K: tl.constexpr):
    """x at logical columns `col` in fp32, times the AWQ pre-quant scale rounded to x's dtype (as an unfused
    multiply stores it)."""
    if EVEN_K:
        h = tl.load(ptrs, eviction_policy="evict_last")
    else:
        h = tl.load(ptrs, mask=col < K, other=0.0, eviction_policy="evict_last")
    if HAS_PQ:
        pq = tl.load(PQ + col, mask=col < K, other=0.0, eviction_policy="evict_last")
        h = (h.to(tl.float32) * pq.to(tl.float32)).to(X_TY)
    return h


@triton.jit
def _load_w(w_ptrs, offs_b, kb0, KB, EVEN_K: tl.constexpr):
    """The weight tile at element kb0, streamed once ("evict_first"); masked only where K has a tail."""
    if EVEN_K:
        wb = tl.load(w_ptrs + kb0, eviction_policy="evict_first")
    else:
        wb = tl.load(w_ptrs + kb0, mask=offs_b + kb0 < KB, other=0, eviction_policy="evict_first")
    return wb


@triton.jit
def _store_result(y, rows, offs_n, M, N, B, R, OUT, P, stride_rm, stride_om, pid_k, residual_scale,
                  HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr, SPLIT: tl.constexpr):
    """y [rows, cols] fp32 (scaled): with split K its partial to P [splits, M, N], else triton_gemv's
    epilogue ([+ bias] [act] [residual + residual_scale * y]), cast once, stored."""
    mask = (rows < M)[:, None] & (offs_n < N)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    if SPLIT:
        tl.store(P + pid_k.to(tl.int64) * M * N + rows64 * N + offs_n[None, :], y, mask=mask)
    else:
        bias = 0.0
        res = 0.0
        if HAS_BIAS:
            bias = tl.load(B + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        if HAS_RESIDUAL:
            res = tl.load(R + rows64 * stride_rm + offs_n[None, :], mask=mask, other=0.0)
        y = _epilogue(y, y, bias, 0.0, res, residual_scale, ACT, HAS_BIAS, False, False, HAS_RESIDUAL)
        tl.store(OUT + rows64 * stride_om + offs_n[None, :], y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _splitk_reduce_kernel(P, B, R, OUT, M, N, splits, stride_rm, stride_om, residual_scale, BLOCK: tl.constexpr,
                          HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, ACT: tl.constexpr):
    """OUT[m, n] = epilogue(sum over splits of P[split, m, n]), cast once."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < M * N
    acc = tl.zeros([BLOCK], tl.float32)
    for s in range(0, splits):
        acc += tl.load(P + s * M * N + offs, mask=mask, other=0.0)
    col = offs % N
    row = (offs // N).to(tl.int64)
    bias = 0.0
    res = 0.0
    if HAS_BIAS:
        bias = tl.load(B + col, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        res = tl.load(R + row * stride_rm + col, mask=mask, other=0.0)
    acc = _epilogue(acc, acc, bias, 0.0, res, residual_scale, ACT, HAS_BIAS, False, False, HAS_RESIDUAL)
    tl.store(OUT + row * stride_om + col, acc.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _dequant_kernel(W, S, OUT, N, K, KB, stride_wn, stride_sn, BLOCK_N: tl.constexpr, BLOCK_KB: tl.constexpr,
                    BITS: tl.constexpr, GROUP: tl.constexpr, CVT: tl.constexpr):
    """OUT [N, K] (x's dtype) = q * s, one [BLOCK_N, BLOCK_KB bytes] tile a program."""
    offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    kb = tl.program_id(1) * BLOCK_KB + tl.arange(0, BLOCK_KB)
    n64 = offs_n.to(tl.int64)[:, None]
    mask = (offs_n < N)[:, None] & (kb < KB)[None, :]
    wb = tl.load(W + n64 * stride_wn + kb[None, :], mask=mask, other=0)
    if GROUP > 0:
        col = kb
        if BITS == 4:
            col = kb * 2
        s = tl.load(S + n64 * stride_sn + col[None, :] // GROUP, mask=mask, other=0.0).to(tl.float32)
    else:
        s = tl.load(S + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[:, None]
    ty = OUT.dtype.element_ty
    if BITS == 4:
        lo, hi = _int4_to_float(wb, CVT)
        # interleave back to logical column order: [BLOCK_N, BLOCK_KB, 2] -> [BLOCK_N, 2 * BLOCK_KB]
        w = tl.reshape(tl.join((lo * s).to(ty), (hi * s).to(ty)), [BLOCK_N, 2 * BLOCK_KB])
        cols = 2 * tl.program_id(1) * BLOCK_KB + tl.arange(0, 2 * BLOCK_KB)
        omask = (offs_n < N)[:, None] & (cols < K)[None, :]
        tl.store(OUT + n64 * K + cols[None, :], w, mask=omask)
    else:
        w = (_int8_to_float(wb, CVT) * s).to(ty)
        tl.store(OUT + n64 * K + kb[None, :], w, mask=mask)


def dequantize_weight(weight: torch.Tensor, scales: torch.Tensor, *, bits: int, group_size: int | None,
                      dtype: torch.dtype, config: WoConfig | None = None) -> torch.Tensor:
    """The float weight [N, K] = q * s in `dtype`, by `_dequant_kernel` (the "dequant" path's first half)."""
    n, kb = weight.shape
    k = kb * 2 if bits == 4 else kb
    out = torch.empty(n, k, device=weight.device, dtype=dtype)
    bn = 16 if config is None else min(config.block_n, 64)
    bkb = 128
    _dequant_kernel[(triton.cdiv(n, bn), triton.cdiv(kb, bkb))](
        weight, scales, out, n, k, kb, weight.stride(0), scales.stride(0) if group_size else 0,
        BLOCK_N=bn, BLOCK_KB=bkb, BITS=bits, GROUP=group_size or 0,
        CVT="magic" if config is None else config.cvt, num_warps=4)
    return out
