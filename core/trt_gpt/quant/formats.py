"""The quantization formats users ask for by name -> the checkpoint's `QuantConfig`, and the combinations of
weight and KV-cache formats that are allowed.

`trt-gpt quantize --qformat F [--kv_cache_dtype D]` is the one front door for every format (the
reference's `quantize.py` names); `convert --smoothquant α [--per_token] [--per_channel] [--int8_kv_cache]`
are the reference's convert flags for SmoothQuant and the INT8 KV cache.

Allowed combinations (those the reference documents): an INT8 KV cache with an unquantized model,
SmoothQuant or weight-only weights; an FP8 KV cache with an unquantized or an FP8 model. Anything else is
refused with one line naming both formats.
"""
from __future__ import annotations

from ..config import QuantConfig
from ..errors import TrtGptError

# --qformat -> (quant_algo, group_size or None)
QFORMATS = {
    "fp8": ("FP8", None),
    "int8_sq": ("W8A8_SQ_PER_CHANNEL", None),        # per-channel weights, static per-tensor activations
    "int8_wo": ("W8A16", None),
    "int4_wo": ("W4A16", None),
    "w4a16_awq": ("W4A16_AWQ", 128),
    "full_prec": (None, None),
}
KV_CACHE_DTYPES = {"int8": "INT8", "fp8": "FP8"}
SMOOTHQUANT_PREFIX = "W8A8_SQ_"
# SmoothQuant quant_algo -> (per-channel weight scales, per-token activation scales); first name of a pair wins
SMOOTHQUANT_ALGOS = {
    "W8A8_SQ_PER_CHANNEL": (True, False),
    "W8A8_SQ_PER_CHANNEL_PER_TENSOR_PLUGIN": (True, False),
    "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN": (True, True),
    "W8A8_SQ_PER_TENSOR_PLUGIN": (False, False),
    "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN": (False, True),
}
# kv_cache_quant_algo -> predicate on quant_algo
_KV_ALLOWED = {
    "INT8": lambda algo: algo is None or algo.startswith(SMOOTHQUANT_PREFIX) or algo.startswith(("W8A16", "W4A16")),
    "FP8": lambda algo: algo in (None, "FP8"),
}


def check_alpha(alpha: object, where: str = "--smoothquant") -> float:
    """SmoothQuant's migration strength as a float in [0, 1], else a one-line TrtGptError naming `where`."""
    try:
        a = float(alpha)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TrtGptError(f"{where}: the migration strength alpha must be a number in [0, 1], got {alpha!r}") \
            from None
    if not 0.0 <= a <= 1.0:   # NaN fails too
        raise TrtGptError(f"{where}: the migration strength alpha must be in [0, 1], got {alpha}")
    return a


def check_combination(qcfg: QuantConfig, where: str) -> QuantConfig:
    """`qcfg` if its weight and KV-cache formats may be combined, else a one-line TrtGptError naming both."""
    kv = qcfg.kv_cache_quant_algo
    if kv is None:
        return qcfg
    if kv not in _KV_ALLOWED:
        raise TrtGptError(f"{where}: kv_cache_quant_algo '{kv}' is not one of {', '.join(_KV_ALLOWED)}")
    if not _KV_ALLOWED[kv](qcfg.quant_algo):
        raise TrtGptError(f"{where}: a {kv} KV cache cannot be combined with quant_algo {qcfg.quant_algo} "
                          f"(INT8 KV goes with SmoothQuant, weight-only or unquantized weights; FP8 KV with FP8 "
                          "or unquantized weights)")
    return qcfg


