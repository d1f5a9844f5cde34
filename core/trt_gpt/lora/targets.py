"""Where a source model's module (a LoRA target such as `transformer.h.0.attn.c_attn` or
`model.layers.3.self_attn.k_proj`) sits in the engine: (layer, role, output rows of the fused layer).

Read through the variant's own weight map (`VariantSpec.weight_map`), the table convert uses for the base
weights, so each variant's names are declared once. A row transform in that table (GPTBigCode MHA's
per-head qkv interleave) is applied to the row indices, so B's rows land where the converted weight's do;
a transpose (Conv1D) moves no rows (PEFT stores lora_A/lora_B as [r, in]/[out, r] in both layouts).
"""
from __future__ import annotations

import re
from typing import Callable

import torch

from ..config import ModelConfig
from ..errors import TrtGptError
from ..variants import VariantSpec, get_variant
from .canonical import qkv_rows

_CANON = re.compile(r"^transformer\.layers\.(\d+)\.(attention|mlp)\.(qkv|q|k|v|kv|dense|fc|gate|proj)\.weight$")
_PIECES = {"q", "k", "v", "kv"}


def variant_of(cfg: ModelConfig, where: str) -> VariantSpec:
    """The variant the engine's checkpoint was converted with (recorded in the config's `extra` at build)."""
    name = cfg.extra.get("variant")
    if not name:
        raise TrtGptError(f"{where}: the engine does not record its model variant (rebuild it with this "
                          "version of trt-gpt to load adapters in a source format)")
    spec = get_variant(name)
    if spec.weight_map is None:
        raise TrtGptError(f"{where}: variant '{spec.name}' declares no weight map, so adapters in its source "
                          "names cannot be placed")
    return spec


class TargetMap:
    """Source module name -> (layer, role, rows or None for all rows in order)."""

    def __init__(self, spec: VariantSpec, cfg: ModelConfig):
        self.cfg = cfg
        self.table = [(re.compile(src + "$"), dst, fn) for src, dst, fn in spec.weight_map(cfg)]

    def resolve(self, module: str, where: str) -> tuple[int, str, torch.Tensor | None]:
        name = module + ".weight"
        for pat, dst, fn in self.table:
            m = pat.match(name)
            if m:
                canon = m.expand(dst) if dst else ""
                break
        else:
            raise TrtGptError(f"{where}: target module '{module}' is not a weight of the base model")
        hit = _CANON.match(canon)
        if hit is None:
            what = "lm_head" if "lm_head" in canon else "embedding" if "embedding" in canon else canon or module
            raise TrtGptError(f"{where}: target module '{module}' ({what}) cannot take a LoRA adapter here "
                              "(only attention and MLP linear layers)")
        layer, piece = int(hit.group(1)), hit.group(3)
        role = "qkv" if piece in _PIECES else piece
        if piece in _PIECES:
            span = qkv_rows(self.cfg, piece)
            return layer, role, span.start + self._row_order(fn, len(span))
        order = self._row_order(fn, None) if fn is not None and role == "qkv" else None
        return layer, role, order

    def _row_order(self, fn: Callable | None, n: int | None) -> torch.Tensor:
        """Where each source row lands after the table's transform: the transform applied to row indices."""
        if n is None:
            n = qkv_rows(self.cfg, "qkv").stop
        idx = torch.arange(n, dtype=torch.float64).unsqueeze(1)
        if fn is None:
            return idx[:, 0].long()
        out = fn(idx)
        if tuple(out.shape) == (1, n):      # a transpose ([in, out] -> [out, in]) keeps the row order
            return torch.arange(n)
        if tuple(out.shape) != (n, 1):
            raise TrtGptError(f"the weight map's transform of {n} rows gave shape {list(out.shape)}")
        # canonical row j holds source row out[j]: B's source row i goes to canonical row inv[i]
        inv = torch.empty(n, dtype=torch.long)
        inv[out[:, 0].long()] = torch.arange(n)
        return inv
