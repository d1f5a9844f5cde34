"""8-bit KV-cache scales (and the cache's quantize / dequantize with them) against float64 arithmetic written
from the definitions: scale = abs-max / 127 (int8) or / 448 (fp8 e4m3), separate K and V scales per layer,
and the rotary-embedding bound on K's abs-max checked against an actual rotation."""
from __future__ import annotations

import math

import pytest
import torch

from test_fp8_ref import e4m3_round_64
from test_int8_gemm_ref import round_half_even_64

from trt_gpt.kernels.fp8_ref import FP8_DTYPE
from trt_gpt.kernels.kv_cache_spec import dequantize as kv_dequantize
from trt_gpt.kernels.kv_cache_spec import quantize as kv_quantize
from trt_gpt.kernels.kv_quant_ref import kv_absmax_from_qkv, kv_cache_scale, rotated_absmax


def test_scales():
    assert kv_cache_scale(12.7, torch.int8).item() == pytest.approx(0.1, rel=1e-7)
    assert kv_cache_scale(896.0, FP8_DTYPE).tolist() == [2.0]
    assert kv_cache_scale(0.0, torch.int8).tolist() == [1.0]
    with pytest.raises(ValueError, match="int8 or float8"):
        kv_cache_scale(1.0, torch.float16)


@pytest.mark.parametrize("dtype", [torch.int8, FP8_DTYPE])
def test_quantize_and_dequantize_match_float64(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 16, generator=gen) * 3
    absmax = x.abs().max().item()
    scale = kv_cache_scale(absmax, dtype)
    q = kv_quantize(x, dtype, scale)
    s64 = absmax / (127 if dtype == torch.int8 else 448)
    t = x.double() / s64
    want = round_half_even_64(t.clamp(-127, 127)) if dtype == torch.int8 else e4m3_round_64(t)
    assert q.dtype == dtype and torch.equal(q.double(), want)
    back = kv_dequantize(q, scale)
    torch.testing.assert_close(back.double(), want * s64, rtol=1e-6, atol=0)
    bound = 0.5 * s64 if dtype == torch.int8 else absmax * 2 ** -4   # half a step / half an e4m3 ulp
    assert (back.double() - x.double()).abs().max() <= bound * 1.0001


def neox_rotate(k: torch.Tensor, pos: torch.Tensor, rot: int) -> torch.Tensor:
    """GPT-NeoX rotary embedding of the first `rot` dims, float64, from its definition."""
    half = rot // 2
    inv = 1.0 / (10000.0 ** (torch.arange(half, dtype=torch.float64) * 2 / rot))
    ang = pos.double()[:, None] * inv[None, :]
    cos, sin = torch.cos(ang)[:, None, :], torch.sin(ang)[:, None, :]
    a, b, rest = k[..., :half], k[..., half:rot], k[..., rot:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)


def test_rotary_bound_covers_the_rotated_keys():
    gen = torch.Generator().manual_seed(1)
    heads, d, rot = 2, 16, 8
    k = torch.randn(400, heads, d, generator=gen, dtype=torch.float64)
    k[..., :rot] += 5.0          # a constant component (keys often have one): rotation mixes it into both halves
    rotated = neox_rotate(k, torch.arange(400), rot)
    pre = k.abs().amax(0)                           # per column before the rotation
    post = rotated.abs().amax(0)
    bound = rotated_absmax(pre, rot)
    assert (post <= bound + 1e-12).all()
    assert post.max() > pre.max()                   # the pre-rotation max alone would saturate K
    assert bound.max() <= math.sqrt(2) * pre.max()  # never more than half a bit above the true range
    assert torch.equal(bound[:, rot:], pre[:, rot:])
    # GPT-J pairs (2i, 2i+1)
    gj = rotated_absmax(torch.tensor([[3.0, 4.0, 1.0, 0.0]]), 4, interleaved=True)
    assert gj.tolist() == [[5.0, 5.0, 1.0, 1.0]]


def test_separate_k_and_v_scales_from_qkv_columns():
    heads, kv_heads, d = 4, 2, 8
    q_cols, kv_cols = heads * d, kv_heads * d
    stats = torch.cat([torch.full((q_cols,), 1000.0), torch.full((kv_cols,), 50.0), torch.full((kv_cols,), 0.5)])
    stats[q_cols + 3] = 60.0                        # the K max
    stats[q_cols + kv_cols + 9] = 0.7               # the V max
    assert kv_absmax_from_qkv(stats, heads, kv_heads, d) == (60.0, pytest.approx(0.7))
    k, v = kv_absmax_from_qkv(stats * 2, heads, kv_heads, d)
    torch.testing.assert_close(kv_cache_scale(k, torch.int8), torch.tensor([120.0]) / 127)
    torch.testing.assert_close(kv_cache_scale(v, FP8_DTYPE), torch.tensor([1.4]) / 448)
    # with rotation of dims 0..3 of each K head: pair (3, 1) -> sqrt(60^2 + 50^2)
    k_rot, _ = kv_absmax_from_qkv(stats, heads, kv_heads, d, rotary_dim=4)
    assert k_rot == pytest.approx(math.hypot(60.0, 50.0))
    with pytest.raises(ValueError, match="expected"):
        kv_absmax_from_qkv(stats[:-1], heads, kv_heads, d)


def test_merged_scale_costs_v_its_precision():
    # why K and V are scaled separately: V's values under a K-sized scale collapse to a few levels
    gen = torch.Generator().manual_seed(2)
    k, v = torch.randn(1000, generator=gen) * 20, torch.randn(1000, generator=gen) * 0.2
    own = kv_dequantize(kv_quantize(v, torch.int8, kv_cache_scale(v.abs().max(), torch.int8)),
                        kv_cache_scale(v.abs().max(), torch.int8))
    merged_s = kv_cache_scale(max(k.abs().max(), v.abs().max()), torch.int8)
    merged = kv_dequantize(kv_quantize(v, torch.int8, merged_s), merged_s)
    assert (own - v).norm() * 20 < (merged - v).norm()
