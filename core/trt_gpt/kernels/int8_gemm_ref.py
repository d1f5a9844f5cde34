"""W8A8 INT8 GEMM: its definition in torch (the CPU path, and the reference of `triton_int8_gemm`).

    s_x = max_k |x[m, k] / smoother[k]| / 127     per token (dynamic), or one calibrated scale per tensor (static)
    x_q = clamp(round_half_even(x / smoother / s_x), -127, 127)                            int8
    s_w = max_k |W[n, k]| / 127                    per output channel, or one scale for the whole matrix
    W_q = round_half_even(W / s_w)                                                        int8 [N, K]
    y[m, n] = (float32(sum_k x_q[m, k] * W_q[n, k]) * s_x[m]) * s_w[n] + bias[n]    -> one cast to the output dtype

`smoother` (optional, per input channel) is SmoothQuant's explicit runtime input scale for layers without
a preceding norm to fold it into: the input is divided by it before quantization (`smoothquant`).

Every float operation is IEEE fp32 in the order written (divisions rounded to nearest, which the Triton
kernels ask for with `div_rn`), and the integer sum is exact on both devices: here a float64 matmul of
the integer values (every partial sum is an integer below 127^2 * K < 2^53, so no order of summation
rounds), on the GPU INT32 tensor-core accumulation (no overflow below K = 2^31 / 127^2 ~ 133,000). So the
CPU result equals the GPU's up to the final rounding (the GPU may contract the bias add into an FMA).
A row of zeros (or a zero tensor) gets scale 1 instead of 0, so it quantizes to zeros, not NaN.
"""
from __future__ import annotations

import torch

INT8_MAX = 127.0
FLOAT_OUT = (torch.float16, torch.bfloat16, torch.float32)


def scale_from_absmax(absmax: torch.Tensor, qmax: float) -> torch.Tensor:
    """Symmetric quantization scale(s) absmax / qmax in fp32; 1 where absmax is 0 (all-zero input)."""
    a = absmax.float()
    return torch.where(a > 0, a / qmax, torch.ones_like(a))


def quantize_int8(x: torch.Tensor, scale: torch.Tensor, smoother: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., K] / smoother / scale, saturated to +-127 and rounded half to even, as int8. `scale` broadcasts
    against x (a [M, 1] column per token, a 1-element tensor per tensor, [N, 1] per weight row)."""
    y = x.float()
    if smoother is not None:
        y = y / smoother.float()
    return torch.round((y / scale.float()).clamp(-INT8_MAX, INT8_MAX)).to(torch.int8)


def quantize_activations(x: torch.Tensor, act_scale: torch.Tensor | None = None,
                         smoother: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_q int8 [M, K], s_x fp32): per-token dynamic scales [M] when `act_scale` is None, else the static
    per-tensor scale (a 1-element tensor, returned as [1])."""
    if act_scale is None:
        y = x.float() if smoother is None else x.float() / smoother.float()
        s = scale_from_absmax(y.abs().amax(dim=-1), INT8_MAX)
        return quantize_int8(x, s[:, None], smoother), s
    s = act_scale.float().reshape(1)
    return quantize_int8(x, s, smoother), s


def quantize_weight(w: torch.Tensor, per_channel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q int8 [N, K], s_w fp32 [N] per output channel or [1] per tensor) of a float weight [N, K]."""
    a = w.float().abs()
    s = scale_from_absmax(a.amax(dim=1) if per_channel else a.amax().reshape(1), INT8_MAX)
    return quantize_int8(w, s[:, None]), s


def check_int8_gemm(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                    bias: torch.Tensor | None, out_dtype: torch.dtype) -> None:
    """Shapes and dtypes shared by every INT8 GEMM path (ValueError naming what does not fit)."""
    if x_q.dtype != torch.int8 or w_q.dtype != torch.int8 or x_q.dim() != 2 or w_q.dim() != 2:
        raise ValueError(f"x_q and w_q must be 2-D int8, got {x_q.dtype} {tuple(x_q.shape)}, "
                         f"{w_q.dtype} {tuple(w_q.shape)}")
    (m, k), (n, k2) = x_q.shape, w_q.shape
    if k != k2:
        raise ValueError(f"x_q {tuple(x_q.shape)} and w_q {tuple(w_q.shape)} differ in K")
    if s_x.dtype != torch.float32 or s_x.numel() not in (1, m):
        raise ValueError(f"s_x must be fp32 with 1 or {m} entries, got {s_x.dtype} {tuple(s_x.shape)}")
    if s_w.dtype != torch.float32 or s_w.numel() not in (1, n):
        raise ValueError(f"s_w must be fp32 with 1 or {n} entries, got {s_w.dtype} {tuple(s_w.shape)}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias must be [{n}], got {tuple(bias.shape)}")
    if out_dtype not in FLOAT_OUT:
        raise ValueError(f"out_dtype must be one of {FLOAT_OUT}, got {out_dtype}")


def int8_matmul_exact(x_q: torch.Tensor, w_q: torch.Tensor) -> torch.Tensor:
    """sum_k x_q[m, k] * w_q[n, k] exactly, as float64 (an integer-valued float64 matmul: exact, see above)."""
    return x_q.double() @ w_q.double().t()


def int8_gemm_ref(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                  bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """y = (float32(x_q @ w_q^T) * s_x[m]) * s_w[n] + bias[n], cast once to `out_dtype`."""
    check_int8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype)
    acc = int8_matmul_exact(x_q, w_q).float()   # float64 -> float32 rounds like the GPU's int32 -> float32
    y = acc * s_x.reshape(-1, 1) * s_w.reshape(1, -1)
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def w8a8_linear_ref(x: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None,
                    act_scale: torch.Tensor | None = None, smoother: torch.Tensor | None = None,
                    out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """A W8A8 linear layer on float input x [..., K]: quantize the activations (per token, or with the static
    `act_scale`), INT8 GEMM, dequantize; output in `out_dtype` (default x's dtype)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    x_q, s_x = quantize_activations(x2, act_scale, smoother)
    y = int8_gemm_ref(x_q, w_q, s_x, s_w, bias, out_dtype or x.dtype)
    return y.reshape(*lead, w_q.shape[0])
