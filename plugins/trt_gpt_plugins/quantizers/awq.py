"""AWQ (activation-aware weight quantization): per input channel a scale s = mean|x|^alpha, with alpha
chosen on a grid in [0, 1] to minimise || x W^T - (x / s) Q(W diag(s))^T ||^2 over calibration rows, where
Q is group-wise round-to-nearest INT4. alpha = 0 (s = 1) is plain group-wise quantization, so the chosen
scale never does worse than it on the calibration rows.

The layer stores p = 1 / s (`prequant_scaling_factor`, model dtype) and the integers of W / p; the search
evaluates exactly that stored form (p rounded to the model dtype first).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from trt_gpt.errors import TrtGptError

from .weight_only_format import expand_scale, quantize_rtn

GRID = 20           # alpha in {0, 1/20, ..., 1}
S_RANGE = (1e-4, 1e4)


@dataclass
class AwqResult:
    prequant: torch.Tensor      # p = 1 / s, [in], model dtype
    alpha: float
    errors: list[float]         # mean squared output error for each alpha of the grid


def prequant_for(x_absmean: torch.Tensor, alpha: float, dtype: torch.dtype) -> torch.Tensor:
    """p = 1 / s with s = mean|x|^alpha normalised by sqrt(max(s) min(s)) (so the scales centre on 1, as
    AutoAWQ does), clamped to a range every float dtype holds; rounded to `dtype`."""
    s = x_absmean.float().clamp(min=S_RANGE[0]).pow(alpha)
    s = (s / (s.max() * s.min()).sqrt()).clamp(*S_RANGE)
    return (1.0 / s).to(dtype)


def search(w: torch.Tensor, x: torch.Tensor, x_absmean: torch.Tensor, group_size: int, dtype: torch.dtype,
           grid: int = GRID) -> AwqResult:
    """The best pre-quant scale for weight `w [out, in]` given input rows `x [n, in]` (float32 arithmetic)."""
    wf, xf = w.float(), x.float()
    y = xf @ wf.T
    errors: list[float] = []
    best: tuple[float, float, torch.Tensor] | None = None
    for i in range(grid + 1):
        alpha = i / grid
        p = prequant_for(x_absmean, alpha, dtype)
        q, scale = quantize_rtn(wf / p.float()[None, :], 4, group_size, dtype)
        w_hat = q.float() * expand_scale(scale.float(), q.shape[1])
        err = float(((xf * p.float()) @ w_hat.T - y).pow(2).mean())
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, alpha, p)
    assert best is not None
    return AwqResult(best[2], best[1], errors)


def awq_prequant(w: torch.Tensor, stats, group_size: int | None, dtype: torch.dtype) -> torch.Tensor:
    """AWQ's `prequant_scaling_factor` for one layer from its (rank-local) calibration statistics."""
    if group_size is None:
        raise TrtGptError("W4A16_AWQ needs quantization.group_size")
    if stats.samples is None or stats.samples.shape[0] == 0:
        raise TrtGptError("W4A16_AWQ: the calibration statistics hold no input samples (calibrate with max_samples > 0)")
    if stats.samples.shape[1] != w.shape[1]:
        raise TrtGptError(f"W4A16_AWQ: calibration samples have {stats.samples.shape[1]} input channels, the "
                          f"weight {w.shape[1]} (statistics of another model?)")
    return search(w, stats.samples, stats.in_absmean, group_size, dtype).prequant
