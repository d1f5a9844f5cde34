"""FP8 engines through convert -> build -> runtime against HF transformers in float64 with FP8 applied in the
test from the format's definition: every linear's weight the e4m3 rounding of W / (max|W| / 448) (checked
against the checkpoint), its input rounded to e4m3 with the static scale max|x| / 448 from statistics
recorded here; lm_head stays in float."""
from __future__ import annotations

import pytest
import torch
from transformers import GPT2LMHeadModel

from test_fp8_ref import e4m3_round_64
from quant_cases import MODS, hf_module, quantized_engine, worst_logit_error

from trt_gpt.config import QuantConfig
from trt_gpt.kernels.fp8_ref import FP8_DTYPE


def test_fp8_engine_matches_float64_definition(tmp_path):
    dtype = "float32"   # (in float16 the reference's unrounded activations land on other e4m3 values)
    _, absmax, ckpt = quantized_engine(tmp_path, QuantConfig(quant_algo="FP8"), dtype)
    assert ckpt["lm_head.weight"].dtype == getattr(torch, dtype)

    ref = GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).double().eval()
    for i in range(2):
        for mod in MODS:
            name = f"transformer.layers.{i}.{mod}"
            m = hf_module(ref, i, mod)
            w = m.weight.detach().T.contiguous().to(getattr(torch, dtype)).double()   # as convert saw it
            s_w = w.abs().max() / 448
            want = e4m3_round_64(w / s_w)
            q = ckpt[f"{name}.weight"]
            assert q.dtype == FP8_DTYPE and torch.equal(q.double(), want)
            assert ckpt[f"{name}.weights_scaling_factor"].item() == pytest.approx(float(s_w), rel=1e-6)
            s_x = float(absmax[name].max()) / 448
            assert ckpt[f"{name}.activation_scaling_factor"].item() == pytest.approx(s_x, rel=1e-6)
            m.weight.data.copy_((want * s_w).T)

            def pre(mod_, inp, s_x=s_x):
                return (e4m3_round_64(inp[0] / s_x) * s_x,)
            m.register_forward_pre_hook(pre)

    worst = worst_logit_error(tmp_path / "engine", ref, relative=True)
    assert worst <= 1e-3, worst   # fp32 rounding only (and the rare e4m3 tie it moves)
