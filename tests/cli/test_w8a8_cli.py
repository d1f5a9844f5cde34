"""SmoothQuant, FP8 and 8-bit KV caches from the command line: convert's reference flags (--smoothquant α
--per_token --per_channel --int8_kv_cache), the `trt-gpt quantize` front door (--qformat, --kv_cache_dtype,
calibration with a summary line), `config` for random-weight engines, and bad input as one-line errors with
nothing written."""
from __future__ import annotations

import json

from trt_gpt.testing import assert_one_line_error, run_cli


def calib_file(tmp_path):
    text = tmp_path / "calib.jsonl"
    text.write_text("\n".join(json.dumps({"article": f"Story {i}: the harbour lights came on over the water."})
                              for i in range(200)))
    return text


def build_and_run(ckpt, engine):
    run_cli("build", "--checkpoint_dir", ckpt, "--output_dir", engine, "--max_input_len", "32", "--max_seq_len", "48")
    return run_cli("run", "--engine_dir", engine, "--max_output_len", "4", "--input_text", "Hello there")


def test_convert_smoothquant_with_int8_kv_cache(gpt2_dir, tmp_path):
    proc = run_cli("convert", "--model_dir", gpt2_dir[0], "--output_dir", tmp_path / "ckpt", "--dtype", "float32",
                   "--smoothquant", "0.5", "--per_token", "--per_channel", "--int8_kv_cache",
                   "--calib_dataset", calib_file(tmp_path), "--calib_size", "4", "--calib_max_seq_length", "64")
    assert "calibrated 8 layers on 256 tokens (4 windows)" in proc.stderr
    q = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"], q["smoothquant_val"]) == \
        ("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "INT8", 0.5)
    out = build_and_run(tmp_path / "ckpt", tmp_path / "engine")
    assert out.stdout.strip() and " int8 on " in out.stderr    # the pool line names the 8-bit cache


def test_quantize_fp8_with_fp8_kv_cache_on_the_built_in_sample(gpt2_dir, tmp_path):
    proc = run_cli("quantize", "--model_dir", gpt2_dir[0], "--output_dir", tmp_path / "ckpt", "--dtype", "float32",
                   "--qformat", "fp8", "--kv_cache_dtype", "fp8", "--calib_size", "2", "--calib_max_seq_length", "32")
    assert "calibrated 8 layers on 64 tokens (2 windows)" in proc.stderr
    assert "FP8 + FP8 KV cache" in proc.stderr
    q = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"]) == ("FP8", "FP8")
    assert build_and_run(tmp_path / "ckpt", tmp_path / "engine").stdout.strip()


def test_quantize_int8_sq_names_the_reference_algorithm(gpt2_dir, tmp_path):
    run_cli("quantize", "--model_dir", gpt2_dir[0], "--output_dir", tmp_path / "ckpt", "--dtype", "float32",
            "--qformat", "int8_sq", "--calib_size", "2", "--calib_max_seq_length", "32")
    q = json.loads((tmp_path / "ckpt" / "config.json").read_text())["quantization"]
    assert (q["quant_algo"], q["smoothquant_val"]) == ("W8A8_SQ_PER_CHANNEL", 0.5)


def test_bad_input_is_one_line_and_writes_nothing(gpt2_dir, tmp_path):
    src = gpt2_dir[0]
    conv = ("convert", "--model_dir", src, "--output_dir", tmp_path / "out")
    quant = ("quantize", "--model_dir", src, "--output_dir", tmp_path / "out")
    assert_one_line_error(run_cli(*conv, "--smoothquant", "1.5", check=False), "--smoothquant", "[0, 1]", "1.5")
    assert_one_line_error(run_cli(*conv, "--per_token", check=False), "--per_token needs --smoothquant")
    assert_one_line_error(run_cli(*quant, "--qformat", "int3", check=False), "--qformat 'int3'", "fp8, int8_sq")
    assert_one_line_error(run_cli(*quant, "--qformat", "int8_sq", "--kv_cache_dtype", "fp8", check=False),
                          "FP8 KV cache cannot be combined with quant_algo W8A8_SQ_PER_CHANNEL")
    (tmp_path / "short.txt").write_text("too short")
    assert_one_line_error(run_cli(*quant, "--qformat", "fp8", "--calib_dataset", tmp_path / "short.txt",
                                  check=False), "short.txt", "shorter than one calibration window")
    assert_one_line_error(run_cli(*conv, "--calib_dataset", tmp_path / "short.txt", check=False),
                          "--calib_dataset is used by --awq, --smoothquant and --int8_kv_cache only")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(("out", ".out"))] == []


def test_config_random_weight_engines(tmp_path):
    base = ("config", "--vocab_size", "256", "--hidden_size", "64", "--num_hidden_layers", "2",
            "--num_attention_heads", "4", "--dtype", "float32")
    run_cli(*base, "--quantization", "fp8", "--kv_cache_dtype", "fp8", "--output_path", tmp_path / "c.json")
    q = json.loads((tmp_path / "c.json").read_text())["quantization"]
    assert (q["quant_algo"], q["kv_cache_quant_algo"]) == ("FP8", "FP8")
    run_cli("build", "--model_config", tmp_path / "c.json", "--output_dir", tmp_path / "engine",
            "--max_input_len", "16", "--max_seq_len", "32")
    from trt_gpt.runtime.llm import LLM

    llm = LLM(tmp_path / "engine", device="cpu")
    assert llm.engine.kv_spec.quantized and llm.score([[1, 2, 3]])[0].isfinite().all()
    run_cli(*base, "--quantization", "w8a8_sq", "--kv_cache_dtype", "int8", "--output_path", tmp_path / "s.json")
    assert json.loads((tmp_path / "s.json").read_text())["quantization"]["quant_algo"] == \
        "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN"
    assert_one_line_error(run_cli(*base, "--quantization", "fp8", "--kv_cache_dtype", "int8", "--output_path",
                                  tmp_path / "d.json", check=False), "INT8 KV cache cannot be combined with")
    assert not (tmp_path / "d.json").exists()
