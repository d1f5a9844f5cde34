"""ROUGE (Google's `rouge-score` package, the scorer behind HF `evaluate`'s "rouge") and perplexity."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from ..errors import TrtGptError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool = False) -> dict[str, float]:
    """Mean F-measure x 100 of each ROUGE type over the pairs.

    The settings of `evaluate.load("rouge")` as the reference summarize.py uses it (no stemmer, the
    scorer's default tokenizer; rougeLsum splits sentences on newlines), averaged plainly rather
    than bootstrap-resampled, so the numbers are deterministic.
    """
    try:
        from rouge_score import rouge_scorer
    except ImportError:
        raise TrtGptError("ROUGE needs the rouge-score package: pip install 'trt-gpt[eval]'") from None
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {t: 0.0 for t in ROUGE_TYPES}
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)      # rouge-score takes (target, prediction)
        for t in ROUGE_TYPES:
            totals[t] += scores[t].fmeasure
    return {t: 100.0 * v / len(predictions) for t, v in totals.items()}


def token_nll(logits: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
    """Negative log-likelihood (float64) of each of ids[1:] given `logits [len, vocab]` of ids."""
    if len(ids) < 2:
        raise TrtGptError("perplexity needs at least 2 tokens")
    lp = torch.log_softmax(logits[:len(ids) - 1].double(), dim=-1)
    target = torch.as_tensor(list(ids[1:]), dtype=torch.int64, device=lp.device)
    return -lp.gather(1, target[:, None])[:, 0]


def perplexity(logits: torch.Tensor, ids: Sequence[int]) -> float:
    """exp(mean negative log-likelihood) of ids[1:] given `logits [len, vocab]` of ids (float64)."""
    return math.exp(float(token_nll(logits, ids).mean()))
