"""Held-out perplexity through the engine equals HF transformers' cross-entropy over the same windows."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.errors import TrtGptError
from trt_gpt.eval.heldout import perplexity, windows
from trt_gpt.runtime.llm import LLM
from trt_gpt.testing import engine_from_checkpoint, random_prompts, save_tiny


def test_perplexity_equals_hf_cross_entropy(tmp_path):
    hf = save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=97, n_positions=64,
                                               initializer_range=0.2, bos_token_id=0, eos_token_id=0), tmp_path / "hf")
    llm = LLM(engine_from_checkpoint(tmp_path / "hf", tmp_path), device="cpu")
    ids = random_prompts(97, [90], seed=1)[0]
    total, count = 0.0, 0
    for i in range(5):                       # 5 windows of 16; the tail (10 tokens) and beyond are unused
        w = torch.tensor(ids[i * 16:(i + 1) * 16])
        with torch.no_grad():
            logits = hf(w[None]).logits[0].double()
        total += F.cross_entropy(logits[:-1], w[1:], reduction="sum").item()
        count += 15
    want = math.exp(total / count)
    assert perplexity(llm, ids, 16, batch=2) == pytest.approx(want, rel=1e-5)
    assert perplexity(llm, ids, 16, max_windows=2) != pytest.approx(want, rel=1e-5)


def test_window_errors():
    assert windows(list(range(10)), 4) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    with pytest.raises(TrtGptError, match="3 tokens, fewer than one window of 4"):
        windows([1, 2, 3], 4)
    with pytest.raises(TrtGptError, match="window 1 must be at least 2"):
        windows([1, 2, 3], 1)
