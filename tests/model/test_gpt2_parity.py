"""GPT-2 through convert -> build -> runtime equals HF transformers, over the configs GPT-2 users have."""
from __future__ import annotations

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts, save_tiny

BASE = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128, initializer_range=0.2,
            bos_token_id=0, eos_token_id=0)

CONFIGS = {
    "gelu_new tied": {},
    "gelu untied": dict(activation_function="gelu", tie_word_embeddings=False),
    "relu n_inner eps": dict(activation_function="relu", n_inner=80, layer_norm_epsilon=1e-3),
    "gelu_pytorch_tanh inverse layer idx": dict(activation_function="gelu_pytorch_tanh",
                                                scale_attn_by_inverse_layer_idx=True, n_layer=3),
    "unscaled upcast": dict(scale_attn_weights=False, reorder_and_upcast_attn=True),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gpt2_matches_hf(tmp_path, name):
    hf = save_tiny(GPT2LMHeadModel, GPT2Config(**{**BASE, **CONFIGS[name]}), tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path)
    assert_parity(hf, engine, random_prompts(211, [5, 17, 33, 1]), n_greedy=32)


def test_gpt2_block_boundaries_and_chunked_prefill(tmp_path):
    """Prompts straddling cache blocks, split into chunks by a small token budget, still equal HF."""
    from trt_gpt import LLM

    hf = save_tiny(GPT2LMHeadModel, GPT2Config(**BASE), tmp_path / "hf")
    engine = engine_from_checkpoint(tmp_path / "hf", tmp_path, tokens_per_block=4)
    llm = LLM(engine, device="cpu", max_num_tokens=7)
    assert_parity(hf, engine, random_prompts(211, [4, 9, 23], seed=3), n_greedy=12, llm=llm)
