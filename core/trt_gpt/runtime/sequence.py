"""A request's state inside the runtime: its tokens, its cache blocks, and how far its prompt has run."""
from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
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
    want_prompt_logits: bool = False
    prompt_logits: list = field(default_factory=list)  # chunks of [n, vocab] when want_prompt_logits

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_pending(self) -> int:
        """Tokens not yet run through the model (the whole prompt at first, then the last sampled token)."""
        return self.length - self.num_computed

    @property
    def in_prefill(self) -> bool:
        return self.num_computed < len(self.prompt_ids)
