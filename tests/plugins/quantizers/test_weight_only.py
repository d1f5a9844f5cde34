"""Weight-only engines (INT8 / INT4 per-channel, INT4 group-wise, AWQ) through convert -> build -> runtime:
logits equal HF transformers in float64 with every quantized linear replaced by the dequantization of the
checkpoint's own integers and scales (unpacked and scaled here, from the format's definition), for MHA
(GPT-2), MQA (GPTBigCode) and GQA + RoPE (StarCoder2); and the integers equal round-to-nearest computed
here from the HF weights."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import (GPT2Config, GPT2LMHeadModel, GPTBigCodeConfig, GPTBigCodeForCausalLM, Starcoder2Config,
                          Starcoder2ForCausalLM)

from trt_gpt.build import build
from trt_gpt.config import BuildConfig, QuantConfig
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.quant.calibration import collect_stats, float_model
from trt_gpt.runtime.llm import LLM
from trt_gpt.testing import random_prompts, save_tiny

ATOL = 1e-4
ROLES = {"qkv": "attention.qkv", "dense": "attention.dense", "fc": "mlp.fc", "proj": "mlp.proj"}


def hf_gpt2(path):
    return save_tiny(GPT2LMHeadModel, GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=211, n_positions=128,
                                                 initializer_range=0.2, bos_token_id=0, eos_token_id=0), path)


def hf_bigcode(path):
    return save_tiny(GPTBigCodeForCausalLM, GPTBigCodeConfig(
        n_layer=2, n_embd=64, n_head=4, vocab_size=223, n_positions=128, multi_query=True, initializer_range=0.2,
        bos_token_id=None, eos_token_id=None), path)


def hf_starcoder2(path):
    cfg = Starcoder2Config(vocab_size=199, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                           initializer_range=0.2, rope_theta=5000.0)
    return save_tiny(Starcoder2ForCausalLM, cfg, path)


def hf_linear_weights(hf, kind: str, i: int) -> dict[str, list[torch.Tensor]]:
    """role -> the HF parameter(s) holding that canonical [out, in] weight, in canonical row order."""
    if kind == "starcoder2":
        lay = hf.model.layers[i]
        a = lay.self_attn
        return {"qkv": [a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], "dense": [a.o_proj.weight],
                "fc": [lay.mlp.c_fc.weight], "proj": [lay.mlp.c_proj.weight]}
    h = hf.transformer.h[i]
    return {"qkv": [h.attn.c_attn.weight], "dense": [h.attn.c_proj.weight], "fc": [h.mlp.c_fc.weight],
            "proj": [h.mlp.c_proj.weight]}


def canonical(hf, kind: str, i: int, role: str) -> torch.Tensor:
    ws = [w.detach() for w in hf_linear_weights(hf, kind, i)[role]]
    return ws[0].T.contiguous() if kind == "gpt2" else torch.cat(ws)    # GPT-2's Conv1D stores [in, out]


def set_canonical(hf, kind: str, i: int, role: str, w: torch.Tensor) -> None:
    params = hf_linear_weights(hf, kind, i)[role]
    if kind == "gpt2":
        params[0].data.copy_(w.T)
        return
    start = 0
    for p in params:
        p.data.copy_(w[start:start + p.shape[0]])
        start += p.shape[0]


def unpack_int4_oracle(packed: torch.Tensor) -> torch.Tensor:
    """Low nibble = column 2j, high nibble = column 2j+1, each a 4-bit two's complement value."""
    b = packed.view(torch.uint8).to(torch.int64)
    lo, hi = b & 0xF, b >> 4
    lo, hi = torch.where(lo > 7, lo - 16, lo), torch.where(hi > 7, hi - 16, hi)
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.int64)
    out[:, 0::2], out[:, 1::2] = lo, hi
    return out


def integers_and_scale(t: dict, name: str, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(integers [out, in] int64, per-element scale [out, in] float64) of a quantized layer in the checkpoint."""
    q = unpack_int4_oracle(t[f"{name}.weight"]) if bits == 4 else t[f"{name}.weight"].to(torch.int64)
    if f"{name}.per_channel_scale" in t:
        s = t[f"{name}.per_channel_scale"].double()[:, None].expand_as(q)
    else:
        g = t[f"{name}.weights_scaling_factor"].double()
        s = g.repeat_interleave(q.shape[1] // g.shape[1], dim=1)
    return q, s


def dequantized_reference(hf, kind: str, ckpt, bits: int):
    """HF in float64 with each quantized linear's weight = integers x scales (x pre-quant scale per column)."""
    ref = type(hf)(hf.config).double().eval()
    ref.load_state_dict({k: v.double() for k, v in hf.state_dict().items()})
    t = load_file(str(ckpt / "rank0.safetensors"))
    for i in range(hf.config.num_hidden_layers):
        for role, path in ROLES.items():
            name = f"transformer.layers.{i}.{path}"
            q, s = integers_and_scale(t, name, bits)
            w = q.double() * s
            if f"{name}.prequant_scaling_factor" in t:
                # (x * p) W'^T = x (W' diag(p))^T
                w = w * t[f"{name}.prequant_scaling_factor"].double()[None, :]
            set_canonical(ref, kind, i, role, w)
    return ref


def quantized_engine(hf_dir, work, qcfg: QuantConfig, stats=None, tp_size: int = 1):
    convert(hf_dir, work / "ckpt", dtype="float32", quantization=qcfg, stats=stats, tp_size=tp_size, overwrite=True)
    build(work / "engine", BuildConfig(max_input_len=64, tokens_per_block=16), checkpoint_dir=work / "ckpt",
          overwrite=True)
    return work / "ckpt", work / "engine"


MODELS = {"gpt2": (hf_gpt2, 211), "bigcode": (hf_bigcode, 223), "starcoder2": (hf_starcoder2, 199)}
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
