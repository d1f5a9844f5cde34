"""Prompt tuning through the runtime against HF with `inputs_embeds` built from the table: logits at every
position and greedy tokens (tiny GPT-2, learned positions; tiny Granite, RoPE with an embedding multiplier);
virtual tokens mixed with real ones; a batch mixing table A, table B and no table equals each alone; tables
added and removed at run time; bad requests and tables refused in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from trt_gpt import LLM, SamplingParams
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import engine_from_checkpoint, save_tiny

VOCAB = 211
ROWS = 24


def hf_embeds(hf, ids, table, vocab):
    """inputs_embeds [1, L, H]: the table's row for ids >= vocab, the word embedding otherwise."""
    wte = hf.get_input_embeddings().weight
    return torch.stack([table[t - vocab] if t >= vocab else wte[t] for t in ids]).unsqueeze(0)


def hf_logits(hf, ids, table, vocab):
    with torch.no_grad():
        return hf(inputs_embeds=hf_embeds(hf, ids, table, vocab)).logits[0].float()


def hf_greedy_embeds(hf, ids, table, vocab, n):
    """n greedy tokens by hand (each step re-embeds the whole sequence: the definition, no cache)."""
    ids = list(ids)
    out = []
    for _ in range(n):
        t = int(hf_logits(hf, ids, table, vocab)[-1].argmax())
        out.append(t)
        ids.append(t)
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import GPT2Config, GPT2LMHeadModel, GraniteConfig, GraniteForCausalLM

    out = {}
    d = tmp_path_factory.mktemp("gpt2")
    hf = save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128,
                                               initializer_range=0.2, bos_token_id=0, eos_token_id=0), d / "hf")
    out["gpt2"] = (hf, engine_from_checkpoint(d / "hf", d, tokens_per_block=4, max_input_len=64, max_batch_size=8,
                                              max_prompt_embedding_table_size=ROWS))
    d = tmp_path_factory.mktemp("granite")
    hf = save_tiny(GraniteForCausalLM, GraniteConfig(
        num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=VOCAB, max_position_embeddings=256, initializer_range=0.2, bos_token_id=None, eos_token_id=None,
        embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=1.5), d / "hf")
    out["granite"] = (hf, engine_from_checkpoint(d / "hf", d, tokens_per_block=4, max_input_len=64,
                                                 max_batch_size=8, max_prompt_embedding_table_size=ROWS))
    return out


def tables(tmp_path, hidden=64):
    g = torch.Generator().manual_seed(5)
    a = torch.randn(2, 5, hidden, generator=g) * 0.5      # two tasks of 5 virtual tokens
    b = torch.randn(4, hidden, generator=g) * 0.5         # one task of 4
    np.save(tmp_path / "a.npy", a.numpy())
    np.save(tmp_path / "b.npy", b.numpy())
    return a, b


@pytest.mark.parametrize("name", ["gpt2", "granite"])
def test_logits_and_greedy_match_hf_inputs_embeds(models, tmp_path, name):
    hf, engine = models[name]
    a, _ = tables(tmp_path)
    llm = LLM(engine, device="cpu", prompt_tables={"a": tmp_path / "a.npy"})
    v = VOCAB
    # virtual tokens first (the reference's run.py), and mixed in the middle of real ones
    prompts = [[v, v + 1, v + 2, v + 3, v + 4, 17, 42, 9], [5, v + 3, 88, v, v + 4, 100]]
    for task in (0, 1):
        got = llm.score(prompts, prompt_table="a", prompt_task=task)
        for p, lg in zip(prompts, got):
            want = hf_logits(hf, p, a[task], v)
            assert (lg - want).abs().max().item() < 1e-4
        outs = llm.generate(prompts, SamplingParams(max_tokens=6, prompt_table="a", prompt_task=task))
        for p, o in zip(prompts, outs):
            assert o.token_ids == hf_greedy_embeds(hf, p, a[task], v, 6)
            assert o.prompt_token_ids == p     # the user's ids, not the pool's


