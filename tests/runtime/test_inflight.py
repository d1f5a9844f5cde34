"""In-flight batching, chunked prompts, paged KV cache and preemption: every request's greedy output
equals running it alone (and HF generate), whatever else shares the batch and whenever it arrives."""
from __future__ import annotations

import random

import pytest
import torch

from trt_gpt import SamplingParams
from trt_gpt.errors import TrtGptError
from trt_gpt.kernels.kv_cache_spec import KVCacheSpec
from trt_gpt.runtime import kv_cache
from trt_gpt.runtime.kv_cache import BlockAllocator, PagedKVCache, plan_num_blocks
from trt_gpt.runtime.sequence import Status
from trt_gpt.testing import random_prompts, run_arrivals

VOCAB = 211


def _workload(seed: int, n: int, max_len: int = 45, max_new: int = 20):
    rng = random.Random(seed)
    lengths = [rng.randint(1, max_len) for _ in range(n)]
    prompts = random_prompts(VOCAB, lengths, seed=seed)
    params = [SamplingParams(max_tokens=rng.randint(3, max_new)) for _ in range(n)]
    arrivals = [rng.randint(0, 25) for _ in range(n)]
    return prompts, params, arrivals


def _alone(llm, prompts, params) -> list[list[int]]:
    return [llm.generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)]


def _spy_schedule(llm) -> list[list[tuple[int, int]]]:
    """Record (tokens scheduled, prompt length) of every sequence in every step."""
    log: list[list[tuple[int, int]]] = []
    orig = llm.scheduler.schedule

    def schedule():
        batch = orig()
        log.append([(n, len(s.prompt_ids) if s.num_computed < len(s.prompt_ids) else 0) for s, n in batch])
        return batch

    llm.scheduler.schedule = schedule
    return log


