"""SmoothQuant W8A8 (Xiao et al., 2023): the offline math, as pure functions on tensors.

Activations of LLMs have a few input channels with outliers far above the rest, which a per-tensor or
per-token INT8 scale cannot represent without crushing the other channels. SmoothQuant moves part of that
range into the weights, an exact rewrite of the float function:

    y = x @ W^T = (x / s) @ (W * s)^T,      s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)

(max|X_j| from calibration, max|W_j| over every output row of every layer that reads the same input,
alpha in [0, 1]: 0 leaves the activations alone, 1 moves all of their range into the weights).

Where the 1/s goes:
* qkv (input: input_layernorm's output) and fc + gate (input: post_layernorm's output, one s shared by
  both) fold 1/s into the norm's weight and bias, as the paper does: zero cost at run time.
* dense and proj have no norm before them (their inputs are the attention output and the activation's
  output), so the choice is per-token quantization without smoothing, or an explicit runtime divisor.
  We take the divisor (`smoother`, TensorRT-LLM's checkpoint name): the INT8 activation-quantization
  kernel reads every input element anyway, so x / smoother costs one division in registers, and the
  post-activation input of proj has outlier channels of its own that smoothing tames.

Scales. Weights: per output channel (`--per_channel`) or one per tensor, max|W| / 127. Activations: per
token, dynamic at run time (`--per_token`), or one static per-tensor scale from calibration; after
smoothing, channel j's range is max|X_j| / s_j, so the static scale needs no second calibration pass.

Tensor parallelism: the quantizer runs on one rank's sharded state dict, so each rank smooths with its own
weight rows (column-parallel qkv/fc/gate) or input slice (row-parallel dense/proj, whose statistics
`CalibStats.for_rank` cuts to the slice) and folds its own s into its own copy of the norm. That is exact
per rank: a rank's norm output feeds only that rank's qkv (or fc/gate) slice, and a row-parallel rank
dequantizes its partial sum (with its own scales) before the all-reduce. Per-tensor scales are per rank
for the same reason.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from trt_gpt.config import ModelConfig, QuantConfig
from trt_gpt.errors import TrtGptError
from trt_gpt.model.linear import Linear, LinearMethod, linears
from trt_gpt.quant.formats import SMOOTHQUANT_ALGOS, check_alpha
from trt_gpt.kernels.int8_gemm_ref import INT8_MAX, quantize_weight, scale_from_absmax

# the paper's (and TensorRT-LLM's) floor on statistics and scales: a channel that never fired (max 0)
# must not give s = 0 or a division by zero
EPS = 1e-5


def smoothing_scales(act_absmax: torch.Tensor, weights: Sequence[torch.Tensor], alpha: float) -> torch.Tensor:
    """s [K] fp32: max|X_j|^alpha / max|W_j|^(1 - alpha), W_j over every row of every weight [N_i, K] that
    reads input channel j (qkv alone; fc and gate together)."""
    alpha = check_alpha(alpha)
    k = act_absmax.shape[-1]
    if act_absmax.shape != (k,) or any(w.dim() != 2 or w.shape[1] != k for w in weights) or not weights:
        raise ValueError(f"smoothing needs act_absmax [K] and weights [N_i, K] with one K, got "
                         f"{tuple(act_absmax.shape)} and {[tuple(w.shape) for w in weights]}")
    w_absmax = torch.stack([w.double().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=EPS)
    a = act_absmax.double().clamp(min=EPS)
    return (a.pow(alpha) / w_absmax.pow(1.0 - alpha)).clamp(min=EPS).float()


def fold_into_norm(s: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, kind: str = "layernorm"
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The norm's (weight, bias) with 1/s folded in, in their own dtype: norm(x) / s. `kind` layernorm1p
    stores gamma - 1, so its stored weight becomes (weight + 1) / s - 1."""
    sd = s.double()
    if kind == "layernorm1p":
        w = (weight.double() + 1.0) / sd - 1.0
    elif kind in ("layernorm", "rmsnorm"):
        w = weight.double() / sd
    else:
        raise ValueError(f"cannot fold smoothing into a norm of kind {kind!r}")
    b = None if bias is None else (bias.double() / sd).to(bias.dtype)
    return w.to(weight.dtype), b


