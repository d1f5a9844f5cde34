"""One executor step: pack the scheduled tokens of many sequences, build the attention metadata,
run the model once, and return the logits the sampler needs (last token of each sequence, or all).

Requests may ask for different attention windows (`max_attention_window_size`); the attention
backends take one window per call, so a step whose sequences disagree runs one forward per window
(each a clean function of input ids, positions and metadata) and the logits are put back in batch
order.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch

from ..env import choice, env_setting, flag
from ..kernels.metadata import AttentionMetadata
from .engine import Engine
from .kv_cache import PagedKVCache
from .sequence import Sequence
from .staging import PinnedStaging
from .step_layout import StepLayout

# From this many decode rows on, whole-array numpy beats per-row work (measured crossover ~24-32 on CPU).
_BULK_DECODE_ROWS = 32


@dataclass
class _Layout:
    """A packed step: its buffer's regions (step_layout) plus the host-side lengths."""
    regions: StepLayout
    total: int
    nseq: int
    nb: int
    q_lens: list[int]
    ctx_lens: list[int]
    cu: list[int]


def _fill_tables(seqs: list[Sequence], tables: np.ndarray) -> None:
    """Block lists -> the first len(seqs) rows of `tables` (entries past a list's end keep their value):
    a row-major boolean mask takes the lists' concatenation in order."""
    lens = np.fromiter(map(len, (s.blocks for s in seqs)), dtype=np.int64, count=len(seqs))
    tables[:len(seqs)][np.arange(tables.shape[1]) < lens[:, None]] = list(
        itertools.chain.from_iterable(s.blocks for s in seqs))


