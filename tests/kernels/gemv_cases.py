"""Cases and the float64 oracle shared by the tests of the fused linear kernels (the decode GEMV,
`test_triton_gemv`): the documented math composed from plain
torch ops, sharing no code with the kernels or their torch reference."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # before the kernel modules define their @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trt_gpt.kernels.triton_gemv import NormArgs  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}


def oracle(x, w, b=None, *, norm=None, activation=None, gate_weight=None, gate_bias=None,
           residual=None, residual_scale=1.0) -> torch.Tensor:
    """The documented math composed in float64 from plain torch ops (no code shared with the module)."""
    xd = x.double()
    if norm is not None:
        if norm.kind == "layernorm":
            h = F.layer_norm(xd, (x.shape[1],), norm.weight.double(),
                             None if norm.bias is None else norm.bias.double(), norm.eps)
        else:
            h = xd / torch.sqrt((xd * xd).mean(1, keepdim=True) + norm.eps) * norm.weight.double()
        xd = h.to(x.dtype).double()  # the unfused path stores the norm output in x's dtype
    y = F.linear(xd, w.double(), None if b is None else b.double())
    acts = {None: lambda t: t, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
            "relu": F.relu, "squared_relu": lambda t: F.relu(t) ** 2, "silu": F.silu}
    y = acts[activation](y)
    if gate_weight is not None:
        y = y * F.linear(xd, gate_weight.double(), None if gate_bias is None else gate_bias.double())
    if residual is not None:
        y = residual.double() + residual_scale * y
    return y


def make(m, n, k, dtype, *, norm=None, norm_bias=True, bias=True, gated=False, residual=False, seed=0,
         x_offset=0.0):
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=gen) * scale + shift).to(dtype).to(DEVICE)
    kw = {}
    if norm is not None:
        kw["norm"] = NormArgs(norm, rnd(k, scale=0.5, shift=1.0),
                              rnd(k, scale=0.5) if norm_bias and norm == "layernorm" else None, 1e-5)
    if gated:
        kw["gate_weight"] = rnd(n, k, scale=k ** -0.5)
        kw["gate_bias"] = rnd(n)
    if residual:
        kw["residual"] = rnd(m, n)
        kw["residual_scale"] = 0.7
    x = rnd(m, k, shift=x_offset)
    return x, rnd(n, k, scale=k ** -0.5), (rnd(n) if bias else None), kw


def check(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(out).any(), "kernel left outputs unwritten"
    rel = ((out.double() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= TOL[dtype], f"rel err {rel}"


HALF = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    INTERPRET, reason="the interpreter is unreliable for bf16 (numpy has no bfloat16)"))]