def test_mixed_batch_equals_each_alone(models, tmp_path):
    hf, engine = models["gpt2"]
    a, b = tables(tmp_path)
    llm = LLM(engine, device="cpu")
    llm.add_prompt_table("a", tmp_path / "a.npy")
    llm.add_prompt_table("b", tmp_path / "b.npy")
    v = VOCAB
    prompts = [[v, v + 1, v + 2, 30, 31], [v + 3, v, 7, 8, 9, 10], [3, 4, 5], [v + 4, 60]]
    params = [SamplingParams(max_tokens=8, prompt_table="a", prompt_task=1), SamplingParams(max_tokens=8,
              prompt_table="b"), SamplingParams(max_tokens=8), SamplingParams(max_tokens=8, prompt_table="a")]
    together = [o.token_ids for o in llm.generate(prompts, params)]
    alone = [llm.generate([p], sp)[0].token_ids for p, sp in zip(prompts, params)]
    assert together == alone
    assert together[0] == hf_greedy_embeds(hf, prompts[0], a[1], v, 8)
    assert together[1] == hf_greedy_embeds(hf, prompts[1], b, v, 8)
    assert together[3] == hf_greedy_embeds(hf, prompts[3], a[0], v, 8)
    # the two tables really differ in effect (else the mix proves nothing)
    assert llm.generate([prompts[1]], SamplingParams(max_tokens=8, prompt_table="a"))[0].token_ids != together[1]


def test_add_remove_at_run_time_reuses_rows(models, tmp_path):
    hf, engine = models["gpt2"]
    a, b = tables(tmp_path)
    llm = LLM(engine, device="cpu")
    llm.add_prompt_table("a", tmp_path / "a.npy")        # 10 rows
    llm.add_prompt_table("b", tmp_path / "b.npy")        # 4 rows
    llm.add_prompt_table("a2", tmp_path / "a.npy")       # 10 more: the pool of 24 is full
    with pytest.raises(TrtGptError, match="needs 4 rows but the pool of max_prompt_embedding_table_size 24 has 0"):
        llm.add_prompt_table("b2", tmp_path / "b.npy")
    llm.remove_prompt_table("a")
    llm.add_prompt_table("b2", tmp_path / "b.npy")      # into a's old rows
    assert llm.prompt_pool.tables["b2"].start == 0
    p = [VOCAB + 2, VOCAB, 50]
    got = llm.score([p], prompt_table="b2")[0]
    assert (got - hf_logits(hf, p, b, VOCAB)).abs().max().item() < 1e-4
    with pytest.raises(TrtGptError, match="'a' is not loaded"):
        llm.score([p], prompt_table="a")


def test_table_in_use_cannot_be_removed(models, tmp_path):
    _, engine = models["gpt2"]
    tables(tmp_path)
    llm = LLM(engine, device="cpu", prompt_tables={"b": tmp_path / "b.npy"})
    seq = llm.add_request([VOCAB, 5], SamplingParams(max_tokens=4, prompt_table="b"))
    with pytest.raises(TrtGptError, match="used by 1 running request"):
        llm.remove_prompt_table("b")
    llm.cancel(seq)
    llm.remove_prompt_table("b")


