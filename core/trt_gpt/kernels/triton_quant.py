"""Activation quantization in Triton (and the norm before it, or the norm alone: `norm_rows`): INT8
(per-token dynamic or static per-tensor scale, optional SmoothQuant smoother;
`int8_gemm_ref.quantize_activations`) and FP8 e4m3 (static per-tensor scale; `fp8_ref.quantize_fp8`),
bit-equal to those torch definitions. A dynamic scale takes one program a row; with a static scale a
row's K chunks are independent, so a decode step's few rows spread over many programs.

It is a kernel of its own rather than a prologue of the GEMM: a per-token scale needs the whole row's max
before the first K tile, and a GEMM prologue would redo that pass once per N tile. On the GPU it replaces
torch's chain of elementwise kernels (cast, divide, clamp, convert: four passes over x for FP8) by one.

Rounding is written out in fp32 and integer arithmetic so that the interpreter and the GPU run the same
operations: Triton's interpreter has no `rint`, and its fp32 -> fp8 conversion rounds ties away from zero
and flushes e4m3 subnormals. INT8: `(y + 1.5 * 2^23) - 1.5 * 2^23` rounds half to even (|y| <= 127).
FP8: the same trick with the constant scaled to e4m3's spacing at y's exponent (2^(e-3), or 2^-9 below
e4m3's smallest normal 2^-6) rounds y to the nearest e4m3 value, which is then encoded bit by bit
(sign, 4-bit exponent of bias 7, 3-bit mantissa; subnormals as multiples of 2^-9).
"""
from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .fp8_ref import FP8_DTYPE


@triton.jit
def _load_row_tile(x_row, smoother_ptr, offs, mask, HAS_SMOOTHER: tl.constexpr):
    x = tl.load(x_row + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_SMOOTHER:
        x = tl.math.div_rn(x, tl.load(smoother_ptr + offs, mask=mask, other=1.0).to(tl.float32))
    return x


@triton.jit
def _e4m3_bits(y):
    """fp32 y, already saturated to +-448 -> the e4m3fn byte of its nearest value (ties to even), as int32."""
    bits = y.to(tl.int32, bitcast=True)
    e = ((bits >> 23) & 0xFF) - 127
    qe = tl.maximum(e, -6) - 3                                   # log2 of the e4m3 spacing at y
    c = ((qe + 150) << 23).to(tl.float32, bitcast=True) * 1.5    # 1.5 * 2^(qe + 23)
    r = (y + c) - c                                              # y rounded to a multiple of 2^qe
    rbits = r.to(tl.int32, bitcast=True)
    sign = (bits >> 24) & 0x80                                   # y's: r of a tiny negative y is +0
    er = ((rbits >> 23) & 0xFF) - 127
    normal = ((er + 7) << 3) | ((rbits >> 20) & 0x7)
    sub = (tl.abs(r) * 512.0).to(tl.int32)                       # 0..7 multiples of 2^-9
    return sign | tl.where(er >= -6, normal, sub)


INT8_KIND: tl.constexpr = tl.constexpr(1)
FP8_KIND: tl.constexpr = tl.constexpr(2)


@triton.jit
def quantize_tile(y, KIND: tl.constexpr):
    """A tile y = x / scale (fp32) as stored 8-bit values: KIND 1 int8 (saturate to +-127, round half to
    even), KIND 2 float8e4nv (saturate to +-448, nearest e4m3, ties to even). The one device-side definition
    of 8-bit quantization, for activations here and for any kernel that stores 8-bit values."""
    if KIND == 2:
        y = tl.minimum(tl.maximum(y, -448.0), 448.0)
        return _e4m3_bits(y).to(tl.uint8).to(tl.float8e4nv, bitcast=True)
    else:
        y = tl.minimum(tl.maximum(y, -127.0), 127.0)
        return ((y + 12582912.0) - 12582912.0).to(tl.int8)   # 1.5 * 2^23: rounds half to even


@triton.jit
def quantize_tile_bits(y, KIND: tl.constexpr):
    """`quantize_tile` as int8 storage bits (an 8-bit cache is handed to kernels as an int8 view, so one
    masked load/store with a zero fill serves both kinds)."""
    if KIND == 2:
        return _e4m3_bits(tl.minimum(tl.maximum(y, -448.0), 448.0)).to(tl.int8)   # low byte: the e4m3 bits
    else:
        return quantize_tile(y, 1)


@triton.jit
def dequantize_tile_bits(raw, scale, KIND: tl.constexpr):
    """int8 storage bits of KIND 1 (int8) or 2 (e4m3) times `scale`, in fp32: `kv_cache_spec.dequantize`."""
    if KIND == 2:
        x = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)
    else:
        x = raw.to(tl.float32)
    return x * scale


