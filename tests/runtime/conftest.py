"""Fixtures for runtime tests: one tiny fp32 GPT-2 (HF oracle + engine with small cache blocks).

The engine runs on CPU; TRT_GPT_TEST_DEVICE=cuda runs the same tests with the engine on a GPU (the HF
oracle stays on CPU).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

# The parity tests' config: random weights large enough (initializer_range 0.2) for varied greedy text.
TINY_GPT2 = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128, initializer_range=0.2,
                 bos_token_id=0, eos_token_id=0)


@dataclass
class TinyGPT2:
    hf: Any              # transformers GPT2LMHeadModel, the oracle
    engine: Path         # engine dir: tokens_per_block=4, max_beam_width=4, max_input_len=64, max_seq_len=128

    def llm(self, **kw: Any):
        from trt_gpt import LLM

        return LLM(self.engine, device=os.environ.get("TRT_GPT_TEST_DEVICE", "cpu"), **kw)

    def hf_generate(self, prompt: list[int], **kw: Any) -> list[int]:
        """HF generate's new tokens (greedy unless kw says otherwise; no end token unless given)."""
        ids = torch.tensor([prompt])
        kw.setdefault("do_sample", False)
        kw.setdefault("eos_token_id", None)
        with torch.no_grad():
            out = self.hf.generate(ids, attention_mask=torch.ones_like(ids), pad_token_id=0, **kw)
        return out[0, len(prompt):].tolist()


@pytest.fixture(scope="session")
def tiny_gpt2_engine(tmp_path_factory) -> TinyGPT2:
    from transformers import GPT2Config, GPT2LMHeadModel

    from trt_gpt.testing import engine_from_checkpoint, save_tiny

    d = tmp_path_factory.mktemp("tiny_gpt2")
    hf = save_tiny(GPT2LMHeadModel, GPT2Config(**TINY_GPT2), d / "hf")
    engine = engine_from_checkpoint(d / "hf", d, tokens_per_block=4, max_beam_width=4, max_input_len=64,
                                    max_batch_size=16)
    return TinyGPT2(hf, engine)
