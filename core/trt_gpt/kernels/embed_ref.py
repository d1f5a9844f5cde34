"""The decode-step embedding in torch: the reference of `triton_embed` and the module path's token feed.

Torch only (no Triton import), so the model can use `fed_ids` on every machine.
"""
from __future__ import annotations

import torch


def check_embed_args(ids: torch.Tensor, wte: torch.Tensor, positions: torch.Tensor | None,
                     wpe: torch.Tensor | None, feed: tuple[torch.Tensor, torch.Tensor] | None) -> None:
    """Shape checks shared by the kernel and the reference (ValueError naming the argument)."""
    if ids.dim() != 1 or wte.dim() != 2 or wte.stride(1) != 1:
        raise ValueError(f"embed: ids must be [T] and the table [V, H] contiguous along H, got "
                         f"{tuple(ids.shape)} and {tuple(wte.shape)}")
    if (positions is None) != (wpe is None):
        raise ValueError("embed: positions and the position table go together")
    if wpe is not None and (positions.shape != ids.shape or wpe.dim() != 2 or wpe.shape[1] != wte.shape[1]
                            or wpe.dtype != wte.dtype or wpe.stride(1) != 1):
        raise ValueError(f"embed: the position table must be [P, {wte.shape[1]}] {wte.dtype}, positions [T]")
    if feed is not None and (feed[0].shape != ids.shape or feed[1].dim() != 1):
        raise ValueError("embed: feed must be (rows [T], picks [N])")


def fed_ids(ids: torch.Tensor, feed: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """The token ids after `feed` (torch): row i takes picks[rows[i] - 1] where rows[i] > 0."""
    if feed is None:
        return ids
    rows, picks = feed
    return torch.where(rows > 0, picks[(rows - 1).clamp(min=0).long()], ids)


def embed_ref(ids: torch.Tensor, wte: torch.Tensor, positions: torch.Tensor | None = None,
              wpe: torch.Tensor | None = None, multiplier: float = 1.0,
              feed: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """`embed` with torch ops, in the module path's order."""
    check_embed_args(ids, wte, positions, wpe, feed)
    hidden = torch.nn.functional.embedding(fed_ids(ids, feed).long(), wte)
    if multiplier != 1.0:
        hidden = hidden * multiplier
    if wpe is not None:
        hidden = hidden + torch.nn.functional.embedding(positions.long(), wpe)
    return hidden
