"""Bad input: each case is one line on stderr, a non-zero exit, no traceback, and no output left behind."""
from __future__ import annotations

import json
import shutil

import pytest

from trt_gpt.testing import assert_one_line_error, run_cli


def convert(src, out, *extra):
    return run_cli("convert", "--model_dir", src, "--output_dir", out, "--dtype", "float32", *extra, check=False)


def assert_nothing_written(parent, name="out"):
    left = [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]
    assert left == [], left


def copy_hf(gpt2_dir, tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(gpt2_dir[0], d)
    return d


def test_missing_and_empty_model_dir(tmp_path):
    assert_one_line_error(convert(tmp_path / "nope", tmp_path / "out"), "nope", "no such file")
    (tmp_path / "empty").mkdir()
    assert_one_line_error(convert(tmp_path / "empty", tmp_path / "out"), "empty", "not a recognised checkpoint")
    assert_nothing_written(tmp_path)


def test_truncated_safetensors(gpt2_dir, tmp_path):
    d = copy_hf(gpt2_dir, tmp_path)
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_one_line_error(convert(d, tmp_path / "out"), "model.safetensors", "corrupt")
    assert_nothing_written(tmp_path)


def test_garbage_safetensors(gpt2_dir, tmp_path):
    d = copy_hf(gpt2_dir, tmp_path)
    (d / "model.safetensors").write_bytes(b"\x00garbage" * 100)
    assert_one_line_error(convert(d, tmp_path / "out"), "model.safetensors")
    assert_nothing_written(tmp_path)


def test_pickle_bin_is_loaded_weights_only(gpt2_dir, tmp_path):
    """A pytorch_model.bin carrying arbitrary pickled objects is refused, never executed."""
    import pickle

    d = copy_hf(gpt2_dir, tmp_path)
    (d / "model.safetensors").unlink()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(d / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"x": Evil()}, fh)
    proc = convert(d, tmp_path / "out")
    assert "pwned" not in proc.stdout
    assert_one_line_error(proc, "pytorch_model.bin", "weights-only")