def scale_weight(s: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """W * s (every row scaled by s over the input channels), in float32 for quantization."""
    return (weight.double() * s.double()[None, :]).float()


def smoothed_absmax(act_absmax: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Each input channel's calibrated abs-max after smoothing: max|X_j| / s_j."""
    return (act_absmax.double() / s.double()).float()


def static_act_scale(act_absmax: torch.Tensor) -> torch.Tensor:
    """The per-tensor static activation scale [1] from (smoothed) per-channel abs-max: max_j / 127."""
    return scale_from_absmax(act_absmax.float().amax().reshape(1), INT8_MAX)


def quantize_linear(weight: torch.Tensor, act_absmax: torch.Tensor, per_channel: bool, per_token: bool,
                    smoother: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """One (already smoothed) linear layer's W8A8 tensors under TensorRT-LLM's names: `weight` int8 [N, K],
    `per_channel_scale` fp32 ([N] or [1]), `act_scale` fp32 [1] unless per-token, `smoother` fp32 [K] when
    the input is divided at run time. `act_absmax` is the input's per-channel abs-max after smoothing."""
    w_q, s_w = quantize_weight(weight, per_channel)
    out = {"weight": w_q, "per_channel_scale": s_w}
    if not per_token:
        out["act_scale"] = static_act_scale(act_absmax)
    if smoother is not None:
        out["smoother"] = smoother.float()
    return out


# ------------------------------------------------------------------ the quantizer plugin
QUANTIZED_ROLES = ("qkv", "dense", "fc", "gate", "proj")
SMOOTHER_ROLES = ("dense", "proj")      # no norm before them: the runtime divides their input


class SmoothQuantMethod(LinearMethod):
    """INT8 weights and activations: `weight` int8 [out, in], `per_channel_scale` fp32 [out] (or [1]),
    `act_scale` fp32 [1] for static activation scales, `smoother` fp32 [in] for dense/proj."""
    small_batch_fusions = None   # no small-batch kernel reads this format: a model with it takes the module path

    def __init__(self, per_channel: bool, per_token: bool, smoother: bool):
        self.per_channel, self.per_token, self.smoother = per_channel, per_token, smoother
        self.name = f"w8a8_{'channel' if per_channel else 'tensor'}_{'token' if per_token else 'static'}"
        if not smoother:   # qkv, fc, gate: 1/s lives in the norm's weights
            self.rescaled_input = ("a SmoothQuant base reads this layer's input divided by the smoothing scale "
                                   "folded into the norm before it")

    def create_weights(self, layer: Linear, in_features: int, out_features: int) -> None:
        layer.add_param("weight", (out_features, in_features), torch.int8)
        layer.add_param("per_channel_scale", (out_features if self.per_channel else 1,), torch.float32)
        if not self.per_token:
            layer.add_param("act_scale", (1,), torch.float32)
        if self.smoother:
            layer.add_param("smoother", (in_features,), torch.float32)

    def apply(self, layer: Linear, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if x.is_cuda:
            from trt_gpt.kernels.triton_int8_gemm import w8a8_linear
        else:   # exact integer arithmetic in torch; Triton need not be installed
            from trt_gpt.kernels.int8_gemm_ref import w8a8_linear_ref as w8a8_linear
        return w8a8_linear(x, layer.weight, layer.per_channel_scale, bias, getattr(layer, "act_scale", None),
                           getattr(layer, "smoother", None), out_dtype=x.dtype)


def sq_settings(qcfg: QuantConfig) -> tuple[bool, bool, float]:
    """(per_channel, per_token, alpha) of a SmoothQuant `quantization` block."""
    per_channel, per_token = SMOOTHQUANT_ALGOS[qcfg.quant_algo]
    alpha = qcfg.smoothquant_val
    return per_channel, per_token, check_alpha(0.5 if alpha is None else alpha, "quantization.smoothquant_val")


# the linear layers reading one input, with the norm that produces it (None: the runtime smoother)
def _groups(prefix: str) -> list[tuple[str | None, list[str]]]:
    return [("input_layernorm", [f"{prefix}attention.qkv"]),
            ("post_layernorm", [f"{prefix}mlp.fc", f"{prefix}mlp.gate"]),
            (None, [f"{prefix}attention.dense"]), (None, [f"{prefix}mlp.proj"])]


class SmoothQuantQuantizer:
    """SmoothQuant W8A8 for qkv, dense, fc, gate and proj (lm_head and embeddings stay in float)."""
    name = "smoothquant"
    quant_algos = tuple(SMOOTHQUANT_ALGOS)
    kv_cache_quant_algos = ()

    def linear_method(self, cfg: ModelConfig, role: str, layer_idx: int | None) -> LinearMethod | None:
        if role not in QUANTIZED_ROLES:
            return None
        per_channel, per_token, _ = sq_settings(cfg.quantization)
        return SmoothQuantMethod(per_channel, per_token, role in SMOOTHER_ROLES)

    def quantize(self, tensors: dict[str, torch.Tensor], cfg: ModelConfig,
                 stats: Any | None = None) -> dict[str, torch.Tensor]:
        """Smooth and quantize one rank's state dict. Without calibration statistics (random-weight engines)
        s = 1 (no smoothing), which only per-token activation scales can run with."""
        from trt_gpt.model import GPTForCausalLM

        per_channel, per_token, alpha = sq_settings(cfg.quantization)
        if stats is None and not per_token:
            raise TrtGptError(f"quantization.quant_algo {cfg.quantization.quant_algo}: static per-tensor activation "
                              "scales need calibration statistics (calibrate, or use per-token scales)")
        with torch.device("meta"):
            model = GPTForCausalLM(cfg)
        lins = dict(linears(model))
        out = dict(tensors)
        for i in range(len(model.transformer.layers)):
            for norm, names in _groups(f"transformer.layers.{i}."):
                names = [n for n in names if n in lins]
                quantized = [n for n in names if isinstance(lins[n].method, SmoothQuantMethod)]
                if not quantized:
                    continue
                weights = [out[f"{n}.weight"].float() for n in names]
                if stats is None:
                    act = torch.ones(weights[0].shape[1], device=weights[0].device)
                    s = act
                else:
                    act = torch.stack([stats.for_rank(n, lins[n].parallel, cfg).in_absmax.float() for n in names]
                                      ).amax(0)
                    s = smoothing_scales(act, weights, alpha)
                if norm is not None:
                    nw = f"transformer.layers.{i}.{norm}"
                    w2, b2 = fold_into_norm(s, out[f"{nw}.weight"], out.get(f"{nw}.bias"), cfg.norm_type)
                    out[f"{nw}.weight"] = w2
                    if b2 is not None:
                        out[f"{nw}.bias"] = b2
                for n, w in zip(names, weights):
                    ws = scale_weight(s, w)
                    if n not in quantized:      # a float layer sharing the norm takes the rewrite in float
                        out[f"{n}.weight"] = ws.to(out[f"{n}.weight"].dtype)
                        continue
                    del out[f"{n}.weight"]
                    for k, t in quantize_linear(ws, smoothed_absmax(act, s), per_channel, per_token,
                                                s if norm is None else None).items():
                        out[f"{n}.{k}"] = t
        return out
