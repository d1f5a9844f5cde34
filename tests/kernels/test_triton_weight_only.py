"""The weight-only linear kernels (GEMV, tensor-core GEMM, dequantize + matmul) and their torch reference
against a float64 oracle written here from the format's definition: the test draws the integer weights,
packs INT4 bytes by hand (low nibble = column 2j, high nibble = column 2j + 1), and the oracle multiplies
the drawn integers by their scales in float64, so nothing is shared with the module's unpacker. Shapes
are tiny and N odd, so tails of every tile run under the Triton interpreter."""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before the kernel module defines its @triton.jit functions
    os.environ.setdefault("TRITON_INTERPRET", "1")

pytest.importorskip("triton")

from gemv_cases import oracle as fused_oracle  # noqa: E402  (the decode GEMV's float64 oracle)

from trt_gpt.kernels import weight_only_configs  # noqa: E402
from trt_gpt.kernels.triton_gemv import NormArgs  # noqa: E402
from trt_gpt.kernels.triton_weight_only import dequantize_weight, fp8_gemv, weight_only_linear  # noqa: E402
from trt_gpt.kernels.weight_only_configs import (WoConfig, heuristic_config, parse_wo_configs,  # noqa: E402
                                                 wo_config)
from trt_gpt.kernels.weight_only_ref import (dequantize, pack_int4, unpack_int4,  # noqa: E402
                                             weight_only_linear_ref)

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 2e-2}
BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(
    INTERPRET, reason="the interpreter is unreliable for bf16 (numpy has no bfloat16)"))


