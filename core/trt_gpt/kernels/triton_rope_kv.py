"""Fused RoPE + paged KV-cache write: one Triton kernel between the qkv GEMM and attention.

Without it a RoPE layer runs ~16 tiny torch kernels (gather cos/sin, casts, cat, mul, add) and then
`kv_store.write_kv_cache_triton`; at batch-1 decode each costs a few microseconds of launch. `rope_write_kv_triton`
reads the fused qkv rows once, rotates q and k (GPT-NeoX rotate-half over the first `rotary_dim` dims of
every head), returns q and scatters rotated k and plain v into the paged cache (`kv_store.store_kv`).

Design: the heads of a qkv row ([q heads | k heads | v heads]) are treated as one list of
heads + 2*kv_heads heads. The grid is (token, head chunk): each program loads a [BLOCK_H, head_dim] tile
of that list, rotates it, and stores each row to wherever its kind goes (q output, k cache, v cache) with
masks, so one code path serves every head kind and MHA/GQA/MQA alike. Chunks hold about
`_ELEMS_PER_PROGRAM` elements: a single decode token still spreads over several SMs for a large model,
and a small model needs one program per token. The rotate-half partner of each element is a second
(L1-resident) load of the same row at d +/- rotary_dim/2, which avoids register shuffles.

The math matches `RotaryEmbedding._rotate` bit for bit: x*cos and partner*sin are each rounded in fp32,
summed, then rounded once to the storage dtype. FMA contraction is disabled at launch because
fma(x, cos, p*sin) rounds differently from torch's separate kernels.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kv_cache_spec import write_kv_ref
from .kv_store import check_kv_scales, kernel_view, slot_offset, store_kv
from .triton_common import SUPPORTED_DTYPES, next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl

__all__ = ["rope_write_kv_triton", "rope_write_kv_ref"]

_ELEMS_PER_PROGRAM = 1024   # 4 warps x 8 elements per thread: enough per program to hide load latency


@triton.jit
def _rope_kv_kernel(QKV, POS, COS, SIN, SLOT, QO, KC, VC, KS, VS,
                    stride_xt, stride_cos_p, stride_sin_p, stride_qt, stride_qh,
                    stride_cb, stride_ch, stride_ct,
                    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr,
                    ROT_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, KV_KIND: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0).to(tl.int64)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)   # head index within the fused row
    offs_d = tl.arange(0, BLOCK_D)
    HALF = ROT_DIM // 2
    row_ok = offs_h < HEADS + 2 * KV_HEADS
    is_rot = offs_h < HEADS + KV_HEADS                          # q and k heads rotate, v heads do not
    d_rot = offs_d < ROT_DIM
    mask = row_ok[:, None] & (offs_d < HEAD_DIM)[None, :]

    # Positions and slots are host uploads and cos/sin constants: no kernel of the PDL chain writes them,
    # so they are read before gdc_wait (see triton_common.use_pdl).
    pos = tl.load(POS + t).to(tl.int64)
    slot = tl.load(SLOT + t).to(tl.int64)
    # cos/sin are indexed at d itself (not d % HALF), exactly as the torch reference does.
    c = tl.load(COS + pos * stride_cos_p + offs_d, mask=d_rot, other=1.0)
    s = tl.load(SIN + pos * stride_sin_p + offs_d, mask=d_rot, other=0.0)
    k_scale = 1.0
    v_scale = 1.0
    if KV_KIND != 0:   # an 8-bit cache's scales are weights: loaded before gdc_wait too
        k_scale = tl.load(KS)
        v_scale = tl.load(VS)
    pdl_wait(PDL)     # PDL: the qkv row is read after this
    pdl_release(PDL)

    row = QKV + t * stride_xt + offs_h[:, None] * HEAD_DIM
    x = tl.load(row + offs_d[None, :], mask=mask, other=0.0)
    # rotate_half: out[d] = -x[d + HALF] for d < HALF, x[d - HALF] for HALF <= d < ROT_DIM
    first = offs_d < HALF
    partner_d = tl.where(first, offs_d + HALF, offs_d - HALF)
    pmask = (row_ok & is_rot)[:, None] & d_rot[None, :]
    p = tl.load(row + partner_d[None, :], mask=pmask, other=0.0).to(tl.float32)
    p = tl.where(first[None, :], -p, p)
    r = x.to(tl.float32) * c[None, :] + p * s[None, :]
    y = tl.where(is_rot[:, None] & d_rot[None, :], r.to(QKV.dtype.element_ty), x)

    q_rows = offs_h < HEADS
    tl.store(QO + t * stride_qt + offs_h[:, None] * stride_qh + offs_d[None, :], y,
             mask=mask & q_rows[:, None])

    # Negative slots mark padding tokens (e.g. a CUDA graph captured for a larger batch): no cache write.
    if slot >= 0:
        is_v = offs_h >= HEADS + KV_HEADS
        is_k = is_rot & (offs_h >= HEADS)
        kv_head = tl.where(is_v, offs_h - HEADS - KV_HEADS, offs_h - HEADS)   # negative on q rows (masked)
        dst = slot_offset(slot, stride_cb, stride_ct, BLOCK_SIZE) + kv_head[:, None] * stride_ch + offs_d[None, :]
        # k was rounded to the qkv dtype above, as RotaryEmbedding followed by the cache write does.
        store_kv(KC, VC, dst, y, y, mask & is_k[:, None], mask & is_v[:, None], k_scale, v_scale, KV_KIND)


def _check_args(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int, positions: torch.Tensor,
                cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int, k_cache: torch.Tensor,
                v_cache: torch.Tensor, slot_mapping: torch.Tensor, q_out: torch.Tensor | None,
                scales: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    """Shape/dtype checks (ValueError); returns the cache's kind (`kv_store.kv_kind`)."""
    if qkv.dim() != 2 or qkv.shape[1] != (heads + 2 * kv_heads) * head_dim:
        raise ValueError(f"qkv must be [tokens, (heads + 2*kv_heads) * head_dim] = [T, "
                         f"{(heads + 2 * kv_heads) * head_dim}], got {tuple(qkv.shape)}")
    tokens = qkv.shape[0]
    if rotary_dim % 2 or not 2 <= rotary_dim <= head_dim:
        raise ValueError(f"rotary_dim must be even and in 2..head_dim ({head_dim}), got {rotary_dim}")
    if cos.dim() != 2 or cos.shape != sin.shape or cos.shape[1] != rotary_dim:
        raise ValueError(f"cos/sin must both be [max_positions, {rotary_dim}], got "
                         f"{tuple(cos.shape)}, {tuple(sin.shape)}")
    if cos.dtype != torch.float32 or sin.dtype != torch.float32:
        raise ValueError(f"cos/sin must be float32, got {cos.dtype}, {sin.dtype}")
    if positions.shape != (tokens,) or slot_mapping.shape != (tokens,):
        raise ValueError(f"positions {tuple(positions.shape)} and slot_mapping {tuple(slot_mapping.shape)} "
                         f"must both be [{tokens}]")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must both be [blocks, kv_heads, block_size, head_dim] "
                         "with one memory layout")
    if k_cache.shape[1] != kv_heads or k_cache.shape[3] != head_dim:
        raise ValueError(f"cache {tuple(k_cache.shape)} does not hold {kv_heads} kv heads of {head_dim}")
    kind = check_kv_scales(k_cache, scales)
    if qkv.dtype not in SUPPORTED_DTYPES or (k_cache.dtype not in SUPPORTED_DTYPES and not kind):
        raise ValueError(f"unsupported dtypes qkv={qkv.dtype} cache={k_cache.dtype}")
    if q_out is not None and (q_out.shape != (tokens, heads, head_dim) or q_out.dtype != qkv.dtype):
        raise ValueError(f"q_out must be [{tokens}, {heads}, {head_dim}] {qkv.dtype}, got "
                         f"{tuple(q_out.shape)} {q_out.dtype}")
    return kind


