"""`trt-gpt build --max_prompt_embedding_table_size` and `trt-gpt run --prompt_table_path/--prompt_tasks/
--num_prepend_vtokens` as a user types them: virtual tokens before each input as the reference's run.py puts
them, each input reading its task, greedy tokens equal to HF fed `inputs_embeds` from the table; bad input
as one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from trt_gpt.convert import convert
from trt_gpt.testing import assert_one_line_error, run_cli

PROMPTS = ["Born in north-east France, Soyer trained as a", "The harbour was quiet"]


def hf_greedy_embeds(hf, ids, table, vocab, n):
    wte = hf.get_input_embeddings().weight
    ids, out = list(ids), []
    with torch.no_grad():
        for _ in range(n):
            emb = torch.stack([table[t - vocab] if t >= vocab else wte[t] for t in ids]).unsqueeze(0)
            t = int(hf(inputs_embeds=emb).logits[0, -1].argmax())
            out.append(t)
            ids.append(t)
    return out


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    hf_dir, hf = gpt2_dir
    d = tmp_path_factory.mktemp("pt")
    convert(hf_dir, d / "ckpt", dtype="float32")
    run_cli("build", "--checkpoint_dir", d / "ckpt", "--output_dir", d / "engine", "--max_input_len", "32",
            "--max_batch_size", "4", "--max_prompt_embedding_table_size", "12")
    table = torch.randn(2, 4, hf.config.n_embd, generator=torch.Generator().manual_seed(0))
    np.save(d / "table.npy", table.numpy())
    return d, hf, table


def test_run_with_tasks_and_prepended_virtual_tokens(setup):
    from transformers import AutoTokenizer

    d, hf, table = setup
    vocab = hf.config.vocab_size
    tok = AutoTokenizer.from_pretrained(str(hf.config._name_or_path))
    proc = run_cli("run", "--engine_dir", d / "engine", "--input_text", *PROMPTS, "--max_output_len", "5",
                   "--prompt_table_path", d / "table.npy", "--prompt_tasks", "1,0", "--num_prepend_vtokens", "3",
                   "2", "--end_id", "0", "--json")
    got = json.loads(proc.stdout)
    for r, p, task, n in zip(got, PROMPTS, (1, 0), (3, 2)):
        ids = list(range(vocab, vocab + n)) + tok.encode(p)
        assert r["input_ids"] == ids
        assert r["output_ids"] == hf_greedy_embeds(hf, ids, table[task], vocab, 5)
    # without --num_prepend_vtokens: the task's whole table (4 virtual tokens) before each input
    proc = run_cli("run", "--engine_dir", d / "engine", "--input_text", PROMPTS[1], "--max_output_len", "5",
                   "--prompt-table-path", d / "table.npy", "--end_id", "0", "--json")
    r = json.loads(proc.stdout)[0]
    ids = list(range(vocab, vocab + 4)) + tok.encode(PROMPTS[1])
    assert r["input_ids"] == ids and r["output_ids"] == hf_greedy_embeds(hf, ids, table[0], vocab, 5)


def test_bad_prompt_tuning_input_is_one_line(setup, tmp_path):
    d, hf, _ = setup
    engine = d / "engine"
    base = ("run", "--engine_dir", engine, "--input_text", PROMPTS[0], "--max_output_len", "2")
    assert_one_line_error(run_cli(*base, "--prompt_table_path", d / "table.npy", "--prompt_tasks", "2", check=False),
                          "--prompt_tasks: task 2 unknown")
    assert_one_line_error(run_cli(*base, "--prompt_table_path", d / "table.npy", "--num_prepend_vtokens", "5",
                                  check=False), "must each be in 0..4")
    assert_one_line_error(run_cli(*base, "--prompt_tasks", "0", check=False), "need --prompt_table_path")
    np.save(tmp_path / "wide.npy", np.zeros((4, hf.config.n_embd + 1), np.float32))
    assert_one_line_error(run_cli(*base, "--prompt_table_path", tmp_path / "wide.npy", check=False),
                          "wide.npy", "hidden size")
    np.save(tmp_path / "big.npy", np.zeros((13, hf.config.n_embd), np.float32))
    assert_one_line_error(run_cli(*base, "--prompt_table_path", tmp_path / "big.npy", check=False),
                          "exceeds the engine's max_prompt_embedding_table_size (12)")
