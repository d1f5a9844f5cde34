"""SmoothQuant's offline math against float64 arithmetic written here from the paper's definitions:
smoothing scales s_j = max|X_j|^alpha / max|W_j|^(1-alpha), the exact float rewrite (x / s) @ (W s)^T with
1/s folded into the preceding norm, and INT8 quantization of the smoothed layer."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.errors import TrtGptError
from trt_gpt.kernels.int8_gemm_ref import w8a8_linear_ref
from trt_gpt.quant.formats import check_alpha
from trt_gpt_plugins.quantizers.smoothquant import (fold_into_norm, quantize_linear, scale_weight, smoothed_absmax,
                                                    smoothing_scales, static_act_scale)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), "x", None])
def test_alpha_outside_unit_interval_is_one_line_error(bad):
    with pytest.raises(TrtGptError) as e:
        check_alpha(bad)
    assert "--smoothquant" in str(e.value) and "[0, 1]" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(TrtGptError):
        smoothing_scales(torch.ones(4), [torch.ones(2, 4)], bad)


def test_alpha_bounds_accepted():
    assert check_alpha(0) == 0.0 and check_alpha("1") == 1.0 and check_alpha(0.5) == 0.5


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.8, 1.0])
def test_smoothing_scales_match_float64_and_span_shared_weights(alpha):
    gen = torch.Generator().manual_seed(0)
    act = torch.rand(16, generator=gen) * 10
    act[3] = 80.0                                          # an outlier channel
    fc, gate = torch.randn(24, 16, generator=gen), torch.randn(24, 16, generator=gen) * 3
    s = smoothing_scales(act, [fc, gate], alpha)
    # float64 from the definition, W_j's max over the rows of both fc and gate
    w = [max(abs(float(m[n, j])) for m in (fc, gate) for n in range(24)) for j in range(16)]
    want = torch.tensor([float(act[j]) ** alpha / w[j] ** (1 - alpha) for j in range(16)], dtype=torch.float64)
    assert s.dtype == torch.float32 and s.shape == (16,)
    torch.testing.assert_close(s.double(), want, rtol=1e-6, atol=0)
    if alpha == 0.5:   # the paper's balance: after smoothing both sides have range sqrt(max|X_j| max|W_j|)
        torch.testing.assert_close(smoothed_absmax(act, s).double(),
                                   torch.stack([scale_weight(s, m).abs().amax(0) for m in (fc, gate)]).amax(0).double(),
                                   rtol=1e-5, atol=0)


def test_dead_channels_do_not_give_zero_scales():
    s = smoothing_scales(torch.tensor([0.0, 1.0]), [torch.tensor([[0.0, 1.0]])], 0.5)
    assert (s > 0).all() and torch.isfinite(s).all()


def norm64(x, kind, weight, bias, eps=1e-5):
    """The three norms in float64 from their definitions (layernorm1p's stored weight is gamma - 1)."""
    x = x.double()
    if kind == "rmsnorm":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()
    gamma = weight.double() + (1.0 if kind == "layernorm1p" else 0.0)
    h = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return h * gamma + (bias.double() if bias is not None else 0.0)


@pytest.mark.parametrize("kind", ["layernorm", "layernorm1p", "rmsnorm"])
def test_folding_is_an_exact_rewrite_of_the_float_layer(kind):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(6, 32, generator=gen, dtype=torch.float64)
    g = torch.randn(32, generator=gen, dtype=torch.float64)
    b = None if kind == "rmsnorm" else torch.randn(32, generator=gen, dtype=torch.float64)
    w = torch.randn(20, 32, generator=gen, dtype=torch.float64)
    act = norm64(x, kind, g, b).abs().amax(0)
    s = smoothing_scales(act, [w], 0.5)
    g2, b2 = fold_into_norm(s, g, b, kind)
    assert g2.dtype == torch.float64 and (b2 is None) == (b is None)
    before = norm64(x, kind, g, b) @ w.t()
    after = norm64(x, kind, g2, b2) @ (w * s.double()[None, :]).t()
    torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="kind"):
        fold_into_norm(s, g, b, "batchnorm")


def outlier_layer(seed=2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 64, generator=gen)
    x[:, [5, 40]] *= 60.0                  # two outlier channels, as in LLM activations
    w = torch.randn(48, 64, generator=gen) * 0.1
    return x, w


@pytest.mark.parametrize("per_token", [False, True])
def test_smoothing_reduces_w8a8_error_on_outlier_channels(per_token):
    x, w = outlier_layer()
    ref = x.double() @ w.double().t()
    act = x.abs().amax(0)

    def error(weight, xin, act_stats, smoother=None):
        t = quantize_linear(weight, act_stats, per_channel=True, per_token=per_token, smoother=smoother)
        y = w8a8_linear_ref(xin, t["weight"], t["per_channel_scale"], act_scale=t.get("act_scale"),
                            smoother=t.get("smoother"))
        return ((y.double() - ref).norm() / ref.norm()).item()

    plain = error(w, x, act)
    s = smoothing_scales(act, [w], 0.5)
    # folded form (a norm would have divided x by s) and runtime-smoother form give the same function
    folded = error(scale_weight(s, w), (x.double() / s.double()).float(), smoothed_absmax(act, s))
    runtime = error(scale_weight(s, w), x, smoothed_absmax(act, s), smoother=s)
    assert folded < plain / 2 and runtime < plain / 2, (plain, folded, runtime)
    assert runtime == pytest.approx(folded, rel=0.05)


def test_quantize_linear_tensors_and_static_scale():
    x, w = outlier_layer(3)
    act = x.abs().amax(0)
    s = smoothing_scales(act, [w], 0.5)
    t = quantize_linear(scale_weight(s, w), smoothed_absmax(act, s), per_channel=False, per_token=False)
    assert set(t) == {"weight", "per_channel_scale", "act_scale"}
    assert t["weight"].dtype == torch.int8 and t["per_channel_scale"].shape == (1,)
    want = max(float(act[j]) / float(s[j]) for j in range(64)) / 127
    assert t["act_scale"].item() == pytest.approx(want, rel=1e-6)
    assert static_act_scale(torch.zeros(3)).tolist() == [1.0]
    t = quantize_linear(w, act, per_channel=True, per_token=True, smoother=s)
    assert set(t) == {"weight", "per_channel_scale", "smoother"} and t["per_channel_scale"].shape == (48,)
    # per-channel scale from the definition: each row's max |w| / 127
    torch.testing.assert_close(t["per_channel_scale"].double(), w.double().abs().amax(1) / 127, rtol=1e-6, atol=0)


def test_shape_mismatch_names_shapes():
    with pytest.raises(ValueError, match="one K"):
        smoothing_scales(torch.ones(4), [torch.ones(3, 5)], 0.5)
