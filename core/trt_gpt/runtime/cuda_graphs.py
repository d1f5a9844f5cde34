"""CUDA graphs for decode steps: the model's forward for a batch of one-token-per-sequence steps is
captured once per batch size at engine load and replayed, removing the per-kernel launch cost that
dominates small-batch decoding.

A step of `b` sequences replays the graph of the smallest captured size >= b; the padding rows write
nothing to the cache (slot -1) and their logits are dropped. The split count of the decode attention
kernel is fixed at capture for the engine's max_seq_len, which is correct for any shorter context.
Only the Triton attention backend is captured (the torch reference synchronises with the host).
"""
from __future__ import annotations

from typing import Any

import torch

from .attn_metadata import AttentionMetadata

DEFAULT_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512)


class DecodeGraphs:
    def __init__(self, model: Any, kv_layers: list, max_batch: int, max_blocks: int, max_seq_len: int,
                 device: torch.device, window: int | None = None, sizes: tuple[int, ...] = DEFAULT_SIZES):
        self.model, self.kv_layers, self.window = model, kv_layers, window
        self.sizes = sorted({s for s in sizes if s <= max_batch} | {max_batch})
        n = self.sizes[-1]
        self.ids = torch.zeros(n, dtype=torch.int32, device=device)
        self.pos = torch.zeros(n, dtype=torch.int32, device=device)
        self.cu = torch.arange(n + 1, dtype=torch.int32, device=device)  # decode: one row per sequence
        self.ctx = torch.ones(n, dtype=torch.int32, device=device)
        self.tables = torch.zeros(n, max_blocks, dtype=torch.int32, device=device)
        self.slots = torch.full((n,), -1, dtype=torch.int32, device=device)
        self.max_seq_len = max_seq_len
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for size in reversed(self.sizes):  # largest first: later graphs reuse its memory pool
                self.graphs[size] = self._capture(size)

    def _meta(self, b: int) -> AttentionMetadata:
        return AttentionMetadata(cu_q_lens=self.cu[:b + 1], context_lens=self.ctx[:b], block_tables=self.tables[:b],
                                 slot_mapping=self.slots[:b], max_q_len=1, max_context_len=self.max_seq_len)

    def _forward(self, b: int) -> torch.Tensor:
        return self.model(self.ids[:b], self.pos[:b], self._meta(b), self.kv_layers, window=self.window)

    def _capture(self, b: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up compiles the Triton kernels outside the capture
            for _ in range(2):
                self._forward(b)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(b)
        return graph, out

    def applicable(self, meta: AttentionMetadata, window: int | None, n_rows: int) -> bool:
        return meta.is_decode and window == self.window and n_rows == meta.num_seqs <= self.sizes[-1]

    def run(self, ids: torch.Tensor, pos: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Logits [b, vocab] of a decode step; valid until the next replay."""
        b = ids.shape[0]
        size = next(s for s in self.sizes if s >= b)
        self.ids[:b].copy_(ids)
        self.pos[:b].copy_(pos)
        self.ctx[:b].copy_(meta.context_lens)
        self.tables[:b].copy_(meta.block_tables)
        self.slots[:b].copy_(meta.slot_mapping)
        if size > b:  # padding rows: attend to one cached slot, write nothing
            self.ctx[b:size].fill_(1)
            self.slots[b:size].fill_(-1)
        graph, out = self.graphs[size]
        graph.replay()
        return out[:b]
