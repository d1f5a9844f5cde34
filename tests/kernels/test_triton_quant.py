"""The Triton activation quantization (INT8 per token / static / smoothed, FP8 e4m3 static) bit for bit
against the torch definitions (`int8_gemm_ref.quantize_activations`, `fp8_ref.quantize_fp8`, themselves
checked against float64 in their tests) and against values worked out by hand."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from test_fp8_ref import e4m3_round_64  # noqa: E402

from trt_gpt.kernels.fp8_ref import FP8_DTYPE, quantize_fp8  # noqa: E402
from trt_gpt.kernels.int8_gemm_ref import quantize_activations  # noqa: E402
from trt_gpt.kernels.kv_cache_spec import dequantize, quantize  # noqa: E402
from trt_gpt.kernels.triton_quant import (dequantize_tile_bits, norm_rows, quantize_rows, quantize_rows_fp8,  # noqa: E402
                                          quantize_tile_bits)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_quantize_rows_ties_round_half_to_even():
    x = torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, 200.0 / 254]], device=DEVICE)
    x[0, 0] = 254.0                                # max 254: scale exactly 2
    q, s = quantize_rows(x)
    assert s.tolist() == [2.0]
    # x / 2 = 127, .25, .75, 1.25, -.25, -.75, -1.25, 1.75, ~0.39 -> round half even after that
    assert q.tolist() == [[127, 0, 1, 1, 0, -1, -1, 2, 0]]
    q, _ = quantize_rows(torch.tensor([[127.0, 0.5, 1.5, 2.5, -0.5, -1.5, -2.5]], device=DEVICE))
    assert q.tolist() == [[127, 0, 2, 2, 0, -2, -2]]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["per_token", "static", "smoother"])
def test_quantize_rows_equals_the_definition(mode, dtype):
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 100, generator=gen) * 3).to(dtype)
    x[2] = 0
    act = torch.tensor([0.02]) if mode == "static" else None
    smoother = torch.rand(100, generator=gen) + 0.5 if mode == "smoother" else None
    want_q, want_s = quantize_activations(x, act, smoother)
    got_q, got_s = quantize_rows(x.to(DEVICE), act.to(DEVICE) if act is not None else None,
                                 smoother.to(DEVICE) if smoother is not None else None)
    assert torch.equal(got_s.cpu(), want_s) and torch.equal(got_q.cpu(), want_q)


def test_fp8_rows_round_ties_to_even_keep_subnormals_and_saturate():
    # scale 1: 1.0625 and 17 are ties (-> 1, 16: even mantissas), 19 -> 20, 2^-10 * 1.5 -> 2^-9 (subnormal),
    # 2^-11 -> 0, 500 -> 448, -3.3 -> -3.25, -1e-9 -> -0
    x = torch.tensor([[1.0625, 17.0, 19.0, 2.0 ** -10 * 1.5, 2.0 ** -11, 500.0, -3.3, -1e-9, 0.0, 1.1875]],
                     device=DEVICE)
    q = quantize_rows_fp8(x, torch.ones(1, device=DEVICE)).cpu()
    assert q.dtype == FP8_DTYPE
    assert q.float().tolist() == [[1.0, 16.0, 20.0, 2.0 ** -9, 0.0, 448.0, -3.25, -0.0, 0.0, 1.25]]
    assert q.view(torch.uint8)[0, 7].item() == 0x80      # negative zero, as torch's cast gives


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_fp8_rows_equal_the_definition(dtype):
    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(8, 300, generator=gen) * torch.logspace(-5, 3, 300)).to(dtype)
    scale = torch.tensor([0.5])
    got = quantize_rows_fp8(x.to(DEVICE), scale.to(DEVICE)).cpu()
    want = quantize_fp8(x, scale)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    assert torch.equal(got.double(), e4m3_round_64(x.double() / 0.5))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="smoother"):
        quantize_rows(torch.zeros(2, 64, device=DEVICE), smoother=torch.ones(63, device=DEVICE))
    with pytest.raises(ValueError, match="row-major"):
        quantize_rows_fp8(torch.zeros(64, 2, device=DEVICE).t(), torch.ones(1, device=DEVICE))


@triton.jit
def _round_trip(X, Q, B, S, KIND: tl.constexpr):
    r = tl.arange(0, 256)
    s = tl.load(S)
    tl.store(Q + r, quantize_tile_bits(tl.math.div_rn(tl.load(X + r), s), KIND))
    tl.store(B + r, dequantize_tile_bits(tl.load(Q + r), s, KIND))


@pytest.mark.parametrize("kind,dtype", [(1, torch.int8), (2, FP8_DTYPE)])
def test_tile_bits_round_trip_equals_the_cache_definition(kind, dtype):
    """The device helpers every 8-bit cache store and load use: bits of quantize(x / s), and bits * s back."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(256, generator=gen) * torch.logspace(-4, 2, 256)
    s = torch.tensor([0.07])
    q = torch.empty(256, dtype=torch.int8, device=DEVICE)
    back = torch.empty(256, device=DEVICE)
    _round_trip[(1,)](x.to(DEVICE), q, back, s.to(DEVICE), KIND=kind)
    want = quantize(x, dtype, s)
    assert torch.equal(q.cpu(), want.view(torch.int8))
    assert torch.equal(back.cpu(), dequantize(want, s))


@pytest.mark.parametrize("kind", ["layernorm", "rmsnorm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_norm_rows_equals_the_definition(kind, dtype):
    # float64 statistics of each row, (x - mean) / sqrt(var + eps) * w + b (rmsnorm: x / rms * w), rounded to
    # x's dtype; rows of K = 100 span several chunks and a tail (every program recomputes the statistics)
    from trt_gpt.kernels.triton_gemv import NormArgs

    gen = torch.Generator().manual_seed(4)
    x = (torch.randn(3, 100, generator=gen) * 2 + 0.5).to(dtype)
    w = (torch.randn(100, generator=gen) * 0.5 + 1).to(dtype)
    b = (torch.randn(100, generator=gen) * 0.5).to(dtype) if kind == "layernorm" else None
    xd = x.double()
    if kind == "layernorm":
        ref = (xd - xd.mean(1, keepdim=True)) / torch.sqrt(xd.var(1, unbiased=False, keepdim=True) + 1e-5)
        ref = ref * w.double() + b.double()
    else:
        ref = xd / torch.sqrt(xd.pow(2).mean(1, keepdim=True) + 1e-5) * w.double()
    got = norm_rows(x.to(DEVICE), NormArgs(kind, w.to(DEVICE), None if b is None else b.to(DEVICE), 1e-5))
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(got.cpu().double(), ref, rtol=tol, atol=tol)
