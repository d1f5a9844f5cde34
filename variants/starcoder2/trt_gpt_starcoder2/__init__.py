"""StarCoder2 (`Starcoder2ForCausalLM`): config translation and weight map; the model itself is the core's.

StarCoder2 is GQA + GPT-NeoX (rotate-half) RoPE + LayerNorm + a plain c_fc/c_proj MLP, with an optional
sliding attention window that the core's attention applies from `ModelConfig.sliding_window`.
"""
from __future__ import annotations

import re
from typing import Any, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec
from trt_gpt.weights import fuse_qkv, map_names, with_lm_head

ARCHS = ("Starcoder2ForCausalLM",)


def detect(src: SourceCheckpoint) -> bool:
    c = src.config
    return c.get("model_type") == "starcoder2" or any(a in ARCHS for a in c.get("architectures") or ())


def rope_settings(c: dict[str, Any], where: str) -> tuple[float, dict | None]:
    """(rotary_base, rotary_scaling) from either transformers 5 (`rope_parameters`) or 4.x (`rope_theta`,
    `rope_scaling`) config spellings."""
    params = c.get("rope_parameters") or {}
    base = params.get("rope_theta", c.get("rope_theta", 10000.0))
    scaling = c.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return float(base), None
    if kind == "linear":
        return float(base), {"type": "linear", "factor": float(scaling["factor"])}
    raise TrtGptError(f"{where}: rope type '{kind}' is not supported for starcoder2 (expected default or linear)")


def load_config(src: SourceCheckpoint) -> ModelConfig:
    c = src.config
    where = f"{src.path}/config.json"
    hidden, heads = c.get("hidden_size", 3072), c.get("num_attention_heads", 24)
    base, scaling = rope_settings(c, where)
    return ModelConfig(
        architecture="Starcoder2ForCausalLM",
        vocab_size=c.get("vocab_size", 49152),
        hidden_size=hidden,
        num_hidden_layers=c.get("num_hidden_layers", 30),
        num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads", 2),
        head_size=hidden // heads,
        intermediate_size=c.get("intermediate_size", 12288),
        hidden_act=c.get("hidden_act", "gelu_pytorch_tanh"),
        norm_type="layernorm",
        norm_epsilon=c.get("norm_epsilon", 1e-5),
        position_embedding_type="rope_gpt_neox",
        max_position_embeddings=c.get("max_position_embeddings", 4096),
        rotary_pct=1.0,
        rotary_base=base,
        rotary_scaling=scaling,
        sliding_window=c.get("sliding_window"),
        bias=bool(c.get("use_bias", True)),
        tie_word_embeddings=bool(c.get("tie_word_embeddings", True)),
        extra={"source_model_type": "starcoder2"},
    )


L = r"model\.layers\.(\d+)\."
WEIGHT_MAP = [
    (r"model\.embed_tokens\.weight", r"transformer.vocab_embedding.weight", None),
    (L + r"input_layernorm\.(weight|bias)", r"transformer.layers.\1.input_layernorm.\2", None),
    (L + r"post_attention_layernorm\.(weight|bias)", r"transformer.layers.\1.post_layernorm.\2", None),
    (L + r"self_attn\.o_proj\.(weight|bias)", r"transformer.layers.\1.attention.dense.\2", None),
    (L + r"mlp\.c_fc\.(weight|bias)", r"transformer.layers.\1.mlp.fc.\2", None),
    (L + r"mlp\.c_proj\.(weight|bias)", r"transformer.layers.\1.mlp.proj.\2", None),
    (r"model\.norm\.(weight|bias)", r"transformer.ln_f.\1", None),
    (r"lm_head\.weight", r"lm_head.weight", None),
]
QKV_RE = re.compile(L + r"self_attn\.[qkv]_proj\.(weight|bias)$")
# the q/k/v pieces by name, for adapter loaders (the weights themselves are fused by _fused_qkv)
NAME_MAP = WEIGHT_MAP + [(L + r"self_attn\.(q|k|v)_proj\.(weight|bias)", r"transformer.layers.\1.attention.\2.\3",
                          None)]


def _fused_qkv(src: SourceCheckpoint, names: set[str], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """q_proj/k_proj/v_proj of every layer fused into the canonical [q | k | v] rows."""
    for i in range(cfg.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [f"model.layers.{i}.self_attn.{p}_proj.{kind}" for p in "qkv"]
            present = [p in names for p in parts]
            if any(present) and not all(present):
                missing = parts[present.index(False)]
                raise TrtGptError(f"{src.path}: tensor '{missing}' missing from the checkpoint")
            if all(present):
                yield f"transformer.layers.{i}.attention.qkv.{kind}", fuse_qkv(*(src.tensor(p) for p in parts))


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    names = src.names()
    rest = [n for n in names if not QKV_RE.match(n)]
    tied = cfg.tie_word_embeddings or "lm_head.weight" not in names
    yield from with_lm_head(map_names(((n, src.tensor(n)) for n in rest), WEIGHT_MAP), tied)
    yield from _fused_qkv(src, set(names), cfg)


@hookimpl
def register_variants(register):
    register(VariantSpec(
        name="starcoder2",
        description="StarCoder2 (Starcoder2ForCausalLM): GQA, GPT-NeoX RoPE, LayerNorm, gelu MLP, sliding window",
        detect=detect,
        load_config=load_config,
        weights=weights,
        aliases=("starcoder-2",),
        source_formats=("hf",),
        hf_architectures=ARCHS,
        features=("GQA", "RoPE", "sliding window", "bias on/off", "tied/untied lm_head"),
        weight_map=lambda cfg: NAME_MAP,
    ))
