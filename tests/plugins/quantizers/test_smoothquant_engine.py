"""SmoothQuant engines through convert -> build -> runtime against HF transformers in float64 with the
algorithm applied in the test from its definition: per layer s_j = max|X_j|^alpha / max|W_j|^(1-alpha)
(activation statistics recorded here with hooks on the HF model), every linear's input divided by s and
fake-quantized to INT8 (per token, or the static per-tensor scale), its weight the dequantized checkpoint
integers; and the checkpoint integers equal round-to-nearest of W * s computed here."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import GPT2LMHeadModel

from quant_cases import MODS, Stats, hf_module, hf_tiny, quantized_engine, record_absmax, worst_logit_error
from test_int8_gemm_ref import round_half_even_64

from trt_gpt.config import QuantConfig
from trt_gpt.convert import convert
from trt_gpt.errors import TrtGptError
from trt_gpt.testing import random_prompts
from trt_gpt.quant.formats import smoothquant_algo

ALPHA = 0.5


def fake_quant(z, static_scale):
    """INT8 round trip in float64: per token (scale = row max / 127) or with one static scale."""
    s = z.abs().amax(-1, keepdim=True) / 127 if static_scale is None else torch.tensor(static_scale, dtype=z.dtype)
    s = torch.where(s > 0, s, torch.ones_like(s))
    return round_half_even_64((z / s).clamp(-127, 127)) * s


@pytest.mark.parametrize("per_channel,per_token", [(True, True), (False, False), (True, False)])
def test_smoothquant_engine_matches_float64_definition(tmp_path, per_channel, per_token):
    _, absmax, ckpt = quantized_engine(tmp_path, QuantConfig(quant_algo=smoothquant_algo(per_channel, per_token)))

    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).double().eval()
    for i in range(2):
        for mod in MODS:
            name = f"transformer.layers.{i}.{mod}"
            m = hf_module(ref, i, mod)
            w = m.weight.detach().T.contiguous()                    # canonical [out, in]
            s = absmax[name].double() ** ALPHA / w.abs().amax(0).clamp(min=1e-5) ** (1 - ALPHA)
            ws = w * s[None, :]
            s_w = ws.abs().amax(1) / 127 if per_channel else ws.abs().max().reshape(1) / 127
            q = ckpt[f"{name}.weight"]
            want_q = round_half_even_64(ws / s_w[:, None] if per_channel else ws / s_w)
            # the integers: round-to-nearest of W * s (one step of slack where fp32 and float64 straddle a tie)
            assert q.dtype == torch.int8 and (q.double() - want_q).abs().max() <= 1
            assert (q.double() != want_q).float().mean() < 1e-3
            m.weight.data.copy_((q.double() * ckpt[f"{name}.per_channel_scale"].double()[:, None]).T)
            static = None if per_token else float((absmax[name].double() / s).max() / 127)

            def pre(mod_, inp, s=s, static=static):
                return (fake_quant(inp[0] / s, static),)
            m.register_forward_pre_hook(pre)

    worst = worst_logit_error(tmp_path / "engine", ref)
    assert worst <= 1e-3, worst


def test_alpha_reaches_the_checkpoint_config_and_the_smoothing(tmp_path):
    """quantization.smoothquant_val is written to config.json and read back by the quantizer: alpha 0.9 moves
    more of the range into the weights than 0.5 (larger s for outlier channels)."""
    import json

    hf = hf_tiny(tmp_path / "hf")
    absmax = record_absmax(hf, random_prompts(211, [40], seed=3))
    ckpts = {}
    for alpha in (0.5, 0.9):
        q = QuantConfig(quant_algo=smoothquant_algo(True, True), smoothquant_val=alpha)
        convert(tmp_path / "hf", tmp_path / f"ckpt{alpha}", dtype="float32", quantization=q, stats=Stats(absmax))
        assert json.loads((tmp_path / f"ckpt{alpha}" / "config.json").read_text())["quantization"][
            "smoothquant_val"] == alpha
        ckpts[alpha] = load_file(str(tmp_path / f"ckpt{alpha}" / "rank0.safetensors"))
    s = {a: c["transformer.layers.0.attention.dense.smoother"] for a, c in ckpts.items()}
    act = absmax["transformer.layers.0.attention.dense"].double()
    w = hf.transformer.h[0].attn.c_proj.weight.detach().T.double().abs().amax(0).clamp(min=1e-5)
    for alpha, got in s.items():
        torch.testing.assert_close(got.double(), act.clamp(min=1e-5) ** alpha / w ** (1 - alpha), rtol=1e-5, atol=0)
    with pytest.raises(TrtGptError, match=r"quantization.smoothquant_val: the migration strength alpha must be in"):
        convert(tmp_path / "hf", tmp_path / "bad", dtype="float32", stats=Stats(absmax),
                quantization=QuantConfig(quant_algo=smoothquant_algo(True, True), smoothquant_val=1.5))
