"""Multi-LoRA gather-matmul in Triton: each token applies the adapter in its pool slot.

Two kernels, as in S-LoRA/Punica's BGMV: `shrink` computes v[t] = A[slot[t]] @ x[t] (rank-sized, fp32) and
`expand` adds B[slot[t]] @ v[t] to y[t] in place. One program per (token, block of outputs); a token whose
slot is negative (no adapter) masks every load and store, so a step mixing adapters and plain requests
runs one launch of each kernel with fixed grid shapes: no host synchronisation and no data-dependent
shapes, which keeps the kernels capturable in the decode CUDA graphs while adapters come and go.

Same function as `lora_ref.lora_add_ref` (float32 accumulation, one rounding to y's dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lora_ref import check_lora_args


@triton.jit
def _shrink_kernel(X, SLOTS, A, V, K, R, stride_x, stride_as, stride_ar, stride_v,
                   BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(SLOTS + t)
    # a negative slot shrinks the bounds to 0: every load and store masked off (a scalar-bool `&` on a
    # vector mask is not accepted everywhere)
    live = tl.where(slot >= 0, 1, 0)
    r = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < R * live
    base = A + tl.maximum(slot, 0).to(tl.int64) * stride_as
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        kmask = k < K * live
        x = tl.load(X + t * stride_x + k, mask=kmask, other=0.0).to(tl.float32)
        a = tl.load(base + r[:, None] * stride_ar + k[None, :], mask=rmask[:, None] & kmask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(a * x[None, :], axis=1)
    tl.store(V + t * stride_v + r, acc, mask=r < R)


@triton.jit
def _expand_kernel(V, SLOTS, B, Y, N, R, stride_v, stride_bs, stride_bn, stride_y,
                   BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr):
    t = tl.program_id(0)
    slot = tl.load(SLOTS + t)
    live = tl.where(slot >= 0, 1, 0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N * live
    base = B + tl.maximum(slot, 0).to(tl.int64) * stride_bs
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for r0 in range(0, R, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        rmask = r < R * live
        v = tl.load(V + t * stride_v + r, mask=rmask, other=0.0)
        b = tl.load(base + n[:, None] * stride_bn + r[None, :], mask=nmask[:, None] & rmask[None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(b * v[None, :], axis=1)
    yp = Y + t * stride_y + n
    y = tl.load(yp, mask=nmask, other=0.0).to(tl.float32)
    tl.store(yp, (y + acc).to(Y.dtype.element_ty), mask=nmask)


def _pow2(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, triton.next_power_of_2(max(n, 1))))


def lora_add(x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """y[t] += B[slots[t]] @ (A[slots[t]] @ x[t]) in place (rows with a negative slot unchanged); returns y.

    x [T, in], y [T, out] (row stride free, unit column stride), slots int32 with at least T entries,
    A [S, R, in], B [S, out, R] contiguous."""
    check_lora_args(x, y, slots, a, b)
    t, k = x.shape
    n, r = b.shape[1], a.shape[1]
    if t == 0:
        return y
    x = x if x.stride(1) == 1 else x.contiguous()
    v = torch.empty(t, r, device=x.device, dtype=torch.float32)
    block_r = _pow2(r, 16, 64)
    _shrink_kernel[(t, triton.cdiv(r, block_r))](x, slots, a, v, k, r, x.stride(0), a.stride(0), a.stride(1),
                                               v.stride(0), BLOCK_R=block_r, BLOCK_K=128)
    block_n = _pow2(n, 16, 128)
    _expand_kernel[(t, triton.cdiv(n, block_n))](v, slots, b, y, n, r, v.stride(0), b.stride(0), b.stride(1),
                                               y.stride(0), BLOCK_N=block_n, BLOCK_R=_pow2(r, 16, 64))
    return y
