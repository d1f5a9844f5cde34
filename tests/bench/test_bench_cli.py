"""`trt-gpt bench` on CPU: the report's counts follow from the workload, HF runs beside it, and --plot
writes a PNG. (Speed itself is measured on the GPU, never asserted in tests.)"""
from __future__ import annotations

import json

import pytest

from trt_gpt.testing import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def engine(random_engine):
    return random_engine(1)


def test_bench_report_compare_hf_and_plot(engine, tmp_path):
    pytest.importorskip("matplotlib")
    proc = run_cli("bench", "--engine_dir", engine, "--num_requests", "5", "--input_len", "8", "--output_len", "6",
                   "--concurrency", "2", "--warmup", "1", "--device", "cpu", "--compare_hf", "--hf_eager",
                   "--hf_batch_size", "2", "--json", "--output", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    report = json.loads(proc.stdout)
    assert report == json.loads((tmp_path / "r.json").read_text())
    for side in ("trt_gpt", "hf"):
        assert report[side]["num_requests"] == 5 and report[side]["output_tokens"] == 30
        assert 0 < report[side]["ttft_ms"]["p50"] <= report[side]["ttft_ms"]["p99"]
    assert report["hf"]["mode"] == "eager" and report["speedup_vs_hf"] > 0
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rejects_a_bad_workload(engine):
    assert_one_line_error(run_cli("bench", "--engine_dir", engine, "--num_requests", "0", check=False),
                          "--num_requests")
