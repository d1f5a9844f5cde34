"""`trt-gpt variants list`: the test suite's dummy variant, installed for its tests, stays out of the user's
listing unless asked for with --all; it is still discovered and usable (tests/test_plugins.py)."""
from __future__ import annotations

import importlib.util
import json

import pytest

from trt_gpt.testing import run_cli


@pytest.mark.skipif(importlib.util.find_spec("trt_gpt_dummy") is None,
                    reason="pip install -e tests/plugins/dummy_variant")
def test_hidden_variant_listed_only_with_all(monkeypatch):
    import os

    monkeypatch.setenv("TRT_GPT_PLUGINS", os.environ.get("TRT_GPT_PLUGINS", "gpt2") + ",dummy")   # the suite's own
    shown = {r["name"] for r in json.loads(run_cli("variants", "list", "--json").stdout)}
    every = {r["name"] for r in json.loads(run_cli("variants", "list", "--all", "--json").stdout)}
    assert "gpt2" in shown and "dummy-gpt" not in shown
    assert every - shown == {"dummy-gpt"}
    assert "dummy" not in run_cli("variants", "list").stdout
