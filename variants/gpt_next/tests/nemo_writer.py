"""Test fixture: write `.nemo` archives the way NeMo lays them out, from the weights of random HF models.

Written independently of the reader under test (it shards and names, the reader merges and renames):
model_config.yaml + model_weights.ckpt (or per-rank `mp_rank_XX/` and `tp_rank_XX_pp_rank_YYY/` folders),
legacy (`language_model.encoder`) or Megatron-core (`decoder`, norms folded into `linear_qkv`/`linear_fc1`)
key names, QKV rows grouped per query group, a GLU's fc1 as [activated; up] within each TP rank, the vocab
split on dim 0, row-parallel weights on dim 1, members named `./...` as NeMo's tar writer does.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml


@dataclass
class NemoModel:
    """A whole model in NeMo's logical form (unsharded): yaml config and tensors by role."""
    cfg: dict[str, Any]
    layers: list[dict[str, torch.Tensor]]   # ln1_w ln1_b qkv_w qkv_b proj_w proj_b ln2_w ln2_b fc1_w fc1_b fc2_w fc2_b
    emb: torch.Tensor
    final: dict[str, torch.Tensor]          # w (and b)
    pos: torch.Tensor | None = None
    out: torch.Tensor | None = None         # None when tied
    extra: dict[str, Any] = field(default_factory=dict)


def group_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: int) -> torch.Tensor:
    """[q | k | v] -> NeMo's per-group rows: each group's query heads, then its key head, then its value head."""
    qs, ks, vs = q.chunk(groups, 0), k.chunk(groups, 0), v.chunk(groups, 0)
    return torch.cat([torch.cat([qs[g], ks[g], vs[g]], 0) for g in range(groups)], 0)


def perturb_norms(model: torch.nn.Module, scale: float = 0.2) -> None:
    """Random norm parameters (HF starts them at 1/0), so a misplaced norm or a lost +1 shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:
                p.add_(torch.randn_like(p) * scale)


def _base_cfg(n_layers: int, hidden: int, ffn: int, heads: int, groups: int, max_pos: int, **kw: Any) -> dict:
    return {"target": "nemo.collections.nlp.models.language_modeling.megatron_gpt_model.MegatronGPTModel",
            "num_layers": n_layers, "hidden_size": hidden, "ffn_hidden_size": ffn, "num_attention_heads": heads,
            "num_query_groups": groups, "encoder_seq_length": max_pos,
            "max_position_embeddings": "${.encoder_seq_length}", "precision": 32, "make_vocab_size_divisible_by": 128,
            "tensor_model_parallel_size": 1, "pipeline_model_parallel_size": 1, **kw}


def from_nemotron(hf: Any) -> NemoModel:
    """HF Nemotron (layernorm1p, squared-relu, partial rotary, no bias) as a NeMo GPT."""
    c = hf.config
    layers = []
    for layer in hf.model.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append({"ln1_w": layer.input_layernorm.weight, "ln1_b": layer.input_layernorm.bias,
                       "qkv_w": group_qkv(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, c.num_key_value_heads),
                       "proj_w": a.o_proj.weight,
                       "ln2_w": layer.post_attention_layernorm.weight, "ln2_b": layer.post_attention_layernorm.bias,
                       "fc1_w": m.up_proj.weight, "fc2_w": m.down_proj.weight})
    cfg = _base_cfg(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                    c.num_key_value_heads, c.max_position_embeddings, kv_channels=c.head_dim,
                    position_embedding_type="rope", rotary_percentage=c.rope_parameters["partial_rotary_factor"],
                    rotary_base=c.rope_parameters["rope_theta"], normalization="layernorm1p",
                    layernorm_epsilon=c.norm_eps, activation="squared-relu", bias=False,
                    share_embeddings_and_output_weights=False)
    return NemoModel(cfg, layers, hf.model.embed_tokens.weight,
                     {"w": hf.model.norm.weight, "b": hf.model.norm.bias}, out=hf.lm_head.weight)


def from_llama(hf: Any, activation: str = "fast-swiglu") -> NemoModel:
    """HF Llama (rmsnorm, swiglu, full rotary) as a NeMo GPT with a GLU: fc1 = [gate_proj; up_proj]."""
    c = hf.config
    layers = []
    for layer in hf.model.layers:
        a, m = layer.self_attn, layer.mlp
        layers.append({"ln1_w": layer.input_layernorm.weight,
                       "qkv_w": group_qkv(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight, c.num_key_value_heads),
                       "proj_w": a.o_proj.weight, "ln2_w": layer.post_attention_layernorm.weight,
                       "fc1_w": torch.cat([m.gate_proj.weight, m.up_proj.weight], 0), "fc2_w": m.down_proj.weight})
    cfg = _base_cfg(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                    c.num_key_value_heads, c.max_position_embeddings, position_embedding_type="rope",
                    rotary_percentage=1.0, rotary_base=c.rope_parameters["rope_theta"], normalization="rmsnorm",
                    layernorm_epsilon=c.rms_norm_eps, activation=activation, bias=False,
                    share_embeddings_and_output_weights=bool(c.tie_word_embeddings))
    return NemoModel(cfg, layers, hf.model.embed_tokens.weight, {"w": hf.model.norm.weight},
                     out=None if c.tie_word_embeddings else hf.lm_head.weight)


def from_gpt2(hf: Any, exact_gelu: bool = False) -> NemoModel:
    """HF GPT-2 (learned positions, gelu, LayerNorm, biases, tied) as a NeMo GPT; GPT-2's Conv1D is [in, out]."""
    c = hf.config
    h = c.n_embd
    layers = []
    for blk in hf.transformer.h:
        w, b = blk.attn.c_attn.weight.t(), blk.attn.c_attn.bias
        layers.append({"ln1_w": blk.ln_1.weight, "ln1_b": blk.ln_1.bias,
                       "qkv_w": group_qkv(w[:h], w[h:2 * h], w[2 * h:], c.n_head),
                       "qkv_b": group_qkv(b[:h], b[h:2 * h], b[2 * h:], c.n_head),
                       "proj_w": blk.attn.c_proj.weight.t(), "proj_b": blk.attn.c_proj.bias,
                       "ln2_w": blk.ln_2.weight, "ln2_b": blk.ln_2.bias,
                       "fc1_w": blk.mlp.c_fc.weight.t(), "fc1_b": blk.mlp.c_fc.bias,
                       "fc2_w": blk.mlp.c_proj.weight.t(), "fc2_b": blk.mlp.c_proj.bias})
    # the fused bias-gelu kernel is the tanh form (GPT-2's gelu_new); with fusion off NeMo calls exact gelu
    cfg = _base_cfg(c.n_layer, h, c.n_inner or 4 * h, c.n_head, None, c.n_positions,
                    position_embedding_type="learned_absolute", normalization="layernorm",
                    layernorm_epsilon=c.layer_norm_epsilon, activation="gelu", bias=True,
                    bias_activation_fusion=not exact_gelu, share_embeddings_and_output_weights=True)
    final = {"w": hf.transformer.ln_f.weight, "b": hf.transformer.ln_f.bias}
    return NemoModel(cfg, layers, hf.transformer.wte.weight, final, pos=hf.transformer.wpe.weight)


