"""Configuration dataclasses: ModelConfig, QuantConfig, BuildConfig, and their config.json form.

Field names follow the published TensorRT-LLM checkpoint config so existing configs carry over.
Every loader validates and raises a one-line `TrtGptError` naming the field at fault.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import TrtGptError
from .mapping import Mapping

DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class QuantConfig:
    """Quantization of weights and KV cache (`quantization` in config.json)."""
    quant_algo: str | None = None          # e.g. W8A16, W4A16, W8A8_SQ_PER_CHANNEL, FP8
    kv_cache_quant_algo: str | None = None  # INT8 or FP8
    group_size: int = 128
    has_zero_point: bool = False
    exclude_modules: list[str] | None = None
    smoothquant_val: float | None = None   # SmoothQuant's migration strength alpha (W8A8_SQ_*; None: 0.5)


@dataclass
class ModelConfig:
    """Everything the one GPT model needs to know about an architecture.

    Variants translate their source config into this; the runtime reads nothing else.
    """
    architecture: str = "GPTForCausalLM"
    dtype: str = "float32"
    vocab_size: int = 50257
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    num_key_value_heads: int | None = None
    head_size: int | None = None
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    norm_type: str = "layernorm"
    norm_epsilon: float = 1e-5
    position_embedding_type: str = "learned_absolute"
    max_position_embeddings: int = 1024
    rotary_pct: float = 1.0
    rotary_base: float = 10000.0
    rotary_scaling: dict | None = None
    sliding_window: int | None = None
    bias: bool = True
    mlp_bias: bool | None = None           # None: same as `bias`
    attn_bias: bool | None = None          # None: same as `bias`
    tie_word_embeddings: bool = True
    q_scaling: float = 1.0                 # softmax scale = 1 / (sqrt(head_size) * q_scaling)
    attention_multiplier: float | None = None  # when set, the softmax scale itself (Granite, GPT-2 unscaled)
    scale_attn_by_inverse_layer_idx: bool = False
    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    logits_scaling: float = 1.0            # logits are divided by this (Granite)
    use_parallel_embedding: bool = False
    embedding_sharding_dim: int = 0
    mapping: Mapping = field(default_factory=Mapping)
    quantization: QuantConfig = field(default_factory=QuantConfig)
    extra: dict[str, Any] = field(default_factory=dict)  # variant-specific metadata, kept verbatim

    def __post_init__(self) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_size is None:
            self.head_size = self.hidden_size // max(self.num_attention_heads, 1)
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.mlp_bias is None:
            self.mlp_bias = self.bias
        if self.attn_bias is None:
            self.attn_bias = self.bias
        if isinstance(self.mapping, dict):
            self.mapping = Mapping(**{k: v for k, v in self.mapping.items()
                                      if k in {f.name for f in dataclasses.fields(Mapping)}})
        if isinstance(self.quantization, dict):
            self.quantization = QuantConfig(**{k: v for k, v in self.quantization.items()
                                               if k in {f.name for f in dataclasses.fields(QuantConfig)}})

    @property
    def is_gated(self) -> bool:
        return self.hidden_act in ("swiglu", "geglu", "fast-swiglu")

    @property
    def rotary_dim(self) -> int:
        return int(self.head_size * self.rotary_pct)

    @property
    def attention_kind(self) -> str:
        if self.num_key_value_heads == self.num_attention_heads:
            return "MHA"
        return "MQA" if self.num_key_value_heads == 1 else "GQA"

    def validate(self, source: str = "config.json") -> "ModelConfig":
        def need(cond: bool, fld: str, expected: str) -> None:
            if not cond:
                raise TrtGptError(f"{source}: field '{fld}' is {getattr(self, fld, None)!r}, expected {expected}")
        for f in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "max_position_embeddings"):
            need(isinstance(getattr(self, f), int) and getattr(self, f) > 0, f, "a positive integer")
        need(self.dtype in DTYPES, "dtype", f"one of {', '.join(DTYPES)}")
        # The names come from the plugin registries (built-ins register theirs the same way), so a plugin's
        # activation, norm or position encoding is a valid config value once that plugin is loaded.
        for fld, hook in (("hidden_act", "register_activations"), ("norm_type", "register_norms"),
                          ("position_embedding_type", "register_position_encodings")):
            names = _registered(hook)
            need(getattr(self, fld) in names, fld, f"one of {', '.join(sorted(names))} (registered by plugins)")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"a divisor of num_attention_heads ({self.num_attention_heads})")
        need(0.0 < self.rotary_pct <= 1.0, "rotary_pct", "in (0, 1]")
        need(self.sliding_window is None or self.sliding_window > 0, "sliding_window", "a positive integer or null")
        self.mapping.validate(self, source)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        if not isinstance(d, dict):
            raise TrtGptError(f"{source}: expected a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in d.items() if k in names}
        # TensorRT-LLM spells a few fields differently; accept theirs.
        aliases = {"layernorm_epsilon": "norm_epsilon", "share_embedding_table": "tie_word_embeddings",
                   "n_positions": "max_position_embeddings"}
        for theirs, ours in aliases.items():
            if theirs in d and ours not in d:
                known[ours] = d[theirs]
        try:
            return cls(**known).validate(source)
        except TypeError as e:  # wrong types in mapping/quantization sub-objects
            raise TrtGptError(f"{source}: {e}") from None

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        return cls.from_dict(read_json(path), str(path))


@dataclass
class BuildConfig:
    """Engine limits, with the reference's defaults."""
    max_batch_size: int = 256
    max_input_len: int | None = None      # None: 1024, capped to max_seq_len - 1
    max_seq_len: int | None = None        # None: max_position_embeddings (or input + 1024 for RoPE)
    max_num_tokens: int = 8192
    tokens_per_block: int = 64
    max_beam_width: int = 1
    kv_cache_dtype: str | None = None     # None: model dtype
    max_lora_rank: int = 0
    lora_target_modules: list[str] | None = None   # reference names (attn_qkv, mlp_4h_to_h, ...); None: all
    max_prompt_embedding_table_size: int = 0
    context_fmha: bool = True             # False: prompts run the unfused attention (`build --context_fmha disable`)

    def validate(self, model: ModelConfig | None = None, source: str = "build") -> "BuildConfig":
        explicit_input = self.max_input_len is not None
        if not explicit_input:
            self.max_input_len = 1024
        for f in ("max_batch_size", "max_input_len", "max_num_tokens", "tokens_per_block", "max_beam_width"):
            v = getattr(self, f)
            if not isinstance(v, int) or v <= 0:
                raise TrtGptError(f"{source}: '{f}' is {v!r}, expected a positive integer")
        if self.max_seq_len is None and model is not None:
            if model.position_embedding_type == "learned_absolute":
                self.max_seq_len = model.max_position_embeddings
            else:
                self.max_seq_len = max(model.max_position_embeddings, self.max_input_len + 1024)
        if not explicit_input and self.max_seq_len is not None:
            self.max_input_len = min(self.max_input_len, self.max_seq_len - 1)
        if self.max_seq_len is not None and self.max_seq_len < self.max_input_len:
            raise TrtGptError(f"{source}: 'max_seq_len' ({self.max_seq_len}) is smaller than 'max_input_len' "
                              f"({self.max_input_len})")
        if (model is not None and model.position_embedding_type == "learned_absolute"
                and self.max_seq_len > model.max_position_embeddings):
            raise TrtGptError(f"{source}: 'max_seq_len' ({self.max_seq_len}) exceeds the model's learned "
                              f"position table ({model.max_position_embeddings})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "BuildConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _registered(hook: str) -> list[str]:
    """The names registered through `hook` by the loaded plugins (imported late: plugins import config)."""
    from .plugins import named_registry

    return list(named_registry(hook))


def read_json(path: str | Path) -> Any:
    """Read a JSON file, turning every failure into a one-line error naming the file."""
    p = Path(path)
    if not p.is_file():
        raise TrtGptError(f"{p}: file not found")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrtGptError(f"{p}: not valid JSON ({e})") from None
