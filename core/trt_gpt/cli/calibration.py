"""Calibration in the CLI, shared by `convert` and `quantize`: the --calib_* options, whether a format needs
activation statistics, and the calibration run with its progress bar and one-line summary."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ..config import QuantConfig
from .common import err_console

AWQ_MAX_SAMPLES = 4096   # input rows a layer that AWQ's scale search keeps (the others need abs-max only)


def calib_dataset_option(used_by: str = "") -> Any:
    """--calib_dataset; `used_by` names the flags that calibrate, where only some do."""
    return typer.Option(None, "--calib_dataset",
                        help=f"Calibration text{f' for {used_by}' if used_by else ''}: .txt, or .jsonl with "
                             "text/article (default: a built-in sample).")


def calib_size_option(default: int) -> Any:
    return typer.Option(default, "--calib_size", help="Calibration windows.")


def calib_max_seq_length_option() -> Any:
    return typer.Option(512, "--calib_max_seq_length", help="Tokens per calibration window.")


def needs_calibration(quant_algo: str | None, kv_cache_quant_algo: str | None) -> bool:
    """Whether a format needs activation statistics (weight-only round-to-nearest does not)."""
    return kv_cache_quant_algo is not None or quant_algo in ("FP8", "W4A16_AWQ") or \
        (quant_algo or "").startswith("W8A8_SQ_")


def calibration_stats(model_dir: Path, variant: Optional[str], quant: QuantConfig, calib_dataset: Optional[Path],
                      calib_size: int, max_seq_length: int):
    """Calibration statistics of the checkpoint's float model for `quant` (AWQ also keeps input rows), with a
    progress bar and a one-line summary."""
    import torch
    from rich.progress import Progress

    from ..quant.calibration import calibrate, read_calib_texts

    read_calib_texts(calib_dataset)   # a missing or empty file fails before the model is loaded
    device = "cuda" if torch.cuda.is_available() else "cpu"
    max_samples = AWQ_MAX_SAMPLES if quant.quant_algo == "W4A16_AWQ" else 0
    with Progress(console=err_console, transient=True) as bar:
        task = bar.add_task("calibrate", total=calib_size)
        stats = calibrate(model_dir, calib_dataset, calib_size, max_seq_length, max_samples=max_samples,
                          variant=variant, device=device,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
    err_console.print(stats.summary())
    return stats
