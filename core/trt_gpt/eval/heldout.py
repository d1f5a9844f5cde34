"""Held-out perplexity of an engine on a long token stream: non-overlapping windows scored through
`LLM.score` (one packed prefill per batch of windows), every token after a window's first predicted once.

Used to judge quantized engines against the float one on text the model never saw.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from ..errors import TrtGptError
from .metrics import token_nll


def windows(ids: Sequence[int], window: int, max_windows: int | None = None) -> list[list[int]]:
    """Consecutive non-overlapping windows of `window` tokens (a shorter tail is dropped)."""
    if window < 2:
        raise TrtGptError(f"perplexity: window {window} must be at least 2 tokens")
    n = len(ids) // window if max_windows is None else min(max_windows, len(ids) // window)
    if n < 1:
        raise TrtGptError(f"perplexity: {len(ids)} tokens, fewer than one window of {window}")
    return [list(ids[i * window:(i + 1) * window]) for i in range(n)]


def perplexity(llm: Any, ids: Sequence[int], window: int, max_windows: int | None = None, batch: int = 4) -> float:
    """exp(mean NLL) over the windows of `ids`, computed in float64 from the engine's fp32 logits."""
    chunks = windows(ids, window, max_windows)
    total, count = 0.0, 0
    for b in range(0, len(chunks), batch):
        part = chunks[b:b + batch]
        for w, logits in zip(part, llm.score(part)):
            nll = token_nll(logits, w)
            total += float(nll.sum())
            count += nll.numel()
    return math.exp(total / count)
