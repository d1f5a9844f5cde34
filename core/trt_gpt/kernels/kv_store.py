"""The paged KV cache's one store on the GPU: `store_kv`, a Triton helper that every writing kernel calls.

Three kernels write K/V into the cache: `write_kv_cache_triton` below (one program per token), the fused
RoPE + K/V write (`triton_rope_kv`) and the qkv GEMV's epilogue (`triton_gemv`, described by `KVWrite`).
Each computes where its tile goes; `store_kv` does the store itself, converting to the cache's storage
dtype as `kv_cache_spec.quantize` defines it. It is inlined by the compiler, so it costs nothing over a
plain `tl.store`. An 8-bit cache's quantize (x / scale, round, saturate; `kv_cache_spec`) belongs here and
nowhere else: `write_kv_cache_triton` implements it for INT8 and FP8 caches (the fused RoPE + K/V write
and the GEMV epilogue store float caches only; an engine with an 8-bit cache does not take those paths).

`kv_cache_spec.write_kv_ref` is the torch reference of all three writes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .kv_cache_spec import check_kv_write
from .triton_quant import quantize_tile_bits
from .triton_common import SUPPORTED_DTYPES, next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl


@triton.jit
def store_kv(KC, VC, dst, k, v, k_mask, v_mask, k_scale, v_scale, KV_KIND: tl.constexpr):
    """K tile `k` to KC + dst where `k_mask`, V tile `v` to VC + dst where `v_mask`, in the caches' dtype
    (rounded once from whatever precision the caller computed them in). KV_KIND 1 / 2: an INT8 / FP8 cache
    handed over as an int8 view, each value stored as the bits of quantize(x / scale) (`kv_cache_spec`)."""
    if KV_KIND == 0:
        tl.store(KC + dst, k.to(KC.dtype.element_ty), mask=k_mask)
        tl.store(VC + dst, v.to(VC.dtype.element_ty), mask=v_mask)
    else:
        tl.store(KC + dst, quantize_tile_bits(tl.math.div_rn(k.to(tl.float32), k_scale), KV_KIND), mask=k_mask)
        tl.store(VC + dst, quantize_tile_bits(tl.math.div_rn(v.to(tl.float32), v_scale), KV_KIND), mask=v_mask)


def kv_kind(cache: torch.Tensor) -> int:
    """The store/load kind of a cache dtype: 0 float, 1 INT8, 2 FP8 e4m3 (`store_kv`, the attention loads)."""
    return {torch.int8: 1, torch.float8_e4m3fn: 2}.get(cache.dtype, 0)


def check_kv_scales(cache: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor] | None) -> int:
    """The cache's kind (`kv_kind`) after checking that an 8-bit cache comes with its (K, V) scales and a
    float one without (ValueError otherwise)."""
    kind = kv_kind(cache)
    if bool(kind) != (scales is not None):
        raise ValueError(f"a {cache.dtype} cache {'needs' if kind else 'takes no'} (K, V) scales")
    return kind


def kernel_view(cache: torch.Tensor) -> torch.Tensor:
    """What a kernel receives for a cache: itself, or the int8 view of an 8-bit one (one masked load with a
    zero fill for both 8-bit kinds; `triton_quant.dequantize_tile_bits` turns the bits into values)."""
    return cache.view(torch.int8) if kv_kind(cache) else cache


@triton.jit
def slot_offset(slot, stride_cb, stride_ct, BLOCK_SIZE: tl.constexpr):
    """Element offset of flat cache slot `slot` (int64; block * BLOCK_SIZE + offset) in a cache of strides
    (block, -, token, -)."""
    return (slot // BLOCK_SIZE) * stride_cb + (slot % BLOCK_SIZE) * stride_ct


@triton.jit
def _write_kv_kernel(K, V, KC, VC, SLOT, KS, VS,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     stride_cb, stride_ch, stride_ct,
                     KV_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr, BLOCK_SIZE: tl.constexpr, KV_KIND: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    t = tl.program_id(0)
    slot = tl.load(SLOT + t).to(tl.int64)   # a host upload: read before gdc_wait (see triton_common)
    k_scale = 1.0
    v_scale = 1.0
    if KV_KIND != 0:   # weights-like: no kernel of the step writes them, so they load before gdc_wait
        k_scale = tl.load(KS)
        v_scale = tl.load(VS)
    pdl_wait(PDL)     # PDL: k and v are read after this
    pdl_release(PDL)
    # Negative slots mark padding tokens (e.g. a CUDA graph captured for a larger batch): write nothing.
    if slot >= 0:
        offs_h = tl.arange(0, HEADS_PAD)
        offs_d = tl.arange(0, BLOCK_D)
        mask = (offs_h < KV_HEADS)[:, None] & (offs_d < HEAD_DIM)[None, :]
        t64 = t.to(tl.int64)
        k = tl.load(K + t64 * stride_kt + offs_h[:, None] * stride_kh + offs_d[None, :], mask=mask)
        v = tl.load(V + t64 * stride_vt + offs_h[:, None] * stride_vh + offs_d[None, :], mask=mask)
        dst = slot_offset(slot, stride_cb, stride_ct, BLOCK_SIZE) + offs_h[:, None] * stride_ch + offs_d[None, :]
        store_kv(KC, VC, dst, k, v, mask, mask, k_scale, v_scale, KV_KIND)


def write_kv_cache_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                          slot_mapping: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor] | None = None
                          ) -> None:
    """`kv_cache_spec.write_kv_ref` on the GPU: K/V [T, kv_heads, head_dim] into caches
    [blocks, kv_heads, block_size, head_dim] at slot_mapping (negative: not written), quantized with this
    layer's (K, V) `scales` for an 8-bit cache; CUDA-graph capturable."""
    check_kv_write(k, v, k_cache, v_cache, slot_mapping)
    tokens, kv_heads, head_dim = k.shape
    if tokens == 0:
        return
    kind = check_kv_scales(k_cache, scales)
    if k_cache.dtype not in SUPPORTED_DTYPES and not kind:
        raise ValueError(f"unsupported cache dtype {k_cache.dtype}")
    if k.stride(2) != 1 or v.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("k, v and the caches must be contiguous in head_dim")
    block_d = next_pow2(head_dim)
    ks, vs = scales if scales is not None else (slot_mapping, slot_mapping)   # unused placeholders
    _write_kv_kernel[(tokens,)](
        k, v, kernel_view(k_cache), kernel_view(v_cache), slot_mapping, ks, vs,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        KV_HEADS=kv_heads, HEADS_PAD=next_pow2(kv_heads), HEAD_DIM=head_dim, BLOCK_D=block_d,
        BLOCK_SIZE=k_cache.shape[2], KV_KIND=kind, num_warps=1 if kv_heads * block_d <= 512 else 4,
        PDL=use_pdl(k.device), **pdl_launch(k.device),
    )


