"""The fused decode GEMV's math in torch (`triton_gemv.fused_linear`'s reference in tests and benchmarks):
fp32 accumulation and epilogue, one cast at the end, the same norm rounding as the unfused module path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .kv_cache_spec import write_kv_ref
from .kv_store import KVWrite, check_kv_write_out
from .lora_epilogue import LoraEpilogue, check_lora_epilogue
from .lora_ref import lora_epilogue_ref
from .triton_gemv import NormArgs, _check_args


def apply_norm_ref(x: torch.Tensor, norm: NormArgs) -> torch.Tensor:
    """The norm prologue in torch: fp32 statistics, output rounded to x's dtype."""
    xf = x.float()
    if norm.kind == "layernorm":
        h = F.layer_norm(xf, (x.shape[-1],), norm.weight.float(),
                         norm.bias.float() if norm.bias is not None else None, norm.eps)
    else:
        h = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight.float()
    return h.to(x.dtype)


def activation_ref(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("gelu", "gelu_tanh"):
        return F.gelu(y, approximate="tanh" if activation == "gelu_tanh" else "none")
    if activation == "relu":
        return F.relu(y)
    if activation == "squared_relu":
        return F.relu(y).square()
    return F.silu(y)


def fused_linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                     norm: NormArgs | None = None, activation: str | None = None,
                     gate_weight: torch.Tensor | None = None, gate_bias: torch.Tensor | None = None,
                     residual: torch.Tensor | None = None, residual_scale: float = 1.0,
                     out_dtype: torch.dtype | None = None, kv_write: KVWrite | None = None,
                     lora: LoraEpilogue | None = None) -> torch.Tensor:
    """`fused_linear`'s math in torch for x [M, K] of any M: fp32
    accumulation and epilogue, one cast at the end."""
    m, n, _ = _check_args(x, weight, bias, norm, activation, gate_weight, gate_bias, residual, max_m=None)
    check_kv_write_out(kv_write, m, n, x.device)
    check_lora_epilogue(lora, m, n, x.device)
    h = (apply_norm_ref(x, norm) if norm is not None else x).float()

    def project(w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        return F.linear(h, w.float(), b.float() if b is not None else None)

    y = project(weight, None)
    if lora is not None:   # the adapter's delta before the bias, as the kernel adds it
        y = y + lora_epilogue_ref(lora, m)
    y = activation_ref(y + bias.float() if bias is not None else y, activation)
    if gate_weight is not None:
        y = y * project(gate_weight, gate_bias)
    if residual is not None:
        y = residual.float() + residual_scale * y
    y = y.to(out_dtype or x.dtype)
    if kv_write is not None:
        kvw, d = kv_write, kv_write.head_dim
        _, k, v = y.split([kvw.q_cols, kvw.kv_heads * d, kvw.kv_heads * d], dim=-1)
        write_kv_ref(k.reshape(m, kvw.kv_heads, d), v.reshape(m, kvw.kv_heads, d), kvw.k_cache, kvw.v_cache,
                     kvw.slots)
    return y
