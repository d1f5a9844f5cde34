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
from typing import Optional

import typer

from ..errors import TrtGptError
from .common import err_console, human_bytes, progress
from .calibration import (calib_dataset_option, calib_max_seq_length_option, calib_size_option, calibration_stats,
                          needs_calibration)

SMOOTHQUANT_ALPHA = 0.5   # int8_sq's migration strength (the reference's quantize.py takes no alpha either)


def quantize_cmd(
    model_dir: Path = typer.Option(..., "--model_dir", help="HuggingFace checkpoint directory."),
    output_dir: Path = typer.Option(..., "--output_dir", help="Checkpoint directory to write."),
    dtype: str = typer.Option("float16", "--dtype", help="Dtype of what stays unquantized."),
    qformat: str = typer.Option("full_prec", "--qformat",
                                help="fp8, int8_sq, w4a16_awq, int8_wo, int4_wo or full_prec."),
    kv_cache_dtype: Optional[str] = typer.Option(None, "--kv_cache_dtype",
                                                 help="int8 or fp8: an 8-bit KV cache with calibrated scales."),
    calib_dataset: Optional[Path] = calib_dataset_option(),
    calib_size: int = calib_size_option(512),
    calib_max_seq_length: int = calib_max_seq_length_option(),
    tp_size: int = typer.Option(1, "--tp_size", help="Tensor-parallel ranks."),
    pp_size: int = typer.Option(1, "--pp_size", help="Pipeline-parallel stages."),
    variant: Optional[str] = typer.Option(None, "--variant", help="Variant name; detected when omitted."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output directory."),
) -> None:
    """Quantize a HuggingFace checkpoint into a trt-gpt checkpoint (calibrating where the format needs it)."""
    from ..convert import convert
    from ..quant.formats import qformat_config

    qcfg = qformat_config(qformat, kv_cache_dtype)
    if qcfg.quant_algo is not None and qcfg.quant_algo.startswith("W8A8_SQ_"):
        qcfg.smoothquant_val = SMOOTHQUANT_ALPHA
    if qcfg.quant_algo is None and qcfg.kv_cache_quant_algo is None:
        qcfg = None
    if tp_size < 1 or pp_size < 1:
        raise TrtGptError(f"quantize: --tp_size ({tp_size}) and --pp_size ({pp_size}) must be positive")
    stats = None
    if qcfg is not None and needs_calibration(qcfg.quant_algo, qcfg.kv_cache_quant_algo):
        stats = calibration_stats(model_dir, variant, qcfg, calib_dataset, calib_size, calib_max_seq_length)
    elif calib_dataset is not None:
        raise TrtGptError(f"quantize: --calib_dataset is not used by --qformat {qformat} without an 8-bit KV cache")
    with progress("quantize") as step:
        res = convert(model_dir, output_dir, dtype, variant, tp_size, pp_size, overwrite, quantization=qcfg,
                      stats=stats, progress=step)
    formats = "no quantization" if qcfg is None else " + ".join(
        f for f in (qcfg.quant_algo, qcfg.kv_cache_quant_algo and f"{qcfg.kv_cache_quant_algo} KV cache") if f)
    err_console.print(f"quantized {res.variant} → {res.output_dir}: {formats}, {res.config.mapping.world_size} "
                      f"rank(s), {res.num_tensors} tensors, {human_bytes(res.num_bytes)}, {progress.elapsed:.1f}s",
                      soft_wrap=True, highlight=False)   # one line, however narrow the terminal
