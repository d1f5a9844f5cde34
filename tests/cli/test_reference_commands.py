"""The reference's own commands run as written: `--gpt_variant`, the build plugin switches, `run` without
`--input_text` (the reference's default prompt), `--use_py_session`, random-weight engines run on token ids
without a tokenizer, and an output cut short by max_seq_len says so. Outputs are checked against HF generate."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, GPTBigCodeConfig, GPTBigCodeForCausalLM

from trt_gpt.testing import assert_one_line_error, hf_greedy, run_cli, save_tiny

DEFAULT_PROMPT = "Born in north-east France, Soyer trained as a"


@pytest.fixture(scope="module")
def ckpt(gpt2_dir, tmp_path_factory):
    t = tmp_path_factory.mktemp("ref")
    run_cli("convert", "--model_dir", gpt2_dir[0], "--output_dir", t / "ckpt", "--dtype", "float32")
    return t / "ckpt"


def test_build_plugin_switches_as_written(ckpt, gpt2_dir, tmp_path):
    """The reference's switch values are accepted; --context_fmha disable is recorded (the unfused attention),
    a dtype that is not the engine's and `disable` of an always-on feature are one-line errors."""
    out = tmp_path / "engine"
    run_cli("build", "--checkpoint_dir", ckpt, "--output_dir", out, "--gemm_plugin", "auto",
            "--gpt_attention_plugin", "float32", "--context_fmha", "disable", "--paged_kv_cache", "enable",
            "--remove_input_padding", "enable", "--lora_plugin", "disable", "--max_input_len", "16",
            "--max_seq_len", "24")
    assert json.loads((out / "config.json").read_text())["build_config"]["context_fmha"] is False
    # `run` without --input_text: the reference's default prompt; greedy tokens equal HF's. The default prompt
    # is 11 tokens, so 13 fit under max_seq_len 24: the output is cut short, with a warning and a JSON field.
    proc = run_cli("run", "--engine_dir", out, "--max_output_len", "20", "--use_py_session", "--json")
    res = json.loads(proc.stdout)
    tok = AutoTokenizer.from_pretrained(str(gpt2_dir[0]))
    ids = tok.encode(DEFAULT_PROMPT)
    assert res[0]["input_text"] == DEFAULT_PROMPT and res[0]["input_ids"] == ids
    assert res[0]["output_ids"] == hf_greedy(gpt2_dir[1], ids, 24 - len(ids))
    assert res[0]["truncated_by_max_seq_len"] is True
    warn = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warn) == 1 and "max_seq_len 24" in warn[0], proc.stderr
    assert any(line.startswith("note: --use_py_session") for line in proc.stderr.splitlines())
    # the pool chosen is said: on CPU from available memory, capped at max_batch_size (256) x max_seq_len (24)
    assert [line for line in proc.stderr.splitlines() if line.startswith("kv cache:")] == [
        "kv cache: 6144 tokens (96 blocks of 64), 6.0 MiB on cpu"], proc.stderr
    short = json.loads(run_cli("run", "--engine_dir", out, "--max_output_len", "3", "--json").stdout)
    assert short[0]["truncated_by_max_seq_len"] is False
    for args, needles in ((("--gemm_plugin", "float16"), ("--gemm_plugin", "float32")),
                          (("--paged_kv_cache", "disable"), ("--paged_kv_cache disable", "paged")),
                          (("--remove_input_padding", "disable"), ("--remove_input_padding disable",)),
                          (("--gpt_attention_plugin", "disable"), ("--gpt_attention_plugin disable",)),
                          (("--context_fmha", "maybe"), ("--context_fmha", "enable or disable"))):
        proc = run_cli("build", "--checkpoint_dir", ckpt, "--output_dir", tmp_path / "bad", *args, check=False)
        assert_one_line_error(proc, *needles)
        assert not (tmp_path / "bad").exists()


