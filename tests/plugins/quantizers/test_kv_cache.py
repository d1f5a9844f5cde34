"""The KV-cache quantizer's per-layer K and V scales against float64 arithmetic written here: abs-max / 127
(INT8) or / 448 (FP8) of each layer's K and V columns of the qkv output, K's bound through the rotary
embedding's pairs, the same scales on every tensor-parallel rank."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from trt_gpt.config import ModelConfig, QuantConfig
from trt_gpt.mapping import Mapping
from trt_gpt_plugins.quantizers.kv_cache import KVCacheQuantizer, rotary_dims


def cfg_for(algo, rope=False, tp=1, rank=0):
    return ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64,
                       position_embedding_type="rope_gpt_neox" if rope else "learned_absolute", rotary_pct=0.5,
                       quantization=QuantConfig(kv_cache_quant_algo=algo),
                       mapping=Mapping(world_size=tp, tp_size=tp, pp_size=1, rank=rank))


class Stats:
    def __init__(self, cols):
        self.cols = cols

    def for_rank(self, name, parallel, cfg):
        return SimpleNamespace(out_absmax=self.cols[name])


@pytest.mark.parametrize("algo,qmax", [("INT8", 127), ("FP8", 448)])
@pytest.mark.parametrize("rope", [False, True])
def test_scales_from_qkv_columns(algo, qmax, rope):
    cfg = cfg_for(algo, rope)
    d, q_cols, kv_cols = 8, 32, 16
    gen = torch.Generator().manual_seed(0)
    cols = {f"transformer.layers.{i}.attention.qkv": torch.rand(q_cols + 2 * kv_cols, generator=gen) * (i + 1)
            for i in range(2)}
    state = {"transformer.layers.0.attention.qkv.weight": torch.zeros(1),
             "transformer.layers.1.attention.qkv.weight": torch.zeros(1)}
    out = KVCacheQuantizer().quantize_kv(state, cfg, Stats(cols))
    for i in range(2):
        c = cols[f"transformer.layers.{i}.attention.qkv"].double().tolist()
        k, v = c[q_cols:q_cols + kv_cols], c[q_cols + kv_cols:]
        if rope:   # dims 0..3 of each head rotate in pairs (0, 2) and (1, 3); dims 4..7 do not rotate
            k_max = max(math.hypot(k[h * d + j], k[h * d + (j + 2) % 4]) if j < 4 else k[h * d + j]
                        for h in range(2) for j in range(d))
        else:
            k_max = max(k)
        assert out[f"transformer.layers.{i}.attention.k_cache_scaling_factor"].item() == \
            pytest.approx(k_max / qmax, rel=1e-6)
        assert out[f"transformer.layers.{i}.attention.v_cache_scaling_factor"].item() == \
            pytest.approx(max(v) / qmax, rel=1e-6)


def test_same_scales_on_every_rank_and_ones_without_calibration():
    gen = torch.Generator().manual_seed(1)
    cols = {f"transformer.layers.{i}.attention.qkv": torch.rand(64, generator=gen) for i in range(2)}
    state = {f"transformer.layers.{i}.attention.qkv.weight": torch.zeros(1) for i in range(2)}
    r0 = KVCacheQuantizer().quantize_kv(state, cfg_for("INT8", tp=2, rank=0), Stats(cols))
    r1 = KVCacheQuantizer().quantize_kv(state, cfg_for("INT8", tp=2, rank=1), Stats(cols))
    assert all(torch.equal(r0[k], r1[k]) for k in r0 if "scaling_factor" in k)
    plain = KVCacheQuantizer().quantize_kv(state, cfg_for("FP8"), None)
    assert plain["transformer.layers.1.attention.v_cache_scaling_factor"].tolist() == [1.0]


def test_rotary_dims():
    assert rotary_dims(cfg_for("INT8")) == 0 and rotary_dims(cfg_for("INT8", rope=True)) == 4