# ----------------------------------------------------------------------------------------------
# naming and sharding
# ----------------------------------------------------------------------------------------------

LEGACY = {"ln1_w": "input_layernorm.weight", "ln1_b": "input_layernorm.bias",
          "qkv_w": "self_attention.query_key_value.weight", "qkv_b": "self_attention.query_key_value.bias",
          "proj_w": "self_attention.dense.weight", "proj_b": "self_attention.dense.bias",
          "ln2_w": "post_attention_layernorm.weight", "ln2_b": "post_attention_layernorm.bias",
          "fc1_w": "mlp.dense_h_to_4h.weight", "fc1_b": "mlp.dense_h_to_4h.bias",
          "fc1b_w": "mlp.dense_h_to_4h_2.weight", "fc1b_b": "mlp.dense_h_to_4h_2.bias",
          "fc2_w": "mlp.dense_4h_to_h.weight", "fc2_b": "mlp.dense_4h_to_h.bias"}
MCORE = {"ln1_w": "self_attention.linear_qkv.layer_norm_weight", "ln1_b": "self_attention.linear_qkv.layer_norm_bias",
         "qkv_w": "self_attention.linear_qkv.weight", "qkv_b": "self_attention.linear_qkv.bias",
         "proj_w": "self_attention.linear_proj.weight", "proj_b": "self_attention.linear_proj.bias",
         "ln2_w": "mlp.linear_fc1.layer_norm_weight", "ln2_b": "mlp.linear_fc1.layer_norm_bias",
         "fc1_w": "mlp.linear_fc1.weight", "fc1_b": "mlp.linear_fc1.bias",
         "fc2_w": "mlp.linear_fc2.weight", "fc2_b": "mlp.linear_fc2.bias"}
COLUMN = {"qkv_w", "qkv_b", "fc1_w", "fc1_b", "fc1b_w", "fc1b_b"}
ROW = {"proj_w", "fc2_w"}


