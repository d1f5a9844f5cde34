"""Pieces shared by the Triton paged-attention kernels: shape checks on the host, KV addressing on the device.

The decode and prefill kernels both read keys/values through the block table a whole tile of tokens at a
time (`kv_tile_offsets`), so the tile width (BLOCK_N) is independent of the cache's tokens-per-block: a
tile inside one cache block costs one block-table read, and a tile wider than a block (a 16-token cache
feeding 64-wide dot products) resolves the block of every token.
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from ..env import env_setting, flag
from .metadata import AttentionMetadata

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
EIGHT_BIT_CACHES = (torch.int8, torch.float8_e4m3fn)   # read through `kv_store.kernel_view` with scales

PDL_ENV = "TRT_GPT_PDL"


try:  # grid dependency control (Triton >= 3.4)
    from triton.language.extra import cuda as _gdc
    _HAS_GDC = hasattr(_gdc, "gdc_wait") and hasattr(_gdc, "gdc_launch_dependents")
except ImportError:  # pragma: no cover - older Triton
    _gdc, _HAS_GDC = None, False


@functools.lru_cache(maxsize=None)
def _pdl_supported(device_index: int) -> bool:
    return _HAS_GDC and torch.cuda.get_device_capability(device_index)[0] >= 9


PDL_AFTER_WAIT = 1   # use_pdl modes: dependents released after the kernel's own gdc_wait (default)
PDL_AT_START = 2     # dependents released as the kernel starts (a tuned GEMV option, `GemvConfig.early_release`)


def use_pdl(device: torch.device) -> int:
    """How kernels on `device` launch: 0 without programmatic dependent launch (PDL), else its mode
    (Hopper and later; truthy).

    A PDL launch lets a kernel start while earlier ones drain: it prefetches what does not depend on
    them, then `gdc_wait()` blocks until its predecessors have completed and their writes are visible.
    The rules every kernel here follows:

    * nothing is written before `gdc_wait()`;
    * before `gdc_wait()` a kernel reads only what no kernel of the same PDL chain writes: weights, host
      uploads (positions, slots, block tables, context lengths), and in decode attention the cached
      keys/values of every position but the newest (a step writes only the newest). A chain ends at any
      launch without PDL (a torch op, a copy), which starts only after everything before it completed;
    * `gdc_launch_dependents()` (`pdl_release`) after the kernel's own `gdc_wait()` (mode
      PDL_AFTER_WAIT): only the immediately preceding kernel can then still be running when a kernel
      starts. A GEMV whose tuned tile says `early_release` releases as it starts instead (PDL_AT_START;
      safe by the rule above). Releasing at start in every kernel was measured slower (docs/benchmarks.md).

    TRT_GPT_PDL=0 turns PDL off.
    """
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or not env_setting(PDL_ENV, flag, True):
        return 0
    if not _pdl_supported(device.index if device.index is not None else torch.cuda.current_device()):
        return 0
    return PDL_AFTER_WAIT


def pdl_launch(device: torch.device) -> dict:
    """Extra launch keywords for a kernel whose PDL constexpr is `use_pdl(device)`."""
    return {"launch_pdl": True} if use_pdl(device) else {}


@triton.jit
def pdl_start(PDL: tl.constexpr):
    """First statement of every PDL kernel: in mode PDL_AT_START the next kernel may launch now."""
    if PDL == 2:
        _gdc.gdc_launch_dependents()


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    if PDL:
        _gdc.gdc_wait()


@triton.jit
def pdl_release(PDL: tl.constexpr):
    """Let the next PDL-launched kernel start (it still waits for this one's completion to read results)."""
    if PDL == 1:
        _gdc.gdc_launch_dependents()


def next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def dot_precision(dtype: torch.dtype) -> str | None:
    """fp32 inputs would otherwise run the dot in tf32 on the GPU (10-bit mantissa); keep them exact.

    None (Triton's default) for 16-bit inputs, where the precision setting does not apply.
    """
    return "ieee" if dtype == torch.float32 else None


def check_attention_args(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                         meta: AttentionMetadata) -> tuple[int, int, int, int]:
    """Validate shapes shared by both kernels; returns (heads, kv_heads, head_dim, tokens_per_block)."""
    if q.dim() != 3:
        raise ValueError(f"q must be [tokens, heads, head_dim], got shape {tuple(q.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache/v_cache must both be [blocks, kv_heads, block_size, head_dim], got "
                         f"{tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must share one memory layout")
    heads, head_dim = q.shape[1], q.shape[2]
    _, kv_heads, block_size, cache_dim = k_cache.shape
    if cache_dim != head_dim:
        raise ValueError(f"q head_dim {head_dim} != cache head_dim {cache_dim}")
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads are not a multiple of {kv_heads} kv heads")
    if not 16 <= head_dim <= 256:
        # tl.dot needs a reduction dim >= 16; above 256 the fp32 accumulator tile no longer fits registers.
        raise ValueError(f"head_dim {head_dim} outside 16..256 is not supported by the Triton kernels")
    if block_size & (block_size - 1) or block_size < 1:
        raise ValueError(f"tokens_per_block must be a power of two, got {block_size}")
    if q.dtype not in SUPPORTED_DTYPES or k_cache.dtype not in SUPPORTED_DTYPES + EIGHT_BIT_CACHES:
        raise ValueError(f"unsupported dtypes q={q.dtype} cache={k_cache.dtype}")
    if q.stride(2) != 1 or k_cache.stride(3) != 1:
        raise ValueError("q and the caches must be contiguous in their last (head_dim) dimension")
    if meta.block_tables.dtype != torch.int32 or meta.context_lens.dtype != torch.int32:
        raise ValueError("block_tables and context_lens must be int32")
    return heads, kv_heads, head_dim, block_size


@triton.jit
def kv_tile_offsets(bt_row_ptr, tile_start, kmask, kv_head, offs_d,
                    stride_kb, stride_kh, stride_kt,
                    BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr):
    """Element offsets [BLOCK_N, BLOCK_D] of the keys at positions tile_start + [0, BLOCK_N) of one sequence.

    Physical block ids are widened to int64 because block * stride overflows int32 on caches above 2^31
    elements. Tiles start at multiples of BLOCK_N and both sizes are powers of two, so a tile no wider
    than a cache block lies inside one block: one scalar block-table read, and the compiler sees rows
    that are contiguous. Wider tiles resolve the block of every position (`kmask` keeps positions past
    the context from reading block-table entries that do not exist).
    """
    offs_n = tl.arange(0, BLOCK_N)
    if BLOCK_N <= BLOCK_SIZE:
        phys = tl.load(bt_row_ptr + tile_start // BLOCK_SIZE).to(tl.int64)
        row = phys * stride_kb + kv_head * stride_kh + ((tile_start % BLOCK_SIZE) + offs_n) * stride_kt
    else:
        kpos = tile_start + offs_n
        phys = tl.load(bt_row_ptr + kpos // BLOCK_SIZE, mask=kmask, other=0).to(tl.int64)
        row = phys * stride_kb + kv_head * stride_kh + (kpos % BLOCK_SIZE) * stride_kt
    return row[:, None] + offs_d[None, :]
