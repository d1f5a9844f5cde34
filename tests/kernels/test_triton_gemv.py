"""The fused decode GEMV (Triton) and its torch reference against an independent float64 composition.

Shapes are tiny because the CPU interpreter runs every program in numpy. Outputs are NaN-filled before
each kernel call, so a column or row the kernel forgets to write fails loudly. N=37, K=100 are not
multiples of any block, so both the N and the K tails are exercised.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from gemv_cases import DEVICE, HALF, check, make, oracle  # noqa: E402

from trt_gpt.kernels.gemv_ref import fused_linear_ref  # noqa: E402
from trt_gpt.kernels.triton_gemv import ACTIVATIONS, MAX_M, GemvConfig, NormArgs, fused_linear  # noqa: E402


def run_both(x, w, b, kw, dtype, out_dtype=None, config=None) -> None:
    """fused_linear (into a NaN-poisoned buffer) and fused_linear_ref against the float64 oracle."""
    ref = oracle(x, w, b, **kw)
    od = out_dtype or x.dtype
    out = torch.full((x.shape[0], w.shape[0]), float("nan"), device=DEVICE, dtype=od)
    got = fused_linear(x, w, b, out_dtype=out_dtype, out=out, config=config, **kw)
    assert got is out and got.dtype == od
    check(got, ref, dtype)
    ref_out = fused_linear_ref(x, w, b, out_dtype=out_dtype, **kw)
    assert ref_out.dtype == od
    check(ref_out, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("m", [1, 3, 8])
def test_plain_linear(m, dtype):
    x, w, b, kw = make(m, 37, 100, dtype)
    run_both(x, w, b, kw, dtype)


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_activations_with_layernorm_and_residual(activation):
    x, w, b, kw = make(3, 37, 100, torch.float32, norm="layernorm", residual=True, seed=1)
    run_both(x, w, b, dict(kw, activation=activation), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("norm,norm_bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", False)])
def test_norm_prologue(norm, norm_bias, dtype):
    x, w, b, kw = make(2, 37, 100, dtype, norm=norm, norm_bias=norm_bias, seed=2)
    run_both(x, w, b, kw, dtype)


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_norm_statistics_over_several_row_tiles(norm):
    # At M=8 the statistics tile is capped at 512 values: K=700 takes two tiles, the second ragged.
    x, w, b, kw = make(8, 24, 700, torch.float32, norm=norm, seed=4, x_offset=3.0)
    run_both(x, w, b, kw, torch.float32, config=GemvConfig(block_n=8, block_k=64, num_warps=4, num_stages=1))


def test_layernorm_large_mean_rows():
    # |mean| >> std: a naive E[x^2] - E[x]^2 in fp32 loses the variance entirely here.
    x, w, b, kw = make(2, 37, 100, torch.float32, norm="layernorm", seed=3, x_offset=1000.0)
    run_both(x, w, b, kw, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_gated_mlp(activation, dtype):
    x, w, b, kw = make(3, 37, 100, dtype, norm="rmsnorm", gated=True, bias=False, seed=4)
    run_both(x, w, b, dict(kw, activation=activation), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_residual_scale_and_fp32_logits(dtype):
    x, w, b, kw = make(8, 37, 100, dtype, norm="layernorm", residual=True, seed=5)
    run_both(x, w, b, dict(kw, activation="gelu"), dtype, out_dtype=torch.float32)
    x, w, _, kw = make(1, 37, 100, dtype, norm="layernorm", bias=False, seed=6)
    run_both(x, w, None, kw, dtype, out_dtype=torch.float32)  # the lm_head: ln_f + logits in fp32


@pytest.mark.parametrize("m,n,k,cfg", [
    (3, 37, 100, GemvConfig(block_n=1, block_k=16, num_warps=1, num_stages=1)),   # 7 K steps, ragged tail
    (1, 37, 100, GemvConfig(block_n=8, block_k=32, num_warps=4, num_stages=2)),
    (2, 64, 128, GemvConfig(block_n=4, block_k=32, num_warps=4, num_stages=2)),   # aligned: no masks
    # two K tiles loaded before the wait: exactly two, two plus a loop with a ragged tail, a ragged second
    (1, 40, 128, GemvConfig(block_n=8, block_k=64, num_warps=4, num_stages=1, prefetch_tiles=2)),
    (3, 37, 100, GemvConfig(block_n=4, block_k=16, num_warps=2, num_stages=2, prefetch_tiles=2)),
    (2, 37, 100, GemvConfig(block_n=8, block_k=64, num_warps=4, num_stages=1, prefetch_tiles=2)),
    (1, 37, 100, GemvConfig(block_n=8, block_k=128, num_warps=4, num_stages=1, prefetch_tiles=2)),  # one tile
])
def test_explicit_configs(m, n, k, cfg):
    x, w, b, kw = make(m, n, k, torch.float32, norm="layernorm", gated=True, residual=True, seed=7)
    run_both(x, w, b, dict(kw, activation="gelu"), torch.float32, config=cfg)


def test_aligned_shape_default_config():
    x, w, b, kw = make(4, 64, 256, torch.float16, norm="rmsnorm", residual=True, seed=8)
    run_both(x, w, b, kw, torch.float16)


def test_strided_x_and_in_place_residual():
    m, n, k = 3, 37, 100
    x_big, w, b, kw = make(m, n, k + 28, torch.float32, seed=9)
    x = x_big[:, :k]                      # row stride 128, unit stride along K
    w = w[:, :k].contiguous()
    res = torch.randn(m, n, device=DEVICE)
    ref = oracle(x, w, b, activation="relu", residual=res, residual_scale=0.5)
    out = fused_linear(x, w, b, activation="relu", residual=res, residual_scale=0.5, out=res)
    assert out is res
    check(out, ref, torch.float32)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", ["kernel", "ref"])
def test_kv_write_epilogue_stores_k_and_v_into_their_slots(impl, cache_dtype):
    # 3 q heads and 2 kv heads of 10: N = 30 + 20 + 20 = 70, so 8-wide column blocks straddle the q|k and
    # k|v boundaries. Row 1 is padding (slot -1); unowned cache entries are NaN and must stay so.
    from trt_gpt.kernels.kv_store import KVWrite
    heads, kv_heads, d, bs = 3, 2, 10, 4
    x, w, b, kw = make(3, heads * d + 2 * kv_heads * d, 24, torch.float32, norm="layernorm", seed=12)
    kc = torch.full((5, kv_heads, bs, d), float("nan"), dtype=cache_dtype, device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    slots = torch.tensor([9, -1, 2], device=DEVICE)
    kvw = KVWrite(kc, vc, slots, q_cols=heads * d, kv_heads=kv_heads, head_dim=d)
    if impl == "kernel":
        out = fused_linear(x, w, b, kv_write=kvw, config=GemvConfig(8, 8, 1, 1), **kw)
    else:
        out = fused_linear_ref(x, w, b, kv_write=kvw, **kw)
    check(out, oracle(x, w, b, **kw), torch.float32)
    expect_k = torch.full_like(kc, float("nan"))
    expect_v = torch.full_like(vc, float("nan"))
    for row, slot in ((0, 9), (2, 2)):
        k_row, v_row = out[row, heads * d:].view(2, kv_heads, d)
        expect_k[slot // bs, :, slot % bs] = k_row.to(cache_dtype)
        expect_v[slot // bs, :, slot % bs] = v_row.to(cache_dtype)
    torch.testing.assert_close(kc, expect_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, expect_v, rtol=0, atol=0, equal_nan=True)


def test_kv_write_shape_errors():
    from trt_gpt.kernels.kv_store import KVWrite
    x, w, b, _ = make(1, 70, 24, torch.float32, seed=13)
    kc = torch.zeros(5, 2, 4, 10, device=DEVICE)
    with pytest.raises(ValueError, match="N = q_cols"):
        fused_linear(x, w, b, kv_write=KVWrite(kc, kc.clone(), torch.zeros(1, dtype=torch.long, device=DEVICE),
                                               q_cols=20, kv_heads=2, head_dim=10))
    with pytest.raises(ValueError, match="slots"):
        fused_linear(x, w, b, kv_write=KVWrite(kc, kc.clone(), torch.zeros(2, dtype=torch.long, device=DEVICE),
                                               q_cols=30, kv_heads=2, head_dim=10))


@pytest.mark.parametrize("case", ["m_too_big", "m_zero", "wrong_k", "dtype", "activation", "gate_bias",
                                  "norm_weight", "residual", "out"])
def test_bad_arguments_raise(case):
    x, w, b, _ = make(2, 37, 100, torch.float32)
    kwargs = {}
    if case == "m_too_big":
        x = torch.randn(MAX_M + 1, 100, device=DEVICE)
    elif case == "m_zero":
        x = x[:0]
    elif case == "wrong_k":
        w = torch.randn(37, 99, device=DEVICE)
    elif case == "dtype":
        w = w.half()
    elif case == "activation":
        kwargs["activation"] = "tanh"
    elif case == "gate_bias":
        kwargs["gate_bias"] = b
    elif case == "norm_weight":
        kwargs["norm"] = NormArgs("layernorm", torch.ones(99, device=DEVICE), None, 1e-5)
    elif case == "residual":
        kwargs["residual"] = torch.zeros(2, 36, device=DEVICE)
    elif case == "out":
        kwargs["out"] = torch.empty(2, 37, device=DEVICE, dtype=torch.float16)
    with pytest.raises(ValueError, match="fused_linear"):
        fused_linear(x, w, b, **kwargs)
    if case not in ("out", "m_too_big"):   # the reference takes any M (it is fused_gemm's too)
        with pytest.raises(ValueError, match="fused_linear"):
            fused_linear_ref(x, w, b, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_capture():
    x, w, b, kw = make(1, 300, 256, torch.float16, norm="layernorm", residual=True, seed=10)
    out = torch.empty(1, 300, device=DEVICE, dtype=torch.float16)
    fused_linear(x, w, b, out=out, activation="gelu", **kw)  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fused_linear(x, w, b, out=out, activation="gelu", **kw)
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    check(out, oracle(x, w, b, activation="gelu", **kw), torch.float16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="programmatic dependent launch needs a GPU")
@pytest.mark.parametrize("early_tile", [False, True])
def test_pdl_is_used_on_hopper_and_matches_serial(monkeypatch, early_tile):
    """On sm_90+ the kernels launch with PDL (so every GPU test here exercises it), with dependents released
    after each kernel's wait or, with a tile's early_release, as it starts; results equal a serial launch."""
    from trt_gpt.kernels.triton_common import PDL_AFTER_WAIT, use_pdl

    dev = torch.device("cuda")
    monkeypatch.setenv("TRT_GPT_PDL", "1")
    if torch.cuda.get_device_capability()[0] >= 9:
        assert use_pdl(dev) == PDL_AFTER_WAIT
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(1, 512, device=dev, generator=g).half()
    w = torch.randn(777, 512, device=dev, generator=g).half() * 0.05
    norm = NormArgs("layernorm", torch.ones(512, device=dev, dtype=torch.half), None, 1e-5)
    cfg = GemvConfig(8, 512, 4, 1, early_release=early_tile)

    def chain():
        return fused_linear(fused_linear(x, w[:512], norm=norm, activation="gelu", config=cfg), w, None, config=cfg)

    chained = chain()
    monkeypatch.setenv("TRT_GPT_PDL", "0")
    assert not use_pdl(dev)
    torch.testing.assert_close(chained, chain(), rtol=0, atol=0)
