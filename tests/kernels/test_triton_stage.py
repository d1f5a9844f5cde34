"""The decode graph's input stage kernel (kernels/triton_stage.py): a copy of a host int32 mirror."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("triton")

from trt_gpt.kernels.triton_stage import BLOCK, stage_inputs  # noqa: E402

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.mark.parametrize("n", [1, 37, BLOCK + 5])     # one ragged program, several
def test_stage_copies_the_mirror_prefix_and_nothing_else(n):
    src = torch.randint(-2 ** 31, 2 ** 31 - 1, (n,), dtype=torch.int32)
    dev = torch.device("cuda" if CUDA else "cpu")
    if CUDA:
        src = src.pin_memory()
    dst = torch.full((n + 9,), 7, dtype=torch.int32, device=dev)
    stage_inputs(src, dst)
    assert torch.equal(dst[:n].cpu(), src) and (dst[n:] == 7).all()
    src.add_(1)                       # the mirror changes between calls: the next stage sees the new values
    stage_inputs(src, dst)
    assert torch.equal(dst[:n].cpu(), src)


def test_stage_rejects_bad_buffers():
    with pytest.raises(ValueError, match="1-D int32"):
        stage_inputs(torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int32))
    with pytest.raises(ValueError, match=">= 5 entries"):
        stage_inputs(torch.zeros(5, dtype=torch.int32), torch.zeros(4, dtype=torch.int32))
    if CUDA:
        with pytest.raises(ValueError, match="pinned"):
            stage_inputs(torch.zeros(4, dtype=torch.int32), torch.zeros(4, dtype=torch.int32, device="cuda"))
