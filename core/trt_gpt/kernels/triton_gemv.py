"""Fused small-batch GEMV for decode steps: [norm] -> x @ W^T [+ bias] -> [act] [* gate] -> [+ residual].

At batch 1 a decode step is bound by reading the weights once, and the many tiny kernels between the
GEMVs (norms, bias adds, activations, residual adds) each cost a launch plus a round trip of the
activations through memory. One kernel family covers every linear layer of a decoder layer:

* the grid runs over blocks of N only: each program owns BLOCK_N output columns for all M <= 8 rows
  and walks the whole of K, so its epilogue (bias, activation, gate product, residual) sees complete
  sums. There is deliberately no split-K: it would need a second pass for the epilogue;
* W tiles are [BLOCK_N, BLOCK_K] with K contiguous, so loads coalesce and vectorise; the fp32 partial
  products stay [M, BLOCK_N, BLOCK_K]-shaped across the K loop and are reduced over K once at the end,
  instead of paying a cross-lane reduction every iteration. Each W tile is reused by all M rows;
* the optional norm prologue recomputes the row statistics in every program with a first pass over x.
  x is a few KB and L2-resident, so this is cheaper than a separate norm kernel plus a write and re-read
  of its output. The normalised row is rounded to x's dtype before the dot, exactly as the unfused path
  stores it, so fused and unfused decode agree bit-for-bit up to summation order.

* the qkv projection can also store its K and V columns straight into the paged KV cache (`KVWrite`),
  through the cache's one store helper (`kv_store`), which removes the separate cache-write kernel;
* a layer with LoRA adapters adds each row's delta v B[slot]^T before the bias (`LoraEpilogue`, see
  lora_epilogue), from the fp32 partials of the row shrink run just before (`triton_lora_rows`);
* the lm_head can also leave each row's greedy pick (`ArgmaxOut`, see triton_argmax): its epilogue reduces
  its own tile, and one small kernel reduces the tiles' partials;
* on Hopper the kernel launches with programmatic dependent launch (small weights only, see
  `fused_linear`): its first weight tile (or two, `GemvConfig.prefetch_tiles`) streams in while the
  previous kernels drain, then `gdc_wait()` orders every read of their results. With
  `GemvConfig.early_release` it lets the next kernel launch as it starts, not after its wait.

`gemv_ref.fused_linear_ref` is the same math in torch (the reference of tests and benchmarks).
`gemv_configs.gemv_config` picks the tile sizes (tables tuned on an H100 and an H200, a run-time override,
or a heuristic). Everything is CUDA-graph capturable: host-side checks read shapes only, and the output
(with an argmax, also its partials) is the only allocation.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .gemv_configs import GemvConfig, gemv_config, interpreter_config
from .kv_store import KVWrite, check_kv_write_out, store_kv_columns
from .lora_epilogue import LoraEpilogue, check_lora_epilogue, lora_b_tile, lora_delta, lora_launch_args, lora_v_rows
from .triton_argmax import ArgmaxOut, argmax_partials, check_argmax_out, finish_argmax, store_tile_argmax
from .triton_common import (PDL_AT_START, SUPPORTED_DTYPES, next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait,
                            use_pdl)

MAX_M = 8
PDL_MAX_WEIGHT = 1 << 24   # elements (the largest SantaCoder-1B layer); see `fused_linear`
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "relu", "squared_relu", "silu")
NORMS = ("layernorm", "rmsnorm")


@dataclass(frozen=True)
class NormArgs:
    """A layernorm/rmsnorm prologue over K. `weight` is the effective gamma (layernorm1p passes w + 1)."""
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    eps: float


def _check_vec(t: torch.Tensor | None, length: int, name: str, device: torch.device) -> None:
    if t is None:
        return
    if t.dim() != 1 or t.shape[0] != length:
        raise ValueError(f"fused_linear: {name} must have shape [{length}], got {tuple(t.shape)}")
    if t.device != device or t.stride(0) != 1:
        raise ValueError(f"fused_linear: {name} must be a contiguous tensor on {device}")


def _check_args(x, weight, bias, norm, activation, gate_weight, gate_bias, residual,
                max_m: int | None = MAX_M) -> tuple[int, int, int]:
    """Shared validation of the kernels and the reference (`max_m=None`: any M); returns (M, N, K)."""
    if x.dim() != 2:
        raise ValueError(f"fused_linear: x must be [M, K], got shape {tuple(x.shape)}")
    m, k = x.shape
    if m < 1 or (max_m is not None and m > max_m):
        raise ValueError(f"fused_linear: M={m} rows is outside 1..{max_m} (use a GEMM for larger batches)")
    if x.dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"fused_linear: x dtype {x.dtype} is not one of {SUPPORTED_DTYPES}")
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"fused_linear: weight must be [N, {k}] to match x [M, K], got {tuple(weight.shape)}")
    n = weight.shape[0]
    for name, w in (("weight", weight), ("gate_weight", gate_weight)):
        if w is None:
            continue
        if w.shape != weight.shape or w.dtype != x.dtype or w.device != x.device:
            raise ValueError(f"fused_linear: {name} must be [{n}, {k}] {x.dtype} on {x.device}, got "
                             f"{tuple(w.shape)} {w.dtype} on {w.device}")
        if w.stride(1) != 1:
            raise ValueError(f"fused_linear: {name} must be contiguous along K")
    if x.stride(1) != 1:
        raise ValueError("fused_linear: x must have unit stride along K")
    if gate_bias is not None and gate_weight is None:
        raise ValueError("fused_linear: gate_bias given without gate_weight")
    _check_vec(bias, n, "bias", x.device)
    _check_vec(gate_bias, n, "gate_bias", x.device)
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"fused_linear: activation {activation!r} is not one of {ACTIVATIONS}")
    if norm is not None:
        if norm.kind not in NORMS:
            raise ValueError(f"fused_linear: norm kind {norm.kind!r} is not one of {NORMS}")
        if norm.kind == "rmsnorm" and norm.bias is not None:
            raise ValueError("fused_linear: rmsnorm takes no bias")
        _check_vec(norm.weight, k, "norm.weight", x.device)
        _check_vec(norm.bias, k, "norm.bias", x.device)
    if residual is not None:
        if residual.shape != (m, n) or residual.device != x.device or residual.stride(1) != 1:
            raise ValueError(f"fused_linear: residual must be [{m}, {n}] on {x.device} with unit stride along N, "
                             f"got {tuple(residual.shape)}")
    return m, n, k


@triton.jit
def _activation(y, ACT: tl.constexpr):
    if ACT == "gelu":
        y = 0.5 * y * (1.0 + tl.math.erf(y * 0.7071067811865476))
    elif ACT == "gelu_tanh":
        z = 0.7978845608028654 * (y + 0.044715 * y * y * y)
        # tanh from exp alone (tl.math.tanh is not in every Triton): exp(-2|z|) lies in (0, 1], so nothing
        # overflows and small |z| keeps its relative precision.
        e = tl.exp(-2.0 * tl.abs(z))
        t = (1.0 - e) / (1.0 + e)
        y = 0.5 * y * (1.0 + tl.where(z < 0.0, -t, t))
    elif ACT == "relu":
        y = tl.maximum(y, 0.0)
    elif ACT == "squared_relu":
        r = tl.maximum(y, 0.0)
        y = r * r
    elif ACT == "silu":
        e = tl.exp(-tl.abs(y))  # sigmoid without overflow for large |y|
        y = y * tl.where(y < 0.0, e, 1.0) / (1.0 + e)
    return y


@triton.jit
def _epilogue_inputs(B, GB, SLOTS, offs_n, rows, M, N, HAS_BIAS: tl.constexpr, HAS_GATE_BIAS: tl.constexpr,
                     KV_WRITE: tl.constexpr):
    """(bias, gate bias, cache slot per row), each 0 where the kernel has none. The biases are weights and
    the slots a host upload (no kernel of the PDL chain writes them, see triton_common.use_pdl): the fused
    kernels load them before `gdc_wait`, which takes their latency off the epilogue."""
    nmask = offs_n < N
    bias = 0.0
    gate_bias = 0.0
    slot = 0
    if HAS_BIAS:
        bias = tl.load(B + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if HAS_GATE_BIAS:
        gate_bias = tl.load(GB + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    if KV_WRITE:
        slot = tl.load(SLOTS + rows, mask=rows < M, other=-1).to(tl.int64)
    return bias, gate_bias, slot


@triton.jit
def _epilogue(y, yg, bias, gate_bias, res, residual_scale, ACT: tl.constexpr, HAS_BIAS: tl.constexpr,
              GATED: tl.constexpr, HAS_GATE_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The fused kernels' epilogue on complete fp32 sums [rows, BLOCK_N] (yg: the gate's), all in fp32:
    [+ bias] -> [act] -> [* (yg [+ gate bias])] -> [residual + residual_scale * y]. The caller casts once."""
    if HAS_BIAS:
        y += bias
    y = _activation(y, ACT)
    if GATED:
        if HAS_GATE_BIAS:
            yg += gate_bias
        y = y * yg
    if HAS_RESIDUAL:
        y = res.to(tl.float32) + residual_scale * y
    return y


