"""Triton paged-attention kernels against the torch reference (CPU interpreter when there is no GPU).

Shapes are tiny because the interpreter runs every program in numpy. Cache slots that no sequence owns
(and the tail of each sequence's last block) hold NaN, and outputs are NaN-filled before each call, so a
kernel that reads past a context or leaves a row unwritten fails loudly.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel modules define their @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.errors import TrtGptError  # noqa: E402
from trt_gpt.kernels.attention_ref import paged_attention_ref  # noqa: E402
from trt_gpt.kernels.backends import ENV_VAR, get_attention_backend  # noqa: E402
from trt_gpt.kernels.triton_attention import (choose_num_splits, paged_attention_triton,  # noqa: E402
                                              paged_decode_attention, paged_prefill_attention)
from trt_gpt.kernels.metadata import AttentionMetadata  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEAD_CONFIGS = [(4, 4), (8, 2), (4, 1)]          # MHA, GQA, MQA as (heads, kv_heads)
HEAD_IDS = ["mha", "gqa", "mqa"]
# Triton's CPU interpreter computes tl.dot on bf16 operands on their raw bits (numpy has no bfloat16),
# giving garbage of order 1e10 for any kernel; bf16 is checked on the GPU only.
HALF_DTYPES = [torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter tl.dot is wrong for bf16 operands"))]


def make_case(heads: int, kv_heads: int, head_dim: int, block_size: int, ctx_lens: list[int],
              q_lens: list[int], dtype: torch.dtype, seed: int = 0):
    """Random q and a paged cache whose blocks are a shuffled, non-contiguous subset of the pool."""
    gen = torch.Generator().manual_seed(seed)
    nblocks = [(c + block_size - 1) // block_size for c in ctx_lens]
    pool = sum(nblocks) + 5                                        # spare blocks stay NaN
    perm = torch.randperm(pool, generator=gen)
    block_tables = torch.zeros(len(ctx_lens), max(nblocks) + 1, dtype=torch.int32)  # +1: padded column
    k_cache = torch.full((pool, kv_heads, block_size, head_dim), float("nan"), dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    slots, used = [], 0
    for b, (c, ql) in enumerate(zip(ctx_lens, q_lens)):
        block_tables[b, :nblocks[b]] = perm[used:used + nblocks[b]].to(torch.int32)
        used += nblocks[b]
        for pos in range(c):
            blk, off = int(block_tables[b, pos // block_size]), pos % block_size
            k_cache[blk, :, off] = torch.randn(kv_heads, head_dim, generator=gen).to(dtype)
            v_cache[blk, :, off] = torch.randn(kv_heads, head_dim, generator=gen).to(dtype)
            if pos >= c - ql:
                slots.append(blk * block_size + off)
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    meta = AttentionMetadata(cu_q_lens=cu.to(DEVICE), context_lens=torch.tensor(ctx_lens, dtype=torch.int32, device=DEVICE),
                             block_tables=block_tables.to(DEVICE), slot_mapping=torch.tensor(slots, device=DEVICE),
                             max_q_len=max(q_lens), max_context_len=max(ctx_lens),
                             q_lens_host=list(q_lens), context_lens_host=list(ctx_lens))
    q = torch.randn(sum(q_lens), heads, head_dim, generator=gen).to(dtype)
    return q.to(DEVICE), k_cache.to(DEVICE), v_cache.to(DEVICE), meta


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    assert not torch.isnan(out).any(), "kernel left rows unwritten or read poisoned cache slots"
    err = (out.float() - ref.float()).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-4, f"max abs err {err}"
    else:
        rel = err / ref.float().abs().max().item()
        assert rel <= 1e-2, f"rel err {rel}"


def poisoned(q: torch.Tensor) -> torch.Tensor:
    return torch.full_like(q, float("nan"))


def ref_attention(q, k_cache, v_cache, meta, scale, window):
    """The reference in fp32 (nan-free caches are not needed: it only gathers positions < context)."""
    return paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), meta, scale, window)


# ---- prefill -------------------------------------------------------------------------------------------

# Packed sequences: a whole prompt, a chunk that starts mid-context, a single-token row, an aligned chunk.
PREFILL_CTX = [37, 100, 5, 64]
PREFILL_Q = [37, 20, 1, 16]


@pytest.mark.parametrize("heads,kv_heads", HEAD_CONFIGS, ids=HEAD_IDS)
@pytest.mark.parametrize("window", [None, 24])
def test_prefill_fp32(heads, kv_heads, window):
    q, kc, vc, meta = make_case(heads, kv_heads, 32, 16, PREFILL_CTX, PREFILL_Q, torch.float32, seed=heads + kv_heads)
    out = paged_prefill_attention(q, kc, vc, meta, 0.3, window, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, 0.3, window), torch.float32)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("fp32_acc", [True, False])
def test_prefill_half(dtype, fp32_acc):
    q, kc, vc, meta = make_case(8, 2, 32, 16, PREFILL_CTX, PREFILL_Q, dtype, seed=3)
    out = paged_prefill_attention(q, kc, vc, meta, 32 ** -0.5, 40, fp32_acc=fp32_acc, out=poisoned(q))
    assert out.dtype == dtype
    assert_close(out, ref_attention(q, kc, vc, meta, 32 ** -0.5, 40), dtype)


@pytest.mark.parametrize("head_dim,block_size", [(80, 32), (64, 64), (96, 128)])
def test_prefill_head_dims_and_block_sizes(head_dim, block_size):
    q, kc, vc, meta = make_case(2, 1, head_dim, block_size, [70, 9], [30, 9], torch.float32, seed=head_dim)
    out = paged_prefill_attention(q, kc, vc, meta, head_dim ** -0.5, None, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, head_dim ** -0.5, None), torch.float32)


def test_prefill_long_context_window_and_empty_sequence():
    # ctx 200 / window 120 leaves key tiles that every row sees fully (the unmasked middle range), plus
    # masked tiles on both edges; the middle sequence contributes no query rows this step.
    q, kc, vc, meta = make_case(4, 2, 32, 16, [200, 30, 50], [16, 0, 50], torch.float32, seed=9)
    out = paged_prefill_attention(q, kc, vc, meta, 0.2, 120, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, 0.2, 120), torch.float32)


@pytest.mark.parametrize("q_lens", [[1, 1], [12, 3]], ids=["decode", "prefill"])
def test_strided_q_from_fused_qkv(q_lens):
    # The model slices q out of a fused qkv projection: rows are strided, the last dim is contiguous.
    q, kc, vc, meta = make_case(4, 2, 32, 16, [20, 33], q_lens, torch.float32, seed=13)
    fused = torch.cat([q, torch.randn_like(q)], dim=1)      # [T, 2H, D]
    q_view = fused[:, :4]
    out = paged_attention_triton(q_view, kc, vc, meta, 0.3, None)
    assert_close(out, ref_attention(q, kc, vc, meta, 0.3, None), torch.float32)


def test_prefill_window_of_one_sees_only_itself():
    q, kc, vc, meta = make_case(2, 2, 32, 16, [40], [40], torch.float32, seed=7)
    out = paged_prefill_attention(q, kc, vc, meta, 0.2, 1, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, 0.2, 1), torch.float32)


# ---- decode --------------------------------------------------------------------------------------------

DECODE_CTX = [1, 37, 100, 64]


@pytest.mark.parametrize("heads,kv_heads", HEAD_CONFIGS, ids=HEAD_IDS)
@pytest.mark.parametrize("num_splits", [1, 3, None])
@pytest.mark.parametrize("window", [None, 20])
def test_decode_fp32(heads, kv_heads, num_splits, window):
    q, kc, vc, meta = make_case(heads, kv_heads, 32, 16, DECODE_CTX, [1] * 4, torch.float32, seed=heads)
    assert meta.is_decode
    out = paged_decode_attention(q, kc, vc, meta, 0.25, window, num_splits=num_splits, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, 0.25, window), torch.float32)


# The GPU's automatic tiling (its 128-token tile configured), on tiles wider than the 16-token cache blocks:
# few (sequence, kv head) pairs, as a lone MQA request, take 64-token tiles and splits (the last one partial);
# 16 kv heads whose 200-token context fits one 256 x 64 tile take one split of one tile (no merge kernel).
@pytest.mark.parametrize("heads,kv_heads,head_dim,ctx,tiling,splits", [
    (8, 1, 32, 150, (64, 64), 3), (16, 16, 64, 200, (256, 256), 1)], ids=["mqa-short-splits", "mha-one-tile"])
def test_decode_automatic_tiling(monkeypatch, heads, kv_heads, head_dim, ctx, tiling, splits):
    from trt_gpt.kernels import triton_decode

    monkeypatch.setattr(triton_decode, "_decode_config", lambda block_d, device: (128, 4, 1))
    seen = []
    real = triton_decode.choose_num_splits
    monkeypatch.setattr(triton_decode, "choose_num_splits", lambda *a: seen.append(a) or real(*a))
    q, kc, vc, meta = make_case(heads, kv_heads, head_dim, 16, [ctx], [1], torch.float32, seed=heads)
    scale = head_dim ** -0.5
    out = paged_decode_attention(q, kc, vc, meta, scale, None, out=poisoned(q))
    assert seen[0][-2:] == tiling and real(*seen[0]) == splits
    assert_close(out, ref_attention(q, kc, vc, meta, scale, None), torch.float32)


@pytest.mark.parametrize("without_dot", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, *HALF_DTYPES])
def test_decode_mha_with_and_without_tensor_core_dots(monkeypatch, dtype, without_dot):
    # One query head per KV head: multiply-and-sum in registers (the default), or the 16-row padded dots of
    # the grouped path; both against the reference, over split and unsplit, windowed and full contexts.
    from trt_gpt.kernels import triton_decode

    monkeypatch.setattr(triton_decode, "MHA_WITHOUT_DOT", without_dot)
    q, kc, vc, meta = make_case(4, 4, 32, 16, DECODE_CTX, [1] * 4, dtype, seed=17)
    for splits, window in ((1, None), (3, 20), (None, None)):
        out = paged_decode_attention(q, kc, vc, meta, 32 ** -0.5, window, num_splits=splits, out=poisoned(q))
        assert_close(out, ref_attention(q, kc, vc, meta, 32 ** -0.5, window), dtype)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_decode_half_many_splits(dtype):
    # 8 splits over <= 2 tiles: most splits are empty and must merge as zero weight.
    q, kc, vc, meta = make_case(8, 2, 32, 16, DECODE_CTX, [1] * 4, dtype, seed=11)
    out = paged_decode_attention(q, kc, vc, meta, 32 ** -0.5, None, num_splits=8, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, 32 ** -0.5, None), dtype)


@pytest.mark.parametrize("head_dim,block_size", [(80, 32), (128, 64)])
def test_decode_head_dims_and_block_sizes(head_dim, block_size):
    q, kc, vc, meta = make_case(4, 1, head_dim, block_size, [90, 3], [1, 1], torch.float32, seed=head_dim)
    out = paged_decode_attention(q, kc, vc, meta, head_dim ** -0.5, 50, num_splits=2, out=poisoned(q))
    assert_close(out, ref_attention(q, kc, vc, meta, head_dim ** -0.5, 50), torch.float32)


def test_choose_num_splits_fills_the_gpu():
    assert choose_num_splits(1, 1, 4096, num_sms=132) > 16        # one request spreads over many SMs
    assert choose_num_splits(64, 4, 4096, num_sms=132) == 1       # a big batch already fills them
    assert choose_num_splits(1, 1, 50, num_sms=132) == 1          # short contexts are not split
    # a lone MQA request splits every 64 tokens; 16 kv heads at batch 1 keep 128-token splits
    assert choose_num_splits(1, 1, 256, num_sms=132) == 4
    assert choose_num_splits(1, 16, 256, num_sms=132) == 2
    # ...unless the head dim is known and the whole context fits one tile: one split
    assert choose_num_splits(1, 16, 256, num_sms=132, block_d=64) == 1
    assert choose_num_splits(1, 16, 512, num_sms=132, block_d=64) == 4        # too long for one tile
    assert choose_num_splits(1, 16, 256, num_sms=132, block_d=128) == 2       # too wide for one tile
    assert choose_num_splits(2, 16, 256, num_sms=132, block_d=64) == 2        # 32 pairs: the split rule again
    assert choose_num_splits(1, 1, 256, num_sms=132, block_n=128, min_tokens=128) == 2


# ---- backend registry ----------------------------------------------------------------------------------

def test_backend_forced_triton_dispatches_decode_and_prefill(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "triton")
    backend = get_attention_backend(DEVICE, torch.float32)
    assert backend.name == "triton"
    for q_lens in ([1, 1], [5, 1]):
        q, kc, vc, meta = make_case(4, 2, 32, 16, [20, 33], q_lens, torch.float32, seed=len(q_lens))
        out = backend.attention(q, kc, vc, meta, 0.3, None)
        assert_close(out, ref_attention(q, kc, vc, meta, 0.3, None), torch.float32)


def test_backend_default_and_errors(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_attention_backend(torch.device("cpu"), torch.float32).name == "torch"
    monkeypatch.setenv(ENV_VAR, "torch")
    assert get_attention_backend(torch.device("cpu"), torch.float16).name == "torch"
    monkeypatch.setenv(ENV_VAR, "cudnn")
    with pytest.raises(TrtGptError, match=ENV_VAR):
        get_attention_backend("cpu", torch.float32)
    monkeypatch.setenv(ENV_VAR, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(TrtGptError, match="unavailable"):
        get_attention_backend(torch.device("cpu"), torch.float32)


def test_context_fp32_acc_reaches_the_prefill_kernel(monkeypatch):
    """The engine/run switch (--disable_context_fmha_fp32_acc) arrives at the prefill kernel, and only there."""
    import trt_gpt.kernels.triton_attention as ta
    from trt_gpt.kernels.backends import get_attention_backend

    seen = []
    monkeypatch.setattr(ta, "paged_prefill_attention", lambda *a, fp32_acc=True, **k: seen.append(fp32_acc))
    monkeypatch.setenv("TRT_GPT_ATTENTION_BACKEND", "triton")
    for flag in (True, False):
        backend = get_attention_backend(DEVICE, torch.float16, context_fp32_acc=flag)
        meta = type("M", (), {"is_decode": False, "num_seqs": 1})()
        backend.attention(torch.zeros(3, 2, 16), None, None, meta, 1.0)
    assert seen == [True, False]


@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn])
@pytest.mark.parametrize("heads,kv_heads", HEAD_CONFIGS, ids=HEAD_IDS)
@pytest.mark.parametrize("step", ["decode", "prefill"])
def test_8bit_cache_equals_the_reference(cache_dtype, heads, kv_heads, step):
    """INT8 / FP8 caches with separate K and V scales: the kernels dequantize as each tile loads, as
    `attention_ref` does through `kv_cache_spec.dequantize` (FP8 spare slots stay NaN-poisoned)."""
    from trt_gpt.kernels.kv_cache_spec import quantize

    ctx, ql = ([37, 5, 70], [1, 1, 1]) if step == "decode" else ([37, 20, 9], [37, 6, 9])
    q, k_cache, v_cache, meta = make_case(heads, kv_heads, 32, 16, ctx, ql, torch.float32, seed=11)
    ks, vs = torch.tensor([0.03], device=DEVICE), torch.tensor([0.011], device=DEVICE)
    kq = quantize(k_cache.cpu(), cache_dtype, ks.cpu()).to(DEVICE)
    vq = quantize(v_cache.cpu(), cache_dtype, vs.cpu()).to(DEVICE)
    window = 24 if kv_heads == 2 else None
    ref = paged_attention_ref(q, kq, vq, meta, 0.2, window, kv_scales=(ks, vs))
    if step == "decode":
        out = paged_decode_attention(q, kq, vq, meta, 0.2, window, out=poisoned(q), kv_scales=(ks, vs))
    else:
        out = paged_prefill_attention(q, kq, vq, meta, 0.2, window, out=poisoned(q), kv_scales=(ks, vs))
    assert_close(out, ref, torch.float32)
    # the dequantized cache is what was attended to: a float cache of those values gives the same output
    float_out = paged_attention_triton(q, kq.float() * ks, vq.float() * vs, meta, 0.2, window)
    assert_close(out, float_out, torch.float32)
    with pytest.raises(ValueError, match="needs \\(K, V\\) scales"):
        paged_attention_triton(q, kq, vq, meta, 0.2, window)
