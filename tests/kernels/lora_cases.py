"""Cases and float64 oracles shared by the tests of the small-batch LoRA kernels (test_triton_lora_rows:
the row shrink; test_lora_epilogue: the fused GEMV's LoRA epilogue), written from the definition

    h = norm(x) (rounded to x's dtype), y = act(h W^T + b + [slot >= 0] (h A[slot]^T) B[slot]^T) [* gate]
    [residual + s * y]

with one step mixing rows of two adapters and a row without one (slot -1); no code shared with the kernels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from gemv_cases import DEVICE, oracle

SLOTS = [1, -1, 0]


def adapters(k: int, n: int, dtype, r: int = 16, slots: int = 3, seed: int = 20):
    """Pool-layout A [slots, r, k] and B [slots, n, r], slot 0 a rank-5 adapter zero-padded to r."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.randn(slots, r, k, generator=g) * 0.3).to(dtype)
    b = (torch.randn(slots, n, r, generator=g) * 0.3).to(dtype)
    a[0, 5:] = 0
    b[0, :, 5:] = 0
    return a.to(DEVICE), b.to(DEVICE)


def normed64(x, norm):
    """The layer's input as the adapter sees it, in float64: norm(x) rounded to x's dtype (as stored)."""
    xd = x.double()
    if norm is None:
        return xd
    if norm.kind == "layernorm":
        h = F.layer_norm(xd, (x.shape[1],), norm.weight.double(),
                         None if norm.bias is None else norm.bias.double(), norm.eps)
    else:
        h = xd / torch.sqrt((xd * xd).mean(1, keepdim=True) + norm.eps) * norm.weight.double()
    return h.to(x.dtype).double()


def shrink64(x, a, slots, norm):
    h = normed64(x, norm)
    v = torch.zeros(x.shape[0], a.shape[1], dtype=torch.float64, device=x.device)
    for i, s in enumerate(slots):
        if s >= 0:
            v[i] = a[s].double() @ h[i]
    return v


def lora_oracle(x, w, b, a, lb, slots, *, norm=None, activation=None, gate_weight=None, gate_bias=None,
                residual=None, residual_scale=1.0):
    """The definition in float64: the gemv_cases oracle with the adapter's delta added to x W^T + b before
    the activation (no code shared with the kernels)."""
    v = shrink64(x, a, slots, norm)
    delta = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64, device=x.device)
    for i, s in enumerate(slots):
        if s >= 0:
            delta[i] = lb[s].double() @ v[i]
    # fold the delta into the bias of each row: oracle(x, w, b_row) row by row
    rows = []
    for i in range(x.shape[0]):
        bias_i = delta[i] + (b.double() if b is not None else 0.0)
        res_i = residual[i:i + 1] if residual is not None else None
        rows.append(oracle(x[i:i + 1], w, bias_i, norm=norm, activation=activation, gate_weight=gate_weight,
                           gate_bias=gate_bias, residual=res_i, residual_scale=residual_scale))
    return torch.cat(rows)


def slot_col(slots: list[int] = SLOTS, length: int = 12) -> torch.Tensor:
    """The pool's per-token column: longer than the step, -1 after its rows (padded graph rows)."""
    col = torch.full((length,), -1, dtype=torch.int32)
    col[:len(slots)] = torch.tensor(slots, dtype=torch.int32)
    return col.to(DEVICE)