@triton.jit
def _load_k(ptrs, kk, K, EVEN_K: tl.constexpr, POLICY: tl.constexpr):
    """Load along K, masking the tail only when K is not a multiple of BLOCK_K (masks cost vectorisation).

    Weights are streamed once ("evict_first"); x and the norm parameters are re-read by every program and
    should stay in L2 ("evict_last").
    """
    if EVEN_K:
        v = tl.load(ptrs, eviction_policy=POLICY)
    else:
        v = tl.load(ptrs, mask=kk < K, other=0.0, eviction_policy=POLICY)
    return v


@triton.jit
def _input_tile(xb_ptrs, nw_ptrs, nb_ptrs, kk, K, mean, rstd, X_TY: tl.constexpr, NORM: tl.constexpr,
                HAS_NORM_BIAS: tl.constexpr, EVEN_K: tl.constexpr):
    """One K tile of the (normalised) input in fp32, broadcast to the W tile's shape."""
    h = _load_k(xb_ptrs, kk, K, EVEN_K, "evict_last")
    if NORM != "none":
        # Masked tail lanes get gamma = beta = 0, so h is 0 there (W is 0 there too).
        hf = h.to(tl.float32)
        if NORM == "layernorm":
            hf = hf - mean
        hf = hf * rstd * _load_k(nw_ptrs, kk, K, EVEN_K, "evict_last").to(tl.float32)
        if HAS_NORM_BIAS:
            hf += _load_k(nb_ptrs, kk, K, EVEN_K, "evict_last").to(tl.float32)
        # Round like the unfused path, which stores the norm output in x's dtype.
        h = hf.to(X_TY)
    return h.to(tl.float32)


