"""8-bit KV cache: the per-layer K and V scales from calibration statistics.

The cache's quantize / dequantize are `kv_cache_spec.quantize` / `dequantize` (the linear layers' INT8
and FP8 definitions applied with a cache's scale). This module adds what calibration needs:

    scale = absmax / 127 (int8) or absmax / 448 (fp8 e4m3), per layer, separately for K and for V

K and V get separate scales: their ranges differ by large factors in trained models, and one merged scale
spends most of V's 8 bits on K's range. The statistics are the calibration's per-column abs-max of the
qkv projection's output (bias included). V is cached as projected. K is cached after the rotary
embedding, which rotates each pair of rotated dimensions: |k'_i| <= sqrt(k_i^2 + k_j^2) for the pair
(i, j), so the K abs-max used is max over pairs of sqrt(max|k_i|^2 + max|k_j|^2) for rotated dims, a bound
that can never saturate (at most sqrt(2) above the true max, under half a bit). Statistics must be those
of the whole (unsharded) layer, so every tensor-parallel rank holds the same per-layer scales.
"""
from __future__ import annotations

import torch

from .fp8_ref import FP8_DTYPE, FP8_E4M3_MAX
from .int8_gemm_ref import INT8_MAX, scale_from_absmax

QMAX = {torch.int8: INT8_MAX, FP8_DTYPE: FP8_E4M3_MAX}
# checkpoint tensor names of the per-layer scales, beside `transformer.layers.{i}.`
K_SCALE_NAME = "attention.k_cache_scaling_factor"
V_SCALE_NAME = "attention.v_cache_scaling_factor"
MERGED_SCALE_NAME = "attention.kv_cache_scaling_factor"   # TensorRT-LLM's one scale for both, read as both


def kv_cache_scale(absmax: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """The cache scale [1] fp32 mapping `absmax` to the 8-bit dtype's largest value (1 for an all-zero tensor)."""
    if dtype not in QMAX:
        raise ValueError(f"an 8-bit KV cache is int8 or float8_e4m3fn, not {dtype}")
    return scale_from_absmax(torch.as_tensor(absmax, dtype=torch.float32).reshape(1), QMAX[dtype])


def rotated_absmax(col_absmax: torch.Tensor, rotary_dim: int, interleaved: bool = False) -> torch.Tensor:
    """Per-dimension bound on |x| after a rotary embedding of the first `rotary_dim` dims of each head, from
    per-dimension abs-max before it (`col_absmax` [..., head_size]). GPT-NeoX pairs dim i with i + r/2,
    GPT-J (`interleaved`) pairs 2i with 2i + 1; both members of a pair get sqrt(a_i^2 + a_j^2)."""
    if rotary_dim == 0:
        return col_absmax
    if rotary_dim % 2 or rotary_dim > col_absmax.shape[-1]:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and at most head_size {col_absmax.shape[-1]}")
    a = col_absmax.to(torch.promote_types(col_absmax.dtype, torch.float32))
    rot, rest = a[..., :rotary_dim], a[..., rotary_dim:]
    if interleaved:
        pair = rot.reshape(*rot.shape[:-1], rotary_dim // 2, 2).pow(2).sum(-1).sqrt()
        bound = pair.repeat_interleave(2, dim=-1)
    else:
        half = rotary_dim // 2
        pair = (rot[..., :half].pow(2) + rot[..., half:].pow(2)).sqrt()
        bound = torch.cat([pair, pair], dim=-1)
    return torch.cat([bound, rest], dim=-1)


def kv_absmax_from_qkv(col_absmax: torch.Tensor, num_heads: int, num_kv_heads: int, head_size: int,
                       rotary_dim: int = 0, interleaved: bool = False) -> tuple[float, float]:
    """(K abs-max, V abs-max) of one layer as cached, from the per-column abs-max of its fused qkv output
    [q heads | k heads | v heads] x head_size (module docstring for the rotary bound)."""
    q_cols, kv_cols = num_heads * head_size, num_kv_heads * head_size
    if col_absmax.shape != (q_cols + 2 * kv_cols,):
        raise ValueError(f"qkv column statistics have shape {tuple(col_absmax.shape)}, expected "
                         f"({q_cols + 2 * kv_cols},) for {num_heads} query and {num_kv_heads} kv heads of {head_size}")
    k = col_absmax[q_cols:q_cols + kv_cols].reshape(num_kv_heads, head_size)
    v = col_absmax[q_cols + kv_cols:]
    return float(rotated_absmax(k, rotary_dim, interleaved).max()), float(v.float().max())
