"""Greedy picks from the lm_head GEMV's epilogue (kernels/triton_argmax.py): each row's pick must be
`torch.argmax` of the logits the same call returns (lowest index on ties, padding columns excluded), and on
well-separated logits the argmax of a float64 computation; the copy in host memory (`HostPicks`) must land
in the buffer the device-side index names and nowhere else. Triton runs interpreted without a GPU."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel modules define their @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from trt_gpt.kernels.gemv_configs import GemvConfig  # noqa: E402
from trt_gpt.kernels.triton_argmax import ArgmaxOut, HostPicks, store_host_picks  # noqa: E402
from trt_gpt.kernels.triton_gemv import NormArgs, fused_linear  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
I32 = dict(dtype=torch.int32, device=DEVICE)


def picks_of(x, w, b=None, vocab=None, **kw):
    picks = torch.full((x.shape[0],), -7, **I32)
    out = fused_linear(x, w, b, out_dtype=torch.float32, argmax=ArgmaxOut(picks, vocab or w.shape[0]), **kw)
    return out, picks


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("block_n", [4, 16])
def test_picks_are_the_argmax_of_the_logits(m, dtype, block_n):
    gen = torch.Generator().manual_seed(m * 10 + block_n)
    n, k, vocab = 300, 64, 290       # 10 padding columns, never picked
    x = torch.randn(m, k, generator=gen).to(dtype).to(DEVICE)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(dtype).to(DEVICE)
    b = torch.zeros(n, dtype=dtype, device=DEVICE)
    b[vocab:] = 100.0                # padding columns with large logits
    norm = NormArgs("layernorm", torch.ones(k, dtype=dtype, device=DEVICE), None, 1e-5)
    out, picks = picks_of(x, w, b, vocab=vocab, norm=norm, config=GemvConfig(block_n, 64, 4, 1))
    assert out[:, vocab:].max() > out[:, :vocab].max()       # the padding would win an unmasked argmax
    assert torch.equal(picks.long(), out[:, :vocab].argmax(-1))
    # the float64 oracle agrees where the top two logits are apart by more than the rounding
    h = torch.nn.functional.layer_norm(x.double(), (k,), eps=1e-5).to(dtype).double()
    ref = h @ w[:vocab].double().T
    top2 = ref.topk(2, dim=-1).values
    sure = (top2[:, 0] - top2[:, 1]) > 1e-2
    assert sure.any()
    assert torch.equal(picks.long()[sure], ref.argmax(-1)[sure])


@pytest.mark.parametrize("block_n", [4, 16])
def test_ties_pick_the_lowest_index_within_and_across_tiles(block_n):
    # zero weights: the logits are exactly the bias, so ties are exact
    n, k = 100, 32
    w = torch.zeros(n, k, device=DEVICE)
    x = torch.randn(3, k, device=DEVICE)
    b = torch.linspace(-1, 0, n, device=DEVICE)
    b[[37, 38, 70]] = 5.0            # a tie inside one tile (37, 38) and with a later tile (70)
    b[95:] = 9.0                     # padding columns
    out, picks = picks_of(x, w, b, vocab=95, config=GemvConfig(block_n, 32, 4, 1))
    assert picks.tolist() == [37, 37, 37]
    assert torch.equal(picks.long(), out[:, :95].argmax(-1))
    # every logit equal: index 0, as torch.argmax answers
    _, picks = picks_of(x, w, torch.zeros(n, device=DEVICE), config=GemvConfig(block_n, 32, 4, 1))
    assert picks.tolist() == [0, 0, 0]


def test_argmax_out_is_checked():
    x, w = torch.randn(2, 32, device=DEVICE), torch.randn(50, 32, device=DEVICE)
    with pytest.raises(ValueError, match="argmax.picks"):
        fused_linear(x, w, argmax=ArgmaxOut(torch.zeros(2, dtype=torch.int64, device=DEVICE), 50))
    with pytest.raises(ValueError, match="argmax.vocab"):
        fused_linear(x, w, argmax=ArgmaxOut(torch.zeros(2, **I32), 51))


def host_buffers(n: int) -> torch.Tensor:
    buf = torch.full((2, n), -5, dtype=torch.int32)
    return buf.pin_memory() if DEVICE.type == "cuda" else buf


@pytest.mark.parametrize("index", [0, 1])
def test_host_picks_land_in_the_indexed_buffer(index):
    gen = torch.Generator().manual_seed(21 + index)
    m, n, k = 3, 200, 32
    x, w = torch.randn(m, k, generator=gen).to(DEVICE), torch.randn(n, k, generator=gen).to(DEVICE)
    buffers = host_buffers(5)
    host = HostPicks(buffers, torch.tensor([index], **I32))
    picks = torch.full((m,), -7, **I32)
    out = fused_linear(x, w, out_dtype=torch.float32, argmax=ArgmaxOut(picks, n, host),
                       config=GemvConfig(16, 32, 4, 1))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    expect = out.argmax(-1).int().cpu()
    assert torch.equal(picks.cpu(), expect)
    assert torch.equal(buffers[index, :m], expect)
    assert (buffers[index, m:] == -5).all() and (buffers[1 - index] == -5).all()   # nothing else written


def test_store_host_picks_alone_and_its_checks():
    picks = torch.tensor([4, 9, 2], **I32)
    buffers = host_buffers(4)
    store_host_picks(picks, HostPicks(buffers, torch.tensor([1], **I32)))
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    assert buffers[1].tolist() == [4, 9, 2, -5] and (buffers[0] == -5).all()
    with pytest.raises(ValueError, match="buffers must be int32"):
        store_host_picks(picks, HostPicks(torch.zeros(2, 2, dtype=torch.int32), torch.tensor([0], **I32)))
    with pytest.raises(ValueError, match="index must be int32"):
        store_host_picks(picks, HostPicks(buffers, torch.tensor([0], dtype=torch.int64, device=DEVICE)))
    if DEVICE.type == "cuda":
        with pytest.raises(ValueError, match="pinned"):
            store_host_picks(picks, HostPicks(torch.zeros(2, 4, dtype=torch.int32), torch.tensor([0], **I32)))
