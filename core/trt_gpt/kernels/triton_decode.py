"""Triton paged attention for decode steps (one query token per sequence), flash-decoding style.

Decode is bound by reading the KV cache, so the kernel is shaped around reading every KV byte exactly once:

* one program per (sequence, kv head, context split) loads a KV tile once and scores it against *all*
  query heads of that kv head's group at once: the group is the M dimension of one `tl.dot` (padded to
  16 rows, the smallest dot tile), so GQA/MQA models read H/KVH times less than a per-head grid would;
  a group of one head (MHA) multiplies and sums in registers instead (`MHA_WITHOUT_DOT`);
* a single request has only KVH programs' worth of work, far too few for 132 SMs, so long contexts are
  split across programs ("split-K"); each writes a partial (running max, running sum, unnormalised
  output) and a small second kernel merges them with the usual log-sum-exp rescaling;
* with a sliding window only the tiles that hold visible keys are visited at all.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .kv_store import check_kv_scales, kernel_view
from .metadata import AttentionMetadata
from .triton_common import (check_attention_args, dot_precision, kv_tile_offsets, next_pow2, pdl_launch,
                            pdl_release, pdl_start, pdl_wait, use_pdl)
from .triton_quant import dequantize_tile_bits

LOG2E = 1.4426950408889634
MAX_SPLITS = 128
# A split shorter than this spends more on its partial write + merge than it saves in parallelism.
MIN_TOKENS_PER_SPLIT = 128
# ...except where a step has only a handful of (sequence, kv head) pairs: MQA or few-KV-head models at batch
# 1-4, whose one attention program per 128 tokens sits alone on the critical path of every layer. There
# the splits (and KV tiles) are 64 tokens. Measured in the batch-1 decode graph on an H200
# (tune_decode.py --split-sweep, 128-token context): SantaCoder-1B (1 KV head) 0.935 -> 0.860 ms a step,
# GPT-2 medium (16 KV heads) unchanged within noise (0.448 vs 0.451), which is why the rule stops at 8.
FEW_KV_PROGRAMS = 8
SHORT_SPLIT_TOKENS = 64
# Where a step's longest context fits one KV tile of at most ONE_TILE_MAX_TOKENS tokens and
# ONE_TILE_MAX_ELEMENTS elements ([tokens, head_dim]: the size of the 128 x 128 tile that 4 warps already
# hold at head_dim 128), and there are at most ONE_TILE_MAX_PAIRS (sequence, kv head) pairs, the whole
# context is one tile of one split: every key and value but the newest token's is loaded before
# `gdc_wait`, and there is no merge kernel (GPT-2 medium at batch 1 in the 256-token graph: 16 programs of
# one 256 x 64 tile instead of 32 programs of 128 tokens + a merge). Measured at 16 pairs and 256 tokens
# only, so larger steps and longer contexts keep the split rule.
ONE_TILE_MAX_ELEMENTS = 128 * 128
ONE_TILE_MAX_TOKENS = 256
ONE_TILE_MAX_PAIRS = 16
# ...and such a tile takes 8 warps: at 4 a 256 x 64 tile spilled (H200, GPT-2 medium batch-1 step 0.528 ms
# with 4 warps, 0.425 with 8, against 0.433 for two 128-token splits and their merge; tune_decode.py
# --split-sweep 128:128,256:256:4,256:256:8).
ONE_TILE_WARPS = 8
# Multi-head attention (one query head per KV head) scores and sums a tile with multiply-and-sum in
# registers instead of tensor-core dots over a group padded to 16 rows (15 of them padding): the dots
# move the K and V tiles through shared memory into the MMA operand layout after `gdc_wait`. H200,
# GPT-2 medium's batch-1 decode graph (one 256 x 64 tile a head): 0.3935 -> 0.3718 ms a step
# (tune_decode.py --mha-ab; docs/benchmarks.md, "How the decode step is built"). Measured at batch 1 only; MHA steps of
# more rows take it too (each program still holds one head's tile).
MHA_WITHOUT_DOT = True


@triton.jit
def _attend_tile(q, k, v, kmask, m_i, l_i, acc, sm_scale_log2, DOT_PRECISION: tl.constexpr,
                 GROUP_PAD: tl.constexpr):
    """One KV tile of online softmax for all query heads of the group; returns the new (m, l, acc).

    A group of one head (GROUP_PAD 1, see MHA_WITHOUT_DOT) multiplies and sums in registers; larger groups
    use tensor-core dots over the group padded to 16 rows."""
    if GROUP_PAD >= 16:
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * sm_scale_log2
    else:
        s = tl.sum(k.to(tl.float32) * q.to(tl.float32), 1)[None, :] * sm_scale_log2
    s = tl.where(kmask[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # Guard a row that has seen only masked keys so far: -inf - -inf would be NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    if GROUP_PAD >= 16:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    else:
        # p rounded to v's dtype as the dot path feeds it, so both paths compute one function
        p_col = tl.sum(p.to(v.dtype).to(tl.float32), 0)   # [1, BLOCK_N] -> [BLOCK_N]: the one row
        pv = tl.sum(p_col[:, None] * v.to(tl.float32), 0)
        acc = acc * alpha[:, None] + pv[None, :]
    return m_new, l_i, acc


# Step-varying ints are not specialised on (value 1 / divisible by 16): each new class would be a
# Triton compile (~1 s) in the middle of serving.
@triton.jit(do_not_specialize=["num_splits", "stride_pb", "stride_ph", "stride_ab", "stride_ah"])
def _decode_kernel(Q, K, V, BT, CTX, OUT, PM, PL, PACC, KS, VS,
                   sm_scale_log2, window,
                   stride_qb, stride_qh, stride_ob, stride_oh,
                   stride_kb, stride_kh, stride_kt, stride_bt,
                   stride_pb, stride_ph, stride_ab, stride_ah, stride_as,
                   GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                   BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                   num_splits, SPLIT: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
                   KV_KIND: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)

    # Before gdc_wait earlier kernels of the step may still be running (see triton_common.use_pdl), but
    # a decode step writes just the newest token's K/V (position ctx-1) and q. So the context length and
    # block table (host uploads) and every older cached key/value may be read now: the first tile streams
    # in while the previous kernels drain.
    ctx = tl.load(CTX + b)
    # The query sits at position ctx-1; with a window w it sees keys ctx-w .. ctx-1.
    lo = 0
    if USE_WINDOW:
        lo = tl.maximum(ctx - window, 0)
    first_tile = lo // BLOCK_N
    end_tile = tl.cdiv(ctx, BLOCK_N)
    # Tiles are divided per sequence, so short sequences in a mixed batch finish early instead of
    # running empty iterations up to the longest one.
    per_split = tl.cdiv(end_tile - first_tile, num_splits)
    t0 = first_tile + split * per_split
    t1 = tl.minimum(t0 + per_split, end_tile)

    rows = tl.arange(0, GROUP_PAD)
    heads = kvh * GROUP + rows
    rmask = rows < GROUP
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    bt_row = BT + b * stride_bt
    kpos = t0 * BLOCK_N + tl.arange(0, BLOCK_N)
    kmask = (kpos < ctx) & (kpos >= lo) & (kpos < t1 * BLOCK_N)   # all False for a split with no tiles
    offs = kv_tile_offsets(bt_row, t0 * BLOCK_N, kmask, kvh, offs_d, stride_kb, stride_kh, stride_kt,
                           BLOCK_SIZE, BLOCK_N)
    old = (kmask & (kpos < ctx - 1))[:, None] & dmask[None, :]
    # ".cg": served from L2, never from a line this SM's L1 may hold from before the data was written
    k = tl.load(K + offs, mask=old, other=0.0, cache_modifier=".cg")
    v = tl.load(V + offs, mask=old, other=0.0, cache_modifier=".cg")

    pdl_wait(PDL)     # PDL: the previous kernel's writes (q, the newest K/V) are visible from here
    pdl_release(PDL)
    newest = (kmask & (kpos == ctx - 1))[:, None] & dmask[None, :]
    k = tl.where(newest, tl.load(K + offs, mask=newest, other=0.0), k)
    v = tl.where(newest, tl.load(V + offs, mask=newest, other=0.0), v)
    k_scale = 1.0
    v_scale = 1.0
    if KV_KIND != 0:   # an 8-bit cache: kv_cache_spec.dequantize, in q's dtype (the scales: weights-like)
        k_scale = tl.load(KS)
        v_scale = tl.load(VS)
        k = dequantize_tile_bits(k, k_scale, KV_KIND).to(Q.dtype.element_ty)
        v = dequantize_tile_bits(v, v_scale, KV_KIND).to(Q.dtype.element_ty)
    q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                mask=rmask[:, None] & dmask[None, :], other=0.0)

    m_i = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    l_i = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], tl.float32)
    m_i, l_i, acc = _attend_tile(q, k, v, kmask, m_i, l_i, acc, sm_scale_log2, DOT_PRECISION, GROUP_PAD)
    for t in range(t0 + 1, t1):
        kpos = t * BLOCK_N + tl.arange(0, BLOCK_N)
        kmask = (kpos < ctx) & (kpos >= lo)
        offs = kv_tile_offsets(bt_row, t * BLOCK_N, kmask, kvh, offs_d, stride_kb, stride_kh, stride_kt,
                               BLOCK_SIZE, BLOCK_N)
        lmask = kmask[:, None] & dmask[None, :]
        k = tl.load(K + offs, mask=lmask, other=0.0)
        v = tl.load(V + offs, mask=lmask, other=0.0)
        if KV_KIND != 0:
            k = dequantize_tile_bits(k, k_scale, KV_KIND).to(Q.dtype.element_ty)
            v = dequantize_tile_bits(v, v_scale, KV_KIND).to(Q.dtype.element_ty)
        m_i, l_i, acc = _attend_tile(q, k, v, kmask, m_i, l_i, acc, sm_scale_log2, DOT_PRECISION, GROUP_PAD)

    if not SPLIT:
        out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
        tl.store(OUT + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :],
                 out.to(OUT.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
    else:
        # Empty splits (short sequences) still write m=-inf, l=0, acc=0 so the merge needs no bounds.
        p_off = b * stride_pb + heads * stride_ph + split
        tl.store(PM + p_off, m_i, mask=rmask)
        tl.store(PL + p_off, l_i, mask=rmask)
        a_off = b * stride_ab + heads[:, None] * stride_ah + split * stride_as + offs_d[None, :]
        tl.store(PACC + a_off, acc, mask=rmask[:, None] & dmask[None, :])


@triton.jit(do_not_specialize=["stride_pb", "stride_ph", "stride_ab", "stride_ah", "num_splits"])
def _decode_merge_kernel(PM, PL, PACC, OUT,
                         stride_pb, stride_ph, stride_ab, stride_ah, stride_as, stride_ob, stride_oh,
                         num_splits, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS_PAD: tl.constexpr,
                         PDL: tl.constexpr):
    pdl_start(PDL)
    pdl_wait(PDL)     # PDL: nothing a previous kernel wrote is touched before this
    pdl_release(PDL)
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, SPLITS_PAD)
    smask = offs_s < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    m = tl.load(PM + b * stride_pb + h * stride_ph + offs_s, mask=smask, other=float("-inf"))
    l = tl.load(PL + b * stride_pb + h * stride_ph + offs_s, mask=smask, other=0.0)
    m_max = tl.max(m, 0)
    # Partials are in log2 units (the main kernel uses exp2), so rescale with exp2 too.
    w = tl.where(m == float("-inf"), 0.0, tl.exp2(m - m_max))
    denom = tl.sum(w * l, 0)
    acc = tl.load(PACC + b * stride_ab + h * stride_ah + offs_s[:, None] * stride_as + offs_d[None, :],
                  mask=smask[:, None] & dmask[None, :], other=0.0)
    out = tl.sum(acc * w[:, None], 0) / tl.where(denom == 0.0, 1.0, denom)
    tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, out.to(OUT.dtype.element_ty), mask=dmask)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132  # interpreter runs: pretend to be an H100 so the split logic is exercised as on the GPU


def _decode_config(block_d: int, device: torch.device) -> tuple[int, int, int]:
    """(BLOCK_N, num_warps, num_stages) of the main decode kernel.

    Measured on an H100 (fp16, D=128, CUDA-graph timings): 128-token tiles with 4 warps reached 2.9 TB/s
    at batch 64 x 4096 and were within 5% of the best of {32, 64, 128} x {4, 8 warps} x {2, 3 stages}
    on every shape tried; fewer, larger loads per program matter more than pipelining depth here.
    """
    if device.type != "cuda":
        return 32, 4, 1  # interpreter: short tiles so small test contexts still span several tiles
    if block_d > 128:
        return 32, 4, 2  # keep the [BLOCK_N, D] K and V tiles within the register budget
    return 128, 4, 2


def split_tiling(batch: int, kv_heads: int, block_n: int, max_context_len: int = 0,
                 block_d: int = 0) -> tuple[int, int]:
    """(KV tile, fewest tokens per split) for a step of `batch` sequences whose longest context is
    `max_context_len` (0: unknown):

    * fewer than FEW_KV_PROGRAMS (sequence, kv head) pairs: 64-token splits and tiles;
    * at most ONE_TILE_MAX_PAIRS pairs and a context that fits one tile of ONE_TILE_MAX_TOKENS and
      ONE_TILE_MAX_ELEMENTS: one split of one tile;
    * else `block_n` and MIN_TOKENS_PER_SPLIT.
    """
    pairs = batch * kv_heads
    if pairs < FEW_KV_PROGRAMS:
        return min(block_n, SHORT_SPLIT_TOKENS), SHORT_SPLIT_TOKENS
    whole = next_pow2(max(1, max_context_len))
    fits_one_tile = block_d and block_n < whole <= ONE_TILE_MAX_TOKENS and whole * block_d <= ONE_TILE_MAX_ELEMENTS
    if fits_one_tile and pairs <= ONE_TILE_MAX_PAIRS:
        return whole, whole
    return block_n, MIN_TOKENS_PER_SPLIT


def choose_num_splits(batch: int, kv_heads: int, max_context_len: int, num_sms: int = 132,
                      block_n: int = 128, min_tokens: int | None = None, block_d: int = 0) -> int:
    """Splits per (sequence, kv head) so that batch*kv_heads*splits programs fill about two waves of SMs.

    Two programs per SM rather than one: the programs are small (4 warps) and co-resident ones hide each
    other's memory latency. Never split below `min_tokens` (default: `split_tiling`'s) or one tile a split.
    """
    base = max(1, batch * kv_heads)
    if base >= num_sms:
        return 1  # already a full wave: splitting would only add the partial write and merge
    if min_tokens is None:
        block_n, min_tokens = split_tiling(batch, kv_heads, block_n, max_context_len, block_d)
    want = triton.cdiv(2 * num_sms, base)
    useful = triton.cdiv(max(1, max_context_len), max(min_tokens, block_n))
    return int(max(1, min(want, useful, MAX_SPLITS)))


def paged_decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                           meta: AttentionMetadata, scale: float, sliding_window: int | None = None,
                           num_splits: int | None = None, out: torch.Tensor | None = None,
                           kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention of one query token per sequence (q [B, H, D]) over the paged cache; returns [B, H, D].

    `num_splits` overrides the automatic context split (a CUDA graph needs it fixed across replays);
    `out` lets a captured graph write into a static buffer; `kv_scales`: this layer's (K, V) scales of an
    INT8 / FP8 cache.
    """
    heads, kv_heads, head_dim, block_size = check_attention_args(q, k_cache, v_cache, meta)
    batch = q.shape[0]
    if batch != meta.num_seqs:
        raise ValueError(f"decode expects one query per sequence: q has {batch} rows, meta {meta.num_seqs} seqs")
    if out is None:
        out = torch.empty_like(q)
    if batch == 0:
        return out
    group = heads // kv_heads
    group_pad = 1 if group == 1 and MHA_WITHOUT_DOT else max(16, next_pow2(group))
    block_d = max(16, next_pow2(head_dim))
    base_n, num_warps, num_stages = _decode_config(block_d, q.device)
    num_sms = _num_sms(q.device)
    # a fixed split count keeps the configured tile (one tile for the whole context only when auto-split)
    block_n, min_tokens = split_tiling(batch, kv_heads, base_n, 0 if num_splits else meta.max_context_len, block_d)
    if block_n > base_n:   # one tile for the whole context
        num_warps = ONE_TILE_WARPS
    splits = num_splits or choose_num_splits(batch, kv_heads, meta.max_context_len, num_sms, block_n, min_tokens)
    use_window = sliding_window is not None and sliding_window > 0
    if splits > 1:
        pm = torch.empty(batch, heads, splits, device=q.device, dtype=torch.float32)
        pl = torch.empty_like(pm)
        pacc = torch.empty(batch, heads, splits, block_d, device=q.device, dtype=torch.float32)
    else:
        pm = pl = pacc = out  # unused placeholders: the kernel writes `out` directly
    kind = check_kv_scales(k_cache, kv_scales)
    ks, vs = kv_scales if kv_scales is not None else (out, out)   # unused placeholders
    _decode_kernel[(batch, kv_heads, splits)](
        q, kernel_view(k_cache), kernel_view(v_cache), meta.block_tables, meta.context_lens, out, pm, pl, pacc,
        ks, vs,
        scale * LOG2E, sliding_window if use_window else 0,
        q.stride(0), q.stride(1), out.stride(0), out.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), meta.block_tables.stride(0),
        pm.stride(0), pm.stride(1), pacc.stride(0), pacc.stride(1), pacc.stride(2),
        GROUP=group, GROUP_PAD=group_pad, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_SIZE=block_size,
        BLOCK_N=block_n, num_splits=splits, SPLIT=splits > 1, USE_WINDOW=use_window,
        DOT_PRECISION=dot_precision(q.dtype), KV_KIND=kind, num_warps=num_warps, num_stages=num_stages,
        PDL=use_pdl(q.device), **pdl_launch(q.device),
    )
    if splits > 1:
        _decode_merge_kernel[(batch, heads)](
            pm, pl, pacc, out,
            pm.stride(0), pm.stride(1), pacc.stride(0), pacc.stride(1), pacc.stride(2),
            out.stride(0), out.stride(1), splits,
            HEAD_DIM=head_dim, BLOCK_D=block_d, SPLITS_PAD=max(2, next_pow2(splits)),
            num_warps=4, PDL=use_pdl(q.device), **pdl_launch(q.device),
        )
    return out
