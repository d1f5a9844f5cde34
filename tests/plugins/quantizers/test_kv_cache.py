"""The KV-cache quantizer's per-layer K and V scales against float64 arithmetic written here: abs-max / 127
(INT8) or / 448 (FP8) of each layer's K and V columns of the qkv output, K's bound through the rotary
embedding's pairs, the same scales on every tensor-parallel rank; and engines with an 8-bit cache (alone
and with SmoothQuant / FP8 weights) against HF transformers in float64 with K and V rounded through the
cache from the definition."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from quant_cases import Stats, hf_tiny, record_absmax

from trt_gpt.config import BuildConfig, ModelConfig, QuantConfig
from trt_gpt.mapping import Mapping
from trt_gpt_plugins.quantizers.kv_cache import KVCacheQuantizer, rotary_dims


def cfg_for(algo, rope=False, tp=1, rank=0):
    return ModelConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64,
                       position_embedding_type="rope_gpt_neox" if rope else "learned_absolute", rotary_pct=0.5,
                       quantization=QuantConfig(kv_cache_quant_algo=algo),
                       mapping=Mapping(world_size=tp, tp_size=tp, pp_size=1, rank=rank))


class ColStats:
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
    out = KVCacheQuantizer().quantize_kv(state, cfg, ColStats(cols))
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
    r0 = KVCacheQuantizer().quantize_kv(state, cfg_for("INT8", tp=2, rank=0), ColStats(cols))
    r1 = KVCacheQuantizer().quantize_kv(state, cfg_for("INT8", tp=2, rank=1), ColStats(cols))
    assert all(torch.equal(r0[k], r1[k]) for k in r0 if "scaling_factor" in k)
    plain = KVCacheQuantizer().quantize_kv(state, cfg_for("FP8"), None)
    assert plain["transformer.layers.1.attention.v_cache_scaling_factor"].tolist() == [1.0]


def test_rotary_dims():
    assert rotary_dims(cfg_for("INT8")) == 0 and rotary_dims(cfg_for("INT8", rope=True)) == 4


# ------------------------------------------------------------------ engines with an 8-bit KV cache
def fake_kv(z, kind, s):
    """The cache's round trip in float64: INT8 round-half-even of z / s saturated to +-127, or e4m3."""
    from test_fp8_ref import e4m3_round_64
    from test_int8_gemm_ref import round_half_even_64

    t = z / s
    return (round_half_even_64(t.clamp(-127, 127)) if kind == "INT8" else e4m3_round_64(t)) * s


@pytest.mark.parametrize("kv,weights", [("INT8", None), ("FP8", None), ("INT8", "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"),
                                        ("FP8", "FP8")])
def test_engine_with_8bit_kv_cache_matches_float64(tmp_path, kv, weights):
    """GPT-2 (no rotary embedding: the cached K is the projection's) with K and V rounded through the cache
    in float64 from the definition; with quantized weights the comparison is against the engine without an
    8-bit cache, so only the cache's rounding is under test there."""
    from safetensors.torch import load_file
    from transformers import GPT2LMHeadModel

    from trt_gpt.build import build
    from trt_gpt.convert import convert
    from trt_gpt.runtime.llm import LLM
    from trt_gpt.testing import random_prompts

    hf = hf_tiny(tmp_path / "hf")
    outs = {}
    absmax = record_absmax(hf, random_prompts(211, [40, 33, 50], seed=3), outs)
    stats = Stats(absmax, outs)
    bc = BuildConfig(max_input_len=64, tokens_per_block=16)
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", overwrite=True, stats=stats,
            quantization=QuantConfig(quant_algo=weights, kv_cache_quant_algo=kv))
    build(tmp_path / "engine", bc, checkpoint_dir=tmp_path / "ckpt")
    ckpt = load_file(str(tmp_path / "ckpt" / "rank0.safetensors"))
    qmax = 127 if kv == "INT8" else 448
    prompts = random_prompts(211, [12, 30, 7], seed=9)
    llm = LLM(tmp_path / "engine", device="cpu")
    assert llm.engine.kv_spec.dtype == (torch.int8 if kv == "INT8" else torch.float8_e4m3fn)
    from trt_gpt.cli.common import kv_cache_pool

    pool = kv_cache_pool(llm)   # what bench reports: one byte a cached value
    assert pool["dtype"] == ("int8" if kv == "INT8" else "float8_e4m3fn")
    assert pool["bytes"] == pool["tokens"] * 2 * 2 * 64   # layers x (K, V) x hidden (4 heads of 16)
    got = llm.score(prompts)
    if weights is not None:
        # both transforms reached the checkpoint: quantized weights and the cache's scales
        assert ckpt["transformer.layers.0.attention.qkv.weight"].dtype in (torch.int8, torch.float8_e4m3fn)
        assert "transformer.layers.1.attention.k_cache_scaling_factor" in ckpt
        # the same weights with a float cache: the difference is the cache's rounding only (e4m3's 3 mantissa
        # bits on this tiny model's large activations give several percent; the exact cache path is tested
        # above without quantized weights)
        convert(tmp_path / "hf", tmp_path / "ckpt16", dtype="float32", overwrite=True, stats=stats,
                quantization=QuantConfig(quant_algo=weights))
        build(tmp_path / "engine16", bc, checkpoint_dir=tmp_path / "ckpt16")
        ref = LLM(tmp_path / "engine16", device="cpu").score(prompts)
        for a, b in zip(got, ref):
            rel = ((a - b).norm() / b.norm()).item()
            assert 0 < rel < 0.15, rel
        return
    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).double().eval()
    for i in range(2):
        name = f"transformer.layers.{i}.attention.qkv"
        col = outs[name].double()
        k_s, v_s = col[64:128].max() / qmax, col[128:].max() / qmax
        assert ckpt[f"transformer.layers.{i}.attention.k_cache_scaling_factor"].item() == pytest.approx(float(k_s))
        assert ckpt[f"transformer.layers.{i}.attention.v_cache_scaling_factor"].item() == pytest.approx(float(v_s))

        def hook(m, inp, out, k_s=k_s, v_s=v_s):
            q, k, v = out.split(64, dim=-1)
            return torch.cat([q, fake_kv(k, kv, k_s), fake_kv(v, kv, v_s)], dim=-1)
        ref.transformer.h[i].attn.c_attn.register_forward_hook(hook)
    for p, g in zip(prompts, got):
        with torch.no_grad():
            want = ref(torch.tensor([p])).logits[0]
        assert (g.double() - want).abs().max().item() <= 1e-3


