"""The Triton INT8 tensor-core GEMM against the torch definition
(`int8_gemm_ref`, itself checked against float64 in test_int8_gemm_ref) and against float64 arithmetic
written here. Shapes are not multiples of the interpreter's 16x16x32 tiles, so every tail is exercised."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels.int8_gemm_ref import int8_gemm_ref, quantize_weight  # noqa: E402
from trt_gpt.kernels.triton_int8_gemm import Int8GemmConfig, int8_gemm, w8a8_linear  # noqa: E402
from trt_gpt.kernels.triton_quant import quantize_rows  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def case(m, n, k, per_token, per_channel, bias, out_dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_q = torch.randint(-127, 128, (m, k), generator=gen).to(torch.int8)
    w_q = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    s_x = torch.rand(m if per_token else 1, generator=gen) * 0.01 + 1e-3
    s_w = torch.rand(n if per_channel else 1, generator=gen) * 0.01 + 1e-3
    b = torch.randn(n, generator=gen).to(out_dtype) if bias else None
    return x_q, w_q, s_x, s_w, b


def on(dev, *ts):
    return [t.to(dev) if t is not None else None for t in ts]


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_token,per_channel,bias", [(True, True, True), (False, True, False),
                                                         (True, False, True), (False, False, False)])
def test_int8_gemm_equals_the_definition(per_token, per_channel, bias, out_dtype):
    x_q, w_q, s_x, s_w, b = case(37, 50, 100, per_token, per_channel, bias, out_dtype)
    want = int8_gemm_ref(x_q, w_q, s_x, s_w, b, out_dtype)
    got = int8_gemm(*on(DEVICE, x_q, w_q, s_x, s_w, b), out_dtype=out_dtype).cpu()
    assert got.dtype == out_dtype and got.shape == (37, 50)
    if DEVICE == "cpu" and out_dtype != torch.bfloat16:
        assert torch.equal(got, want)   # the interpreter evaluates the epilogue in the definition's order
    elif DEVICE == "cpu":               # the interpreter's fp32 -> bf16 cast truncates: one bf16 ulp apart
        torch.testing.assert_close(got, want, rtol=2 ** -7, atol=0)
    else:                               # the GPU may contract the bias add into an FMA
        torch.testing.assert_close(got, want, rtol=2e-6 if out_dtype == torch.float32 else 1e-2, atol=1e-5)
    # float64 from the definition: the integer sum, the two scales, the bias
    want64 = (x_q.double() @ w_q.double().t()) * s_x.double().reshape(-1, 1) * s_w.double().reshape(1, -1)
    if b is not None:
        want64 += b.double()
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    torch.testing.assert_close(got.double(), want64, rtol=tol, atol=tol * want64.abs().max().item())


def test_int8_gemm_single_row_and_even_k_and_other_tiles():
    x_q, w_q, s_x, s_w, b = case(1, 33, 64, True, True, True, torch.float32, seed=1)
    want = int8_gemm_ref(x_q, w_q, s_x, s_w, b, torch.float32)
    got = int8_gemm(*on(DEVICE, x_q, w_q, s_x, s_w, b), out_dtype=torch.float32).cpu()
    torch.testing.assert_close(got, want, rtol=2e-6, atol=1e-5)   # atol: an FMA-contracted bias add on the GPU
    x_q, w_q, s_x, s_w, b = case(40, 20, 96, True, True, False, torch.float32, seed=2)
    cfg = Int8GemmConfig(32, 16, 32, 1, 4, 1)   # one more tile shape, group of one
    got = int8_gemm(*on(DEVICE, x_q, w_q, s_x, s_w, b), out_dtype=torch.float32, config=cfg).cpu()
    torch.testing.assert_close(got, int8_gemm_ref(x_q, w_q, s_x, s_w, b, torch.float32), rtol=2e-6, atol=0)


def test_int8_gemm_accumulates_beyond_fp32_integers():
    # |acc| up to 127^2 * 1088 = 17.5M > 2^24: an fp32 accumulator would lose the last bits; INT32 does not
    k = 1088
    x_q = torch.full((16, k), 127, dtype=torch.int8)
    w_q = torch.full((16, k), 127, dtype=torch.int8)
    w_q[:, 0] = 126                                      # makes the exact sum odd: 127^2 * 1087 + 127 * 126
    one = torch.ones(1)
    got = int8_gemm(*on(DEVICE, x_q, w_q, one, one), out_dtype=torch.float32).cpu()
    exact = 127 * 127 * (k - 1) + 127 * 126
    assert exact > 2 ** 24 and got[0, 0].item() == float(torch.tensor(float(exact), dtype=torch.float64).float())


def test_w8a8_linear_device_paths_agree():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 7, 48, generator=gen)
    w, b = torch.randn(20, 48, generator=gen), torch.randn(20, generator=gen)
    w_q, s_w = quantize_weight(w, per_channel=True)
    cpu = w8a8_linear(x, w_q, s_w, b)
    x_q, s_x = quantize_rows(x.reshape(21, 48).to(DEVICE))
    kern = int8_gemm(*on(DEVICE, x_q, w_q, s_x, s_w, b), out_dtype=torch.float32).cpu()
    assert cpu.shape == (3, 7, 20)
    torch.testing.assert_close(kern, cpu.reshape(21, 20), rtol=2e-6, atol=1e-5)


def test_bad_layouts_are_refused():
    q = torch.zeros(8, 64, dtype=torch.int8, device=DEVICE)
    one = torch.ones(1, device=DEVICE)
    with pytest.raises(ValueError, match="K-contiguous"):
        int8_gemm(q, torch.zeros(64, 8, dtype=torch.int8, device=DEVICE).t(), one, one)


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_fp8_gemm_triton_equals_the_emulation(out_dtype, bias):
    from trt_gpt.kernels.fp8_ref import fp8_gemm_ref, quantize_fp8, quantize_weight_fp8
    from trt_gpt.kernels.triton_int8_gemm import fp8_gemm_triton

    gen = torch.Generator().manual_seed(6)
    x, w = torch.randn(37, 96, generator=gen), torch.randn(50, 96, generator=gen)   # K: whole 32-wide tiles
    b = torch.randn(50, generator=gen).to(out_dtype) if bias else None
    w_q, s_w = quantize_weight_fp8(w)
    s_x = torch.tensor([0.01])
    x_q = quantize_fp8(x, s_x)
    want = fp8_gemm_ref(x_q, w_q, s_x, s_w, b, out_dtype)
    got = fp8_gemm_triton(*on(DEVICE, x_q, w_q, s_x, s_w, b), out_dtype=out_dtype).cpu()
    assert got.dtype == out_dtype and got.shape == (37, 50)
    # fp32 sums in another order (products of e4m3 values are exact in fp32)
    tol = 1e-5 if out_dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.float().abs().max().item())
    with pytest.raises(ValueError, match="multiple of 16"):
        fp8_gemm_triton(*on(DEVICE, x_q[:, :40], w_q[:, :40], s_x, s_w))


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16])
def test_static_linear_int8_is_the_definition_in_one_kernel(smooth, out_dtype):
    """Quantization inside the GEMM with a static scale (and smoother): the same integers, the same output."""
    from trt_gpt.kernels.int8_gemm_ref import w8a8_linear_ref
    from trt_gpt.kernels.triton_int8_gemm import static_linear

    gen = torch.Generator().manual_seed(8)
    x = (torch.randn(37, 100, generator=gen) * 2).to(out_dtype)
    w, b = torch.randn(50, 100, generator=gen), torch.randn(50, generator=gen).to(out_dtype)
    w_q, s_w = quantize_weight(w, per_channel=True)
    act = torch.tensor([0.03])                        # saturates the largest inputs
    sm = torch.rand(100, generator=gen) + 0.5 if smooth else None
    want = w8a8_linear_ref(x, w_q, s_w, b, act, sm)
    got = static_linear(*on(DEVICE, x, w_q, s_w, act, b), smoother=sm.to(DEVICE) if smooth else None).cpu()
    assert got.dtype == out_dtype
    if DEVICE == "cpu":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got.float(), want.float(), rtol=2e-6 if out_dtype == torch.float32 else 1e-3,
                                   atol=1e-5)


def test_static_linear_fp8_equals_the_emulation():
    from trt_gpt.kernels.fp8_ref import fp8_linear, quantize_weight_fp8
    from trt_gpt.kernels.triton_int8_gemm import static_linear

    gen = torch.Generator().manual_seed(9)
    x, w = torch.randn(21, 96, generator=gen) * 3, torch.randn(40, 96, generator=gen)
    b = torch.randn(40, generator=gen)
    w_q, s_w = quantize_weight_fp8(w)
    act = torch.tensor([0.005])
    want = fp8_linear(x, w_q, s_w, b, act)            # CPU: the emulation of the same FP8 values
    got = static_linear(*on(DEVICE, x, w_q, s_w, act, b), fp8=True).cpu()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
