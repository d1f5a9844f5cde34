"""The LoRA shrink for a step of a few rows (the fused decode path): v = norm(x) A[slot]^T, split over K.

At batch 1 the module path's segmented kernels (`triton_lora`) cost a shrink and an expand per adapted
layer on top of the layer's own kernels. On the fused path the expand happens in the GEMV's epilogue
(`lora_epilogue`), and this kernel is the shrink before it: every program takes one K range for all
M <= 8 rows, gathers each row's A[slot] tile and writes an fp32 partial v[split, m, :]; the GEMV sums the
partials in a fixed order. Splitting K (not rows or slots, of which a decode step has few) gives the
rank-R reduction enough programs to stream A at a useful rate; the number of splits is capped because
each GEMV program reads all of them.

With a norm the kernel applies the GEMV's norm prologue itself (`triton_gemv._row_stats` and
`_input_tile`: statistics recomputed per program from x, the normalised value rounded to x's dtype), so
the adapter sees exactly the input the base product sees. Rows with slot -1 (no adapter, padded graph
rows) get zero partials. Products accumulate in fp32; the GEMV rounds v to a 16-bit B's dtype as the
module path's expand does. Same function as `lora_ref.lora_add_ref` up to summation order.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .gemv_configs import GemvConfig
from .lora_epilogue import LoraEpilogue
from .triton_common import next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl
from .triton_gemv import NormArgs, _check_args, _input_tile, _row_stats, _stats_tile
from .triton_lora import shrink_splits

__all__ = ["LoraEpilogue", "lora_shrink_rows"]

MAX_SPLITS = 32
# elements of the [M_PAD, R, BLOCK_K] fp32 product tile a program keeps (32 registers a thread at 4 warps)
TILE_ELEMENTS = 4096


@triton.jit
def _shrink_rows_kernel(X, A, SLOTS, NW, NB, V, M, K, k_split, stride_xm, stride_as, stride_ar, stride_vs,
                        stride_vm, eps, M_PAD: tl.constexpr, R: tl.constexpr, BLOCK_K: tl.constexpr,
                        NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, EVEN_K: tl.constexpr,
                        STATS_K: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    split = tl.program_id(0)
    rows = tl.arange(0, M_PAD)
    r = tl.arange(0, R)
    k3 = tl.arange(0, BLOCK_K)[None, None, :]
    # the slots are a host upload and A a weight: read before the wait (triton_common.use_pdl)
    slot = tl.load(SLOTS + rows, mask=rows < M, other=-1)
    live = (slot >= 0)[:, None, None]
    a_ptrs = (A + tl.maximum(slot, 0).to(tl.int64)[:, None, None] * stride_as
              + r[None, :, None].to(tl.int64) * stride_ar + k3)
    pdl_wait(PDL)
    pdl_release(PDL)
    # padding rows re-read the last real row (in bounds); their partials are not stored
    x_rows = X + tl.minimum(rows, M - 1).to(tl.int64) * stride_xm
    mean, rstd = _row_stats(x_rows, K, eps, M_PAD, NORM, STATS_K)
    xb_ptrs = tl.broadcast_to(x_rows[:, None, None] + k3, [M_PAD, R, BLOCK_K])
    nw_ptrs = tl.broadcast_to(NW + k3, [1, R, BLOCK_K])
    nb_ptrs = tl.broadcast_to(NB + k3, [1, R, BLOCK_K])
    acc = tl.zeros([M_PAD, R, BLOCK_K], tl.float32)
    k_start = split * k_split
    for k0 in range(k_start, tl.minimum(K, k_start + k_split), BLOCK_K):
        kk = k3 + k0
        h = _input_tile(xb_ptrs + k0, nw_ptrs + k0, nb_ptrs + k0, kk, K, mean, rstd, X.dtype.element_ty, NORM,
                        HAS_NORM_BIAS, EVEN_K)
        a = tl.load(a_ptrs + k0, mask=live & (kk < K), other=0.0, eviction_policy="evict_first")
        acc += h * a.to(tl.float32)
    v = tl.sum(acc, 2)
    tl.store(V + split * stride_vs + rows.to(tl.int64)[:, None] * stride_vm + r[None, :], v,
             mask=(rows < M)[:, None])


def lora_shrink_rows(x: torch.Tensor, a: torch.Tensor, slots: torch.Tensor, *, norm: NormArgs | None = None,
                     block_k: int | None = None, max_splits: int = MAX_SPLITS) -> torch.Tensor:
    """fp32 partials v [splits, M, R] with sum_split v[split, m] = norm(x[m]) A[slots[m]]^T (zero where
    slots[m] < 0) for x [M <= 8, K], the pool's A [slots, R, K] and int32 `slots` [>= M] (the pool's fixed
    per-token column). `norm` as `fused_linear`'s; `block_k` and `max_splits` fix the tiling (tests)."""
    if a.dim() != 3 or x.dim() != 2 or a.shape[2] != x.shape[1] or a.dtype != x.dtype:
        raise ValueError(f"lora_shrink_rows: lora A must be [slots, R, K] in x's dtype for x [M, K], got A "
                         f"{tuple(a.shape)} {a.dtype} and x {tuple(x.shape)} {x.dtype}")
    m, _, k = _check_args(x, a[0], None, norm, None, None, None, None)   # x and norm as the GEMV takes them
    r = a.shape[1]
    if r < 1 or r & (r - 1):
        raise ValueError(f"lora_shrink_rows: lora rank {r} must be a power of two (the pool pads ranks)")
    if slots.dim() != 1 or slots.shape[0] < m or slots.dtype != torch.int32 or slots.device != x.device:
        raise ValueError(f"lora_shrink_rows: lora slots must be int32 [>= {m}] on {x.device}, got "
                         f"{tuple(slots.shape)} {slots.dtype}")
    m_pad = next_pow2(m)
    if block_k is None:
        # the widest tile the register budget allows: most splits are then a single tile (no serial loads)
        block_k = max(16, min(256, TILE_ELEMENTS // (m_pad * r), next_pow2(k)))
    splits, k_split = shrink_splits(1, k, block_k, target=max_splits, min_cols=block_k)
    v = torch.empty(splits, m, r, device=x.device, dtype=torch.float32)
    pdl = use_pdl(x.device)
    _shrink_rows_kernel[(splits,)](
        x, a, slots, norm.weight if norm is not None else x,
        norm.bias if norm is not None and norm.bias is not None else x, v, m, k, k_split, x.stride(0), a.stride(0),
        a.stride(1), v.stride(0), v.stride(1), float(norm.eps) if norm is not None else 0.0,
        M_PAD=m_pad, R=r, BLOCK_K=block_k, NORM=norm.kind if norm is not None else "none",
        HAS_NORM_BIAS=norm is not None and norm.bias is not None, EVEN_K=k % block_k == 0,
        STATS_K=_stats_tile(m, k, GemvConfig(block_n=r, block_k=block_k, num_warps=4, num_stages=1)), PDL=pdl,
        num_warps=4, num_stages=1, **(pdl_launch(x.device) if pdl else {}))
    return v

