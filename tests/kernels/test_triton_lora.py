"""The multi-LoRA kernels (and their torch reference) against a float64 computation written here from the
definition: y[t] + B[slot[t]] @ (A[slot[t]] @ x[t]) for slot >= 0, y[t] unchanged for slot < 0."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels.lora_ref import lora_add_ref, segments  # noqa: E402
from trt_gpt.kernels.triton_lora import lora_add as _triton_add  # noqa: E402


def lora_add(x, y, idx, a, b):
    """The Triton kernels driven as the pool drives them: per-token slots grouped into segments on the host."""
    perm, seg = segments(idx.tolist()[:x.shape[0]], a.shape[0])
    perm = torch.tensor(perm + [0] * (x.shape[0] - len(perm)), dtype=torch.int32, device=x.device)
    return _triton_add(x, y, perm, torch.tensor(seg, dtype=torch.int32, device=x.device), a, b)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def case(dtype, t=6, k=40, n=36, r=16, slots=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, k, generator=g).to(dtype)
    y = torch.randn(t, n, generator=g).to(dtype)
    a = torch.randn(slots, r, k, generator=g).to(dtype)
    b = torch.randn(slots, n, r, generator=g).to(dtype)
    a[1, 5:] = 0    # a rank-5 adapter zero-padded to r, as the pool stores it
    b[1, :, 5:] = 0
    idx = torch.tensor([2, -1, 0, 2, 1, -1, 3, 0][:t], dtype=torch.int32)
    return x, y, idx, a, b


def expected(x, y, idx, a, b):
    out = y.double().clone()
    for i, s in enumerate(idx.tolist()):
        if s >= 0:
            out[i] += b[s].double() @ (a[s].double() @ x[i].double())
    return out


@pytest.mark.parametrize("fn", [lora_add, lora_add_ref], ids=["triton", "ref"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
def test_lora_add_matches_definition(fn, dtype, tol):
    x, y, idx, a, b = case(dtype)
    want = expected(x, y, idx, a, b)
    if fn is lora_add:
        x, y, idx, a, b = (v.to(DEVICE) for v in (x, y, idx, a, b))
    y0 = y.clone()
    got = fn(x, y, idx, a, b)
    assert got.data_ptr() == y.data_ptr()          # in place
    err = (got.double().cpu() - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), err
    none = (idx.cpu() < 0)
    assert torch.equal(got.cpu()[none], y0.cpu()[none])   # untouched bit for bit


def test_slots_longer_than_tokens_and_strided_output():
    """Decode graphs pass a fixed slot buffer longer than the step; y may be a column slice (qkv parts)."""
    x, y, idx, a, b = case(torch.float32, t=3)
    big = torch.full((16,), 7, dtype=torch.int32)
    big[:3] = idx[:3]
    wide = torch.randn(3, 50)
    view = wide[:, 4:4 + y.shape[1]]
    view.copy_(y)
    want = expected(x, y, idx[:3], a, b)
    lora_add(x.to(DEVICE), view.to(DEVICE) if DEVICE.type == "cuda" else view, big.to(DEVICE), a.to(DEVICE),
             b.to(DEVICE))
    if DEVICE.type == "cpu":
        assert (view.double() - want).abs().max().item() < 1e-4


def test_bad_shapes_are_refused():
    x, y, idx, a, b = case(torch.float32)
    with pytest.raises(ValueError):
        lora_add(x[:, :10], y, idx, a, b)
    with pytest.raises(ValueError):
        lora_add_ref(x, y, idx[:2], a, b)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float16, 2e-2)])
def test_segments_longer_than_a_chunk(dtype, tol):
    """37 interleaved tokens (segments of ~10 in 16-token chunks, tokens with no adapter between), output
    and input sizes that leave tail blocks, rank 32 with one adapter zero-padded from rank 3."""
    g = torch.Generator().manual_seed(5)
    t, k, n, r, s = 37, 70, 50, 32, 3
    x = torch.randn(t, k, generator=g).to(dtype)
    y = torch.randn(t, n, generator=g).to(dtype)
    a = (torch.randn(s, r, k, generator=g) * 0.3).to(dtype)
    b = (torch.randn(s, n, r, generator=g) * 0.3).to(dtype)
    a[2, 3:] = 0
    b[2, :, 3:] = 0
    idx = torch.randint(-1, s, (t,), generator=g, dtype=torch.int32)
    want = expected(x, y, idx, a, b)
    got = lora_add(*(v.to(DEVICE) for v in (x, y, idx, a, b))).double().cpu()
    assert (got - want).abs().max().item() <= tol * max(1.0, want.abs().max().item())


def test_segments_group_tokens_by_slot():
    assert segments([2, -1, 0, 2, 1, -1, 0], 3) == ([2, 6, 4, 0, 3], [0, 2, 3, 5])


def test_few_tokens_split_k_and_sum_the_partials():
    # batch-1-like steps: few (slot, chunk) programs, so the shrink splits K (K = 1,000: the last split is
    # partial and ends inside a tile); the expand sums the splits' partials
    from trt_gpt.kernels.triton_lora import shrink_splits

    assert shrink_splits(2, 1000, 64) == (3, 384)
    assert shrink_splits(256, 8192, 64)[0] == 1          # enough programs: no split
    assert shrink_splits(1, 100, 64) == (1, 128)         # too narrow to split
    x, y, idx, a, b = case(torch.float32, t=3, k=1000, n=20, r=16, slots=2, seed=3)
    idx = torch.tensor([1, -1, 0], dtype=torch.int32)
    want = expected(x, y, idx, a, b)
    got = lora_add(*(v.to(DEVICE) for v in (x, y, idx, a, b)))
    assert (got.double().cpu() - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())
