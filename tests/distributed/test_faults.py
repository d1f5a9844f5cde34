"""Faults end every rank with a one-line error within 60 s, never a hang: a rank that exits or wedges in
the middle of generation (under mpirun, and under bare torchrun-style variables where no launcher tears the
job down for us), and a launch whose world size does not match the engine's mapping."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from trt_gpt.errors import TrtGptError
from trt_gpt.runtime.llm import LLM
from trt_gpt.testing import save_tiny

from mpi_helpers import BIN, WORKER, child_env, launch, make_engine

LIMIT_S = 60.0


@pytest.fixture(scope="module")
def engines(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                          initializer_range=0.2), root / "hf")
    return {"tp1": make_engine(root / "hf", root / "tp1"), "tp2": make_engine(root / "hf", root / "tp2", tp=2)}


def _spec(tmp_path: Path, engine: Path, fault: dict) -> Path:
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"out": str(tmp_path), "cases": [
        {"name": "fault", "engine": str(engine), "prompts": [[1, 2, 3], [4, 5, 6, 7]], "n_greedy": 16,
         "fault": fault}]}))
    return spec


def _error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: rank ")]


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_mpirun_rank_fault_ends_the_job(tmp_path, engines, mode):
    """Rank 1 dies (the launcher sees it) or hangs (only the timeouts can see it): default timeouts."""
    spec = _spec(tmp_path, engines["tp2"], {"rank": 1, "at_call": 3, "mode": mode})
    proc, secs = launch(2, [sys.executable, str(WORKER), str(spec)], timeout=LIMIT_S + 30)
    assert proc.returncode != 0
    assert secs < LIMIT_S, f"the job took {secs:.0f}s to end"
    if mode == "hang":   # rank 0's step times out and it aborts the job with one line
        lines = _error_lines(proc.stderr)
        assert lines and lines[0].startswith("error: rank 0/2: step ") and "did not answer in time" in lines[0], \
            proc.stderr[-2000:]


def _torchrun(spec: Path, **env: str) -> list[tuple[int, str, float]]:
    """Two ranks from torchrun-style variables, no MPI launcher to tear the job down: (rc, stderr, secs)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    t0 = time.perf_counter()
    for rank in range(2):
        rank_env = child_env(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **env)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(spec)], env=rank_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    out = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=LIMIT_S + 30 - (time.perf_counter() - t0))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise AssertionError("a rank was still running after the time limit") from None
        out.append((p.returncode, err, time.perf_counter() - t0))
    return out


def test_follower_error_ends_both_ranks_without_a_launcher(tmp_path, engines):
    spec = _spec(tmp_path, engines["tp2"], {"rank": 1, "at_call": 3, "mode": "raise"})
    (rc0, err0, t0), (rc1, err1, t1) = _torchrun(spec)
    assert rc1 != 0 and _error_lines(err1) == ["error: rank 1/2: step 3 failed (RuntimeError: injected fault)"], err1
    assert rc0 != 0 and _error_lines(err0) and _error_lines(err0)[0].startswith("error: rank 0/2: step 3 failed"), err0
    assert max(t0, t1) < LIMIT_S


def test_dead_leader_ends_the_follower_without_a_launcher(tmp_path, engines):
    spec = _spec(tmp_path, engines["tp2"], {"rank": 0, "at_call": 4, "mode": "exit"})
    (rc0, _, _), (rc1, err1, t1) = _torchrun(spec)
    assert rc0 == 3
    assert rc1 != 0 and _error_lines(err1), err1
    assert t1 < LIMIT_S


def test_watchdog_ends_a_wedged_rank_without_a_launcher(tmp_path, engines):
    """Rank 1 wedges inside a step and nobody kills it: its own watchdog does, timeout + 10 s later."""
    spec = _spec(tmp_path, engines["tp2"], {"rank": 1, "at_call": 2, "mode": "hang"})
    (rc0, err0, t0), (rc1, err1, t1) = _torchrun(spec, TRT_GPT_DIST_TIMEOUT="3")
    assert rc0 != 0 and "did not answer in time" in _error_lines(err0)[0], err0
    assert rc1 != 0 and _error_lines(err1) == [
        "error: rank 1/2: step 2 made no progress for 13s: a rank died or hangs (raise TRT_GPT_DIST_TIMEOUT if "
        "steps are legitimately this slow)"], err1
    assert t0 < 40 and t1 < LIMIT_S


def test_world_size_mismatch_is_one_line_on_every_rank(tmp_path, engines):
    prompts = tmp_path / "p.csv"
    prompts.write_text("1,2,3\n")
    proc, secs = launch(2, [str(BIN / "trt-gpt"), "run", "--engine_dir", str(engines["tp1"]), "--input_file",
                            str(prompts), "--max_output_len", "4"], timeout=LIMIT_S + 30)
    assert proc.returncode != 0 and secs < LIMIT_S
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert lines and all("engine built for 1 rank(s)" in ln and "2 were launched" in ln for ln in lines), proc.stderr


def test_one_process_refuses_a_sharded_engine(engines):
    with pytest.raises(TrtGptError, match="mpirun -np 2"):
        LLM(engines["tp2"], device="cpu")
