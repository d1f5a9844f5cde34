"""Probe (GPU): is a persistent kernel with grid-wide barriers cheaper than a chain of PDL kernels?

Three measurements on one GPU, printed as a table and written as JSON:

* the cost of one grid barrier (all programs resident, atomic arrive + acquire poll) against the cost of
  one kernel boundary in a CUDA graph of trivial PDL-launched kernels;
* a decoder layer's four GEMVs (qkv, dense, fc, proj; no norms) for several layers with distinct weights,
  once as a persistent kernel (one launch, a barrier between GEMVs, every program owning a contiguous
  range of output rows and prefetching its next weight tile before each barrier), once as the chain of
  `fused_linear` kernels the engine uses today (PDL, the tuned tile table).

    python3 benchmarks/persistent_probe.py --out probe.json
    TRITON_INTERPRET=1 python3 benchmarks/persistent_probe.py --dry-run   # CPU: the math, phase by phase
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

if "--dry-run" in sys.argv:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core"))
from trt_gpt.kernels.triton_common import next_pow2, pdl_launch, pdl_release, pdl_wait, use_pdl  # noqa: E402


@triton.jit
def grid_sync(bar):
    """All programs of the grid meet here; stores before it are visible to loads after it (gpu scope)."""
    tl.debug_barrier()
    old = tl.atomic_add(bar, 1, sem="acq_rel", scope="gpu")
    G = tl.num_programs(0)
    target = (old // G + 1) * G
    cur = old + 1
    while cur < target:
        cur = tl.atomic_add(bar, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _barrier_loop(bar, iters):
    for _ in range(iters):
        grid_sync(bar)


@triton.jit
def _noop(x, PDL: tl.constexpr):
    pdl_wait(PDL)
    pdl_release(PDL)
    p = x + tl.program_id(0)
    tl.store(p, tl.load(p) + 1)


@triton.jit
def _w_tile(W, n_ld, k0, offs_k, K):
    return tl.load(W + n_ld[:, None] * K + (k0 + offs_k)[None, :], mask=(k0 + offs_k)[None, :] < K, other=0.0,
                   eviction_policy="evict_first")


@triton.jit
def _gemv_phase(X, W, OUT, N, K, w_first, pid, BN: tl.constexpr, BK: tl.constexpr):
    """OUT[r] = X . W[r] for this program's contiguous row range; w_first is its prefetched first tile."""
    G = tl.num_programs(0)
    per = tl.cdiv(N, G)
    offs_n = pid * per + tl.arange(0, BN)
    nmask = (tl.arange(0, BN) < per) & (offs_n < N)
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)
    offs_k = tl.arange(0, BK)
    w_cur = w_first
    acc = tl.zeros([BN, BK], tl.float32)
    for k0 in range(0, K, BK):
        w_nxt = _w_tile(W, n_ld, k0 + BK, offs_k, K)   # past the end: fully masked, no traffic
        xk = tl.load(X + k0 + offs_k, mask=k0 + offs_k < K, other=0.0, cache_modifier=".cg")
        acc += w_cur.to(tl.float32) * xk.to(tl.float32)[None, :]
        w_cur = w_nxt
    y = tl.sum(acc, 1)
    tl.store(OUT + offs_n, y.to(OUT.dtype.element_ty), mask=nmask)


@triton.jit
def _first_tile(W, N, K, pid, BN: tl.constexpr, BK: tl.constexpr):
    G = tl.num_programs(0)
    per = tl.cdiv(N, G)
    offs_n = pid * per + tl.arange(0, BN)
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)
    return _w_tile(W, n_ld, 0, tl.arange(0, BK), K)


