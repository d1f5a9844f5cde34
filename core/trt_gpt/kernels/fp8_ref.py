"""FP8 (e4m3) linear layers: the definition in torch, the GPU path (`torch._scaled_mm`) and the capability check.

    s_w = max|W| / 448, W_q = e4m3(saturate(W / s_w))              per-tensor weight scale (calibrated offline)
    s_x = act_scale (static, from calibration) or max|x| / 448       per-tensor activation scale
    x_q = e4m3(saturate(x / s_x, +-448))                             torch's float8_e4m3fn cast: round to nearest even
    y   = float32(sum_k x_q[m, k] * W_q[n, k]) * (s_x * s_w) + bias  -> one cast to the output dtype

On a GPU of compute capability >= 8.9 (Ada, Hopper) the product is `torch._scaled_mm` (cuBLASLt FP8, fp32
accumulation, alpha = s_x * s_w, bias in the epilogue). Elsewhere (CPU, or a matrix whose K or N is not a
multiple of 16, which cuBLASLt's FP8 kernels require) the same FP8 values are multiplied in fp32: products
of two e4m3 values are exact in fp32 (4 + 4 significant bits), so the two paths differ only in the order
of the fp32 sums. On a CUDA GPU older than 8.9 FP8 is refused (`fp8_supported`), never emulated there:
an emulated FP8 engine would be slower than the fp16 one it is meant to beat.
"""
from __future__ import annotations

import functools

import torch

from .int8_gemm_ref import FLOAT_OUT, scale_from_absmax

FP8_DTYPE = torch.float8_e4m3fn
FP8_E4M3_MAX = 448.0
MIN_CAPABILITY = (8, 9)
# Steps of at most this many rows take the Triton FP8 GEMM with the activation quantization inside it (one
# kernel) instead of the quantization kernel + cuBLAS (`torch._scaled_mm`). 0 until benchmarks/w8a8_gemm.py
# ("fp8_fused" against "fp8+q") shows where it wins on the GPU at hand.
FP8_TRITON_MAX_ROWS = 0


def fp8_supported(device: torch.device | str) -> str | None:
    """None when FP8 linear layers can run on `device` (any CPU: emulation; CUDA: capability >= 8.9 and a
    torch with `_scaled_mm`), else a one-line reason naming the device and its capability."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return _cuda_fp8_supported(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)   # asked on every FP8 GEMM: keep the driver query off that path
def _cuda_fp8_supported(index: int) -> str | None:
    device = torch.device("cuda", index)
    if not hasattr(torch, "_scaled_mm"):
        return f"FP8 needs torch._scaled_mm, which torch {torch.__version__} does not have"
    cap = torch.cuda.get_device_capability(device)
    if tuple(cap) < MIN_CAPABILITY:
        return (f"FP8 needs a GPU of compute capability >= {MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ada, Hopper); "
                f"{torch.cuda.get_device_name(device)} has {cap[0]}.{cap[1]}")
    return None


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale saturated to e4m3's +-448 and rounded to the nearest e4m3 value (torch's cast)."""
    return (x.float() / scale.float()).clamp(-FP8_E4M3_MAX, FP8_E4M3_MAX).to(FP8_DTYPE)


def fp8_scale(absmax: torch.Tensor) -> torch.Tensor:
    """The per-tensor scale that maps `absmax` to e4m3's largest value (1 for an all-zero tensor), shape [1]."""
    return scale_from_absmax(absmax.reshape(1), FP8_E4M3_MAX)


