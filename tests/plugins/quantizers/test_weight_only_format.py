"""The weight-only storage format against definitions written here: nibble order and sign of the INT4
packing, round-to-nearest scales and integers, dequantization and the reference linear."""
from __future__ import annotations

import pytest
import torch

from trt_gpt.errors import TrtGptError
from trt_gpt_plugins.quantizers.weight_only_format import (check_group, dequantize, pack_int4, quantize_rtn,
                                                           unpack_int4, weight_only_linear)


def test_int4_packing_layout_by_hand():
    q = torch.tensor([[1, -2, 7, -8, 0, 3]], dtype=torch.int8)
    packed = pack_int4(q)
    # byte j = low nibble column 2j, high nibble column 2j+1, two's complement nibbles
    want = [(1 & 0xF) | ((-2 & 0xF) << 4), (7 & 0xF) | ((-8 & 0xF) << 4), 0 | (3 << 4)]
    assert packed.view(torch.uint8).tolist() == [want]
    assert unpack_int4(packed).tolist() == q.tolist()


def test_int4_roundtrip_all_values():
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))
    q = torch.arange(-8, 8, dtype=torch.int8).repeat(3, 4)[:, perm]
    assert torch.equal(unpack_int4(pack_int4(q)), q)


def rtn_oracle(w: torch.Tensor, qmax: int, qmin: int, group: int | None):
    """Round-to-nearest symmetric, float64, written from the definition."""
    w64 = w.double()
    g = w.shape[1] if group is None else group
    blocks = w64.reshape(w.shape[0], -1, g)
    scale = (blocks.abs().amax(-1) / qmax).float().double()     # stored in fp32 here
    q = torch.round(blocks / scale[..., None]).clamp(qmin, qmax).reshape(w.shape)
    return q.to(torch.int8), scale if group is not None else scale[:, 0]


@pytest.mark.parametrize("bits,group", [(8, None), (4, None), (4, 16)])
def test_rtn_equals_definition(bits, group):
    w = torch.randn(12, 64, generator=torch.Generator().manual_seed(1))
    q, scale = quantize_rtn(w, bits, group, torch.float32)
    want_q, want_s = rtn_oracle(w, 127 if bits == 8 else 7, -127 if bits == 8 else -8, group)
    torch.testing.assert_close(scale.double(), want_s, rtol=0, atol=0)
    assert (q != want_q).sum() == 0
    assert q.abs().max() == (127 if bits == 8 else 7)     # the row maximum maps to qmax


def test_zero_rows_and_groups_quantize_to_zero():
    w = torch.zeros(2, 32)
    w[1, 16:] = torch.linspace(-1, 1, 16)
    q, scale = quantize_rtn(w, 4, 16, torch.float16)
    assert scale[0].tolist() == [1.0, 1.0] and scale[1, 0] == 1.0 and q[0].abs().sum() == 0


@pytest.mark.parametrize("bits,group,prequant", [(8, None, False), (4, None, False), (4, 16, False), (4, 16, True)])
def test_reference_linear_is_dequantized_matmul(bits, group, prequant):
    g = torch.Generator().manual_seed(2)
    w, x, b = torch.randn(10, 32, generator=g), torch.randn(5, 32, generator=g), torch.randn(10, generator=g)
    q, scale = quantize_rtn(w, bits, group, torch.float32)
    stored = pack_int4(q) if bits == 4 else q
    p = torch.rand(32, generator=g) + 0.5 if prequant else None
    # float64 oracle: integers times their row (group) scale, input columns times p
    s64 = scale.double()[:, None] if group is None else scale.double().repeat_interleave(group, dim=1)
    w_hat = q.double() * s64
    x64 = x.double() * p.double() if prequant else x.double()
    want = x64 @ w_hat.T + b.double()
    got = weight_only_linear(x, stored, scale, bits, b, p)
    torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dequantize(stored, scale, bits, torch.float64), w_hat)


def test_group_must_divide_input():
    with pytest.raises(TrtGptError, match="group_size 48 does not divide the layer's input dimension 64"):
        check_group(64, 48, "layer")
