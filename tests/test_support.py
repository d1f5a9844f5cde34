"""Settings no loaded plugin implements are refused at build and at engine load, never silently ignored."""
from __future__ import annotations

import json

import pytest

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, ModelConfig, QuantConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import assert_one_line_error, run_cli

CFG = dict(vocab_size=97, hidden_size=32, num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=64)


@pytest.mark.parametrize("field, value, match", [
    ("quant_algo", "W2A2_NOT_A_FORMAT", "quant_algo 'W2A2_NOT_A_FORMAT' is not implemented"),
    ("kv_cache_quant_algo", "INT3", "kv_cache_quant_algo 'INT3' is not implemented"),
])
def test_build_refuses_unimplemented_quantization(tmp_path, field, value, match):
    cfg = ModelConfig(**CFG, quantization=QuantConfig(**{field: value}))
    with pytest.raises(TrtGptError, match=match):
        build(tmp_path / "eng", BuildConfig(max_input_len=16), model_config=cfg)
    assert not (tmp_path / "eng").exists()


def test_build_refuses_an_8bit_cache_without_a_quantized_checkpoint(tmp_path):
    with pytest.raises(TrtGptError, match="kv_cache_dtype 'int8'"):
        build(tmp_path / "eng", BuildConfig(max_input_len=16, kv_cache_dtype="int8"), model_config=ModelConfig(**CFG))


def test_engine_load_refuses_what_it_cannot_run(tmp_path):
    """An engine whose config.json was edited (or made by another tool) to claim an unimplemented format."""
    from trt_gpt import LLM

    build(tmp_path / "eng", BuildConfig(max_input_len=16), model_config=ModelConfig(**CFG))
    path = tmp_path / "eng" / "config.json"
    raw = json.loads(path.read_text())
    raw["pretrained_config"]["quantization"]["quant_algo"] = "W2A2_NOT_A_FORMAT"
    path.write_text(json.dumps(raw))
    with pytest.raises(TrtGptError, match="config.json: quantization.quant_algo 'W2A2_NOT_A_FORMAT'"):
        LLM(tmp_path / "eng", device="cpu")
    raw["pretrained_config"]["quantization"]["quant_algo"] = None
    raw["pretrained_config"]["quantization"]["kv_cache_quant_algo"] = "INT3"
    path.write_text(json.dumps(raw))
    (tmp_path / "ids.csv").write_text("1,2,3\n")
    r = run_cli("run", "--engine_dir", tmp_path / "eng", "--input_file", tmp_path / "ids.csv",
                "--max_output_len", "4", check=False)
    assert_one_line_error(r, "kv_cache_quant_algo 'INT3'")
