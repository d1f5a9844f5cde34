"""The reference workflow through the CLI, as a user types it: convert -> build -> run, and the
random-weight path config -> build --model_config -> run."""
from __future__ import annotations

import json

import torch
from transformers import AutoTokenizer

from trt_gpt.testing import hf_greedy, run_cli as trt_gpt

PROMPT = "Born in north-east France, Soyer trained as a"


def test_convert_build_run_equals_hf(gpt2_dir, tmp_path):
    hf_dir, hf = gpt2_dir
    trt_gpt("convert", "--model_dir", hf_dir, "--output_dir", tmp_path / "ckpt", "--dtype", "float32")
    assert {"config.json", "rank0.safetensors", "vocab.json", "merges.txt"} <= {p.name for p in (tmp_path / "ckpt").iterdir()}
    trt_gpt("build", "--checkpoint-dir", tmp_path / "ckpt", "--output-dir", tmp_path / "engine",
            "--max_input_len", "64", "--max_batch_size", "4")
    cfg = json.loads((tmp_path / "engine" / "config.json").read_text())
    assert cfg["build_config"]["max_input_len"] == 64 and cfg["pretrained_config"]["num_hidden_layers"] == 2
    run = trt_gpt("run", "--engine_dir", tmp_path / "engine", "--tokenizer_dir", hf_dir,
                  "--input_text", PROMPT, "A second, longer prompt about the sea and ships", "--max_output_len",
                  "10", "--json")
    results = json.loads(run.stdout)
    tok = AutoTokenizer.from_pretrained(str(hf_dir))
    assert results[0]["input_ids"] == [28524, 287, 5093, 12, 23316, 4881, 11, 30022, 263, 8776, 355, 257]
    for r in results:
        ref = hf_greedy(hf, r["input_ids"], 10)
        assert r["output_ids"] == ref
        assert r["output_text"] == tok.decode(ref, skip_special_tokens=True)
    plain = trt_gpt("run", "--engine_dir", tmp_path / "engine", "--input_text", PROMPT, "--max_output_len", "10")
    assert plain.stdout.splitlines()[0] == f'Input [Text 0]: "{PROMPT}"'
    assert plain.stdout.splitlines()[1] == f'Output [Text 0 Beam 0]: "{results[0]["output_text"]}"'


def test_random_weight_engine_from_config(tmp_path):
    trt_gpt("config", "--vocab_size", "300", "--hidden_size", "64", "--num_hidden_layers", "2",
            "--num_attention_heads", "4", "--num_key_value_heads", "1", "--dtype", "float32",
            "--output_path", tmp_path / "cfg.json")
    trt_gpt("build", "--model_config", tmp_path / "cfg.json", "--output_dir", tmp_path / "engine",
            "--max_input_len", "32")
    (tmp_path / "ids.csv").write_text("1,2,3,4\n5,6\n")
    run = trt_gpt("run", "--engine_dir", tmp_path / "engine", "--input_file", tmp_path / "ids.csv",
                  "--max_output_len", "5", "--vocab_file", tmp_path / "none.model", check=False)
    assert run.returncode != 0  # no tokenizer given: a clear error, not a crash
    from trt_gpt import LLM

    llm = LLM(tmp_path / "engine", device="cpu")
    out = llm.generate([[1, 2, 3, 4], [5, 6]])
    assert [len(o.token_ids) for o in out] == [16, 16]
    assert llm.engine.cfg.attention_kind == "MQA"
    assert torch.isfinite(llm.score([[1, 2, 3]])[0]).all()


def test_listings_as_json():
    variants = json.loads(trt_gpt("variants", "list", "--json").stdout)
    gpt2 = next(v for v in variants if v["name"] == "gpt2")
    assert gpt2["package"] == "trt-gpt-gpt2" and "MHA" in gpt2["features"]
    plugins = json.loads(trt_gpt("plugins", "list", "--json").stdout)
    assert {"builtins", "gpt2"} <= {p["name"] for p in plugins}
