"""ModelConfig.validate() takes its activation, norm and position-encoding names from the plugin registries:
a name a loaded plugin registers is valid, one no plugin registers is a one-line error listing the known."""
from __future__ import annotations

import sys

import pytest
import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError

PLUGIN = '''
import torch
from torch import nn
from trt_gpt.hookspecs import hookimpl
from trt_gpt_plugins.positions import RotaryEmbedding


class HalfRotary(RotaryEmbedding):
    """RoPE computed by its own `apply` (no `style`): the model must not hand it to the fused kernel."""
    style = "test-half"


class ScaleNorm(nn.Module):
    def __init__(self, size, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))
        self.bias = None
        self.eps = eps

    def forward(self, x):
        return x * self.weight / (x.norm(dim=-1, keepdim=True) + self.eps)


@hookimpl
def register_position_encodings(register):
    register("test_rope_plugin", HalfRotary)


@hookimpl
def register_norms(register):
    register("test_scalenorm", ScaleNorm)
'''


def _cfg(**kw) -> dict:
    d = dict(architecture="GPTForCausalLM", vocab_size=64, hidden_size=32, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=32)
    d.update(kw)
    return d


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / "trt_gpt_test_cfg_plugin.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("TRT_GPT_PLUGIN_MODULES", "trt_gpt_test_cfg_plugin")
    yield
    sys.modules.pop("trt_gpt_test_cfg_plugin", None)


@pytest.mark.parametrize("field,value", [("position_embedding_type", "test_rope_plugin"),
                                         ("norm_type", "test_scalenorm"), ("hidden_act", "no-such-act")])
def test_unregistered_names_are_refused(field, value):
    with pytest.raises(TrtGptError, match=f"field '{field}' is '{value}', expected one of .*registered by plugins"):
        ModelConfig.from_dict(_cfg(**{field: value}))


def test_builtin_names_come_from_the_registries():
    with pytest.raises(TrtGptError) as e:
        ModelConfig.from_dict(_cfg(norm_type="nope"))
    assert "layernorm, layernorm1p, rmsnorm" in str(e.value)
    with pytest.raises(TrtGptError) as e:
        ModelConfig.from_dict(_cfg(position_embedding_type="nope"))
    assert "learned_absolute, rope_gpt_neox" in str(e.value)


def test_plugin_position_encoding_and_norm_are_accepted_and_used(plugin):
    from trt_gpt.model.gpt import GPTForCausalLM

    cfg = ModelConfig.from_dict(_cfg(position_embedding_type="test_rope_plugin", norm_type="test_scalenorm"))
    model = GPTForCausalLM(cfg)
    assert type(model.transformer.ln_f).__name__ == "ScaleNorm"
    model.setup_runtime(torch.device("cpu"), 32)
    assert type(model.rope).__name__ == "HalfRotary"
