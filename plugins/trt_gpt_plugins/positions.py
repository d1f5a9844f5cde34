"""Position encodings: learned absolute tables (the model owns the table) and GPT-NeoX-style RoPE."""
from __future__ import annotations

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError


class LearnedPositions:
    learned = True

    def __init__(self, cfg: ModelConfig, device: torch.device, max_positions: int | None = None):
        pass


class RotaryEmbedding:
    """Rotate-half RoPE over the first `rotary_dim` dims of each head, tables precomputed in float32.

    `style`, `cos`, `sin` and `dim` are read by fused kernels (the Triton backend's RoPE + cache write),
    which implement exactly this rotation; an encoding without `style == "neox"` keeps its own `apply`.
    """
    learned = False
    style = "neox"

    def __init__(self, cfg: ModelConfig, device: torch.device, max_positions: int | None = None):
        self.dim = cfg.rotary_dim
        scaling = cfg.rotary_scaling or {}
        kind = scaling.get("type", scaling.get("rope_type", "default"))
        factor = 1.0
        if kind == "linear":
            factor = float(scaling["factor"])
        elif kind not in ("default", None):
            raise TrtGptError(f"rotary_scaling type '{kind}' is not supported (expected linear or none)")
        # the runtime never asks for a position past the engine's max_seq_len, so no check in the hot path
        n = max_positions or max(cfg.max_position_embeddings, 4096)
        inv_freq = 1.0 / (cfg.rotary_base ** (torch.arange(0, self.dim, 2, dtype=torch.float64) / self.dim))
        t = torch.arange(n, dtype=torch.float64) / factor
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().float().to(device)
        self.sin = emb.sin().float().to(device)

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        rot, rest = x[..., :self.dim].float(), x[..., self.dim:]
        half = self.dim // 2
        rotated = torch.cat([-rot[..., half:], rot[..., :half]], dim=-1)
        out = (rot * cos + rotated * sin).to(x.dtype)
        return torch.cat([out, rest], dim=-1) if rest.shape[-1] else out

    def apply(self, q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)
