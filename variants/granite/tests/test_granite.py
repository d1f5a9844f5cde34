"""Granite through convert -> build -> runtime equals HF transformers (GraniteForCausalLM with its four
multipliers, GQA/MQA, RoPE, biases, tied/untied), and the GPTBigCode-layout code models convert as StarCoder."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM, GraniteConfig, GraniteForCausalLM
from typer.testing import CliRunner

from trt_gpt.cli.main import make_app
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny

VOCAB = 233
BASE = dict(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, intermediate_size=96, vocab_size=VOCAB,
            max_position_embeddings=256, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
            embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=1.5)

# (config overrides, --variant); None is auto-detection
CONFIGS = {
    "gqa biases untied theta auto": (dict(num_key_value_heads=2, attention_bias=True, mlp_bias=True,
                                          tie_word_embeddings=False, rms_norm_eps=1e-5,
                                          rope_parameters={"rope_type": "default", "rope_theta": 5000.0}), None),
    "mqa tied linear rope scaling": (dict(num_key_value_heads=1, tie_word_embeddings=True,
                                          rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                           "rope_theta": 10000.0}), "granite"),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_granite_matches_hf(tmp_path, name):
    overrides, variant = CONFIGS[name]
    hf = save_tiny(GraniteForCausalLM, GraniteConfig(**{**BASE, **overrides}), tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, variant=variant)
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())["variant"] == "granite"
    assert_parity(hf, engine, random_prompts(VOCAB, [5, 17, 33, 1]), n_greedy=32)


def test_gpt_bigcode_code_model_converts_as_starcoder(tmp_path):
    """Granite code 20B/34B are GPTBigCode checkpoints: `--variant granite` gives StarCoder's conversion
    (whose parity with HF the starcoder package tests); auto-detection names them starcoder."""
    cfg = GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128, multi_query=True,
                           bos_token_id=None, eos_token_id=None)
    save_tiny(GPTBigCodeForCausalLM, cfg, tmp_path / "hf")
    assert convert(tmp_path / "hf", tmp_path / "auto", dtype="float32").variant == "starcoder"
    res = convert(tmp_path / "hf", tmp_path / "granite", dtype="float32", variant="granite")
    assert res.variant == "granite" and res.config.attention_kind == "MQA"
    got, ref = (load_file(str(tmp_path / d / "rank0.safetensors")) for d in ("granite", "auto"))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref)


@pytest.mark.parametrize("variant", ["starcoder", "gpt2"])
def test_other_variant_on_granite_checkpoint_is_a_clear_error(tmp_path, variant):
    save_tiny(GraniteForCausalLM, GraniteConfig(**BASE), tmp_path / "hf")
    with pytest.raises(TrtGptError, match=rf"does not fit variant '{variant}'; it looks like 'granite'"):
        convert(tmp_path / "hf", tmp_path / "out", dtype="float32", variant=variant)
    assert not (tmp_path / "out").exists()


def test_non_silu_activation_is_refused(tmp_path):
    save_tiny(GraniteForCausalLM, GraniteConfig(**{**BASE, "hidden_act": "relu"}), tmp_path / "hf")
    with pytest.raises(TrtGptError, match=r"config\.json: field 'hidden_act' is 'relu', expected 'silu'"):
        convert(tmp_path / "hf", tmp_path / "out", dtype="float32")


def test_listed_with_features_and_package():
    r = CliRunner().invoke(make_app(), ["variants", "list", "--json"])
    assert r.exit_code == 0, r.output
    row = next(v for v in json.loads(r.stdout) if v["name"] == "granite")
    assert {"GQA", "MQA", "RoPE", "RMSNorm", "SwiGLU"} <= set(row["features"])
    assert row["package"] == "trt-gpt-granite" and row["version"] == "0.1.0"
    assert "GraniteForCausalLM" in row["architectures"]
