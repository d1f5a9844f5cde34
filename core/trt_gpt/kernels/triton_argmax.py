"""Greedy picks of a small decode step without a separate reduction over the vocabulary.

`torch.argmax` over one row of ~50k fp32 logits is a multi-block reduction that took ~13 µs of a batch-1
decode step on an H100 (profile_decode.py: SantaCoder-1B's 49,280 logits), plus a cast kernel to the
int32 picks that overlapped decoding feeds to the next step. The lm_head GEMV already holds every logit
in registers once, so each of its programs reduces its own [rows, BLOCK_N] tile to a (max, first index)
pair per row (`store_tile_argmax`, called from the GEMV's epilogue) and one small kernel, one program a
row, reduces those partials to the int32 pick (`finish_argmax`).

Ties resolve to the lowest index, as `torch.argmax` documents: each tile keeps its first maximum, and the
final reduction takes the lowest index among the tiles that hold the maximum. Columns at or beyond
`vocab` (the lm_head's padding rows) never win. NaN logits are not given torch's NaN-wins rule: greedy
decoding on NaN logits has no meaningful pick either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_common import next_pow2, pdl_launch, pdl_release, pdl_wait, use_pdl

INT32_MAX = tl.constexpr(2 ** 31 - 1)   # a jit global must be a constexpr


@dataclass(frozen=True)
class ArgmaxOut:
    """Where a GEMV's greedy picks go: `picks` int32 [M] gets the argmax of each output row's first `vocab`
    columns."""
    picks: torch.Tensor
    vocab: int


@triton.jit
def store_tile_argmax(y, rows, offs_n, M, vocab, PV, PI, pid, stride_p):
    """Each row's (max, first index of the max) over this program's output tile y [M_PAD, BLOCK_N] (fp32),
    as partial `pid` of the row: PV/PI [M, programs]."""
    valid = (offs_n < vocab)[None, :]
    ym = tl.where(valid, y, float("-inf"))
    vmax = tl.max(ym, 1)
    # first column holding the row's maximum (a tile of no valid column reports its own first column)
    cand = tl.where(ym == vmax[:, None], offs_n[None, :], INT32_MAX)
    idx = tl.min(cand, 1)
    idx = tl.where(idx == INT32_MAX, tl.min(offs_n, 0), idx)
    rmask = rows < M
    tl.store(PV + rows * stride_p + pid, vmax, mask=rmask)
    tl.store(PI + rows * stride_p + pid, idx, mask=rmask)


@triton.jit
def _finish_argmax_kernel(PV, PI, PICKS, P, stride_p, BLOCK_P: tl.constexpr, PDL: tl.constexpr):
    row = tl.program_id(0)
    pdl_wait(PDL)     # PDL: the partials are the previous kernel's output
    pdl_release(PDL)
    offs = tl.arange(0, BLOCK_P)
    best = tl.full([BLOCK_P], float("-inf"), tl.float32)
    best_idx = tl.full([BLOCK_P], INT32_MAX, tl.int32)
    # lane-wise running (max, lowest index) over chunks of the partials, then one cross-lane reduction
    for p0 in range(0, P, BLOCK_P):
        m = p0 + offs < P
        v = tl.load(PV + row * stride_p + p0 + offs, mask=m, other=float("-inf"))
        i = tl.load(PI + row * stride_p + p0 + offs, mask=m, other=INT32_MAX)
        better = (v > best) | ((v == best) & (i < best_idx))
        best = tl.where(better, v, best)
        best_idx = tl.where(better, i, best_idx)
    vmax = tl.max(best, 0)
    pick = tl.min(tl.where(best == vmax, best_idx, INT32_MAX), 0)
    # every lane -inf (all logits -inf): torch.argmax answers 0
    pick = tl.where(pick == INT32_MAX, 0, pick)
    tl.store(PICKS + row, pick)


def check_argmax_out(am: ArgmaxOut | None, m: int, n: int, device: torch.device) -> None:
    if am is None:
        return
    p = am.picks
    if p.shape != (m,) or p.dtype != torch.int32 or p.device != device or p.stride(0) != 1:
        raise ValueError(f"fused_linear: argmax.picks must be a contiguous int32 [{m}] tensor on {device}, got "
                         f"{tuple(p.shape)} {p.dtype} on {p.device}")
    if not 1 <= am.vocab <= n:
        raise ValueError(f"fused_linear: argmax.vocab must be in 1..{n} (the output columns), got {am.vocab}")


def argmax_partials(m: int, programs: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-program (max, index) buffers a GEMV with an argmax epilogue writes: [m, programs] each."""
    return (torch.empty(m, programs, device=device, dtype=torch.float32),
            torch.empty(m, programs, device=device, dtype=torch.int32))


def finish_argmax(pv: torch.Tensor, pi: torch.Tensor, picks: torch.Tensor) -> torch.Tensor:
    """picks[r] = the index of row r's maximum over all partials (lowest index on ties)."""
    m, programs = pv.shape
    pdl = use_pdl(pv.device)
    _finish_argmax_kernel[(m,)](pv, pi, picks, programs, pv.stride(0), BLOCK_P=min(1024, next_pow2(programs)),
                                PDL=pdl, num_warps=4, **pdl_launch(pv.device))
    return picks
