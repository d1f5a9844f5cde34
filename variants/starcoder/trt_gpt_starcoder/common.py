"""Weight-stream helpers shared by the GPTBigCode-family variant packages (starcoder, santacoder, granite).

They sit on top of `trt_gpt.weights.map_names` and `with_lm_head`: fuse separately stored attention
projections into the canonical `attention.qkv` rows, and resolve a tied or absent LM head.
"""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Iterator

import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.sources import SourceCheckpoint
from trt_gpt.weights import map_names, with_lm_head

Table = list[tuple[str, str, Callable[[torch.Tensor], torch.Tensor] | None]]

# HF activation names the core registers under another name (validation only knows the core's spelling)
HF_ACTIVATIONS = {"gelu_fast": "gelu_new", "relu2": "squared-relu"}


def pick(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """The first of `keys` present (and not null) in a source config: HF configs spell fields several ways."""
    for k in keys:
        if config.get(k) is not None:
            return config[k]
    return default


def hf_activation(name: str) -> str:
    return HF_ACTIVATIONS.get(name, name)


def fuse_parts(tensors: Iterable[tuple[str, torch.Tensor]], parts: tuple[str, ...],
               where: str) -> Iterator[tuple[str, torch.Tensor]]:
    """Concatenate `transformer.layers.{i}.attention.{part}.{weight|bias}` rows, in `parts` order, into
    `attention.qkv`; other tensors pass through. Weight maps name the pieces `attention.q`, `.k`, `.v` or
    `.kv` so that the canonical [q heads | k heads | v heads] layout is just their concatenation."""
    pat = re.compile(r"^(transformer\.layers\.\d+\.attention)\.(%s)\.(weight|bias)$" % "|".join(parts))
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, t in tensors:
        m = pat.match(name)
        if not m:
            yield name, t
            continue
        key = (m.group(1), m.group(3))
        got = pending.setdefault(key, {})
        got[m.group(2)] = t
        if len(got) == len(parts):
            del pending[key]
            yield f"{key[0]}.qkv.{key[1]}", torch.cat([got[p] for p in parts], dim=0)
    for (prefix, kind), got in pending.items():
        missing = [p for p in parts if p not in got]
        raise TrtGptError(f"{where}: {prefix}.{kind} has projection(s) {sorted(got)} but lacks {missing} "
                          "in the checkpoint")


def canonical_stream(src: SourceCheckpoint, cfg: ModelConfig, table: Table,
                     fuse: tuple[str, ...] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
    """The source's tensors renamed by `table`, attention pieces fused, lm_head resolved."""
    names = src.names()
    # a base-model export (no LM head) decodes with the embedding, as HF does when weights are tied
    tied = cfg.tie_word_embeddings or "lm_head.weight" not in names
    out: Iterable[tuple[str, torch.Tensor]] = map_names(((n, src.tensor(n)) for n in names), table)
    if fuse:
        out = fuse_parts(out, fuse, str(src.path))
    return with_lm_head(out, tied)