@triton.jit
def _layers_kernel(x, attn, qkv, h1, f, Wqkv, Wd, Wfc, Wp, bar, layers, H, NQKV, F,
                   phase_lo, phase_hi, SYNC: tl.constexpr,
                   BN0: tl.constexpr, BK0: tl.constexpr, BN1: tl.constexpr, BK1: tl.constexpr,
                   BN2: tl.constexpr, BK2: tl.constexpr, BN3: tl.constexpr, BK3: tl.constexpr):
    """Phases 4*l + (0 qkv: x->qkv, 1 dense: attn->h1, 2 fc: h1->f, 3 proj: f->x) for l < layers.

    SYNC: one launch runs every phase with a grid barrier between; without it (the interpreter runs
    programs one after another, so a barrier would never open) each launch runs one phase.
    """
    pid = tl.program_id(0)
    for p in range(phase_lo, phase_hi):
        layer = p // 4
        kind = p % 4
        if kind == 0:
            W0 = Wqkv + layer * NQKV * H
            wf0 = _first_tile(W0, NQKV, H, pid, BN0, BK0)
            if SYNC:
                if p > phase_lo:
                    grid_sync(bar)
            _gemv_phase(x, W0, qkv, NQKV, H, wf0, pid, BN0, BK0)
        elif kind == 1:
            W1 = Wd + layer * H * H
            wf1 = _first_tile(W1, H, H, pid, BN1, BK1)
            if SYNC:
                if p > phase_lo:
                    grid_sync(bar)
            _gemv_phase(attn, W1, h1, H, H, wf1, pid, BN1, BK1)
        elif kind == 2:
            W2 = Wfc + layer * F * H
            wf2 = _first_tile(W2, F, H, pid, BN2, BK2)
            if SYNC:
                if p > phase_lo:
                    grid_sync(bar)
            _gemv_phase(h1, W2, f, F, H, wf2, pid, BN2, BK2)
        else:
            W3 = Wp + layer * H * F
            wf3 = _first_tile(W3, H, F, pid, BN3, BK3)
            if SYNC:
                if p > phase_lo:
                    grid_sync(bar)
            _gemv_phase(f, W3, x, H, F, wf3, pid, BN3, BK3)


