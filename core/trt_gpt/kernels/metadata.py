"""The per-step description of a packed batch that every attention backend consumes.

It lives with the kernels (the bottom layer) because they read it; the model and the runtime build it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class AttentionMetadata:
    """Packed batch layout for one executor step.

    Sequence b contributes `q_lens[b]` query tokens (a prompt chunk, or 1 when decoding); they occupy
    rows `cu_q_lens[b]:cu_q_lens[b+1]` of the packed activations. `context_lens[b]` is the number of
    KV entries of sequence b *after* this step's tokens are written, so query i of sequence b sits at
    position `context_lens[b] - q_lens[b] + i`. `block_tables[b, j]` is the cache block that holds
    positions `j*block_size .. (j+1)*block_size-1`; `slot_mapping[t]` is the flat slot
    (block * block_size + offset) where token t's K/V are written.
    """
    cu_q_lens: torch.Tensor      # int32 [B+1]
    context_lens: torch.Tensor   # int32 [B]
    block_tables: torch.Tensor   # int32 [B, max_blocks]
    slot_mapping: torch.Tensor   # int32 or int64 [T]
    max_q_len: int
    max_context_len: int
    q_lens_host: list[int] | None = None       # host copies avoid device syncs in the torch reference
    context_lens_host: list[int] | None = None

    @property
    def num_seqs(self) -> int:
        return self.context_lens.shape[0]

    @property
    def is_decode(self) -> bool:
        return self.max_q_len == 1