@triton.jit
def _row_stats(x_rows, K, eps, M_PAD: tl.constexpr, NORM: tl.constexpr, STATS_K: tl.constexpr):
    """(mean, rstd) of each x row for the norm prologue, [M_PAD, 1, 1] each (0 and 1 without a norm).

    The statistics sit between `gdc_wait` and the first multiply, with the weight stream mostly idle, so
    x is read in as few loads as possible: STATS_K is the whole row when it fits in registers (one L2
    round trip instead of one per K tile).
    """
    mean = 0.0
    rstd = 1.0
    ks = tl.arange(0, STATS_K)[None, None, :]
    xs = x_rows[:, None, None] + ks
    if NORM == "layernorm":
        # One pass of sum / sum of squares, shifted by each row's first element: that removes the
        # cancellation of E[x^2] - E[x]^2 when |mean| >> std, without a second pass over x.
        shift = tl.load(x_rows).to(tl.float32)[:, None, None]
        s1 = tl.zeros([M_PAD, 1, STATS_K], tl.float32)
        s2 = tl.zeros([M_PAD, 1, STATS_K], tl.float32)
        for k0 in range(0, K, STATS_K):
            xv = tl.load(xs + k0, mask=ks + k0 < K, other=0.0, eviction_policy="evict_last").to(tl.float32)
            d = tl.where(ks + k0 < K, xv - shift, 0.0)
            s1 += d
            s2 += d * d
        mean_d = tl.sum(s1, 2)[:, :, None] / K
        var = tl.maximum(tl.sum(s2, 2)[:, :, None] / K - mean_d * mean_d, 0.0)
        mean = shift + mean_d
        rstd = 1.0 / tl.sqrt(var + eps)
    elif NORM == "rmsnorm":
        s2 = tl.zeros([M_PAD, 1, STATS_K], tl.float32)
        for k0 in range(0, K, STATS_K):
            xv = tl.load(xs + k0, mask=ks + k0 < K, other=0.0, eviction_policy="evict_last").to(tl.float32)
            s2 += xv * xv
        rstd = 1.0 / tl.sqrt(tl.sum(s2, 2)[:, :, None] / K + eps)
    return mean, rstd


