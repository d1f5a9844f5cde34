"""Triton paged attention for prefill / chunked-prefill steps: packed variable-length queries over the cache.

Flash-attention tiling: one program owns BLOCK_M query rows of one sequence and one query head, keeps a
running (max, sum, output) in registers and streams BLOCK_N-key tiles of that sequence from the paged
cache (which already holds this step's keys, so a chunk that starts mid-context sees its whole prefix).

The grid is (query tile, sequence, head) sized from the host-side `max_q_len`, so no device->host sync is
needed to map programs to sequences; programs past the end of a short sequence exit at once. Key tiles
are visited in three ranges so that only the tiles straddling a mask edge pay for the mask:
  [window edge, masked) [fully visible to every row, unmasked) [causal diagonal, masked);
tiles entirely in the future or entirely before the sliding window are never loaded.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .kv_store import check_kv_scales, kernel_view
from .metadata import AttentionMetadata
from .triton_common import check_attention_args, dot_precision, kv_tile_offsets, next_pow2
from .triton_quant import dequantize_tile_bits

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tiles(acc, l_i, m_i, q, K, V, bt_row, kvh, qpos, ctx, offs_d, dmask, t_start, t_end,
                  sm_scale_log2, window, stride_kb, stride_kh, stride_kt, k_scale, v_scale,
                  BLOCK_N: tl.constexpr, BLOCK_SIZE: tl.constexpr, MASKED: tl.constexpr,
                  USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_ACC: tl.constexpr,
                  KV_KIND: tl.constexpr):
    for t in range(t_start, t_end):
        kpos = t * BLOCK_N + tl.arange(0, BLOCK_N)
        # Positions past ctx have no block-table entry; never dereference them.
        kmask = kpos < ctx
        offs = kv_tile_offsets(bt_row, t * BLOCK_N, kmask, kvh, offs_d, stride_kb, stride_kh, stride_kt,
                               BLOCK_SIZE, BLOCK_N)
        lmask = kmask[:, None] & dmask[None, :]
        k = tl.load(K + offs, mask=lmask, other=0.0)
        if KV_KIND != 0:   # an 8-bit cache: kv_cache_spec.dequantize, in q's dtype for the dot
            k = dequantize_tile_bits(k, k_scale, KV_KIND).to(q.dtype)
        # Scores stay unscaled; the scale is folded into the exp2 argument below (one FMA per score).
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION)
        if MASKED:
            allowed = (kpos[None, :] <= qpos[:, None]) & kmask[None, :]
            if USE_WINDOW:
                allowed = allowed & ((qpos[:, None] - kpos[None, :]) < window)
            s = tl.where(allowed, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * sm_scale_log2)
        # A row can be fully masked within one tile (e.g. the first rows of the diagonal tile under a
        # window); keep its max finite so exp2 gives 0 rather than NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s * sm_scale_log2 - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(V + offs, mask=lmask, other=0.0)
        if KV_KIND != 0:
            v = dequantize_tile_bits(v, v_scale, KV_KIND).to(q.dtype)
        if FP32_ACC:
            pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
        else:
            # TensorRT-LLM's fp16-accumulate FMHA option: the in-tile P.V sum runs in fp16.
            pv = tl.dot(p.to(v.dtype), v, out_dtype=tl.float16).to(tl.float32)
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, l_i, m_i


# n_q_tiles changes every step: not specialised on, so a new value never triggers a compile mid-serving.
@triton.jit(do_not_specialize=["n_q_tiles"])
def _prefill_kernel(Q, K, V, BT, CU, CTX, OUT, KS, VS,
                    sm_scale_log2, window, n_q_tiles,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    stride_kb, stride_kh, stride_kt, stride_bt,
                    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                    BLOCK_SIZE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_ACC: tl.constexpr,
                    KV_KIND: tl.constexpr):
    # Launch the last (longest, under the causal mask) query tiles first so they do not form a tail.
    tile = n_q_tiles - 1 - tl.program_id(0)
    b = tl.program_id(1)
    h = tl.program_id(2)
    kvh = h // GROUP

    q_start = tl.load(CU + b)
    q_len = tl.load(CU + b + 1) - q_start
    m0 = tile * BLOCK_M
    if m0 < q_len:
        ctx = tl.load(CTX + b)
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mmask = offs_m < q_len
        qpos = ctx - q_len + offs_m
        offs_d = tl.arange(0, BLOCK_D)
        dmask = offs_d < HEAD_DIM
        rows = (q_start + offs_m).to(tl.int64)
        q = tl.load(Q + rows[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                    mask=mmask[:, None] & dmask[None, :], other=0.0)

        first_pos = ctx - q_len + m0
        last_pos = first_pos + tl.minimum(BLOCK_M, q_len - m0) - 1
        lo = 0
        lo_all = 0
        if USE_WINDOW:
            lo = tl.maximum(first_pos - window + 1, 0)      # first key any row of the tile sees
            lo_all = tl.maximum(last_pos - window + 1, 0)   # first key every row of the tile sees
        t_lo = lo // BLOCK_N
        t_hi = tl.cdiv(last_pos + 1, BLOCK_N)
        u0 = tl.minimum(tl.maximum(tl.cdiv(lo_all, BLOCK_N), t_lo), t_hi)
        u1 = tl.minimum(tl.maximum((first_pos + 1) // BLOCK_N, u0), t_hi)

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        bt_row = BT + b * stride_bt
        k_scale = 1.0
        v_scale = 1.0
        if KV_KIND != 0:
            k_scale = tl.load(KS)
            v_scale = tl.load(VS)
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, bt_row, kvh, qpos, ctx, offs_d, dmask,
                                      t_lo, u0, sm_scale_log2, window, stride_kb, stride_kh, stride_kt,
                                      k_scale, v_scale, BLOCK_N, BLOCK_SIZE, True, USE_WINDOW, DOT_PRECISION, FP32_ACC,
                                      KV_KIND)
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, bt_row, kvh, qpos, ctx, offs_d, dmask,
                                      u0, u1, sm_scale_log2, window, stride_kb, stride_kh, stride_kt,
                                      k_scale, v_scale, BLOCK_N, BLOCK_SIZE, False, USE_WINDOW, DOT_PRECISION, FP32_ACC,
                                      KV_KIND)
        acc, l_i, m_i = _attend_tiles(acc, l_i, m_i, q, K, V, bt_row, kvh, qpos, ctx, offs_d, dmask,
                                      u1, t_hi, sm_scale_log2, window, stride_kb, stride_kh, stride_kt,
                                      k_scale, v_scale, BLOCK_N, BLOCK_SIZE, True, USE_WINDOW, DOT_PRECISION, FP32_ACC,
                                      KV_KIND)

        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(OUT + rows[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


def _tile_config(head_dim_padded: int, max_q_len: int, device: torch.device) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the prefill kernel.

    From a sweep on an H100 (fp16, D=128, 64-token cache blocks, StarCoder2-7B and SantaCoder shapes,
    q_len 128..4096): 64x64 tiles, 4 warps, 3 stages were best or within 5% of the best everywhere;
    128-row tiles lost 5-25% (more diagonal waste, fewer programs). Only very short chunks prefer 32 keys.
    """
    if device.type != "cuda":
        return 16 if max_q_len <= 16 else 32, 32, 4, 1     # interpreter: small tiles, less padding work
    if head_dim_padded > 128:
        return 64, 32, 4, 2
    if max_q_len <= 128:
        return 64, 32, 4, 3
    return 64, 64, 4, 3


