"""CUDA graphs for prefill steps whose shape repeats (same token count, sequence count and longest chunk).

A prefill step launches ~12 kernels a layer from Python; at small token counts that launch work, not the
GPU, sets the time to first token (a 128-token prompt on a 32-layer model: ~16 ms of host time against
~5 ms of GPU work). Serving traffic repeats step shapes (fixed-size chunks, benchmark prompts), so a shape
seen a second time is captured once and replayed from then on.

The forward is a function of the packed int32 input buffer plus host values that the key fixes: the
token count T, the sequence count B, the longest query chunk (it picks the attention tile configuration
and grid), the attention window and whether every token's logits are wanted. Each graph owns a static
device copy of that buffer: a replay is one upload and one launch. Only steps of at most `MAX_TOKENS`
tokens are captured (larger ones are GPU-bound already), at most `MAX_GRAPHS` shapes per engine.
`eager=True` keeps the protocol without capture (tests without CUDA).
"""
from __future__ import annotations

import collections
from typing import Any, Callable

import torch

MAX_TOKENS = 512
MAX_GRAPHS = 16
SEEN_BEFORE_CAPTURE = 2


class PrefillGraphs:
    def __init__(self, eager: bool, pool: Any = None):
        self.eager = eager
        self.pool = pool
        self.entries: dict[tuple, tuple[torch.Tensor, Any, Any]] = {}
        self.seen: collections.Counter = collections.Counter()
        self.replays = 0

    def run(self, key: tuple, host: torch.Tensor, staging: Any, views: Callable[[torch.Tensor], tuple],
            forward: Callable[..., torch.Tensor]) -> torch.Tensor | None:
        """Logits of the step packed in `host` (valid until the next replay), or None when this shape is not
        (yet) graphed and the caller should run it eagerly. `views(d)` turns a device copy of the packed
        buffer into the forward's (ids, positions, metadata, rows) and `forward(*views)` runs the model."""
        entry = self.entries.get(key)
        if entry is None:
            self.seen[key] += 1
            if (self.seen[key] < SEEN_BEFORE_CAPTURE or key[0] > MAX_TOKENS
                    or len(self.entries) >= MAX_GRAPHS):
                return None
            static = torch.empty_like(host, device=staging.device)
            staging.upload_into(host, static)
            entry = self.entries[key] = self._capture(static, views, forward)
        else:
            staging.upload_into(host, entry[0])
        static, graph, out = entry
        self.replays += 1
        if graph is None:
            return forward(*views(static))
        graph.replay()
        return out

    def _capture(self, static: torch.Tensor, views: Callable, forward: Callable) -> tuple:
        if self.eager:
            return static, None, None
        args = views(static)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            # Warm-up outside the capture (allocator state, lazy initialisation). It writes this step's
            # K/V slots, which the replay below rewrites with the same values.
            forward(*args)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = forward(*args)
        return static, graph, out
