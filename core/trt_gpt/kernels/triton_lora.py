"""Multi-LoRA segmented gather-matmul in Triton: each token applies the adapter in its pool slot.

The step's tokens are grouped by slot on the host (`lora_ref.segments`: a permutation `perm` listing the
tokens of slot 0, then slot 1, ..., and `seg[s]:seg[s + 1]` the range of slot s in it; tokens without an
adapter are in no segment). Two kernels, as S-LoRA/Punica's SGMV: `shrink` computes v = x A[s]^T for a
chunk of up to BLOCK_T tokens of one segment (a tensor-core dot, A[s] read once per chunk, not per token)
and `expand` adds v B[s]^T into those tokens' rows of y. The grid is fixed by the step's token count and
the number of slots (programs whose chunk is past their segment's end exit at once), so the kernels
take no host synchronisation and keep one shape per step size: capturable in the decode CUDA graphs while
adapters come and go (the graphs read `perm` and `seg` from fixed buffers the step writes).

Same function as `lora_ref.lora_add_ref` (float32 accumulation; fp32 inputs multiply in IEEE fp32, not
TF32; one rounding to y's dtype).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .lora_ref import check_lora_args

BLOCK_T = 16


@triton.jit
def _chunk_rows(PERM, SEG, s, chunk, BLOCK_T: tl.constexpr):
    """Chunk `chunk` of slot s's segment: (its tokens' rows [BLOCK_T] as int64, their mask, whether the
    chunk holds any token; a program whose chunk is past its segment's end does nothing)."""
    start = tl.load(SEG + s) + chunk * BLOCK_T
    end = tl.load(SEG + s + 1)
    t = start + tl.arange(0, BLOCK_T)
    tmask = t < end
    rows = tl.load(PERM + t, mask=tmask, other=0).to(tl.int64)
    return rows, tmask, start < end


@triton.jit
def _shrink_kernel(X, PERM, SEG, A, V, K, K_SPLIT, stride_x, stride_as, stride_ar, stride_vs, stride_v,
                   R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    # program (slot, chunk, split): the split's K range of v = x A[s]^T, as an fp32 partial V[split]
    s = tl.program_id(0)
    split = tl.program_id(2)
    rows, tmask, active = _chunk_rows(PERM, SEG, s, tl.program_id(1), BLOCK_T)
    if active:
        r = tl.arange(0, R)
        base = A + s.to(tl.int64) * stride_as
        acc = tl.zeros((BLOCK_T, R), dtype=tl.float32)
        for k0 in range(split * K_SPLIT, tl.minimum(K, (split + 1) * K_SPLIT), BLOCK_K):
            k = k0 + tl.arange(0, BLOCK_K)
            kmask = k < K
            x = tl.load(X + rows[:, None] * stride_x + k[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
            a = tl.load(base + r[None, :] * stride_ar + k[:, None], mask=kmask[:, None], other=0.0)   # [K, R]
            if IEEE:
                acc += tl.dot(x, a.to(x.dtype), input_precision="ieee")
            else:
                acc += tl.dot(x, a.to(x.dtype))
        tl.store(V + split * stride_vs + rows[:, None] * stride_v + r[None, :], acc, mask=tmask[:, None])


@triton.jit
def _expand_kernel(V, PERM, SEG, B, Y, N, SPLITS, stride_vs, stride_v, stride_bs, stride_bn, stride_y, CHUNKS,
                   R: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0)
    s = pid // CHUNKS
    rows, tmask, active = _chunk_rows(PERM, SEG, s, pid % CHUNKS, BLOCK_T)
    if active:
        r = tl.arange(0, R)
        v = tl.zeros((BLOCK_T, R), dtype=tl.float32)
        for sp in range(0, SPLITS):   # the shrink's K-split partials, summed in a fixed order
            v += tl.load(V + sp * stride_vs + rows[:, None] * stride_v + r[None, :], mask=tmask[:, None], other=0.0)
        n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = n < N
        b = tl.load(B + s.to(tl.int64) * stride_bs + n[None, :] * stride_bn + r[:, None], mask=nmask[None, :],
                    other=0.0)                                                                      # [R, N]
        if IEEE:
            acc = tl.dot(v, b, input_precision="ieee")
        else:
            # v rounded to the adapter's 16-bit type, as a 16-bit PEFT model's lora_A output is
            acc = tl.dot(v.to(b.dtype), b)
        yp = Y + rows[:, None] * stride_y + n[None, :]
        m = tmask[:, None] & nmask[None, :]
        y = tl.load(yp, mask=m, other=0.0).to(tl.float32)
        tl.store(yp, (y + acc).to(Y.dtype.element_ty), mask=m)


def shrink_splits(programs: int, k: int, block_k: int, target: int = 128, min_cols: int = 256) -> tuple[int, int]:
    """(splits, columns a split) of the shrink's K loop. A step of few tokens has few (slot, chunk) programs,
    and one program walking all of K (8,192 columns: 128 dependent tiles) is a serial chain of loads: K is
    split until about `target` programs run, each split at least `min_cols` wide and a multiple of
    `block_k` (a split's tiles never straddle its neighbour's)."""
    splits = max(1, min(triton.cdiv(target, max(programs, 1)), k // min_cols))
    k_split = triton.cdiv(triton.cdiv(k, splits), block_k) * block_k
    return triton.cdiv(k, k_split), k_split


def lora_add(x: torch.Tensor, y: torch.Tensor, perm: torch.Tensor, seg: torch.Tensor, a: torch.Tensor,
             b: torch.Tensor) -> torch.Tensor:
    """y[t] += B[s] @ (A[s] @ x[t]) in place for every token t in slot s's segment; returns y.

    x [T, in], y [T, out] (row stride free, unit column stride), `perm` int32 (>= the segments' total
    entries), `seg` int32 [slots + 1], A [slots, R, in], B [slots, out, R] contiguous, R a power of two >= 16
    (the pool pads ranks)."""
    check_lora_args(x, y, perm, a, b)
    t, k = x.shape
    slots, r = a.shape[0], a.shape[1]
    n = b.shape[1]
    if seg.shape[0] != slots + 1:
        raise ValueError(f"lora: seg has {seg.shape[0]} entries for {slots} slots")
    if r < 16 or r & (r - 1):
        raise ValueError(f"lora: pool rank {r} must be a power of two >= 16")
    if t == 0:
        return y
    x = x if x.stride(1) == 1 else x.contiguous()
    chunks = triton.cdiv(t, BLOCK_T)
    splits, k_split = shrink_splits(slots * chunks, k, block_k=64)
    v = torch.empty(splits, t, r, device=x.device, dtype=torch.float32)
    ieee = x.dtype == torch.float32
    _shrink_kernel[(slots, chunks, splits)](x, perm, seg, a, v, k, k_split, x.stride(0), a.stride(0), a.stride(1),
                                            v.stride(0), v.stride(1), R=r, BLOCK_T=BLOCK_T, BLOCK_K=64, IEEE=ieee)
    block_n = 64
    _expand_kernel[(slots * chunks, triton.cdiv(n, block_n))](v, perm, seg, b, y, n, splits, v.stride(0), v.stride(1),
                                                               b.stride(0), b.stride(1), y.stride(0), chunks, R=r,
                                                               BLOCK_T=BLOCK_T, BLOCK_N=block_n, IEEE=ieee)
    return y
