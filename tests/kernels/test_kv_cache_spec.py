"""KVCacheSpec and the torch K/V write: the quantize / dequantize definitions against float64 arithmetic
written from their definition, the write against a per-token loop, and 8-bit specs refused by the kernels."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.errors import TrtGptError
from trt_gpt.kernels.kv_cache_spec import KVCacheSpec, dequantize, quantize, write_kv_ref


def loop_write(k, v, k_cache, v_cache, slots):
    """Each token's K/V at its slot's (block, offset), cast to the cache dtype; negative slots skipped."""
    bs = k_cache.shape[2]
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            for h in range(k.shape[1]):
                k_cache[slot // bs, h, slot % bs] = k[t, h].to(k_cache.dtype)
                v_cache[slot // bs, h, slot % bs] = v[t, h].to(v_cache.dtype)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_write_kv_ref_matches_a_per_token_loop(cache_dtype):
    gen = torch.Generator().manual_seed(5)
    k, v = torch.randn(2, 7, 3, 80, generator=gen)
    cache = torch.randn(4, 3, 16, 80, generator=gen).to(cache_dtype)
    slots = torch.tensor([0, 17, -1, 63, 5, 40, 31], dtype=torch.int32)
    kr, vr, kl, vl = cache.clone(), cache.clone() + 1, cache.clone(), cache.clone() + 1
    write_kv_ref(k, v, kr, vr, slots)
    loop_write(k, v, kl, vl, slots)
    assert torch.equal(kr, kl) and torch.equal(vr, vl)
    assert not torch.equal(kr, cache)


def test_write_kv_ref_checks_shapes():
    k = torch.zeros(3, 2, 16)
    cache = torch.zeros(2, 2, 8, 16)
    with pytest.raises(ValueError, match="slot_mapping"):
        write_kv_ref(k, k, cache, cache, torch.zeros(2, dtype=torch.int32))
    with pytest.raises(ValueError, match="does not fit"):
        write_kv_ref(torch.zeros(3, 1, 16), torch.zeros(3, 1, 16), cache, cache, torch.zeros(3, dtype=torch.int32))


def test_int8_quantize_rounds_half_to_even_and_saturates():
    x = torch.tensor([0.0, 0.25, 0.75, 1.25, -1.25, 3.0, 100.0, -100.0, 0.3])
    scale = 0.5
    got = quantize(x, torch.int8, torch.tensor(scale))
    # float64 from the definition: x / scale, round half to even, clamp to [-127, 127]
    want = [max(-127, min(127, round(float(v) / scale))) for v in x.double()]   # Python's round is half-even
    assert got.dtype == torch.int8 and got.tolist() == want
    back = dequantize(got, torch.tensor(scale))
    assert back.dtype == torch.float32 and back.tolist() == [w * scale for w in want]


def test_fp8_quantize_matches_float64_definition():
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(1000, generator=gen, dtype=torch.float64) * 50).float().double()
    scale = float(x.abs().max()) / 448          # the calibrated scale: the largest |x| maps to e4m3's max
    got = quantize(x.float(), torch.float8_e4m3fn, scale)
    # saturate x / scale to e4m3's +-448, then round to the nearest e4m3 value (torch's float8 conversion)
    want = (x / scale).clamp(-448, 448).to(torch.float8_e4m3fn)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4, plus half the subnormal step 2^-9 near zero
    err = (dequantize(got, scale).double() - x).abs()
    assert bool((err <= x.abs() * 2 ** -4 + scale * 2 ** -10 + 1e-12).all())
    big = quantize(torch.tensor([1e6, -1e6]), torch.float8_e4m3fn, scale)
    assert big.float().tolist() == [448.0, -448.0]


def test_float_caches_are_a_cast_and_take_no_scale():
    x = torch.randn(5, dtype=torch.float32)
    assert torch.equal(quantize(x, torch.float16), x.half())
    with pytest.raises(ValueError, match="takes no scale"):
        quantize(x, torch.float16, 1.0)
    with pytest.raises(ValueError, match="needs a scale"):
        quantize(x, torch.int8)


@pytest.mark.parametrize("name", ["int8", "fp8"])
def test_an_8bit_spec_runs_on_both_backends_and_the_flag_guards_triton(name, monkeypatch):
    from trt_gpt.kernels import kv_cache_spec

    spec = KVCacheSpec(spec_dtype(name), torch.ones(2), torch.ones(2))
    spec.require_backend("torch")
    spec.require_backend("triton")
    monkeypatch.setattr(kv_cache_spec, "TRITON_READS_8BIT", False)   # kernels without 8-bit loads: refused
    with pytest.raises(TrtGptError, match=f"kv cache dtype .*: the Triton attention kernels do not read 8-bit"):
        spec.require_backend("triton")
    KVCacheSpec(torch.float16).require_backend("triton")


def spec_dtype(name):
    from trt_gpt.kernels.kv_cache_spec import DTYPE_NAMES

    return DTYPE_NAMES[name]


def test_spec_fields():
    assert KVCacheSpec.from_name(None, torch.bfloat16).dtype == torch.bfloat16
    spec = KVCacheSpec.from_name("float16", torch.float32)
    assert spec.dtype == torch.float16 and spec.scales(0) is None and not spec.quantized
    with pytest.raises(TrtGptError, match="kv_cache_dtype 'int4' is not one of"):
        KVCacheSpec.from_name("int4", torch.float16)
    with pytest.raises(TrtGptError, match="takes no scales"):
        KVCacheSpec(torch.float16, k_scales=torch.ones(2))
    with pytest.raises(TrtGptError, match="needs a K and a V scale per layer"):
        KVCacheSpec.from_name("int8", torch.float16)
    q = KVCacheSpec(torch.int8, torch.tensor([0.5, 0.25]), torch.tensor([1.0, 2.0]))
    assert [s.item() for s in q.scales(1)] == [0.25, 2.0]      # separate K and V scales per layer