def hand_pack(q: torch.Tensor) -> torch.Tensor:
    """Two's-complement nibbles, column 2j low and 2j + 1 high, written out byte by byte."""
    n, k = q.shape
    out = torch.empty(n, k // 2, dtype=torch.int8)
    for i in range(n):
        for j in range(k // 2):
            lo, hi = int(q[i, 2 * j]) % 16, int(q[i, 2 * j + 1]) % 16
            byte = lo + 16 * hi
            out[i, j] = byte - 256 if byte > 127 else byte
    return out


def make(m, n, k, bits, group, dtype, *, bias=True, prequant=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qmax = 7 if bits == 4 else 127
    q = torch.randint(-qmax - 1, qmax + 1, (n, k), generator=gen)
    ngroups = k // group if group else 1
    s = (torch.rand(n, ngroups, generator=gen) * 0.02 + 0.005) / (1 if bits == 4 else 16)
    scales = (s if group else s[:, 0]).to(dtype)
    weight = hand_pack(q) if bits == 4 else q.to(torch.int8)
    x = torch.randn(m, k, generator=gen).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype) if bias else None
    pq = (torch.rand(k, generator=gen) + 0.5).to(dtype) if prequant else None
    dev = [t.to(DEVICE) if t is not None else None for t in (x, weight, scales, b, pq)]
    return q, dev


def oracle(q, x, scales, b, pq, group):
    """float64: x (times prequant, stored in x's dtype) @ (q * s)^T + b."""
    xd = x.double().cpu()
    if pq is not None:
        xd = (xd * pq.double().cpu()).to(x.dtype).double()
    s = scales.double().cpu()
    s_full = s.repeat_interleave(group, dim=1) if group else s[:, None]
    y = xd @ (q.double() * s_full).T
    return y + b.double().cpu() if b is not None else y


def check(out, ref, dtype):
    assert not torch.isnan(out).any()
    rel = ((out.double().cpu() - ref).abs().max() / ref.abs().max()).item()
    assert rel <= TOL[dtype], f"rel err {rel}"


def test_pack_unpack_int4_follow_the_byte_layout():
    q = torch.randint(-8, 8, (5, 12), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    q[0, :4] = torch.tensor([-8, 7, -1, 0])
    packed = pack_int4(q)
    assert torch.equal(packed, hand_pack(q))
    assert packed[0, 0].item() == 0x78 and packed[0, 1].item() == 0x0F   # lo -8 (0x8) | hi 7 (0x7); -1 | 0
    assert torch.equal(unpack_int4(packed), q)
    with pytest.raises(ValueError, match="-8, 7"):
        pack_int4(torch.tensor([[8, 0]]))
    with pytest.raises(ValueError, match="even"):
        pack_int4(torch.zeros(2, 3, dtype=torch.int8))


@pytest.mark.parametrize("bits,group", [(8, None), (8, 16), (4, None), (4, 32)])
def test_reference_matches_oracle(bits, group):
    q, (x, w, s, b, pq) = make(5, 13, 64, bits, group, torch.float32, prequant=True)
    check(weight_only_linear_ref(x.cpu(), w.cpu(), s.cpu(), b.cpu(), bits=bits, group_size=group, prequant=pq.cpu()),
          oracle(q, x, s, b, pq, group), torch.float32)
    assert torch.equal(dequantize(w.cpu(), s.cpu(), group, bits),
                       (q.float() * (s.cpu().repeat_interleave(group, 1) if group else s.cpu()[:, None])))


@pytest.mark.parametrize("m", [1, 3, 17])
@pytest.mark.parametrize("bits,group", [(8, None), (8, 32), (4, None), (4, 32)])
def test_default_dispatch(m, bits, group):
    q, (x, w, s, b, pq) = make(m, 37, 96, bits, group, torch.float32, prequant=True, seed=m)
    out = weight_only_linear(x, w, s, b, bits=bits, group_size=group, prequant=pq)
    assert out.shape == (m, 37) and out.dtype == torch.float32
    check(out, oracle(q, x, s, b, pq, group), torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, BF16])
@pytest.mark.parametrize("kernel,m", [("gemv", 2), ("gemm", 17), ("dequant", 3), ("gemm", 1)])
@pytest.mark.parametrize("bits", [4, 8])
def test_half_inputs(kernel, m, dtype, bits):
    # int8 in the fp16 GEMM: the byte goes straight into an fp16 mantissa (every value -128..127 exact)
    q, (x, w, s, b, pq) = make(m, 21, 64, bits, 32, dtype, prequant=True, seed=1)
    if bits == 8:
        q[0, :8] = torch.tensor([-128, 127, -1, 0, 1, 64, -64, 100], dtype=q.dtype)
        w = q.to(torch.int8).to(w.device)
    cfg = WoConfig(kernel, 16, 32, block_m=16)
    check(weight_only_linear(x, w, s, b, bits=bits, group_size=32, prequant=pq, config=cfg),
          oracle(q, x, s, b, pq, 32), dtype)


CONFIGS = [
    WoConfig("gemv", 8, 32, split_k=2),                 # split K: partials + reduce kernel
    WoConfig("gemv", 4, 64, cvt="i2f"),                 # conversion instructions; block_k > group 16
    WoConfig("gemv", 32, 128),                          # one tile wider than K=96: masked tail
    WoConfig("gemv", 8, 32, num_stages=2, split_k=2),   # hand double-buffering, even K
    WoConfig("gemv", 8, 64, num_stages=2),              # double-buffering with a masked tail
    WoConfig("gemm", 16, 32, block_m=16, split_k=3),    # uneven split of 3 K tiles
    WoConfig("gemm", 32, 64, block_m=32, cvt="i2f"),
    WoConfig("dequant", 16, 32),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: c.short())
@pytest.mark.parametrize("bits,group", [(8, None), (8, 16), (4, None), (4, 16)])
def test_forced_configs(cfg, bits, group):
    m = 3 if cfg.kernel == "gemv" else 18
    q, (x, w, s, b, pq) = make(m, 19, 96, bits, group, torch.float32, bias=cfg.block_n != 8, seed=2)
    check(weight_only_linear(x, w, s, b, bits=bits, group_size=group, config=cfg),
          oracle(q, x, s, b, None, group), torch.float32)


@pytest.mark.parametrize("group", [None, 16, 32])
@pytest.mark.parametrize("m,cfg", [(1, WoConfig("gemv", 8, 64, cvt="fold")),          # groups of 16: a scale a word
                                   (5, WoConfig("gemv", 16, 32, split_k=2, cvt="fold")),
                                   (3, WoConfig("gemv", 4, 128, cvt="fold"))])   # one tile wider than K
def test_int4_offset_folding(m, cfg, group):
    # weights as 1 + (v + 8) / 16 and the offset removed through sums of x: large |x| means stress the
    # cancellation, half inputs the rounding of x * prequant
    for dtype in (torch.float32, torch.float16):
        q, (x, w, s, b, pq) = make(m, 19, 96, 4, group, dtype, prequant=True, seed=m)
        x = x + 3.0
        check(weight_only_linear(x, w, s, b, bits=4, group_size=group, prequant=pq, config=cfg),
              oracle(q, x, s, b, pq, group), dtype)
    with pytest.raises(ValueError, match="int4 with groups of >= 8"):
        weight_only_linear(x, w, s.new_ones(19, 24), bits=4, group_size=4, config=cfg)
    with pytest.raises(ValueError, match="gemv and gemm kernels only"):
        WoConfig("dequant", 16, 32, cvt="fold")


@pytest.mark.parametrize("group", [None, 32])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, BF16])
def test_int4_offset_folding_gemm(group, dtype):
    # nibble planes as (v + 24) / 16 in x's dtype, interleaved back to column order for one dot per tile
    cfg = WoConfig("gemm", 16, 32, block_m=16, split_k=2, cvt="fold")
    q, (x, w, s, b, pq) = make(18, 21, 96, 4, group, dtype, prequant=True, seed=5)
    x = x + 2.0
    check(weight_only_linear(x, w, s, b, bits=4, group_size=group, prequant=pq, config=cfg),
          oracle(q, x, s, b, pq, group), dtype)
    if group:
        with pytest.raises(ValueError, match="block_k <= group_size"):
            weight_only_linear(x, w, s, bits=4, group_size=group, config=WoConfig("gemm", 16, 64, cvt="fold"))


