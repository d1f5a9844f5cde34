"""MLP activations by the names HF configs use (gated kinds are named after their gate's activation)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _squared_relu(x: torch.Tensor) -> torch.Tensor:
    return torch.square(F.relu(x))


ACTIVATIONS = {
    "gelu": F.gelu,                       # exact erf form, as HF's "gelu"
    "gelu_new": _gelu_tanh,
    "gelu_fast": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
    "relu": F.relu,
    "squared-relu": _squared_relu,
    "relu2": _squared_relu,
    "silu": F.silu,
    "swiglu": F.silu,                     # silu(fc(x)) * gate(x)
    "fast-swiglu": F.silu,
    "geglu": _gelu_tanh,                  # gelu(fc(x)) * gate(x)
}
