"""Fused RoPE + KV-cache write kernel against RotaryEmbedding + write_kv_cache (CPU interpreter without a GPU).

Caches start NaN-filled and the expected caches are built the same way, so a stray write (wrong slot,
wrong head, a padding token's k/v) or a missing one shows up as a NaN mismatch. Results must be
bit-identical to the torch composition: the kernel does the same fp32 ops and rounds once.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel modules define their @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

import trt_gpt.kernels.triton_rope_kv as rope_kv  # noqa: E402
from trt_gpt.config import ModelConfig  # noqa: E402
from trt_gpt.kernels.triton_rope_kv import rope_write_kv_ref, rope_write_kv_triton  # noqa: E402
from trt_gpt_plugins.positions import RotaryEmbedding  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
HEAD_CONFIGS = [(4, 4), (8, 2), (4, 1)]          # MHA, GQA, MQA as (heads, kv_heads)
HEAD_IDS = ["mha", "gqa", "mqa"]
# bf16 goes through numpy under the interpreter, which has no bfloat16: GPU only.
DTYPES = [torch.float32, torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") == "1", reason="interpreter has no bf16"))]
ROPE_KINDS = {"full": {}, "partial": {"rotary_pct": 0.25},            # 80 -> 20 dims, 32 -> 8 dims
              "linear": {"rotary_scaling": {"type": "linear", "factor": 4.0}, "rotary_base": 500.0}}
MAX_POS = 2048
BLOCK = 4


def make_rope(heads: int, kv_heads: int, head_dim: int, kind: str) -> RotaryEmbedding:
    cfg = ModelConfig(hidden_size=heads * head_dim, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      head_size=head_dim, position_embedding_type="rope_gpt_neox",
                      max_position_embeddings=MAX_POS, **ROPE_KINDS[kind])
    return RotaryEmbedding(cfg, DEVICE, max_positions=MAX_POS)


def make_case(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype, seed: int,
              strided: bool, pad_tokens: int = 0):
    """qkv (a row-strided slice of a wider tensor when `strided`), random positions, distinct random slots
    in a pool with spare room (so unwritten slots exist), the last `pad_tokens` tokens on slot -1."""
    gen = torch.Generator().manual_seed(seed)
    width = (heads + 2 * kv_heads) * head_dim
    wide = torch.randn(tokens, width + (7 if strided else 0), generator=gen).to(dtype)
    qkv = wide[:, 3:3 + width] if strided else wide
    positions = torch.randint(0, MAX_POS, (tokens,), generator=gen)
    nblocks = tokens // BLOCK + 3
    slots = torch.randperm(nblocks * BLOCK, generator=gen)[:tokens]
    if pad_tokens:
        slots[-pad_tokens:] = -1
    cache = torch.full((nblocks, kv_heads, BLOCK, head_dim), float("nan"), dtype=dtype)
    return (qkv.to(DEVICE), positions.to(DEVICE, torch.int32 if seed % 2 else torch.int64),
            slots.to(DEVICE, torch.int64 if seed % 2 else torch.int32), cache.to(DEVICE))


def expected(qkv, heads, kv_heads, head_dim, positions, slots, cache, rope: RotaryEmbedding):
    """The unfused path: split qkv, RotaryEmbedding.apply, then each non-padding token's k and v stored at its
    slot (block, offset) in the cache dtype."""
    x = qkv.reshape(qkv.shape[0], heads + 2 * kv_heads, head_dim)
    q, k = rope.apply(x[:, :heads], x[:, heads:heads + kv_heads], positions.long())
    v = x[:, heads + kv_heads:]
    kc, vc = cache.clone(), cache.clone()
    bs = cache.shape[2]
    for t, slot in enumerate(slots.tolist()):
        if slot >= 0:
            kc[slot // bs, :, slot % bs] = k[t].to(kc.dtype)
            vc[slot // bs, :, slot % bs] = v[t].to(vc.dtype)
    return q, kc, vc


def run_and_check(fn, tokens, heads, kv_heads, head_dim, dtype, seed, kind="full", strided=False,
                  pad_tokens=0, q_out=False):
    rope = make_rope(heads, kv_heads, head_dim, kind)
    qkv, positions, slots, cache = make_case(tokens, heads, kv_heads, head_dim, dtype, seed, strided, pad_tokens)
    q_ref, kc_ref, vc_ref = expected(qkv, heads, kv_heads, head_dim, positions, slots, cache, rope)
    kc, vc = cache.clone(), cache.clone()
    out = torch.full((tokens, heads, head_dim), float("nan"), dtype=dtype, device=DEVICE) if q_out else None
    q = fn(qkv, heads, kv_heads, head_dim, positions, rope.cos, rope.sin, rope.dim, kc, vc, slots, q_out=out)
    if q_out:
        assert q is out
    assert q.dtype == dtype and q.shape == (tokens, heads, head_dim)
    # rtol=atol=0: bit-identical, NaN where (and only where) the reference cache is untouched
    torch.testing.assert_close(q, q_ref, rtol=0, atol=0)
    torch.testing.assert_close(kc, kc_ref, rtol=0, atol=0, equal_nan=True)
    torch.testing.assert_close(vc, vc_ref, rtol=0, atol=0, equal_nan=True)
    written = (~torch.isnan(kc[:, 0, :, 0])).sum().item()
    assert written == tokens - pad_tokens, "padding tokens must not write the cache"
    return q


@pytest.mark.parametrize("tokens", [1, 40])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 80])
@pytest.mark.parametrize("heads,kv_heads", HEAD_CONFIGS, ids=HEAD_IDS)
def test_matches_rotary_embedding(heads, kv_heads, head_dim, dtype, tokens):
    # the prefill-sized case also reads a row-strided qkv and has two padding tokens
    run_and_check(rope_write_kv_triton, tokens, heads, kv_heads, head_dim, dtype, seed=heads + head_dim + tokens,
                  strided=tokens > 1, pad_tokens=2 if tokens > 1 else 0)


@pytest.mark.parametrize("kind", ["partial", "linear"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("head_dim", [32, 80])
def test_partial_rotary_and_linear_scaling(kind, dtype, head_dim):
    run_and_check(rope_write_kv_triton, 24, 8, 2, head_dim, dtype, seed=head_dim + 1, kind=kind,
                  strided=True, pad_tokens=1, q_out=True)


def test_head_chunks_straddle_q_k_v(monkeypatch):
    # Two heads per program over 3 q + 1 k + 1 v heads: chunks [q q] [q k] [v -], one row masked.
    monkeypatch.setattr(rope_kv, "_ELEMS_PER_PROGRAM", 2 * 128)
    run_and_check(rope_write_kv_triton, 9, 3, 1, 80, torch.float32, seed=5, kind="partial", pad_tokens=1)


def test_padding_only_decode_writes_nothing():
    run_and_check(rope_write_kv_triton, 1, 4, 2, 32, torch.float16, seed=2, pad_tokens=1)


@pytest.mark.parametrize("kind", ["full", "partial"])
def test_torch_fallback_same_contract(kind):
    run_and_check(rope_write_kv_ref, 40, 8, 2, 80, torch.float16, seed=3, kind=kind, strided=True,
                  pad_tokens=2, q_out=True)


def test_relative_position_property():
    """Independent of RotaryEmbedding: <R(p) q, R(p') k> = Re(zq conj(zk) e^{i (p - p') theta}) with
    z = x[:half] + i x[half:], evaluated in float64 from own tables; fails for no / reversed rotation."""
    heads, head_dim, base = 2, 32, 10000.0
    half = head_dim // 2
    theta = base ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    pos = torch.tensor([0, 1, 5, 17, 300, 301, 1999, 2040])
    ang = torch.outer(torch.arange(MAX_POS, dtype=torch.float64), torch.cat([theta, theta]))
    cos, sin = ang.cos().float().to(DEVICE), ang.sin().float().to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    qv, kv, vv = (torch.randn(head_dim, generator=gen) for _ in range(3))
    row = torch.cat([qv, qv, kv, vv])                     # two identical q heads, one k head, one v head
    qkv = row.expand(len(pos), -1).contiguous().to(DEVICE)
    kc = torch.full((len(pos), 1, 1, head_dim), float("nan"), device=DEVICE)
    vc = kc.clone()
    slots = torch.arange(len(pos), device=DEVICE)
    q = rope_write_kv_triton(qkv, heads, 1, head_dim, pos.to(DEVICE), cos, sin, head_dim, kc, vc, slots)
    got = q[:, 0].double() @ kc[:, 0, 0].double().T       # [p, p'] dot products
    zq = torch.complex(qv[:half].double(), qv[half:].double())
    zk = torch.complex(kv[:half].double(), kv[half:].double())
    delta = (pos[:, None] - pos[None, :]).double()
    want = (zq * zk.conj() * torch.exp(1j * delta[..., None] * theta)).real.sum(-1)
    assert (want - want[0, 0]).abs().max() > 1.0, "test needs dot products that vary with p - p'"
    torch.testing.assert_close(got.cpu(), want, rtol=0, atol=2e-4 * qv.norm().item() * kv.norm().item())
    assert torch.equal(q[:, 0], q[:, 1])
    assert torch.equal(vc[:, 0, 0].cpu(), vv.expand(len(pos), -1))   # v is never rotated


@pytest.mark.parametrize("change,match", [
    (dict(head_dim=16), "qkv must be"),
    (dict(rotary_dim=7), "rotary_dim"),
    (dict(cos=torch.zeros(8, 32, dtype=torch.float64)), "float32"),
    (dict(slot_mapping=torch.zeros(2, dtype=torch.int64)), "slot_mapping"),
    (dict(v_cache=torch.zeros(2, 4, 2, 32).transpose(1, 2)), "k_cache and v_cache"),  # other layout
    (dict(q_out=torch.zeros(3, 4, 16)), "q_out"),
])
def test_bad_arguments(change, match):
    args = dict(qkv=torch.zeros(3, 8 * 32), heads=4, kv_heads=2, head_dim=32,
                positions=torch.zeros(3, dtype=torch.int64),
                cos=torch.zeros(8, 32), sin=torch.zeros(8, 32), rotary_dim=32, k_cache=torch.zeros(2, 2, 4, 32),
                v_cache=torch.zeros(2, 2, 4, 32), slot_mapping=torch.zeros(3, dtype=torch.int64))
    args.update(change)
    with pytest.raises(ValueError, match=match):
        rope_write_kv_triton(**args)


@pytest.mark.parametrize("cache_dtype", [torch.int8, torch.float8_e4m3fn])
def test_eight_bit_caches(cache_dtype):
    # rotated k and plain v stored as quantize(x / scale) with separate K and V scales: the unfused path's
    # RotaryEmbedding followed by the one K/V write (write_kv_ref), byte for byte
    from trt_gpt.kernels.kv_cache_spec import write_kv_ref

    heads, kv_heads, head_dim, tokens = 4, 2, 32, 6
    rope = make_rope(heads, kv_heads, head_dim, "partial")
    qkv, positions, slots, cache = make_case(tokens, heads, kv_heads, head_dim, torch.float16, 7, False, 1)
    qkv = qkv * 3
    scales = (torch.tensor([0.02], device=DEVICE), torch.tensor([0.05], device=DEVICE))
    x = qkv.reshape(tokens, heads + 2 * kv_heads, head_dim)
    q_ref, k = rope.apply(x[:, :heads], x[:, heads:heads + kv_heads], positions.long())
    zeros = torch.zeros(cache.shape, dtype=cache_dtype, device=DEVICE)
    kc_ref, vc_ref = zeros.clone(), zeros.clone()
    write_kv_ref(k, x[:, heads + kv_heads:], kc_ref, vc_ref, slots, scales)
    kc, vc = zeros.clone(), zeros.clone()
    q = rope_write_kv_triton(qkv, heads, kv_heads, head_dim, positions, rope.cos, rope.sin, rope.dim, kc, vc, slots,
                             scales=scales)
    torch.testing.assert_close(q, q_ref, rtol=0, atol=0)
    assert torch.equal(kc.view(torch.int8), kc_ref.view(torch.int8))
    assert torch.equal(vc.view(torch.int8), vc_ref.view(torch.int8))
    assert kc.view(torch.int8).ne(0).any() and vc.view(torch.int8).ne(0).any()
    with pytest.raises(ValueError, match="needs \\(K, V\\) scales"):
        rope_write_kv_triton(qkv, heads, kv_heads, head_dim, positions, rope.cos, rope.sin, rope.dim, kc, vc, slots)