def paged_prefill_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            meta: AttentionMetadata, scale: float, sliding_window: int | None = None,
                            fp32_acc: bool = True, out: torch.Tensor | None = None,
                            kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Causal attention of packed query chunks q [T, H, D] over the paged cache; returns [T, H, D].

    `fp32_acc=False` accumulates each tile's P.V product in fp16 (fp16 inputs only; ignored otherwise).
    `kv_scales`: this layer's (K, V) scales of an INT8 / FP8 cache.
    """
    heads, kv_heads, head_dim, block_size = check_attention_args(q, k_cache, v_cache, meta)
    if meta.cu_q_lens.dtype != torch.int32:
        raise ValueError("cu_q_lens must be int32")
    if out is None:
        out = torch.empty_like(q)
    batch = meta.num_seqs
    if q.shape[0] == 0 or batch == 0 or meta.max_q_len == 0:
        return out
    block_d = max(16, next_pow2(head_dim))
    block_m, block_n, num_warps, num_stages = _tile_config(block_d, meta.max_q_len, q.device)
    n_q_tiles = triton.cdiv(meta.max_q_len, block_m)
    use_window = sliding_window is not None and sliding_window > 0
    kind = check_kv_scales(k_cache, kv_scales)
    ks, vs = kv_scales if kv_scales is not None else (out, out)   # unused placeholders
    _prefill_kernel[(n_q_tiles, batch, heads)](
        q, kernel_view(k_cache), kernel_view(v_cache), meta.block_tables, meta.cu_q_lens, meta.context_lens, out,
        ks, vs,
        scale * LOG2E, sliding_window if use_window else 0, n_q_tiles,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        GROUP=heads // kv_heads, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_M=block_m, BLOCK_N=block_n, USE_WINDOW=use_window, DOT_PRECISION=dot_precision(q.dtype),
        FP32_ACC=fp32_acc or q.dtype != torch.float16, KV_KIND=kind,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
