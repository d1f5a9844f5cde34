"""SantaCoder (multi-query attention, learned positions): config translation and weight maps for both
layouts users have; the model itself is the core's.

(a) The transformers-native export (`GPTBigCodeForCausalLM`, multi_query true) is the starcoder package's
    layout and is read with its code. Auto-detection names such a checkpoint `starcoder` (the starcoder
    package claims every gpt_bigcode checkpoint); `--variant santacoder` accepts it too, and converts it
    identically. A multi-head gpt_bigcode checkpoint is not SantaCoder and is refused.
(b) The original remote-code export: model_type "gpt2", architectures ["GPT2LMHeadCustomModel"],
    `attention_head_type: "multiquery"`, GPT-2 field and tensor names, with the attention input projection
    stored as `attn.q_attn` (n_embd rows) and `attn.kv_attn` (rows [k | v], 2 * head_dim). Auto-detected
    as santacoder (the gpt2 variant refuses configs carrying `attention_head_type`).
    Orientation: the published remote code builds these layers from GPT-2's Conv1D ([in, out]); checkpoints
    re-saved with nn.Linear ([out, in]) exist too. The orientation is read from the tensor shapes
    (`mlp.c_fc`, else `attn.kv_attn`, whose two dims differ); when both are square it is assumed Conv1D.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec
from trt_gpt_starcoder import bigcode_config, bigcode_table, bigcode_weights, is_gpt_bigcode
from trt_gpt_starcoder.common import Table, canonical_stream

ORIGINAL_ARCHS = ("GPT2LMHeadCustomModel", "GPT2CustomModel")


def is_original(src: SourceCheckpoint) -> bool:
    c = src.config
    archs = c.get("architectures") or ()
    marked = "attention_head_type" in c or any(a in ORIGINAL_ARCHS for a in archs)
    return marked and c.get("model_type", "gpt2") == "gpt2"


def detect(src: SourceCheckpoint) -> bool:
    if is_gpt_bigcode(src):
        return bool(src.config.get("multi_query", True))
    return is_original(src)


def load_config(src: SourceCheckpoint) -> ModelConfig:
    c, where = src.config, str(src.path / "config.json")
    if is_gpt_bigcode(src):
        cfg = bigcode_config(c, where, multi_query=True)
    else:
        kind = c.get("attention_head_type", "multiquery")
        if kind != "multiquery":
            raise TrtGptError(f"{where}: field 'attention_head_type' is {kind!r}, expected 'multiquery'")
        # GPT2LMHeadCustomModel subclasses GPT-2, hence GPT-2's defaults for absent fields
        cfg = bigcode_config(c, where, multi_query=True, default_act="gelu_new", source_model_type="santacoder")
        cfg.scale_attn_by_inverse_layer_idx = bool(c.get("scale_attn_by_inverse_layer_idx", False))
    cfg.extra["variant_layout"] = "gpt_bigcode" if is_gpt_bigcode(src) else "original"
    return cfg


def _is_conv1d(src: SourceCheckpoint, cfg: ModelConfig) -> bool:
    """Conv1D stores [in, out]: tell it from nn.Linear's [out, in] by a tensor whose dims differ."""
    names = set(src.names())
    for suffix, out_dim in (("mlp.c_fc.weight", cfg.intermediate_size), ("attn.kv_attn.weight", 2 * cfg.head_size)):
        name = next((n for n in names if n.endswith("h.0." + suffix)), None)
        if name is not None and out_dim != cfg.hidden_size:
            shape = tuple(src.tensor(name).shape)
            if shape == (out_dim, cfg.hidden_size):
                return False
            if shape == (cfg.hidden_size, out_dim):
                return True
            raise TrtGptError(f"{src.path}: tensor '{name}' has shape {list(shape)}, expected "
                              f"{[out_dim, cfg.hidden_size]} (or transposed)")
    return True


def _t(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()


def original_table(conv1d: bool) -> Table:
    """Original SantaCoder names -> canonical; q_attn and kv_attn become `attention.q`/`.kv`, fused after."""
    p, w = r"(?:transformer\.)?", (_t if conv1d else None)
    return [
        (p + r"wte\.weight", "transformer.vocab_embedding.weight", None),
        (p + r"wpe\.weight", "transformer.position_embedding.weight", None),
        (p + r"h\.(\d+)\.ln_1\.(weight|bias)", r"transformer.layers.\1.input_layernorm.\2", None),
        (p + r"h\.(\d+)\.ln_2\.(weight|bias)", r"transformer.layers.\1.post_layernorm.\2", None),
        (p + r"h\.(\d+)\.attn\.q_attn\.weight", r"transformer.layers.\1.attention.q.weight", w),
        (p + r"h\.(\d+)\.attn\.q_attn\.bias", r"transformer.layers.\1.attention.q.bias", None),
        (p + r"h\.(\d+)\.attn\.kv_attn\.weight", r"transformer.layers.\1.attention.kv.weight", w),
        (p + r"h\.(\d+)\.attn\.kv_attn\.bias", r"transformer.layers.\1.attention.kv.bias", None),
        (p + r"h\.(\d+)\.attn\.c_proj\.weight", r"transformer.layers.\1.attention.dense.weight", w),
        (p + r"h\.(\d+)\.attn\.c_proj\.bias", r"transformer.layers.\1.attention.dense.bias", None),
        (p + r"h\.(\d+)\.mlp\.c_fc\.weight", r"transformer.layers.\1.mlp.fc.weight", w),
        (p + r"h\.(\d+)\.mlp\.c_fc\.bias", r"transformer.layers.\1.mlp.fc.bias", None),
        (p + r"h\.(\d+)\.mlp\.c_proj\.weight", r"transformer.layers.\1.mlp.proj.weight", w),
        (p + r"h\.(\d+)\.mlp\.c_proj\.bias", r"transformer.layers.\1.mlp.proj.bias", None),
        (p + r"ln_f\.(weight|bias)", r"transformer.ln_f.\1", None),
        (r"lm_head\.weight", "lm_head.weight", None),
        (p + r"(?:h\.\d+\.attn\.)?(?:masked_)?bias", "", None),  # GPT-2's causal-mask buffers
    ]


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    if is_gpt_bigcode(src):
        return bigcode_weights(src, cfg)
    # kv_attn rows are [k | v] for the one shared head: canonical qkv is q_attn rows then kv_attn rows
    return canonical_stream(src, cfg, original_table(_is_conv1d(src, cfg)), fuse=("q", "kv"))


def weight_map(cfg: ModelConfig) -> Table:
    """The name table of the layout `cfg` was converted from (the Conv1D transposes do not rename)."""
    return bigcode_table(cfg) if cfg.extra.get("variant_layout") == "gpt_bigcode" else original_table(True)


@hookimpl
def register_variants(register: Callable[[VariantSpec], None]) -> None:
    register(VariantSpec(
        name="santacoder",
        description="SantaCoder: original GPT2LMHeadCustomModel export (q_attn/kv_attn) or the GPTBigCode "
                    "export (auto-detected as starcoder, accepted with --variant santacoder)",
        detect=detect,
        load_config=load_config,
        weights=weights,
        source_formats=("hf",),
        hf_architectures=ORIGINAL_ARCHS + ("GPTBigCodeForCausalLM",),
        features=("MQA", "learned positions", "tied lm_head"),
        weight_map=weight_map,
    ))
