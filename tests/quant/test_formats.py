"""Quantization formats by name (`quantize --qformat`, convert's SmoothQuant / INT8 KV flags) -> QuantConfig,
and the weight / KV-cache combinations: allowed ones pass, others are one-line errors naming both."""
from __future__ import annotations

import pytest

from trt_gpt.config import QuantConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.quant.formats import check_alpha, check_combination, qformat_config, smoothquant_algo, \
    smoothquant_config


@pytest.mark.parametrize("qformat,kv,algo,kv_algo", [
    ("fp8", "fp8", "FP8", "FP8"), ("FP8", None, "FP8", None), ("int8_sq", "int8", "W8A8_SQ_PER_CHANNEL", "INT8"),
    ("int8_wo", "int8", "W8A16", "INT8"), ("int4_wo", None, "W4A16", None), ("w4a16_awq", None, "W4A16_AWQ", None),
    ("full_prec", "int8", None, "INT8"), ("full_prec", "fp8", None, "FP8")])
def test_qformats(qformat, kv, algo, kv_algo):
    cfg = qformat_config(qformat, kv)
    assert (cfg.quant_algo, cfg.kv_cache_quant_algo) == (algo, kv_algo)
    assert cfg.group_size == 128


@pytest.mark.parametrize("qformat,kv,needles", [
    ("int3", None, ["--qformat 'int3'", "fp8", "int8_sq"]), ("fp8", "int4", ["--kv_cache_dtype 'int4'"]),
    ("fp8", "int8", ["INT8 KV", "FP8"]), ("int8_sq", "fp8", ["FP8 KV", "W8A8_SQ_PER_CHANNEL"]),
    ("int4_wo", "fp8", ["FP8 KV", "W4A16"])])
def test_bad_names_and_combinations_are_one_line_errors(qformat, kv, needles):
    with pytest.raises(TrtGptError) as e:
        qformat_config(qformat, kv)
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


def test_smoothquant_flags():
    cfg = smoothquant_config(0.5, per_token=True, per_channel=True, int8_kv_cache=True)
    assert (cfg.quant_algo, cfg.kv_cache_quant_algo, cfg.smoothquant_val) == \
        ("W8A8_SQ_PER_CHANNEL_PER_TOKEN_PLUGIN", "INT8", 0.5)
    assert smoothquant_config(0.8, False, False, False).quant_algo == "W8A8_SQ_PER_TENSOR_PLUGIN"
    assert smoothquant_algo(False, True) == "W8A8_SQ_PER_TENSOR_PER_TOKEN_PLUGIN"
    assert smoothquant_algo(True, False) == "W8A8_SQ_PER_CHANNEL"
    assert smoothquant_config(None, False, False, False) is None
    kv_only = smoothquant_config(None, False, False, True)
    assert (kv_only.quant_algo, kv_only.kv_cache_quant_algo) == (None, "INT8")
    wo = smoothquant_config(None, False, False, True, weight_only=QuantConfig(quant_algo="W8A16"))
    assert (wo.quant_algo, wo.kv_cache_quant_algo) == ("W8A16", "INT8")
    with pytest.raises(TrtGptError, match="--per_token needs --smoothquant"):
        smoothquant_config(None, True, False, False)
    with pytest.raises(TrtGptError, match="cannot be combined with weight-only"):
        smoothquant_config(0.5, True, True, False, weight_only=QuantConfig(quant_algo="W4A16"))
    with pytest.raises(TrtGptError, match=r"\[0, 1\]"):
        smoothquant_config(1.5, True, True, False)


def test_alpha():
    assert check_alpha("0.25") == 0.25
    for bad in (-1e-9, 1.01, float("nan"), "half", None):
        with pytest.raises(TrtGptError, match=r"--smoothquant: the migration strength alpha must be"):
            check_alpha(bad)


def test_unknown_kv_algo():
    with pytest.raises(TrtGptError, match="'INT4' is not one of INT8, FP8"):
        check_combination(QuantConfig(kv_cache_quant_algo="INT4"), "config.json")