# ---- the qkv GEMV's epilogue write ------------------------------------------------------------------------

@dataclass(frozen=True)
class KVWrite:
    """Also scatter the output's K and V columns into the paged caches [blocks, kv_heads, block_size, D].

    The output row is [q (q_cols) | k (kv_heads * head_dim) | v (kv_heads * head_dim)], as the fused qkv
    projection produces it; row i goes to cache slot `slots[i]` (negative: padding, not written).
    """
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slots: torch.Tensor
    q_cols: int
    kv_heads: int
    head_dim: int


def check_kv_write_out(kvw: KVWrite | None, m: int, n: int, device: torch.device) -> None:
    """A `KVWrite` fits an output of [m, n] on `device` (ValueError otherwise)."""
    if kvw is None:
        return
    kc, vc = kvw.k_cache, kvw.v_cache
    kv_cols = kvw.kv_heads * kvw.head_dim
    if n != kvw.q_cols + 2 * kv_cols:
        raise ValueError(f"fused_linear: kv_write needs N = q_cols + 2 * kv_heads * head_dim = "
                         f"{kvw.q_cols + 2 * kv_cols}, got N={n}")
    if (kc.dim() != 4 or kc.shape != vc.shape or kc.stride() != vc.stride() or kc.stride(3) != 1
            or tuple(kc.shape[1::2]) != (kvw.kv_heads, kvw.head_dim)):
        raise ValueError(f"fused_linear: kv_write caches must both be [blocks, {kvw.kv_heads}, block_size, "
                         f"{kvw.head_dim}] with one layout, contiguous in head_dim; got {tuple(kc.shape)}")
    if kc.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fused_linear: unsupported cache dtype {kc.dtype}")
    if kc.shape[2] & (kc.shape[2] - 1):
        raise ValueError(f"fused_linear: cache block_size must be a power of two, got {kc.shape[2]}")
    if kvw.slots.shape != (m,) or kvw.slots.device != device or kc.device != device:
        raise ValueError(f"fused_linear: kv_write.slots must be [{m}] on {device} (one slot per row), "
                         f"got {tuple(kvw.slots.shape)}")


@triton.jit
def store_kv_columns(y, KC, VC, slot, rows, offs_n, M, N, q_cols, kv_cols, stride_cb, stride_ch, stride_ct,
                     HEAD_DIM: tl.constexpr, CACHE_BLOCK: tl.constexpr):
    """The K/V columns of an output tile y [M_PAD, BLOCK_N] of rows [q | k | v] into their cache slots
    (int64 [M_PAD])."""
    c = offs_n - q_cols                       # column within [k | v]; negative for q columns
    is_k = (c >= 0) & (c < kv_cols)
    is_v = (c >= kv_cols) & (offs_n < N)
    c = tl.where(is_v, c - kv_cols, tl.maximum(c, 0))
    col_off = (c // HEAD_DIM) * stride_ch + c % HEAD_DIM
    row_ok = (rows < M) & (slot >= 0)          # negative slots are padding rows: nothing is written
    row_off = slot_offset(tl.maximum(slot, 0), stride_cb, stride_ct, CACHE_BLOCK)
    dst = row_off[:, None] + col_off[None, :]
    store_kv(KC, VC, dst, y, y, row_ok[:, None] & is_k[None, :], row_ok[:, None] & is_v[None, :], 1.0, 1.0, 0)
