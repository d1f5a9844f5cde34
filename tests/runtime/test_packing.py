"""The executor's whole-array packing (many sequences: decode rows, prompt chunks, resumed requests mixed)
produces exactly the inputs of the plain per-sequence loop, and a 40-request in-flight batch that uses it
still yields every request's solo greedy output."""
from __future__ import annotations

import numpy as np
import torch

import trt_gpt.runtime.executor as ex
from trt_gpt import SamplingParams
from trt_gpt.testing import random_prompts

VOCAB = 211


def _packed(llm, batch, bulk_from: int, monkeypatch):
    monkeypatch.setattr(ex, "_BULK_DECODE_ROWS", bulk_from)
    ids, pos, meta, cu = llm.executor.build_inputs(batch)
    rows = llm.executor._rows
    out = [t.cpu().numpy().copy() for t in (ids, pos, meta.slot_mapping, meta.cu_q_lens, meta.context_lens, rows)]
    nb = [len(s.blocks) for s, _ in batch]
    tables = meta.block_tables.cpu().numpy()
    out.append(np.concatenate([tables[i, :n] for i, n in enumerate(nb)]))
    return out, (meta.max_q_len, meta.max_context_len, meta.q_lens_host, meta.context_lens_host, cu)


def test_bulk_packing_equals_per_sequence_loop(tiny_gpt2_engine, monkeypatch):
    llm = tiny_gpt2_engine.llm(max_batch_size=48, max_num_tokens=120)
    prompts = random_prompts(VOCAB, [1 + (7 * i) % 30 for i in range(44)], seed=4)
    for p in prompts:
        llm.add_request(p, SamplingParams(max_tokens=6))
    mixed = 0
    for _ in range(12):
        batch = llm.scheduler.schedule()
        if not batch:
            break
        if len(batch) >= 32 and sum(n for _, n in batch) > len(batch):
            mixed += 1
            a, ha = _packed(llm, batch, 32, monkeypatch)
            b, hb = _packed(llm, batch, 10 ** 9, monkeypatch)
            assert ha == hb
            for x, y in zip(a, b):
                np.testing.assert_array_equal(x, y)
        logits = llm.executor.step(batch)
        llm._advance(batch, logits)
    assert mixed >= 2


def test_forty_requests_equal_alone(tiny_gpt2_engine):
    tiny = tiny_gpt2_engine
    prompts = random_prompts(VOCAB, [1 + (5 * i) % 23 for i in range(40)], seed=8)
    params = SamplingParams(max_tokens=5)
    alone = [tiny.hf_generate(p, max_new_tokens=5, min_new_tokens=5) for p in prompts[:6]]
    llm = tiny.llm(max_batch_size=48, max_num_tokens=200)
    outs = llm.generate(prompts, params)
    assert [o.token_ids for o in outs[:6]] == alone
    solo = tiny.llm()
    assert [o.token_ids for o in outs] == [solo.generate([p], params)[0].token_ids for p in prompts]
    assert torch.is_tensor(llm.executor._rows)
