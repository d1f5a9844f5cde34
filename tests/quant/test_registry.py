"""quant/registry.quantize_state: a rank's quantized tensors all live on the device of its float weights,
including scales a plugin makes from constants (random-weight engines: activation and KV scales of 1), which
a GPU kernel could not read from host memory."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trt_gpt.config import ModelConfig, QuantConfig
from trt_gpt.model.gpt import expected_tensors
from trt_gpt.quant.registry import quantize_state


@pytest.mark.parametrize("quant", [QuantConfig(quant_algo="FP8", kv_cache_quant_algo="FP8"),
                                   QuantConfig(quant_algo="W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN",
                                               kv_cache_quant_algo="INT8"),
                                   QuantConfig(quant_algo="W8A16", kv_cache_quant_algo="INT8")],
                         ids=lambda q: f"{q.quant_algo}+{q.kv_cache_quant_algo}")
def test_every_tensor_stays_on_the_weights_device(quant):
    cfg = ModelConfig(vocab_size=61, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, intermediate_size=64, quantization=quant)
    float_cfg = dataclasses.replace(cfg, quantization=QuantConfig())
    # "meta" stands in for a GPU: a tensor made on the CPU by the plugin shows up as a different device
    tensors = {k: torch.empty(shape, device="meta") for k, (shape, _) in expected_tensors(float_cfg).items()}
    out = quantize_state(tensors, cfg)
    assert set(out) == set(expected_tensors(cfg))
    assert {str(v.device) for v in out.values()} == {"meta"}
