"""Shared set-up of the held-out accuracy tests of quantized engines on trained weights: the cases
(`gpt2-shakespeare` on Hamlet and Macbeth calibrated on other Shakespeare; `bigcode-python` on the standard
library's json/ and email/ packages calibrated on other standard-library modules, neither seen in training),
and the perplexity of each format's engine against the fp32 engine's, checked against its bound.
Skipped without the shared data."""
from __future__ import annotations

import os
import sysconfig
from pathlib import Path
from typing import Callable

import pytest

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.eval.heldout import perplexity
from trt_gpt.quant.calibration import calibrate
from trt_gpt.runtime.llm import LLM
from trt_gpt.runtime.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("TRT_GPT_SHARED_DATA", ROOT.parent / "shared" / "data"))
WINDOW, WINDOWS = 256, 16


def stdlib(*names: str) -> Path:
    return Path(sysconfig.get_paths()["stdlib"]).joinpath(*names)


def python_packages(*pkgs: str) -> str:
    return "\n\n".join(p.read_text() for pkg in pkgs for p in sorted(stdlib(pkg).rglob("*.py")))


def gpt2_case(tmp: Path):
    return (DATA / "models" / "gpt2-shakespeare", (DATA / "text" / "shakespeare_val.txt").read_text(),
            DATA / "text" / "shakespeare_calib.txt")


def bigcode_case(tmp: Path):
    calib = tmp / "calib.txt"    # other standard-library modules (the model's own training distribution)
    calib.write_text("\n\n".join(stdlib(f).read_text() for f in ("argparse.py", "textwrap.py", "csv.py")))
    return DATA / "models" / "bigcode-python", python_packages("json", "email"), calib


CASES = {"gpt2-shakespeare": gpt2_case, "bigcode-python": bigcode_case}


def held_out_perplexities(tmp_path: Path, case: str, formats: dict[str, tuple[QuantConfig, float]],
                          uses_stats: Callable[[QuantConfig | None], bool] = lambda q: True,
                          **calib_kw) -> tuple[float, dict[str, float], str]:
    """(fp32 perplexity, each format's, a one-line report) of `case` over WINDOWS windows of WINDOW tokens;
    every format's perplexity must be within its bound times the fp32 one. Calibration statistics (`calib_kw`
    passed to calibrate) reach the conversions for which `uses_stats` is true."""
    model = DATA / "models" / case
    if not (model / "config.json").is_file():
        pytest.skip(f"{model} not present")
    model, text, calib = CASES[case](tmp_path)
    ids = load_tokenizer(model).encode(text, add_special_tokens=False)
    stats = calibrate(model, calib, calib_size=64, max_seq_length=WINDOW, **calib_kw)

    def ppl(q: QuantConfig | None) -> float:
        convert(model, tmp_path / "ckpt", dtype="float32", quantization=q, overwrite=True,
                stats=stats if uses_stats(q) else None)
        build(tmp_path / "engine", BuildConfig(max_input_len=WINDOW, max_seq_len=WINDOW, max_batch_size=4),
              checkpoint_dir=tmp_path / "ckpt", overwrite=True)
        return perplexity(LLM(tmp_path / "engine", device="cpu"), ids, WINDOW, WINDOWS)

    base = ppl(None)
    got = {name: ppl(q) for name, (q, _) in formats.items()}
    report = ", ".join(f"{k} {v:.2f} ({100 * (v / base - 1):+.2f}%)" for k, v in got.items())
    print(f"{case}: fp32 {base:.2f}, {report}")
    for name, (_, bound) in formats.items():
        assert got[name] <= base * bound, f"{case} {name}: perplexity {got[name]:.2f} vs fp32 {base:.2f} ({report})"
    return base, got, report
