"""FP8 e4m3 linear layers against float64 arithmetic written here from the format's definition (1 sign bit,
4 exponent bits of bias 7, 3 mantissa bits, no infinities, largest finite 448, subnormals down to 2^-9;
round to nearest, ties to even), and the device capability check."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.errors import TrtGptError
from trt_gpt.kernels import fp8_ref
from trt_gpt.kernels.fp8_ref import (FP8_DTYPE, check_fp8_gemm, fp8_gemm, fp8_gemm_ref, fp8_linear, fp8_supported,
                                     quantize_fp8, quantize_weight_fp8)


def e4m3_round_64(v: torch.Tensor) -> torch.Tensor:
    """The nearest e4m3 value of each float64 (ties to even), saturated to +-448."""
    a = v.abs().clamp(max=448.0)
    # spacing of e4m3 values around a: 2^(e - 3) for normal numbers (e = floor(log2 a) >= -6), 2^-9 below
    e = torch.floor(torch.log2(a.clamp(min=2.0 ** -6)))
    quantum = torch.pow(2.0, e - 3)
    t = a / quantum
    f = torch.floor(t)
    d = t - f
    up = (d > 0.5) | ((d == 0.5) & (torch.remainder(f, 2) == 1))
    return torch.sign(v) * (f + up.double()) * quantum


def test_e4m3_helper_on_known_values():
    v = torch.tensor([0.0, 1.0, 1.0625, 1.1875, 17.0, 19.0, 448.0, 500.0, -3.3, 2.0 ** -9, 2.0 ** -10 * 1.5],
                     dtype=torch.float64)
    # 1.0625 is the tie between 1 and 1.125 -> 1 (even); 1.1875 -> 1.25 (even); 17 -> 16, 19 -> 20 (step 2)
    assert e4m3_round_64(v).tolist() == [0.0, 1.0, 1.0, 1.25, 16.0, 20.0, 448.0, 448.0, -3.25, 2.0 ** -9, 2.0 ** -9]


def test_quantize_fp8_matches_float64_definition():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 50, generator=gen) * torch.logspace(-3, 2, 50)   # normals, subnormals, saturation
    scale = torch.tensor([0.05])
    got = quantize_fp8(x, scale)
    want = e4m3_round_64(x.double() / 0.05)
    assert got.dtype == FP8_DTYPE
    # (fp32 division could land on the other side of a tie than float64's; with this seed none is that close)
    assert torch.equal(got.double(), want)
    assert got.double().abs().max() == 448.0


def test_weight_scale_maps_the_max_to_448():
    w = torch.tensor([[0.5, -2.0], [1.0, 0.25]])
    w_q, s = quantize_weight_fp8(w)
    assert s.item() == pytest.approx(2.0 / 448, rel=1e-7) and w_q.double().tolist() == [[112.0, -448.0], [224.0, 56.0]]
    z_q, z_s = quantize_weight_fp8(torch.zeros(3, 4))
    assert z_s.tolist() == [1.0] and z_q.float().eq(0).all()


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_matches_float64_definition(static, out_dtype):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 48, generator=gen)
    w, b = torch.randn(32, 48, generator=gen), torch.randn(32, generator=gen)
    w_q, s_w = quantize_weight_fp8(w)
    act = torch.tensor([0.004]) if static else None          # static: 0.004 * 448 = 1.8 < max|x|: saturates
    got = fp8_linear(x.to(out_dtype), w_q, s_w, b.to(out_dtype), act)
    x64 = x.to(out_dtype).double().reshape(18, 48)
    s_x = 0.004 if static else x64.abs().max().item() / 448
    xq = e4m3_round_64(x64 / s_x)
    wq = e4m3_round_64(w.double() / (w.double().abs().max() / 448))
    want = (xq @ wq.t()) * s_x * s_w.double() + b.to(out_dtype).double()
    assert got.shape == (2, 9, 32) and got.dtype == out_dtype
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    torch.testing.assert_close(got.reshape(18, 32).double(), want, rtol=tol, atol=tol * want.abs().max().item())
    if not static:   # FP8 error, not another function: a few percent of the float product
        ref = x @ w.t() + b
        assert ((got.float() - ref).norm() / ref.norm()).item() < 0.08


def test_capability_check(monkeypatch):
    assert fp8_supported("cpu") is None
    fp8_ref._cuda_fp8_supported.cache_clear()
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA A100-SXM4-80GB")
    msg = fp8_supported("cuda:0")
    assert msg is not None and "8.0" in msg and "8.9" in msg and "A100" in msg and "\n" not in msg
    fp8_ref._cuda_fp8_supported.cache_clear()
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (9, 0))
    assert fp8_supported("cuda") is None
    fp8_ref._cuda_fp8_supported.cache_clear()


def test_unsupported_gpu_is_refused_not_emulated(monkeypatch):
    monkeypatch.setattr(fp8_ref, "fp8_supported", lambda d: "FP8 needs ... has 8.0")
    x_q = torch.zeros(2, 16, dtype=FP8_DTYPE)
    one = torch.ones(1)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    with pytest.raises(TrtGptError, match="8.0"):
        fp8_gemm(x_q, x_q, one, one)


def test_checks_name_what_does_not_fit():
    q = torch.zeros(4, 16, dtype=FP8_DTYPE)
    with pytest.raises(ValueError, match="per-tensor"):
        check_fp8_gemm(q, q, torch.ones(4), torch.ones(1), None, torch.float16)
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        check_fp8_gemm(q.float(), q, torch.ones(1), torch.ones(1), None, torch.float16)
    with pytest.raises(ValueError, match="bias"):
        fp8_gemm_ref(q, q, torch.ones(1), torch.ones(1), torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available() or fp8_supported("cuda") is not None, reason="needs an FP8 GPU")
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scaled_mm_equals_the_emulation_up_to_summation_order(out_dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(40, 256, generator=gen)
    w, b = torch.randn(96, 256, generator=gen), torch.randn(96, generator=gen)
    w_q, s_w = quantize_weight_fp8(w)
    s_x = torch.tensor([0.01])
    x_q = quantize_fp8(x, s_x)
    want = fp8_gemm_ref(x_q, w_q, s_x, s_w, b.to(out_dtype), out_dtype).float()
    got = fp8_gemm(*(t.cuda() for t in (x_q, w_q, s_x, s_w, b.to(out_dtype))), out_dtype=out_dtype).float().cpu()
    tol = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    torch.testing.assert_close(got, want, rtol=tol, atol=tol * want.abs().max().item())
