"""The input embedding, token row [* multiplier] [+ position row], in torch: the one implementation.

`embed_ref` is what the model's module path runs (with its tensor-parallel `VocabEmbedding` as the token
lookup) and the reference of `triton_embed.embed`, the one-kernel specialisation the fused layers use. Both
take the same arguments, including `feed` (a row's token taken from the previous step's on-device picks).
A new input source belongs in this pair of functions, once in each. Torch only (no Triton import), so
the model uses it on every machine.

Prompt tuning (`prompt = (table, vocab_size)`): an id >= vocab_size is a virtual token; it embeds row
id - vocab_size of `table` [R, hidden] (the runtime's prompt-table pool, full hidden size on every rank)
instead of a vocabulary row. The multiplier and the position row apply to it as to any token, as HF
applies them to `inputs_embeds`.
"""
from __future__ import annotations

from typing import Callable

import torch


Prompt = tuple[torch.Tensor, int]   # (table [R, hidden], vocab_size): ids >= vocab_size read table rows


def check_embed_args(ids: torch.Tensor, wte: torch.Tensor, positions: torch.Tensor | None,
                     wpe: torch.Tensor | None, feed: tuple[torch.Tensor, torch.Tensor] | None,
                     sharded: bool = False, prompt: Prompt | None = None) -> None:
    """Shape checks shared by the kernel and the reference (ValueError naming the argument); `sharded`: the
    token table may hold a slice of the hidden size (a tensor-parallel lookup gathers the rest)."""
    if ids.dim() != 1 or wte.dim() != 2 or wte.stride(1) != 1:
        raise ValueError(f"embed: ids must be [T] and the table [V, H] contiguous along H, got "
                         f"{tuple(ids.shape)} and {tuple(wte.shape)}")
    if (positions is None) != (wpe is None):
        raise ValueError("embed: positions and the position table go together")
    if wpe is not None and (positions.shape != ids.shape or wpe.dim() != 2
                            or (wpe.shape[1] != wte.shape[1] and not sharded)
                            or wpe.dtype != wte.dtype or wpe.stride(1) != 1):
        raise ValueError(f"embed: the position table must be [P, {wte.shape[1]}] {wte.dtype}, positions [T]")
    if feed is not None and (feed[0].shape != ids.shape or feed[1].dim() != 1):
        raise ValueError("embed: feed must be (rows [T], picks [N])")
    if prompt is not None:
        table, vocab = prompt
        if (table.dim() != 2 or table.dtype != wte.dtype or table.stride(1) != 1 or vocab < 1
                or (table.shape[1] != wte.shape[1] and not sharded)):
            raise ValueError(f"embed: the prompt table must be [R, hidden] {wte.dtype} contiguous along hidden "
                             f"with vocab_size >= 1, got {tuple(table.shape)} {table.dtype} and {vocab}")


def fed_ids(ids: torch.Tensor, feed: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The token ids after `feed` (torch): row i takes picks[rows[i] - 1] where rows[i] > 0."""
    if feed is None:
        return ids
    rows, picks = feed
    return torch.where(rows > 0, picks[(rows - 1).clamp(min=0).long()], ids)


def embed_ref(ids: torch.Tensor, wte: torch.Tensor, positions: torch.Tensor | None = None,
              wpe: torch.Tensor | None = None, multiplier: float = 1.0,
              feed: tuple[torch.Tensor, torch.Tensor] | None = None,
              lookup: Callable[[torch.Tensor], torch.Tensor] | None = None,
              prompt: Prompt | None = None) -> torch.Tensor:
    """hidden [T, H] = wte[token] [* multiplier] [+ wpe[position]], each step rounded to the table's dtype.

    `feed = (rows, picks)`: a row i with rows[i] > 0 embeds picks[rows[i] - 1] instead of ids[i].
    `lookup` replaces the plain row gather (the model passes its tensor-parallel `VocabEmbedding`).
    `prompt = (table, vocab_size)`: a token >= vocab_size embeds table[token - vocab_size]."""
    check_embed_args(ids, wte, positions, wpe, feed, sharded=lookup is not None, prompt=prompt)
    tokens = fed_ids(ids, feed).long()
    virtual = None
    if prompt is not None:
        virtual = tokens >= prompt[1]
        rows = (tokens - prompt[1]).clamp(min=0)
        tokens = torch.where(virtual, 0, tokens)   # a valid vocabulary row; replaced below
    hidden = lookup(tokens) if lookup is not None else torch.nn.functional.embedding(tokens, wte)
    if virtual is not None:
        hidden = torch.where(virtual[:, None], torch.nn.functional.embedding(rows, prompt[0]), hidden)
    if multiplier != 1.0:
        hidden = hidden * multiplier
    if wpe is not None:
        hidden = hidden + torch.nn.functional.embedding(positions.long(), wpe)
    return hidden
