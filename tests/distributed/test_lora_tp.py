"""LoRA under tensor parallelism (`mpirun -np 2`, gloo, CPU, fp32): each rank holds its shard of the
adapters (column layers: B's rows with the weight's, qkv heads included, the MQA KV head replicated; row
layers: A's input columns, partial deltas summed by the all-reduce), the other ranks stage rank 0's slots
and slot owners from the step plan; logits within 1e-4 of PEFT and greedy tokens identical."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("peft")

from trt_gpt.build import build  # noqa: E402
from trt_gpt.config import BuildConfig  # noqa: E402
from trt_gpt.convert import convert  # noqa: E402
from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_logits, peft_model  # noqa: E402
from trt_gpt.testing import random_prompts, save_tiny  # noqa: E402

from mpi_helpers import Case, mpirun, need_variant, run_cases  # noqa: E402

N = 8


def _models():
    from transformers import (GPT2Config, GPT2LMHeadModel, GPTBigCodeConfig, GPTBigCodeForCausalLM, Starcoder2Config,
                              Starcoder2ForCausalLM)
    return {
        "gpt2": (GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                             initializer_range=0.2), None,
                 dict(target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
        "starcoder": (GPTBigCodeForCausalLM, GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=211,
                                                              n_positions=128, multi_query=True, initializer_range=0.2),
                      "trt_gpt_starcoder", dict(target_modules=["c_attn", "c_proj", "c_fc"])),
        "starcoder2": (Starcoder2ForCausalLM, Starcoder2Config(
            num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
            vocab_size=211, max_position_embeddings=128, initializer_range=0.2), "trt_gpt_starcoder2",
            dict(target_modules=["q_proj", "v_proj", "o_proj", "c_fc"])),
    }


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    mpirun()
    root = tmp_path_factory.mktemp("lora_tp")
    cases, refs = [], {}
    for i, (name, (cls, cfg, pkg, kw)) in enumerate(_models().items()):
        if pkg is not None:
            import importlib.util
            if importlib.util.find_spec(pkg) is None:
                continue
        d = root / name
        save_tiny(cls, cfg, d / "hf")
        lora = make_peft_adapter(d / "hf", d / "lora", seed=i, r=4, lora_alpha=8, **kw)
        convert(d / "hf", d / "ckpt", dtype="float32", tp_size=2)
        build(d / "engine", BuildConfig(max_batch_size=8, max_input_len=64, tokens_per_block=4),
              checkpoint_dir=d / "ckpt", lora_dirs=[lora])
        prompts = random_prompts(211, [5, 17, 1], seed=i)
        cases.append(Case(f"{name} tp2 lora", d / "engine", d / "engine", prompts, N, lora=0))
        refs[cases[-1].name] = (peft_model(d / "hf", lora), prompts)
    return run_cases(2, cases, root / "out"), refs


@pytest.mark.parametrize("name", ["gpt2 tp2 lora", "starcoder tp2 lora", "starcoder2 tp2 lora"])
def test_tp2_lora_matches_peft(launched, name):
    results, refs = launched
    if name not in results:
        pytest.skip(f"{name}: variant package not installed")
    ref, prompts = refs[name]
    got = load_file(results[name]["logits_file"])
    for i, p in enumerate(prompts):
        assert (got[f"p{i}"] - peft_logits(ref, p)).abs().max().item() <= 1e-4
    assert results[name]["tokens"] == [peft_greedy(ref, p, N) for p in prompts]
