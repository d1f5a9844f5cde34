"""PEFT LoRA adapters through the engine against HF PEFT's `PeftModel` (the oracle): per variant, logits
with an adapter within 1e-4 (fp32), greedy tokens identical; PEFT's config variants (rank_pattern,
alpha_pattern, rslora, separate q/k/v targets on MQA and GQA); and the one-line refusals."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("peft")

from trt_gpt import LLM, SamplingParams  # noqa: E402
from trt_gpt.errors import TrtGptError  # noqa: E402
from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_logits, peft_model  # noqa: E402
from trt_gpt.testing import engine_from_checkpoint, random_prompts, save_tiny  # noqa: E402


def _gpt2(d: Path):
    from transformers import GPT2Config, GPT2LMHeadModel

    return save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                                 initializer_range=0.2), d)


def _bigcode(d: Path, multi_query: bool = True):
    from transformers import GPTBigCodeConfig, GPTBigCodeForCausalLM

    return save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=211,
                                                             n_positions=128, multi_query=multi_query,
                                                             initializer_range=0.2), d)


def _starcoder2(d: Path):
    from transformers import Starcoder2Config, Starcoder2ForCausalLM

    return save_tiny(Starcoder2ForCausalLM, Starcoder2Config(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=128,
        vocab_size=211, max_position_embeddings=128, initializer_range=0.2), d)


def _granite(d: Path):
    from transformers import GraniteConfig, GraniteForCausalLM

    return save_tiny(GraniteForCausalLM, GraniteConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=211, max_position_embeddings=128, initializer_range=0.2, embedding_multiplier=2.0,
        residual_multiplier=0.5, attention_multiplier=0.2, logits_scaling=1.5), d)


# model maker, LoraConfig fields
CASES = {
    "gpt2": (_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    "gpt2_patterns": (_gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"],
                                  fan_in_fan_out=True, rank_pattern={"c_fc": 6, "h.1.attn.c_attn": 2},
                                  alpha_pattern={"c_proj": 3}, use_rslora=True)),
    "bigcode_mqa": (_bigcode, dict(r=4, lora_alpha=16, target_modules=["c_attn", "c_proj", "c_fc"])),
    "bigcode_mha": (lambda d: _bigcode(d, multi_query=False), dict(r=4, lora_alpha=16, target_modules=["c_attn"])),
    "starcoder2_gqa": (_starcoder2, dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                            "c_fc", "c_proj"],
                                         rank_pattern={"k_proj": 2})),
    "starcoder2_qv": (_starcoder2, dict(r=3, lora_alpha=6, target_modules=["q_proj", "v_proj"])),
    "granite": (_granite, dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj"])),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, tmp_path_factory):
    make, kw = CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    make(d / "hf")
    lora = make_peft_adapter(d / "hf", d / "lora", **kw)
    engine = engine_from_checkpoint(d / "hf", d, max_batch_size=8, lora_dirs=[lora])
    return d / "hf", lora, engine


def test_logits_and_greedy_match_peft(case):
    hf_dir, lora, engine = case
    llm = LLM(engine, device="cpu")
    ref = peft_model(hf_dir, lora)
    base = peft_model(hf_dir, None)
    prompts = random_prompts(211, [5, 11])
    for p, got in zip(prompts, llm.score(prompts, lora=0)):
        want = peft_logits(ref, p)
        assert (want - got).abs().max().item() <= 1e-4
        # the adapter changes the function (so the comparison above can fail)
        assert (peft_logits(base, p) - want).abs().max().item() > 1e-2
    outs = llm.generate(prompts, SamplingParams(max_tokens=6, lora=0))
    for p, o in zip(prompts, outs):
        assert o.token_ids == peft_greedy(ref, p, 6)


def test_engine_dir_holds_converted_adapter(case):
    _, _, engine = case
    assert (engine / "lora" / "0" / "adapter.safetensors").is_file()
    build = json.loads((engine / "config.json").read_text())["build_config"]
    assert build["max_lora_rank"] == 64 and build["lora_target_modules"]


# ------------------------------------------------------------------ refusals, one line each
@pytest.fixture(scope="module")
def gpt2_ckpt(tmp_path_factory):
    from trt_gpt.convert import convert

    d = tmp_path_factory.mktemp("refusals")
    _gpt2(d / "hf")
    convert(d / "hf", d / "ckpt", dtype="float32")
    return d


def _build(d: Path, lora: Path, **kw):
    from trt_gpt.build import build
    from trt_gpt.config import BuildConfig

    out = d / "engine_bad"
    with pytest.raises(TrtGptError) as e:
        build(out, BuildConfig(max_input_len=32, **kw), checkpoint_dir=d / "ckpt", overwrite=True, lora_dirs=[lora])
    assert not out.exists()                      # nothing half-written
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def _edit(src: Path, dst: Path, **fields) -> Path:
    import shutil

    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    cfg.update(fields)
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def good_lora(gpt2_ckpt):
    return make_peft_adapter(gpt2_ckpt / "hf", gpt2_ckpt / "good", r=4, target_modules=["c_attn"],
                             fan_in_fan_out=True)


def test_refuses_adapter_for_another_base(gpt2_ckpt, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=211, n_positions=128),
              tmp_path / "other")
    lora = make_peft_adapter(tmp_path / "other", tmp_path / "lora", r=4, target_modules=["c_attn"],
                             fan_in_fan_out=True)
    assert "another base model" in _build(gpt2_ckpt, lora)


def test_refuses_rank_above_limit(gpt2_ckpt, good_lora):
    assert "exceeds max_lora_rank 2" in _build(gpt2_ckpt, good_lora, max_lora_rank=2)


@pytest.mark.parametrize("field,value", [("use_dora", True), ("modules_to_save", ["lm_head"]), ("bias", "all")])
def test_refuses_unappliable_config(gpt2_ckpt, good_lora, tmp_path, field, value):
    msg = _build(gpt2_ckpt, _edit(good_lora, tmp_path / "x", **{field: value}))
    assert f"'{field}'" in msg and "adapter_config.json" in msg


def test_refuses_lm_head_target(gpt2_ckpt, tmp_path):
    lora = make_peft_adapter(gpt2_ckpt / "hf", tmp_path / "head", r=4, target_modules=["lm_head"])
    assert "lm_head" in _build(gpt2_ckpt, lora)


def test_refuses_corrupt_weights(gpt2_ckpt, good_lora, tmp_path):
    bad = _edit(good_lora, tmp_path / "corrupt")
    (bad / "adapter_model.safetensors").write_bytes(b"\x00garbage" * 10)
    assert "not a readable adapter weights file" in _build(gpt2_ckpt, bad)


def test_refuses_rank_disagreeing_with_config(gpt2_ckpt, good_lora, tmp_path):
    assert "'r'/'rank_pattern'" in _build(gpt2_ckpt, _edit(good_lora, tmp_path / "r", r=16))


def test_bin_weights_read_without_pickle(gpt2_ckpt, good_lora, tmp_path):
    """adapter_model.bin is read with weights_only=True: the same adapter in .bin form converts the same."""
    from safetensors.torch import load_file

    from trt_gpt.lora.loading import load_lora
    from trt_gpt.checkpoint import load_checkpoint_config

    cfg = load_checkpoint_config(gpt2_ckpt / "ckpt")
    cfg.extra["variant"] = "gpt2"
    binary = _edit(good_lora, tmp_path / "bin")
    torch.save(load_file(str(binary / "adapter_model.safetensors")), str(binary / "adapter_model.bin"))
    (binary / "adapter_model.safetensors").unlink()
    a, b = load_lora(good_lora, cfg, 8), load_lora(binary, cfg, 8)
    assert a.modules.keys() == b.modules.keys()
    for k in a.modules:
        assert torch.equal(a.modules[k].a, b.modules[k].a) and torch.equal(a.modules[k].b, b.modules[k].b)
