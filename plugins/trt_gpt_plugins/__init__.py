"""Built-in plugins shipped with the core, registered through the same hooks as third-party ones.

Activations, norms, position encodings and checkpoint sources live here so that a variant package needing
a new one adds it the same way (a hookimpl), never as model code.
"""
from __future__ import annotations

import functools

from trt_gpt.hookspecs import hookimpl

from . import activations, positions, quantizers, sources
from .adapters import lora_nemo, lora_peft, prompt_tables


@hookimpl
def register_activations(register):
    for name, fn in activations.ACTIVATIONS.items():
        register(name, fn)


@hookimpl
def register_norms(register):
    from trt_gpt.model.layers import Norm

    for kind in Norm.KINDS:
        register(kind, functools.partial(Norm, kind=kind))


@hookimpl
def register_position_encodings(register):
    register("learned_absolute", positions.LearnedPositions)
    register("rope_gpt_neox", positions.RotaryEmbedding)


@hookimpl
def register_checkpoint_sources(register):
    register("hf", sources.open_hf_dir)


@hookimpl
def register_adapters(register):
    register(lora_peft.PeftLora())
    register(lora_nemo.NemoLora())
    for fmt in prompt_tables.FORMATS:
        register(fmt)


@hookimpl
def register_quantizers(register):
    for q in quantizers.QUANTIZERS:
        register(q)