@triton.jit
def _fused_gemv_kernel(X, W, B, G, GB, R, OUT, NW, NB, KC, VC, SLOTS, PV, PI, LV, LB, LS,
                       stride_lvs, stride_lvm, stride_lbs, stride_lbn, lora_splits,
                       M, N, K, stride_xm, stride_wn, stride_gn, stride_rm, stride_om,
                       eps, residual_scale, q_cols, kv_cols, stride_cb, stride_ch, stride_ct, vocab, stride_p,
                       M_PAD: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       NORM: tl.constexpr, HAS_NORM_BIAS: tl.constexpr, HAS_BIAS: tl.constexpr,
                       GATED: tl.constexpr, HAS_GATE_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                       ACT: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr,
                       KV_WRITE: tl.constexpr, HEAD_DIM: tl.constexpr, CACHE_BLOCK: tl.constexpr,
                       PIPELINE: tl.constexpr, STATS_K: tl.constexpr, ARGMAX: tl.constexpr,
                       PREFETCH2: tl.constexpr, LORA: tl.constexpr, LORA_R: tl.constexpr,
                       LORA_SPLITS: tl.constexpr, LORA_ROUND: tl.constexpr):
    pdl_start(PDL)
    pid = tl.program_id(0)
    # Everything in the K loop is 3-D [M_PAD, BLOCK_N, BLOCK_K] or [1, BLOCK_N, BLOCK_K]. The x, gamma and
    # beta loads use pointers *broadcast* to the W tile's shape: Triton then gives them the same register
    # layout as W (same shape, same contiguity), and the product needs no per-iteration layout conversion
    # through shared memory. Loaded as [M_PAD, 1, BLOCK_K], the sm_90 TTGIR converted the whole W tile
    # every iteration instead. The redundant x reads are L1 hits; W is still read once.
    rows = tl.arange(0, M_PAD)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    # Padding rows / columns re-read the last real one (always in bounds), so only the K tail needs a load
    # mask; their results are never stored. int64: row * stride overflows int32 on big weights.
    x_rows = X + tl.minimum(rows, M - 1).to(tl.int64) * stride_xm
    x_ptrs = x_rows[:, None, None] + offs_k[None, None, :]
    n_ld = tl.minimum(offs_n, N - 1).to(tl.int64)[None, :, None]
    w_ptrs = W + n_ld * stride_wn + offs_k[None, None, :]
    g_ptrs = G + n_ld * stride_gn + offs_k[None, None, :]
    k3 = offs_k[None, None, :]

    # The first weight tile does not depend on earlier kernels: under programmatic dependent launch it
    # streams in while they drain; everything after pdl_wait may read their results.
    # Kept in the storage dtype until used: half the registers while the program waits.
    w_first = _load_k(w_ptrs, k3, K, EVEN_K, "evict_first")
    if GATED:
        g_first = _load_k(g_ptrs, k3, K, EVEN_K, "evict_first")
    if PREFETCH2:
        # The second K tile before the wait too: the whole [BLOCK_N, 2 * BLOCK_K] slice streams in under
        # the previous kernels, while the x tiles and the fp32 products after the wait stay one tile wide
        # (a [BLOCK_N, 2 * BLOCK_K] tile would double those registers too). H200, GPT-2 medium's fc
        # (K = 2 x 512): part of the GPT-2 medium re-tune on the H200 (step 0.4216 -> 0.3898 ms;
        # benchmarks/results/h200/2026-12-02-staged-inputs).
        w_second = _load_k(w_ptrs + BLOCK_K, k3 + BLOCK_K, K, EVEN_K, "evict_first")
        if GATED:
            g_second = _load_k(g_ptrs + BLOCK_K, k3 + BLOCK_K, K, EVEN_K, "evict_first")
    bias, gate_bias, slot = _epilogue_inputs(B, GB, SLOTS, offs_n, rows, M, N, HAS_BIAS, HAS_GATE_BIAS, KV_WRITE)
    if LORA:   # each row's adapter B tile: pool weights gathered by the uploaded slots (lora_epilogue)
        lora_b = lora_b_tile(LB, LS, rows, offs_n, M, N, stride_lbs, stride_lbn, LORA_R)
    pdl_wait(PDL)
    # Every program of this kernel has started once all have passed here: the next kernel may launch and
    # prefetch its own weights into the slots this kernel's tail leaves idle.
    pdl_release(PDL)
    omask = (rows < M)[:, None] & (offs_n < N)[None, :]
    rows64 = rows.to(tl.int64)[:, None]
    res = 0.0
    if HAS_RESIDUAL:
        # Issued first so that its latency overlaps the x reads. Read before this program stores the same
        # elements, so out may alias residual.
        res = tl.load(R + rows64 * stride_rm + offs_n[None, :], mask=omask, other=0.0)
    if LORA:   # the shrink's partials (the previous kernel's output), issued beside the x reads
        lora_v = lora_v_rows(LV, rows, M, stride_lvs, stride_lvm, lora_splits, LORA_SPLITS, LORA_R)
    mean, rstd = _row_stats(x_rows, K, eps, M_PAD, NORM, STATS_K)

    xb_ptrs = tl.broadcast_to(x_ptrs, [M_PAD, BLOCK_N, BLOCK_K])
    nw_ptrs = tl.broadcast_to(NW + k3, [1, BLOCK_N, BLOCK_K])
    nb_ptrs = tl.broadcast_to(NB + k3, [1, BLOCK_N, BLOCK_K])
    x_ty = X.dtype.element_ty
    if PIPELINE:
        # Software double-buffering: the next W tile's load is issued before this tile's math, so every
        # program keeps two tiles in flight (Triton's pipeliner only stages loads that feed a tl.dot).
        w_cur = w_first
        acc = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
        if GATED:
            g_cur = g_first
            acc_g = tl.zeros([M_PAD, BLOCK_N, BLOCK_K], tl.float32)
        for k0 in range(0, K - BLOCK_K, BLOCK_K):
            kn = k3 + k0 + BLOCK_K
            w_nxt = _load_k(w_ptrs + k0 + BLOCK_K, kn, K, EVEN_K, "evict_first")
            h = _input_tile(xb_ptrs + k0, nw_ptrs + k0, nb_ptrs + k0, k3 + k0, K, mean, rstd, x_ty, NORM,
                            HAS_NORM_BIAS, EVEN_K)
            acc += h * w_cur.to(tl.float32)
            w_cur = w_nxt
            if GATED:
                g_nxt = _load_k(g_ptrs + k0 + BLOCK_K, kn, K, EVEN_K, "evict_first")
                acc_g += h * g_cur.to(tl.float32)
                g_cur = g_nxt
        k_last = (tl.cdiv(K, BLOCK_K) - 1) * BLOCK_K
        h = _input_tile(xb_ptrs + k_last, nw_ptrs + k_last, nb_ptrs + k_last, k3 + k_last, K, mean, rstd, x_ty,
                        NORM, HAS_NORM_BIAS, EVEN_K)
        acc += h * w_cur.to(tl.float32)
        if GATED:
            acc_g += h * g_cur.to(tl.float32)
    else:
        h = _input_tile(xb_ptrs, nw_ptrs, nb_ptrs, k3, K, mean, rstd, x_ty, NORM, HAS_NORM_BIAS, EVEN_K)
        acc = h * w_first.to(tl.float32)
        if GATED:
            acc_g = h * g_first.to(tl.float32)
        k_rest = BLOCK_K
        if PREFETCH2:
            h = _input_tile(xb_ptrs + BLOCK_K, nw_ptrs + BLOCK_K, nb_ptrs + BLOCK_K, k3 + BLOCK_K, K, mean, rstd,
                            x_ty, NORM, HAS_NORM_BIAS, EVEN_K)
            acc += h * w_second.to(tl.float32)
            if GATED:
                acc_g += h * g_second.to(tl.float32)
            k_rest = 2 * BLOCK_K
        for k0 in range(k_rest, K, BLOCK_K):
            kk = k3 + k0
            w = _load_k(w_ptrs + k0, kk, K, EVEN_K, "evict_first").to(tl.float32)
            h = _input_tile(xb_ptrs + k0, nw_ptrs + k0, nb_ptrs + k0, kk, K, mean, rstd, x_ty, NORM,
                            HAS_NORM_BIAS, EVEN_K)
            acc += h * w
            if GATED:
                acc_g += h * _load_k(g_ptrs + k0, kk, K, EVEN_K, "evict_first").to(tl.float32)

    # Epilogue on complete sums, 2-D [M_PAD, BLOCK_N], all in fp32; one cast at the store.
    y = tl.sum(acc, 2)
    if LORA:   # before the bias and the activation, as the adapter adds to the layer's output
        y += lora_delta(lora_v, lora_b, LORA_ROUND)
    yg = y
    if GATED:
        yg = tl.sum(acc_g, 2)
    y = _epilogue(y, yg, bias, gate_bias, res, residual_scale, ACT, HAS_BIAS, GATED, HAS_GATE_BIAS,
                  HAS_RESIDUAL).to(OUT.dtype.element_ty)
    tl.store(OUT + rows64 * stride_om + offs_n[None, :], y, mask=omask)
    if ARGMAX:   # on the stored (rounded) values: the pick is the argmax of the logits the caller sees
        store_tile_argmax(y.to(tl.float32), rows, offs_n, M, vocab, PV, PI, pid, stride_p)
    if KV_WRITE:
        store_kv_columns(y, KC, VC, slot, rows, offs_n, M, N, q_cols, kv_cols, stride_cb, stride_ch, stride_ct,
                         HEAD_DIM, CACHE_BLOCK)


