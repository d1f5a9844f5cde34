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

`HostPicks` also stores the picks straight into pinned host memory, in the buffer that a device-side index
names (the decode graphs alternate two, runtime/cuda_graphs.py): the host reads its tokens without a
device-to-host copy on the stream between two graph replays. Where the lm_head does not pick (a logits
scaling, or `torch.argmax` asked for), `store_host_picks` does that store alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_common import next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl

INT32_MAX = tl.constexpr(2 ** 31 - 1)   # a jit global must be a constexpr


@dataclass(frozen=True)
class ArgmaxOut:
    """Where a GEMV's greedy picks go: `picks` int32 [M] gets the argmax of each output row's first `vocab`
    columns (and `host`, where given, a copy in host memory)."""
    picks: torch.Tensor
    vocab: int
    host: "HostPicks | None" = None


@dataclass(frozen=True)
class HostPicks:
    """Also store the picks in `buffers[index[0]]`: buffers int32 [2, >= M] in pinned (device-mapped) host
    memory, or any CPU tensor under the interpreter; index int32 [1] on the picks' device."""
    buffers: torch.Tensor
    index: torch.Tensor


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
def _finish_argmax_kernel(PV, PI, PICKS, HOST, HOST_INDEX, P, stride_p, stride_host, BLOCK_P: tl.constexpr,
                          TO_HOST: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
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
    if TO_HOST:
        tl.store(HOST + tl.load(HOST_INDEX) * stride_host + row, pick)


@triton.jit
def _store_host_picks_kernel(PICKS, HOST, HOST_INDEX, M, stride_host, BLOCK_M: tl.constexpr):
    offs = tl.arange(0, BLOCK_M)
    m = offs < M
    tl.store(HOST + tl.load(HOST_INDEX) * stride_host + offs, tl.load(PICKS + offs, mask=m), mask=m)


def check_host_picks(hp: HostPicks | None, m: int, device: torch.device) -> None:
    if hp is None:
        return
    b, i = hp.buffers, hp.index
    if b.dim() != 2 or b.shape[0] != 2 or b.shape[1] < m or b.dtype != torch.int32 or b.stride(1) != 1:
        raise ValueError(f"host picks: buffers must be int32 [2, >= {m}] with unit stride, got "
                         f"{tuple(b.shape)} {b.dtype}")
    if b.device.type != "cpu" or (device.type == "cuda" and not b.is_pinned()):
        raise ValueError("host picks: buffers must be host memory, pinned when the picks are on a GPU")
    if i.shape != (1,) or i.dtype != torch.int32 or i.device != device:
        raise ValueError(f"host picks: index must be int32 [1] on {device}, got {tuple(i.shape)} {i.dtype} "
                         f"on {i.device}")


def store_host_picks(picks: torch.Tensor, host: HostPicks) -> None:
    """host.buffers[host.index[0], :M] = picks (int32 [M]), one small kernel."""
    m = picks.shape[0]
    check_host_picks(host, m, picks.device)
    _store_host_picks_kernel[(1,)](picks, host.buffers, host.index, m, host.buffers.stride(0),
                                   BLOCK_M=next_pow2(m), num_warps=1)


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


def finish_argmax(pv: torch.Tensor, pi: torch.Tensor, picks: torch.Tensor,
                  host: HostPicks | None = None) -> torch.Tensor:
    """picks[r] = the index of row r's maximum over all partials (lowest index on ties); with `host`, also
    host.buffers[host.index[0], r]."""
    m, programs = pv.shape
    check_host_picks(host, m, pv.device)
    pdl = use_pdl(pv.device)
    _finish_argmax_kernel[(m,)](pv, pi, picks, host.buffers if host is not None else picks,
                                host.index if host is not None else picks, programs, pv.stride(0),
                                host.buffers.stride(0) if host is not None else 0,
                                BLOCK_P=min(1024, next_pow2(programs)), TO_HOST=host is not None,
                                PDL=pdl, num_warps=4, **pdl_launch(pv.device))
    return picks
