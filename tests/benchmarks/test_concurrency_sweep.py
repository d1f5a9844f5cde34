"""benchmarks/concurrency_sweep.py: the points it plots are the reports' own figures, by concurrency."""
from __future__ import annotations

import json

import pytest

def _report(concurrency, n, tput, p50, p90, hf=None) -> dict:
    r = {"device": "cpu", "dtype": "float32",
         "workload": {"num_requests": n, "input_len": 8, "output_len": 4, "concurrency": concurrency},
         "trt_gpt": {"output_tok_per_s": tput, "tpot_ms": {"p50": p50, "p90": p90}}}
    if hf:
        r["hf"] = {"output_tok_per_s": hf, "tpot_ms": {"p50": 9.0, "p90": 9.5}, "mode": "eager"}
    return r


def test_points_sorted_by_concurrency_with_every_request_in_flight_when_unset(bench_script):
    mod = bench_script("concurrency_sweep")
    pts = mod.sweep_points([_report(None, 64, 900.0, 3.0, 4.0), _report(1, 64, 100.0, 1.0, 1.5, hf=10.0),
                            _report(8, 64, 500.0, 2.0, 2.5)])
    assert pts["trt_gpt"] == [(1, 100.0, 1.0, 1.5), (8, 500.0, 2.0, 2.5), (64, 900.0, 3.0, 4.0)]
    assert pts["hf"] == [(1, 10.0, 9.0, 9.5)]


def test_plot_writes_a_png_from_a_directory_of_reports(bench_script, tmp_path):
    pytest.importorskip("matplotlib")
    mod = bench_script("concurrency_sweep")
    for c in (1, 4):
        (tmp_path / f"c{c}.json").write_text(json.dumps(_report(c, 16, 10.0 * c, 1.0, 2.0)))
    (tmp_path / "gemv.json").write_text(json.dumps({"not": "a report"}))
    png = tmp_path / "out" / "sweep.png"
    mod.main(["plot", str(tmp_path), "--png", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
