"""AWQ (activation-aware weight quantization), in two searches on calibration input rows x of a layer:

1. scale: per input channel s = mean|x|^alpha, alpha on a grid in [0, 1], minimising
   || x W^T - (x / s) Q(W diag(s))^T ||^2 with Q group-wise round-to-nearest INT4. alpha = 0 (s = 1) is
   plain group-wise quantization, so the chosen scale never does worse than it on the calibration rows.
2. clipping: per output row and group, the range max|w| shrunk by a ratio in {1, 0.95, ..., 0.55} that
   minimises that group's squared contribution error || x_g (w_g - Q(w_g))^T ||^2 (ratio 1 is plain
   round-to-nearest). As AutoAWQ does, the fused qkv layer is not clipped (query/key errors are amplified
   by the softmax).

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
CLIP_RATIOS = tuple(1 - i / 20 for i in range(10))   # 1.0 .. 0.55, AutoAWQ's max_shrink 0.5 on a 20-step grid
ROW_CHUNK = 1024    # output rows per step of the clipping search (bounds its temporaries)


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
    """The best pre-quant scale for weight `w [out, in]` given input rows `x [n, in]` (float32 arithmetic).

    The objective mean_n,o (x_n . d_o)^2 with d = W - diag-scaled dequantized W is evaluated as
    sum(d (x^T x) * d) / (n out): one [in, in] Gram matrix instead of an [n, out] product per alpha."""
    wf, xf = w.float(), x.float()
    gram = xf.T @ xf
    denom = xf.shape[0] * wf.shape[0]
    errors: list[float] = []
    best: tuple[float, float, torch.Tensor] | None = None
    for i in range(grid + 1):
        alpha = i / grid
        p = prequant_for(x_absmean, alpha, dtype)
        q, scale = quantize_rtn(wf / p.float()[None, :], 4, group_size, dtype)
        d = wf - q.float() * expand_scale(scale.float(), q.shape[1]) * p.float()[None, :]
        err = float(((d @ gram) * d).sum()) / denom
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, alpha, p)
    assert best is not None
    return AwqResult(best[2], best[1], errors)


def clip_search(w: torch.Tensor, x: torch.Tensor, group_size: int, dtype: torch.dtype,
                ratios: tuple[float, ...] = CLIP_RATIOS) -> torch.Tensor:
    """Per output row and group the ratio of `ratios` minimising mean_n (x_g . (w_g - Q(w_g)))^2 -> `[out, in // g]`
    (evaluated through each group's [g, g] Gram matrix of the inputs)."""
    out_f, in_f = w.shape
    ng = in_f // group_size
    xg = x.float().reshape(x.shape[0], ng, group_size)
    gram = torch.einsum("nkg,nkh->kgh", xg, xg) / x.shape[0]
    best = torch.ones(out_f, ng)
    for r0 in range(0, out_f, ROW_CHUNK):
        wc = w[r0:r0 + ROW_CHUNK].float()
        best_err = torch.full((wc.shape[0], ng), float("inf"))
        for ratio in ratios:
            clip = torch.full((wc.shape[0], ng), ratio)
            q, scale = quantize_rtn(wc, 4, group_size, dtype, clip)
            d = (wc - q.float() * expand_scale(scale.float(), in_f)).reshape(-1, ng, group_size)
            err = torch.einsum("okg,kgh,okh->ok", d, gram, d)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best[r0:r0 + ROW_CHUNK] = torch.where(better, clip, best[r0:r0 + ROW_CHUNK])
    return best


def awq_params(w: torch.Tensor, stats, group_size: int | None, dtype: torch.dtype, clip: bool
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """AWQ's `prequant_scaling_factor` `[in]` and clipping ratios (`[out, in // g]`, or None when `clip` is
    False) for one layer from its (rank-local) calibration statistics."""
    if group_size is None:
        raise TrtGptError("W4A16_AWQ needs quantization.group_size")
    if stats.samples is None or stats.samples.shape[0] == 0:
        raise TrtGptError("W4A16_AWQ: the calibration statistics hold no input samples "
                          "(calibrate with max_samples > 0)")
    if stats.samples.shape[1] != w.shape[1]:
        raise TrtGptError(f"W4A16_AWQ: calibration samples have {stats.samples.shape[1]} input channels, the "
                          f"weight {w.shape[1]} (statistics of another model?)")
    p = search(w, stats.samples, stats.in_absmean, group_size, dtype).prequant
    if not clip:
        return p, None
    # the stored layer multiplies W / p by x * p: clip in that form
    return p, clip_search(w.float() / p.float()[None, :], stats.samples * p.float(), group_size, dtype)