@triton.jit
def _normed_tile(x_row, nw_ptr, nb_ptr, offs, mask, mean, rstd, NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr):
    """x's tile in fp32, normalised (layernorm / rmsnorm with the row's statistics) and rounded to x's dtype
    as the unfused norm module stores it."""
    x = tl.load(x_row + offs, mask=mask, other=0.0)
    if NORM == "none":
        return x.to(tl.float32)
    h = x.to(tl.float32)
    if NORM == "layernorm":
        h = h - mean
    h = h * rstd * tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_NORM_BIAS:
        h += tl.load(nb_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return h.to(x.dtype).to(tl.float32)


@triton.jit
def _row_norm_stats(x_row, K, eps, NORM: tl.constexpr, BLOCK_K: tl.constexpr):
    """(mean, 1 / sqrt(var + eps)) of a row for layernorm, (0, 1 / sqrt(mean square + eps)) for rmsnorm."""
    mean = 0.0
    if NORM == "layernorm":
        acc = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            acc += tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32)
        mean = tl.sum(acc, axis=0) / K
    sq = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        d = tl.load(x_row + offs, mask=offs < K, other=0.0).to(tl.float32) - mean
        sq += tl.where(offs < K, d * d, 0.0)
    return mean, 1.0 / tl.sqrt(tl.sum(sq, axis=0) / K + eps)


