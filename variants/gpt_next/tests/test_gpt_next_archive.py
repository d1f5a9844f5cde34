"""The .nemo reader as a user meets it: the real sentencepiece tokenizer carried through `trt-gpt convert` and
`trt-gpt run`, detection and a wrong --variant, the listing, and unsafe or broken archives refused in one line."""
from __future__ import annotations

import csv
import gc
import io
import pickle
import re
import tarfile
from pathlib import Path

import pytest
import torch
import yaml
from transformers import GPT2Config, GPT2LMHeadModel, NemotronConfig, NemotronForCausalLM

from nemo_writer import from_nemotron, perturb_norms, write_nemo
from trt_gpt_gpt_next.nemo_config import load_config
from trt_gpt.build import build
from trt_gpt.config import BuildConfig
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.sources import open_source
from trt_gpt.testing import run_cli, save_tiny


def _nemotron(vocab: int, hidden: int = 32) -> NemotronForCausalLM:
    torch.manual_seed(0)
    model = NemotronForCausalLM(NemotronConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2, partial_rotary_factor=0.5,
        max_position_embeddings=128, initializer_range=0.1, bos_token_id=1, eos_token_id=2)).eval()
    perturb_norms(model)
    return model


@pytest.fixture(scope="module")
def small_nemo(tmp_path_factory) -> Path:
    return write_nemo(tmp_path_factory.mktemp("nemo") / "small.nemo", from_nemotron(_nemotron(64)))


def test_real_tokenizer_through_the_cli(tmp_path):
    """convert (CLI) -> build -> `trt-gpt run` with the archive's sentencepiece model equals HF greedy."""
    spm = pytest.importorskip("sentencepiece")
    mc = pytest.importorskip("mistral_common")
    tok_file = Path(mc.__file__).parent / "data" / "tokenizer.model.v1"
    hf = _nemotron(32000, hidden=16)   # the real tokenizer has 32,000 pieces; keep the rest tiny
    nemo = write_nemo(tmp_path / "gpt.nemo", from_nemotron(hf), "legacy", tokenizer=tok_file)

    run_cli("convert", "--nemo_ckpt_path", nemo, "--output_dir", tmp_path / "ckpt", "--dtype", "float32")
    assert (tmp_path / "ckpt" / "tokenizer.model").read_bytes() == tok_file.read_bytes()
    build(tmp_path / "engine", BuildConfig(max_input_len=32, max_seq_len=64), checkpoint_dir=tmp_path / "ckpt")
    proc = run_cli("run", "--engine_dir", tmp_path / "engine", "--vocab_file", tmp_path / "ckpt" / "tokenizer.model",
                   "--no_add_special_tokens", "--input_text", "hello world", "--max_output_len", "4",
                   "--output_csv", tmp_path / "out.csv")

    sp = spm.SentencePieceProcessor(model_file=str(tok_file))
    ids = torch.tensor([sp.encode("hello world")])
    with torch.no_grad():
        ref = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                          eos_token_id=2, pad_token_id=0)[0, ids.shape[1]:].tolist()
    ref = ref[:ref.index(2) + 1] if 2 in ref else ref    # run stops at the tokenizer's end id, as HF does
    assert len(ref) > 1, ref                              # not an immediate end token: a real comparison
    got = [int(t) for t in next(csv.reader((tmp_path / "out.csv").read_text().splitlines()))]
    assert got == ref
    assert f'Output [Text 0 Beam 0]: "{sp.decode([t for t in ref if t != 2])}"' in proc.stdout


def test_detected_and_wrong_variant(tmp_path, small_nemo):
    assert convert(small_nemo, tmp_path / "ok", dtype="float32").variant == "gpt-next"
    assert convert(small_nemo, tmp_path / "alias", dtype="float32", variant="gpt_next").variant == "gpt-next"
    with pytest.raises(TrtGptError, match=r"does not fit variant 'gpt2'; it looks like 'gpt-next'"):
        convert(small_nemo, tmp_path / "x", dtype="float32", variant="gpt2")
    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50), tmp_path / "hf")
    with pytest.raises(TrtGptError, match=r"does not fit variant 'gpt-next'"):
        convert(tmp_path / "hf", tmp_path / "y", dtype="float32", variant="gpt-next")
    with pytest.raises(TrtGptError, match=r"unknown variant 'gpt-nxt'"):
        convert(small_nemo, tmp_path / "z", dtype="float32", variant="gpt-nxt")


def test_config_translation(tmp_path, small_nemo):
    """Fields the parity models leave at defaults: Megatron-core's zero-centred gamma is layernorm1p,
    seq_len_interpolation_factor is linear RoPE scaling, unnormalised scores mean a softmax scale of 1."""
    archive = _tar(tmp_path / "c.nemo", {
        "./model_config.yaml": _yaml(small_nemo, normalization="LayerNorm", layernorm_zero_centered_gamma=True,
                                     seq_len_interpolation_factor=4, normalize_attention_scores=False,
                                     rotary_base=500000, layernorm_epsilon="1e-6", num_query_groups=None),
        "./model_weights.ckpt": _weights(small_nemo)})
    cfg = load_config(open_source(archive))
    assert (cfg.norm_type, cfg.rotary_scaling, cfg.attention_multiplier, cfg.rotary_base, cfg.norm_epsilon,
            cfg.rotary_pct, cfg.max_position_embeddings, cfg.vocab_size) == (
        "layernorm1p", {"type": "linear", "factor": 4.0}, 1.0, 500000.0, 1e-6, 0.5, 128, 64)
    assert cfg.num_key_value_heads == cfg.num_attention_heads   # null query groups: plain multi-head


