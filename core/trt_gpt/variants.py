"""Variant specs and the registry of variants contributed by plugins (`register_variants`).

A variant is data: how to recognise its checkpoints, how to translate their config into a ModelConfig,
and how to stream their tensors under canonical (TensorRT-LLM) names for the whole, unsharded model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch

from .config import ModelConfig
from .errors import TrtGptError
from .plugins import get_plugins
from .sources import SourceCheckpoint


@dataclass
class VariantSpec:
    """One model variant.

    `weights(src, cfg)` yields `(canonical_name, tensor)` for the full model, Linear weights as
    [out_features, in_features], QKV fused as rows [q heads | k heads | v heads].
    `weight_map(cfg)`, where given, is the declarative table (`weights.map_names` rows) from source tensor
    names to canonical ones, separate q/k/v projections named `attention.q`/`.k`/`.v` (or `.kv`): adapter
    loaders read a LoRA's target module names through it.
    """
    name: str
    description: str
    detect: Callable[[SourceCheckpoint], bool]
    load_config: Callable[[SourceCheckpoint], ModelConfig]
    weights: Callable[[SourceCheckpoint, ModelConfig], Iterable[tuple[str, torch.Tensor]]]
    aliases: tuple[str, ...] = ()
    source_formats: tuple[str, ...] = ("hf",)
    hf_architectures: tuple[str, ...] = ()
    features: tuple[str, ...] = ()        # e.g. MHA, MQA, GQA, RoPE, sliding window, learned positions
    default_build: dict = field(default_factory=dict)
    weight_map: Callable[[ModelConfig], list] | None = None
    hidden: bool = False                   # usable and detected, but listed only on request (test fixtures)
    plugin: str = ""                       # filled in by the registry
    distribution: str | None = None
    version: str | None = None


def all_variants() -> list[VariantSpec]:
    """Registered variants, first registration of a name wins (third-party before built-in)."""
    plugins = get_plugins()
    seen: dict[str, VariantSpec] = {}
    for reg in plugins.collect("register_variants"):
        spec: VariantSpec = reg.item
        if spec.name in seen:
            continue
        spec.plugin = reg.plugin
        spec.distribution, spec.version = plugins.dists.get(reg.plugin, (None, None))
        seen[spec.name] = spec
    return list(seen.values())


def get_variant(name: str) -> VariantSpec:
    for spec in all_variants():
        if name == spec.name or name in spec.aliases:
            return spec
    known = ", ".join(sorted(s.name for s in all_variants())) or "none installed"
    raise TrtGptError(f"--variant: unknown variant '{name}' (installed: {known})")


def resolve_variant(src: SourceCheckpoint, name: str | None) -> VariantSpec:
    """The variant for a source: the named one (checked against the source) or the detected one."""
    if name is not None:
        spec = get_variant(name)
        if not spec.detect(src):
            # name the variant auto-detection would pick (the hook first), not just any that accepts it
            hooked = get_plugins().pm.hook.detect_variant(source=src)
            found = [hooked] if hooked else [s.name for s in all_variants() if s.detect(src)]
            hint = f"; it looks like '{found[0]}'" if found else ""
            raise TrtGptError(f"{src.path}: checkpoint does not fit variant '{spec.name}'{hint}")
        return spec
    hooked = get_plugins().pm.hook.detect_variant(source=src)
    if hooked:
        return get_variant(hooked)
    found = [s for s in all_variants() if s.detect(src)]
    if not found:
        arch = src.config.get("architectures") or src.config.get("model_type") or "unknown"
        raise TrtGptError(f"{src.path}: no installed variant handles this checkpoint (architecture {arch}); "
                          "see `trt-gpt variants list`")
    return found[0]