@pytest.mark.parametrize("cfg,bits,group", [
    (WoConfig("gemv", 8, 64, cvt="fold"), 4, None),
    (WoConfig("gemv", 16, 32, split_k=2, num_stages=2, cvt="fold"), 4, 32),  # split K: the reduce's epilogue
    (WoConfig("gemv", 8, 32), 4, 32),
    (WoConfig("gemv", 4, 64, num_stages=2, cvt="fold"), 4, 16),   # tiles wider than a group: scales per word
    (WoConfig("gemv", 4, 64, num_stages=2), 4, 16),
    (WoConfig("gemv", 8, 64, split_k=2), 8, None),
    (WoConfig("gemm", 16, 32, block_m=16, cvt="fold"), 4, 32),    # epilogue only (no norm in the GEMM)
], ids=lambda v: v.short() if isinstance(v, WoConfig) else str(v))
@pytest.mark.parametrize("norm_kind,dtype", [("layernorm", torch.float32), ("rmsnorm", torch.float32),
                                             ("layernorm", torch.float16)])
def test_decode_fusions(cfg, bits, group, norm_kind, dtype):
    # the decode GEMV's function with integer weights: the decode GEMV's oracle on the dequantized weight
    m = 3 if cfg.kernel == "gemv" else 18
    q, (x, w, s, b, _) = make(m, 19, 96, bits, group, dtype, seed=6)
    gen = torch.Generator().manual_seed(7)
    norm = None
    if cfg.kernel == "gemv":
        nb = (torch.randn(96, generator=gen) * 0.5).to(dtype).to(DEVICE) if norm_kind == "layernorm" else None
        norm = NormArgs(norm_kind, (torch.randn(96, generator=gen) * 0.5 + 1).to(dtype).to(DEVICE), nb, 1e-5)
    residual = torch.randn(m, 19, generator=gen).to(dtype).to(DEVICE)
    s_full = s.cpu().double().repeat_interleave(group, 1) if group else s.cpu().double()[:, None]
    ref = fused_oracle(x.cpu(), q.double() * s_full, b.cpu(), norm=None if norm is None else NormArgs(
        norm.kind, norm.weight.cpu(), None if norm.bias is None else norm.bias.cpu(), norm.eps),
        activation="gelu", residual=residual.cpu(), residual_scale=0.7)
    got = weight_only_linear(x, w, s, b, bits=bits, group_size=group, config=cfg, norm=norm, activation="gelu",
                             residual=residual, residual_scale=0.7)
    check(got, ref, dtype)


