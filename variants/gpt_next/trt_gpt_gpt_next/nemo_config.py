"""NeMo `model_config.yaml` -> ModelConfig for Megatron GPT (GPT-Next) checkpoints."""
from __future__ import annotations

import re
from typing import Any

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.sources import SourceCheckpoint

POSITIONS = {"learned_absolute": "learned_absolute", "rope": "rope_gpt_neox"}
NORMS = {"layernorm": "layernorm", "layernorm1p": "layernorm1p", "rmsnorm": "rmsnorm"}
# NeMo activation -> core hidden_act; "gelu" is decided in _activation (fused kernels use the tanh form)
ACTIVATIONS = {"squared-relu": "squared-relu", "relu": "relu", "swiglu": "swiglu", "fast-swiglu": "swiglu"}
EMBEDDING_RE = r"(?:model\.)?(?:module\.)?(?:language_model\.)?embedding\.word_embeddings\.weight"


def is_megatron_gpt(c: dict[str, Any]) -> bool:
    """A decoder-only Megatron GPT config (not T5/BERT/retro, which .nemo archives also hold)."""
    target = str(c.get("target", "")) + str(c.get("_target_", ""))
    if target and "gpt" not in target.lower():
        return False
    return all(k in c for k in ("num_layers", "hidden_size", "num_attention_heads")) and "encoder" not in c


def _activation(c: dict[str, Any], where: str) -> str:
    act = c.get("activation", "gelu")
    if act == "gelu":
        # Megatron's fused bias-gelu kernel and openai_gelu both compute the tanh approximation; only the
        # unfused path (no bias, or bias_activation_fusion off) calls the exact erf form.
        fused = bool(c.get("bias_activation_fusion", True)) and bool(c.get("bias", True))
        return "gelu_pytorch_tanh" if (c.get("openai_gelu") or fused) else "gelu"
    if act not in ACTIVATIONS:
        raise TrtGptError(f"{where}: field 'activation' is {act!r}, expected one of gelu, "
                          f"{', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[act]


def _norm(c: dict[str, Any], where: str) -> str:
    raw = str(c.get("normalization", "layernorm"))
    norm = NORMS.get(raw.lower())
    if norm is None:
        raise TrtGptError(f"{where}: field 'normalization' is {raw!r}, expected one of {', '.join(NORMS)}")
    if norm == "layernorm" and c.get("layernorm_zero_centered_gamma"):
        norm = "layernorm1p"   # Megatron-core's spelling of the same zero-centred gamma
    return norm


def _reject_unsupported(c: dict[str, Any], where: str) -> None:
    checks = [
        ("transformer_block_type", lambda v: v in (None, "pre_ln"), "pre_ln"),
        ("rotary_interleaved", lambda v: not v, "false (GPT-J style interleaved RoPE is not supported)"),
        ("num_moe_experts", lambda v: not v, "0 or null (mixture-of-experts is not supported)"),
        ("qk_layernorm", lambda v: not v, "false"),
        ("multi_query_attention", lambda v: not v, "false (use num_query_groups: 1)"),
    ]
    for key, ok, expected in checks:
        if not ok(c.get(key)):
            raise TrtGptError(f"{where}: field '{key}' is {c.get(key)!r}, expected {expected}")


def _int(c: dict[str, Any], key: str, where: str, default: Any = None) -> int:
    """A positive integer field; a missing or null field takes `default`."""
    v = c.get(key)
    v = default if v is None else v
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise TrtGptError(f"{where}: field '{key}' is {v!r}, expected a positive integer")
    return v


def _float(c: dict[str, Any], key: str, where: str, default: float) -> float:
    v = c.get(key)
    try:
        return float(default if v is None else v)
    except (TypeError, ValueError):
        raise TrtGptError(f"{where}: field '{key}' is {v!r}, expected a number") from None


def load_config(src: SourceCheckpoint) -> ModelConfig:
    c = src.config
    where = f"{src.path}: model_config.yaml"
    _reject_unsupported(c, where)
    hidden = _int(c, "hidden_size", where)
    heads = _int(c, "num_attention_heads", where)
    groups = _int(c, "num_query_groups", where, heads)
    pos_raw = c.get("position_embedding_type", "learned_absolute")
    if pos_raw not in POSITIONS:
        raise TrtGptError(f"{where}: field 'position_embedding_type' is {pos_raw!r}, expected one of "
                          f"{', '.join(POSITIONS)}")
    # Megatron's RoPE divides positions by this factor: linear scaling
    interp = _float(c, "seq_len_interpolation_factor", where, 1.0)
    embedding = next((n for n in src.names() if re.fullmatch(EMBEDDING_RE, n)), None)
    if embedding is None:
        raise TrtGptError(f"{src.path}: no word_embeddings tensor in the checkpoint")
    return ModelConfig(
        architecture="GPTForCausalLM",
        # NeMo pads the table to a multiple of make_vocab_size_divisible_by x TP; the table is the truth
        vocab_size=int(src.tensor(embedding).shape[0]),
        hidden_size=hidden,
        num_hidden_layers=_int(c, "num_layers", where),
        num_attention_heads=heads,
        num_key_value_heads=groups,
        head_size=_int(c, "kv_channels", where, hidden // heads),
        intermediate_size=_int(c, "ffn_hidden_size", where, 4 * hidden),
        hidden_act=_activation(c, where),
        norm_type=_norm(c, where),
        norm_epsilon=_float(c, "layernorm_epsilon", where, 1e-5),
        position_embedding_type=POSITIONS[pos_raw],
        max_position_embeddings=_int(c, "max_position_embeddings", where, c.get("encoder_seq_length")),
        # NeMo configs carry rotary fields even for learned positions; only RoPE models use them
        rotary_pct=_float(c, "rotary_percentage", where, 1.0) if pos_raw == "rope" else 1.0,
        rotary_base=_float(c, "rotary_base", where, 10000.0),
        rotary_scaling={"type": "linear", "factor": interp} if interp != 1.0 else None,
        bias=bool(c.get("bias", True)),
        tie_word_embeddings=bool(c.get("share_embeddings_and_output_weights", True)),
        # normalize_attention_scores: false means raw q.k scores (no 1/sqrt(d))
        attention_multiplier=None if c.get("normalize_attention_scores", True) else 1.0,
        extra={"source_format": "nemo", "nemo_precision": c.get("precision"),
               "nemo_activation": c.get("activation", "gelu"),
               "nemo_tensor_model_parallel_size": c.get("tensor_model_parallel_size", 1),
               "nemo_pipeline_model_parallel_size": c.get("pipeline_model_parallel_size", 1)},
    )

