"""Shared cases of the fused-path model tests (test_fused_layers, test_fused_lora): the environment that
turns the fused path on (interpreted Triton without a GPU), model configurations the tiny HF models do not
cover, and a model with random weights away from identity norms and zero biases."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.config import ModelConfig
from trt_gpt.model import GPTForCausalLM, random_weights

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def fused_env(monkeypatch):
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "4")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "0")
    if DEVICE == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "1")


CONFIGS = {
    "swiglu rmsnorm no-bias": dict(hidden_act="swiglu", norm_type="rmsnorm", bias=False),
    "layernorm1p residual-multiplier": dict(norm_type="layernorm1p", residual_multiplier=0.5,
                                            hidden_act="gelu"),
    "squared-relu rope": dict(hidden_act="squared-relu", position_embedding_type="rope_gpt_neox",
                              rotary_pct=0.5),
}


def random_model(cfg: ModelConfig):
    from trt_gpt.kernels.backends import get_attention_backend

    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    state = random_weights(cfg, DEVICE, seed=1)
    g = torch.Generator(device=DEVICE).manual_seed(3)
    for k, v in state.items():   # norms and biases away from their identity values (float tensors only)
        if v.dim() == 1 and v.is_floating_point() and v.numel() > 1:
            v.add_(torch.randn(v.shape, generator=g, device=DEVICE) * 0.3)
        if k.endswith("cache_scaling_factor"):
            v.fill_(0.02)   # 8-bit caches: a scale that the activations of these weights use
    model.load_state_dict(state, assign=True)
    model.setup_runtime(torch.device(DEVICE), 32, get_attention_backend(DEVICE, torch.float32))
    return model