def test_random_arrivals_equal_alone_and_hf(tiny_gpt2_engine):
    tiny = tiny_gpt2_engine
    prompts, params, arrivals = _workload(seed=1, n=10)
    alone = _alone(tiny.llm(), prompts, params)
    for p, sp, got in zip(prompts, params, alone):
        assert got == tiny.hf_generate(p, max_new_tokens=sp.max_tokens)
    assert len({tuple(a) for a in alone}) == len(alone)  # non-degenerate outputs

    llm = tiny.llm(max_num_tokens=16, max_batch_size=6)
    log = _spy_schedule(llm)
    assert run_arrivals(llm, prompts, params, arrivals) == alone
    assert max(sum(n for n, _ in step) for step in log) <= 16
    assert any(0 < n < plen for step in log for n, plen in step)            # a prompt split into chunks
    assert any(any(plen for _, plen in step) and any(not plen for _, plen in step) for step in log)  # mixed
    assert max(len(step) for step in log) > 1
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_kv_exhaustion_preempts_and_completes_every_request(tiny_gpt2_engine):
    tiny = tiny_gpt2_engine
    prompts, params, arrivals = _workload(seed=2, n=12, max_len=30, max_new=20)
    # One sampled request: its private generator must survive preemption and recompute.
    params[3] = SamplingParams(max_tokens=15, top_k=0, temperature=0.9, seed=1234)
    alone = _alone(tiny.llm(), prompts, params)
    llm = tiny.llm(max_tokens_in_paged_kv_cache=64)      # 16 blocks of 4 tokens: far too few for 12 requests
    assert llm.cache.num_blocks == 16
    got = run_arrivals(llm, prompts, params, [a // 5 for a in arrivals])
    assert got == alone
    assert llm.scheduler.num_preemptions > 0
    assert llm.cache.allocator.num_free == llm.cache.num_blocks


def test_cancel_frees_blocks(tiny_gpt2_engine):
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [13, 7, 21, 5], seed=5)
    params = SamplingParams(max_tokens=12)
    alone = _alone(tiny.llm(), prompts, [params] * 4)
    llm = tiny.llm(max_batch_size=3)
    seqs = [llm.add_request(p, params) for p in prompts]
    for _ in range(4):
        llm.step()
    victim, waiting = seqs[0], seqs[3]
    assert victim.status is Status.RUNNING and waiting.status is Status.WAITING  # batch size 3
    held = len(victim.blocks)
    assert held > 0
    free = llm.cache.allocator.num_free
    llm.cancel(victim)
    llm.cancel(waiting)
    assert llm.cache.allocator.num_free == free + held and victim.blocks == []
    assert victim.finish_reason == "cancelled" and waiting.finish_reason == "cancelled"
    assert waiting not in llm.scheduler.waiting and victim not in llm.scheduler.running
    while llm.scheduler.has_work:
        llm.step()
    assert [seqs[1].output_ids, seqs[2].output_ids] == alone[1:3]
    assert llm.cache.allocator.num_free == llm.cache.num_blocks
    # Leaving a stream early cancels what is still running.
    for out in llm.generate_stream(prompts, params):
        break
    assert not llm.scheduler.has_work and llm.cache.allocator.num_free == llm.cache.num_blocks


def test_request_larger_than_cache_is_a_clear_error(tiny_gpt2_engine):
    llm = tiny_gpt2_engine.llm(max_tokens_in_paged_kv_cache=16)
    with pytest.raises(TrtGptError, match="KV blocks"):
        llm.add_request(list(range(1, 21)), SamplingParams(max_tokens=4))
    with pytest.raises(TrtGptError, match="max_input_len"):
        llm.add_request([1] * 65)
    with pytest.raises(TrtGptError, match="vocabulary"):
        llm.add_request([1, 500])


def test_block_refcounts_and_copy():
    alloc = BlockAllocator(4)
    a = alloc.allocate(2)
    b = alloc.fork(a)
    assert b == a and alloc.num_free == 2 and alloc.refcount(a[0]) == 2
    alloc.free(a)
    assert alloc.num_free == 2 and alloc.refcount(a[0]) == 1
    alloc.free(b)
    assert alloc.num_free == 4
    with pytest.raises(RuntimeError):
        alloc.free([a[0]])
    assert alloc.allocate(5) is None and alloc.num_free == 4
    cache = PagedKVCache(2, 3, 1, 2, 4, KVCacheSpec(torch.float32), torch.device("cpu"))
    for k, v in cache.layers:
        k.normal_(), v.normal_()
    before = [(k.clone(), v.clone()) for k, v in cache.layers]
    cache.copy_blocks([2, 0], [1, 2])
    for (k, v), (k0, v0) in zip(cache.layers, before):
        assert torch.equal(k[1], k0[2]) and torch.equal(v[2], v0[0]) and torch.equal(k[0], k0[0])


def test_pool_size_from_memory_fraction_or_tokens(monkeypatch):
    per_block = 1000
    assert plan_num_blocks(per_block, 16, torch.device("cpu"), 100, 0.9, cap_tokens=10_000) == 7
    monkeypatch.setattr(kv_cache, "available_host_memory", lambda: 10**9)
    assert plan_num_blocks(per_block, 16, torch.device("cpu"), None, 0.9, cap_tokens=160) == 10
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (50_000, 80_000))
    assert plan_num_blocks(per_block, 16, torch.device("cuda"), None, 0.5, cap_tokens=10**6) == 25
    assert plan_num_blocks(per_block, 16, torch.device("cuda"), None, 0.9, cap_tokens=160) == 10
    with pytest.raises(TrtGptError, match="kv_cache_free_gpu_memory_fraction"):
        plan_num_blocks(per_block, 16, torch.device("cpu"), None, 1.5, cap_tokens=160)


def test_cpu_pool_from_available_memory(monkeypatch):
    """CPU runs size the pool from available host memory as GPU runs do from free device memory, and refuse
    a pool that cannot hold one sequence of max_seq_len."""
    per_block = 1000
    monkeypatch.setattr(kv_cache, "available_host_memory", lambda: 40_000)
    assert plan_num_blocks(per_block, 16, torch.device("cpu"), None, 0.5, cap_tokens=10**6) == 20
    assert plan_num_blocks(per_block, 16, torch.device("cpu"), None, 0.5, cap_tokens=10**6, min_tokens=320) == 20
    with pytest.raises(TrtGptError, match="less than one sequence of max_seq_len 321"):
        plan_num_blocks(per_block, 16, torch.device("cpu"), None, 0.5, cap_tokens=10**6, min_tokens=321)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (16_000, 80_000))
    with pytest.raises(TrtGptError, match="free GPU memory"):
        plan_num_blocks(per_block, 16, torch.device("cuda"), None, 0.9, cap_tokens=10**6, min_tokens=1024)


def test_available_host_memory_is_real():
    """The host's MemAvailable, as /proc/meminfo reports it (within what changes between two reads)."""
    pytest.importorskip("psutil")
    import re
    from pathlib import Path

    meminfo = Path("/proc/meminfo")
    if not meminfo.is_file():
        pytest.skip("no /proc/meminfo")
    ref = int(re.search(r"MemAvailable:\s+(\d+)", meminfo.read_text()).group(1)) * 1024
    got = kv_cache.available_host_memory()
    assert abs(got - ref) < 0.1 * ref
