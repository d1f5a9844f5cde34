"""One executor step: pack the scheduled tokens of many sequences, build the attention metadata,
run the model once, and return the logits the sampler needs (last token of each sequence, or all).

Requests may ask for different attention windows (`max_attention_window_size`); the attention
backends take one window per call, so a step whose sequences disagree runs one forward per window
(each a clean function of input ids, positions and metadata) and the logits are put back in batch
order.
"""
from __future__ import annotations

import os

import torch

from .attn_metadata import AttentionMetadata
from .engine import Engine
from .kv_cache import PagedKVCache
from .sequence import Sequence


class Executor:
    def __init__(self, engine: Engine, cache: PagedKVCache):
        self.engine = engine
        self.cache = cache
        self.device = engine.device
        self.max_blocks = cache.blocks_for(engine.build.max_seq_len)
        self.graphs = self._capture_graphs()

    def _capture_graphs(self):
        """Decode CUDA graphs when the step can be captured: CUDA device, Triton attention, not disabled
        by TRT_GPT_CUDA_GRAPHS=0."""
        if (self.device.type != "cuda" or getattr(self.engine.model.backend, "name", "") != "triton"
                or os.environ.get("TRT_GPT_CUDA_GRAPHS", "1") == "0"):
            return None
        from .cuda_graphs import DecodeGraphs

        return DecodeGraphs(self.engine.model, self.cache.layers, self.engine.build.max_batch_size, self.max_blocks,
                            self.engine.build.max_seq_len, self.device, window=self.engine.cfg.sliding_window)

    def build_inputs(self, batch: list[tuple[Sequence, int]]):
        """Host-side packing into flat lists, then one transfer per tensor."""
        bs = self.cache.block_size
        ids, pos, slots, q_lens, ctx_lens, tables = [], [], [], [], [], []
        for seq, n in batch:
            start = seq.num_computed
            toks = seq.tokens[start:start + n]
            ids.extend(toks)
            pos.extend(range(start, start + n))
            slots.extend(seq.blocks[p // bs] * bs + p % bs for p in range(start, start + n))
            q_lens.append(n)
            ctx_lens.append(start + n)
            tables.append(seq.blocks + [0] * (self.max_blocks - len(seq.blocks)))
        dev = self.device
        cu = [0]
        for q in q_lens:
            cu.append(cu[-1] + q)
        meta = AttentionMetadata(
            cu_q_lens=torch.tensor(cu, dtype=torch.int32, device=dev),
            context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
            max_q_len=max(q_lens), max_context_len=max(ctx_lens),
            q_lens_host=q_lens, context_lens_host=ctx_lens)
        return (torch.tensor(ids, dtype=torch.int64, device=dev), torch.tensor(pos, dtype=torch.int64, device=dev),
                meta, cu)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                logits_rows: torch.Tensor | None, window: int | None) -> torch.Tensor:
        """The model on one packed batch (the piece a decode CUDA graph replaces)."""
        if self.graphs is not None and self.graphs.applicable(meta, window, input_ids.shape[0]):
            return self.graphs.run(input_ids, positions, meta)  # every row is a last token: no row selection
        return self.engine.model(input_ids, positions, meta, self.cache.layers, logits_rows=logits_rows,
                                 window=window)

    def _run(self, batch: list[tuple[Sequence, int]], all_logits: bool, window: int | None) -> torch.Tensor:
        ids, pos, meta, cu = self.build_inputs(batch)
        rows = None if all_logits else torch.tensor([c - 1 for c in cu[1:]], device=self.device)
        return self.forward(ids, pos, meta, rows, window)

    @torch.inference_mode()
    def step(self, batch: list[tuple[Sequence, int]], all_logits: bool = False,
             window: int | None = None) -> torch.Tensor:
        """Run `n` pending tokens of each sequence; returns fp32 logits [rows, vocab].

        rows = one per sequence (its last scheduled token) unless `all_logits`, then every token.
        `window` overrides every sequence's own attention window (`Sequence.window`; None = the
        model's). The caller has already given each sequence enough cache blocks for its new tokens.
        """
        groups: dict[int | None, list[int]] = {}
        for i, (seq, _) in enumerate(batch):
            groups.setdefault(window if window is not None else seq.window, []).append(i)
        if len(groups) == 1:
            logits = self._run(batch, all_logits, next(iter(groups)))
        else:
            # Rows of each sequence in the full output: 1 each, or its n tokens with all_logits.
            starts, total = [], 0
            for _, n in batch:
                starts.append(total)
                total += n if all_logits else 1
            logits = None
            for w, idx in groups.items():
                part = self._run([batch[i] for i in idx], all_logits, w)
                if logits is None:
                    logits = part.new_empty((total, part.shape[-1]))
                rows = [r for i in idx for r in range(starts[i], starts[i] + (batch[i][1] if all_logits else 1))]
                logits[torch.tensor(rows, device=part.device)] = part
        for seq, n in batch:
            seq.num_computed += n
        return logits
