"""NeMo tensor names (legacy Megatron and Megatron-core layouts) -> canonical names and layouts.

Two layout changes on the way: NeMo's fused QKV rows are grouped per query group ([its query heads, one key
head, one value head] per group) and become [all q | all k | all v]; a GLU's first MLP linear holds
[activated half; up half] and becomes `mlp.fc` (activated) plus `mlp.gate`.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.weights import map_names, with_lm_head

from .nemo_source import fc1_is_concatenated

P = r"(?:model\.)?(?:module\.)?"                 # `module.` appears when trained with megatron_amp_O2
LEG = P + r"language_model\."
LEG_L = LEG + r"encoder\.layers\.(\d+)\."
MC_L = P + r"decoder\.layers\.(\d+)\."
OUT = r"transformer.layers.\1."
WB = r"(weight|bias)"


def weight_table(qkv: Callable[[torch.Tensor], torch.Tensor]) -> list:
    """(NeMo regex, canonical template, transform) rows covering both key layouts."""
    return [
        # legacy (NeMo megatron "language_model") layout
        (LEG + r"embedding\.word_embeddings\.weight", "transformer.vocab_embedding.weight", None),
        (LEG + r"embedding\.position_embeddings\.weight", "transformer.position_embedding.weight", None),
        (LEG_L + r"input_layernorm\." + WB, OUT + r"input_layernorm.\2", None),
        (LEG_L + r"self_attention\.query_key_value\." + WB, OUT + r"attention.qkv.\2", qkv),
        (LEG_L + r"self_attention\.dense\." + WB, OUT + r"attention.dense.\2", None),
        (LEG_L + r"post_attention_layernorm\." + WB, OUT + r"post_layernorm.\2", None),
        (LEG_L + r"mlp\.dense_h_to_4h\." + WB, OUT + r"mlp.fc.\2", None),
        (LEG_L + r"mlp\.dense_h_to_4h_2\." + WB, OUT + r"mlp.gate.\2", None),
        (LEG_L + r"mlp\.dense_4h_to_h\." + WB, OUT + r"mlp.proj.\2", None),
        (LEG + r"encoder\.final_layernorm\." + WB, r"transformer.ln_f.\1", None),
        (LEG + r"output_layer\.weight", "lm_head.weight", None),
        (P + r"word_embeddings\.weight", "", None),   # the last pipeline stage's copy of a tied table
        # Megatron-core layout (norms folded into the following linear by Transformer Engine specs)
        (P + r"embedding\.word_embeddings\.weight", "transformer.vocab_embedding.weight", None),
        (P + r"embedding\.position_embeddings\.weight", "transformer.position_embedding.weight", None),
        (MC_L + r"self_attention\.linear_qkv\.layer_norm_" + WB, OUT + r"input_layernorm.\2", None),
        (MC_L + r"input_layernorm\." + WB, OUT + r"input_layernorm.\2", None),
        (MC_L + r"self_attention\.linear_qkv\." + WB, OUT + r"attention.qkv.\2", qkv),
        (MC_L + r"self_attention\.linear_proj\." + WB, OUT + r"attention.dense.\2", None),
        (MC_L + r"mlp\.linear_fc1\.layer_norm_" + WB, OUT + r"post_layernorm.\2", None),
        (MC_L + r"pre_mlp_layernorm\." + WB, OUT + r"post_layernorm.\2", None),
        (MC_L + r"mlp\.linear_fc1\." + WB, OUT + r"mlp.fc.\2", None),
        (MC_L + r"mlp\.linear_fc2\." + WB, OUT + r"mlp.proj.\2", None),
        (P + r"decoder\.final_layernorm\." + WB, r"transformer.ln_f.\1", None),
        (P + r"output_layer\.weight", "lm_head.weight", None),
        # buffers that carry no weights
        (r".*rotary_pos_emb\.inv_freq", "", None),
    ]


def regroup_qkv(t: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """[per group: hpg q heads, k head, v head] rows -> [all q heads | all k heads | all v heads]."""
    g, d = cfg.num_key_value_heads, cfg.head_size
    hpg = cfg.num_attention_heads // g
    if t.shape[0] != g * (hpg + 2) * d:
        raise TrtGptError(f"fused QKV tensor has {t.shape[0]} rows, the config implies {g * (hpg + 2) * d} "
                          f"({cfg.num_attention_heads} heads, {g} query groups, head size {d})")
    rest = tuple(t.shape[1:])
    x = t.reshape(g, hpg + 2, d, *rest)
    q = x[:, :hpg].reshape(g * hpg * d, *rest)
    k = x[:, hpg].reshape(g * d, *rest)
    v = x[:, hpg + 1].reshape(g * d, *rest)
    return torch.cat([q, k, v], dim=0).contiguous()


def _split_glu(stream: Iterator[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, torch.Tensor]]:
    """mlp.fc = [activated; up] -> mlp.fc (activated, Megatron's first half) and mlp.gate (up)."""
    for name, t in stream:
        if ".mlp.fc." in name:
            act, up = t.chunk(2, dim=0)
            yield name, act.contiguous()
            yield name.replace(".mlp.fc.", ".mlp.gate."), up.contiguous()
        else:
            yield name, t


def _norm_biases(stream: Iterator[tuple[str, torch.Tensor]], cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    """LayerNorm kinds always carry a bias in the canonical format; supply zeros where NeMo has none."""
    weights: dict[str, torch.Tensor] = {}
    biases: set[str] = set()
    for name, t in stream:
        stem, _, kind = name.rpartition(".")
        if stem.endswith(("layernorm", "ln_f")):
            if kind == "bias":
                biases.add(stem)
            else:
                weights[stem] = t
        yield name, t
    if cfg.norm_type != "rmsnorm":
        for stem, w in weights.items():
            if stem not in biases:
                yield f"{stem}.bias", torch.zeros_like(w)


def weights(src: SourceCheckpoint, cfg: ModelConfig) -> Iterator[tuple[str, torch.Tensor]]:
    names = src.names()
    table = weight_table(lambda t: regroup_qkv(t, cfg))
    stream = map_names(((n, src.tensor(n)) for n in names), table)
    if cfg.is_gated and fc1_is_concatenated(src.config, names):
        stream = _split_glu(stream)
    # untied without an output layer is left for convert's check to name (missing lm_head.weight)
    yield from with_lm_head(_norm_biases(stream, cfg), cfg.tie_word_embeddings)
