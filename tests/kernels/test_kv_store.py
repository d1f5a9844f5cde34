"""The Triton K/V cache write (`kv_store.write_kv_cache_triton`, interpreted without a GPU) against a
per-token loop; the other two writers (RoPE + K/V, the GEMV epilogue) have their own tests."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels.kv_store import write_kv_cache_triton  # noqa: E402

from test_kv_cache_spec import loop_write  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("src_dtype,cache_dtype", [(torch.float32, torch.float32), (torch.float32, torch.float16),
                                                   (torch.bfloat16, torch.bfloat16)])
def test_write_kv_cache_matches_a_per_token_loop(src_dtype, cache_dtype):
    gen = torch.Generator().manual_seed(5)
    k = torch.randn(6, 3, 80, generator=gen).to(src_dtype)
    v = torch.randn(6, 3, 80, generator=gen).to(src_dtype)
    k_cache = torch.randn(4, 3, 16, 80, generator=gen).to(cache_dtype)
    v_cache = torch.randn(4, 3, 16, 80, generator=gen).to(cache_dtype)
    slots = torch.tensor([0, 17, 63, -1, 40, 31], dtype=torch.int32)
    kr, vr = k_cache.clone(), v_cache.clone()
    kt, vt = k_cache.to(DEVICE), v_cache.to(DEVICE)
    write_kv_cache_triton(k.to(DEVICE), v.to(DEVICE), kt, vt, slots.to(DEVICE))
    loop_write(k, v, kr, vr, slots)
    assert torch.equal(kt.cpu(), kr) and torch.equal(vt.cpu(), vr)


@pytest.mark.parametrize("src_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn])
def test_write_8bit_cache_equals_the_reference_write(src_dtype, cache_dtype):
    """INT8 / FP8 caches: bit for bit `write_kv_ref` (x / scale, rounded and saturated, K and V scales apart)."""
    from trt_gpt.kernels.kv_cache_spec import write_kv_ref

    gen = torch.Generator().manual_seed(6)
    k = (torch.randn(6, 2, 48, generator=gen) * 3).to(src_dtype)
    v = (torch.randn(6, 2, 48, generator=gen) * 0.2).to(src_dtype)
    k_cache = torch.randint(-100, 100, (4, 2, 16, 48), generator=gen).to(torch.int8).view(cache_dtype)
    v_cache = torch.randint(-100, 100, (4, 2, 16, 48), generator=gen).to(torch.int8).view(cache_dtype)
    slots = torch.tensor([0, 17, 63, -1, 40, 31], dtype=torch.int32)
    scales = (torch.tensor([0.02]), torch.tensor([0.002]))   # K saturates at |k| > 2.54 (INT8)
    kr, vr = k_cache.clone(), v_cache.clone()
    write_kv_ref(k, v, kr, vr, slots, scales)
    kt, vt = k_cache.clone().to(DEVICE), v_cache.clone().to(DEVICE)
    write_kv_cache_triton(k.to(DEVICE), v.to(DEVICE), kt, vt, slots.to(DEVICE), tuple(s.to(DEVICE) for s in scales))
    assert torch.equal(kt.cpu().view(torch.int8), kr.view(torch.int8))
    assert torch.equal(vt.cpu().view(torch.int8), vr.view(torch.int8))
    assert not torch.equal(kr.view(torch.int8), k_cache.view(torch.int8))


def test_write_kv_cache_checks_scales():
    k = torch.ones(2, 1, 32, device=DEVICE)
    cache = torch.zeros(2, 1, 16, 32, device=DEVICE, dtype=torch.int8)
    with pytest.raises(ValueError, match="needs \\(K, V\\) scales"):
        write_kv_cache_triton(k, k, cache, cache.clone(), torch.tensor([3, -1], device=DEVICE))
    f = torch.zeros(2, 1, 16, 32, device=DEVICE)
    with pytest.raises(ValueError, match="takes no"):
        write_kv_cache_triton(k, k, f, f.clone(), torch.tensor([3, -1], device=DEVICE), (k[0, 0, :1], k[0, 0, :1]))
