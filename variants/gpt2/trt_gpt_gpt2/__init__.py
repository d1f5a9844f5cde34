"""GPT-2 (`GPT2LMHeadModel`): config translation and weight map; the model itself is the core's."""
from __future__ import annotations

from typing import Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec
from trt_gpt.weights import map_names, with_lm_head

ARCHS = ("GPT2LMHeadModel", "GPT2Model")


def detect(src: SourceCheckpoint) -> bool:
    c = src.config
    if c.get("model_type") != "gpt2" or "attention_head_type" in c or "multi_query" in c:
        return False  # SantaCoder's original export also says gpt2 but carries multi-query fields
    archs = c.get("architectures") or ["GPT2LMHeadModel"]
    return any(a in ARCHS for a in archs)


def load_config(src: SourceCheckpoint) -> ModelConfig:
    c = src.config
    n_embd = c.get("n_embd", 768)
    return ModelConfig(
        architecture="GPTForCausalLM",
        vocab_size=c.get("vocab_size", 50257),
        hidden_size=n_embd,
        num_hidden_layers=c.get("n_layer", 12),
        num_attention_heads=c.get("n_head", 12),
        intermediate_size=c.get("n_inner") or 4 * n_embd,
        hidden_act=c.get("activation_function", "gelu_new"),
        norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
        max_position_embeddings=c.get("n_positions", 1024),
        attention_multiplier=None if c.get("scale_attn_weights", True) else 1.0,
        scale_attn_by_inverse_layer_idx=bool(c.get("scale_attn_by_inverse_layer_idx", False)),
        tie_word_embeddings=c.get("tie_word_embeddings", True),
        extra={"source_model_type": "gpt2"},
    )


def _t(w: torch.Tensor) -> torch.Tensor:
    """HF GPT-2 stores linears as Conv1D [in, out]; the canonical layout is [out, in]."""
    return w.t().contiguous()


WEIGHT_MAP = [
    (r"(?:transformer\.)?wte\.weight", r"transformer.vocab_embedding.weight", None),
    (r"(?:transformer\.)?wpe\.weight", r"transformer.position_embedding.weight", None),
    (r"(?:transformer\.)?h\.(\d+)\.ln_1\.(weight|bias)", r"transformer.layers.\1.input_layernorm.\2", None),
    (r"(?:transformer\.)?h\.(\d+)\.ln_2\.(weight|bias)", r"transformer.layers.\1.post_layernorm.\2", None),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_attn\.weight", r"transformer.layers.\1.attention.qkv.weight", _t),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_attn\.bias", r"transformer.layers.\1.attention.qkv.bias", None),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_proj\.weight", r"transformer.layers.\1.attention.dense.weight", _t),
    (r"(?:transformer\.)?h\.(\d+)\.attn\.c_proj\.bias", r"transformer.layers.\1.attention.dense.bias", None),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_fc\.weight", r"transformer.layers.\1.mlp.fc.weight", _t),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_fc\.bias", r"transformer.layers.\1.mlp.fc.bias", None),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_proj\.weight", r"transformer.layers.\1.mlp.proj.weight", _t),
    (r"(?:transformer\.)?h\.(\d+)\.mlp\.c_proj\.bias", r"transformer.layers.\1.mlp.proj.bias", None),
    (r"(?:transformer\.)?ln_f\.(weight|bias)", r"transformer.ln_f.\1", None),
    (r"lm_head\.weight", r"lm_head.weight", None),
    (r"(?:transformer\.)?h\.\d+\.attn\.(?:masked_)?bias", "", None),  # old causal-mask buffers
]


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    names = src.names()
    tied = cfg.tie_word_embeddings or "lm_head.weight" not in names
    yield from with_lm_head(map_names(((n, src.tensor(n)) for n in names), WEIGHT_MAP), tied)


@hookimpl
def register_variants(register):
    register(VariantSpec(
        name="gpt2",
        description="GPT-2 family (GPT2LMHeadModel): learned positions, multi-head attention, Conv1D weights",
        detect=detect,
        load_config=load_config,
        weights=weights,
        aliases=("gpt-2",),
        source_formats=("hf",),
        hf_architectures=ARCHS,
        features=("MHA", "learned positions", "tied/untied lm_head"),
        weight_map=lambda cfg: WEIGHT_MAP,
    ))