@pytest.mark.parametrize("cfg", [None, WoConfig("gemm", 16, 32, block_m=16, cvt="fp8"),
                                 WoConfig("gemm", 16, 32, block_m=16, split_k=2, cvt="fp8")],
                         ids=lambda c: c.short() if c else "default")
@pytest.mark.parametrize("m,k,norm_kind,dtype", [(1, 96, None, torch.float32), (3, 100, "layernorm", torch.float32),
                                                 (2, 64, "rmsnorm", torch.float16)])
def test_fp8_gemv_matches_the_fp8_definition(m, k, norm_kind, dtype, cfg):
    # e4m3 weights and a static activation scale: x [normalised, rounded to its dtype] / s_x saturated to
    # +-448 and rounded to e4m3 (triton_quant, the GEMV's producer), products summed, times s_x * s_w, then
    # bias / activation / residual. The oracle composes that in float64 from torch's float8 cast (K = 100
    # leaves a tail tile)
    from trt_gpt.kernels.triton_quant import quantize_rows_fp8

    gen = torch.Generator().manual_seed(11)
    n = 19
    w_q = (torch.randn(n, k, generator=gen) * 40).clamp(-448, 448).to(torch.float8_e4m3fn)
    s_w, s_x = torch.tensor([0.003]), torch.tensor([0.02])
    x = (torch.randn(m, k, generator=gen) * 2).to(dtype)
    b = torch.randn(n, generator=gen).to(dtype)
    residual = torch.randn(m, n, generator=gen).to(dtype)
    norm = None
    if norm_kind is not None:
        nb = (torch.randn(k, generator=gen) * 0.5).to(dtype) if norm_kind == "layernorm" else None
        norm = NormArgs(norm_kind, (torch.randn(k, generator=gen) * 0.5 + 1).to(dtype), nb, 1e-5)
    h = fused_oracle(x, torch.eye(k, dtype=torch.float64), norm=norm).to(dtype)   # norm(x) as stored
    x_q = (h.float() / s_x).clamp(-448, 448).to(torch.float8_e4m3fn)
    ref = fused_oracle(x_q.double() * s_x.double(), w_q.double() * s_w.double(), b, activation="gelu",
                       residual=residual, residual_scale=0.7)
    dev = lambda t: t.to(DEVICE) if t is not None else None  # noqa: E731
    got_q = quantize_rows_fp8(dev(x), dev(s_x), norm=None if norm is None else NormArgs(
        norm.kind, dev(norm.weight), dev(norm.bias), norm.eps))
    # the quantized input: equal bytes but where fp32 and float64 norms round across an e4m3 boundary
    assert (got_q.cpu().float() != x_q.float()).float().mean() <= 0.02
    got = fp8_gemv(got_q, dev(w_q), dev(s_w), dev(s_x), dev(b), out_dtype=dtype, activation="gelu",
                   residual=dev(residual), residual_scale=0.7, config=cfg)
    check(got, ref, dtype)
    exact = fp8_gemv(dev(x_q), dev(w_q), dev(s_w), dev(s_x), dev(b), out_dtype=torch.float32, config=cfg)
    check(exact, fused_oracle(x_q.double() * s_x.double(), w_q.double() * s_w.double(), b), torch.float32)


