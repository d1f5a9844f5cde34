"""CUDA graphs for decode steps: the model's forward for a batch of one-token-per-sequence steps is
captured once per batch size at engine load and replayed, removing the per-kernel launch cost that
dominates small-batch decoding.

A step of `b` sequences replays the graph of the smallest captured size >= b; the padding rows write
nothing to the cache (slot -1) and their logits are dropped. The split count of the decode attention
kernel is fixed at capture; any split count is correct for any context, but the right one differs: at
small batch sizes each size is captured for a few context caps (CONTEXT_CAPS, then max_seq_len), and a
step replays the graph of the smallest cap >= its longest context. A short context then runs in a few
splits instead of dozens of empty ones feeding the merge, and a long one still spreads over the GPU
(H100, batch 1, 128-token context: SantaCoder-1B's step 1.113 -> 1.083 ms; GPT-2 medium, whose 16 KV heads
already fill more SMs, 0.492 -> 0.495, within noise).
Only the Triton attention backend is captured (the torch reference synchronises with the host).

Every graph reads one static int32 input buffer, which the executor fills through a pinned host mirror,
and leaves its greedy picks (argmax) in a static buffer that overlapped decoding
(overlap.py) feeds to the next step without a round trip through the host: the buffer's `feed` row
names, per row, the previous replay's pick that is its input token, and the graph's embedding reads it
there (no gather kernel between replays). The graph also stores the picks straight into one of two pinned
host buffers, the one the upload's `aux[0]` names (`triton_argmax.HostPicks`): the host reads its tokens
with no device-to-host copy queued between two replays. The two alternate, so a step never overwrites
picks the host has not read (it reads step n's before it enqueues step n + 2). Where the GPU cannot
store to pinned memory, or TRT_GPT_HOST_PICKS=0, the picks are copied after each replay instead.

Inputs come the same way at batch sizes up to STAGED_SIZES: the graph's first kernel reads them from the
pinned mirror itself (`triton_stage`), instead of a host-to-device copy queued before each replay (~11 µs
of GPU time a step on an H200). A captured kernel reads a fixed address, so there are two mirrors and two
graphs per (size, cap), one on each mirror; steps alternate between them, and a mirror is refilled only
after the replay that read it has completed (in overlapped decoding, long before: the host reads step n's
picks before it enqueues step n + 2). Larger steps, TRT_GPT_GRAPH_INPUTS=copy, or a GPU whose kernels
cannot reach pinned memory (one probe at load), keep the copy, from the same alternating mirrors.

`eager=True` keeps the static buffers and the whole protocol but runs the forward instead of replaying
a graph: it is how the protocol is tested on machines without CUDA (Triton kernels interpreted).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from ..env import choice, env_setting, flag
from ..kernels.metadata import AttentionMetadata
from .step_layout import StepLayout

DEFAULT_SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 320, 384, 448, 512,
                 640, 768, 896, 1024)

Fill = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray], None]
# Batch sizes up to CAPPED_SIZES get one graph per context cap (at larger sizes one split already fills
# the GPU for all but the longest contexts, and graphs per cap would only cost capture time).
CONTEXT_CAPS = (256, 1024)
CAPPED_SIZES = 16
# Batch sizes whose graphs read their inputs from the pinned mirror (`triton_stage`): at larger sizes the
# copy is a small part of the step and the block tables it moves grow with the batch.
STAGED_SIZES = 16


class _HostEvent:
    """The CPU stand-in for a CUDA event: work on CPU tensors is done when the call returns."""

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        pass


class DecodeGraphs:
    def __init__(self, model: Any, kv_layers: list, max_batch: int, max_blocks: int, max_seq_len: int,
                 device: torch.device, window: int | None = None, sizes: tuple[int, ...] = DEFAULT_SIZES,
                 eager: bool = False):
        self.model, self.kv_layers, self.window = model, kv_layers, window
        self.eager = eager or device.type != "cuda"
        self.sizes = sorted({s for s in sizes if s <= max_batch} | {max_batch})
        n = self.sizes[-1]
        self.n, self.max_blocks, self.max_seq_len = n, max_blocks, max_seq_len
        # [ids | positions | slots | ctx | feed | aux | tables n*max_blocks] (step_layout); aux[0] names the
        # host picks buffer of the step
        lay = self.layout = StepLayout.for_decode_graphs(n, max_blocks)
        self.static = torch.zeros(lay.size, dtype=torch.int32, device=device)
        self.ids, self.pos, self.slots, self.ctx, self.feed = (
            lay.view(self.static, name, n) for name in ("ids", "positions", "slots", "ctx", "feed"))
        self.tables = lay.view(self.static, "tables").view(n, max_blocks)
        self.slots.fill_(-1)
        self.ctx.fill_(1)
        pinned = device.type == "cuda"
        mirrors = self.static.cpu().repeat(2, 1)       # two host mirrors of the static buffer, alternating
        self.mirrors = mirrors.pin_memory() if pinned else mirrors
        self._mirror = 1
        self._views = [self._make_views(0), self._make_views(1)]
        self.cu = torch.arange(n + 1, dtype=torch.int32, device=device)  # decode: one row per sequence
        self.tokens_out = torch.zeros(n, dtype=torch.int32, device=device)
        new_event = torch.cuda.Event if device.type == "cuda" else _HostEvent
        self._mirror_free = [new_event(), new_event()]   # recorded after the last read of each mirror
        self.tok_host = torch.zeros(2, n, dtype=torch.int32)   # the two alternating host picks buffers
        if pinned:
            self.tok_host = self.tok_host.pin_memory()
        self.tok_events = [new_event(), new_event()]
        self._tok_i = 0
        index = lay.view(self.static, "aux", 1)
        reachable = self._pinned_reachable(index)
        # the graphs store their picks in host memory, unless TRT_GPT_HOST_PICKS=0 (a copy after each replay)
        self.host_picks = None
        if reachable and env_setting("TRT_GPT_HOST_PICKS", flag, True):
            from ..kernels.triton_argmax import HostPicks

            self.host_picks = HostPicks(self.tok_host, index)
        # small graphs read their inputs from the mirrors, unless TRT_GPT_GRAPH_INPUTS=copy
        staged = reachable and env_setting("TRT_GPT_GRAPH_INPUTS", choice("stage", "copy"), "stage") == "stage"
        self.staged_sizes = STAGED_SIZES if staged else 0
        self.caps = sorted({c for c in CONTEXT_CAPS if c < max_seq_len} | {max_seq_len})
        Key = tuple[int, int, int]   # (batch size, context cap, mirror the graph reads; 0 if not staged)
        self.graphs: dict[Key, tuple[torch.cuda.CUDAGraph | None, torch.Tensor | None]] = {}
        keys = [(size, cap, j) for size in reversed(self.sizes)   # largest first: later graphs reuse its pool
                for cap in (self.caps if size <= CAPPED_SIZES else [max_seq_len])
                for j in self._mirrors_read(size)]
        if self.eager:
            self.graphs = {key: (None, None) for key in keys}
            return
        self.pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for key in keys:
                self.graphs[key] = self.capture(key)

    def _pinned_reachable(self, index: torch.Tensor) -> bool:
        """Whether this device's kernels can store to and load from pinned host memory: one probe of each
        (the host picks' store and the input stage's load), before any capture. Without it the picks and the
        inputs take copies."""
        if self.tokens_out.device.type != "cuda":
            return True
        from ..kernels.triton_argmax import HostPicks, store_host_picks
        from ..kernels.triton_stage import stage_inputs

        try:
            store_host_picks(self.tokens_out[:1], HostPicks(self.tok_host, index))
            stage_inputs(self.mirrors[0][:1], self.static)   # the mirror is a copy of static: a no-op write
            torch.cuda.synchronize()
        except (RuntimeError, ValueError):
            return False
        return True

    def host_views(self, j: int) -> tuple:
        """numpy views of mirror j: (ids, pos, slots, ctx, tables [n, max_blocks]), feed, aux."""
        return self._views[j]

    def _make_views(self, j: int) -> tuple:
        h, n, lay = self.mirrors[j].numpy(), self.n, self.layout
        rows = (*(lay.view(h, name, n) for name in ("ids", "positions", "slots", "ctx")),
                lay.view(h, "tables").reshape(n, self.max_blocks))
        return rows, lay.view(h, "feed", n), lay.view(h, "aux")

    def _mirrors_read(self, size: int) -> tuple[int, ...]:
        """The mirrors whose graphs a batch size has: both where the graph stages its inputs, else one."""
        return (0, 1) if size <= self.staged_sizes else (0,)

    def entry(self, key: tuple[int, int], j: int = 0) -> tuple[int, int, int]:
        """The graph of (size, cap) `key` that reads mirror j (the one graph, where the size is not staged)."""
        return (*key, j if key[0] <= self.staged_sizes else 0)

    def recapture(self, key: tuple[int, int]) -> None:
        """Capture every graph of (size, cap) `key` again (benchmarks/tune_decode.py, after a config change)."""
        for j in self._mirrors_read(key[0]):
            self.graphs[(*key, j)] = (None, None)      # free the old graph first
            torch.cuda.synchronize()
            self.graphs[(*key, j)] = self.capture((*key, j))

    def key_for(self, b: int, max_ctx: int) -> tuple[int, int]:
        """The (size, cap) graph a step of `b` rows whose longest context is `max_ctx` replays."""
        size = next(s for s in self.sizes if s >= b)
        if size > CAPPED_SIZES:
            return size, self.max_seq_len
        return size, next((c for c in self.caps if c >= max_ctx), self.max_seq_len)

    def _meta(self, b: int, cap: int) -> AttentionMetadata:
        return AttentionMetadata(cu_q_lens=self.cu[:b + 1], context_lens=self.ctx[:b], block_tables=self.tables[:b],
                                 slot_mapping=self.slots[:b], max_q_len=1, max_context_len=cap)

    def _forward(self, b: int, cap: int, j: int) -> torch.Tensor:
        if b <= self.staged_sizes:
            from ..kernels.triton_stage import stage_inputs

            stage_inputs(self.mirrors[j][:self.upload_len(b)], self.static)
        return self.model(self.ids[:b], self.pos[:b], self._meta(b, cap), self.kv_layers, window=self.window,
                          feed=(self.feed[:b], self.tokens_out), picks=self.tokens_out[:b],
                          host_picks=self.host_picks)

    def capture(self, key: tuple[int, int, int]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the graph of (size, cap, mirror) `key`."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up compiles the Triton kernels outside the capture
            for _ in range(2):
                self._forward(*key)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._forward(*key)
        return graph, out

    def _replay(self, key: tuple[int, int, int], b: int) -> torch.Tensor:
        graph, out = self.graphs[key]
        if graph is None:
            out = self._forward(*key)
        else:
            graph.replay()
        return out[:b]

    def fits(self, n_rows: int, window: int | None) -> bool:
        """Whether a step of `n_rows` one-token sequences under `window` can replay a graph."""
        return window == self.window and 0 < n_rows <= self.sizes[-1]

    def run_packed(self, fill: Fill, b: int, src: list[int] | None = None, host_index: int = 0) -> torch.Tensor:
        """Logits [b, vocab] of a decode step whose inputs `fill(ids, pos, slots, ctx, tables)` writes into
        the first `b` rows of the host mirror (numpy views); valid until the next replay.

        `src` (filled by `fill`; overlapped decoding) names, per row, the row of the previous replay's
        argmax picks that is this row's input token, or -1 where the host wrote the token. With `host_picks`,
        the step's picks also land in host buffer `host_index`."""
        j = self._next_mirror()
        (ids, pos, slots, ctx, tables), feed, aux = self.host_views(j)
        fill(ids, pos, slots, ctx, tables)
        aux[0] = host_index
        # picks row + 1, 0 = the uploaded id; padding rows and a step without src take their own ids
        if src:
            feed[:b] = np.asarray(src, dtype=np.int32) + 1
        else:
            feed[:b] = 0
        key = self.key_for(b, int(ctx[:b].max()))
        size = key[0]
        # Padding rows attend to one cached slot and write nothing; their other inputs may be stale (a
        # stale table row still names valid blocks).
        ctx[b:size] = 1
        slots[b:size] = -1
        feed[b:size] = 0
        return self._launch(key, j, b)

    def _next_mirror(self) -> int:
        """The mirror the next step fills, once the replay or copy that last read it has completed."""
        j = self._mirror = self._mirror ^ 1
        self._mirror_free[j].synchronize()
        return j

    def _launch(self, key: tuple[int, int], j: int, b: int) -> torch.Tensor:
        """Replay the (size, cap) graph for a step whose inputs are in mirror j: a staged graph reads them
        there itself, a larger one gets them through a copy first."""
        if key[0] > self.staged_sizes:
            n_up = self.upload_len(b)
            self.static[:n_up].copy_(self.mirrors[j][:n_up], non_blocking=True)
            self._mirror_free[j].record()
            return self._replay(self.entry(key), b)
        out = self._replay(self.entry(key, j), b)
        self._mirror_free[j].record()
        return out

    def upload_len(self, b: int) -> int:
        """Entries of the one upload of a `b`-row step: the row regions and the first b table rows are
        contiguous."""
        return self.layout.offsets["tables"] + b * self.max_blocks

    def run_greedy(self, fill: Fill, b: int, src: list[int]) -> tuple[torch.Tensor, Any]:
        """`run_packed`, its argmax picks landing in a host buffer without waiting (stored there by the
        graph, or copied after it).

        Returns (host int32 [b], event recorded after the replay or copy). Two host buffers alternate, so
        the next step never overwrites picks the caller has not read yet."""
        self._tok_i ^= 1
        self.run_packed(fill, b, src, host_index=self._tok_i)
        host = self.tok_host[self._tok_i][:b]
        if self.host_picks is None:
            host.copy_(self.tokens_out[:b], non_blocking=True)
        ev = self.tok_events[self._tok_i]
        ev.record()
        return host, ev

    def stash_picks(self, picks: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """Picks of a step run outside the graphs (a prompt's last chunk, `OverlappedScheduler.hold`), put where the
        next graph's input feed reads them; returns (host int32 [b], event), as `run_greedy` does."""
        b = picks.shape[0]
        self.tokens_out[:b].copy_(picks)
        self._tok_i ^= 1
        host = self.tok_host[self._tok_i][:b]
        host.copy_(self.tokens_out[:b], non_blocking=True)
        ev = self.tok_events[self._tok_i]
        ev.record()
        return host, ev
