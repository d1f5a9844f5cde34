"""Declarative weight handling: helpers variants use to build canonical tensors, and the sharding table
that cuts each canonical tensor for one rank (tensor parallel) and renumbers layers (pipeline parallel).
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator

import torch

from .config import ModelConfig
from .errors import TrtGptError
from .mapping import Mapping

LAYER_RE = re.compile(r"^transformer\.layers\.(\d+)\.(.+)$")

# canonical-name suffix -> how it is split across tensor-parallel ranks
SHARD_RULES: list[tuple[re.Pattern, str]] = [
    (re.compile(r"attention\.qkv\.(weight|bias)$"), "qkv"),
    (re.compile(r"attention\.dense\.weight$"), "row"),
    (re.compile(r"mlp\.(fc|gate)\.(weight|bias)$"), "column"),
    (re.compile(r"mlp\.proj\.weight$"), "row"),
    (re.compile(r"^transformer\.vocab_embedding\.weight$"), "embedding"),
    (re.compile(r"^lm_head\.weight$"), "lm_head"),
]


# ----------------------------------------------------------------------------------------------
# Helpers for variant weight maps
# ----------------------------------------------------------------------------------------------

def fuse_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stack separate projections (weights [out, in] or biases [out]) into the canonical fused layout."""
    return torch.cat([q, k, v], dim=0)


def split_qkv(qkv: torch.Tensor, cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q_rows = cfg.num_attention_heads * cfg.head_size
    kv_rows = cfg.num_key_value_heads * cfg.head_size
    return qkv[:q_rows], qkv[q_rows:q_rows + kv_rows], qkv[q_rows + kv_rows:]


def pad_vocab(t: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad dim 0 with zero rows to a multiple (vocab-parallel lm_head needs equal slices)."""
    rem = (-t.shape[0]) % multiple
    return t if rem == 0 else torch.cat([t, t.new_zeros((rem,) + tuple(t.shape[1:]))], dim=0)


def padded_vocab_size(cfg: ModelConfig) -> int:
    tp = cfg.mapping.tp_size
    return (cfg.vocab_size + tp - 1) // tp * tp


# ----------------------------------------------------------------------------------------------
# Sharding
# ----------------------------------------------------------------------------------------------

def _rule(name: str) -> str:
    for pattern, rule in SHARD_RULES:
        if pattern.search(name):
            return rule
    return "replicate"


def _chunk(t: torch.Tensor, dim: int, parts: int, idx: int, name: str) -> torch.Tensor:
    if t.shape[dim] % parts:
        raise TrtGptError(f"{name}: dimension {dim} of size {t.shape[dim]} is not divisible by tp_size {parts}")
    return t.chunk(parts, dim=dim)[idx].contiguous()


def shard_qkv(t: torch.Tensor, cfg: ModelConfig, tp: int, r: int) -> torch.Tensor:
    """This rank's query heads and key/value heads; KV heads are replicated when tp > num_kv_heads."""
    q, k, v = split_qkv(t, cfg)
    d = cfg.head_size
    hq = cfg.num_attention_heads // tp
    kvh = cfg.num_key_value_heads
    q = q[r * hq * d:(r + 1) * hq * d]
    if kvh >= tp:
        n = kvh // tp
        k, v = k[r * n * d:(r + 1) * n * d], v[r * n * d:(r + 1) * n * d]
    else:
        h = r // (tp // kvh)
        k, v = k[h * d:(h + 1) * d], v[h * d:(h + 1) * d]
    return torch.cat([q, k, v], dim=0).contiguous()


def shard_tensor(name: str, t: torch.Tensor, cfg: ModelConfig, mapping: Mapping) -> torch.Tensor:
    """Cut one canonical tensor for `mapping`'s tensor-parallel rank."""
    tp, r = mapping.tp_size, mapping.tp_rank
    rule = _rule(name)
    if rule == "lm_head":
        t = pad_vocab(t, tp)
    if tp == 1 or rule == "replicate":
        return t
    if rule == "qkv":
        return shard_qkv(t, cfg, tp, r)
    if rule in ("column", "lm_head"):
        return _chunk(t, 0, tp, r, name)
    if rule == "row":
        return _chunk(t, 1, tp, r, name) if t.dim() == 2 else t
    if rule == "embedding":
        if not cfg.use_parallel_embedding:
            return t
        dim = cfg.embedding_sharding_dim
        return _chunk(pad_vocab(t, tp) if dim == 0 else t, dim, tp, r, name)
    raise AssertionError(rule)


def rank_tensors(weights: Iterable[tuple[str, torch.Tensor]], cfg: ModelConfig, mapping: Mapping,
                 dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Filter to this pipeline stage's layers (renumbered from 0), shard for TP and cast."""
    layers = mapping.layer_range(cfg.num_hidden_layers)
    for name, t in weights:
        m = LAYER_RE.match(name)
        if m:
            i = int(m.group(1))
            if i not in layers:
                continue
            name = f"transformer.layers.{i - layers.start}.{m.group(2)}"
        elif name.startswith(("transformer.vocab_embedding", "transformer.position_embedding")):
            # the first stage embeds; the last stage also needs the table when lm_head is tied to it
            if not mapping.is_first_pp_rank:
                continue
        elif name.startswith(("transformer.ln_f", "lm_head")):
            if not mapping.is_last_pp_rank:
                continue
        yield name, shard_tensor(name, t, cfg, mapping).to(dtype)


def map_names(tensors: Iterable[tuple[str, torch.Tensor]],
              table: list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]]
              ) -> Iterator[tuple[str, torch.Tensor]]:
    """Rename by a declarative table of (source regex, canonical template, optional transform).

    Source names matching no row are an error, so a variant never silently drops a tensor; a row
    whose template is "" drops matching tensors on purpose (e.g. attention bias buffers).
    """
    compiled = [(re.compile(src + "$"), dst, fn) for src, dst, fn in table]
    for name, t in tensors:
        for pat, dst, fn in compiled:
            m = pat.match(name)
            if m:
                if dst:
                    yield m.expand(dst), (fn(t) if fn else t)
                break
        else:
            raise TrtGptError(f"checkpoint tensor '{name}' is not in the variant's weight map")


def with_lm_head(tensors: Iterable[tuple[str, torch.Tensor]], tied: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """Make a canonical stream carry `lm_head.weight` as the format wants (always written, even when tied).

    Tied: the embedding table is emitted again as lm_head and any lm_head copy in the source is dropped
    (sources that tie often still store a stale or duplicate one). Untied: the source's own is kept.
    """
    for name, t in tensors:
        if tied and name == "lm_head.weight":
            continue
        yield name, t
        if tied and name == "transformer.vocab_embedding.weight":
            yield "lm_head.weight", t
