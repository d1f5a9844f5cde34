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


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("with_pos,mult", [(True, 1.0), (False, 2.5)])
def test_prompt_table_rows(monkeypatch, dtype, with_pos, mult):
    """ids >= vocab read row id - vocab of the prompt table, mixed with real tokens in one step, fed rows
    too; against a float64 computation from the definition, rounded once per op as the module path does."""
    monkeypatch.setattr(triton_embed, "MAX_BLOCK_H", 64)
    wte, wpe = tables(dtype)
    vocab = wte.shape[0]
    table = torch.randn(7, wte.shape[1], generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    ids = torch.tensor([vocab + 6, 3, vocab, 49, vocab + 2, 0], dtype=torch.int32, device=DEVICE)
    pos = torch.tensor([0, 1, 2, 3, 4, 39], dtype=torch.int32, device=DEVICE)
    picks = torch.tensor([11], dtype=torch.int32, device=DEVICE)
    rows = torch.tensor([0, 0, 0, 0, 0, 1], dtype=torch.int32, device=DEVICE)   # the last row takes pick 11
    want = []
    for i, t in enumerate([vocab + 6, 3, vocab, 49, vocab + 2, 11]):
        e = (table[t - vocab] if t >= vocab else wte[t]).double()
        if mult != 1.0:
            e = (e * mult).to(dtype).double()
        if with_pos:
            e = (e + wpe[pos[i]].double()).to(dtype).double()
        want.append(e)
    want = torch.stack(want).to(dtype)
    kw = dict(positions=pos, wpe=wpe) if with_pos else {}
    got = embed(ids, wte, multiplier=mult, feed=(rows, picks), prompt=(table, vocab), **kw)
    ref = embed_ref(ids, wte, multiplier=mult, feed=(rows, picks), prompt=(table, vocab), **kw)
    assert torch.equal(got, want)
    assert torch.equal(ref, want)


def test_prompt_table_through_a_lookup():
    """With the model's tensor-parallel lookup in place of the plain gather, virtual tokens never reach the
    lookup (it sees a valid vocabulary id) and take the full-width table row."""
    wte, _ = tables(torch.float32)
    vocab = wte.shape[0]
    table = torch.randn(3, wte.shape[1], generator=torch.Generator().manual_seed(2)).to(DEVICE)
    seen = []

    def lookup(tok):
        seen.append(tok.clone())
        return F.embedding(tok, wte)

    ids = torch.tensor([vocab + 1, 5], dtype=torch.int32, device=DEVICE)
    out = embed_ref(ids, wte[:, :10].contiguous(), lookup=lookup, prompt=(table, vocab))
    assert int(seen[0].max()) < vocab
    assert torch.equal(out[0], table[1]) and torch.equal(out[1], wte[5])


def test_bad_prompt_table():
    wte, _ = tables(torch.float32)
    ids = torch.tensor([1, 2], dtype=torch.int32, device=DEVICE)
    with pytest.raises(ValueError, match="prompt table must be"):
        embed(ids, wte, prompt=(torch.zeros(4, 10, device=DEVICE), 50))
    with pytest.raises(ValueError, match="prompt table must be"):
        embed_ref(ids, wte, prompt=(torch.zeros(4, 200, dtype=torch.float16, device=DEVICE), 50))
