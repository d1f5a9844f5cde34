"""Prompt tuning from the command line: build --max_prompt_embedding_table_size, run --prompt_table_path T
--prompt_tasks 0,1 (each input's task table put before it as virtual tokens) against HF on inputs_embeds."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from trt_gpt.testing import assert_one_line_error, run_cli

N = 5


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    hf_dir, hf = gpt2_dir
    d = tmp_path_factory.mktemp("prompt_cli")
    run_cli("convert", "--model_dir", hf_dir, "--output_dir", d / "ckpt", "--dtype", "float32")
    run_cli("build", "--checkpoint_dir", d / "ckpt", "--output_dir", d / "engine", "--max_batch_size", "4",
            "--max_input_len", "32", "--max_prompt_embedding_table_size", "8")
    tables = torch.randn(2, 3, hf.config.n_embd, generator=torch.Generator().manual_seed(0))
    np.save(d / "table.npy", tables.numpy())
    return hf, d, tables


def test_run_with_prompt_table_matches_hf(setup, tmp_path):
    hf, d, tables = setup
    texts = ["The quick brown fox", "Hello there"]
    run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", *texts, "--max_output_len", str(N),
            "--prompt_table_path", d / "table.npy", "--prompt_tasks", "1,0", "--output_csv", tmp_path / "o.csv")
    got = [[int(t) for t in row] for row in csv.reader((tmp_path / "o.csv").read_text().splitlines())]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d / "engine"))
    for text, task, out in zip(texts, (1, 0), got):
        with torch.no_grad():
            emb = torch.cat([tables[task], hf.get_input_embeddings()(torch.tensor(tok.encode(text)))])
            want = []
            for _ in range(N):
                want.append(int(hf(inputs_embeds=emb.unsqueeze(0)).logits[0, -1].argmax()))
                emb = torch.cat([emb, hf.get_input_embeddings()(torch.tensor([want[-1]]))])
        assert out == want


def test_bad_prompt_task_is_one_line(setup):
    _, d, _ = setup
    proc = run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", "a", "--max_output_len",
                   "2", "--prompt_table_path", d / "table.npy", "--prompt_tasks", "3", check=False)
    assert_one_line_error(proc, "--prompt_tasks")