def test_gpt_variant_and_ids_without_tokenizer(tmp_path):
    """The reference's Granite/StarCoder commands: convert --gpt_variant starcoder, build --gemm_plugin auto,
    run; the checkpoint has no tokenizer, so prompts are token ids and outputs print as ids."""
    pytest.importorskip("trt_gpt_starcoder")
    hf = save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(n_layer=2, n_embd=64, n_head=4, vocab_size=97,
                                                           n_positions=64, multi_query=True,
                                                           bos_token_id=None, eos_token_id=None), tmp_path / "hf")
    run_cli("convert", "--model_dir", tmp_path / "hf", "--dtype", "float32", "--gpt_variant", "starcoder",
            "--output_dir", tmp_path / "ckpt")
    run_cli("build", "--checkpoint_dir", tmp_path / "ckpt", "--gemm_plugin", "auto", "--output_dir",
            tmp_path / "engine", "--max_input_len", "16")
    (tmp_path / "ids.csv").write_text("5,6,7,8\n11,3\n")
    proc = run_cli("run", "--engine_dir", tmp_path / "engine", "--input_file", tmp_path / "ids.csv",
                   "--max_output_len", "6")
    lines = proc.stdout.splitlines()
    for i, ids in enumerate([[5, 6, 7, 8], [11, 3]]):
        assert lines[2 * i] == f"Input [Text {i}]: {ids}"
        assert lines[2 * i + 1] == f"Output [Text {i} Beam 0]: {hf_greedy(hf, ids, 6)}"
    proc = run_cli("run", "--engine_dir", tmp_path / "engine", "--max_output_len", "6", check=False)
    assert_one_line_error(proc, "no tokenizer", "--tokenizer_dir", "ids.csv")


def test_random_weights_as_written(tmp_path):
    """`config` + `build --model_config ... --gemm_plugin auto --workers N` + `run --input_file ids.csv`."""
    cfg = tmp_path / "gpt" / "config.json"
    run_cli("config", "--architecture", "GPTForCausalLM", "--vocab_size", "128", "--hidden_size", "64",
            "--num_hidden_layers", "2", "--num_attention_heads", "4", "--dtype", "float32", "--output_path", cfg)
    run_cli("build", "--model_config", cfg, "--gemm_plugin", "auto", "--max_batch_size", "4", "--max_input_len",
            "16", "--max_seq_len", "32", "--output_dir", tmp_path / "engine", "--workers", "1")
    (tmp_path / "ids.csv").write_text("1,2,3\n")
    proc = run_cli("run", "--engine_dir", tmp_path / "engine", "--input_file", tmp_path / "ids.csv",
                   "--max_output_len", "5", "--json")
    out = json.loads(proc.stdout)[0]
    assert len(out["output_ids"]) == 5 and all(0 <= t < 128 for t in out["output_ids"])
    assert out["output_text"] is None
    assert_one_line_error(run_cli("run", "--engine_dir", tmp_path / "engine", "--input_text", "hello",
                                  "--max_output_len", "5", check=False), "no tokenizer")
    # the reference's generate_checkpoint_config.py writes these keys; its config builds as it is
    ref_cfg = {"architecture": "GPTForCausalLM", "dtype": "float32", "vocab_size": 128, "max_position_embeddings": 64,
               "hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 4, "hidden_act": "gelu", "norm_epsilon": 1e-5,
               "position_embedding_type": "learned_absolute", "use_parallel_embedding": False,
               "embedding_sharding_dim": 0, "quantization": {"quant_algo": None, "kv_cache_quant_algo": None,
                                                             "exclude_modules": None},
               "mapping": {"world_size": 1, "tp_size": 1, "pp_size": 1}, "bias": False,
               "apply_query_key_layer_scaling": False, "rotary_pct": 1.0, "rotary_base": 10000.0,
               "rotary_scaling": None}
    (tmp_path / "ref.json").write_text(json.dumps(ref_cfg))
    run_cli("build", "--model_config", tmp_path / "ref.json", "--gemm_plugin", "auto", "--max_batch_size", "4",
            "--output_dir", tmp_path / "ref_engine", "--workers", "2")
    built = json.loads((tmp_path / "ref_engine" / "config.json").read_text())["pretrained_config"]
    assert (built["hidden_size"], built["bias"], built["intermediate_size"]) == (64, False, 256)
