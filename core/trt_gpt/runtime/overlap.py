"""Overlapped scheduling: enqueue decode step n+1 before reading step n's tokens on the host.

(Not the reference's "lookahead decoding", which drafts several tokens a step; this only hides the host's
per-step work behind the GPU's.)

A synchronous step ends with the host waiting for the sampled tokens, so scheduling, input packing and
the stop checks of the next step run while the GPU idles (at batch 1 that idle time is a fifth of a
small model's step). When every sequence of a decode step is greedy with no logits processor, its
token is the argmax that the decode CUDA graph computes anyway, so it can stay on the GPU: the next
step's graph takes its input token there (`DecodeGraphs.run_packed`), the host learns the tokens one
step later, and the stop checks run while the GPU computes the following step.

A prompt step whose every sequence finishes its prompt there (no token sampled yet) and would decode
with the graphs afterwards is held the same way (`holds`, `hold`): its picks, the argmax of its logits,
go where the next decode graph reads its input tokens, so the first decode step is enqueued right behind
the prefill instead of after the first token's round trip to the host.

The price is one step computed past a finish: a sequence that stops (end id, stop word) at step n has
already been enqueued for step n+1; that token is dropped. A step that is not eligible (a prompt
chunk, sampling, beams, logits requested) first waits for the tokens in flight and then runs
synchronously, so outputs are identical either way. TRT_GPT_OVERLAP=0 switches it off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..env import env_setting, flag
from .sequence import Sequence, Status

ENV_VAR = "TRT_GPT_OVERLAP"


def overlap_ok(seq: Sequence) -> bool:
    """Whether a request's tokens may be picked by the graph's argmax: plain greedy decoding whose
    logits nothing changes (no penalties, bad words or min_tokens ban of end_id) and nobody reads."""
    st = seq.sampling
    return (st is not None and st.quiet and st._min_ban == 0 and seq.generation_logits is None
            and seq.beam_state is None and seq.parent is None)


@dataclass
class PendingStep:
    """An enqueued step whose picks have not reached the host yet."""
    seqs: list[Sequence]
    host: torch.Tensor          # pinned int32 [len(seqs)], valid once `ready` has completed
    ready: torch.cuda.Event
    rows: dict[int, int]        # id(sequence) -> its row in this step


class OverlappedScheduler:
    """Keeps at most one greedy decode step in flight ahead of the host (see the module docstring)."""

    def __init__(self, executor):
        self.executor = executor
        self.pending: PendingStep | None = None

    @staticmethod
    def enabled(executor) -> bool:
        return executor.graphs is not None and env_setting(ENV_VAR, flag, True)

    def eligible(self, batch: list[tuple[Sequence, int]]) -> bool:
        g = self.executor.graphs
        if not g.fits(len(batch), batch[0][0].window):
            return False
        w = g.window
        return all(n == 1 and s.overlap_ok and s.window == w for s, n in batch)

    def launch(self, batch: list[tuple[Sequence, int]]) -> PendingStep | None:
        """Enqueue `batch`; returns the step it supersedes as pending (to be resolved by the caller)."""
        prev = self.pending
        host, ready = self.executor.launch_greedy(batch, prev.rows if prev is not None else {})
        seqs = [s for s, _ in batch]
        for s in seqs:
            s.inflight += 1
        self.pending = PendingStep(seqs, host, ready, {id(s): i for i, s in enumerate(seqs)})
        return prev

    def holds(self, batch: list[tuple[Sequence, int]]) -> bool:
        """Whether `batch` (before it runs) is a prompt step that `hold` may keep pending: every sequence's
        prompt ends in this step with nothing sampled yet, and its decode steps would take the graphs."""
        if not batch:
            return False
        g = self.executor.graphs
        w = g.window
        return g.fits(len(batch), batch[0][0].window) and all(
            s.overlap_ok and s.window == w and not s.output_ids and s.num_computed + n == len(s.prompt_ids)
            for s, n in batch)

    def hold(self, batch: list[tuple[Sequence, int]], logits: torch.Tensor) -> None:
        """Keep a step that `holds` pending: its greedy picks (argmax of `logits` [len(batch), vocab], as
        the sampler takes them) stay on the GPU for the next decode step and reach the host later."""
        host, ready = self.executor.graphs.stash_picks(logits.argmax(dim=-1))
        seqs = [s for s, _ in batch]
        for s in seqs:
            s.inflight += 1
        self.pending = PendingStep(seqs, host, ready, {id(s): i for i, s in enumerate(seqs)})

    def take(self) -> PendingStep | None:
        prev, self.pending = self.pending, None
        return prev

    @staticmethod
    def tokens(step: PendingStep) -> tuple[list[Sequence], list[int]]:
        """Wait for `step`'s picks; returns the sequences still live and their tokens (the in-flight
        count of every sequence of the step drops by one)."""
        step.ready.synchronize()
        toks = step.host.tolist()
        live, live_toks = [], []
        for s, t in zip(step.seqs, toks):
            s.inflight -= 1
            if s.status is not Status.FINISHED:   # finished (or cancelled) one step earlier: drop the token
                live.append(s)
                live_toks.append(t)
        return live, live_toks
