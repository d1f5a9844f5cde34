"""Torch reference for paged attention over packed sequences (prefill chunks and decode alike).

Slow but obviously right: gathers each sequence's keys and values from its cache blocks and applies
an explicit causal (and optional sliding-window) mask. Used on CPU and as the oracle for the kernels.
"""
from __future__ import annotations

import torch

from .kv_cache_spec import dequantize
from .metadata import AttentionMetadata


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor, length: int) -> torch.Tensor:
    """Keys or values of one sequence as [kv_heads, length, head]."""
    bs = cache.shape[2]
    nblocks = (length + bs - 1) // bs
    blocks = cache[block_table[:nblocks].long()]               # [n, kvh, bs, hd]
    return blocks.permute(1, 0, 2, 3).reshape(cache.shape[1], nblocks * bs, cache.shape[3])[:, :length]


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, meta: AttentionMetadata,
                        scale: float, sliding_window: int | None = None,
                        kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of packed queries q [T, heads, head] over the paged cache; returns [T, heads, head].

    Computed in float32 whatever the input dtype, then cast back; cached values are read through
    `kv_cache_spec.dequantize` (`kv_scales`: this layer's (K, V) scales of an 8-bit cache).
    """
    heads = q.shape[1]
    kvh = k_cache.shape[1]
    group = heads // kvh
    out = torch.empty_like(q)
    q_lens = meta.q_lens_host or (meta.cu_q_lens[1:] - meta.cu_q_lens[:-1]).tolist()
    ctx_lens = meta.context_lens_host or meta.context_lens.tolist()
    ks, vs = kv_scales if kv_scales is not None else (None, None)
    start = 0
    for b, (ql, cl) in enumerate(zip(q_lens, ctx_lens)):
        if ql == 0:
            continue
        qb = q[start:start + ql].float().transpose(0, 1)                     # [H, ql, D]
        kb = dequantize(gather_kv(k_cache, meta.block_tables[b], cl), ks).repeat_interleave(group, 0)
        vb = dequantize(gather_kv(v_cache, meta.block_tables[b], cl), vs).repeat_interleave(group, 0)
        scores = torch.matmul(qb, kb.transpose(1, 2)) * scale                 # [H, ql, cl]
        qpos = torch.arange(cl - ql, cl, device=q.device)[:, None]
        kpos = torch.arange(cl, device=q.device)[None, :]
        allowed = kpos <= qpos
        if sliding_window is not None:
            allowed &= (qpos - kpos) < sliding_window
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[start:start + ql] = torch.matmul(probs, vb).transpose(0, 1).to(q.dtype)
        start += ql
    return out
