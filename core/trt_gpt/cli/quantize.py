"""`trt-gpt quantize`: one front door for every quantized format, as the reference's `quantize.py`.

    trt-gpt quantize --model_dir ./gpt2 --dtype float16 --qformat fp8 --kv_cache_dtype fp8 --output_dir ./ckpt
                     [--calib_dataset FILE --calib_size 512 --calib_max_seq_length 512]

`--qformat` fp8 | int8_sq | w4a16_awq | int8_wo | int4_wo | full_prec, `--kv_cache_dtype` int8 | fp8 (the
combinations `quant.formats` allows). Formats that need activation statistics (fp8, int8_sq, w4a16_awq,
any 8-bit KV cache) calibrate on the given text (.txt, or .jsonl with a `text` or `article` field) or on
the built-in sample, with a progress bar and a one-line summary; then the checkpoint is written as
`convert` writes it (temp dir, renamed at the end).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import TrtGptError
from .common import err_console, human_bytes, progress

SMOOTHQUANT_ALPHA = 0.5   # int8_sq's migration strength (the reference's quantize.py takes no alpha either)


def needs_calibration(quant_algo: str | None, kv_cache_quant_algo: str | None) -> bool:
    """Whether a format needs activation statistics (weight-only round-to-nearest does not)."""
    return kv_cache_quant_algo is not None or quant_algo in ("FP8", "W4A16_AWQ") or \
        (quant_algo or "").startswith("W8A8_SQ_")


def calibration_stats(model_dir: Path, variant: Optional[str], calib_dataset: Optional[Path], calib_size: int,
                      max_seq_length: int, max_samples: int = 0) -> Any:
    """Calibration statistics of the checkpoint's float model, with a progress bar and a one-line summary."""
    import torch
    from rich.progress import Progress

    from ..quant.calibration import calibrate, read_calib_texts

    read_calib_texts(calib_dataset)   # a missing or empty file fails before the model is loaded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("calibrate", total=calib_size)
        stats = calibrate(model_dir, calib_dataset, calib_size, max_seq_length, max_samples=max_samples,
                          variant=variant, device=device,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    err_console.print(stats.summary())
    return stats


def quantize_cmd(
    model_dir: Path = typer.Option(..., "--model_dir", "--model-dir", help="HuggingFace checkpoint directory."),
    output_dir: Path = typer.Option(..., "--output_dir", "--output-dir"),
    dtype: str = typer.Option("float16", "--dtype", help="Dtype of what stays unquantized."),
    qformat: str = typer.Option("full_prec", "--qformat",
                                help="fp8, int8_sq, w4a16_awq, int8_wo, int4_wo or full_prec."),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv_cache_dtype", "--kv-cache-dtype",
                                                 help="int8 or fp8: an 8-bit KV cache with calibrated scales."),
    calib_dataset: Optional[Path] = typer.Option(None, "--calib_dataset", "--calib-dataset",
                                                 help="Calibration text: .txt, or .jsonl with text/article "
                                                      "(default: a built-in sample)."),
    calib_size: int = typer.Option(512, "--calib_size", "--calib-size", help="Calibration windows."),
    calib_max_seq_length: int = typer.Option(512, "--calib_max_seq_length", "--calib-max-seq-length",
                                             help="Tokens per calibration window."),
    tp_size: int = typer.Option(1, "--tp_size", "--tp-size"),
    pp_size: int = typer.Option(1, "--pp_size", "--pp-size"),
    variant: Optional[str] = typer.Option(None, "--variant"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Quantize a HuggingFace checkpoint into a trt-gpt checkpoint (calibrating where the format needs it)."""
    from ..convert import convert
    from ..quant.formats import qformat_config

    qcfg = qformat_config(qformat, kv_cache_dtype)
    if qcfg.quant_algo is not None and qcfg.quant_algo.startswith("W8A8_SQ_"):
        qcfg.smoothquant_val = SMOOTHQUANT_ALPHA
    if tp_size < 1 or pp_size < 1:
        raise TrtGptError(f"quantize: --tp_size ({tp_size}) and --pp_size ({pp_size}) must be positive")
    stats = None
    if needs_calibration(qcfg.quant_algo, qcfg.kv_cache_quant_algo):
        stats = calibration_stats(model_dir, variant, calib_dataset, calib_size, calib_max_seq_length,
                                  max_samples=512 if qcfg.quant_algo == "W4A16_AWQ" else 0)
    elif calib_dataset is not None:
        raise TrtGptError(f"quantize: --calib_dataset is not used by --qformat {qformat} without an 8-bit KV cache")
    with progress("quantize") as step:
        res = convert(model_dir, output_dir, dtype, variant, tp_size, pp_size, overwrite, quantization=qcfg,
                      stats=stats, progress=step)
    formats = " + ".join(f for f in (qcfg.quant_algo, qcfg.kv_cache_quant_algo and
                                     f"{qcfg.kv_cache_quant_algo} KV cache") if f) or "no quantization"
    err_console.print(f"quantized {res.variant} → {res.output_dir}: {formats}, {res.config.mapping.world_size} "
                      f"rank(s), {res.num_tensors} tensors, {human_bytes(res.num_bytes)}, {progress.elapsed:.1f}s")
