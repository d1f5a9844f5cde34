"""Multi-LoRA inside in-flight batching, against HF PEFT run one request at a time: mixed batches (A, B,
none, A), requests joining mid-flight, more adapters than slots (LRU swaps between steps, never of a held
adapter), adapters added and removed at run time, the decode-graph protocol with the Triton kernel, the
small-batch fused path with the adapters in its GEMVs, bad requests that fail alone; a LoRA and a
prompt-tuning table in one request (greedy and beam search) against PEFT fed `inputs_embeds` built from
the table."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from trt_gpt import LLM, SamplingParams  # noqa: E402
from trt_gpt.errors import TrtGptError  # noqa: E402
from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_logits, peft_model  # noqa: E402
from trt_gpt.testing import engine_from_checkpoint, random_prompts, run_arrivals, save_tiny  # noqa: E402

GPT2 = dict(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128, initializer_range=0.2)
N = 6


class Setup:
    def __init__(self, d: Path):
        from transformers import GPT2Config, GPT2LMHeadModel

        self.hf = d / "hf"
        save_tiny(GPT2LMHeadModel, GPT2Config(**GPT2), self.hf)
        self.loras = {
            "a": make_peft_adapter(self.hf, d / "a", seed=1, r=4, lora_alpha=8, fan_in_fan_out=True,
                                   target_modules=["c_attn", "c_proj", "c_fc"]),
            "b": make_peft_adapter(self.hf, d / "b", seed=2, r=8, lora_alpha=8, fan_in_fan_out=True,
                                   target_modules=["c_attn", "c_fc"]),
            "c": make_peft_adapter(self.hf, d / "c", seed=3, r=2, lora_alpha=4, fan_in_fan_out=True,
                                   target_modules=["c_proj"]),
        }
        # uids 0 = a, 1 = b; c only added at run time
        self.engine = engine_from_checkpoint(self.hf, d, max_batch_size=8, tokens_per_block=4, max_lora_rank=8,
                                             max_beam_width=3, max_prompt_embedding_table_size=8,
                                             lora_dirs=[self.loras["a"], self.loras["b"]])
        self.refs = {k: peft_model(self.hf, v) for k, v in self.loras.items()}
        self.refs[None] = peft_model(self.hf, None)

    def greedy(self, key, prompt, n=N):
        return peft_greedy(self.refs[key], prompt, n)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    return Setup(tmp_path_factory.mktemp("lora_pool"))


UID = {"a": 0, "b": 1, None: -1}


def test_mixed_batch_equals_each_alone(setup):
    llm = LLM(setup.engine, device="cpu")
    keys = ["a", "b", None, "a"]
    prompts = random_prompts(211, [5, 9, 7, 3], seed=1)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=N, lora=UID[k], return_logits=True) for k in keys])
    for k, p, o in zip(keys, prompts, outs):
        assert o.token_ids == setup.greedy(k, p)
        want = peft_logits(setup.refs[k], p + o.token_ids[:-1])[len(p) - 1:]
        assert (want - o.generation_logits).abs().max().item() <= 1e-4


def test_requests_join_in_flight(setup):
    llm = LLM(setup.engine, device="cpu")
    keys = ["b", "a", None, "b", "a"]
    prompts = random_prompts(211, [4, 12, 6, 8, 5], seed=2)
    got = run_arrivals(llm, prompts, [SamplingParams(max_tokens=N, lora=UID[k]) for k in keys], [0, 1, 1, 3, 4])
    assert got == [setup.greedy(k, p) for k, p in zip(keys, prompts)]


def test_more_adapters_than_slots(setup):
    """One slot: requests for the other adapter wait for it, the held one is never evicted mid-request."""
    llm = LLM(setup.engine, device="cpu", max_loras=1)
    loads, write = [], llm.lora.pool.write
    llm.lora.pool.write = lambda slot, w: (loads.append(slot), write(slot, w))
    keys = ["a", "b", "a", None, "b"]
    prompts = random_prompts(211, [5, 6, 7, 4, 3], seed=3)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=N, lora=UID[k]) for k in keys])
    assert loads == [0, 0]     # a, then b swapped in over it once both a requests finished
    assert [o.token_ids for o in outs] == [setup.greedy(k, p) for k, p in zip(keys, prompts)]
    assert not llm.lora.waiting and not any(llm.lora.holders.values())


def test_add_and_remove_at_run_time(setup):
    llm = LLM(setup.engine, device="cpu", max_loras=2)
    graphs_before = llm.executor.graphs
    p = random_prompts(211, [6], seed=4)[0]
    llm.add_lora("c", setup.loras["c"])
    assert llm.generate([p], SamplingParams(max_tokens=N, lora="c"))[0].token_ids == setup.greedy("c", p)
    seq = llm.add_request(p, SamplingParams(max_tokens=N, lora="c"))
    with pytest.raises(TrtGptError, match="in use"):
        llm.remove_lora("c")
    llm.cancel(seq)
    llm.remove_lora("c")
    with pytest.raises(TrtGptError, match="unknown LoRA 'c'"):
        llm.add_request(p, SamplingParams(lora="c"))
    # the same pool keeps serving the built-in adapters
    assert llm.generate([p], SamplingParams(max_tokens=N, lora=1))[0].token_ids == setup.greedy("b", p)
    assert llm.executor.graphs is graphs_before


def test_remove_counts_waiting_requests_and_retires_when_idle(setup):
    """An adapter a request waits for (every slot held) is in use too; `when_idle` retires it instead: new
    requests cannot name it, the ones using it finish with it, and it is dropped when the last one ends."""
    llm = LLM(setup.engine, device="cpu", max_loras=1)
    llm.add_lora("c", setup.loras["c"])
    pa, pc = random_prompts(211, [5, 6], seed=7)
    sa = llm.add_request(pa, SamplingParams(max_tokens=N, lora=0))     # holds the one slot
    sc = llm.add_request(pc, SamplingParams(max_tokens=N, lora="c"))   # waits for it
    assert sc in llm.lora.waiting
    with pytest.raises(TrtGptError, match="in use"):
        llm.remove_lora("c")
    llm.remove_lora("c", when_idle=True)
    with pytest.raises(TrtGptError, match="unknown LoRA 'c'"):
        llm.add_request(pc, SamplingParams(lora="c"))
    while not (sa.is_finished and sc.is_finished):
        llm.step()
    assert sa.output_ids == setup.greedy("a", pa) and sc.output_ids == setup.greedy("c", pc)
    assert "c" not in llm.lora.weights and "c" not in llm.lora.resident
    # an idle adapter goes at once
    llm.add_lora("c", setup.loras["c"])
    llm.remove_lora("c", when_idle=True)
    assert "c" not in llm.lora.weights


def test_bad_request_fails_alone(setup):
    llm = LLM(setup.engine, device="cpu")
    prompts = random_prompts(211, [5, 8], seed=5)
    seqs = [llm.add_request(prompts[0], SamplingParams(max_tokens=N, lora=0))]
    llm.step()
    with pytest.raises(TrtGptError, match="unknown LoRA '7'"):
        llm.add_request(prompts[1], SamplingParams(max_tokens=N, lora=7))
    seqs.append(llm.add_request(prompts[1], SamplingParams(max_tokens=N, lora=-1)))
    while llm.scheduler.has_work:
        llm.step()
    assert [list(s.output_ids) for s in seqs] == [setup.greedy("a", prompts[0]), setup.greedy(None, prompts[1])]


def test_decode_graph_protocol_with_triton_kernel(setup, monkeypatch):
    """Static graph buffers (TRT_GPT_CUDA_GRAPHS=eager) and the Triton kernel (interpreted on CPU): padded
    graph rows carry no adapter, slots are read from the fixed column."""
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "0")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    llm = LLM(setup.engine, device="cpu")
    assert llm.executor.graphs is not None and llm.lora.pool.triton
    keys = ["b", None, "a"]
    prompts = random_prompts(211, [4, 5, 3], seed=6)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=4, lora=UID[k]) for k in keys])
    assert [o.token_ids for o in outs] == [setup.greedy(k, p, 4) for k, p in zip(keys, prompts)]


@pytest.mark.parametrize("graphs", ["eager", "0"])
def test_fused_decode_path_with_adapters(setup, monkeypatch, graphs):
    """The small-batch fused path (TRT_GPT_FUSED_DECODE_ROWS=4: steps of up to 4 rows) with adapters: each
    adapted GPT-2 linear adds its delta in the fused GEMV's epilogue (qkv through the K/V write epilogue),
    a mixed batch (b, none, a) decodes PEFT's tokens and logits, with and without the graphs' fixed buffers."""
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", graphs)
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "4")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    llm = LLM(setup.engine, device="cpu")
    fused = llm.engine.model.fused
    assert fused is not None and llm.lora.pool.triton
    shrinks, real = [], fused.lora_shrink
    fused.lora_shrink = lambda x, *a, **k: shrinks.append(x.shape[0]) or real(x, *a, **k)
    keys = ["b", None, "a"]
    prompts = random_prompts(211, [4, 5, 3], seed=8)
    outs = llm.generate(prompts, [SamplingParams(max_tokens=4, lora=UID[k], return_logits=True) for k in keys])
    assert shrinks           # the decode steps (3 rows, padded to a graph size with eager graphs) took them
    for k, p, o in zip(keys, prompts, outs):
        assert o.token_ids == setup.greedy(k, p, 4)
        want = peft_logits(setup.refs[k], p + o.token_ids[:-1])[len(p) - 1:]
        assert (want - o.generation_logits).abs().max().item() <= 1e-4


def test_beam_search_with_an_adapter(setup):
    """Beams share their request's slot: the best beam equals PEFT's beam search (HF generate)."""
    llm = LLM(setup.engine, device="cpu")
    p = random_prompts(211, [6], seed=7)[0]
    out = llm.generate([p], SamplingParams(max_tokens=5, num_beams=3, lora=0))[0]
    ids = torch.tensor([p])
    with torch.no_grad():
        ref = setup.refs["a"].generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5,
                                       min_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0,
                                       eos_token_id=None)
    assert out.token_ids == ref[0, len(p):].tolist()


# ---------------------------------------------------------------- LoRA and prompt tables together
VOCAB = GPT2["vocab_size"]


def table_file(tmp_path) -> tuple[Path, torch.Tensor]:
    t = torch.randn(2, 4, GPT2["n_embd"], generator=torch.Generator().manual_seed(11)) * 0.5   # 2 tasks x 4
    np.save(tmp_path / "t.npy", t.numpy())
    return tmp_path / "t.npy", t


def embeds(ref, ids: list[int], table: torch.Tensor) -> torch.Tensor:
    """inputs_embeds [1, L, H]: the task table's row for ids >= vocab, the word embedding otherwise."""
    wte = ref.get_input_embeddings().weight
    return torch.stack([table[t - VOCAB] if t >= VOCAB else wte[t] for t in ids]).unsqueeze(0)


