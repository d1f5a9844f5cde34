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

All statistics here are of whole (unsharded) layers: s and the per-tensor scales couple every output row
(column-parallel qkv/fc) or every input channel (row-parallel dense/proj), so they are computed before a
state dict is cut for tensor-parallel ranks, and the results are sharded like the weights they belong to.
"""
from __future__ import annotations

from typing import Sequence

import torch

from trt_gpt.errors import TrtGptError
from trt_gpt.kernels.int8_gemm_ref import INT8_MAX, quantize_weight, scale_from_absmax

# the paper's (and TensorRT-LLM's) floor on statistics and scales: a channel that never fired (max 0)
# must not give s = 0 or a division by zero
EPS = 1e-5


def check_alpha(alpha: float, where: str = "--smoothquant") -> float:
    """alpha as a float in [0, 1], else a one-line TrtGptError naming `where`."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise TrtGptError(f"{where}: the migration strength alpha must be a number in [0, 1], got {alpha!r}") \
            from None
    if not 0.0 <= a <= 1.0:   # NaN fails too
        raise TrtGptError(f"{where}: the migration strength alpha must be in [0, 1], got {alpha}")
    return a


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
