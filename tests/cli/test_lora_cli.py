"""LoRA from the command line as users type it: build --lora_dir A B, run --lora_task_uids per input (-1 none)
against PEFT's greedy tokens, also together with --prompt_table_path (PEFT on inputs_embeds built from the
table); bad uids and bad adapters are one-line errors."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

pytest.importorskip("peft")

from trt_gpt.lora.testing import make_peft_adapter, peft_greedy, peft_model  # noqa: E402
from trt_gpt.testing import assert_one_line_error, run_cli  # noqa: E402

N = 6


@pytest.fixture(scope="module")
def setup(gpt2_dir, tmp_path_factory):
    hf, _ = gpt2_dir
    d = tmp_path_factory.mktemp("lora_cli")
    a = make_peft_adapter(hf, d / "a", seed=1, r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"],
                          fan_in_fan_out=True)
    b = make_peft_adapter(hf, d / "b", seed=2, r=2, lora_alpha=8, target_modules=["c_proj"], fan_in_fan_out=True)
    run_cli("convert", "--model_dir", hf, "--output_dir", d / "ckpt", "--dtype", "float32")
    run_cli("build", "--checkpoint_dir", d / "ckpt", "--output_dir", d / "engine", "--max_batch_size", "4",
            "--max_input_len", "32", "--lora-dir", a, b, "--max_lora_rank", "8",
            "--max_prompt_embedding_table_size", "8")
    return hf, d, {0: a, 1: b}


def test_run_with_task_uids_matches_peft(setup, tmp_path):
    hf, d, loras = setup
    texts = ["The quick brown fox", "Hello there", "In the beginning"]
    uids = ["0", "-1", "1"]
    run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", *texts, "--max_output_len",
            str(N), "--lora_task_uids", *uids, "--output_csv", tmp_path / "out.csv")
    got = [[int(t) for t in row] for row in csv.reader((tmp_path / "out.csv").read_text().splitlines())]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d / "engine"))
    for text, uid, ids in zip(texts, uids, got):
        ref = peft_model(hf, loras.get(int(uid)))
        assert ids == peft_greedy(ref, tok.encode(text), N)


def test_run_with_task_uids_and_prompt_table(setup, tmp_path):
    """Each input its adapter and its prompt-table task (the task's 3 virtual tokens put before it)."""
    hf, d, loras = setup
    table = torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(4)) * 0.5
    np.save(tmp_path / "t.npy", table.numpy())
    texts, uids, tasks = ["The quick brown fox", "Hello there"], ["0", "-1"], [1, 0]
    run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", *texts, "--max_output_len",
            str(N), "--lora_task_uids", *uids, "--prompt_table_path", tmp_path / "t.npy", "--prompt_tasks", "1,0",
            "--output_csv", tmp_path / "out.csv")
    got = [[int(t) for t in row] for row in csv.reader((tmp_path / "out.csv").read_text().splitlines())]
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(d / "engine"))
    for text, uid, task, ids in zip(texts, uids, tasks, got):
        ref = peft_model(hf, loras.get(int(uid)))
        wte = ref.get_input_embeddings()
        want: list[int] = []
        with torch.no_grad():
            for _ in range(N):
                emb = torch.cat([table[task], wte(torch.tensor(tok.encode(text) + want))]).unsqueeze(0)
                want.append(int(ref(inputs_embeds=emb).logits[0, -1].argmax()))
        assert ids == want
        assert ids != peft_greedy(ref, tok.encode(text), N)     # the table changes the output


def test_unknown_uid_and_count_mismatch_are_one_line(setup):
    _, d, _ = setup
    proc = run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", "a", "b",
                   "--max_output_len", "2", "--lora_task_uids", "0", "5", check=False)
    assert_one_line_error(proc, "unknown LoRA '5'")
    proc = run_cli("run", "--engine_dir", d / "engine", "--device", "cpu", "--input_text", "a", "b",
                   "--max_output_len", "2", "--lora_task_uids", "0", check=False)
    assert_one_line_error(proc, "--lora_task_uids")


def test_build_refuses_bad_adapter_in_one_line(setup, tmp_path):
    _, d, loras = setup
    proc = run_cli("build", "--checkpoint_dir", d / "ckpt", "--output_dir", tmp_path / "e", "--lora_dir", loras[0],
                   "--max_lora_rank", "2", check=False)
    assert_one_line_error(proc, "max_lora_rank 2")
    assert not (tmp_path / "e").exists()
    proc = run_cli("build", "--checkpoint_dir", d / "ckpt", "--output_dir", tmp_path / "e", "--lora_dir", loras[0],
                   "--lora_target_modules", "attn_qkv", "bogus", check=False)
    assert_one_line_error(proc, "bogus")


def test_plugins_list_shows_adapter_formats():
    out = run_cli("plugins", "list", "--json").stdout
    assert "lora:peft" in out and "lora:nemo" in out
    assert all(f"prompt_table:{f}" in out for f in ("npy", "peft", "nemo"))
