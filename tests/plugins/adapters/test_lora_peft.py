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
