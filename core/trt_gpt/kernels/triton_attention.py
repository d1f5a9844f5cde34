"""Triton paged attention: the public entry points of the GPU attention path.

* `write_kv_cache_triton` scatters this step's K/V into the paged cache (same contract as
  `attention_ref.write_kv_cache`), one program per token moving all of its kv heads at once;
* `paged_decode_attention` (triton_decode.py) handles steps where every sequence has one query token;
* `paged_prefill_attention` (triton_prefill.py) handles packed prompt chunks of any length.

All kernels accumulate in fp32 whatever the storage dtype (fp16, bf16 or fp32) and pad the head dim to a
power of two with masks, so head sizes such as 80 and 96 work. They also run under TRITON_INTERPRET=1 on
CPU tensors, which is how the tests check them against `attention_ref.paged_attention_ref`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .metadata import AttentionMetadata
from .triton_common import next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl
from .triton_decode import choose_num_splits, paged_decode_attention
from .triton_prefill import paged_prefill_attention

__all__ = ["write_kv_cache_triton", "paged_decode_attention", "paged_prefill_attention",
           "paged_attention_triton", "choose_num_splits"]


@triton.jit
def _write_kv_kernel(K, V, KC, VC, SLOT,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_ch, stride_ct,
                     KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    slot = tl.load(SLOT + t).to(tl.int64)   # a host upload: read before gdc_wait (see triton_common)
    pdl_wait(PDL)     # PDL: k and v are read after this
    pdl_release(PDL)
    # Negative slots mark padding tokens (e.g. a CUDA graph captured for a larger batch): write nothing.
    if slot >= 0:
        blk = slot // BLOCK_SIZE
        off = slot % BLOCK_SIZE
        offs_h = tl.arange(0, HEADS_PAD)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h < KV_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
        t64 = t.to(tl.int64)
        k = tl.load(K + t64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
        v = tl.load(V + t64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
        dst = blk * stride_cb + off * stride_ct + offs_h[:, None] * stride_ch + offs_d[None, :]
        tl.store(KC + dst, k.to(KC.dtype.element_ty), mask=mask)
        tl.store(VC + dst, v.to(VC.dtype.element_ty), mask=mask)


def write_kv_cache_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          slot_mapping: torch.Tensor) -> None:
    """Scatter K/V [T, kv_heads, head_dim] into caches [blocks, kv_heads, block_size, head_dim] at slot_mapping."""
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k/v must both be [tokens, kv_heads, head_dim], got {tuple(k.shape)}, {tuple(v.shape)}")
    if k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have one shape and memory layout")
    tokens, kv_heads, head_dim = k.shape
    if k_cache.shape[1] != kv_heads or k_cache.shape[3] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} does not fit cache {tuple(k_cache.shape)}")
    if slot_mapping.shape[0] != tokens:
        raise ValueError(f"slot_mapping has {slot_mapping.shape[0]} entries for {tokens} tokens")
    if tokens == 0:
        return
    if k.stride(2) != 1 or v.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("k, v and the caches must be contiguous in head_dim")
    block_d = next_pow2(head_dim)
    _write_kv_kernel[(tokens,)](
        k, v, k_cache, v_cache, slot_mapping,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        KV_HEADS=kv_heads, HEADS_PAD=next_pow2(kv_heads), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=k_cache.shape[2], num_warps=1 if kv_heads * block_d <= 512 else 4,
        PDL=use_pdl(k.device), **pdl_launch(k.device),
    )


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float,
                           sliding_window: int | None = None, context_fp32_acc: bool = True) -> torch.Tensor:
    """Dispatch on the step kind: the split-K decode kernel when every q_len is 1, else the prefill kernel
    (`context_fp32_acc=False`: fp16 P.V accumulation in prefill, the reference's default)."""
    if meta.is_decode and q.shape[0] == meta.num_seqs:
        return paged_decode_attention(q, k_cache, v_cache, meta, scale, sliding_window)
    return paged_prefill_attention(q, k_cache, v_cache, meta, scale, sliding_window, fp32_acc=context_fp32_acc)
