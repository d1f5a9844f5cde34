""".nemo archives written from random HF models, converted and run, equal the HF model (the oracle).

Nemotron covers partial rotary + layernorm1p + squared-relu + GQA; Llama covers rmsnorm + swiglu; GPT-2 covers
learned positions + gelu + biases. Layout and sharding variants of one model must convert to identical
tensors, so each parity run vouches for all of them.
"""
from __future__ import annotations

import tarfile

import pytest
import torch
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, NemotronConfig,
                          NemotronForCausalLM)

from nemo_writer import from_gpt2, from_llama, from_nemotron, perturb_norms, write_nemo
from trt_gpt.convert import convert
from trt_gpt.testing import assert_parity, engine_from_checkpoint, random_prompts

VOCAB = 256
PROMPTS = random_prompts(VOCAB, [5, 17, 33])


def _tiny(model_cls, config):
    torch.manual_seed(0)
    model = model_cls(config).eval()
    perturb_norms(model)
    return model


@pytest.fixture(scope="module")
def nemotron():
    return _tiny(NemotronForCausalLM, NemotronConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, partial_rotary_factor=0.5, rope_theta=5000.0,
        max_position_embeddings=256, initializer_range=0.1, bos_token_id=0, eos_token_id=0))


@pytest.fixture(scope="module")
def llama():
    return _tiny(LlamaForCausalLM, LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, rope_theta=5000.0, max_position_embeddings=256, tie_word_embeddings=True,
        initializer_range=0.1, bos_token_id=0, eos_token_id=0))


def _gpt2(act: str):
    return _tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128,
                                             activation_function=act, initializer_range=0.1, bos_token_id=0,
                                             eos_token_id=0))


def _parity(tmp_path, hf, nemo):
    engine = engine_from_checkpoint(nemo, tmp_path)
    assert_parity(hf, engine, PROMPTS, n_greedy=24)


def test_nemotron_mcore(tmp_path, nemotron):
    _parity(tmp_path, nemotron, write_nemo(tmp_path / "m.nemo", from_nemotron(nemotron), "mcore"))


def test_nemotron_legacy_tp2_gz(tmp_path, nemotron):
    nemo = write_nemo(tmp_path / "m.nemo", from_nemotron(nemotron), "legacy", tp=2, gz=True)
    with tarfile.open(nemo) as tar:
        assert {"./mp_rank_00/model_weights.ckpt", "./mp_rank_01/model_weights.ckpt"} <= set(tar.getnames())
    _parity(tmp_path, nemotron, nemo)


def test_llama_fast_swiglu_mcore_tp2(tmp_path, llama):
    _parity(tmp_path, llama, write_nemo(tmp_path / "m.nemo", from_llama(llama), "mcore", tp=2))


@pytest.mark.parametrize("hf_act,exact", [("gelu_new", False), ("gelu", True)])
def test_gpt2_learned_positions_gelu_legacy(tmp_path, hf_act, exact):
    """NeMo's fused bias-gelu is the tanh form (GPT-2's gelu_new); unfused it is exact gelu."""
    hf = _gpt2(hf_act)
    _parity(tmp_path, hf, write_nemo(tmp_path / "m.nemo", from_gpt2(hf, exact_gelu=exact), "legacy"))


def _converted(nemo, out) -> dict[str, torch.Tensor]:
    convert(nemo, out, dtype="float32")
    return load_file(str(out / "rank0.safetensors"))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_nemotron_layouts_and_shardings_convert_identically(tmp_path, nemotron):
    nm = from_nemotron(nemotron)
    ref = _converted(write_nemo(tmp_path / "ref.nemo", nm, "mcore"), tmp_path / "ref")
    variants = {"legacy": dict(layout="legacy"), "mcore-tp2": dict(tp=2),
                "legacy-tp2-pp2-amp": dict(layout="legacy", tp=2, pp=2, amp_o2=True),
                "mcore-pp2-gz": dict(pp=2, gz=True)}
    for name, kw in variants.items():
        _assert_same(ref, _converted(write_nemo(tmp_path / f"{name}.nemo", nm, **kw), tmp_path / name))
    # an unpacked .nemo directory reads the same
    with tarfile.open(tmp_path / "legacy-tp2-pp2-amp.nemo") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    _assert_same(ref, _converted(tmp_path / "unpacked", tmp_path / "from_dir"))


def test_glu_layouts_convert_identically(tmp_path, llama):
    """fast-swiglu ([gate; up] per rank) and legacy swiglu (separate dense_h_to_4h_2), tied over PP."""
    lm = from_llama(llama)
    ref = _converted(write_nemo(tmp_path / "ref.nemo", lm, "mcore", tp=2), tmp_path / "ref")
    for name, kw in {"legacy-swiglu-tp2": dict(layout="legacy", tp=2, separate_glu=True),
                     "legacy-fast-tp2-pp2": dict(layout="legacy", tp=2, pp=2),
                     "mcore-pp2": dict(pp=2)}.items():
        _assert_same(ref, _converted(write_nemo(tmp_path / f"{name}.nemo", lm, **kw), tmp_path / name))
