"""The W8A8 definition in torch (`int8_gemm_ref`) against float64 arithmetic written here from the
definition: symmetric round-to-nearest INT8 (per token / per tensor activations, per channel / per tensor
weights, SmoothQuant's runtime smoother), an exact integer sum, and the dequantizing epilogue."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.kernels.int8_gemm_ref import (check_int8_gemm, int8_gemm_ref, int8_matmul_exact, quantize_activations,
                                           quantize_weight, w8a8_linear_ref)


def round_half_even_64(v: torch.Tensor) -> torch.Tensor:
    """Round half to even in float64 written out: floor, then ties go to the even neighbour."""
    f = torch.floor(v)
    d = v - f
    up = (d > 0.5) | ((d == 0.5) & (torch.remainder(f, 2) == 1))
    return f + up.double()


def assert_quantized(got: torch.Tensor, exact: torch.Tensor) -> None:
    """got (int8) equals round_half_even(clamp(exact, +-127)) of the float64 quotient; where fp32 division may
    land on the other side of a tie (|frac - 0.5| < 1e-5) a difference of one is allowed."""
    want = round_half_even_64(exact.clamp(-127, 127))
    diff = (got.double() - want).abs()
    near_tie = ((exact - torch.floor(exact)) - 0.5).abs() < 1e-5
    assert got.dtype == torch.int8
    assert ((diff == 0) | (near_tie & (diff == 1))).all(), diff.max()


def test_round_half_even_helper():
    assert round_half_even_64(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 2.4, -2.6], dtype=torch.float64)).tolist() == \
        [0.0, 2.0, 2.0, -0.0, -2.0, 2.0, -3.0]


@pytest.mark.parametrize("per_channel", [True, False])
def test_quantize_weight_matches_float64(per_channel):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(24, 40, generator=gen) * torch.linspace(0.1, 3, 24)[:, None]
    w_q, s_w = quantize_weight(w, per_channel)
    w64 = w.double()
    s64 = w64.abs().amax(dim=1) / 127 if per_channel else w64.abs().max().reshape(1) / 127
    assert s_w.shape == ((24,) if per_channel else (1,)) and s_w.dtype == torch.float32
    torch.testing.assert_close(s_w.double(), s64, rtol=1e-7, atol=0)
    assert_quantized(w_q, w64 / s64[:, None] if per_channel else w64 / s64)
    assert w_q.abs().max() == 127


def test_quantize_activations_per_token_static_and_smoother():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 33, generator=gen) * 4
    x[3] = 0.0                                   # an all-zero token: scale 1, zeros, no NaN
    x64 = x.double()
    q, s = quantize_activations(x)
    s64 = x64.abs().amax(dim=1) / 127
    s64[3] = 1.0
    torch.testing.assert_close(s.double(), s64, rtol=1e-7, atol=0)
    assert_quantized(q, x64 / s64[:, None])
    assert q[3].eq(0).all()

    smoother = torch.rand(33, generator=gen) + 0.5
    q, s = quantize_activations(x, smoother=smoother)
    y64 = x64 / smoother.double()
    s64 = y64.abs().amax(dim=1) / 127
    s64[3] = 1.0
    torch.testing.assert_close(s.double(), s64, rtol=1e-6, atol=0)
    assert_quantized(q, y64 / s64[:, None])

    static = torch.tensor(0.05)                  # calibrated per-tensor scale: larger values saturate
    q, s = quantize_activations(x, static)
    assert s.shape == (1,) and s.item() == pytest.approx(0.05)
    assert_quantized(q, x64 / 0.05)
    assert q.abs().max() == 127


def test_ties_round_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5]])   # max 127: scale exactly 1
    q, s = quantize_activations(x)
    assert s.item() == 1.0 and q.tolist() == [[127, 0, 2, 2, 0, -2, -2, 4]]


def test_integer_sum_is_exact_beyond_fp32_integers():
    # 127 * 127 * 2048 = 33,032,192 > 2^24: an fp32 accumulator would round, the exact path does not
    gen = torch.Generator().manual_seed(2)
    x_q = torch.randint(120, 128, (3, 2048), generator=gen).to(torch.int8)
    w_q = torch.randint(120, 128, (4, 2048), generator=gen).to(torch.int8)
    w_q[1] = -w_q[1]
    want = [[sum(a * b for a, b in zip(r, c)) for c in w_q.tolist()] for r in x_q.tolist()]
    got = int8_matmul_exact(x_q, w_q)
    assert got.tolist() == want and max(abs(v) for r in want for v in r) > 2 ** 24


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_token,per_channel,bias", [(True, True, True), (False, True, False),
                                                         (True, False, False), (False, False, True)])
def test_int8_gemm_ref_matches_float64(per_token, per_channel, bias, out_dtype):
    gen = torch.Generator().manual_seed(3)
    m, n, k = 9, 13, 50
    x_q = torch.randint(-127, 128, (m, k), generator=gen).to(torch.int8)
    w_q = torch.randint(-127, 128, (n, k), generator=gen).to(torch.int8)
    s_x = torch.rand(m if per_token else 1, generator=gen) * 0.01 + 1e-3
    s_w = torch.rand(n if per_channel else 1, generator=gen) * 0.01 + 1e-3
    b = torch.randn(n, generator=gen).to(out_dtype) if bias else None
    got = int8_gemm_ref(x_q, w_q, s_x, s_w, b, out_dtype)
    acc = sum(x_q.double()[:, i, None] * w_q.double()[None, :, i] for i in range(k))   # from the definition
    want = acc * s_x.double().reshape(-1, 1) * s_w.double().reshape(1, -1)
    if b is not None:
        want = want + b.double()
    assert got.dtype == out_dtype and got.shape == (m, n)
    tol = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}[out_dtype]
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * want.abs().max().item())


def test_w8a8_linear_ref_matches_float64_definition():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 5, 40, generator=gen)
    w = torch.randn(12, 40, generator=gen)
    b = torch.randn(12, generator=gen)
    w_q, s_w = quantize_weight(w, per_channel=True)
    got = w8a8_linear_ref(x, w_q, s_w, b)
    # float64: per-token scale, round, integer dot, dequantize
    x64 = x.double().reshape(10, 40)
    s_x = x64.abs().amax(1) / 127
    x_q = round_half_even_64(x64 / s_x[:, None])
    want = (x_q @ w_q.double().t()) * s_x[:, None] * s_w.double()[None, :] + b.double()
    assert got.shape == (2, 5, 12) and got.dtype == torch.float32
    torch.testing.assert_close(got.reshape(10, 12).double(), want, rtol=1e-5, atol=1e-5)
    # and the quantized layer approximates the float one (INT8 error, not a different function)
    rel = (got - x @ w.t() - b).norm() / (x @ w.t() + b).norm()
    assert rel < 0.02


def test_checks_name_what_does_not_fit():
    q = torch.zeros(4, 8, dtype=torch.int8)
    s = torch.ones(4)
    with pytest.raises(ValueError, match="differ in K"):
        check_int8_gemm(q, torch.zeros(4, 7, dtype=torch.int8), s, s, None, torch.float16)
    with pytest.raises(ValueError, match="s_w"):
        check_int8_gemm(q, q, s, torch.ones(3), None, torch.float16)
    with pytest.raises(ValueError, match="2-D int8"):
        check_int8_gemm(q.float(), q, s, s, None, torch.float16)
    with pytest.raises(ValueError, match="bias"):
        check_int8_gemm(q, q, s, s, torch.zeros(5), torch.float16)
    with pytest.raises(ValueError, match="out_dtype"):
        check_int8_gemm(q, q, s, s, None, torch.int32)
