"""Held-out perplexity of weight-only engines on the shared trained models (CPU, fp32 activations):
fp32, INT8, INT4 per channel, INT4 group-128, INT4 AWQ group-128, each through convert -> build -> LLM.score.

usage: python benchmarks/weight_only_accuracy.py gpt2-shakespeare|bigcode-python [--windows 64] [--window 256]
       [--data ../shared/data]   (prints one line per format and a markdown row)
"""
from __future__ import annotations

import argparse
import sysconfig
import tempfile
import time
from pathlib import Path

import torch

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.eval.heldout import perplexity
from trt_gpt.quant.calibration import calibrate
from trt_gpt.runtime.llm import LLM
from trt_gpt.runtime.tokenizer import load_tokenizer

FORMATS = {"fp32": None, "int8": QuantConfig(quant_algo="W8A16"), "int4": QuantConfig(quant_algo="W4A16"),
           "int4 g128": QuantConfig(quant_algo="W4A16_GPTQ", group_size=128),
           "int4 awq g128": QuantConfig(quant_algo="W4A16_AWQ", group_size=128)}


def texts(model: str, data: Path, tmp: Path) -> tuple[Path, str, Path]:
    """(model dir, held-out text, calibration file) as the tests use them."""
    if model == "gpt2-shakespeare":
        return (data / "models" / model, (data / "text" / "shakespeare_val.txt").read_text(),
                data / "text" / "shakespeare_calib.txt")
    lib = Path(sysconfig.get_paths()["stdlib"])
    held = "\n\n".join(p.read_text() for pkg in ("json", "email") for p in sorted((lib / pkg).rglob("*.py")))
    calib = tmp / "calib.txt"
    calib.write_text("\n\n".join((lib / f).read_text() for f in ("argparse.py", "textwrap.py", "csv.py")))
    return data / "models" / model, held, calib


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", choices=["gpt2-shakespeare", "bigcode-python"])
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared" / "data")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model, held, calib = texts(a.model, a.data, tmp)
        ids = load_tokenizer(model).encode(held, add_special_tokens=False)
        stats = calibrate(model, calib, calib_size=64, max_seq_length=a.window, max_samples=4096)
        print(stats.summary(), flush=True)
        out = {}
        for name, q in FORMATS.items():
            t0 = time.perf_counter()
            convert(model, tmp / "ckpt", dtype="float32", quantization=q, overwrite=True,
                    stats=stats if q is not None and q.quant_algo == "W4A16_AWQ" else None)
            build(tmp / "engine", BuildConfig(max_input_len=a.window, max_seq_len=a.window, max_batch_size=4),
                  checkpoint_dir=tmp / "ckpt", overwrite=True)
            out[name] = perplexity(LLM(tmp / "engine", device="cpu"), ids, a.window, a.windows)
            print(f"{name}: perplexity {out[name]:.2f} ({time.perf_counter() - t0:.0f}s)", flush=True)
        base = out["fp32"]
        print(f"| {a.model} | {a.windows} x {a.window} | " +
              " | ".join(f"{v:.2f}" + ("" if k == "fp32" else f" ({100 * (v / base - 1):+.1f}%)")
                         for k, v in out.items()) + " |")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
