"""The weight-only storage format (INT8 / INT4, per-channel or group-wise, optional AWQ pre-quant scale):
quantization by round-to-nearest, the one INT4 packer, dequantization, and `weight_only_linear`, the one
function every weight-only layer multiplies through (the place a GPU kernel plugs in).

Storage, per linear layer of `[out, in]` (this tensor-parallel rank's local sizes):

- INT8 per-channel (quant_algo W8A16): `weight` int8 `[out, in]`; `per_channel_scale` `[out]` in the model
  dtype; w ~= weight * per_channel_scale[:, None].
- INT4 per-channel (W4A16): `weight` int8 `[out, in // 2]`, two signed 4-bit values a byte: the low nibble
  holds input column 2j, the high nibble column 2j + 1, each two's complement in [-8, 7];
  `per_channel_scale` `[out]`.
- INT4 group-wise (W4A16_GPTQ: TensorRT-LLM's name for group-wise INT4 without a pre-quant scale; here the
  integers come from round-to-nearest, not GPTQ's error correction): packed `weight` as above;
  `weights_scaling_factor` `[out, in // g]` (g = `quantization.group_size`); input column c uses the scale
  of group c // g.
- AWQ (W4A16_AWQ): group-wise INT4 as above plus `prequant_scaling_factor` `[in]` (p). The layer computes
  `(x * p) @ dequant(weight)^T`; the stored integers quantize W' = W / p[None, :] (W's input columns
  scaled by s = 1 / p, the activation-aware scale), so that (x * p) W'^T = x W^T before rounding.

Quantization (round-to-nearest, symmetric, no zero point): a scale per row (or row and group) is
max|w| / qmax with qmax = 127 for INT8 and 7 for INT4 (the symmetric INT4 of TensorRT-LLM and AutoAWQ:
-8 is representable, and only AWQ's clipped ranges produce it); the scale is first rounded to the model dtype, then
q = clamp(round(w / scale), qmin, qmax) in float32 with that stored scale (ties to even, torch.round),
so dequantization uses exactly the scale the integers were chosen for. An all-zero row or group gets scale
1 (its integers are 0). lm_head and the embeddings stay in float.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from trt_gpt.kernels.weight_only_ref import pack_int4 as _pack_int4
from trt_gpt.kernels.weight_only_ref import unpack_int4

from trt_gpt.errors import TrtGptError

QMAX = {8: 127, 4: 7}
QMIN = {8: -127, 4: -8}


def check_group(in_features: int, group_size: int | None, where: str) -> None:
    """One-line error when a group-wise format cannot cut `in_features` (local to a tp rank) into groups."""
    if group_size is None:
        return
    if group_size <= 0 or in_features % group_size:
        raise TrtGptError(f"{where}: quantization.group_size {group_size} does not divide the layer's input "
                          f"dimension {in_features} (per tensor-parallel rank); choose a group size that does")


def scales_for(w: torch.Tensor, bits: int, group_size: int | None, dtype: torch.dtype,
               clip: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric scales of `w [out, in]`: `[out]` per channel, `[out, in // g]` per group; in `dtype`.
    `clip` (same shape, in (0, 1]) shrinks each range to clip * max|w| (AWQ's clipping search)."""
    wf = w.float()
    if group_size is not None:
        wf = wf.reshape(wf.shape[0], -1, group_size)
    amax = wf.abs().amax(dim=-1)
    if clip is not None:
        amax = amax * clip
    scale = (amax / QMAX[bits]).to(dtype)
    # an all-zero row/group (or one whose scale underflows the dtype) quantizes to zeros with scale 1
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def expand_scale(scale: torch.Tensor, in_features: int) -> torch.Tensor:
    """`[out]` or `[out, in // g]` scales -> `[out, in]` (or `[out, 1]` per channel), for elementwise use."""
    if scale.dim() == 1:
        return scale[:, None]
    return scale.repeat_interleave(in_features // scale.shape[1], dim=1)


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int | None, dtype: torch.dtype,
                 clip: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Round-to-nearest symmetric quantization of `w [out, in]` -> (integers int8 `[out, in]` unpacked,
    scales in `dtype`); `clip` as in `scales_for`."""
    scale = scales_for(w, bits, group_size, dtype, clip)
    q = torch.round(w.float() / expand_scale(scale.float(), w.shape[1]))
    return q.clamp(QMIN[bits], QMAX[bits]).to(torch.int8), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """int8 values in [-8, 7] `[out, in]` -> int8 `[out, in // 2]`: column 2j in the low nibble, 2j+1 high
    (the kernels' one packer, with a one-line error for an odd input dimension)."""
    if q.shape[-1] % 2:
        raise TrtGptError(f"INT4 packing needs an even input dimension, got {q.shape[-1]}")
    return _pack_int4(q)


def dequantize(weight: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Stored integers (packed for INT4) and scales -> the float `[out, in]` matrix in `dtype`."""
    q = unpack_int4(weight) if bits == 4 else weight
    return q.to(dtype) * expand_scale(scale.to(dtype), q.shape[1])


def weight_only_linear_ref(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
                           bias: torch.Tensor | None = None, prequant: torch.Tensor | None = None) -> torch.Tensor:
    """The torch reference: dequantize to x's dtype, then one GEMM (any device)."""
    if prequant is not None:
        x = x * prequant.to(x.dtype)
    return F.linear(x, dequantize(weight, scale, bits, x.dtype), bias)


def weight_only_linear(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor, bits: int,
                       bias: torch.Tensor | None = None, prequant: torch.Tensor | None = None) -> torch.Tensor:
    """`x @ dequant(weight)^T (+ bias)` for every weight-only layer; `scale` is `[out]` (per channel) or
    `[out, in // g]` (group-wise), `prequant` the AWQ input scale or None.

    On CUDA the Triton kernels (`kernels/triton_weight_only.py`: a GEMV that dequantizes in registers for
    decode-sized steps, a tensor-core GEMM above) compute it with fp32 accumulation; elsewhere the reference
    dequantizes and runs one GEMM (same function up to accumulation order)."""
    if x.is_cuda:
        from trt_gpt.kernels.triton_weight_only import weight_only_linear as kernel

        k = x.shape[-1]
        group = None if scale.dim() == 1 else k // scale.shape[1]
        return kernel(x, weight, scale, bias, bits=bits, group_size=group, prequant=prequant)
    return weight_only_linear_ref(x, weight, scale, bits, bias, prequant)