def test_missing_kv_scales_are_refused(tmp_path):
    from safetensors.torch import load_file, save_file

    from trt_gpt.build import build
    from trt_gpt.convert import convert
    from trt_gpt.errors import TrtGptError
    from trt_gpt.testing import random_prompts

    hf = hf_tiny(tmp_path / "hf")
    outs = {}
    stats = Stats(record_absmax(hf, random_prompts(211, [20], seed=3), outs), outs)
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", stats=stats,
            quantization=QuantConfig(kv_cache_quant_algo="INT8"))
    f = tmp_path / "ckpt" / "rank0.safetensors"
    t = load_file(str(f))
    del t["transformer.layers.1.attention.v_cache_scaling_factor"]
    save_file(t, str(f))
    with pytest.raises(TrtGptError, match="missing tensor 'transformer.layers.1.attention.v_cache_scaling_factor'"):
        build(tmp_path / "engine", BuildConfig(max_input_len=64), checkpoint_dir=tmp_path / "ckpt")


@pytest.mark.parametrize("kv", ["INT8", "FP8"])
def test_triton_backend_engine_equals_torch_engine(tmp_path, monkeypatch, kv):
    """The same 8-bit-cache engine through the Triton kernels (interpreted without a GPU) and through the torch
    reference: prefill logits and greedy decode agree."""
    from trt_gpt.build import build
    from trt_gpt.convert import convert
    from trt_gpt.kernels.backends import ENV_VAR
    from trt_gpt.runtime.llm import LLM, SamplingParams
    from trt_gpt.testing import random_prompts

    hf = hf_tiny(tmp_path / "hf")
    outs = {}
    stats = Stats(record_absmax(hf, random_prompts(211, [40, 33], seed=3), outs), outs)
    convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", stats=stats,
            quantization=QuantConfig(kv_cache_quant_algo=kv))
    build(tmp_path / "engine", BuildConfig(max_input_len=64, max_batch_size=2, tokens_per_block=16),
          checkpoint_dir=tmp_path / "ckpt")
    prompts = random_prompts(211, [20, 7], seed=5)
    params = SamplingParams(max_tokens=6)
    ref = LLM(tmp_path / "engine", device="cpu")
    want, want_tokens = ref.score(prompts), [o.token_ids for o in ref.generate(prompts, params)]
    want_one = ref.generate(prompts[:1], params)[0].token_ids
    monkeypatch.setenv(ENV_VAR, "triton")
    llm = LLM(tmp_path / "engine", device="cpu")
    # batch-1 steps take the fused small-batch layers, whose K/V write goes through the 8-bit cache spec
    assert llm.engine.model.backend.name == "triton" and llm.engine.model.fused is not None
    assert llm.generate(prompts[:1], params)[0].token_ids == want_one
    assert llm.engine.kv_spec.quantized
    for a, b in zip(llm.score(prompts), want):
        assert (a - b).abs().max().item() <= 1e-4
    assert [o.token_ids for o in llm.generate(prompts, params)] == want_tokens
