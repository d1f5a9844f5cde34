"""One executor step: pack the scheduled tokens of many sequences, build the attention metadata,
run the model once, and return the logits the sampler needs (last token of each sequence, or all).

Requests may ask for different attention windows (`max_attention_window_size`); the attention
backends take one window per call, so a step whose sequences disagree runs one forward per window
(each a clean function of input ids, positions and metadata) and the logits are put back in batch
order.
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import torch

from .attn_metadata import AttentionMetadata
from .engine import Engine
from .kv_cache import PagedKVCache
from .sequence import Sequence

# From this many decode rows on, whole-array numpy beats per-row work (measured crossover ~24-32 on CPU).
_BULK_DECODE_ROWS = 32


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
        """Pack the step on the host into one int32 array, then one copy to the device.

        One transfer instead of one per tensor matters at small batch, where each host-to-device copy
        costs about as much as a layer's GPU time. The arrays are views of that one device buffer.
        """
        bs = self.cache.block_size
        nseq = len(batch)
        q_lens = [n for _, n in batch]
        total = sum(q_lens)
        nb = self.max_blocks
        # layout: ids[T] pos[T] slots[T] rows[B] cu[B+1] ctx[B] tables[B*nb]
        buf = np.zeros(3 * total + 3 * nseq + 1 + nseq * nb, dtype=np.int32)
        ids, pos, slots = buf[:total], buf[total:2 * total], buf[2 * total:3 * total]
        o = 3 * total
        rows, cu, ctx = buf[o:o + nseq], buf[o + nseq:o + 2 * nseq + 1], buf[o + 2 * nseq + 1:o + 3 * nseq + 1]
        tables = buf[o + 3 * nseq + 1:].reshape(nseq, nb)
        t = 0
        ctx_lens: list[int] = []
        if total == nseq:
            self._pack_decode(batch, ids, pos, slots, rows, cu, ctx, tables, ctx_lens)
        for i, (seq, n) in enumerate(batch if total != nseq else ()):
            start = seq.num_computed
            ids[t:t + n] = seq.token_slice(start, n)
            p = np.arange(start, start + n)
            pos[t:t + n] = p
            blocks = np.asarray(seq.blocks, dtype=np.int32)
            slots[t:t + n] = blocks[p // bs] * bs + p % bs
            tables[i, :len(blocks)] = blocks
            t += n
            cu[i + 1] = t
            rows[i] = t - 1
            ctx_lens.append(start + n)
        if total != nseq:
            ctx[:] = ctx_lens
        dev = self.device
        host = torch.from_numpy(buf)
        d = host.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else host
        o = 3 * total
        meta = AttentionMetadata(
            cu_q_lens=d[o + nseq:o + 2 * nseq + 1], context_lens=d[o + 2 * nseq + 1:o + 3 * nseq + 1],
            block_tables=d[o + 3 * nseq + 1:].view(nseq, nb), slot_mapping=d[2 * total:3 * total],
            max_q_len=max(q_lens), max_context_len=max(ctx_lens), q_lens_host=q_lens, context_lens_host=ctx_lens)
        self._rows = d[o:o + nseq]
        return d[:total], d[total:2 * total], meta, [0] + cu[1:].tolist()

    def _pack_decode(self, batch, ids, pos, slots, rows, cu, ctx, tables, ctx_lens: list[int]) -> None:
        """One token per sequence: plain Python ints gathered per sequence, then bulk-converted (numpy per
        row costs ~1-7 us each, which at batch 256 was a third of the step)."""
        bs = self.cache.block_size
        n = len(batch)
        seqs = [seq for seq, _ in batch]
        ps = [seq.num_computed for seq in seqs]
        # The token at position p: an output token once the prompt has run (the usual decode step).
        ids[:] = [s.output_ids[p - len(s.prompt_ids)] if p >= len(s.prompt_ids) else s.prompt_ids[p]
                  for s, p in zip(seqs, ps)]
        pos[:] = ps
        if n < _BULK_DECODE_ROWS:
            # Few rows: a dozen whole-array numpy calls would cost more than these per-row ones.
            slot_l = []
            for i, seq in enumerate(seqs):
                p, blocks = ps[i], seq.blocks
                slot_l.append(blocks[p // bs] * bs + p % bs)
                tables[i, :len(blocks)] = blocks
            slots[:] = slot_l
        else:
            # Ragged block lists -> padded rows: a row-major boolean mask takes their concatenation in order.
            lens = np.fromiter(map(len, (s.blocks for s in seqs)), dtype=np.int64, count=n)
            tables[np.arange(tables.shape[1]) < lens[:, None]] = list(itertools.chain.from_iterable(
                s.blocks for s in seqs))
            blk, off = np.divmod(pos, bs)
            slots[:] = tables[np.arange(n), blk] * bs + off
        np.add(pos, 1, out=ctx)
        ctx_lens += ctx.tolist()
        cu[:] = np.arange(n + 1, dtype=np.int32)
        rows[:] = cu[:n]

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                logits_rows: torch.Tensor | None, window: int | None) -> torch.Tensor:
        """The model on one packed batch (the piece a decode CUDA graph replaces)."""
        if self.graphs is not None and self.graphs.applicable(meta, window, input_ids.shape[0]):
            return self.graphs.run(input_ids, positions, meta)  # every row is a last token: no row selection
        return self.engine.model(input_ids, positions, meta, self.cache.layers, logits_rows=logits_rows,
                                 window=window)

    def _run(self, batch: list[tuple[Sequence, int]], all_logits: bool, window: int | None) -> torch.Tensor:
        ids, pos, meta, _ = self.build_inputs(batch)
        return self.forward(ids, pos, meta, None if all_logits else self._rows, window)

    @torch.inference_mode()
    def step(self, batch: list[tuple[Sequence, int]], all_logits: bool = False,
             window: int | None = None) -> torch.Tensor:
        """Run `n` pending tokens of each sequence; returns fp32 logits [rows, vocab].

        rows = one per sequence (its last scheduled token) unless `all_logits`, then every token.
        `window` overrides every sequence's own attention window (`Sequence.window`; None = the
        model's). The caller has already given each sequence enough cache blocks for its new tokens.
        """
        # Usually every sequence shares one window: a set avoids building per-window index lists.
        windows = {window} if window is not None else {seq.window for seq, _ in batch}
        if batch and len(windows) == 1:
            logits = self._run(batch, all_logits, next(iter(windows)))
        else:
            groups: dict[int | None, list[int]] = {}
            for i, (seq, _) in enumerate(batch):
                groups.setdefault(window if window is not None else seq.window, []).append(i)
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
