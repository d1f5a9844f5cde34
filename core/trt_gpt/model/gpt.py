"""The GPT model: every variant is this one module tree, shaped by ModelConfig and this rank's Mapping.

Module and parameter names equal the canonical checkpoint tensor names, so a rank file loads with
`load_state_dict(assign=True)` onto a model built on the meta device. The forward pass consumes a
packed batch (no padding) and a paged KV cache described by AttentionMetadata.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch
from torch import nn

from ..checkpoint import torch_dtype
from ..config import ModelConfig, QuantConfig
from ..errors import TrtGptError
from ..kernels.backends import torch_backend
from ..plugins import named_registry
from ..kernels.metadata import AttentionMetadata
from ..weights import padded_vocab_size
from ..kernels.embed_ref import embed_ref
from .fused_layers import FusedLayers
from .layers import VocabEmbedding, get_activation, make_norm
from .linear import make_linear, param_dtypes
from .parallel import TPGroup


# an 8-bit KV cache's per-layer scale parameters (checkpoint names under `transformer.layers.{i}.attention.`)
KV_SCALE_PARAMS = ("k_cache_scaling_factor", "v_cache_scaling_factor")


def attention_scale(cfg: ModelConfig, layer_idx: int) -> float:
    scale = cfg.attention_multiplier if cfg.attention_multiplier is not None else \
        1.0 / (math.sqrt(cfg.head_size) * cfg.q_scaling)
    if cfg.scale_attn_by_inverse_layer_idx:
        scale /= layer_idx + 1
    return scale


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, tp: TPGroup):
        super().__init__()
        t = cfg.mapping.tp_size
        self.heads = cfg.num_attention_heads // t
        self.kv_heads = max(cfg.num_key_value_heads // t, 1)
        self.head_size = cfg.head_size
        self.scale = attention_scale(cfg, layer_idx)
        self.qkv = make_linear(cfg, "qkv", cfg.hidden_size, (self.heads + 2 * self.kv_heads) * cfg.head_size,
                               cfg.attn_bias, tp, layer_idx)
        self.dense = make_linear(cfg, "dense", self.heads * cfg.head_size, cfg.hidden_size, cfg.attn_bias, tp,
                                 layer_idx)
        # an 8-bit KV cache: this layer's own K and V scales (fp32 [1] each; kv_cache_spec.quantize)
        self.param_dtypes: dict[str, torch.dtype | None] = {}
        if cfg.quantization.kv_cache_quant_algo:
            for name in KV_SCALE_PARAMS:
                self.register_parameter(name, nn.Parameter(torch.empty(1, dtype=torch.float32), requires_grad=False))
                self.param_dtypes[name] = torch.float32

    @property
    def kv_scales(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(K scale, V scale) of an 8-bit cache, None for a float one."""
        if not self.param_dtypes:
            return None
        return self.k_cache_scaling_factor, self.v_cache_scaling_factor

    def forward(self, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv: tuple,
                rope: Any, backend: Any, window: int | None) -> torch.Tensor:
        q = self.cache_qkv(self.qkv(x), positions, meta, kv, rope, backend)
        out = backend.attention(q, kv[0], kv[1], meta, self.scale, window, kv_scales=self.kv_scales)
        return self.dense(out.reshape(-1, self.heads * self.head_size))

    def cache_qkv(self, qkv: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, kv: tuple,
                  rope: Any, backend: Any) -> torch.Tensor:
        """Rotate q and k (RoPE models), write k and v into the cache; returns q [tokens, heads, head_size]."""
        d = self.head_size
        scales = self.kv_scales
        fused = getattr(backend, "rope_write_kv", None)
        if rope is not None and fused is not None and getattr(rope, "style", None) == "neox":
            # one kernel instead of RoPE's ~16 small ones plus the cache write (8-bit caches included: a
            # 7B FP8 decode step spent ~0.5 ms in the torch RoPE kernels before)
            return fused(qkv, self.heads, self.kv_heads, d, positions, rope.cos, rope.sin, rope.dim,
                         kv[0], kv[1], meta.slot_mapping, scales=scales)
        q, k, v = qkv.split([self.heads * d, self.kv_heads * d, self.kv_heads * d], dim=-1)
        q = q.view(-1, self.heads, d)
        k = k.view(-1, self.kv_heads, d)
        v = v.view(-1, self.kv_heads, d)
        if rope is not None:
            q, k = rope.apply(q, k, positions)
        if scales is None:
            backend.write_kv(k, v, kv[0], kv[1], meta.slot_mapping)
        else:
            backend.write_kv(k, v, kv[0], kv[1], meta.slot_mapping, scales)
        return q


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup, layer_idx: int):
        super().__init__()
        inter = cfg.intermediate_size // cfg.mapping.tp_size
        self.gated = cfg.is_gated
        self.act = get_activation(cfg.hidden_act)
        self.fc = make_linear(cfg, "fc", cfg.hidden_size, inter, cfg.mlp_bias, tp, layer_idx)
        if self.gated:
            self.gate = make_linear(cfg, "gate", cfg.hidden_size, inter, cfg.mlp_bias, tp, layer_idx)
        self.proj = make_linear(cfg, "proj", inter, cfg.hidden_size, cfg.mlp_bias, tp, layer_idx)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))
        if self.gated:
            h = h * self.gate(x)
        return self.proj(h)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int, tp: TPGroup):
        super().__init__()
        self.residual_multiplier = cfg.residual_multiplier
        self.input_layernorm = make_norm(cfg.norm_type, cfg.hidden_size, cfg.norm_epsilon)
        self.attention = Attention(cfg, layer_idx, tp)
        self.post_layernorm = make_norm(cfg.norm_type, cfg.hidden_size, cfg.norm_epsilon)
        self.mlp = MLP(cfg, tp, layer_idx)

    def forward(self, x, positions, meta, kv, rope, backend, window) -> torch.Tensor:
        m = self.residual_multiplier
        a = self.attention(self.input_layernorm(x), positions, meta, kv, rope, backend, window)
        x = x + a * m if m != 1.0 else x + a
        f = self.mlp(self.post_layernorm(x))
        return x + f * m if m != 1.0 else x + f


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, tp: TPGroup):
        super().__init__()
        mp = cfg.mapping
        self.layer_range = mp.layer_range(cfg.num_hidden_layers)
        if mp.is_first_pp_rank:
            vocab, hidden, dim, start = cfg.vocab_size, cfg.hidden_size, None, 0
            if cfg.use_parallel_embedding and mp.tp_size > 1:
                dim = cfg.embedding_sharding_dim
                if dim == 0:
                    vocab = padded_vocab_size(cfg) // mp.tp_size
                    start = mp.tp_rank * vocab
                else:
                    hidden = cfg.hidden_size // mp.tp_size
            self.vocab_embedding = VocabEmbedding(vocab, hidden, dim, start, tp)
            if cfg.position_embedding_type == "learned_absolute":
                self.position_embedding = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, tp) for i in self.layer_range)
        if mp.is_last_pp_rank:
            self.ln_f = make_norm(cfg.norm_type, cfg.hidden_size, cfg.norm_epsilon)


