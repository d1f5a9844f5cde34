"""Weight-only quantized linear layers (INT8 / INT4 weights, float activations): the storage format and the
torch reference of `triton_weight_only.weight_only_linear`.

Storage (TensorRT-LLM's checkpoint names):

* INT8: `weight` int8 [N, K] (N out features, K in features) and a per-output-channel scale [N];
* INT4: `weight` int8 [N, K // 2], two signed 4-bit values a byte: the low nibble is column 2j, the high
  nibble column 2j + 1, each two's complement in [-8, 7] (`pack_int4` / `unpack_int4`, the one packer and
  unpacker the quantizer and the kernels share). Scales per channel [N], or per group of G consecutive
  input columns [N, K // G] (G a power of two);
* AWQ adds `prequant_scaling_factor` [K], by which x is multiplied before the matmul.

The layer computes y = round_x(x * prequant) @ (q * s)^T + bias, where round_x stores the scaled input in
x's dtype (as an unfused multiply would) and the matmul, scale and bias run in fp32; the result is cast to
the output dtype once. `weight_only_linear_ref` is that computation in torch (CPU path and oracle of
benchmarks); the tests' independent float64 oracle lives in the tests.
"""
from __future__ import annotations

import torch

BITS = (4, 8)
FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Pack signed 4-bit values (any integer dtype, each in [-8, 7]) [..., K] into int8 [..., K // 2]:
    column 2j in the low nibble, column 2j + 1 in the high nibble."""
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise ValueError(f"pack_int4: expected an integer tensor, got {q.dtype}")
    if q.shape[-1] % 2:
        raise ValueError(f"pack_int4: the last dimension must be even, got {tuple(q.shape)}")
    if q.numel() and (int(q.min()) < -8 or int(q.max()) > 7):
        raise ValueError("pack_int4: values must lie in [-8, 7]")
    q = q.to(torch.int16)
    lo = q[..., 0::2] & 0xF
    hi = q[..., 1::2] & 0xF
    byte = lo | (hi << 4)                      # 0..255
    return torch.where(byte > 127, byte - 256, byte).to(torch.int8)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int8 [..., K // 2] -> int8 [..., K] signed 4-bit values (inverse of `pack_int4`)."""
    if packed.dtype != torch.int8:
        raise ValueError(f"unpack_int4: expected int8 packed weights, got {packed.dtype}")
    b = packed.to(torch.int16)
    lo = ((b & 0xF) ^ 8) - 8                   # sign-extend the nibble: 0..7 stay, 8..15 -> -8..-1
    hi = (((b >> 4) & 0xF) ^ 8) - 8
    return torch.stack((lo, hi), dim=-1).flatten(-2).to(torch.int8)


def check_weight_only_args(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                           bias: torch.Tensor | None, bits: int, group_size: int | None,
                           prequant: torch.Tensor | None) -> tuple[int, int]:
    """Validate the shapes, dtypes and devices shared by the kernels and the reference; returns (N, K)."""
    fn = "weight_only_linear"
    if bits not in BITS:
        raise ValueError(f"{fn}: bits must be one of {BITS}, got {bits!r}")
    if x.dim() < 1 or x.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: x must be a [..., K] tensor of {FLOAT_DTYPES}, got {x.dtype} {tuple(x.shape)}")
    k = x.shape[-1]
    if weight.dtype != torch.int8 or weight.dim() != 2:
        raise ValueError(f"{fn}: weight must be a 2-D int8 tensor, got {weight.dtype} {tuple(weight.shape)}")
    n = weight.shape[0]
    packed_k = k // 2 if bits == 4 else k
    if (bits == 4 and k % 2) or weight.shape[1] != packed_k:
        raise ValueError(f"{fn}: int{bits} weight for K={k} inputs must be [N, {k // 2 if bits == 4 else k}]"
                         f"{' (two 4-bit values a byte; K even)' if bits == 4 else ''}, got {tuple(weight.shape)}")
    if scales.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{fn}: scales must be floating point, got {scales.dtype}")
    if group_size is None:
        if scales.shape != (n,):
            raise ValueError(f"{fn}: per-channel scales must be [{n}], got {tuple(scales.shape)}")
    else:
        if group_size < 2 or group_size & (group_size - 1) or k % group_size:
            raise ValueError(f"{fn}: group_size must be a power of two >= 2 dividing K={k}, got {group_size}")
        if scales.shape != (n, k // group_size):
            raise ValueError(f"{fn}: group-wise scales must be [{n}, {k // group_size}] (N, K / group_size), "
                             f"got {tuple(scales.shape)}")
    for name, t, length in (("bias", bias, n), ("prequant", prequant, k)):
        if t is None:
            continue
        if t.shape != (length,) or t.dtype not in FLOAT_DTYPES:
            raise ValueError(f"{fn}: {name} must be a floating-point [{length}] tensor, got {t.dtype} "
                             f"{tuple(t.shape)}")
    for name, t in (("weight", weight), ("scales", scales), ("bias", bias), ("prequant", prequant)):
        if t is not None and t.device != x.device:
            raise ValueError(f"{fn}: {name} is on {t.device}, x on {x.device}")
    return n, k


def int_weights(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """The integer weight matrix int8 [N, K] (int4 unpacked)."""
    return unpack_int4(weight) if bits == 4 else weight


def dequantize(weight: torch.Tensor, scales: torch.Tensor, group_size: int | None, bits: int,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float weight [N, K] = q * s (computed in fp32, then cast to `dtype`)."""
    q = int_weights(weight, bits).to(torch.float32)
    s = scales.to(torch.float32)
    if group_size is None:
        w = q * s[:, None]
    else:
        w = q * s.repeat_interleave(group_size, dim=1)
    return w.to(dtype)


def scaled_input(x: torch.Tensor, prequant: torch.Tensor | None) -> torch.Tensor:
    """x * prequant (AWQ) rounded to x's dtype, as an unfused multiply stores it; x itself without one."""
    if prequant is None:
        return x
    return (x.to(torch.float32) * prequant.to(torch.float32)).to(x.dtype)


def weight_only_linear_ref(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor,
                           bias: torch.Tensor | None = None, *, bits: int, group_size: int | None = None,
                           prequant: torch.Tensor | None = None,
                           out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = round_x(x * prequant) @ (q * s)^T + bias in fp32, cast to `out_dtype` (default x's) once."""
    n, k = check_weight_only_args(x, weight, scales, bias, bits, group_size, prequant)
    h = scaled_input(x, prequant).to(torch.float32)
    y = h @ dequantize(weight, scales, group_size, bits).T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype or x.dtype)
