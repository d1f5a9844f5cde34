"""AWQ's two searches against float64 computations of their objectives written here from the definitions,
on a tiny layer whose inputs have outlier channels (where activation-aware scaling matters)."""
from __future__ import annotations

import torch

from trt_gpt_plugins.quantizers.awq import CLIP_RATIOS, GRID, clip_search, search

G = 16


def case(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(8, 64, generator=g)
    x = torch.randn(128, 64, generator=g)
    x[:, [3, 17, 40]] *= 20          # salient input channels
    return w, x, x.abs().mean(0)


def rtn_groups64(w: torch.Tensor, ratio: torch.Tensor | float = 1.0) -> torch.Tensor:
    """Group-wise INT4 round-to-nearest in float64 with the scale stored in fp32: scale = ratio max|w| / 7,
    q = clamp(round(w / scale), -8, 7); returns the dequantized matrix."""
    b = w.double().reshape(w.shape[0], -1, G)
    scale = (b.abs().amax(-1) * (ratio if isinstance(ratio, float) else ratio.double()) / 7).float().double()
    return (torch.round(b / scale[..., None]).clamp(-8, 7) * scale[..., None]).reshape(w.shape)


def objective64(w, x, xmean, alpha):
    s = xmean.double().clamp(min=1e-4) ** alpha
    s = (s / (s.max() * s.min()).sqrt()).clamp(1e-4, 1e4)
    p = (1 / s).float().double()                      # the stored pre-quant scale (fp32 here)
    w_hat = rtn_groups64(w.double() / p[None, :])
    return ((x.double() * p) @ w_hat.T - x.double() @ w.double().T).pow(2).mean().item(), p


def test_scale_search_minimises_the_objective():
    w, x, xmean = case()
    res = search(w, x, xmean, G, torch.float32)
    want = [objective64(w, x, xmean, i / GRID)[0] for i in range(GRID + 1)]
    torch.testing.assert_close(torch.tensor(res.errors, dtype=torch.float64), torch.tensor(want, dtype=torch.float64),
                               rtol=1e-3, atol=0)
    best = min(range(GRID + 1), key=lambda i: want[i])
    assert res.alpha == best / GRID
    torch.testing.assert_close(res.prequant.double(), objective64(w, x, xmean, res.alpha)[1])
    # on inputs with outlier channels, activation-aware scaling beats plain group-wise (alpha = 0) clearly
    assert res.alpha > 0 and want[best] < 0.8 * want[0]


def test_clip_search_minimises_each_groups_error():
    w, x, _ = case(1)
    clip = clip_search(w, x, G, torch.float32)
    assert clip.shape == (8, 4)
    xg = x.double().reshape(x.shape[0], 4, G)
    errs = []
    for r in CLIP_RATIOS:
        delta = (w.double() - rtn_groups64(w, r)).reshape(8, 4, G)
        errs.append(torch.einsum("nkg,okg->okn", xg, delta).pow(2).mean(-1))
    errs = torch.stack(errs)                          # [ratios, out, groups]
    want = torch.tensor(CLIP_RATIOS, dtype=torch.float64)[errs.argmin(0)]
    assert torch.equal(clip.double(), want.float().double())
    assert (clip < 1).any()                           # clipping chosen somewhere, so the search is exercised
