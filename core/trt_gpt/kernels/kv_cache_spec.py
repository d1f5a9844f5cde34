"""What the paged KV cache stores, and the one torch implementation of writing a step's K/V into it.

`KVCacheSpec` is the cache's storage dtype plus, for an 8-bit cache, one K scale and one V scale per layer
(separate: K and V have different ranges). Every writer and reader follows its two definitions:

    quantize(x, scale)   = x.to(dtype)                                        16/32-bit caches (scale None)
                         = saturate(round_half_even(x / scale)).to(dtype)     int8 (saturate to +-127)
                         = saturate(x / scale).to(dtype)                      fp8 e4m3 (saturate to +-448)
    dequantize(x_q, scale) = x_q.float() [* scale]

They are defined once, in torch: the 8-bit rounding is the linear layers' INT8 and FP8 definition
(`int8_gemm_ref.quantize_int8`, `fp8_ref.quantize_fp8`), which `quantize` applies with a cache's scale.
On the GPU the one place that quantizes is the Triton store helper `kv_store.store_kv` (called by every
kernel that writes the cache: the K/V write, the fused RoPE + K/V write and the qkv GEMV's epilogue), and
the one place that dequantizes is the attention kernels' K/V tile load (`triton_quant.dequantize_tile_bits`).
The Triton K/V write, decode and prefill kernels read and write INT8 / FP8 caches; the fused RoPE + K/V
write and the GEMV epilogue store float caches only, so an engine with an 8-bit cache composes RoPE with
the K/V write and leaves the fused small-batch path (`TRITON_READS_8BIT`, `require_backend`).

`write_kv_ref` is the torch write (CPU path and reference of the Triton writers): a step's K and V
[tokens, kv_heads, head_dim] go to flat slots (block * block_size + offset) of caches
[blocks, kv_heads, block_size, head_dim]; a negative slot marks a padding token and writes nothing.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import TrtGptError
from .fp8_ref import quantize_fp8
from .int8_gemm_ref import quantize_int8

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
EIGHT_BIT_DTYPES = (torch.int8, torch.float8_e4m3fn)
TRITON_READS_8BIT = True   # see the module docstring
# config spellings (BuildConfig.kv_cache_dtype, the reference's kv_cache_quant_algo) -> storage dtype
DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float32": torch.float32, "fp32": torch.float32, "int8": torch.int8, "fp8": torch.float8_e4m3fn,
               "float8_e4m3fn": torch.float8_e4m3fn}


def storage_dtype(name: str | None, default: torch.dtype) -> torch.dtype:
    """The storage dtype a config's `kv_cache_dtype` names (None: `default`, the model dtype)."""
    if name is None:
        return default
    if name not in DTYPE_NAMES:
        raise TrtGptError(f"kv_cache_dtype '{name}' is not one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def quantize(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """x in the cache's storage `dtype` (module docstring): a cast for float caches, x / scale rounded
    (int8: half to even) and saturated for 8-bit ones."""
    if dtype in FLOAT_DTYPES:
        if scale is not None:
            raise ValueError(f"a {dtype} cache takes no scale")
        return x.to(dtype)
    if dtype not in EIGHT_BIT_DTYPES:
        raise ValueError(f"kv cache dtype {dtype} is not one of {FLOAT_DTYPES + EIGHT_BIT_DTYPES}")
    if scale is None:
        raise ValueError(f"a {dtype} cache needs a scale")
    scale = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    return quantize_int8(x, scale) if dtype == torch.int8 else quantize_fp8(x, scale)


def dequantize(x_q: torch.Tensor, scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """Cached values in float32: x_q [* scale]."""
    x = x_q.float()
    return x if scale is None else x * scale


@dataclass(frozen=True)
class KVCacheSpec:
    """Storage dtype of the paged KV cache, with per-layer K and V scales (float32 [layers]) for 8-bit."""
    dtype: torch.dtype
    k_scales: torch.Tensor | None = None
    v_scales: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.dtype not in FLOAT_DTYPES + EIGHT_BIT_DTYPES:
            raise TrtGptError(f"kv cache dtype {self.dtype} is not supported")
        has = (self.k_scales is not None, self.v_scales is not None)
        if self.quantized and has != (True, True):
            raise TrtGptError(f"an 8-bit ({self.name}) kv cache needs a K and a V scale per layer")
        if not self.quantized and any(has):
            raise TrtGptError(f"a {self.name} kv cache takes no scales")
        if self.quantized and self.k_scales.shape != self.v_scales.shape:
            raise TrtGptError("kv cache K and V scales must have one entry per layer each")

    @classmethod
    def from_name(cls, name: str | None, default: torch.dtype) -> "KVCacheSpec":
        """The spec of a config's `kv_cache_dtype` (None: the model dtype; an 8-bit one needs its scales:
        construct it with them, `runtime.engine.kv_cache_spec`)."""
        return cls(storage_dtype(name, default))

    def require_backend(self, backend: str) -> None:
        """One-line TrtGptError when attention `backend` ("torch", "triton") cannot read this cache."""
        if self.quantized and backend != "torch" and not TRITON_READS_8BIT:
            raise TrtGptError(f"kv cache dtype {self.name}: the Triton attention kernels do not read 8-bit KV caches "
                              f"yet; TRT_GPT_ATTENTION_BACKEND=torch runs this engine with the torch reference "
                              "(slow), or build it with a float16/bfloat16 cache")

    @property
    def quantized(self) -> bool:
        return self.dtype in EIGHT_BIT_DTYPES

    @property
    def name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def scales(self, layer: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(K scale, V scale) of local layer `layer` as 1-element tensors, or None for a float cache."""
        if not self.quantized:
            return None
        return self.k_scales[layer:layer + 1], self.v_scales[layer:layer + 1]


def check_kv_write(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   slot_mapping: torch.Tensor) -> None:
    """Shapes shared by every K/V writer (ValueError naming what does not fit)."""
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k/v must both be [tokens, kv_heads, head_dim], got {tuple(k.shape)}, {tuple(v.shape)}")
    if k_cache.dim() != 4 or k_cache.shape != v_cache.shape or k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must both be [blocks, kv_heads, block_size, head_dim] with one "
                         "memory layout")
    if k_cache.shape[1] != k.shape[1] or k_cache.shape[3] != k.shape[2]:
        raise ValueError(f"k {tuple(k.shape)} does not fit cache {tuple(k_cache.shape)}")
    if slot_mapping.shape != (k.shape[0],):
        raise ValueError(f"slot_mapping has shape {tuple(slot_mapping.shape)} for {k.shape[0]} tokens")


def write_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor, scales: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """Store K/V [T, kv_heads, head_dim] at `slot_mapping` (negative: padding, not written), quantized
    for the caches' dtype (`scales`: this layer's (K, V) scales of an 8-bit cache)."""
    check_kv_write(k, v, k_cache, v_cache, slot_mapping)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    bs = k_cache.shape[2]
    ks, vs = scales if scales is not None else (None, None)
    k_cache[slots // bs, :, slots % bs] = quantize(k[keep], k_cache.dtype, ks)
    v_cache[slots // bs, :, slots % bs] = quantize(v[keep], v_cache.dtype, vs)
