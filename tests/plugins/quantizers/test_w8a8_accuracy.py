"""SmoothQuant, FP8 and 8-bit-KV-cache engines on trained weights: held-out perplexity through the engine
against the fp32 engine, calibrated on text apart from the held-out text (the cases of the weight-only test:
`gpt2-shakespeare` on Hamlet and Macbeth, `bigcode-python` on the standard library's json/ and email/).
Bounds: FP8, FP8 KV and INT8 KV within +1%; SmoothQuant per-token/per-channel within +3%; per-tensor
SmoothQuant and the combinations are reported (and must stay within +10%: a scale or smoothing bug shows
as perplexity in the thousands). Skipped without the shared data."""
from __future__ import annotations

import pytest

from accuracy_cases import CASES, held_out_perplexities

from trt_gpt.config import QuantConfig
from trt_gpt.quant.formats import smoothquant_algo

FORMATS = {
    "fp8": (QuantConfig(quant_algo="FP8"), 1.01),
    "fp8 kv": (QuantConfig(kv_cache_quant_algo="FP8"), 1.01),
    "int8 kv": (QuantConfig(kv_cache_quant_algo="INT8"), 1.01),
    "sq token/channel": (QuantConfig(quant_algo=smoothquant_algo(True, True), smoothquant_val=0.5), 1.03),
    "sq tensor/tensor": (QuantConfig(quant_algo=smoothquant_algo(False, False), smoothquant_val=0.5), 1.10),
    "fp8 + fp8 kv": (QuantConfig(quant_algo="FP8", kv_cache_quant_algo="FP8"), 1.02),
    "sq token/channel + int8 kv": (QuantConfig(quant_algo=smoothquant_algo(True, True), smoothquant_val=0.5,
                                               kv_cache_quant_algo="INT8"), 1.04),
}


@pytest.mark.parametrize("case", list(CASES))
def test_held_out_perplexity(tmp_path, case):
    base, got, report = held_out_perplexities(tmp_path, case, FORMATS)
    assert all(v != base for v in got.values()), report   # every format quantized for real
