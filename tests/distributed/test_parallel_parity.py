"""Tensor, pipeline and embedding parallelism over `mpirun -np 2` and `-np 4` (gloo, CPU, fp32) equal the
single-rank engine: logits within 1e-4 at every prompt position and identical greedy tokens, for MHA
(GPT-2), MQA (StarCoder, KV head replicated across TP ranks) and GQA (StarCoder2) models.

All cases of one world size run in a single mpirun launch (worker.py); the single-rank references run here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, GPTBigCodeConfig, GPTBigCodeForCausalLM, Starcoder2Config,
                          Starcoder2ForCausalLM)

from trt_gpt.runtime.llm import LLM
from trt_gpt.runtime.sampling_params import SamplingParams
from trt_gpt.testing import random_prompts, save_tiny

from mpi_helpers import Case, make_engine, mpirun, need_variant, run_cases

ATOL = 1e-4
GPT2 = dict(n_layer=4, n_embd=64, n_head=4, vocab_size=211, n_positions=128, initializer_range=0.2, bos_token_id=0,
            eos_token_id=0)


@dataclass
class Model:
    make: Any                 # () -> (HF class, HF config)
    vocab: int
    variant: str | None = None
    package: str | None = None


MODELS = {
    "gpt2": Model(lambda: (GPT2LMHeadModel, GPT2Config(**GPT2)), 211),
    "gpt2_untied": Model(lambda: (GPT2LMHeadModel, GPT2Config(**GPT2, tie_word_embeddings=False)), 211),
    # multi_query: one KV head, replicated on every TP rank
    "starcoder": Model(lambda: (GPTBigCodeForCausalLM, GPTBigCodeConfig(
        n_layer=4, n_embd=64, n_head=4, vocab_size=223, n_positions=128, multi_query=True, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None)), 223, "starcoder", "trt_gpt_starcoder"),
    # 2 KV heads: split under tp2, replicated under tp4; a window shorter than the prompts
    "starcoder2": Model(lambda: (Starcoder2ForCausalLM, Starcoder2Config(
        vocab_size=199, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2, bos_token_id=0, eos_token_id=0,
        rope_theta=5000.0, sliding_window=16)), 199, "starcoder2", "trt_gpt_starcoder2"),
}

# name -> (model, tp, pp, parallel-embedding dim or None, LLM kwargs, micro-batches, beams)
NP2 = {
    "gpt2 tp2": ("gpt2", 2, 1, None, {}, None, 1),
    "gpt2 pp2 chunked prefill": ("gpt2", 1, 2, None, {"max_num_tokens": 7}, None, 1),
    "gpt2 tp2 embedding dim0 tied": ("gpt2", 2, 1, 0, {}, None, 1),
    "gpt2 tp2 embedding dim1 untied": ("gpt2_untied", 2, 1, 1, {}, None, 1),
    "gpt2 tp2 embedding dim1 tied": ("gpt2", 2, 1, 1, {}, None, 1),
    "gpt2 tp2 beam search": ("gpt2", 2, 1, None, {}, None, 3),
    "starcoder mqa tp2": ("starcoder", 2, 1, None, {}, None, 1),
    "starcoder mqa pp2": ("starcoder", 1, 2, None, {}, None, 1),
    "starcoder2 gqa tp2": ("starcoder2", 2, 1, None, {}, None, 1),
    "starcoder2 gqa pp2 3 micro-batches": ("starcoder2", 1, 2, None, {}, 3, 1),
}
NP4 = {
    "gpt2 tp2xpp2": ("gpt2", 2, 2, None, {}, None, 1),
    "gpt2 tp4 embedding dim0 padded vocab": ("gpt2", 4, 1, 0, {}, None, 1),
    "gpt2 tp2xpp2 embedding dim1 untied chunked": ("gpt2_untied", 2, 2, 1, {"max_num_tokens": 9}, None, 1),
    "gpt2 pp4": ("gpt2", 1, 4, None, {}, None, 1),
    "gpt2 tp2xpp2 beam search": ("gpt2", 2, 2, None, {}, None, 4),
    "starcoder mqa tp4": ("starcoder", 4, 1, None, {}, None, 1),
    "starcoder mqa tp2xpp2": ("starcoder", 2, 2, None, {}, None, 1),
    "starcoder2 gqa tp4": ("starcoder2", 4, 1, None, {}, None, 1),
    "starcoder2 gqa tp2xpp2 embedding dim0": ("starcoder2", 2, 2, 0, {}, None, 1),
}


def _available(model: str) -> bool:
    pkg = MODELS[model].package
    import importlib.util

    return pkg is None or importlib.util.find_spec(pkg) is not None


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, m in MODELS.items():
        if _available(name):
            cls, cfg = m.make()
            save_tiny(cls, cfg, root / name)
            out[name] = root / name
    return out


def _cases(table: dict, checkpoints: dict[str, Path], root: Path) -> list[Case]:
    cases = []
    for i, (name, (model, tp, pp, emb, kwargs, mbs, beams)) in enumerate(table.items()):
        if model not in checkpoints:
            continue
        m = MODELS[model]
        ref = root / f"ref-{model}" / "engine"
        if not ref.exists():
            make_engine(checkpoints[model], ref.parent, variant=m.variant)
        engine = make_engine(checkpoints[model], root / f"case{i}", tp, pp, m.variant, emb)
        prompts = random_prompts(m.vocab, [5, 23, 40, 1], seed=i)
        cases.append(Case(name, engine, ref, prompts, 12, kwargs, mbs, beams))
    return cases


def _launch(np: int, table: dict, checkpoints, tmp_path_factory) -> tuple[dict, dict[str, Case]]:
    mpirun()
    root = tmp_path_factory.mktemp(f"np{np}")
    cases = _cases(table, checkpoints, root)
    return run_cases(np, cases, root / "out"), {c.name: c for c in cases}


@pytest.fixture(scope="module")
def np2(checkpoints, tmp_path_factory):
    return _launch(2, NP2, checkpoints, tmp_path_factory)


@pytest.fixture(scope="module")
def np4(checkpoints, tmp_path_factory):
    return _launch(4, NP4, checkpoints, tmp_path_factory)


_REFS: dict[tuple, tuple[list[torch.Tensor], list[list[int]], list]] = {}


def _reference(case: Case) -> tuple[list[torch.Tensor], list[list[int]], list]:
    """The one-rank engine's logits, tokens and beams for the case's prompts and settings."""
    key = (str(case.reference), str(case.prompts), str(case.llm_kwargs), case.n_greedy, case.num_beams)
    if key not in _REFS:
        llm = LLM(case.reference, device="cpu", **case.llm_kwargs)
        scores = llm.score(case.prompts)
        outs = llm.generate(case.prompts, SamplingParams(max_tokens=case.n_greedy, num_beams=case.num_beams))
        _REFS[key] = scores, [o.token_ids for o in outs], [o.beams for o in outs]
    return _REFS[key]


def _check(name: str, run: tuple[dict, dict[str, Case]]) -> None:
    results, cases = run
    model, tp, _, emb, *_ = NP2.get(name) or NP4.get(name)
    if MODELS[model].package:
        need_variant(MODELS[model].package)
    case, got = cases[name], results[name]
    if emb is not None:   # the table really is split (a replicated one would pass the comparison too)
        with safe_open(str(case.engine / "rank0.safetensors"), "pt") as f:
            shape = f.get_slice("transformer.vocab_embedding.weight").get_shape()
        vocab = MODELS[model].vocab
        want = [-(-vocab // tp), 64] if emb == 0 else [vocab, 64 // tp]   # dim 0 pads the vocab to tp_size
        assert shape == want, f"{name}: rank 0 embedding {shape}, expected {want}"
        # lm_head: vocab-parallel whatever the table's split, on the last pipeline stage's ranks
        last = sorted(case.engine.glob("rank*.safetensors"), key=lambda f: int(f.stem[4:]))[-1]
        with safe_open(str(last), "pt") as f:
            head = f.get_slice("lm_head.weight").get_shape()
        assert head == [-(-vocab // tp), 64], f"{name}: {last.name} lm_head {head}"
    ref_scores, ref_tokens, ref_beams = _reference(case)
    logits = load_file(got["logits_file"])
    for i, ref in enumerate(ref_scores):
        err = (logits[f"p{i}"] - ref).abs().max().item()
        assert err <= ATOL, f"{name}: logits differ from one rank by {err:.3g} for prompt {i}"
    assert got["tokens"] == ref_tokens, f"{name}: greedy tokens differ from one rank"
    assert got["beams"] == ref_beams, f"{name}: beams differ from one rank"
    if case.num_beams > 1:   # the beams really differ, so blocks were shared and copied on write on every rank
        assert all(len({tuple(b) for b in beams}) == case.num_beams for beams in got["beams"])


@pytest.mark.parametrize("name", list(NP2))
def test_two_ranks_equal_one(name, np2):
    _check(name, np2)


@pytest.mark.parametrize("name", list(NP4))
def test_four_ranks_equal_one(name, np4):
    _check(name, np4)
