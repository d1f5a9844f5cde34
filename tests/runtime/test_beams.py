"""Beam search through the engine (beams share the prompt's cache blocks, copy-on-write) against HF
`generate(num_beams=...)`: the same sequences and scores, alone, in a mixed batch, and under preemption."""
from __future__ import annotations

import pytest
import torch

from trt_gpt import SamplingParams
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import random_prompts

VOCAB = 211
W = 3


def _hf_beams(tiny, prompt, max_new, eos, lp, es):
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = tiny.hf.generate(ids, attention_mask=torch.ones_like(ids), num_beams=W, num_return_sequences=W,
                               max_new_tokens=max_new, do_sample=False, length_penalty=lp, early_stopping=es,
                               eos_token_id=eos, pad_token_id=0, output_scores=True,
                               return_dict_in_generate=True)
    return out.sequences[:, len(prompt):].tolist(), out.sequences_scores.tolist()


def _check(out, hf_seqs, hf_scores, eos, max_new):
    assert len(out.beams) == W and len(out.beam_scores) == W
    assert out.token_ids == out.beams[0]
    assert max(len(b) for b in out.beams) == len(hf_seqs[0])
    for ours, score, ref, ref_score in zip(out.beams, out.beam_scores, hf_seqs, hf_scores):
        assert ref[:len(ours)] == ours
        if len(ours) < max_new:
            assert ours[-1] == eos
        assert score == pytest.approx(ref_score, abs=1e-4)


CASES = [dict(eos=None, lp=1.0, es=True), dict(eos=2, lp=1.0, es=True), dict(eos=0, lp=2.0, es=False),
         dict(eos=1, lp=0.5, es=False)]


@pytest.fixture(scope="module")
def prompts():
    return random_prompts(VOCAB, [7, 18], seed=21)


def _eos_token(tiny, prompt, index):
    """A token the best beam produces at `index`: hypotheses then really end early."""
    if index is None:
        return None
    seqs, _ = _hf_beams(tiny, prompt, 10, None, 1.0, True)
    return seqs[0][index]


def test_beams_match_hf_in_a_mixed_batch(tiny_gpt2_engine, prompts):
    tiny = tiny_gpt2_engine
    llm = tiny.llm(max_num_tokens=12)       # chunked prompts; beams (3 tokens a step) share the budget
    reqs, refs = [], []
    for p in prompts:
        for case in CASES:
            eos = _eos_token(tiny, p, case["eos"])
            max_new = 10
            params = SamplingParams(max_tokens=max_new, num_beams=W, end_id=eos, length_penalty=case["lp"],
                                    early_stopping=case["es"])
            reqs.append((p, params))
            refs.append((*_hf_beams(tiny, p, max_new, eos, case["lp"], case["es"]), eos, max_new))
    greedy = [(p, SamplingParams(max_tokens=10)) for p in prompts]
    outs = llm.generate([p for p, _ in reqs + greedy], [sp for _, sp in reqs + greedy])
    for out, ref in zip(outs, refs):
        _check(out, *ref)
    assert any(len(b) < 10 for out in outs[:len(reqs)] for b in out.beams)   # some beam really ended at eos
    for (p, _), out in zip(greedy, outs[len(reqs):]):
        assert out.token_ids == tiny.hf_generate(p, max_new_tokens=10)
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_beams_survive_preemption(tiny_gpt2_engine, prompts):
    tiny = tiny_gpt2_engine
    p = prompts[1]
    eos = _eos_token(tiny, p, 2)
    params = SamplingParams(max_tokens=10, num_beams=W, end_id=eos)
    ref = _hf_beams(tiny, p, 10, eos, 1.0, True)
    llm = tiny.llm(max_tokens_in_paged_kv_cache=96)   # 24 blocks: one beam request needs up to 21
    outs = llm.generate([p] * 3 + prompts, [params] * 3 + [SamplingParams(max_tokens=12)] * 2)
    assert llm.scheduler.num_preemptions > 0
    for out in outs[:3]:
        _check(out, *ref, eos, 10)
    for q, out in zip(prompts, outs[3:]):
        assert out.token_ids == tiny.hf_generate(q, max_new_tokens=12)
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_beam_streaming_and_errors(tiny_gpt2_engine, prompts):
    tiny = tiny_gpt2_engine
    llm = tiny.llm()
    params = SamplingParams(max_tokens=6, num_beams=W)
    updates = list(llm.generate_stream([prompts[0]], params))
    assert updates[-1].finished and len(updates[-1].beams) == W
    assert all(len(u.beams) == W for u in updates[1:])
    assert [len(u.token_ids) for u in updates] == list(range(1, 7))
    with pytest.raises(TrtGptError, match="max_beam_width"):
        llm.add_request(prompts[0], SamplingParams(num_beams=5))
    with pytest.raises(TrtGptError, match="stop_words"):
        llm.add_request(prompts[0], SamplingParams(num_beams=2, stop_words=[[3, 4]]))
