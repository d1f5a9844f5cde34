"""W8A8 INT8 GEMM in Triton: an INT8 x INT8 tensor-core GEMM with INT32 accumulation and a dequantizing
epilogue, after the activation quantization kernel (`triton_quant.quantize_rows`). The same kernel with
FP8 e4m3 operands and fp32 accumulation is an alternative to cuBLAS's FP8 GEMM (`fp8_gemm_triton`). `int8_gemm_ref`
defines the function (read its docstring for the exact arithmetic); this is that function on the GPU,
and under TRITON_INTERPRET on CPU.

Why a kernel of our own: on the H200 `torch._int_mm` is no faster than bf16 cuBLAS (shared GPU notes), so
INT8 pays only through Triton's `tl.dot` on int8 operands, which lowers to Hopper's integer wgmma. Both
operands are K-contiguous ([M, K] activations, [N, K] weights as the checkpoint stores them): the K-major
layout integer wgmma requires, so no weight transposition is ever needed.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .int8_gemm_ref import INT8_MAX, check_int8_gemm, int8_gemm_ref, quantize_activations
from .triton_quant import quantize_rows, quantize_tile


@dataclass(frozen=True)
class Int8GemmConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def as_list(self) -> list[int]:
        return [self.block_m, self.block_n, self.block_k, self.group_m, self.num_warps, self.num_stages]


def int8_gemm_config(m: int, n: int, k: int, device: torch.device) -> Int8GemmConfig:
    """Tiles for an [m, k] x [n, k]^T 8-bit product. Interpreter: small tiles so tests cross every tail.
    GPU: few rows are a weight stream (one narrow M tile, long K steps; N tiles narrowed until every SM has a
    program, since the time is the weight read spread over the programs); many rows are compute-bound
    (128-wide tiles, 8 warps). `benchmarks/w8a8_gemm.py --sweep` measures the alternatives."""
    if device.type != "cuda":
        return Int8GemmConfig(16, 16, 32, 2, 1, 1)
    if m <= 64:
        block_m = 16 if m <= 16 else 64
        block_n = 128
        while block_n > 32 and triton.cdiv(n, block_n) * triton.cdiv(m, block_m) < _num_sms(device):
            block_n //= 2
        return Int8GemmConfig(block_m, block_n, 256 if m <= 16 else 128, 1 if m <= 16 else 4, 4, 4)
    if m <= 256:
        return Int8GemmConfig(128, 128, 128, 8, 8, 3)
    return Int8GemmConfig(128, 256, 128, 8, 8, 3)


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


@triton.jit
def _gemm8_kernel(a_ptr, b_ptr, c_ptr, sa_ptr, sb_ptr, bias_ptr, sm_ptr, M, N, K, stride_am, stride_bn, stride_cm,
                  PER_TOKEN: tl.constexpr, PER_CHANNEL: tl.constexpr, HAS_BIAS: tl.constexpr, FP8: tl.constexpr,
                  QUANT_A: tl.constexpr, SMOOTH: tl.constexpr,
                  EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  GROUP_M: tl.constexpr):
    """QUANT_A: a is the float activation, quantized tile by tile with the static per-tensor scale sa (after
    dividing by the smoother when SMOOTH) exactly as `triton_quant.quantize_rows` would, so a linear layer
    with a static activation scale is one kernel."""
    # grouped program order: GROUP_M row tiles share each weight tile while it is in L2
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_n
    first_m = (pid // per_group) * GROUP_M
    group_size = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_size
    pid_n = (pid % per_group) // group_size

    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    # rows/columns past the edge read a valid row (wrapped) instead of masking every K step; never stored
    am = rm % M
    bn = rn % N
    a_ptrs = a_ptr + am[:, None].to(tl.int64) * stride_am + rk[None, :]
    b_ptrs = b_ptr + bn[:, None].to(tl.int64) * stride_bn + rk[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32 if FP8 else tl.int32)
    a_scale = 1.0
    if QUANT_A:
        a_scale = tl.load(sa_ptr)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            a = tl.load(a_ptrs, mask=(k0 + rk)[None, :] < K, other=0)
            b = tl.load(b_ptrs, mask=(k0 + rk)[None, :] < K, other=0)
        if QUANT_A:
            af = a.to(tl.float32)
            if SMOOTH:
                af = tl.math.div_rn(af, tl.load(sm_ptr + k0 + rk, mask=(k0 + rk) < K, other=1.0)[None, :])
            a = quantize_tile(tl.math.div_rn(af, a_scale), 2 if FP8 else 1)
        acc = tl.dot(a, tl.trans(b), acc, out_dtype=tl.float32 if FP8 else tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K

    # epilogue: INT8 (float32(acc) * s_x[m]) * s_w[n], FP8 acc * (s_x * s_w); + bias[n]; one cast at the store
    y = acc.to(tl.float32)
    if FP8:
        y = y * (tl.load(sa_ptr) * tl.load(sb_ptr))
    else:
        if PER_TOKEN:
            y = y * tl.load(sa_ptr + am)[:, None]
        else:
            y = y * tl.load(sa_ptr)
        if PER_CHANNEL:
            y = y * tl.load(sb_ptr + bn)[None, :]
        else:
            y = y * tl.load(sb_ptr)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + bn).to(tl.float32)[None, :]
    c_ptrs = c_ptr + rm[:, None].to(tl.int64) * stride_cm + rn[None, :]
    tl.store(c_ptrs, y.to(c_ptr.dtype.element_ty), mask=(rm[:, None] < M) & (rn[None, :] < N))


def _launch(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None,
            out_dtype: torch.dtype, config: Int8GemmConfig | None, fp8: bool, quant_a: bool = False,
            smoother: torch.Tensor | None = None) -> torch.Tensor:
    if x_q.stride(1) != 1 or w_q.stride(1) != 1:
        raise ValueError("x_q and w_q must be K-contiguous (row-major [M, K] and [N, K])")
    (m, k), n = x_q.shape, w_q.shape[0]
    out = torch.empty((m, n), dtype=out_dtype, device=x_q.device)
    if m == 0 or n == 0:
        return out
    cfg = config or int8_gemm_config(m, n, k, x_q.device)
    if fp8 and k % cfg.block_k:   # a masked fp8 load has no zero to fill with: K tiles must divide K
        bk = next((b for b in (cfg.block_k // 2, cfg.block_k // 4, 32, 16) if b >= 16 and k % b == 0), None)
        if bk is None:
            raise ValueError(f"the Triton FP8 GEMM needs K a multiple of 16, got {k}")
        cfg = dataclasses.replace(cfg, block_k=bk)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _gemm8_kernel[grid](
        x_q, w_q, out, s_x.contiguous(), s_w.contiguous(), bias if bias is not None else s_w,
        smoother.contiguous() if smoother is not None else s_w, m, n, k,
        x_q.stride(0), w_q.stride(0), out.stride(0),
        PER_TOKEN=s_x.numel() == m and m > 1 and not quant_a, PER_CHANNEL=s_w.numel() == n and n > 1,
        HAS_BIAS=bias is not None, FP8=fp8, QUANT_A=quant_a, SMOOTH=smoother is not None,
        EVEN_K=k % cfg.block_k == 0, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


def static_linear(x: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, act_scale: torch.Tensor,
                  bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None,
                  smoother: torch.Tensor | None = None, fp8: bool = False,
                  config: Int8GemmConfig | None = None) -> torch.Tensor:
    """A W8A8 (int8 `w_q`) or FP8 (e4m3 `w_q`) linear layer with a static per-tensor activation scale as ONE
    kernel: x [M, K] (float, row-major) is quantized tile by tile inside the GEMM (after dividing by
    `smoother`, INT8 only), the function of `int8_gemm_ref.w8a8_linear_ref` / `fp8_ref.fp8_linear`."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be a row-major [M, K] matrix, got {tuple(x.shape)} strides {x.stride()}")
    if smoother is not None and (fp8 or smoother.shape != (x.shape[1],)):
        raise ValueError(f"smoother must be [{x.shape[1]}] and INT8 only")
    s_x = act_scale.float().reshape(1)
    out_dtype = out_dtype or x.dtype
    if fp8:
        from .fp8_ref import FP8_DTYPE, check_fp8_gemm

        check_fp8_gemm(torch.empty(0, x.shape[1], dtype=FP8_DTYPE), w_q, s_x, s_w, bias, out_dtype)
    else:
        check_int8_gemm(torch.empty(0, x.shape[1], dtype=torch.int8), w_q, s_x, s_w, bias, out_dtype)
    return _launch(x, w_q, s_x, s_w, bias, out_dtype, config, fp8, quant_a=True, smoother=smoother)