def rope_write_kv_triton(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                         positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                         q_out: torch.Tensor | None = None,
                         scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Rotate q/k of qkv [T, (heads+2*kv_heads)*head_dim] at `positions`, write k/v at `slot_mapping`
    (negative slot: no write) into caches [blocks, kv_heads, block_size, head_dim] (8-bit ones quantized
    with this layer's (K, V) `scales`, through the one K/V store); returns q
    [T, heads, head_dim] (`q_out` if given). CUDA-graph capturable: no host syncs, so positions are not
    range-checked: every token's, padding tokens' included, must be < cos.shape[0]."""
    kind = _check_args(qkv, heads, kv_heads, head_dim, positions, cos, sin, rotary_dim,
                       k_cache, v_cache, slot_mapping, q_out, scales)
    tokens = qkv.shape[0]
    q = q_out if q_out is not None else torch.empty(tokens, heads, head_dim, dtype=qkv.dtype,
                                                    device=qkv.device)
    if tokens == 0:
        return q
    if qkv.stride(1) != 1 or q.stride(2) != 1 or k_cache.stride(3) != 1 or cos.stride(1) != 1 \
            or sin.stride(1) != 1:
        raise ValueError("qkv, q_out, cos/sin and the caches must be contiguous in their last dimension")
    block_d = next_pow2(head_dim)
    all_heads = heads + 2 * kv_heads
    block_h = min(next_pow2(all_heads), max(1, _ELEMS_PER_PROGRAM // block_d))
    grid = (tokens, triton.cdiv(all_heads, block_h))
    ks, vs = scales if scales is not None else (cos, cos)   # never read for a float cache
    _rope_kv_kernel[grid](
        qkv, positions, cos, sin, slot_mapping, q, kernel_view(k_cache), kernel_view(v_cache), ks, vs,
        qkv.stride(0), cos.stride(0), sin.stride(0), q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, HEAD_DIM=head_dim, ROT_DIM=rotary_dim,
        BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_SIZE=k_cache.shape[2], KV_KIND=kind,
        num_warps=max(1, min(4, block_h * block_d // 256)),
        enable_fp_fusion=False,   # see module docstring: keeps the result bit-identical to torch
        PDL=use_pdl(qkv.device), **pdl_launch(qkv.device),
    )
    return q


def _rotate_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int) -> torch.Tensor:
    rot, rest = x[..., :rotary_dim].float(), x[..., rotary_dim:]
    half = rotary_dim // 2
    rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
    return torch.cat([(rot * cos + rotated * sin).to(x.dtype), rest], dim=-1)


def rope_write_kv_ref(qkv: torch.Tensor, heads: int, kv_heads: int, head_dim: int,
                      positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rotary_dim: int,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor,
                      q_out: torch.Tensor | None = None,
                      scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Torch composition with the contract of `rope_write_kv_triton` (CPU fallback and documentation).

    Not CUDA-graph capturable: dropping padding tokens (negative slots) is a data-dependent selection.
    """
    _check_args(qkv, heads, kv_heads, head_dim, positions, cos, sin, rotary_dim,
                k_cache, v_cache, slot_mapping, q_out, scales)
    tokens = qkv.shape[0]
    x = qkv.reshape(tokens, heads + 2 * kv_heads, head_dim)
    c = cos[positions.long()].unsqueeze(1)
    s = sin[positions.long()].unsqueeze(1)
    q = _rotate_ref(x[:, :heads], c, s, rotary_dim)
    k = _rotate_ref(x[:, heads:heads + kv_heads], c, s, rotary_dim)
    v = x[:, heads + kv_heads:]
    write_kv_ref(k, v, k_cache, v_cache, slot_mapping, scales)
    if q_out is None:
        return q
    q_out.copy_(q)
    return q_out
