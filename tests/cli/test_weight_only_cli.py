"""Weight-only quantization from the command line: convert (INT8 / INT4 / group-wise / AWQ with calibration),
build and run, `config --quantization` for random weights, and bad input as one-line errors with nothing
written."""
from __future__ import annotations

import json

import torch
from safetensors.torch import load_file, save_file

from trt_gpt.testing import assert_one_line_error, run_cli


def convert(src, out, *extra, check=False):
    return run_cli("convert", "--model_dir", src, "--output_dir", out, "--dtype", "float32", *extra, check=check)


def nothing_written(parent, name="out"):
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")] == []


def test_int4_group_convert_build_run(gpt2_dir, tmp_path):
    convert(gpt2_dir[0], tmp_path / "ckpt", "--use_weight_only", "--weight-only-precision", "int4",
            "--group_size", "32", check=True)
    cfg = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert cfg["quantization"]["quant_algo"] == "W4A16_GPTQ" and cfg["quantization"]["group_size"] == 32
    run_cli("build", "--checkpoint_dir", tmp_path / "ckpt", "--output_dir", tmp_path / "engine",
            "--max_input_len", "32", "--max_seq_len", "48")
    out = run_cli("run", "--engine_dir", tmp_path / "engine", "--max_output_len", "4", "--input_text", "Hello there")
    assert out.stdout.strip()


def test_awq_with_calibration_file(gpt2_dir, tmp_path):
    text = tmp_path / "calib.jsonl"
    text.write_text("\n".join(json.dumps({"text": f"Line {i} of some calibration text about the sea."})
                              for i in range(200)))
    proc = convert(gpt2_dir[0], tmp_path / "ckpt", "--use_weight_only", "--weight_only_precision", "int4", "--awq",
                   "--group_size", "32", "--calib_dataset", text, "--calib_size", "4", "--calib_max_seq_length", "64",
                   check=True)
    assert "calibrated 8 layers on 256 tokens (4 windows)" in proc.stderr
    t = load_file(str(tmp_path / "ckpt" / "rank0.safetensors"))
    p = t["transformer.layers.0.attention.qkv.prequant_scaling_factor"]
    assert p.shape == (64,) and not torch.all(p == 1)      # activation-aware, not unit scales


def test_bad_weight_only_options(gpt2_dir, tmp_path):
    src = gpt2_dir[0]
    assert_one_line_error(convert(src, tmp_path / "out", "--use_weight_only", "--weight_only_precision", "int3"),
                          "--weight_only_precision 'int3'", "int8, int4")
    assert_one_line_error(convert(src, tmp_path / "out", "--use_weight_only", "--weight_only_precision", "int4",
                                  "--group_size", "48"), "group_size 48 does not divide", "64")
    assert_one_line_error(convert(src, tmp_path / "out", "--weight_only_precision", "int4"), "needs --use_weight_only")
    assert_one_line_error(convert(src, tmp_path / "out", "--use_weight_only", "--awq"),
                          "need --weight_only_precision int4")
    awq = ("--use_weight_only", "--weight_only_precision", "int4", "--awq")
    assert_one_line_error(convert(src, tmp_path / "out", *awq, "--calib_dataset", tmp_path / "none.txt"),
                          "none.txt", "not found")
    (tmp_path / "empty.txt").write_text("\n \n")
    assert_one_line_error(convert(src, tmp_path / "out", *awq, "--calib_dataset", tmp_path / "empty.txt"),
                          "empty.txt", "empty")
    (tmp_path / "short.txt").write_text("too short")
    assert_one_line_error(convert(src, tmp_path / "out", *awq, "--calib_dataset", tmp_path / "short.txt"),
                          "short.txt", "shorter than one calibration window")
    assert nothing_written(tmp_path)


def test_quantized_checkpoint_with_missing_or_misshaped_scale(gpt2_dir, tmp_path):
    convert(gpt2_dir[0], tmp_path / "ckpt", "--use_weight_only", check=True)
    f = tmp_path / "ckpt" / "rank0.safetensors"
    t = load_file(str(f))
    name = "transformer.layers.1.mlp.fc.per_channel_scale"
    bad = dict(t)
    bad[name] = t[name][:-1].clone()
    save_file(bad, str(f))
    build = ("build", "--checkpoint_dir", tmp_path / "ckpt", "--output_dir", tmp_path / "out")
    assert_one_line_error(run_cli(*build, check=False), name, "has shape [255]", "[256]")
    bad.pop(name)
    save_file(bad, str(f))
    assert_one_line_error(run_cli(*build, check=False), f"missing tensor '{name}'")
    assert nothing_written(tmp_path)


def test_config_quantization_for_random_weights(tmp_path):
    base = ("config", "--vocab_size", "256", "--hidden_size", "64", "--num_hidden_layers", "2",
            "--num_attention_heads", "4", "--dtype", "float32")
    run_cli(*base, "--quantization", "w4a16", "--group_size", "32", "--output_path", tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text())["quantization"]["quant_algo"] == "W4A16_GPTQ"
    run_cli("build", "--model_config", tmp_path / "c.json", "--output_dir", tmp_path / "engine",
            "--max_input_len", "16", "--max_seq_len", "32")
    from trt_gpt.runtime.llm import LLM

    llm = LLM(tmp_path / "engine", device="cpu")
    qkv = llm.engine.model.transformer.layers[0].attention.qkv
    assert qkv.weight.dtype == torch.int8 and qkv.weights_scaling_factor.shape == (192, 2)
    assert llm.score([[1, 2, 3]])[0].isfinite().all()
    assert_one_line_error(run_cli(*base, "--quantization", "w4a16_awq", "--output_path", tmp_path / "d.json",
                                  check=False), "w4a16_awq needs calibration")
    assert_one_line_error(run_cli(*base, "--quantization", "w4a16", "--group_size", "48", "--output_path",
                                  tmp_path / "d.json", check=False), "group_size 48 does not divide")
    assert not (tmp_path / "d.json").exists()


def test_plugins_list_shows_quantizers():
    rows = {r["name"]: r for r in json.loads(run_cli("plugins", "list", "--json").stdout)}
    assert rows["builtins"]["quantizers"][:4] == ["W8A16", "W4A16", "W4A16_GPTQ", "W4A16_AWQ"]
    assert {"W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "FP8", "kv:INT8", "kv:FP8"} <= set(rows["builtins"]["quantizers"])
    assert "register_quantizers" in rows["builtins"]["hooks"]
    assert "W4A16_AWQ" in run_cli("plugins", "list").stdout
