"""Weight-only engines (INT8 / INT4 per-channel, INT4 group-wise, AWQ) through convert -> build -> runtime:
logits equal HF transformers in float64 with every quantized linear replaced by the dequantization of the
checkpoint's own integers and scales (unpacked and scaled here, from the format's definition), for MHA
(GPT-2), MQA (GPTBigCode) and GQA + RoPE (StarCoder2); and the integers equal round-to-nearest computed
here from the HF weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.quant.calibration import collect_stats, float_model
from trt_gpt.runtime.llm import LLM
from trt_gpt.testing import random_prompts

from wo_oracle import ATOL, MODELS, ROLES, canonical, dequantized_reference, hf_gpt2, integers_and_scale


def quantized_engine(hf_dir, work, qcfg: QuantConfig, stats=None, tp_size: int = 1, dtype: str = "float32"):
    convert(hf_dir, work / "ckpt", dtype=dtype, quantization=qcfg, stats=stats, tp_size=tp_size, overwrite=True)
    build(work / "engine", BuildConfig(max_input_len=64, tokens_per_block=16), checkpoint_dir=work / "ckpt",
          overwrite=True)
    return work / "ckpt", work / "engine"


FORMATS = {"int8": ("W8A16", 8), "int4": ("W4A16", 4), "int4 g32": ("W4A16_GPTQ", 4), "int4 awq g32": ("W4A16_AWQ", 4)}


def calib_stats(hf_dir, vocab):
    model = float_model(hf_dir, max_positions=128)
    return collect_stats(model, random_prompts(vocab, [32] * 4, seed=5), max_samples=64)


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", list(MODELS))
def test_engine_equals_dequantized_float64(tmp_path, kind, fmt):
    make, vocab = MODELS[kind]
    hf = make(tmp_path / "hf")
    algo, bits = FORMATS[fmt]
    stats = calib_stats(tmp_path / "hf", vocab) if algo == "W4A16_AWQ" else None
    ckpt, engine = quantized_engine(tmp_path / "hf", tmp_path, QuantConfig(quant_algo=algo, group_size=32), stats)
    ref = dequantized_reference(hf, kind, ckpt, bits)
    llm = LLM(engine, device="cpu")
    prompts = random_prompts(vocab, [5, 17, 33])
    scores = llm.score(prompts)
    for p, got in zip(prompts, scores):
        with torch.no_grad():
            want = ref(torch.tensor([p])).logits[0]
        err = (got.double() - want).abs().max().item()
        assert err <= ATOL, f"{kind} {fmt}: logits differ from the float64 dequantized reference by {err:.3g}"
    # and quantization did change the model (the reference is not just the float model)
    with torch.no_grad():
        float_logits = hf.double()(torch.tensor([prompts[1]])).logits[0]
    assert (scores[1].double() - float_logits).abs().max() > 10 * ATOL


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_engine_near_dequantized_float64(tmp_path, dtype):
    """fp16/bf16 checkpoints: scales stored in that dtype, integers chosen for the stored scale; the engine's
    logits are within that dtype's arithmetic of the float64 reference on its own integers and scales."""
    hf = hf_gpt2(tmp_path / "hf")
    ckpt, engine = quantized_engine(tmp_path / "hf", tmp_path, QuantConfig(quant_algo="W4A16_GPTQ", group_size=32),
                                    dtype=dtype)
    t = load_file(str(ckpt / "rank0.safetensors"))
    assert t["transformer.layers.0.mlp.fc.weights_scaling_factor"].dtype == getattr(torch, dtype)
    ref = dequantized_reference(hf, "gpt2", ckpt, 4)
    p = random_prompts(211, [17])[0]
    got = LLM(engine, device="cpu").score([p])[0].double()
    with torch.no_grad():
        want = ref(torch.tensor([p])).logits[0]
    err = ((got - want).abs().max() / want.abs().max()).item()
    assert err < (0.01 if dtype == "float16" else 0.05), err


def rtn(w: torch.Tensor, qmax: int, qmin: int, group: int | None) -> torch.Tensor:
    """Round-to-nearest symmetric integers, from the definition (scale = max|w| / qmax per row or group)."""
    g = w.shape[1] if group is None else group
    blocks = w.float().reshape(w.shape[0], -1, g)
    scale = blocks.abs().amax(-1, keepdim=True) / qmax
    return torch.round(blocks / scale).clamp(qmin, qmax).reshape(w.shape).to(torch.int64)


@pytest.mark.parametrize("fmt", ["int8", "int4", "int4 g32"])
@pytest.mark.parametrize("kind", ["gpt2", "starcoder2"])
def test_integers_equal_round_to_nearest_of_hf_weights(tmp_path, kind, fmt):
    make, _ = MODELS[kind]
    hf = make(tmp_path / "hf")
    algo, bits = FORMATS[fmt]
    group = 32 if algo == "W4A16_GPTQ" else None
    ckpt, _ = quantized_engine(tmp_path / "hf", tmp_path, QuantConfig(quant_algo=algo, group_size=32))
    t = load_file(str(ckpt / "rank0.safetensors"))
    for i in range(2):
        for role, path in ROLES.items():
            name = f"transformer.layers.{i}.{path}"
            q, _ = integers_and_scale(t, name, bits)
            want = rtn(canonical(hf, kind, i, role), 127 if bits == 8 else 7, -127 if bits == 8 else -8, group)
            assert torch.equal(q, want), f"{name}: {(q != want).sum()} integers differ from round-to-nearest"
    assert t["lm_head.weight"].dtype == torch.float32 if "lm_head.weight" in t else True
    assert t["transformer.vocab_embedding.weight"].dtype == torch.float32


def test_awq_refuses_random_weights_and_missing_statistics(tmp_path):
    hf_gpt2(tmp_path / "hf")
    with pytest.raises(TrtGptError, match="W4A16_AWQ needs calibration statistics"):
        convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", quantization=QuantConfig(quant_algo="W4A16_AWQ"))
    assert not (tmp_path / "ckpt").exists()


def test_group_not_dividing_input_is_one_line(tmp_path):
    hf_gpt2(tmp_path / "hf")
    with pytest.raises(TrtGptError, match="group_size 48 does not divide the layer's input dimension 64"):
        convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32",
                quantization=QuantConfig(quant_algo="W4A16_GPTQ", group_size=48))
    assert not (tmp_path / "ckpt").exists()


def test_tp2_groups_are_local_to_the_rank(tmp_path):
    """proj is row-parallel: its 256 inputs are 128 a rank at tp 2, so group 256 fits tp 1 only (the other
    layers are kept in float through exclude_modules)."""
    hf_gpt2(tmp_path / "hf")
    q = QuantConfig(quant_algo="W4A16_GPTQ", group_size=256, exclude_modules=["qkv", "dense", "fc"])
    convert(tmp_path / "hf", tmp_path / "tp1", dtype="float32", quantization=q)
    t = load_file(str(tmp_path / "tp1" / "rank0.safetensors"))
    assert t["transformer.layers.0.mlp.proj.weights_scaling_factor"].shape == (64, 1)
    assert t["transformer.layers.0.mlp.fc.weight"].dtype == torch.float32      # excluded: float
    with pytest.raises(TrtGptError, match="mlp.proj: quantization.group_size 256 does not divide the layer's "
                                          "input dimension 128"):
        convert(tmp_path / "hf", tmp_path / "ckpt", dtype="float32", tp_size=2, quantization=q)
    assert not (tmp_path / "ckpt").exists()
