"""Canonical adapters: q/k/v pieces placed into the fused qkv, and tensor-parallel shards that reproduce
the merged weight W + scale * B A exactly as the base weights' own shards cut it (columns: each rank's
rows, qkv heads included, KV heads replicated when tp > kv heads; rows: the partial deltas sum to the full)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from trt_gpt.config import ModelConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.lora.canonical import LoraAdapter, LoraBuilder, LoraModule, qkv_rows, role_shape, shard
from trt_gpt.mapping import Mapping
from trt_gpt.weights import shard_tensor


def cfg_for(kv: int, tp: int) -> ModelConfig:
    return ModelConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=kv, num_hidden_layers=2,
                       intermediate_size=48, vocab_size=64, mapping=Mapping(world_size=tp, tp_size=tp))


def random_adapter(cfg: ModelConfig, roles=("qkv", "dense", "fc", "proj"), r=3) -> LoraAdapter:
    g = torch.Generator().manual_seed(0)
    ad = LoraAdapter("x")
    for layer in range(cfg.num_hidden_layers):
        for role in roles:
            fin, fout = role_shape(cfg, role)
            ad.modules[(layer, role)] = LoraModule(torch.randn(r, fin, generator=g, dtype=torch.float64),
                                                   torch.randn(fout, r, generator=g, dtype=torch.float64), 0.7)
    return ad


NAMES = {"qkv": "attention.qkv", "dense": "attention.dense", "fc": "mlp.fc", "proj": "mlp.proj"}


@pytest.mark.parametrize("kv,tp", [(4, 2), (2, 2), (1, 2), (2, 4)])
def test_shards_reproduce_the_merged_weight(kv, tp):
    cfg = cfg_for(kv, tp)
    ad = random_adapter(cfg)
    g = torch.Generator().manual_seed(1)
    for (layer, role), m in ad.modules.items():
        name = f"transformer.layers.{layer}.{NAMES[role]}.weight"
        fin, fout = role_shape(cfg, role)
        w = torch.randn(fout, fin, generator=g, dtype=torch.float64)
        merged = w + m.scale * m.b @ m.a
        x = torch.randn(5, fin, generator=g, dtype=torch.float64)
        partial_sum = 0
        for rank in range(tp):
            mp = cfg.mapping.with_rank(rank)
            a, b = shard(ad, dataclasses.replace(cfg, mapping=mp), mp, torch.float64)[(layer, role)]
            if role in ("qkv", "fc"):
                want = shard_tensor(name, merged, cfg, mp)
                got = shard_tensor(name, w, cfg, mp) + b @ a
                assert torch.allclose(got, want, atol=1e-12)
            else:
                xr = x.chunk(tp, dim=1)[rank]   # a row-parallel layer gets its slice of the input
                partial_sum = partial_sum + xr @ shard_tensor(name, w, cfg, mp).t() + (xr @ a.t()) @ b.t()
        if role in ("dense", "proj"):
            assert torch.allclose(partial_sum, x @ merged.t(), atol=1e-10)


def test_qkv_pieces_block_placed():
    cfg = cfg_for(2, 1)
    g = torch.Generator().manual_seed(2)
    b = LoraBuilder("x", cfg)
    parts = {}
    for piece, r, s in (("q", 2, 0.5), ("v", 3, 2.0)):
        rows = qkv_rows(cfg, piece)
        pa, pb = torch.randn(r, 32, generator=g), torch.randn(len(rows), r, generator=g)
        parts[piece] = (pa, pb, s)
        b.add(0, "qkv", pa, pb, s, torch.arange(rows.start, rows.stop))
    m = b.build().modules[(0, "qkv")]
    x = torch.randn(4, 32, generator=g)
    got = (x @ m.a.t()) @ (m.b * m.scale).t()
    want = torch.zeros(4, role_shape(cfg, "qkv")[1])
    for piece, (pa, pb, s) in parts.items():
        rows = qkv_rows(cfg, piece)
        want[:, rows.start:rows.stop] = s * (x @ pa.t()) @ pb.t()
    assert torch.allclose(got, want, atol=1e-5)


def test_piece_of_wrong_height_is_refused():
    cfg = cfg_for(2, 1)
    with pytest.raises(TrtGptError, match="another base model"):
        LoraBuilder("x", cfg, "lora").add(0, "qkv", torch.zeros(2, 32), torch.zeros(9, 2), 1.0, torch.arange(16))
