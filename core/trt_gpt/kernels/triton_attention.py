"""Triton paged attention: the public entry points of the GPU attention path.

* `write_kv_cache_triton` (kv_store.py) scatters this step's K/V into the paged cache (same contract as
  `kv_cache_spec.write_kv_ref`), one program per token moving all of its kv heads at once;
* `paged_decode_attention` (triton_decode.py) handles steps where every sequence has one query token;
* `paged_prefill_attention` (triton_prefill.py) handles packed prompt chunks of any length.

All kernels accumulate in fp32 whatever the storage dtype (fp16, bf16, fp32, or INT8 / FP8 with per-layer
K and V scales, dequantized as each tile loads) and pad the head dim to a
power of two with masks, so head sizes such as 80 and 96 work. They also run under TRITON_INTERPRET=1 on
CPU tensors, which is how the tests check them against `attention_ref.paged_attention_ref`.
"""
from __future__ import annotations

import torch

from .kv_store import write_kv_cache_triton
from .metadata import AttentionMetadata
from .triton_decode import choose_num_splits, paged_decode_attention
from .triton_prefill import paged_prefill_attention

__all__ = ["write_kv_cache_triton", "paged_decode_attention", "paged_prefill_attention",
           "paged_attention_triton", "choose_num_splits"]


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float,
                           sliding_window: int | None = None, context_fp32_acc: bool = True,
                           kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Dispatch on the step kind: the split-K decode kernel when every q_len is 1, else the prefill kernel
    (`context_fp32_acc=False`: fp16 P.V accumulation in prefill, the reference's default; `kv_scales`: the
    layer's (K, V) scales of an INT8 / FP8 cache)."""
    if meta.is_decode and q.shape[0] == meta.num_seqs:
        return paged_decode_attention(q, k_cache, v_cache, meta, scale, sliding_window, kv_scales=kv_scales)
    return paged_prefill_attention(q, k_cache, v_cache, meta, scale, sliding_window, fp32_acc=context_fp32_acc,
                                   kv_scales=kv_scales)