def int8_gemm(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
              bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16,
              config: Int8GemmConfig | None = None) -> torch.Tensor:
    """`int8_gemm_ref.int8_gemm_ref` in Triton: x_q [M, K] int8, w_q [N, K] int8, s_x [M] or [1], s_w [N] or [1]."""
    check_int8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype)
    return _launch(x_q, w_q, s_x, s_w, bias, out_dtype, config, fp8=False)


def fp8_gemm_triton(x_q: torch.Tensor, w_q: torch.Tensor, s_x: torch.Tensor, s_w: torch.Tensor,
                    bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float16,
                    config: Int8GemmConfig | None = None) -> torch.Tensor:
    """`fp8_ref.fp8_gemm_ref` in Triton (fp8 tensor-core dots, fp32 accumulation; sums in another order than
    the emulation's): x_q [M, K] and w_q [N, K] float8_e4m3fn, per-tensor s_x and s_w."""
    from .fp8_ref import check_fp8_gemm

    check_fp8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype)
    return _launch(x_q, w_q, s_x, s_w, bias, out_dtype, config, fp8=True)


def w8a8_linear(x: torch.Tensor, w_q: torch.Tensor, s_w: torch.Tensor, bias: torch.Tensor | None = None,
                act_scale: torch.Tensor | None = None, smoother: torch.Tensor | None = None,
                out_dtype: torch.dtype | None = None, config: Int8GemmConfig | None = None) -> torch.Tensor:
    """A W8A8 linear layer on x [..., K]: on CUDA the Triton kernels, elsewhere the torch definition
    (`int8_gemm_ref`, exact integer arithmetic); the two agree up to the final rounding."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x.is_cuda and act_scale is not None:   # static scale: quantization inside the GEMM, one kernel
        y = static_linear(x2.contiguous(), w_q, s_w, act_scale, bias, out_dtype or x.dtype, smoother,
                          config=config)
    elif x.is_cuda:
        x_q, s_x = quantize_rows(x2.contiguous(), act_scale, smoother)
        y = int8_gemm(x_q, w_q, s_x, s_w, bias, out_dtype or x.dtype, config)
    else:
        x_q, s_x = quantize_activations(x2, act_scale, smoother)
        y = int8_gemm_ref(x_q, w_q, s_x, s_w, bias, out_dtype or x.dtype)
    return y.reshape(*lead, w_q.shape[0])


__all__ = ["INT8_MAX", "Int8GemmConfig", "fp8_gemm_triton", "int8_gemm", "int8_gemm_config", "quantize_rows",
           "static_linear", "w8a8_linear"]
