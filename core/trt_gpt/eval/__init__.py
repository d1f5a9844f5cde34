"""Evaluation helpers for `trt-gpt summarize`: JSONL data sets, ROUGE (via `rouge-score`) and perplexity."""
from __future__ import annotations

from .dataset import read_jsonl
from .metrics import ROUGE_TYPES, perplexity, rouge

__all__ = ["read_jsonl", "rouge", "perplexity", "ROUGE_TYPES"]
