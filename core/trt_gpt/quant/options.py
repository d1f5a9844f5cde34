"""User-facing quantization options (the reference's convert flags, `trt-gpt config --quantization`) ->
the checkpoint's `QuantConfig`, with one-line errors for combinations nothing implements."""
from __future__ import annotations

from ..config import QuantConfig
from ..errors import TrtGptError

PRECISIONS = ("int8", "int4")
CONFIG_CHOICES = ("w8a16", "w4a16", "w4a16_gptq", "w4a16_awq")


def weight_only_config(use_weight_only: bool, precision: str | None, group_size: int | None,
                       awq: bool) -> QuantConfig | None:
    """convert's `--use_weight_only --weight_only_precision int8|int4 [--group_size g] [--awq]`.

    INT4 without a group size is per channel (W4A16); with one it is group-wise (W4A16_GPTQ layout,
    round-to-nearest integers); `--awq` is group-wise with activation-aware scales (group 128 by default)."""
    if not use_weight_only:
        for flag, val in (("--weight_only_precision", precision), ("--group_size", group_size), ("--awq", awq or None)):
            if val is not None:
                raise TrtGptError(f"convert: {flag} needs --use_weight_only")
        return None
    precision = (precision or "int8").lower()
    if precision not in PRECISIONS:
        raise TrtGptError(f"convert: --weight_only_precision '{precision}': expected one of {', '.join(PRECISIONS)}")
    if group_size is not None and group_size <= 0:
        raise TrtGptError(f"convert: --group_size {group_size}: expected a positive integer")
    if precision == "int8":
        if group_size is not None or awq:
            raise TrtGptError("convert: --group_size and --awq need --weight_only_precision int4 (INT8 weight-only "
                              "is per channel)")
        return QuantConfig(quant_algo="W8A16")
    if awq:
        return QuantConfig(quant_algo="W4A16_AWQ", group_size=group_size or 128)
    if group_size is None:
        return QuantConfig(quant_algo="W4A16")
    return QuantConfig(quant_algo="W4A16_GPTQ", group_size=group_size)


def config_quantization(name: str | None, group_size: int | None) -> QuantConfig:
    """`trt-gpt config --quantization w8a16|w4a16|w4a16_gptq [--group_size g]` for random-weight engines."""
    if name is None:
        if group_size is not None:
            raise TrtGptError("config: --group_size needs --quantization")
        return QuantConfig()
    key = name.lower()
    if key not in CONFIG_CHOICES:
        raise TrtGptError(f"config: --quantization '{name}': expected one of {', '.join(CONFIG_CHOICES)}")
    if key == "w4a16_awq":
        raise TrtGptError("config: --quantization w4a16_awq needs calibration on a real checkpoint (convert --awq); "
                          "for random weights use w4a16 --group_size 128")
    if key == "w8a16":
        return weight_only_config(True, "int8", group_size, False)
    if key == "w4a16_gptq" and group_size is None:
        group_size = 128
    return weight_only_config(True, "int4", group_size, False)
