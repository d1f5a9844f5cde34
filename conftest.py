"""Test-suite set-up: only this repository's own plugins load (a user's other installed plugins must not
change results), and fixtures for tiny checkpoints."""
from __future__ import annotations

import importlib.metadata
import os

import pytest
import torch


def _own_plugins() -> str:
    eps = importlib.metadata.entry_points(group="trt_gpt")
    return ",".join(ep.name for ep in eps if ep.dist and ep.dist.name.lower().replace("_", "-").startswith("trt-gpt"))


os.environ.setdefault("TRT_GPT_PLUGINS", _own_plugins())
# Triton reads TRITON_INTERPRET when it is first imported, and any test may import it first (the backend
# registry probes for it), so the CPU interpreter is switched on here, before anything else runs. It
# does not change which backend tests get: automatic choice takes Triton only on CUDA.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees plugins loaded under its own environment."""
    from trt_gpt.plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()
