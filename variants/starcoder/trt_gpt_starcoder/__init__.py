"""StarCoder / GPTBigCode (`GPTBigCodeForCausalLM`, model_type gpt_bigcode): config translation and weight
map; the model itself is the core's.

Also the home of the GPTBigCode layout for the packages that read it too (santacoder, granite 20B/34B code
models): they import `bigcode_config`, `bigcode_weights` and the helpers in `.common`.

Detection rule: a gpt_bigcode checkpoint is also accepted by `--variant santacoder` (multi-query ones) and
`--variant granite`, since those models are published in this layout; auto-detection must pick one, so this
package's `detect_variant` hook claims every gpt_bigcode checkpoint for `starcoder`.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.variants import VariantSpec

from .common import Table, canonical_stream, hf_activation, pick

ARCHS = ("GPTBigCodeForCausalLM", "GPTBigCodeModel")


def is_gpt_bigcode(src: SourceCheckpoint) -> bool:
    c = src.config
    return c.get("model_type") == "gpt_bigcode" or any(a in ARCHS for a in c.get("architectures") or ())


def bigcode_config(c: dict[str, Any], where: str, multi_query: bool, default_act: str = "gelu_pytorch_tanh",
                   source_model_type: str = "gpt_bigcode") -> ModelConfig:
    """ModelConfig of a GPT-2-style decoder with one shared KV head when `multi_query` (GPTBigCode and the
    original SantaCoder export use the same field names)."""
    if c.get("add_cross_attention"):
        raise TrtGptError(f"{where}: field 'add_cross_attention' is true, expected false (decoder-only models)")
    n_embd = pick(c, "n_embd", "hidden_size", default=768)
    n_head = pick(c, "n_head", "num_attention_heads", default=12)
    if not isinstance(n_embd, int) or not isinstance(n_head, int) or n_head <= 0 or n_embd % n_head:
        raise TrtGptError(f"{where}: field 'n_embd' ({n_embd!r}) must be a multiple of 'n_head' ({n_head!r})")
    return ModelConfig(
        architecture="GPTForCausalLM",
        vocab_size=c.get("vocab_size", 50257),
        hidden_size=n_embd,
        num_hidden_layers=pick(c, "n_layer", "num_hidden_layers", default=12),
        num_attention_heads=n_head,
        num_key_value_heads=1 if multi_query else n_head,
        intermediate_size=c.get("n_inner") or 4 * n_embd,
        hidden_act=hf_activation(c.get("activation_function", default_act)),
        norm_epsilon=c.get("layer_norm_epsilon", 1e-5),
        max_position_embeddings=pick(c, "n_positions", "max_position_embeddings", default=1024),
        # attention_softmax_in_fp32 / scale_attention_softmax_in_fp32 only change fp16 rounding in HF;
        # the core's softmax is always fp32, so they need no field.
        attention_multiplier=None if c.get("scale_attn_weights", True) else 1.0,
        tie_word_embeddings=c.get("tie_word_embeddings", True),
        extra={"source_model_type": source_model_type},
    )


def load_config(src: SourceCheckpoint) -> ModelConfig:
    return bigcode_config(src.config, str(src.path / "config.json"),
                          multi_query=bool(src.config.get("multi_query", True)))


def _mha_qkv(heads: int) -> Any:
    """GPTBigCode without multi_query stores c_attn rows per head as [q_h | k_h | v_h] (it views the output
    as [heads, 3 * head_dim]); the canonical layout is [all q | all k | all v]."""
    def fn(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape).contiguous()
    return fn


def bigcode_table(cfg: ModelConfig) -> Table:
    """GPTBigCode names -> canonical; its linears are nn.Linear ([out, in]) so no transposes."""
    p = r"(?:transformer\.)?"  # GPTBigCodeModel (no LM head) saves without the prefix
    qkv = None if cfg.num_key_value_heads == 1 else _mha_qkv(cfg.num_attention_heads)
    return [
        (p + r"wte\.weight", "transformer.vocab_embedding.weight", None),
        (p + r"wpe\.weight", "transformer.position_embedding.weight", None),
        (p + r"h\.(\d+)\.ln_1\.(weight|bias)", r"transformer.layers.\1.input_layernorm.\2", None),
        (p + r"h\.(\d+)\.ln_2\.(weight|bias)", r"transformer.layers.\1.post_layernorm.\2", None),
        (p + r"h\.(\d+)\.attn\.c_attn\.(weight|bias)", r"transformer.layers.\1.attention.qkv.\2", qkv),
        (p + r"h\.(\d+)\.attn\.c_proj\.(weight|bias)", r"transformer.layers.\1.attention.dense.\2", None),
        (p + r"h\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"transformer.layers.\1.mlp.fc.\2", None),
        (p + r"h\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"transformer.layers.\1.mlp.proj.\2", None),
        (p + r"ln_f\.(weight|bias)", r"transformer.ln_f.\1", None),
        (r"lm_head\.weight", "lm_head.weight", None),
        (p + r"(?:h\.\d+\.attn\.)?(?:masked_)?bias", "", None),  # causal-mask buffers of older exports
    ]


def bigcode_weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    return canonical_stream(src, cfg, bigcode_table(cfg))


@hookimpl
def detect_variant(source: Any) -> str | None:
    return "starcoder" if is_gpt_bigcode(source) else None


@hookimpl
def register_variants(register: Callable[[VariantSpec], None]) -> None:
    register(VariantSpec(
        name="starcoder",
        description="StarCoder / GPTBigCode (GPTBigCodeForCausalLM): multi-query or multi-head attention, "
                    "learned positions; auto-detected for every gpt_bigcode checkpoint",
        detect=is_gpt_bigcode,
        load_config=load_config,
        weights=bigcode_weights,
        aliases=("gpt_bigcode", "gptbigcode", "starcoderbase"),
        source_formats=("hf",),
        hf_architectures=ARCHS,
        features=("MQA", "MHA", "learned positions", "tied/untied lm_head"),
        weight_map=bigcode_table,
    ))
