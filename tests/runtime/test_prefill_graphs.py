"""Prefill steps replayed from per-shape static buffers (runtime/prefill_graphs.py; the CUDA-graph protocol
without capture, `TRT_GPT_CUDA_GRAPHS=eager`, Triton kernels interpreted when there is no GPU): a repeated
step shape takes the static path and every output still equals HF."""
from __future__ import annotations

import pytest
import torch

from trt_gpt import SamplingParams
from trt_gpt.testing import random_prompts

pytest.importorskip("triton")


@pytest.fixture
def graph_env(monkeypatch):
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "0")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def test_repeated_prefill_shapes_replay_and_match_hf(tiny_gpt2_engine, graph_env):
    tiny = tiny_gpt2_engine
    llm = tiny.llm()
    pg = llm.executor.prefill_graphs
    assert pg is not None
    prompts = random_prompts(211, [12, 12, 12, 12, 7, 7, 7], seed=21)
    for p in prompts:   # one at a time: each prefill is one step of shape (len, 1 sequence)
        got = llm.generate([p], SamplingParams(max_tokens=6))[0].token_ids
        assert got == tiny.hf_generate(p, max_new_tokens=6, min_new_tokens=6)
    assert pg.replays == 3 + 2          # every sighting of a shape from its second on
    assert set(pg.entries) == {(12, 1, 12, None, False), (7, 1, 7, None, False)}

    # all-logits steps (score) are their own shapes; a replay returns this step's logits, not a stale copy
    for p in random_prompts(211, [9, 9, 9], seed=22):
        got = llm.score([p])[0]
        with torch.no_grad():
            ref = tiny.hf(torch.tensor([p])).logits[0]
        assert (got - ref).abs().max().item() <= 1e-4
    assert (9, 1, 9, None, True) in pg.entries
