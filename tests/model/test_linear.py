"""The linear-layer factory: a quantizer plugin's weight format reaches the meta-model, the checkpoint checks and
the forward pass; row-parallel adapters add up exactly across ranks."""
from __future__ import annotations

import sys
import types

import pytest
import torch
import torch.nn.functional as F

from trt_gpt.config import ModelConfig, QuantConfig
from trt_gpt.convert import check_rank_tensors
from trt_gpt.errors import TrtGptError
from trt_gpt.hookspecs import hookimpl
from trt_gpt.model import GPTForCausalLM, expected_tensors, random_weights
from trt_gpt.model.linear import Linear, LinearMethod, linears
from trt_gpt.model.parallel import TPGroup
from trt_gpt.plugins import get_plugins


class HalfScaled(LinearMethod):
    """A toy format (float64 test oracle below): int8 weights with one float scale per output row."""
    name = "toy"
    small_batch_fusions = None

    def create_weights(self, layer, in_features, out_features):
        layer.add_param("weight", (out_features, in_features), torch.int8)
        layer.add_param("per_channel_scale", (out_features,))

    def apply(self, layer, x, bias):
        w = layer.weight.to(x.dtype) * layer.per_channel_scale.to(x.dtype)[:, None]
        return F.linear(x, w, bias)


class ToyQuantizer:
    name = "toy"
    quant_algos = ("TOY_W8",)
    kv_cache_quant_algos = ()

    def linear_method(self, cfg, role, layer_idx):
        return None if role == "lm_head" else HalfScaled()

    def quantize(self, tensors, cfg, stats=None):
        out = dict(tensors)
        for name, t in tensors.items():
            if name.endswith(("qkv.weight", "dense.weight", "fc.weight", "proj.weight")):
                scale = t.float().abs().amax(dim=1).clamp(min=1e-8) / 127
                out[name] = torch.round(t.float() / scale[:, None]).clamp(-127, 127).to(torch.int8)
                out[name.replace("weight", "per_channel_scale")] = scale.to(t.dtype)
        return out


@pytest.fixture
def toy_plugin():
    mod = types.ModuleType("toy_quant_plugin")
    mod.register_quantizers = hookimpl(lambda register: register(ToyQuantizer()))
    get_plugins().pm.register(mod, name="toy_quant_plugin")
    yield
    sys.modules.pop("toy_quant_plugin", None)


CFG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)


def test_quantizer_format_reaches_meta_model_and_checks(toy_plugin):
    cfg = ModelConfig(**CFG, quantization=QuantConfig(quant_algo="TOY_W8"))
    exp = expected_tensors(cfg)
    assert exp["transformer.layers.0.attention.qkv.weight"] == ((96, 32), torch.int8)
    assert exp["transformer.layers.1.mlp.proj.per_channel_scale"] == ((32,), None)
    assert exp["lm_head.weight"] == ((97, 32), None)    # the quantizer left lm_head in float
    state = random_weights(cfg)
    check_rank_tensors(state, cfg, "test", torch.float32)
    state.pop("transformer.layers.0.mlp.fc.per_channel_scale")
    with pytest.raises(TrtGptError, match="missing tensor 'transformer.layers.0.mlp.fc.per_channel_scale'"):
        check_rank_tensors(state, cfg, "test", torch.float32)


def test_quantized_forward_matches_dequantized_float64(toy_plugin):
    cfg = ModelConfig(**CFG, quantization=QuantConfig(quant_algo="TOY_W8"))
    with torch.device("meta"):
        model = GPTForCausalLM(cfg)
    model.load_state_dict(random_weights(cfg), strict=True, assign=True)
    qkv = model.transformer.layers[0].attention.qkv
    assert isinstance(qkv, Linear) and qkv.method.name == "toy"
    assert all(m.method.name == "toy" for n, m in linears(model) if not n.endswith("lm_head"))
    x = torch.randn(3, 32)
    want = x.double() @ (qkv.weight.double() * qkv.per_channel_scale.double()[:, None]).T + qkv.bias.double()
    torch.testing.assert_close(qkv(x).double(), want, atol=1e-5, rtol=1e-5)


def test_unclaimed_algorithm_is_refused():
    cfg = ModelConfig(**CFG, quantization=QuantConfig(quant_algo="W2A2_UNKNOWN"))
    with pytest.raises(TrtGptError, match="quant_algo 'W2A2_UNKNOWN' is not implemented by any loaded plugin"):
        expected_tensors(cfg)


class TwoRanks(TPGroup):
    """Rank 0's view of a two-rank group whose other rank's partial sum is given."""
    size = 2

    def __init__(self, other):
        self.other = other

    def all_reduce(self, x):
        return x + self.other


def test_row_parallel_adapter_adds_up_across_ranks():
    """An adapter on a row-parallel layer sees only its input slice; the all-reduce must give the full delta."""
    torch.manual_seed(0)
    x, w, a, b, bias = torch.randn(5, 8), torch.randn(6, 8), torch.randn(2, 8), torch.randn(6, 2), torch.randn(6)
    full = x.double() @ w.double().T + (x.double() @ a.double().T) @ b.double().T + bias.double()
    halves = []
    for r in range(2):
        lin = Linear("proj", 4, 6, True, TPGroup())
        lin.weight = torch.nn.Parameter(w[:, 4 * r:4 * r + 4].clone())
        lin.bias = torch.nn.Parameter(bias.clone())
        a_r = a[:, 4 * r:4 * r + 4]
        lin.adapter = lambda xs, y, a_r=a_r: y + (xs @ a_r.T) @ b.T
        halves.append(lin)
    other = halves[1].method.apply(halves[1], x[:, 4:], None)
    other = halves[1].adapter(x[:, 4:], other)
    halves[0].tp = TwoRanks(other)
    torch.testing.assert_close(halves[0](x[:, :4]).double(), full, atol=1e-5, rtol=1e-5)


def test_check_fusions_names_what_a_format_does_not_fuse():
    class NormOnly(LinearMethod):
        name = "toy"
        small_batch_fusions = frozenset({"norm"})

    NormOnly().check_fusions("layer", gate=None, argmax=None)      # nothing asked: nothing to refuse
    with pytest.raises(ValueError, match="layer: the toy small-batch kernel does not fuse argmax, gate"):
        NormOnly().check_fusions("layer", gate=object(), argmax=object(), kv_write=None)
