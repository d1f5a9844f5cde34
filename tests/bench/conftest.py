"""`trt-gpt bench` tests: `random_engine(layers, *build_flags)` builds a tiny random-weight engine through the
CLI (`trt-gpt config` + `trt-gpt build`, vocabulary 300, hidden 32, 2 heads, float32, batch 8, 32-token
prompts) and returns its directory."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from trt_gpt.testing import run_cli


@pytest.fixture(scope="session")
def random_engine(tmp_path_factory) -> Callable[..., Path]:
    def make(layers: int, *build_flags: str) -> Path:
        t = tmp_path_factory.mktemp("bench_engine")
        run_cli("config", "--vocab_size", "300", "--hidden_size", "32", "--num_hidden_layers", str(layers),
                "--num_attention_heads", "2", "--dtype", "float32", "--output_path", t / "cfg.json")
        run_cli("build", "--model_config", t / "cfg.json", "--output_dir", t / "engine", "--max_input_len", "32",
                "--max_batch_size", "8", *build_flags)
        return t / "engine"
    return make