@triton.jit
def _quant_rows_kernel(x_ptr, q_ptr, s_ptr, smoother_ptr, static_ptr, nw_ptr, nb_ptr, eps, K, k_chunk, stride_xm,
                       stride_qm, HAS_SMOOTHER: tl.constexpr, DYNAMIC: tl.constexpr, KIND: tl.constexpr,
                       BLOCK_K: tl.constexpr, NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr,
                       STATS_K: tl.constexpr):
    # program (row, chunk): with a static scale the chunks of a row are independent, so a decode step's one
    # row spreads over many SMs (one program a row quantized an 18,432-wide row in ~10 us on an H200, 128 of
    # them a 7B decode step: a quarter of its time); a dynamic scale needs the whole row (one chunk).
    row = tl.program_id(0).to(tl.int64)
    k_lo = tl.program_id(1) * k_chunk
    k_hi = tl.minimum(K, k_lo + k_chunk)
    x_row = x_ptr + row * stride_xm
    q_row = q_ptr + row * stride_qm
    mean = 0.0
    rstd = 1.0
    if NORM != "none":
        mean, rstd = _row_norm_stats(x_row, K, eps, NORM, STATS_K)   # of the whole row, in every chunk
    if DYNAMIC:
        amax = tl.zeros([BLOCK_K], dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs = k0 + tl.arange(0, BLOCK_K)
            amax = tl.maximum(amax, tl.abs(_load_row_tile(x_row, smoother_ptr, offs, offs < K, HAS_SMOOTHER)))
        a = tl.max(amax, axis=0)
        scale = tl.where(a > 0, tl.math.div_rn(a, 127.0), 1.0)
        tl.store(s_ptr + row, scale)
    else:
        scale = tl.load(static_ptr)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        mask = offs < k_hi
        if NORM != "none":   # static scales only (the host allows a norm with quantize_rows_fp8 alone)
            h = _normed_tile(x_row, nw_ptr, nb_ptr, offs, mask, mean, rstd, NORM, HAS_NORM_BIAS)
        else:
            h = _load_row_tile(x_row, smoother_ptr, offs, mask, HAS_SMOOTHER)
        if KIND == 0:
            tl.store(q_row + offs, h, mask=mask)   # the norm alone (`norm_rows`): already in x's dtype
        else:
            tl.store(q_row + offs, quantize_tile(tl.math.div_rn(h, scale), KIND), mask=mask)

def _launch(x: torch.Tensor, q: torch.Tensor, s: torch.Tensor, smoother: torch.Tensor | None, dynamic: bool,
            kind: int, block_k: int | None, norm: Any = None) -> None:
    """kind: 1 INT8, 2 FP8 e4m3, 0 none (norm_rows)."""
    m, k = x.shape
    if m == 0:
        return
    gpu = x.device.type == "cuda"
    if block_k is None:
        block_k = 32 if not gpu else min(4096 if dynamic else 512, triton.next_power_of_2(k))
    # static scales: one tile a program for a few rows (decode), whole rows when there are enough of them
    k_chunk = k if dynamic or m >= 64 else block_k
    sm = smoother.contiguous() if smoother is not None else s
    nw = norm.weight if norm is not None else s
    nb = norm.bias if norm is not None and norm.bias is not None else s
    _quant_rows_kernel[(m, triton.cdiv(k, k_chunk))](
        x, q, s, sm, s, nw, nb, float(norm.eps) if norm is not None else 0.0, k, k_chunk, x.stride(0), q.stride(0),
        HAS_SMOOTHER=smoother is not None, DYNAMIC=dynamic, KIND=kind, BLOCK_K=block_k,
        NORM=norm.kind if norm is not None else "none", HAS_NORM_BIAS=norm is not None and norm.bias is not None,
        STATS_K=max(block_k, min(4096, triton.next_power_of_2(k))) if gpu else block_k,
        num_warps=4 if block_k >= 512 else 1)


def _check(x: torch.Tensor, smoother: torch.Tensor | None) -> None:
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be a row-major [M, K] matrix, got {tuple(x.shape)} strides {x.stride()}")
    if smoother is not None and smoother.shape != (x.shape[1],):
        raise ValueError(f"smoother must be [{x.shape[1]}], got {tuple(smoother.shape)}")


def quantize_rows(x: torch.Tensor, act_scale: torch.Tensor | None = None,
                  smoother: torch.Tensor | None = None, block_k: int | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """`int8_gemm_ref.quantize_activations` in Triton: (x_q int8 [M, K], s_x fp32 [M] per token or [1])."""
    _check(x, smoother)
    m, k = x.shape
    q = torch.empty((m, k), dtype=torch.int8, device=x.device)
    dynamic = act_scale is None
    s = torch.empty(m, dtype=torch.float32, device=x.device) if dynamic else act_scale.float().reshape(1)
    _launch(x, q, s, smoother, dynamic, 1, block_k)
    return q, s


def quantize_rows_fp8(x: torch.Tensor, scale: torch.Tensor, block_k: int | None = None, norm: Any = None
                      ) -> torch.Tensor:
    """`fp8_ref.quantize_fp8` in Triton for a row-major x [M, K] and a per-tensor scale: e4m3 [M, K]. `norm`
    (a `triton_gemv.NormArgs`) normalises each row first, rounded to x's dtype as the norm module stores it."""
    _check(x, None)
    if norm is not None and (norm.weight.shape != (x.shape[1],) or norm.kind not in ("layernorm", "rmsnorm")):
        raise ValueError(f"norm must be a layernorm or rmsnorm over [{x.shape[1]}], got {norm.kind} "
                         f"{tuple(norm.weight.shape)}")
    q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    _launch(x, q, scale.float().reshape(1), None, False, 2, block_k, norm)
    return q


def norm_rows(x: torch.Tensor, norm: Any, block_k: int | None = None) -> torch.Tensor:
    """norm(x) for a row-major x [M, K] (a `triton_gemv.NormArgs`: layernorm or rmsnorm), fp32 statistics,
    rounded to x's dtype as the norm module stores it: the quantizing kernel without the quantization. For a
    few decode rows it spreads each row over many programs (torch's layer_norm runs a 4,608-wide row as one
    block: ~9 us on an H200), so a kernel without a norm prologue can take its input from here."""
    _check(x, None)
    if norm.weight.shape != (x.shape[1],) or norm.kind not in ("layernorm", "rmsnorm"):
        raise ValueError(f"norm must be a layernorm or rmsnorm over [{x.shape[1]}], got {norm.kind} "
                         f"{tuple(norm.weight.shape)}")
    out = torch.empty_like(x)
    # the scale argument is read but unused without quantization: any device tensor will do (a fresh
    # torch.ones here was a fill kernel a call, 55 us of a 7B decode step)
    _launch(x, out, norm.weight, None, False, 0, block_k, norm)
    return out