def qformat_config(qformat: str, kv_cache_dtype: str | None = None) -> QuantConfig:
    """`trt-gpt quantize --qformat F [--kv_cache_dtype D]` -> QuantConfig (one-line error for unknown names)."""
    key = qformat.lower()
    if key not in QFORMATS:
        raise TrtGptError(f"quantize: --qformat '{qformat}': expected one of {', '.join(QFORMATS)}")
    algo, group = QFORMATS[key]
    kv = None
    if kv_cache_dtype is not None:
        if kv_cache_dtype.lower() not in KV_CACHE_DTYPES:
            raise TrtGptError(f"quantize: --kv_cache_dtype '{kv_cache_dtype}': expected one of "
                              f"{', '.join(KV_CACHE_DTYPES)}")
        kv = KV_CACHE_DTYPES[kv_cache_dtype.lower()]
    cfg = QuantConfig(quant_algo=algo, kv_cache_quant_algo=kv, **({"group_size": group} if group else {}))
    return check_combination(cfg, "quantize")


def smoothquant_algo(per_channel: bool, per_token: bool) -> str:
    """The reference's quant_algo for SmoothQuant's two scale choices (`W8A8_SQ_PER_CHANNEL` is its name for
    per-channel weights with static per-tensor activations; the `..._PER_TENSOR_PLUGIN` alias reads the same)."""
    return next(k for k, v in SMOOTHQUANT_ALGOS.items() if v == (per_channel, per_token))


def smoothquant_config(alpha: float | None, per_token: bool, per_channel: bool, int8_kv_cache: bool,
                       weight_only: QuantConfig | None = None) -> QuantConfig | None:
    """convert's `--smoothquant α [--per_token] [--per_channel] [--int8_kv_cache]` (with the weight-only flags'
    config, if any) -> QuantConfig, or None when nothing is quantized."""
    if alpha is None:
        for flag, on in (("--per_token", per_token), ("--per_channel", per_channel)):
            if on:
                raise TrtGptError(f"convert: {flag} needs --smoothquant")
        cfg = weight_only or QuantConfig()
    else:
        if weight_only is not None and weight_only.quant_algo:
            raise TrtGptError(f"convert: --smoothquant cannot be combined with weight-only quantization "
                              f"({weight_only.quant_algo})")
        cfg = QuantConfig(quant_algo=smoothquant_algo(per_channel, per_token))
        cfg.smoothquant_val = check_alpha(alpha)
    if int8_kv_cache:
        cfg.kv_cache_quant_algo = "INT8"
    if cfg.quant_algo is None and cfg.kv_cache_quant_algo is None:
        return None
    return check_combination(cfg, "convert")


RANDOM_WEIGHT_FORMATS = {"w8a8_sq": "W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "fp8": "FP8"}


def random_weights_config(name: str | None, group_size: int | None, kv_cache_dtype: str | None) -> QuantConfig:
    """`trt-gpt config --quantization NAME [--group_size g] [--kv_cache_dtype int8|fp8]` for random-weight engines
    (benchmarks: no calibration, so SmoothQuant is per token and scales are 1): the weight-only names, w8a8_sq
    and fp8, with an 8-bit KV cache or not."""
    from .options import CONFIG_CHOICES, config_quantization

    key = (name or "").lower()
    if name is not None and key not in RANDOM_WEIGHT_FORMATS and key not in CONFIG_CHOICES:
        raise TrtGptError(f"config: --quantization '{name}': expected one of "
                          f"{', '.join((*CONFIG_CHOICES, *RANDOM_WEIGHT_FORMATS))}")
    if key in RANDOM_WEIGHT_FORMATS:
        if group_size is not None:
            raise TrtGptError(f"config: --group_size is for INT4 weight-only, not --quantization {name}")
        cfg = QuantConfig(quant_algo=RANDOM_WEIGHT_FORMATS[key])
    else:
        cfg = config_quantization(name, group_size)
    if kv_cache_dtype is not None:
        if kv_cache_dtype.lower() not in KV_CACHE_DTYPES:
            raise TrtGptError(f"config: --kv_cache_dtype '{kv_cache_dtype}': expected one of "
                              f"{', '.join(KV_CACHE_DTYPES)}")
        cfg.kv_cache_quant_algo = KV_CACHE_DTYPES[kv_cache_dtype.lower()]
    return check_combination(cfg, "config")
