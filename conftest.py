"""Test-suite set-up: only this repository's own plugins load (a user's other installed plugins must not
change results), and fixtures for tiny checkpoints."""
from __future__ import annotations

import importlib.metadata
import os

import pytest


def _own_plugins() -> str:
    eps = importlib.metadata.entry_points(group="trt_gpt")
    return ",".join(ep.name for ep in eps if ep.dist and ep.dist.name.lower().replace("_", "-").startswith("trt-gpt"))


os.environ.setdefault("TRT_GPT_PLUGINS", _own_plugins())
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Each test sees plugins loaded under its own environment."""
    from trt_gpt.plugins import reset_plugins

    reset_plugins()
    yield
    reset_plugins()
