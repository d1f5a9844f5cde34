"""The decode-step embedding kernel against the module path's own torch ops (F.embedding, *, +).

The expectation is composed here from plain torch calls, the way `GPTForCausalLM.forward` computes the
embedding without the kernel; fp16 and fp32 must match it bit for bit (the same roundings, no sums).
H=200 is not a power of two and, with a 64-wide block, leaves a tail block.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels import triton_embed  # noqa: E402
from trt_gpt.kernels.embed_ref import embed_ref  # noqa: E402
from trt_gpt.kernels.triton_embed import embed  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def tables(dtype, vocab=50, hidden=200, positions=40):
    gen = torch.Generator().manual_seed(0)
    wte = (torch.randn(vocab, hidden, generator=gen) * 3).to(dtype).to(DEVICE)
    wpe = torch.randn(positions, hidden, generator=gen).to(dtype).to(DEVICE)
    return wte, wpe


def expected(ids, wte, pos=None, wpe=None, mult=1.0):
    h = F.embedding(ids.long(), wte)
    if mult != 1.0:
        h = h * mult
    if wpe is not None:
        h = h + F.embedding(pos.long(), wpe)
    return h


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("with_pos,mult", [(True, 1.0), (False, 1.0), (True, 0.37), (False, 12.0)])
def test_embed_matches_module_ops(monkeypatch, dtype, with_pos, mult):
    monkeypatch.setattr(triton_embed, "MAX_BLOCK_H", 64)   # several blocks along H, the last one partial
    wte, wpe = tables(dtype)
    ids = torch.tensor([3, 49, 0, 17], dtype=torch.int32, device=DEVICE)
    pos = torch.tensor([0, 39, 5, 5], dtype=torch.int32, device=DEVICE)
    kw = dict(positions=pos, wpe=wpe) if with_pos else {}
    want = expected(ids, wte, pos if with_pos else None, wpe if with_pos else None, mult)
    got = embed(ids, wte, multiplier=mult, **kw)
    assert torch.equal(got, want)
    assert torch.equal(embed_ref(ids, wte, multiplier=mult, **kw), want)


def test_feed_takes_previous_picks():
    """Rows with feed > 0 embed picks[feed - 1]; the others their own id (feed 0)."""
    wte, wpe = tables(torch.float16)
    ids = torch.tensor([3, 4, 5], dtype=torch.int32, device=DEVICE)
    pos = torch.tensor([1, 2, 3], dtype=torch.int32, device=DEVICE)
    picks = torch.tensor([40, 41, 42, 43], dtype=torch.int32, device=DEVICE)
    rows = torch.tensor([4, 0, 1], dtype=torch.int32, device=DEVICE)
    want = expected(torch.tensor([43, 4, 40], device=DEVICE), wte, pos, wpe)
    assert torch.equal(embed(ids, wte, pos, wpe, feed=(rows, picks)), want)
    assert torch.equal(embed_ref(ids, wte, pos, wpe, feed=(rows, picks)), want)


def test_bad_arguments_name_the_problem():
    wte, wpe = tables(torch.float32)
    ids = torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="positions and the position table"):
        embed(ids, wte, positions=ids)
    with pytest.raises(ValueError, match="position table must be"):
        embed(ids, wte, ids, wpe[:, :10].contiguous())
    with pytest.raises(ValueError, match="feed must be"):
        embed(ids, wte, feed=(ids[:1], ids))
