"""Overlapped decoding (runtime/overlap.py) on the static-buffer decode protocol, without a GPU: the
Triton kernels interpreted and `TRT_GPT_CUDA_GRAPHS=eager` (the protocol of the CUDA graphs, minus the
capture). Every output must equal HF generate and the synchronous runtime's, whatever finishes,
arrives, samples or gets preempted in between, and no cache block may leak."""
from __future__ import annotations

import random

import pytest
import torch

from trt_gpt import SamplingParams
from trt_gpt.runtime.sequence import Status
from trt_gpt.testing import random_prompts, run_arrivals

pytest.importorskip("triton")

VOCAB = 211


@pytest.fixture
def overlap_env(monkeypatch):
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "0")   # the fused kernels have tests of their own
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")


def _spy_launches(llm) -> list[int]:
    sizes: list[int] = []
    orig = llm.executor.launch_greedy

    def spy(batch, prev_rows):
        sizes.append(len(batch))
        return orig(batch, prev_rows)
    llm.executor.launch_greedy = spy
    return sizes


def _assert_clean(llm) -> None:
    assert llm.overlap.pending is None or all(s.status is Status.FINISHED for s in llm.overlap.pending.seqs)
    assert not llm.scheduler.has_work
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_overlap_equals_hf_with_stops_arrivals_and_sampling(tiny_gpt2_engine, overlap_env):
    tiny = tiny_gpt2_engine
    rng = random.Random(5)
    prompts = random_prompts(VOCAB, [rng.randint(2, 20) for _ in range(7)], seed=5)
    hf = [tiny.hf_generate(p, max_new_tokens=14, min_new_tokens=14) for p in prompts]
    params = [SamplingParams(max_tokens=rng.randint(4, 14)) for _ in prompts]
    # request 1 stops at an end id its greedy text reaches mid-way: the token computed past it is dropped
    params[1] = SamplingParams(max_tokens=14, end_id=hf[1][5])
    # request 2 samples (not eligible): every step holding it runs synchronously
    params[2] = SamplingParams(max_tokens=10, temperature=0.8, top_k=20, seed=3)
    arrivals = [0, 0, 3, 3, 4, 9, 12]

    llm = tiny.llm(max_batch_size=4)
    assert llm.overlap is not None and llm.executor.graphs is not None
    launches = _spy_launches(llm)
    got = run_arrivals(llm, prompts, params, arrivals)
    _assert_clean(llm)
    assert len(launches) > 10 and len(set(launches)) > 1, launches   # overlapped, at changing batch sizes

    for i, (g, sp) in enumerate(zip(got, params)):
        if i == 2:
            continue
        ref = hf[i][:sp.max_tokens]
        if sp.end_id is not None:
            ref = ref[:ref.index(sp.end_id) + 1]
        assert g == ref, f"request {i}"
    sync = tiny.llm(max_batch_size=4)
    sync.overlap = None
    assert run_arrivals(sync, prompts, params, arrivals) == got


@pytest.mark.parametrize("host_picks", ["1", "0"])   # picks stored in host memory by the graph, or copied
def test_overlap_with_preemption_and_cancel(tiny_gpt2_engine, overlap_env, monkeypatch, host_picks):
    monkeypatch.setenv("TRT_GPT_HOST_PICKS", host_picks)
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [9, 14, 6, 11, 8, 13], seed=11)
    params = [SamplingParams(max_tokens=12) for _ in prompts]
    hf = [tiny.hf_generate(p, max_new_tokens=12, min_new_tokens=12) for p in prompts]
    llm = tiny.llm(max_tokens_in_paged_kv_cache=64, max_batch_size=4)   # 16 blocks of 4: preempts
    launches = _spy_launches(llm)
    assert (llm.executor.graphs.host_picks is not None) == (host_picks == "1")
    got = run_arrivals(llm, prompts, params, [0] * len(prompts))
    assert llm.scheduler.num_preemptions > 0 and launches
    assert got == hf
    _assert_clean(llm)

    seqs = [llm.add_request(p, SamplingParams(max_tokens=12)) for p in prompts[:3]]
    for _ in range(6):
        llm.step()
    assert any(s.inflight for s in seqs)          # cancelled with a token still in flight
    for s in seqs:
        llm.cancel(s)
    llm.step()
    _assert_clean(llm)
    assert [o.token_ids for o in llm.generate(prompts[:2], SamplingParams(max_tokens=12))] == hf[:2]


