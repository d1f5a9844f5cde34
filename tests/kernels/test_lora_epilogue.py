"""The LoRA epilogue of the fused decode GEMV (`fused_linear(..., lora=LoraEpilogue(...))`,
kernels/lora_epilogue.py) after the row shrink, and its torch reference (`fused_linear_ref`), against the
float64 definition (lora_cases), alone and with the norm, activation, gate, residual and K/V write fusions,
for steps mixing two adapters and rows without one."""
from __future__ import annotations

import pytest
import torch

from gemv_cases import DEVICE, TOL, check, make, oracle  # noqa: E402  (sets TRITON_INTERPRET on CPU first)
from lora_cases import SLOTS, adapters, lora_oracle, slot_col

pytest.importorskip("triton")

from trt_gpt.kernels.gemv_ref import fused_linear_ref  # noqa: E402
from trt_gpt.kernels.lora_epilogue import LoraEpilogue  # noqa: E402
from trt_gpt.kernels.triton_gemv import GemvConfig, fused_linear  # noqa: E402
from trt_gpt.kernels.triton_lora_rows import lora_shrink_rows  # noqa: E402


def run_lora(x, w, b, a, lb, kw, dtype, config=None, slots=SLOTS):
    """shrink + fused_linear with the LoRA epilogue, and fused_linear_ref, against the float64 oracle."""
    col = slot_col(slots)
    want = lora_oracle(x, w, b, a, lb, slots, **kw)
    v = lora_shrink_rows(x, a, col, norm=kw.get("norm"), block_k=32, max_splits=3)
    lora = LoraEpilogue(v, lb, col)
    out = torch.full((x.shape[0], w.shape[0]), float("nan"), device=DEVICE, dtype=x.dtype)
    got = fused_linear(x, w, b, out=out, config=config, lora=lora, **kw)
    check(got, want, dtype)
    check(fused_linear_ref(x, w, b, lora=lora, **kw), want, dtype)
    # the adapter matters at these tolerances: without it the result is off
    plain = oracle(x, w, b, **kw)
    assert ((plain - want).abs().max() / want.abs().max()).item() > 20 * TOL[dtype]
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("combo", ["plain", "layernorm gelu residual", "rmsnorm silu gate"])
def test_lora_epilogue_matches_definition(dtype, combo):
    kw_make = {"plain": dict(), "layernorm gelu residual": dict(norm="layernorm", residual=True),
               "rmsnorm silu gate": dict(norm="rmsnorm", gated=True, bias=False)}[combo]
    x, w, b, kw = make(3, 37, 100, dtype, seed=23, **kw_make)
    kw["activation"] = {"plain": None, "layernorm gelu residual": "gelu", "rmsnorm silu gate": "silu"}[combo]
    a, lb = adapters(100, 37, dtype)
    got = run_lora(x, w, b, a, lb, kw, dtype, config=GemvConfig(block_n=8, block_k=32, num_warps=4,
                                                                  num_stages=2))
    # the row without an adapter is exactly the kernel's output without the epilogue
    plain = fused_linear(x, w, b, config=GemvConfig(block_n=8, block_k=32, num_warps=4, num_stages=2), **kw)
    assert torch.equal(got[1], plain[1])


@pytest.mark.parametrize("slots", [[1], [0, 2, -1, 1, 1, -1, 0, 2]], ids=["m1", "m8"])
def test_lora_epilogue_one_and_eight_rows(slots):
    x, w, b, kw = make(len(slots), 37, 100, torch.float32, norm="rmsnorm", residual=True, seed=27)
    kw["activation"] = "relu"
    a, lb = adapters(100, 37, torch.float32)
    run_lora(x, w, b, a, lb, kw, torch.float32, config=GemvConfig(block_n=16, block_k=64, num_warps=4, num_stages=1),
             slots=slots)


def test_lora_epilogue_in_place_residual_and_prefetch_config():
    x, w, b, kw = make(3, 37, 100, torch.float32, norm="layernorm", residual=True, seed=24)
    a, lb = adapters(100, 37, torch.float32)
    want = lora_oracle(x, w, b, a, lb, SLOTS, **kw)
    col = slot_col()
    v = lora_shrink_rows(x, a, col, norm=kw["norm"])
    res = kw.pop("residual")
    out = fused_linear(x, w, b, residual=res, out=res, lora=LoraEpilogue(v, lb, col),
                       config=GemvConfig(block_n=4, block_k=16, num_warps=2, num_stages=1, prefetch_tiles=2), **kw)
    assert out is res
    check(out, want, torch.float32)


@pytest.mark.parametrize("impl", ["kernel", "ref"])
def test_lora_epilogue_with_kv_write(impl):
    """The qkv layer: the delta is added before the K/V columns are stored into the paged cache."""
    from trt_gpt.kernels.kv_store import KVWrite

    heads, kv_heads, d, bs = 3, 2, 10, 4
    n = heads * d + 2 * kv_heads * d
    x, w, b, kw = make(3, n, 24, torch.float32, norm="layernorm", seed=25)
    a, lb = adapters(24, n, torch.float32)
    kc = torch.full((5, kv_heads, bs, d), float("nan"), device=DEVICE)
    vc = torch.full_like(kc, float("nan"))
    kvw = KVWrite(kc, vc, torch.tensor([9, 5, 2], device=DEVICE), q_cols=heads * d, kv_heads=kv_heads, head_dim=d)
    col = slot_col()
    lora = LoraEpilogue(lora_shrink_rows(x, a, col, norm=kw["norm"]), lb, col)
    if impl == "kernel":
        out = fused_linear(x, w, b, kv_write=kvw, lora=lora, config=GemvConfig(8, 8, 1, 1), **kw)
    else:
        out = fused_linear_ref(x, w, b, kv_write=kvw, lora=lora, **kw)
    want = lora_oracle(x, w, b, a, lb, SLOTS, **kw)
    check(out, want, torch.float32)
    for row, slot in ((0, 9), (1, 5), (2, 2)):
        k_want, v_want = want[row, heads * d:].view(2, kv_heads, d)
        assert (kc[slot // bs, :, slot % bs].double() - k_want).abs().max() <= 1e-4 * want.abs().max()
        assert (vc[slot // bs, :, slot % bs].double() - v_want).abs().max() <= 1e-4 * want.abs().max()


def test_lora_epilogue_argument_errors():
    x, w, b, _ = make(2, 37, 100, torch.float32, seed=26)
    a, lb = adapters(100, 37, torch.float32)
    col = slot_col()
    v = lora_shrink_rows(x, a, col)
    cases = [LoraEpilogue(v[:, :1], lb, col),                     # v for fewer rows than x
             LoraEpilogue(v.half(), lb, col),                     # partials must be fp32
             LoraEpilogue(v, lb[:, :36], col),                    # B for another N
             LoraEpilogue(v, lb, col[:1]),                        # a slot column shorter than the step
             LoraEpilogue(v, lb, col.long())]                     # int32 slots
    for bad in cases:
        with pytest.raises(ValueError, match="lora"):
            fused_linear(x, w, b, lora=bad)