def peft_greedy_embeds(ref, ids: list[int], table: torch.Tensor, n: int) -> tuple[list[int], torch.Tensor]:
    """n greedy tokens and their logits rows by full forwards on inputs_embeds (the definition, no cache)."""
    ids, rows = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            rows.append(ref(inputs_embeds=embeds(ref, ids, table)).logits[0, -1].float())
            ids.append(int(rows[-1].argmax()))
    return ids[-n:], torch.stack(rows)


def test_lora_and_prompt_table_in_one_request(setup, tmp_path):
    """Requests naming an adapter and a table, either alone, or neither, in one batch: each equals PEFT's
    LoRA model (or the base) on the table's embeddings, virtual tokens first and among real ones."""
    path, table = table_file(tmp_path)
    llm = LLM(setup.engine, device="cpu", prompt_tables={"t": path})
    v = VOCAB
    p = random_prompts(211, [5, 6, 4, 7], seed=8)
    reqs = [("a", 1, [v, v + 1, v + 2, v + 3] + p[0]), ("b", None, p[1]), (None, 0, [v + 2, v] + p[2]),
            ("b", 0, p[3][:3] + [v + 1, v + 3] + p[3][3:])]
    params = [SamplingParams(max_tokens=N, lora=UID[k], return_logits=True,
                             prompt_table=None if task is None else "t", prompt_task=task) for k, task, _ in reqs]
    outs = llm.generate([ids for *_, ids in reqs], params)
    for (k, task, ids), o in zip(reqs, outs):
        if task is None:
            want, rows = setup.greedy(k, ids), peft_logits(setup.refs[k], ids + o.token_ids[:-1])[len(ids) - 1:]
        else:
            want, rows = peft_greedy_embeds(setup.refs[k], ids, table[task], N)
        assert o.token_ids == want
        assert (o.generation_logits - rows).abs().max().item() <= 1e-4
        assert o.prompt_token_ids == ids
    # both really act: without the adapter, or without the table, the first request goes elsewhere
    assert peft_greedy_embeds(setup.refs[None], reqs[0][2], table[1], N)[0] != outs[0].token_ids
    assert setup.greedy("a", p[0]) != outs[0].token_ids
    got = llm.score([reqs[0][2]], prompt_table="t", prompt_task=1, lora=0)[0]
    with torch.no_grad():
        ref = setup.refs["a"](inputs_embeds=embeds(setup.refs["a"], reqs[0][2], table[1])).logits[0].float()
    assert (got - ref).abs().max().item() <= 1e-4