class GPTForCausalLM(nn.Module):
    """Packed-token forward over a paged KV cache; returns fp32 logits (last stage) or hidden states."""

    def __init__(self, cfg: ModelConfig, tp: TPGroup | None = None):
        super().__init__()
        self.cfg = cfg
        self.tp = tp or TPGroup()
        self.transformer = Transformer(cfg, self.tp)
        if cfg.mapping.is_last_pp_rank:
            self.lm_head = make_linear(cfg, "lm_head", cfg.hidden_size, padded_vocab_size(cfg) // cfg.mapping.tp_size,
                                       False, self.tp)
        encoders = named_registry("register_position_encodings")
        if cfg.position_embedding_type not in encoders:
            raise TrtGptError(f"position_embedding_type '{cfg.position_embedding_type}' has no registered encoder")
        self._pos_factory = encoders[cfg.position_embedding_type]
        self.rope = None
        self.backend: Any = torch_backend()   # the reference until setup_runtime picks one
        self.fused: FusedLayers | None = None   # the small-batch fast path, set up by setup_runtime
        # (pool [R, hidden], vocab_size): ids >= vocab_size embed pool rows (runtime/prompt_pool.py)
        self.prompt_table: tuple[torch.Tensor, int] | None = None

    def setup_runtime(self, device: torch.device, max_positions: int, backend: Any | None = None) -> None:
        """Create non-persistent state (rotary tables) once the weights are on `device`."""
        enc = self._pos_factory(self.cfg, device, max_positions=max_positions)
        self.rope = None if getattr(enc, "learned", False) else enc
        if backend is not None:
            self.backend = backend
        self.fused = FusedLayers.create(self, self.backend)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_caches: list[tuple[torch.Tensor, torch.Tensor]], hidden: torch.Tensor | None = None,
                logits_rows: torch.Tensor | None = None, window: int | None = None,
                feed: tuple[torch.Tensor, torch.Tensor] | None = None,
                picks: torch.Tensor | None = None, host_picks: Any | None = None) -> torch.Tensor:
        """`feed = (rows, picks)`: a row i with rows[i] > 0 takes its token from picks[rows[i] - 1] (the
        previous decode step's picks, still on the device) instead of input_ids[i]. `picks` (int32, one
        per logits row; last pipeline stage) receives each row's greedy pick, the argmax of its logits, and
        `host_picks` (a `triton_argmax.HostPicks`, with `picks` only) a copy of them in host memory."""
        cfg = self.cfg
        t = self.transformer
        window = window if window is not None else cfg.sliding_window
        fused = self.fused if self.fused is not None and self.fused.applies(positions.shape[0]) else None
        if cfg.mapping.is_first_pp_rank:
            # one function, `embed_ref` (the module path, through the parallel lookup), or its one-kernel
            # specialisation on the fused path
            wpe = t.position_embedding.weight if hasattr(t, "position_embedding") else None
            embed = fused.embed_kernel if fused is not None else functools.partial(embed_ref, lookup=t.vocab_embedding)
            hidden = embed(input_ids, t.vocab_embedding.weight, positions if wpe is not None else None, wpe,
                           cfg.embedding_multiplier, feed, prompt=self.prompt_table)
        for i, (layer, kv) in enumerate(zip(t.layers, kv_caches)):
            if fused is not None:
                hidden = fused.layer(i, layer, hidden, positions, meta, kv, self.rope, self.backend, window)
            else:
                hidden = layer(hidden, positions, meta, kv, self.rope, self.backend, window)
        if not cfg.mapping.is_last_pp_rank:
            return hidden
        if logits_rows is not None:
            hidden = hidden[logits_rows]
        head = fused
        if head is None and self.fused is not None and self.fused.applies(hidden.shape[0]):
            # the last-token rows of a prompt step that took the module path: one GEMV instead of ln_f,
            # cuBLAS' GEMV and an fp32 copy
            head = self.fused
        # the fused head picks from the logits it writes: only where no scaling follows (a division could
        # round two logits into a tie that torch.argmax would break differently)
        fused_picks = picks if (head is not None and head.fuse_argmax and cfg.logits_scaling == 1.0) else None
        if head is not None:
            logits = head.head(self.lm_head, hidden, cfg.vocab_size, fused_picks,
                               host_picks if fused_picks is not None else None)[..., :cfg.vocab_size]
        else:
            logits = self.tp.all_gather(self.lm_head(t.ln_f(hidden)), dim=-1)[..., :cfg.vocab_size].float()
        if cfg.logits_scaling != 1.0:
            logits = logits / cfg.logits_scaling
        if picks is not None and fused_picks is None:
            picks.copy_(logits.argmax(dim=-1))
            if host_picks is not None:
                from ..kernels.triton_argmax import store_host_picks

                store_host_picks(picks, host_picks)
        return logits


