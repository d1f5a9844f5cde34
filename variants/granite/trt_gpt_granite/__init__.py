"""IBM Granite: config translation and weight maps for both layouts it is published in; the model itself
is the core's.

(a) Granite code 20B/34B are GPTBigCode checkpoints (model_type gpt_bigcode): `--variant granite` accepts
    them and converts them with the starcoder package's translation, as the reference converts them as
    StarCoder. Auto-detection names them `starcoder` (that package claims every gpt_bigcode checkpoint).
(b) `GraniteForCausalLM` (model_type granite): a Llama layout (RMSNorm, SwiGLU MLP, GQA, rotate-half RoPE)
    plus four scalars the core model applies: `embedding_multiplier` (scales token embeddings),
    `residual_multiplier` (scales each block's output before the residual add), `attention_multiplier`
    (the softmax scale itself, replacing 1/sqrt(head_dim)) and `logits_scaling` (logits are divided by it).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec
from trt_gpt_starcoder import bigcode_table, bigcode_weights, is_gpt_bigcode
from trt_gpt_starcoder import load_config as bigcode_load_config
from trt_gpt_starcoder.common import Table, canonical_stream

ARCHS = ("GraniteForCausalLM", "GraniteModel")
GATE_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu"}  # HF names the gate's activation


def is_granite(src: SourceCheckpoint) -> bool:
    c = src.config
    return c.get("model_type") == "granite" or any(a in ARCHS for a in c.get("architectures") or ())


def detect(src: SourceCheckpoint) -> bool:
    return is_granite(src) or is_gpt_bigcode(src)


def _rotary_scaling(c: dict[str, Any]) -> tuple[float, dict | None]:
    """(rope_theta, scaling or None) from transformers 5 `rope_parameters` or the older `rope_theta` +
    `rope_scaling` fields."""
    params = dict(c.get("rope_parameters") or {})
    theta = params.pop("rope_theta", c.get("rope_theta", 10000.0))
    scaling = c.get("rope_scaling") or params
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    # other kinds pass through: the core's RoPE encoder names the ones it does not support
    return float(theta), (None if kind in (None, "default") else scaling)


def granite_config(c: dict[str, Any], where: str) -> ModelConfig:
    act = c.get("hidden_act", "silu")
    if act not in GATE_ACTIVATIONS:
        raise TrtGptError(f"{where}: field 'hidden_act' is {act!r}, expected 'silu' (Granite's SwiGLU MLP)")
    heads = c.get("num_attention_heads", 32)
    theta, scaling = _rotary_scaling(c)
    attn_bias, mlp_bias = bool(c.get("attention_bias", False)), bool(c.get("mlp_bias", False))
    return ModelConfig(
        architecture="GraniteForCausalLM",
        vocab_size=c.get("vocab_size", 32000),
        hidden_size=c.get("hidden_size", 4096),
        num_hidden_layers=c.get("num_hidden_layers", 32),
        num_attention_heads=heads,
        num_key_value_heads=c.get("num_key_value_heads") or heads,
        head_size=c.get("head_dim"),
        intermediate_size=c.get("intermediate_size", 11008),
        hidden_act=GATE_ACTIVATIONS[act],
        norm_type="rmsnorm",
        norm_epsilon=c.get("rms_norm_eps", 1e-6),
        position_embedding_type="rope_gpt_neox",  # HF Granite's RoPE is Llama's rotate-half
        max_position_embeddings=c.get("max_position_embeddings", 2048),
        rotary_base=theta,
        rotary_scaling=scaling,
        bias=attn_bias,
        attn_bias=attn_bias,
        mlp_bias=mlp_bias,
        tie_word_embeddings=c.get("tie_word_embeddings", False),
        attention_multiplier=float(c.get("attention_multiplier", 1.0)),
        embedding_multiplier=float(c.get("embedding_multiplier", 1.0)),
        residual_multiplier=float(c.get("residual_multiplier", 1.0)),
        logits_scaling=float(c.get("logits_scaling", 1.0)),
        extra={"source_model_type": "granite"},
    )


def load_config(src: SourceCheckpoint) -> ModelConfig:
    if is_gpt_bigcode(src):
        cfg = bigcode_load_config(src)
        cfg.extra["variant_layout"] = "gpt_bigcode"
        return cfg
    return granite_config(src.config, str(src.path / "config.json"))


# HF Granite names -> canonical. q/k/v land on `attention.{q,k,v}` and are fused into qkv after renaming;
# the gated MLP's activated branch (gate_proj) is the canonical `fc`, the linear one (up_proj) is `gate`.
P = r"(?:model\.)?"  # GraniteModel (no LM head) saves without the prefix
GRANITE_TABLE: Table = [
    (P + r"embed_tokens\.weight", "transformer.vocab_embedding.weight", None),
    (P + r"layers\.(\d+)\.input_layernorm\.weight", r"transformer.layers.\1.input_layernorm.weight", None),
    (P + r"layers\.(\d+)\.post_attention_layernorm\.weight", r"transformer.layers.\1.post_layernorm.weight", None),
    (P + r"layers\.(\d+)\.self_attn\.(q|k|v)_proj\.(weight|bias)", r"transformer.layers.\1.attention.\2.\3", None),
    (P + r"layers\.(\d+)\.self_attn\.o_proj\.(weight|bias)", r"transformer.layers.\1.attention.dense.\2", None),
    (P + r"layers\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"transformer.layers.\1.mlp.fc.\2", None),
    (P + r"layers\.(\d+)\.mlp\.up_proj\.(weight|bias)", r"transformer.layers.\1.mlp.gate.\2", None),
    (P + r"layers\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"transformer.layers.\1.mlp.proj.\2", None),
    (P + r"norm\.weight", "transformer.ln_f.weight", None),
    (r"lm_head\.weight", "lm_head.weight", None),
    (P + r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq", "", None),  # buffer saved by older exports
]


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    if is_gpt_bigcode(src):
        return bigcode_weights(src, cfg)
    return canonical_stream(src, cfg, GRANITE_TABLE, fuse=("q", "k", "v"))


@hookimpl
def register_variants(register: Callable[[VariantSpec], None]) -> None:
    register(VariantSpec(
        name="granite",
        description="IBM Granite (GraniteForCausalLM: RoPE, RMSNorm, SwiGLU, GQA, embedding/residual/attention/"
                    "logits multipliers) and the GPTBigCode-layout Granite code 20B/34B",
        detect=detect,
        load_config=load_config,
        weights=weights,
        source_formats=("hf",),
        hf_architectures=ARCHS + ("GPTBigCodeForCausalLM",),
        features=("GQA", "MQA", "MHA", "RoPE", "RMSNorm", "SwiGLU", "multipliers",
                  "learned positions (20B/34B code)"),
        weight_map=lambda cfg: bigcode_table(cfg) if cfg.extra.get("variant_layout") == "gpt_bigcode" else GRANITE_TABLE,
    ))
