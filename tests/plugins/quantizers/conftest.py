"""Quantizer-plugin tests: a fixture registering this package's W8A8 and FP8 quantizers (tests register them
explicitly, so they run under any plugin allowlist)."""
from __future__ import annotations

import sys
import types

import pytest

from trt_gpt.hookspecs import hookimpl
from trt_gpt.plugins import get_plugins


@pytest.fixture
def w8a8_plugins():
    from trt_gpt_plugins.quantizers.fp8 import FP8Quantizer
    from trt_gpt_plugins.quantizers.smoothquant import SmoothQuantQuantizer

    mod = types.ModuleType("w8a8_test_plugins")

    def register_quantizers(register):
        register(SmoothQuantQuantizer())
        register(FP8Quantizer())
    mod.register_quantizers = hookimpl(register_quantizers)
    get_plugins().pm.register(mod, name="w8a8_test_plugins")
    yield
    sys.modules.pop("w8a8_test_plugins", None)
