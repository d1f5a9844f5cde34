"""Building blocks of the GPT model: norms, activations and the token embedding (linear layers: linear.py).

Parallel layers own their sharding: they are created with this rank's local shapes (the checkpoint is
already cut by `weights.shard_tensor`) and do the collective that their split needs.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import TrtGptError
from ..plugins import named_registry
from .parallel import TPGroup


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    acts = named_registry("register_activations")
    if name not in acts:
        raise TrtGptError(f"hidden_act '{name}' has no registered activation (known: {', '.join(sorted(acts))})")
    return acts[name]


class Norm(nn.Module):
    """layernorm, layernorm1p (weight stored as w-1, NeMo's zero-centred gamma) or rmsnorm.

    Runs in the activation dtype: torch's norm kernels keep their statistics in float32 internally, and
    explicit upcasts would cost four extra elementwise kernels per norm (measured: ~40% of a GPT-2-medium
    decode step's GPU time). rmsnorm follows HF's order: normalise in float32, cast, then scale.
    """

    KINDS = ("layernorm", "layernorm1p", "rmsnorm")   # registered by the built-in plugins (register_norms)

    def __init__(self, size: int, eps: float, kind: str = "layernorm"):
        super().__init__()
        if kind not in self.KINDS:
            raise TrtGptError(f"norm kind '{kind}' is not one of {', '.join(self.KINDS)}")
        self.kind, self.eps = kind, eps
        self.weight = nn.Parameter(torch.empty(size))
        self.bias = nn.Parameter(torch.empty(size)) if kind != "rmsnorm" else None
        self._gamma: torch.Tensor | None = None  # layernorm1p's weight + 1, computed once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            xf = x.float()
            return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight
        w = self.weight
        if self.kind == "layernorm1p":
            if self._gamma is None or self._gamma.device != w.device:
                self._gamma = (w.float() + 1).to(w.dtype)
            w = self._gamma
        return F.layer_norm(x, (x.shape[-1],), w, self.bias, self.eps)

def make_norm(name: str, size: int, eps: float) -> nn.Module:
    """The norm registered as `name` (ModelConfig.norm_type) for [..., size] activations."""
    norms = named_registry("register_norms")
    if name not in norms:
        raise TrtGptError(f"norm_type '{name}' has no registered norm (known: {', '.join(sorted(norms))})")
    return norms[name](size, eps)


class VocabEmbedding(nn.Module):
    """Token embedding; with parallel embedding, dim 0 splits the vocab and dim 1 the hidden size."""

    def __init__(self, vocab_local: int, hidden_local: int, shard_dim: int | None, vocab_start: int, tp: TPGroup):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_local, hidden_local))
        self.shard_dim, self.vocab_start, self.tp = shard_dim, vocab_start, tp

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.shard_dim is None:
            return F.embedding(ids, self.weight)
        if self.shard_dim == 1:
            return self.tp.all_gather(F.embedding(ids, self.weight), dim=-1)
        local = ids - self.vocab_start
        inside = (local >= 0) & (local < self.weight.shape[0])
        out = F.embedding(local.clamp(0, self.weight.shape[0] - 1), self.weight) * inside.unsqueeze(-1)
        return self.tp.all_reduce(out)