def fused_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *,
                 norm: NormArgs | None = None, activation: str | None = None,
                 gate_weight: torch.Tensor | None = None, gate_bias: torch.Tensor | None = None,
                 residual: torch.Tensor | None = None, residual_scale: float = 1.0,
                 out_dtype: torch.dtype | None = None, out: torch.Tensor | None = None,
                 config: GemvConfig | None = None, kv_write: KVWrite | None = None,
                 argmax: ArgmaxOut | None = None, lora: LoraEpilogue | None = None) -> torch.Tensor:
    """The fused decode GEMV (Triton) for x [M <= 8, K] and weight [N, K]; returns out [M, N].

    `out` may be the residual tensor (in-place residual add) but must not overlap x: every program
    reads all of x. `kv_write` also stores the K/V columns into the paged cache; `argmax` also writes
    each row's greedy pick over its first `argmax.vocab` columns; `lora` adds each row's adapter delta
    before the bias (`lora_epilogue`; to x W^T only: the gate's product gets none).
    """
    m, n, k = _check_args(x, weight, bias, norm, activation, gate_weight, gate_bias, residual)
    check_kv_write_out(kv_write, m, n, x.device)
    check_argmax_out(argmax, m, n, x.device)
    check_lora_epilogue(lora, m, n, x.device)
    out_dtype = out_dtype or x.dtype
    if out is None:
        out = torch.empty(m, n, device=x.device, dtype=out_dtype)
    elif out.shape != (m, n) or out.dtype != out_dtype or out.device != x.device or out.stride(1) != 1:
        raise ValueError(f"fused_linear: out must be [{m}, {n}] {out_dtype} on {x.device} with unit stride "
                         f"along N, got {tuple(out.shape)} {out.dtype}")
    elif out.data_ptr() == x.data_ptr():
        raise ValueError("fused_linear: out must not alias x (every program reads all of x)")
    cfg = config or (gemv_config(m, n, k, x.dtype, _device_name(x.device)) if x.device.type == "cuda"
                     else interpreter_config(n, k))
    if cfg.block_n < 1 or cfg.block_k < 1 or cfg.block_n & (cfg.block_n - 1) or cfg.block_k & (cfg.block_k - 1):
        raise ValueError(f"fused_linear: block_n/block_k must be powers of two, got {cfg}")
    # Overlapping a GEMV's start with its predecessor's tail pays for small weights, where the tail is a
    # large part of the kernel (H100, batch 1: SantaCoder-1B decode 1.25 -> 1.12 ms a token, GPT-2 medium
    # 0.70 -> 0.59), but not for StarCoder2-7B's (5.49 -> 5.57 ms): only weights up to PDL_MAX_WEIGHT.
    pdl = use_pdl(x.device) if n * k <= PDL_MAX_WEIGHT else 0
    if pdl and cfg.early_release:
        pdl = PDL_AT_START
    dummy = x  # never dereferenced: the matching HAS_* constexpr is False
    residual_t = residual if residual is not None else out
    kvw = kv_write
    kc = kvw.k_cache if kvw is not None else dummy
    programs = triton.cdiv(n, cfg.block_n)
    prefetch2 = cfg.prefetch_tiles >= 2 and k > cfg.block_k   # one K tile holds the whole row otherwise
    pv, pi = argmax_partials(m, programs, x.device) if argmax is not None else (out, out)
    lora_args, lora_consts = lora_launch_args(lora, dummy)
    _fused_gemv_kernel[(programs,)](
        x, weight, bias if bias is not None else dummy,
        gate_weight if gate_weight is not None else weight, gate_bias if gate_bias is not None else dummy,
        residual_t, out,
        norm.weight if norm is not None else dummy,
        norm.bias if norm is not None and norm.bias is not None else dummy,
        kc, kvw.v_cache if kvw is not None else dummy, kvw.slots if kvw is not None else dummy, pv, pi, *lora_args,
        m, n, k, x.stride(0), weight.stride(0),
        gate_weight.stride(0) if gate_weight is not None else 0, residual_t.stride(0), out.stride(0),
        float(norm.eps) if norm is not None else 0.0, float(residual_scale),
        kvw.q_cols if kvw is not None else 0, kvw.kv_heads * kvw.head_dim if kvw is not None else 0,
        *((kc.stride(0), kc.stride(1), kc.stride(2)) if kvw is not None else (0, 0, 0)),
        argmax.vocab if argmax is not None else 0, programs,
        M_PAD=next_pow2(m), BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
        NORM=norm.kind if norm is not None else "none",
        HAS_NORM_BIAS=norm is not None and norm.bias is not None, HAS_BIAS=bias is not None,
        GATED=gate_weight is not None, HAS_GATE_BIAS=gate_bias is not None,
        HAS_RESIDUAL=residual is not None, ACT=activation or "none", EVEN_K=k % cfg.block_k == 0,
        PDL=pdl, KV_WRITE=kvw is not None, HEAD_DIM=kvw.head_dim if kvw is not None else 1,
        CACHE_BLOCK=kc.shape[2] if kvw is not None else 1,
        PIPELINE=cfg.num_stages >= 2 and k > cfg.block_k and not prefetch2, PREFETCH2=prefetch2,
        STATS_K=_stats_tile(m, k, cfg), ARGMAX=argmax is not None, **lora_consts,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **(pdl_launch(x.device) if pdl else {}),
    )
    if argmax is not None:
        finish_argmax(pv, pi, argmax.picks, argmax.host)
    return out


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else ""


def _stats_tile(m: int, k: int, cfg: GemvConfig) -> int:
    """The norm statistics' tile: the whole row in one load where K is a power of two whose row fits in
    32 fp32 registers a thread, else the K tile. Measured on an H100 (tune_decode.py): one load is ~1%
    faster for the 1024- and 2048-wide rows of GPT-2 medium and SantaCoder-1B, while StarCoder2-7B's
    4608-wide row (a padded 8192 tile) fell from 182 to 170 tokens/s at batch 1."""
    whole = next_pow2(k)
    if whole == k and whole * next_pow2(m) <= 1024 * cfg.num_warps:
        return max(whole, cfg.block_k)
    return cfg.block_k
