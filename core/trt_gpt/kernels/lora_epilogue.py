"""The LoRA epilogue of the fused decode GEMV (`triton_gemv.fused_linear(..., lora=LoraEpilogue(...))`).

A step of a few rows adds each row's adapter delta inside the GEMV that computes the base product, instead
of the module path's separate shrink and expand kernels over the layer's output:

    y[m, n] += sum_r v[m, r] * B[slot[m], n, r]        (fp32, before the bias and the activation)

`v` are the shrink's fp32 partials [splits, M, R] (`triton_lora_rows.lora_shrink_rows`: norm(x) A[slot]^T,
one partial per K range), summed here in one fixed-order reduction; B is the slot pool's [slots, N, R] with
the adapter's scale folded in; `slots` the pool's per-token slot column (-1: no adapter, the row adds
nothing). For 16-bit pools v is rounded to B's dtype first, as the module path's expand kernel rounds it
(`triton_lora._expand_kernel`, like a 16-bit PEFT model's lora_A output).

B and the slots are weights and a host upload, which no kernel of a PDL chain writes: the GEMV gathers its
B tile before `gdc_wait` (triton_common.use_pdl). v comes from the kernel just before and is read after it.
`lora_ref.lora_epilogue_ref` is the torch reference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .triton_common import next_pow2


@dataclass(frozen=True)
class LoraEpilogue:
    """Per-row adapter deltas for a fused GEMV: shrink partials `v` fp32 [splits, M, R], pool B [slots, N, R]
    (scale folded in, unit stride along R), each row's slot int32 [>= M] (-1: none)."""
    v: torch.Tensor
    b: torch.Tensor
    slots: torch.Tensor


def check_lora_epilogue(lora: LoraEpilogue | None, m: int, n: int, device: torch.device) -> None:
    """ValueError (naming `lora`) unless `lora` fits a GEMV of M rows and N output columns."""
    if lora is None:
        return
    v, b, s = lora.v, lora.b, lora.slots
    if v.dim() != 3 or v.shape[1] != m or v.dtype != torch.float32 or v.stride(2) != 1:
        raise ValueError(f"fused_linear: lora.v must be fp32 [splits, {m}, R] with unit stride along R, got "
                         f"{tuple(v.shape)} {v.dtype}")
    r = v.shape[2]
    if r < 1 or r & (r - 1):
        raise ValueError(f"fused_linear: lora rank {r} must be a power of two (the pool pads ranks)")
    if b.dim() != 3 or b.shape[1:] != (n, r) or b.stride(2) != 1:
        raise ValueError(f"fused_linear: lora.b must be [slots, {n}, {r}] with unit stride along R, got "
                         f"{tuple(b.shape)}")
    if s.dim() != 1 or s.shape[0] < m or s.dtype != torch.int32:
        raise ValueError(f"fused_linear: lora.slots must be int32 [>= {m}], got {tuple(s.shape)} {s.dtype}")
    if any(t.device != device for t in (v, b, s)):
        raise ValueError(f"fused_linear: lora tensors must be on {device}")


def lora_launch_args(lora: LoraEpilogue | None, dummy: torch.Tensor) -> tuple[tuple, dict]:
    """(pointer and stride arguments, constexprs) of the GEMV kernel's LoRA epilogue; `dummy` stands in for
    the pointers when there is none (never dereferenced: LORA is False)."""
    if lora is None:
        return (dummy, dummy, dummy, 0, 0, 0, 0, 0), dict(LORA=False, LORA_R=1, LORA_SPLITS=1, LORA_ROUND=False)
    v, b = lora.v, lora.b
    return ((v, b, lora.slots, v.stride(0), v.stride(1), b.stride(0), b.stride(1), v.shape[0]),
            dict(LORA=True, LORA_R=v.shape[2], LORA_SPLITS=next_pow2(v.shape[0]),
                 LORA_ROUND=b.dtype != torch.float32))


@triton.jit
def lora_b_tile(LB, LS, rows, offs_n, M, N, stride_bs, stride_bn, R: tl.constexpr):
    """Each row's B[slot] tile [M_PAD, BLOCK_N, R] in B's dtype (zeros for rows without an adapter and
    padding rows). Weights and a host upload only: may be read before `gdc_wait`."""
    slot = tl.load(LS + rows, mask=rows < M, other=-1)
    r = tl.arange(0, R)
    ptrs = (LB + tl.maximum(slot, 0).to(tl.int64)[:, None, None] * stride_bs
            + tl.minimum(offs_n, N - 1).to(tl.int64)[None, :, None] * stride_bn + r[None, None, :])
    return tl.load(ptrs, mask=(slot >= 0)[:, None, None], other=0.0)


@triton.jit
def lora_v_rows(V, rows, M, stride_vs, stride_vm, splits, SPLITS: tl.constexpr, R: tl.constexpr):
    """The shrink's partials summed over the splits (one reduction, a fixed order): fp32 [M_PAD, R]."""
    sp = tl.arange(0, SPLITS)
    r = tl.arange(0, R)
    ptrs = V + sp[:, None, None] * stride_vs + rows.to(tl.int64)[None, :, None] * stride_vm + r[None, None, :]
    mask = (sp < splits)[:, None, None] & (rows < M)[None, :, None]
    return tl.sum(tl.load(ptrs, mask=mask, other=0.0), 0)


@triton.jit
def lora_delta(v, b, ROUND: tl.constexpr):
    """sum_r v[m, r] b[m, n, r] in fp32 [M_PAD, BLOCK_N]; v first rounded to b's 16-bit dtype with ROUND."""
    if ROUND:
        v = v.to(b.dtype).to(tl.float32)
    return tl.sum(v[:, None, :] * b.to(tl.float32), 2)
