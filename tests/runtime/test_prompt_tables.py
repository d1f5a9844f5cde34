"""Prompt tuning against HF: the engine with a request's virtual tokens (ids >= vocab) equals HF run on
`inputs_embeds` built from the table (written here from the definition), and PEFT's prompt-tuning model;
mixed batches (two tables, none); tables from .npy; bad ids fail alone, in one line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from trt_gpt import LLM, SamplingParams  # noqa: E402
from trt_gpt.errors import TrtGptError  # noqa: E402
from trt_gpt.lora.testing import peft_greedy, peft_logits, peft_model  # noqa: E402
from trt_gpt.testing import engine_from_checkpoint, random_prompts, save_tiny  # noqa: E402

VOCAB, NV = 211, 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from peft import PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

    d = tmp_path_factory.mktemp("prompt_tables")
    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=VOCAB, n_positions=128,
                                          initializer_range=0.2), d / "hf")
    pm = get_peft_model(AutoModelForCausalLM.from_pretrained(str(d / "hf")),
                        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=NV))
    with torch.no_grad():
        for p in pm.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    pm.save_pretrained(str(d / "peft"))
    engine = engine_from_checkpoint(d / "hf", d, max_batch_size=8, tokens_per_block=4,
                                    max_prompt_embedding_table_size=16)
    return d, engine


def hf_with_table(hf, table: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """HF logits for [the table's rows; the tokens' embeddings] fed as inputs_embeds."""
    with torch.no_grad():
        emb = torch.cat([table, hf.get_input_embeddings()(torch.tensor(ids))]).unsqueeze(0)
        return hf(inputs_embeds=emb).logits[0]


def virtual(n: int = NV) -> list[int]:
    return [VOCAB + i for i in range(n)]


def test_peft_prompt_tuning_matches(setup):
    d, engine = setup
    llm = LLM(engine, device="cpu")
    llm.add_prompt_table("milton", d / "peft")
    ref = peft_model(d / "hf", d / "peft")
    hf = peft_model(d / "hf", None)
    from safetensors.torch import load_file

    table = load_file(str(d / "peft" / "adapter_model.safetensors"))["prompt_embeddings"]
    for p in random_prompts(VOCAB, [4, 9], seed=2):
        got = llm.score([virtual() + p], prompt_table="milton")[0]
        assert (got - hf_with_table(hf, table, p)).abs().max().item() <= 1e-4
        assert (got[NV:] - peft_logits(ref, p)[NV:]).abs().max().item() <= 1e-4
        out = llm.generate([virtual() + p], SamplingParams(max_tokens=5, prompt_table="milton"))[0]
        assert out.token_ids == peft_greedy(ref, p, 5)


def test_mixed_tables_and_none_in_one_batch(setup, tmp_path):
    d, engine = setup
    g = torch.Generator().manual_seed(3)
    tables = torch.randn(2, 3, 64, generator=g)
    np.save(tmp_path / "t.npy", tables.numpy())
    llm = LLM(engine, device="cpu")
    llm.add_prompt_table("t0", tmp_path / "t.npy", task=0)
    llm.add_prompt_table("t1", tmp_path / "t.npy", task=1)
    hf = peft_model(d / "hf", None)
    prompts = random_prompts(VOCAB, [4, 6, 5], seed=4)
    # virtual tokens in the middle of a prompt too: a prompt may mix virtual and real tokens
    reqs = [(virtual(3) + prompts[0], "t0"), (prompts[1], None), (prompts[2][:2] + virtual(2) + prompts[2][2:], "t1")]
    outs = llm.generate([r for r, _ in reqs], [SamplingParams(max_tokens=4, prompt_table=t, return_logits=True)
                                               for _, t in reqs])
    for (ids, name), out in zip(reqs, outs):
        with torch.no_grad():
            emb = hf.get_input_embeddings()(torch.tensor([min(t, VOCAB - 1) for t in ids]))
            if name is not None:
                k = int(name[1])
                for i, t in enumerate(ids):
                    if t >= VOCAB:
                        emb[i] = tables[k, t - VOCAB]
            toks = []
            for _ in range(4):
                logits = hf(inputs_embeds=emb.unsqueeze(0)).logits[0, -1]
                toks.append(int(logits.argmax()))
                emb = torch.cat([emb, hf.get_input_embeddings()(torch.tensor([toks[-1]]))])
        assert out.token_ids == toks


def test_bad_prompts_fail_alone(setup, tmp_path):
    d, engine = setup
    llm = LLM(engine, device="cpu")
    llm.add_prompt_table("small", torch.randn(2, 64))
    ok = llm.add_request([1, 2, 3], SamplingParams(max_tokens=3))
    with pytest.raises(TrtGptError, match="beyond prompt table 'small'"):
        llm.add_request(virtual(3) + [1], SamplingParams(prompt_table="small"))
    with pytest.raises(TrtGptError, match="names no prompt table"):
        llm.add_request(virtual(1) + [1], SamplingParams())
    with pytest.raises(TrtGptError, match="unknown prompt table"):
        llm.add_request([1], SamplingParams(prompt_table="nope"))
    with pytest.raises(TrtGptError, match="hidden size"):
        llm.add_prompt_table("wide", torch.randn(2, 65))
    with pytest.raises(TrtGptError, match="do not fit"):
        llm.add_prompt_table("big", torch.randn(15, 64))
    while llm.scheduler.has_work:
        llm.step()
    assert len(ok.output_ids) == 3 and not any(llm.prompts.holders.values())