def test_fusion_arguments():
    q, (x, w, s, b, _) = make(2, 8, 64, 4, None, torch.float32)
    norm = NormArgs("layernorm", torch.ones(64, device=DEVICE), None, 1e-5)
    with pytest.raises(ValueError, match="gemv kernel only"):
        weight_only_linear(x, w, s, bits=4, norm=norm, config=WoConfig("gemm", 16, 32, block_m=16))
    with pytest.raises(ValueError, match="dequant kernel takes no"):
        weight_only_linear(x, w, s, bits=4, activation="relu", config=WoConfig("dequant", 16, 32))
    with pytest.raises(ValueError, match="activation 'tanh'"):
        weight_only_linear(x, w, s, bits=4, activation="tanh")
    with pytest.raises(ValueError, match="residual must be"):
        weight_only_linear(x, w, s, bits=4, residual=torch.zeros(2, 7, device=DEVICE))
    with pytest.raises(ValueError, match="norm.weight must be"):
        weight_only_linear(x, w, s, bits=4, norm=NormArgs("rmsnorm", torch.ones(63, device=DEVICE), None, 1e-5))


def test_leading_dims_and_out_dtype():
    q, (x, w, s, b, pq) = make(6, 11, 64, 8, None, torch.float16, seed=3)
    out = weight_only_linear(x.reshape(2, 3, 64), w, s, b, bits=8, out_dtype=torch.float32)
    assert out.shape == (2, 3, 11) and out.dtype == torch.float32
    check(out.reshape(6, 11), oracle(q, x, s, b, None, None), torch.float16)


@pytest.mark.parametrize("bits,group", [(8, 16), (4, None)])
def test_dequantize_weight_kernel(bits, group):
    q, (x, w, s, b, pq) = make(1, 7, 96, bits, group, torch.float32, seed=4)
    s_full = s.cpu().double().repeat_interleave(group, 1) if group else s.cpu().double()[:, None]
    got = dequantize_weight(w, s, bits=bits, group_size=group, dtype=torch.float32)
    assert torch.allclose(got.cpu().double(), q.double() * s_full, rtol=1e-6, atol=0)


def test_bad_arguments():
    q, (x, w, s, b, pq) = make(2, 8, 64, 4, 32, torch.float32, prequant=True)
    call = weight_only_linear
    with pytest.raises(ValueError, match="bits must be one of"):
        call(x, w, s, bits=3, group_size=32)
    with pytest.raises(ValueError, match=r"must be \[N, 64\]"):
        call(x, w, s, bits=8, group_size=32)                       # int4-packed weight read as int8
    with pytest.raises(ValueError, match="group-wise scales must be"):
        call(x, w, s[:, :1], bits=4, group_size=32)
    with pytest.raises(ValueError, match="per-channel scales"):
        call(x, w, s, bits=4)
    with pytest.raises(ValueError, match="power of two"):
        call(x, w, s, bits=4, group_size=48)
    with pytest.raises(ValueError, match="bias must be"):
        call(x, w, s, b[:5], bits=4, group_size=32)
    with pytest.raises(ValueError, match="prequant must be"):
        call(x, w, s, bits=4, group_size=32, prequant=pq[:10])
    with pytest.raises(ValueError, match="2-D int8"):
        call(x, w.float(), s, bits=4, group_size=32)
    with pytest.raises(ValueError, match="M <= 16"):
        call(torch.zeros(17, 64, device=DEVICE), w, s, bits=4, group_size=32, config=WoConfig("gemv", 8, 32))
    with pytest.raises(ValueError, match="power of two"):
        WoConfig("gemv", 3, 32)
    with pytest.raises(ValueError, match="kernel must be"):
        WoConfig("cutlass", 8, 32)