def test_temp_files_are_cleaned_up(tmp_path, small_nemo, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    src = open_source(small_nemo)
    src.names(), src.tokenizer_files()
    assert list(scratch.iterdir())          # the reader did use the scratch dir ...
    del src
    convert(small_nemo, tmp_path / "ckpt", dtype="float32")
    gc.collect()
    assert list(scratch.iterdir()) == []    # ... and left nothing there


def test_variants_list_shows_gpt_next(capsys):
    import json

    from trt_gpt.cli.listing import variants_list

    variants_list(as_json=True)
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "gpt-next")
    assert row["package"] == "trt-gpt-gpt-next" and row["source_formats"] == ["nemo"]
    assert {"GQA", "RoPE (partial rotary)", "learned positions"} <= set(row["features"])


# ------------------------------------------------------------------ broken and hostile archives

def _tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return path


def _yaml(small_nemo: Path, **changes) -> bytes:
    with tarfile.open(small_nemo) as tar:
        cfg = yaml.safe_load(tar.extractfile("./model_config.yaml").read())
    return yaml.safe_dump({**cfg, **changes}).encode()


def _weights(small_nemo: Path) -> bytes:
    with tarfile.open(small_nemo) as tar:
        return tar.extractfile("./model_weights.ckpt").read()


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def _bad_archives(tmp: Path, small_nemo: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, a regex its error message must match)."""
    y, w = _yaml(small_nemo), _weights(small_nemo)
    garbage = tmp / "garbage.nemo"
    garbage.write_bytes(b"this is not a tar archive" * 40)
    return {
        "not a tar": (garbage, "not a tar archive; expected a .nemo archive"),
        "no yaml": (_tar(tmp / "noyaml.nemo", {"./model_weights.ckpt": w}), "no model_config.yaml in the archive"),
        "no weights": (_tar(tmp / "now.nemo", {"./model_config.yaml": y}), "no model_weights.ckpt found"),
        "dist ckpt": (_tar(tmp / "dist.nemo", {"./model_config.yaml": y, "./model_weights/metadata.json": b"{}"}),
                      "distributed .* not supported"),
        "bad yaml": (_tar(tmp / "by.nemo", {"./model_config.yaml": b"a: [1, 2", "./model_weights.ckpt": w}),
                     "model_config.yaml is not valid YAML"),
        "symlink": (_tar(tmp / "ln.nemo", {"./model_config.yaml": y, "./model_weights.ckpt": w},
                         {"./3f_tokenizer.model": "/etc/passwd"}), "'./3f_tokenizer.model' is a link"),
        "traversal": (_tar(tmp / "tr.nemo", {"./model_config.yaml": y, "./model_weights.ckpt": w,
                                             "../../evil.model": b"x"}), "'../../evil.model' points outside"),
        "absolute": (_tar(tmp / "abs.nemo", {"./model_config.yaml": y, "/tmp/evil": b"x",
                                             "./model_weights.ckpt": w}), "'/tmp/evil' points outside"),
        "pickle code": (_tar(tmp / "pk.nemo", {"./model_config.yaml": y,
                                               "./model_weights.ckpt": pickle.dumps({"w": _Evil()})}),
                        "model_weights.ckpt: cannot load as a weights-only torch checkpoint"),
        "tp mismatch": (_tar(tmp / "tp.nemo", {"./model_config.yaml": _yaml(small_nemo, tensor_model_parallel_size=2),
                                               "./model_weights.ckpt": w}),
                        "'tensor_model_parallel_size' is 2 but the archive holds 1"),
        "missing rank": (_tar(tmp / "mr.nemo", {"./model_config.yaml": y,
                                                "./tp_rank_00_pp_rank_000/model_weights.ckpt": w,
                                                "./tp_rank_01_pp_rank_000/model_weights.ckpt": w,
                                                "./tp_rank_00_pp_rank_001/model_weights.ckpt": w}),
                         "rank 1, pipeline stage 1 is missing"),
        "activation": (_tar(tmp / "act.nemo", {"./model_config.yaml": _yaml(small_nemo, activation="reglu"),
                                               "./model_weights.ckpt": w}), "field 'activation' is 'reglu'"),
        "moe": (_tar(tmp / "moe.nemo", {"./model_config.yaml": _yaml(small_nemo, num_moe_experts=8),
                                        "./model_weights.ckpt": w}), "field 'num_moe_experts' is 8"),
    }


def test_bad_archives_are_one_line_errors(tmp_path, small_nemo, capsys):
    for name, (archive, pattern) in _bad_archives(tmp_path, small_nemo).items():
        with pytest.raises(TrtGptError) as e:
            convert(archive, tmp_path / "out", dtype="float32")
        msg = str(e.value)
        assert str(archive) in msg and re.search(pattern, msg) and "\n" not in msg, (name, msg)
    assert "code ran" not in capsys.readouterr().out
    assert not (tmp_path / "out").exists()


def test_cli_reports_a_bad_archive_in_one_line(tmp_path, capsys):
    from trt_gpt.cli.main import main

    bad = tmp_path / "broken.nemo"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as e:
        main(["convert", "--nemo_ckpt_path", str(bad), "--output_dir", str(tmp_path / "o"), "--dtype", "float32"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1 and str(bad) in err[0] and "Traceback" not in err[0]