def test_beam_search_with_lora_and_prompt_table(setup, tmp_path):
    """Beams of a request with an adapter and a table: the best beam equals PEFT's HF beam search on
    inputs_embeds built from the table."""
    path, table = table_file(tmp_path)
    llm = LLM(setup.engine, device="cpu", prompt_tables={"t": path})
    p = [VOCAB, VOCAB + 1, VOCAB + 2, VOCAB + 3] + random_prompts(211, [5], seed=9)[0]
    for key in ("a", None):
        out = llm.generate([p], SamplingParams(max_tokens=5, num_beams=3, lora=UID[key], prompt_table="t",
                                               prompt_task=1))[0]
        ref = setup.refs[key]
        model = ref.get_base_model() if key is not None else ref     # the LoRA layers are injected in place
        with torch.no_grad():
            emb = embeds(ref, p, table[1])
            beams = model.generate(inputs_embeds=emb, attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                   max_new_tokens=5, min_new_tokens=5, num_beams=3, do_sample=False, pad_token_id=0,
                                   eos_token_id=None)
        assert out.token_ids == beams[0, -5:].tolist()


def test_a_refused_request_holds_neither_table_nor_slot(setup, tmp_path):
    path, _ = table_file(tmp_path)
    llm = LLM(setup.engine, device="cpu", prompt_tables={"t": path})
    p = random_prompts(211, [5], seed=10)[0]
    with pytest.raises(TrtGptError, match="unknown LoRA '7'"):
        llm.add_request([VOCAB] + p, SamplingParams(prompt_table="t", lora=7))
    assert llm.prompt_pool.tables["t"].users == 0
    with pytest.raises(TrtGptError, match="'zzz' is not loaded"):
        llm.add_request([VOCAB] + p, SamplingParams(prompt_table="zzz", lora=0))
    assert not any(llm.lora.holders.values())
    ok = llm.add_request([VOCAB] + p, SamplingParams(max_tokens=3, prompt_table="t", lora=0))
    while llm.scheduler.has_work:
        llm.step()
    assert len(ok.output_ids) == 3 and llm.prompt_pool.tables["t"].users == 0 and not any(llm.lora.holders.values())
    llm.remove_prompt_table("t")
