"""A request's state inside the runtime: its tokens, its cache blocks, and how far its prompt has run.

A request is one `Sequence`. A beam-search request starts as one sequence (its prompt) and, once its
first token is chosen, runs as `num_beams` child sequences (`beams`) that share the prompt's cache
blocks; the scheduler always schedules a request's beams together, since the beam step needs the
log-probs of every beam at once.
"""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any, Optional

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)  # identity semantics: requests are compared and removed by object, never by value
class Sequence:
    """One generation stream. `num_computed` tokens of `tokens` have their K/V in the cache."""
    prompt_ids: list[int]
    params: Any                       # SamplingParams
    sampling: Any = None              # sampler.RequestSamplingState
    request_id: int = field(default_factory=lambda: next(_ids))
    arrival: int = 0
    output_ids: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)
    num_computed: int = 0
    status: Status = Status.WAITING
    finish_reason: str | None = None
    window: int | None = None         # attention window in tokens (None: full context)
    user_prompt_ids: list[int] | None = None   # the request's own ids where prompt tables changed them
    want_prompt_logits: bool = False
    prompt_logits: list = field(default_factory=list)  # chunks of [n, vocab] when want_prompt_logits
    generation_logits: list | None = None  # [vocab] rows, one per generated token, when params.return_logits
    # beam search
    parent: Optional["Sequence"] = None
    beams: list["Sequence"] = field(default_factory=list)
    beam_state: Any = None            # sampler.BeamSearchState
    beam_results: list[tuple[list[int], float]] | None = None
    num_preemptions: int = 0
    # Overlapped decoding (runtime/overlap.py): tokens computed on the GPU but not yet on the host, and
    # whether this request's tokens can be picked on the GPU (greedy, no logits processor, no logits out).
    inflight: int = 0
    overlap_ok: bool = False

    def token_slice(self, start: int, n: int) -> list[int]:
        """tokens[start:start+n] without building the whole list (decode reads only the last token)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p:start - p + n]
        return (self.prompt_ids[start:start + n] + self.output_ids[:max(0, start + n - p)])[:n]

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model (the whole prompt at first, then the last sampled token)."""
        return self.length + self.inflight - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def streams(self) -> list["Sequence"]:
        """The sequences that run through the model for this request: its beams, or itself."""
        return self.beams or [self]

    @property
    def request(self) -> "Sequence":
        return self.parent if self.parent is not None else self

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED
