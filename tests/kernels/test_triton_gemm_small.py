"""The fused prompt-chunk GEMM (Triton, tensor-core tiles) against the float64 oracle of the decode GEMV's
tests: the same function for any number of rows. M, N, K are not multiples of the 16-wide interpreter
tiles, so every tail is exercised; outputs and caches are NaN-poisoned where nothing may be written."""
from __future__ import annotations

import json
import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from gemv_cases import DEVICE, HALF, check, make, oracle  # noqa: E402

from trt_gpt.kernels.gemv_ref import fused_linear_ref  # noqa: E402
from trt_gpt.kernels.triton_gemm_small import CONFIG_ENV, GemmConfig, fused_gemm, gemm_config  # noqa: E402
from trt_gpt.kernels.triton_gemv import ACTIVATIONS, KVWrite  # noqa: E402


def run_both(x, w, b, kw, dtype, out_dtype=None, config=None) -> None:
    ref = oracle(x, w, b, **kw)
    got = fused_gemm(x, w, b, out_dtype=out_dtype, config=config, **kw)
    assert got.shape == (x.shape[0], w.shape[0]) and got.dtype == (out_dtype or x.dtype)
    check(got, ref, dtype)
    check(fused_linear_ref(x, w, b, out_dtype=out_dtype, **kw), ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, *HALF])
@pytest.mark.parametrize("m", [9, 37])
def test_plain_linear(m, dtype):
    x, w, b, kw = make(m, 37, 100, dtype)
    run_both(x, w, b, kw, dtype)


@pytest.mark.parametrize("activation", [None, *ACTIVATIONS])
def test_activations_with_layernorm_and_residual(activation):
    x, w, b, kw = make(20, 37, 100, torch.float32, norm="layernorm", residual=True, seed=1)
    run_both(x, w, b, dict(kw, activation=activation), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("norm,norm_bias", [("layernorm", True), ("layernorm", False), ("rmsnorm", False)])
def test_norm_prologue(norm, norm_bias, dtype):
    x, w, b, kw = make(33, 37, 100, dtype, norm=norm, norm_bias=norm_bias, seed=2)
    run_both(x, w, b, kw, dtype)


def test_layernorm_large_mean_rows():
    # |mean| >> std: a naive E[x^2] - E[x]^2 in fp32 loses the variance entirely here.
    x, w, b, kw = make(17, 37, 100, torch.float32, norm="layernorm", seed=3, x_offset=1000.0)
    run_both(x, w, b, kw, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_gated_mlp_and_fp32_logits(dtype):
    x, w, b, kw = make(18, 37, 100, dtype, norm="rmsnorm", gated=True, seed=4)
    run_both(x, w, b, dict(kw, activation="silu"), dtype)
    x, w, _, kw = make(18, 37, 100, dtype, norm="layernorm", bias=False, seed=6)
    run_both(x, w, None, kw, dtype, out_dtype=torch.float32)   # ln_f + lm_head over every row


@pytest.mark.parametrize("cfg", [GemmConfig(16, 32, 16, 2, 1), GemmConfig(32, 16, 64, 4, 2),
                                 GemmConfig(16, 16, 128, 1, 1)])   # one K tile holds the whole row
def test_explicit_configs(cfg):
    x, w, b, kw = make(40, 37, 100, torch.float32, norm="layernorm", gated=True, residual=True, seed=7)
    run_both(x, w, b, dict(kw, activation="gelu"), torch.float32, config=cfg)


def test_strided_x():
    x_big, w, b, _ = make(12, 37, 128, torch.float32, seed=9)
    x = x_big[:, :100]                       # row stride 128, unit stride along K
    w = w[:, :100].contiguous()
    check(fused_gemm(x, w, b, activation="relu"), oracle(x, w, b, activation="relu"), torch.float32)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_kv_write_epilogue_stores_k_and_v_into_their_slots(cache_dtype):
    # N = 30 + 20 + 20 = 70: 16-wide column tiles straddle the q|k and k|v boundaries; 18 rows span two
    # row tiles, two of them padding (slot -1). Unowned cache entries are NaN and must stay so.
    heads, kv_heads, d, bs = 3, 2, 10, 4
    m = 18
    x, w, b, kw = make(m, heads * d + 2 * kv_heads * d, 24, torch.float32, norm="layernorm", seed=12)
    kc = torch.full((8, kv_heads, bs, d), float("nan"), dtype=cache_dtype, device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    slot_list = [(5 * i + 3) % 32 for i in range(m)]    # a permutation of 18 of the 32 slots
    slot_list[4] = slot_list[11] = -1
    slots = torch.tensor(slot_list, device=DEVICE)
    out = fused_gemm(x, w, b, kv_write=KVWrite(kc, vc, slots, heads * d, kv_heads, d), **kw)
    check(out, oracle(x, w, b, **kw), torch.float32)
    expect_k = torch.full_like(kc, float("nan"))
    expect_v = torch.full_like(vc, float("nan"))
    for row, slot in enumerate(slot_list):
        if slot >= 0:
            k_row, v_row = out[row, heads * d:].view(2, kv_heads, d)
            expect_k[slot // bs, :, slot % bs] = k_row.to(cache_dtype)
            expect_v[slot // bs, :, slot % bs] = v_row.to(cache_dtype)
    torch.testing.assert_close(kc, expect_k, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, expect_v, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("case", ["m_zero", "wrong_k", "dtype", "tile"])
def test_bad_arguments_raise(case):
    x, w, b, _ = make(12, 37, 100, torch.float32)
    kwargs = {}
    if case == "m_zero":
        x = x[:0]
    elif case == "wrong_k":
        w = torch.randn(37, 99, device=DEVICE)
    elif case == "dtype":
        w = w.half()
    else:
        kwargs["config"] = GemmConfig(8, 16, 16, 1, 1)
    with pytest.raises(ValueError, match="fused_"):
        fused_gemm(x, w, b, **kwargs)


def test_gpu_config_heuristic_and_table(tmp_path, monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    # a 128-token prompt of GPT-2 medium's qkv: two 64-row tiles, N tiles narrowed to fill the GPU
    cfg = gemm_config(128, 3072, 1024, cuda)
    assert (cfg.block_m, cfg.block_k) == (64, 128)
    assert 3072 // cfg.block_n * 2 >= 128
    assert gemm_config(24, 1024, 4096, cuda).block_m == 32
    path = tmp_path / "gemm.json"
    path.write_text(json.dumps({"128,3072,1024": [32, 64, 64, 8, 2]}))
    monkeypatch.setenv(CONFIG_ENV, str(path))
    assert gemm_config(100, 3072, 1024, cuda) == GemmConfig(32, 64, 64, 8, 2)
    assert gemm_config(100, 1024, 1024, cuda) != GemmConfig(32, 64, 64, 8, 2)   # not in the table
    bad = tmp_path / "bad.json"
    bad.write_text("{\"128,3072\": [1]}")
    monkeypatch.setenv(CONFIG_ENV, str(bad))
    with pytest.raises(ValueError, match=CONFIG_ENV):
        gemm_config(100, 3072, 1024, cuda)
