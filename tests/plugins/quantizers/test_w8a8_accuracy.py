"""SmoothQuant, FP8 and 8-bit-KV-cache engines on trained weights: held-out perplexity through the engine
against the fp32 engine, calibrated on text apart from the held-out text (the cases of the weight-only test:
`gpt2-shakespeare` on Hamlet and Macbeth, `bigcode-python` on the standard library's json/ and email/).
Bounds: FP8, FP8 KV and INT8 KV within +1%; SmoothQuant per-token/per-channel within +3%; per-tensor
SmoothQuant and the combinations are reported (and must stay within +10%: a scale or smoothing bug shows
as perplexity in the thousands). Skipped without the shared data."""
from __future__ import annotations

import pytest

from test_weight_only_accuracy import CASES, DATA, WINDOW, WINDOWS

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.eval.heldout import perplexity
from trt_gpt.quant.calibration import calibrate
from trt_gpt.quant.formats import smoothquant_algo
from trt_gpt.runtime.llm import LLM
from trt_gpt.runtime.tokenizer import load_tokenizer

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
    model = DATA / "models" / case
    if not (model / "config.json").is_file():
        pytest.skip(f"{model} not present")
    model, text, calib = CASES[case](tmp_path)
    ids = load_tokenizer(model).encode(text, add_special_tokens=False)
    stats = calibrate(model, calib, calib_size=64, max_seq_length=WINDOW)

    def ppl(q: QuantConfig | None) -> float:
        convert(model, tmp_path / "ckpt", dtype="float32", quantization=q, overwrite=True, stats=stats)
        build(tmp_path / "engine", BuildConfig(max_input_len=WINDOW, max_seq_len=WINDOW, max_batch_size=4),
              checkpoint_dir=tmp_path / "ckpt", overwrite=True)
        return perplexity(LLM(tmp_path / "engine", device="cpu"), ids, WINDOW, WINDOWS)

    base = ppl(None)
    got = {name: ppl(q) for name, (q, _) in FORMATS.items()}
    report = ", ".join(f"{k} {v:.2f} ({100 * (v / base - 1):+.2f}%)" for k, v in got.items())
    print(f"{case}: fp32 {base:.2f}, {report}")
    for name, (_, bound) in FORMATS.items():
        assert got[name] <= base * bound, f"{case} {name}: perplexity {got[name]:.2f} vs fp32 {base:.2f} ({report})"
    assert all(v != base for v in got.values()), report   # every format quantized for real