def quantize_weight_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W_q e4m3 [N, K], s_w fp32 [1]) of a float weight [N, K]."""
    s = fp8_scale(w.float().abs().amax())
    return quantize_fp8(w, s), s


def check_fp8_gemm(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                   bias: torch.Tensor | None, out_dtype: torch.dtype) -> None:
    """Shapes and dtypes shared by both FP8 paths (ValueError naming what does not fit)."""
    if x_q.dtype != FP8_DTYPE or w_q.dtype != FP8_DTYPE or x_q.dim() != 2 or w_q.dim() != 2 \
            or x_q.shape[1] != w_q.shape[1]:
        raise ValueError(f"x_q [M, K] and w_q [N, K] must be float8_e4m3fn, got {x_q.dtype} {tuple(x_q.shape)}, "
                         f"{w_q.dtype} {tuple(w_q.shape)}")
    for name, s in (("s_x", s_x), ("s_w", s_w)):
        if s.dtype != torch.float32 or s.numel() != 1:
            raise ValueError(f"{name} must be a 1-element fp32 tensor (per-tensor scale), got {s.dtype} "
                             f"{tuple(s.shape)}")
    if bias is not None and bias.shape != (w_q.shape[0],):
        raise ValueError(f"bias must be [{w_q.shape[0]}], got {tuple(bias.shape)}")
    if out_dtype not in FLOAT_OUT:
        raise ValueError(f"out_dtype must be one of {FLOAT_OUT}, got {out_dtype}")


def fp8_gemm_ref(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                 bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The emulation: the e4m3 values multiplied and summed in fp32, alpha = s_x * s_w, + bias, one cast."""
    check_fp8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype)
    y = (x_q.float() @ w_q.float().t()) * (s_x.float() * s_w.float()).reshape(())
    if bias is not None:
        y = y + bias.float()
    return y.to(out_dtype)


def _scaled_mm_ok(x_q: torch.Tensor, w_q: torch.Tensor) -> bool:
    return x_q.is_cuda and x_q.shape[1] % 16 == 0 and w_q.shape[0] % 16 == 0


def fp8_gemm(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
             bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """`fp8_gemm_ref`'s function: `torch._scaled_mm` on a CUDA GPU that has FP8 (TrtGptError on one that has
    not), the fp32 emulation elsewhere."""
    check_fp8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype)
    if x_q.is_cuda:
        reason = fp8_supported(x_q.device)
        if reason is not None:
            from ..errors import TrtGptError

            raise TrtGptError(reason)
    if not _scaled_mm_ok(x_q, w_q):
        return fp8_gemm_ref(x_q, w_q, s_x, s_w, bias, out_dtype)
    # cuBLASLt takes a bias only with a 16-bit output of the bias's own dtype
    fused_bias = bias is not None and out_dtype != torch.float32
    y = torch._scaled_mm(x_q.contiguous(), w_q.t(), scale_a=s_x.reshape(()), scale_b=s_w.reshape(()),
                         bias=bias.to(out_dtype) if fused_bias else None, out_dtype=out_dtype)
    return y + bias.float() if bias is not None and not fused_bias else y


def fp8_linear(x: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None,
               act_scale: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """An FP8 linear layer on float x [..., K]: quantize x with the static `act_scale` (or, when None, the
    dynamic per-tensor max|x| / 448), FP8 GEMM, output in `out_dtype` (default x's dtype)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    s_x = fp8_scale(x2.float().abs().amax()) if act_scale is None else act_scale.float().reshape(1)
    fused = x2.is_cuda and x2.shape[0] <= FP8_TRITON_MAX_ROWS and _scaled_mm_ok(x2, w_q)
    if fused and fp8_supported(x2.device) is None:
        from .triton_int8_gemm import static_linear   # quantization inside the GEMM: one kernel

        y = static_linear(x2.contiguous(), w_q, s_w, s_x, bias, out_dtype or x.dtype, fp8=True)
        return y.reshape(*lead, w_q.shape[0])
    if x2.is_cuda:   # one Triton pass instead of torch's cast, divide, clamp and convert kernels
        from .triton_quant import quantize_rows_fp8

        x_q = quantize_rows_fp8(x2.contiguous(), s_x)
    else:
        x_q = quantize_fp8(x2, s_x)
    y = fp8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype or x.dtype)
    return y.reshape(*lead, w_q.shape[0])