class Executor:
    def __init__(self, engine: Engine, cache: PagedKVCache):
        self.engine = engine
        self.cache = cache
        self.device = engine.device
        self.max_blocks = cache.blocks_for(engine.build.max_seq_len)
        self.staging = PinnedStaging(self.device)
        self.graphs = self._capture_graphs()
        self.prefill_graphs = None
        if self.graphs is not None and env_setting("TRT_GPT_PREFILL_GRAPHS", flag, True):
            from .prefill_graphs import PrefillGraphs

            self.prefill_graphs = PrefillGraphs(self.graphs.eager, getattr(self.graphs, "pool", None))

    def _capture_graphs(self):
        """Decode CUDA graphs when the step can be captured: CUDA device, Triton attention (the torch
        reference synchronises with the host), not disabled by TRT_GPT_CUDA_GRAPHS=0. With
        TRT_GPT_CUDA_GRAPHS=eager the same static-buffer protocol runs without capture, on any device
        (how CI tests it, and overlapped decoding on top of it, without a GPU)."""
        mode = env_setting("TRT_GPT_CUDA_GRAPHS", choice("1", "0", "eager"), "1")
        if getattr(self.engine.model.backend, "name", "") != "triton" or mode == "0":
            return None
        if self.device.type != "cuda" and mode != "eager":
            return None
        from .cuda_graphs import DecodeGraphs

        return DecodeGraphs(self.engine.model, self.cache.layers, self.engine.build.max_batch_size, self.max_blocks,
                            self.engine.build.max_seq_len, self.device, window=self.engine.cfg.sliding_window,
                            eager=mode == "eager")

    def build_inputs(self, batch: list[tuple[Sequence, int]]):
        """Pack the step on the host into one int32 array, then one copy to the device.

        One transfer instead of one per tensor matters at small batch, where each host-to-device copy
        costs about as much as a layer's GPU time. The arrays are views of that one device buffer.
        Returns (input ids, positions, metadata, host cu_q_lens); `self._rows` holds the last-token rows.
        """
        host, lay = self._pack(batch)
        ids, pos, meta, self._rows = self._views(self.staging.to_device(host), lay)
        return ids, pos, meta, lay.cu

    def _pack(self, batch: list[tuple[Sequence, int]]) -> tuple[torch.Tensor, "_Layout"]:
        bs = self.cache.block_size
        nseq = len(batch)
        q_lens = [n for _, n in batch]
        total = sum(q_lens)
        nb = self.max_blocks
        regions = StepLayout.for_step(total, nseq, nb)
        host, buf = self.staging.take(regions.size)
        buf[:] = 0
        ids, pos, slots = (regions.view(buf, c) for c in ("ids", "positions", "slots"))
        rows, cu, ctx = (regions.view(buf, c) for c in ("rows", "cu", "ctx"))
        tables = regions.view(buf, "tables").reshape(nseq, nb)
        if total == nseq:
            self._pack_decode(batch, ids, pos, slots, ctx, tables)
            cu[:] = np.arange(nseq + 1, dtype=np.int32)
            rows[:] = cu[:nseq]
            ctx_lens = ctx.tolist()
        elif nseq < _BULK_DECODE_ROWS:
            t = 0
            ctx_lens = []
            for i, (seq, n) in enumerate(batch):
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
            ctx[:] = ctx_lens
        else:
            # Many sequences (an in-flight batch admitting prompts): whole-array numpy, Python only for ids.
            seqs = [seq for seq, _ in batch]
            starts = np.fromiter((s.num_computed for s in seqs), dtype=np.int64, count=nseq)
            qn = np.asarray(q_lens, dtype=np.int64)
            ids[:] = list(itertools.chain.from_iterable(
                (s.token_slice(s.num_computed, n) if n > 1 or s.num_computed < len(s.prompt_ids)
                 else (s.output_ids[s.num_computed - len(s.prompt_ids)],)) for s, n in batch))
            np.cumsum(qn, out=cu[1:])
            owner = np.repeat(np.arange(nseq), qn)
            pos[:] = np.arange(total) - cu[owner] + starts[owner]
            _fill_tables(seqs, tables)
            blk, off = np.divmod(pos, bs)
            slots[:] = tables[owner, blk] * bs + off
            rows[:] = cu[1:] - 1
            ctx[:] = starts + qn
            ctx_lens = ctx.tolist()
        lay = _Layout(regions, total, nseq, nb, q_lens, ctx_lens, [0] + cu[1:].tolist())
        return host, lay

    @staticmethod
    def _views(d: torch.Tensor, lay: "_Layout"):
        """(ids, positions, metadata, last-token rows) as views of the device copy `d` of a packed step."""
        r, b, nb = lay.regions, lay.nseq, lay.nb
        meta = AttentionMetadata(
            cu_q_lens=r.view(d, "cu"), context_lens=r.view(d, "ctx"), block_tables=r.view(d, "tables").view(b, nb),
            slot_mapping=r.view(d, "slots"), max_q_len=max(lay.q_lens), max_context_len=max(lay.ctx_lens),
            q_lens_host=lay.q_lens, context_lens_host=lay.ctx_lens)
        return r.view(d, "ids"), r.view(d, "positions"), meta, r.view(d, "rows")

    def _pack_decode(self, batch, ids, pos, slots, ctx, tables, src: list[int] | None = None,
                     prev_rows: dict[int, int] | None = None) -> None:
        """One token per sequence: plain Python ints gathered per sequence, then bulk-converted (numpy per
        row costs ~1-7 us each, which at batch 256 was a third of the step). Fills the first len(batch)
        entries of each array (the decode CUDA graphs pass views of their larger static buffers)."""
        bs = self.cache.block_size
        n = len(batch)
        seqs = [seq for seq, _ in batch]
        ps = [seq.num_computed for seq in seqs]
        if src is None:
            # The token at position p: an output token once the prompt has run (the usual decode step).
            ids[:n] = [s.output_ids[p - len(s.prompt_ids)] if p >= len(s.prompt_ids) else s.prompt_ids[p]
                       for s, p in zip(seqs, ps)]
        else:
            # Overlapped decoding: a token still on the GPU is taken there from row src[i] of the previous
            # step's picks (`DecodeGraphs.run_packed`); 0 is a placeholder the upload then overwrites.
            vals = []
            for s, p in zip(seqs, ps):
                k = p - len(s.prompt_ids)
                if k >= len(s.output_ids):
                    vals.append(0)
                    src.append(prev_rows[id(s)])
                else:
                    vals.append(s.output_ids[k] if k >= 0 else s.prompt_ids[p])
                    src.append(-1)
            ids[:n] = vals
        pos[:n] = ps
        if n < _BULK_DECODE_ROWS:
            # Few rows: a dozen whole-array numpy calls would cost more than these per-row ones.
            slot_l = []
            for i, seq in enumerate(seqs):
                p, blocks = ps[i], seq.blocks
                slot_l.append(blocks[p // bs] * bs + p % bs)
                tables[i, :len(blocks)] = blocks
            slots[:n] = slot_l
        else:
            _fill_tables(seqs, tables)
            blk, off = np.divmod(pos[:n], bs)
            slots[:n] = tables[np.arange(n), blk] * bs + off
        np.add(pos[:n], 1, out=ctx[:n])

    def launch_greedy(self, batch: list[tuple[Sequence, int]], prev_rows: dict[int, int]):
        """Enqueue a decode step whose tokens are picked on the GPU (argmax in the graph) and copied to the
        host without waiting; returns (pinned host tokens, event that marks them ready). Inputs still in
        flight come from the previous step's picks: `prev_rows` maps id(sequence) -> its row there.
        The caller checks `graphs.fits` and that every sequence is greedy with no logits processor."""
        src: list[int] = []
        self._stage_side_inputs(batch)
        out = self.graphs.run_greedy(lambda *views: self._pack_decode(batch, *views, src=src, prev_rows=prev_rows),
                                     len(batch), src)
        for seq, _ in batch:
            seq.num_computed += 1
        return out

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                logits_rows: torch.Tensor | None, window: int | None) -> torch.Tensor:
        """The model on one packed batch, eagerly (decode steps that fit the CUDA graphs never get here: `_run`
        packs them straight into the graphs' input mirror)."""
        return self.engine.model(input_ids, positions, meta, self.cache.layers, logits_rows=logits_rows,
                                 window=window)

    def _stage_side_inputs(self, batch: list[tuple[Sequence, int]]) -> None:
        """Per-token inputs besides the tokens (LoRA slots: runtime/lora_pool.py) into their fixed device
        columns, which the graphs and the eager path read."""
        for side in getattr(self.engine, "side_inputs", ()):
            side.stage(batch)

    def _run(self, batch: list[tuple[Sequence, int]], all_logits: bool, window: int | None) -> torch.Tensor:
        self._stage_side_inputs(batch)
        g = self.graphs
        if g is not None and g.fits(len(batch), window) and all(n == 1 for _, n in batch):
            # Packed straight into the graph's pinned input mirror: no metadata tensors, one upload.
            return g.run_packed(lambda *views: self._pack_decode(batch, *views), len(batch))
        host, lay = self._pack(batch)
        if self.prefill_graphs is not None:
            key = (lay.total, lay.nseq, max(lay.q_lens), window, all_logits)
            out = self.prefill_graphs.run(key, host, self.staging, lambda d: self._views(d, lay),
                                          lambda ids, pos, meta, rows: self.engine.model(
                                              ids, pos, meta, self.cache.layers,
                                              logits_rows=None if all_logits else rows, window=window))
            if out is not None:
                return out
        ids, pos, meta, self._rows = self._views(self.staging.to_device(host), lay)
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
