"""The LoRA shrink over a few rows (kernels/triton_lora_rows.py), with the GEMV's norm prologue, against
the float64 definition (lora_cases): sum over splits of v[split, m] = norm(x[m]) A[slot[m]]^T, zero for a
row without an adapter."""
from __future__ import annotations

import pytest
import torch

from gemv_cases import TOL, make  # noqa: E402  (sets TRITON_INTERPRET on CPU first)
from lora_cases import SLOTS, adapters, shrink64, slot_col

pytest.importorskip("triton")

from trt_gpt.kernels.triton_lora_rows import lora_shrink_rows  # noqa: E402


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("norm", [None, "layernorm", "rmsnorm"])
def test_shrink_rows_matches_definition(dtype, norm):
    # K = 100 in 16-wide tiles over 4 splits of 32: the last split holds a 4-column ragged tail
    x, _, _, kw = make(3, 37, 100, dtype, norm=norm, seed=21)
    a, _ = adapters(100, 37, dtype)
    v = lora_shrink_rows(x, a, slot_col(), norm=kw.get("norm"), block_k=16, max_splits=4)
    assert v.shape == (4, 3, 16) and v.dtype == torch.float32
    want = shrink64(x, a, SLOTS, kw.get("norm"))
    assert torch.all(v[:, 1] == 0)          # the row without an adapter contributes nothing
    rel = ((v.sum(0).double() - want).abs().max() / want.abs().max()).item()
    assert rel <= TOL[dtype], rel


def test_shrink_rows_default_tiles():
    x, _, _, kw = make(2, 8, 64, torch.float32, norm="layernorm", seed=22)
    a, _ = adapters(64, 8, torch.float32, r=32)
    v = lora_shrink_rows(x, a, slot_col()[1:], norm=kw["norm"])   # slots [-1, 0]
    want = shrink64(x, a, [-1, 0], kw["norm"])
    assert (v.sum(0).double() - want).abs().max().item() <= 1e-4 * want.abs().max().item()


def test_shrink_rows_argument_errors():
    x, _, _, _ = make(2, 8, 100, torch.float32, seed=28)
    a, _ = adapters(100, 8, torch.float32)
    col = slot_col()
    for args in ((x, a[:, :, :99], col), (x, a.half(), col), (x, a[:, :12], col), (x, a, col[:1]),
                 (x, a, col.long())):
        with pytest.raises(ValueError, match="lora"):
            lora_shrink_rows(*args)