def _shard(role: str, t: torch.Tensor, tp: int, r: int, glu_concat: bool) -> torch.Tensor:
    if tp == 1:
        return t
    if role in ("fc1_w", "fc1_b") and glu_concat:
        act, up = t.chunk(2, 0)
        return torch.cat([act.chunk(tp, 0)[r], up.chunk(tp, 0)[r]], 0)
    if role in COLUMN:
        return t.chunk(tp, 0)[r]
    if role in ROW:
        return t.chunk(tp, 1)[r]
    return t


def rank_state(model: NemoModel, layout: str, tp: int, pp: int, tp_rank: int, pp_rank: int,
               separate_glu: bool = False, amp_o2: bool = False) -> dict[str, Any]:
    """The state dict NeMo writes for one (tp, pp) rank."""
    gated = model.cfg["activation"] in ("swiglu", "fast-swiglu")
    names = LEGACY if layout == "legacy" else MCORE
    root = "model.module." if amp_o2 else "model."
    lm = root + ("language_model." if layout == "legacy" else "")
    layer_prefix = lm + ("encoder.layers." if layout == "legacy" else "decoder.layers.")
    per_stage = len(model.layers) // pp
    sd: dict[str, Any] = {}
    for local, layer in enumerate(model.layers[pp_rank * per_stage:(pp_rank + 1) * per_stage]):
        roles = dict(layer)
        if gated and separate_glu:   # legacy non-fast GLU: the up half lives in dense_h_to_4h_2
            roles["fc1_w"], roles["fc1b_w"] = layer["fc1_w"].chunk(2, 0)
        for role, t in roles.items():
            sd[f"{layer_prefix}{local}.{names[role]}"] = _shard(role, t, tp, tp_rank, gated and not separate_glu)
        if layout == "mcore":  # Transformer Engine's FP8 metadata rides along: a uint8 tensor, or BytesIO (older TE)
            sd[f"{layer_prefix}{local}.self_attention.linear_proj._extra_state"] = torch.zeros(0, dtype=torch.uint8)
            sd[f"{layer_prefix}{local}.mlp.linear_fc1._extra_state"] = io.BytesIO(b"")
    emb = model.emb.chunk(tp, 0)[tp_rank]
    if pp_rank == 0:
        sd[lm + "embedding.word_embeddings.weight"] = emb
        if model.pos is not None:
            sd[lm + "embedding.position_embeddings.weight"] = model.pos
        if layout == "legacy" and model.cfg.get("position_embedding_type") == "rope":
            sd[lm + "rotary_pos_emb.inv_freq"] = torch.ones(4)
    if pp_rank == pp - 1:
        final = lm + ("encoder.final_layernorm." if layout == "legacy" else "decoder.final_layernorm.")
        sd[final + "weight"] = model.final["w"]
        if "b" in model.final:
            sd[final + "bias"] = model.final["b"]
        if model.out is not None:
            sd[lm + "output_layer.weight"] = model.out.chunk(tp, 0)[tp_rank]
        elif pp > 1:   # the last stage keeps its own copy of a tied table
            sd[(root + "word_embeddings.weight") if layout == "legacy" else (root + "output_layer.weight")] = emb
    return {k: v.detach().clone().contiguous() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(f"./{name}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_nemo(path: Path, model: NemoModel, layout: str = "mcore", tp: int = 1, pp: int = 1, gz: bool = False,
               tokenizer: Path | None = None, separate_glu: bool = False, amp_o2: bool = False) -> Path:
    cfg = dict(model.cfg, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
               mcore_gpt=layout == "mcore", megatron_amp_O2=amp_o2)
    if separate_glu:
        cfg["activation"] = "swiglu"
    if tokenizer is not None:
        cfg["tokenizer"] = {"library": "sentencepiece", "type": None, "model": "nemo:3f9a2c_tokenizer.model",
                            "vocab_file": None, "merge_file": None}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz" if gz else "w:") as tar:
        _add(tar, "model_config.yaml", yaml.safe_dump(cfg, sort_keys=False).encode())
        for p in range(pp):
            for t in range(tp):
                buf = io.BytesIO()
                torch.save(rank_state(model, layout, tp, pp, t, p, separate_glu, amp_o2), buf)
                folder = ("" if tp == pp == 1 else f"mp_rank_{t:02d}/" if pp == 1
                          else f"tp_rank_{t:02d}_pp_rank_{p:03d}/")
                _add(tar, f"{folder}model_weights.ckpt", buf.getvalue())
        if tokenizer is not None:
            _add(tar, "3f9a2c_tokenizer.model", tokenizer.read_bytes())
    return path