def test_config_selection_and_file_format(tmp_path, monkeypatch):
    assert heuristic_config(1, 2048, 2048, 4, 128).kernel == "gemv"
    assert heuristic_config(2, 4608, 4608, 4, 128).kernel == "gemv"
    assert heuristic_config(256, 4608, 4608, 4, 128).kernel == "gemm"
    # decode tiles: 512-byte row segments (wider than a scale group) and a prefetched next tile
    assert heuristic_config(1, 2048, 2048, 4, 128).block_k == 1024
    assert heuristic_config(1, 2048, 2048, 4, 128).num_stages == 2
    # INT4 layers above 2^24 weights at M = 1: the tensor-core GEMM, K split to ~600 programs
    big = heuristic_config(1, 4608, 4608, 4, 128)
    assert (big.kernel, big.block_m, big.block_k, big.split_k) == ("gemm", 16, 128, 8)
    assert heuristic_config(1, 4608, 4608, 8, None).kernel == "gemv"          # INT8 keeps the GEMV
    path = tmp_path / "wo.json"
    path.write_text('{"int4g128,1,4608,4608": {"kernel": "dequant", "block_n": 16, "block_k": 128}}')
    monkeypatch.setenv("TRT_GPT_WO_CONFIGS", str(path))
    monkeypatch.setattr(weight_only_configs, "OVERRIDES", {})          # the file's entries stay in this test
    monkeypatch.setattr(weight_only_configs, "_loaded_from", [])
    assert wo_config(1, 4608, 4608, 4, 128).kernel == "dequant"
    # FP8 looks up its own key only: an INT8 entry may name a kernel without an e4m3 variant
    path.write_text('{"int8,1,4608,4608": {"kernel": "dequant", "block_n": 16, "block_k": 128}, '
                    '"fp8,1,2048,4608": {"kernel": "gemm", "block_n": 64, "block_k": 128, "cvt": "fp8"}}')
    monkeypatch.setattr(weight_only_configs, "_loaded_from", [])
    assert weight_only_configs.fp8_config(1, 4608, 4608).short() == heuristic_config(1, 4608, 4608, 8, None).short() \
        + "-fp8"
    assert weight_only_configs.fp8_config(1, 2048, 4608).kernel == "gemm"
    with pytest.raises(ValueError, match="expected"):
        parse_wo_configs('{"int4,1,2,3": [1, 2]}', "f.json")
    for cfg in CONFIGS:
        assert WoConfig.from_short(cfg.short()) == cfg
    with pytest.raises(ValueError, match="is not like"):
        WoConfig.from_short("gemm:8x512w4s1")


def test_norm_runs_apart_when_the_chosen_kernel_has_no_prologue(monkeypatch):
    # a measured table may pick the tensor-core GEMM for a decode shape: the norm then runs before it, and the
    # result is still norm(x) @ W^T + b -> activation -> residual
    import trt_gpt.kernels.triton_weight_only as wo

    monkeypatch.setattr(wo, "wo_config", lambda *a, **k: WoConfig("gemm", 16, 32, block_m=16))
    q, (x, w, s, b, _) = make(1, 19, 96, 4, 32, torch.float32, seed=9)
    gen = torch.Generator().manual_seed(3)
    norm = NormArgs("layernorm", (torch.randn(96, generator=gen) * 0.5 + 1).to(DEVICE),
                    (torch.randn(96, generator=gen) * 0.5).to(DEVICE), 1e-5)
    residual = torch.randn(1, 19, generator=gen).to(DEVICE)
    ref = fused_oracle(x.cpu(), q.double() * s.cpu().double().repeat_interleave(32, 1), b.cpu(),
                       norm=NormArgs("layernorm", norm.weight.cpu(), norm.bias.cpu(), 1e-5), activation="gelu",
                       residual=residual.cpu(), residual_scale=0.5)
    got = weight_only_linear(x, w, s, b, bits=4, group_size=32, norm=norm, activation="gelu", residual=residual,
                             residual_scale=0.5)
    check(got, ref, torch.float32)
    with pytest.raises(ValueError, match="norm prologue exists in the gemv kernel only"):   # a forced config
        weight_only_linear(x, w, s, b, bits=4, group_size=32, norm=norm, config=WoConfig("gemm", 16, 32))