def expected_tensors(cfg: ModelConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """name -> (shape, dtype) of every tensor a rank file must hold, from a model built on the meta device;
    dtype None means the model's dtype (a quantized layer fixes its integer weights' and scales' own)."""
    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    dtypes = param_dtypes(model)
    return {k: (tuple(v.shape), dtypes.get(k)) for k, v in model.state_dict().items()}


def random_weights(cfg: ModelConfig, device: str | torch.device = "cpu", seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights for benchmarking from a config alone, drawn on `device`: N(0, 0.02), norms at 1 (0 for
    layernorm1p, whose stored weight is gamma - 1), biases 0. A quantized config draws the float weights and
    quantizes them with its quantizer, as convert does with real ones."""
    from ..quant.registry import quantize_state

    device = torch.device(device)
    g = torch.Generator(device=device).manual_seed(seed + cfg.mapping.rank)
    dtype = torch_dtype(cfg.dtype)
    float_cfg = dataclasses.replace(cfg, quantization=QuantConfig())
    out = {}
    for name, (shape, _) in expected_tensors(float_cfg).items():
        if "layernorm" in name or "ln_f" in name or name.endswith("bias"):
            fill = 0.0 if (name.endswith("bias") or cfg.norm_type == "layernorm1p") else 1.0
            out[name] = torch.full(shape, fill, dtype=dtype, device=device)
        else:
            out[name] = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=g)
    return quantize_state(out, cfg)
