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


def test_lora_on_int8_weight_only_base(setup, tmp_path):
    """convert --use_weight_only (INT8) -> build --lora_dir -> run --lora_task_uids 0 -1: uid 0's greedy tokens
    are PEFT's on HF with the checkpoint's integers x scales as weights, uid -1's that model's without it."""
    from transformers import AutoTokenizer, GPT2LMHeadModel
    from peft import PeftModel
    from wo_oracle import dequantized_reference

    hf, d, loras = setup
    run_cli("convert", "--model_dir", hf, "--output_dir", tmp_path / "ckpt", "--dtype", "float32",
            "--use_weight_only", "--weight_only_precision", "int8")
    run_cli("build", "--checkpoint_dir", tmp_path / "ckpt", "--output_dir", tmp_path / "engine", "--max_batch_size",
            "2", "--max_input_len", "32", "--lora_dir", loras[0], "--max_lora_rank", "8")
    texts, uids = ["The quick brown fox", "Hello there"], ["0", "-1"]
    run_cli("run", "--engine_dir", tmp_path / "engine", "--device", "cpu", "--input_text", *texts,
            "--max_output_len", str(N), "--lora_task_uids", *uids, "--output_csv", tmp_path / "out.csv")
    got = [[int(t) for t in row] for row in csv.reader((tmp_path / "out.csv").read_text().splitlines())]
    float_hf = GPT2LMHeadModel.from_pretrained(str(hf), dtype=torch.float32).eval()
    base = dequantized_reference(float_hf, "gpt2", tmp_path / "ckpt", 8)
    ref = PeftModel.from_pretrained(dequantized_reference(float_hf, "gpt2", tmp_path / "ckpt", 8),
                                    str(loras[0])).double().eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "engine"))
    assert got[0] == peft_greedy(ref, tok.encode(texts[0]), N)
    assert got[1] == peft_greedy(base, tok.encode(texts[1]), N)
    assert got[0] != peft_greedy(base, tok.encode(texts[0]), N)     # the adapter changes the output