@pytest.mark.parametrize("inputs", ["stage", "copy"])   # read by the graph from the mirrors, or copied
def test_context_capped_graphs_switch_as_contexts_grow(tiny_gpt2_engine, overlap_env, monkeypatch, inputs):
    """Small batch sizes have one graph per context cap: generations that grow past the caps move to the
    graph of the next cap mid-way (a different attention split count) and still equal HF generate. Staged
    graphs come in pairs, one per input mirror, and steps alternate between them."""
    from trt_gpt.runtime import cuda_graphs

    monkeypatch.setenv("TRT_GPT_GRAPH_INPUTS", inputs)
    monkeypatch.setattr(cuda_graphs, "CONTEXT_CAPS", (8, 16))
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "1")   # the batch-1 steps take the fused kernels too
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [5, 3], seed=21)
    hf = [tiny.hf_generate(p, max_new_tokens=18, min_new_tokens=18) for p in prompts]
    llm = tiny.llm(max_batch_size=2)
    g = llm.executor.graphs
    assert g.caps[:2] == [8, 16] and (1, 8, 0) in g.graphs and (2, g.max_seq_len, 0) in g.graphs
    assert ((1, 8, 1) in g.graphs) == (inputs == "stage") and g.staged_sizes == (16 if inputs == "stage" else 0)
    assert g.key_for(1, 9) == (1, 16) and g.key_for(2, 3) == (2, 8) and g.key_for(1, 10 ** 6) == (1, g.max_seq_len)
    replayed: list[tuple[int, int, int]] = []
    orig = g._replay
    monkeypatch.setattr(g, "_replay", lambda key, b: replayed.append(key) or orig(key, b))
    got = run_arrivals(llm, prompts, [SamplingParams(max_tokens=18)] * 2, [0, 6])
    assert got == hf
    assert {cap for _, cap, _ in replayed} >= {8, 16, g.max_seq_len}, replayed
    assert {j for *_, j in replayed} == ({0, 1} if inputs == "stage" else {0})


def test_held_prompt_steps_feed_the_first_decode_step(tiny_gpt2_engine, overlap_env):
    """A prompt step that ends every prompt in it is held (`OverlappedScheduler.hold`): its argmax picks stay on the
    device as the next decode step's input and reach the host one step later. Outputs still equal HF's,
    one-token requests included (their only token is the held pick), and a sampling request's prompt is not
    held."""
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [7, 12, 5, 9], seed=31)
    hf = [tiny.hf_generate(p, max_new_tokens=8, min_new_tokens=8) for p in prompts]
    llm = tiny.llm(max_batch_size=4)
    la = llm.overlap
    held: list[int] = []
    orig = la.hold
    la.hold = lambda batch, logits: held.append(len(batch)) or orig(batch, logits)
    for p, ref in zip(prompts, hf):            # one at a time, as `trt-gpt bench --concurrency 1` serves them
        assert llm.generate([p], SamplingParams(max_tokens=8))[0].token_ids == ref
    assert held == [1, 1, 1, 1]
    assert [o.token_ids for o in llm.generate(prompts, SamplingParams(max_tokens=1))] == [r[:1] for r in hf]
    assert held[4:] == [4]                      # the four prompts in one step, each finished by its pick
    _assert_clean(llm)
    sampled = SamplingParams(max_tokens=3, temperature=0.7, top_k=20, seed=1)
    assert len(llm.generate([prompts[0]], sampled)[0].token_ids) == 3
    assert len(held) == 5
    _assert_clean(llm)


@pytest.mark.parametrize("var,value,expected", [
    ("TRT_GPT_OVERLAP", "yes please", "expected 0 or 1"),
    ("TRT_GPT_CUDA_GRAPHS", "on", "expected one of 1, 0, eager"),
    ("TRT_GPT_HOST_PICKS", "2", "expected 0 or 1"),
    ("TRT_GPT_GRAPH_INPUTS", "stag", "expected one of stage, copy"),
    ("TRT_GPT_PREFILL_GRAPHS", "off-ish", "expected 0 or 1"),
])
def test_a_malformed_runtime_setting_is_an_error(tiny_gpt2_engine, overlap_env, monkeypatch, var, value, expected):
    from trt_gpt.errors import TrtGptError

    monkeypatch.setenv(var, value)
    with pytest.raises(TrtGptError, match=f"environment variable {var}='{value}': {expected}"):
        tiny_gpt2_engine.llm(max_batch_size=2)