def test_bad_requests_and_tables(models, tmp_path):
    _, engine = models["gpt2"]
    tables(tmp_path)
    llm = LLM(engine, device="cpu", prompt_tables={"a": tmp_path / "a.npy"})
    v = VOCAB
    cases = [
        (([v + 5, 1], SamplingParams(prompt_table="a")), "prompt id 216 is virtual token 5 but prompt table 'a' has 5"),
        (([v, 1], SamplingParams(prompt_table="a", prompt_task=2)), "task 2 unknown"),
        (([v, 1], SamplingParams()), "names no prompt table"),
        (([v, 1], SamplingParams(prompt_table="zzz")), "'zzz' is not loaded"),
        (([v + ROWS, 1], SamplingParams(prompt_table="a")), "out of the vocabulary"),
        (([1], SamplingParams(prompt_task=1)), "no 'prompt_table' is named"),
        (([1], SamplingParams(prompt_task=-1)), "'prompt_task' is -1"),
    ]
    for (prompt, sp), msg in cases:
        with pytest.raises(TrtGptError, match=msg):
            llm.generate([prompt], sp)
    np.save(tmp_path / "wide.npy", np.zeros((3, 65), np.float32))
    np.save(tmp_path / "big.npy", np.zeros((5, 5, 64), np.float32))
    np.save(tmp_path / "nan.npy", np.full((3, 64), np.nan, np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((3, 64), np.int32))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "cut.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:100])
    for f, msg in [("wide.npy", "hidden size is 65, the model's hidden_size is 64"),
                   ("big.npy", "25 rows exceeds the engine's max_prompt_embedding_table_size \\(24\\)"),
                   ("nan.npy", "NaN"), ("ints.npy", "expected a float16/float32 array"),
                   ("obj.npy", "not a readable .npy"), ("cut.npy", "not a readable .npy"),
                   ("missing.npy", "not found")]:
        with pytest.raises(TrtGptError, match=msg) as e:
            llm.add_prompt_table("x", tmp_path / f)
        assert "\n" not in str(e.value)
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(TrtGptError, match="not a prompt table"):
        llm.add_prompt_table("x", tmp_path / "t.txt")
    # a bad request leaves the pool and the others alone
    assert llm.generate([[v, 3]], SamplingParams(max_tokens=2, prompt_table="a"))[0].token_ids


def test_engine_without_tables_refuses(tmp_path):
    from trt_gpt.testing import engine_from_checkpoint
    from transformers import GPT2Config, GPT2LMHeadModel

    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=32),
              tmp_path / "hf")
    llm = LLM(engine_from_checkpoint(tmp_path / "hf", tmp_path, max_input_len=16), device="cpu")
    with pytest.raises(TrtGptError, match="built without prompt tables"):
        llm.add_prompt_table("a", tmp_path / "a.npy")
    with pytest.raises(TrtGptError, match="built without prompt tables"):
        llm.generate([[1]], SamplingParams(prompt_table="a"))
    with pytest.raises(TrtGptError, match="out of the vocabulary \\(0..49\\)"):
        llm.generate([[50]])


def test_decode_graph_protocol_and_fused_embed(models, tmp_path, monkeypatch):
    """Triton backend with the CUDA-graph protocol (`eager` on CPU) and the fused batch-1 kernels: a prompt
    of one virtual token runs as a graph step through the Triton embedding, which reads the pool."""
    pytest.importorskip("triton")
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    monkeypatch.setenv("TRT_GPT_CUDA_GRAPHS", "eager")
    monkeypatch.setenv("TRT_GPT_FUSED_DECODE_ROWS", "1")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    from trt_gpt.kernels import triton_embed

    calls = []
    orig = triton_embed.embed
    monkeypatch.setattr(triton_embed, "embed", lambda *a, **k: calls.append(k.get("prompt")) or orig(*a, **k))
    hf, engine = models["gpt2"]
    a, _ = tables(tmp_path)
    llm = LLM(engine, device="cpu", max_batch_size=2, prompt_tables={"a": tmp_path / "a.npy"})
    assert llm.executor.graphs is not None
    for p in ([VOCAB + 3], [VOCAB, VOCAB + 1, 40]):
        out = llm.generate([p], SamplingParams(max_tokens=3, prompt_table="a", prompt_task=1))[0].token_ids
        assert out == hf_greedy_embeds(hf, p, a[1], VOCAB, 3)
    assert calls and all(c is not None and c[0] is llm.prompt_pool.buffer for c in calls)
