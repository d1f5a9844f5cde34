"""GPT-Next: NeMo Megatron GPT checkpoints (`.nemo` archives), legacy and Megatron-core layouts.

Contributes the `.nemo` checkpoint reader (`register_checkpoint_sources`) and the variant (config
translation + weight map). The model itself is the core's: layernorm1p, squared-relu, swiglu, partial
rotary and GQA are all core features.
"""
from __future__ import annotations

from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec

from .nemo_config import is_megatron_gpt, load_config
from .nemo_source import open_nemo
from .nemo_weights import weights


def detect(src: SourceCheckpoint) -> bool:
    return src.format == "nemo" and is_megatron_gpt(src.config)


@hookimpl
def register_checkpoint_sources(register):
    register("nemo", open_nemo)


@hookimpl
def register_variants(register):
    register(VariantSpec(
        name="gpt-next",
        description="NeMo Megatron GPT (.nemo, legacy and Megatron-core layouts, training TP/PP shards merged)",
        detect=detect,
        load_config=load_config,
        weights=weights,
        aliases=("gpt_next", "gptnext", "nemo-gpt"),
        source_formats=("nemo",),
        hf_architectures=(),
        features=("MHA", "GQA", "RoPE (partial rotary)", "learned positions", "layernorm1p", "rmsnorm",
                  "squared-relu", "swiglu", "TP/PP-sharded .nemo"),
    ))