def test_config_and_weights_disagree(gpt2_dir, tmp_path):
    d = copy_hf(gpt2_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["n_embd"] = 128
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(convert(d, tmp_path / "out"), "shape")
    assert_nothing_written(tmp_path)


def test_bad_config_field(gpt2_dir, tmp_path):
    d = copy_hf(gpt2_dir, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["activation_function"] = "swish_banana"
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(convert(d, tmp_path / "out"), "hidden_act", "swish_banana")


def test_unknown_and_wrong_variant(gpt2_dir, tmp_path):
    assert_one_line_error(convert(gpt2_dir[0], tmp_path / "out", "--variant", "llama9"), "unknown variant",
                          "llama9")
    d = tmp_path / "other"
    d.mkdir()
    shutil.copy(gpt2_dir[0] / "model.safetensors", d)
    (d / "config.json").write_text(json.dumps({"model_type": "mystery", "architectures": ["MysteryLM"]}))
    assert_one_line_error(convert(d, tmp_path / "out", "--variant", "gpt2"), "does not fit variant 'gpt2'")
    assert_one_line_error(convert(d, tmp_path / "out"), "no installed variant", "MysteryLM")
    assert_nothing_written(tmp_path)


def test_output_dir_exists_needs_overwrite(gpt2_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    assert_one_line_error(convert(gpt2_dir[0], out), "exists", "--overwrite")
    assert (out / "keep.txt").read_text() == "user data"
    assert convert(gpt2_dir[0], out, "--overwrite").returncode == 0
    assert not (out / "keep.txt").exists() and (out / "rank0.safetensors").exists()


@pytest.fixture(scope="module")
def engine(gpt2_dir, tmp_path_factory):
    t = tmp_path_factory.mktemp("eng")
    run_cli("convert", "--model_dir", gpt2_dir[0], "--output_dir", t / "ckpt", "--dtype", "float32")
    run_cli("build", "--checkpoint_dir", t / "ckpt", "--output_dir", t / "engine", "--max_input_len", "8",
            "--max_seq_len", "32")
    return t


def test_build_rejects_tampered_checkpoint(engine, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(engine / "ckpt", ckpt)
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["dtype"] = "float16"  # weights are float32
    (ckpt / "config.json").write_text(json.dumps(cfg))
    proc = run_cli("build", "--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", check=False)
    assert_one_line_error(proc, "rank0.safetensors", "float32", "float16")
    assert_nothing_written(tmp_path)
    proc = run_cli("build", "--checkpoint_dir", ckpt, "--output_dir", tmp_path / "out", "--max_batch_size", "0",
                   check=False)
    assert_one_line_error(proc, "max_batch_size")


def test_prompt_too_long_and_ids_out_of_vocab(engine, tmp_path):
    proc = run_cli("run", "--engine_dir", engine / "engine", "--input_text",
                   "one two three four five six seven eight nine ten eleven", "--max_output_len", "2", check=False)
    assert_one_line_error(proc, "max_input_len")
    (tmp_path / "ids.csv").write_text("1,2,99999\n")
    proc = run_cli("run", "--engine_dir", engine / "engine", "--input_file", tmp_path / "ids.csv",
                   "--max_output_len", "2", check=False)
    assert_one_line_error(proc, "99999", "vocabulary")
    proc = run_cli("run", "--engine_dir", engine / "ckpt", "--input_text", "hi", "--max_output_len", "2",
                   check=False)
    assert_one_line_error(proc, "not an engine config")


def test_user_mistakes_are_one_line_errors(engine, gpt2_dir, tmp_path):
    """Wrong devices and paths of the wrong kind: one line naming the flag, never an internal error."""
    eng = engine / "engine"
    base = ("run", "--engine_dir", eng, "--input_text", "hi", "--max_output_len", "2")
    assert_one_line_error(run_cli(*base, "--device", "foo", check=False), "--device", "foo")
    assert_one_line_error(run_cli(*base, "--output_csv", tmp_path, check=False), "--output_csv", "is a directory")
    assert_one_line_error(run_cli("run", "--engine_dir", eng, "--input_file", tmp_path, "--max_output_len", "2",
                                  check=False), "--input_file", "is a directory")
    assert_one_line_error(run_cli(*base, "--tokenizer_dir", eng / "config.json", check=False), "--tokenizer_dir",
                          "is a file")
    (tmp_path / "afile").write_text("x")   # a parent that is a file: unwritable whoever runs the test
    assert_one_line_error(convert(gpt2_dir[0], tmp_path / "afile" / "out"), "cannot create the output directory")
    assert_one_line_error(run_cli("build", "--checkpoint_dir", engine / "ckpt", "--output_dir",
                                  tmp_path / "afile" / "eng", check=False), "cannot create the output directory")


def test_model_config_unknown_keys_and_hf_config(engine, gpt2_dir, tmp_path):
    cfg = tmp_path / "config.json"
    assert run_cli("config", "--vocab_size", "128", "--hidden_size", "64", "--num_hidden_layers", "1",
                   "--num_attention_heads", "4", "--output_path", cfg).returncode == 0
    d = json.loads(cfg.read_text())
    d["hidden_sise"] = d.pop("hidden_size")
    cfg.write_text(json.dumps(d))
    proc = run_cli("build", "--model_config", cfg, "--output_dir", tmp_path / "out", check=False)
    assert_one_line_error(proc, "unknown key", "'hidden_sise'")
    proc = run_cli("build", "--model_config", gpt2_dir[0] / "config.json", "--output_dir", tmp_path / "out",
                   check=False)
    assert_one_line_error(proc, "HuggingFace config.json", "trt-gpt convert")
    proc = run_cli("config", "--vocab_size", "128", "--hidden_size", "64", "--num_hidden_layers", "1",
                   "--num_attention_heads", "5", "--output_path", tmp_path / "c5.json", check=False)
    assert_one_line_error(proc, "--hidden_size 64", "--num_attention_heads 5", "--head_size")
    assert not (tmp_path / "c5.json").exists() and not (tmp_path / "out").exists()