def check_resident(kernel, grid: int, warps: int) -> None:
    """A grid barrier deadlocks unless every program is resident at once: refuse grids that cannot be."""
    kernel._init_handles()   # loads the module: n_regs is known from then on
    props = torch.cuda.get_device_properties(0)
    regs = max(kernel.n_regs, 1) * 32 * warps
    per_sm = min(65536 // regs, 64 // warps,
                 (props.shared_memory_per_multiprocessor // kernel.metadata.shared) if kernel.metadata.shared else 64)
    if per_sm * props.multi_processor_count < grid:
        raise RuntimeError(f"{grid} programs cannot all be resident ({per_sm} per SM, {kernel.n_regs} regs, "
                           f"{kernel.metadata.shared} B shared)")


def tiles(n: int, k: int, grid: int, tile: int) -> tuple[int, int]:
    bn = next_pow2(triton.cdiv(n, grid))
    return bn, min(next_pow2(k), max(16, tile // bn))


class Model:
    def __init__(self, hidden: int, nqkv: int, ffn: int, layers: int, device, dtype=torch.float16):
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *s: (torch.randn(*s, device=device, generator=g) * s[-1] ** -0.5).to(dtype)  # noqa: E731
        self.H, self.NQKV, self.F, self.L = hidden, nqkv, ffn, layers
        self.wqkv, self.wd = r(layers, nqkv, hidden), r(layers, hidden, hidden)
        self.wfc, self.wp = r(layers, ffn, hidden), r(layers, hidden, ffn)
        self.x0 = r(hidden).float().mul(hidden ** 0.5).to(dtype)
        self.attn = r(hidden).float().mul(hidden ** 0.5).to(dtype)
        self.bytes = (self.wqkv.numel() + self.wd.numel() + self.wfc.numel() + self.wp.numel()) * 2

    def reference(self) -> torch.Tensor:
        x = self.x0.clone()
        for layer in range(self.L):
            _ = (self.wqkv[layer].float() @ x.float()).to(x.dtype)
            h1 = (self.wd[layer].float() @ self.attn.float()).to(x.dtype)
            f = (self.wfc[layer].float() @ h1.float()).to(x.dtype)
            x = (self.wp[layer].float() @ f.float()).to(x.dtype)
        return x


def persistent_runner(m: Model, grid: int, tile: int, warps: int, sync: bool):
    dev = m.x0.device
    x, qkv = m.x0.clone(), torch.empty(m.NQKV, device=dev, dtype=m.x0.dtype)
    h1, f = torch.empty(m.H, device=dev, dtype=m.x0.dtype), torch.empty(m.F, device=dev, dtype=m.x0.dtype)
    bar = torch.zeros(1, device=dev, dtype=torch.int32)
    t = [tiles(m.NQKV, m.H, grid, tile), tiles(m.H, m.H, grid, tile), tiles(m.F, m.H, grid, tile),
         tiles(m.H, m.F, grid, tile)]
    kw = dict(BN0=t[0][0], BK0=t[0][1], BN1=t[1][0], BK1=t[1][1], BN2=t[2][0], BK2=t[2][1], BN3=t[3][0],
              BK3=t[3][1], num_warps=warps)

    if sync:
        k = _layers_kernel.warmup(x, m.attn, qkv, h1, f, m.wqkv, m.wd, m.wfc, m.wp, bar, m.L, m.H, m.NQKV, m.F,
                                  0, 4 * m.L, SYNC=sync, grid=(grid,), **kw)
        check_resident(k, grid, warps)

    def run():
        x.copy_(m.x0)
        phases = 4 * m.L
        spans = [(0, phases)] if sync else [(p, p + 1) for p in range(phases)]
        for lo, hi in spans:
            _layers_kernel[(grid,)](x, m.attn, qkv, h1, f, m.wqkv, m.wd, m.wfc, m.wp, bar, m.L, m.H, m.NQKV, m.F,
                                    lo, hi, SYNC=sync, **kw)
        return x
    return run, t


def chain_runner(m: Model, hot: bool = False):
    """The engine's kernels; `hot` reuses layer 0's weights everywhere (they stay in L2: an upper bound
    on what prefetching weights into L2 during the step's latency bubbles could give)."""
    from trt_gpt.kernels.triton_gemv import fused_linear
    dev = m.x0.device
    x = m.x0.clone().view(1, -1)
    attn = m.attn.view(1, -1)
    qkv = torch.empty(1, m.NQKV, device=dev, dtype=x.dtype)
    h1, f = torch.empty(1, m.H, device=dev, dtype=x.dtype), torch.empty(1, m.F, device=dev, dtype=x.dtype)

    def run():
        x.copy_(m.x0.view(1, -1))
        for i in range(m.L):
            layer = 0 if hot else i
            fused_linear(x, m.wqkv[layer], out=qkv)
            fused_linear(attn, m.wd[layer], out=h1)
            fused_linear(h1, m.wfc[layer], out=f)
            fused_linear(f, m.wp[layer], out=x)
        return x.view(-1)
    return run


def graph_time_us(run, replays: int = 50, repeats: int = 5) -> float:
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            run()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        run()
    for _ in range(5):
        g.replay()
    best = []
    for _ in range(repeats):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(replays):
            g.replay()
        b.record()
        b.synchronize()
        best.append(a.elapsed_time(b) * 1000 / replays)
    return sorted(best)[len(best) // 2]


def barrier_costs(grid: int) -> dict:
    dev = torch.device("cuda")
    bar = torch.zeros(1, device=dev, dtype=torch.int32)
    check_resident(_barrier_loop.warmup(bar, 1, grid=(grid,)), grid, 4)
    out = {}
    for iters in (1, 1001):
        _barrier_loop[(grid,)](bar, iters)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(5):
            _barrier_loop[(grid,)](bar, iters)
        b.record()
        b.synchronize()
        out[iters] = a.elapsed_time(b) * 1000 / 5
    per_barrier = (out[1001] - out[1]) / 1000
    x = torch.zeros(grid, device=dev, dtype=torch.int32)
    pdl = use_pdl(dev)

    def chain(n):
        def run():
            for _ in range(n):
                _noop[(grid,)](x, PDL=pdl, **pdl_launch(dev))
        return run
    per_kernel = (graph_time_us(chain(201)) - graph_time_us(chain(1))) / 200
    return {"grid": grid, "barrier_us": per_barrier, "pdl_kernel_boundary_us": per_kernel, "pdl": pdl}


SHAPES = {  # hidden, qkv columns, ffn
    "santacoder-1b": (2048, 2048 + 2 * 128, 8192),
    "gpt2-medium": (1024, 3 * 1024, 4096),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dry-run", action="store_true", help="CPU interpreter: tiny shapes, math only")
    args = ap.parse_args(argv)
    if args.dry_run:
        m = Model(64, 96, 256, 2, torch.device("cpu"), torch.float32)
        run, t = persistent_runner(m, grid=5, tile=256, warps=4, sync=False)
        err = (run() - m.reference()).abs().max().item()
        print(f"dry run: tiles {t} max abs err {err:.2e}")
        return 0 if err < 1e-3 else 1
    props = torch.cuda.get_device_properties(0)
    sms = props.multi_processor_count
    rows = {"device": props.name, "sms": sms, "barrier": [barrier_costs(sms), barrier_costs(2 * sms)], "gemv": []}
    for b in rows["barrier"]:
        print(f"grid {b['grid']}: barrier {b['barrier_us']:.2f} us   PDL kernel boundary {b['pdl_kernel_boundary_us']:.2f} us")
    for name, (h, nqkv, ffn) in SHAPES.items():
        m = Model(h, nqkv, ffn, args.layers, torch.device("cuda"))
        ref = m.reference()
        chain = graph_time_us(chain_runner(m))
        err = (chain_runner(m)() - ref).abs().max().item()
        gbs = m.bytes / chain / 1e3
        print(f"{name}: fused_linear chain {chain / m.L:.2f} us/layer ({gbs:.0f} GB/s) err {err:.1e}")
        rows["gemv"].append({"model": name, "kind": "chain", "us_per_layer": chain / m.L, "gbps": gbs})
        hot = graph_time_us(chain_runner(m, hot=True))
        print(f"{name}: same chain, weights L2-resident {hot / m.L:.2f} us/layer")
        rows["gemv"].append({"model": name, "kind": "chain_l2_hot", "us_per_layer": hot / m.L})
        for grid_mult in (1, 2):
            for tile in (4096, 8192, 16384):
                for warps in (4, 8, 16):
                    if tile // (32 * warps) < 8 or tile // (32 * warps) > 128 or (grid_mult == 2 and warps == 16):
                        continue
                    try:
                        run, t = persistent_runner(m, sms * grid_mult, tile, warps, sync=True)
                        us = graph_time_us(run)
                        err = (run() - ref).abs().max().item()
                    except Exception as e:  # noqa: BLE001 - a config that does not compile or fit
                        print(f"  grid {sms * grid_mult} tile {tile} warps {warps}: {type(e).__name__}: {e}"[:200])
                        continue
                    gbs = m.bytes / us / 1e3
                    print(f"  persistent grid {sms * grid_mult} tile {tile} warps {warps} {t}: {us / m.L:.2f} us/layer "
                          f"({gbs:.0f} GB/s) err {err:.1e}")
                    rows["gemv"].append({"model": name, "kind": "persistent", "grid": sms * grid_mult, "tile": tile,
                                         "warps": warps, "us_per_layer": us / m.L, "gbps": gbs, "err": err})
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
