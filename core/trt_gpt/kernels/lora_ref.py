"""Torch reference of the multi-LoRA delta: y[t] += B[slot[t]] @ (A[slot[t]] @ x[t]) for every token t with
slot[t] >= 0 (a negative slot is "no adapter": the row is left as it is).

Pool layout (runtime/lora_pool.py): A [slots, max_rank, in], B [slots, out, max_rank], ranks below
max_rank zero-padded and the adapter's scale folded into B. Products accumulate in float32 and are rounded
to y's dtype once, as the Triton kernel (triton_lora.py) does. Used on CPU and as the kernel's oracle.
"""
from __future__ import annotations

from typing import Any

import torch


def check_lora_args(x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """`slots`: one entry per token at least (the per-token slots, or the kernels' token permutation)."""
    t = x.shape[0]
    if x.dim() != 2 or y.dim() != 2 or y.shape[0] != t or slots.shape[0] < t:
        raise ValueError(f"lora: x {list(x.shape)}, y {list(y.shape)}, slots {list(slots.shape)} do not match")
    if a.dim() != 3 or b.dim() != 3 or a.shape[0] != b.shape[0] or a.shape[1] != b.shape[2]:
        raise ValueError(f"lora: pool A {list(a.shape)} and B {list(b.shape)} do not match")
    if a.shape[2] != x.shape[1] or b.shape[1] != y.shape[1]:
        raise ValueError(f"lora: x {list(x.shape)} / y {list(y.shape)} do not fit A {list(a.shape)} / B {list(b.shape)}")


def segments(slots: list[int], num_slots: int) -> tuple[list[int], list[int]]:
    """(perm, seg): the tokens with an adapter grouped by slot, in token order within a slot, and slot s's
    range perm[seg[s]:seg[s + 1]] (what the Triton kernels read instead of one slot per token)."""
    by_slot: list[list[int]] = [[] for _ in range(num_slots)]
    for t, s in enumerate(slots):
        if s >= 0:
            by_slot[s].append(t)
    perm, seg = [], [0]
    for toks in by_slot:
        perm += toks
        seg.append(len(perm))
    return perm, seg


def lora_add_ref(x: torch.Tensor, y: torch.Tensor, slots: torch.Tensor, a: torch.Tensor,
                 b: torch.Tensor) -> torch.Tensor:
    """y with each token's adapter delta added (in place; returns y). `slots` may be longer than x's rows."""
    check_lora_args(x, y, slots, a, b)
    s = slots[:x.shape[0]].long()
    # one segment per adapter present: a gathered [T, r, in] copy of A would cost T times the pool slice
    for slot in torch.unique(s).tolist():
        if slot < 0:
            continue
        rows = (s == slot).nonzero().flatten()
        v = x[rows].float() @ a[slot].float().t()
        y.index_add_(0, rows, (v @ b[slot].float().t()).to(y.dtype))
    return y


def lora_epilogue_ref(lora: Any, m: int) -> torch.Tensor:
    """The fused GEMV's LoRA epilogue (`lora_epilogue.LoraEpilogue`) in torch: each of the first m rows'
    delta v B[slot]^T in fp32 [m, N] (zero for slot < 0), v the shrink's partials summed in split order and
    rounded to a 16-bit B's dtype first, as the kernel does."""
    v = lora.v[0].clone()
    for part in lora.v[1:]:
        v += part
    b = lora.b
    if b.dtype != torch.float32:
        v = v.to(b.dtype).float()
    s = lora.slots[:m].long()
    out = torch.zeros(m, b.shape[1], dtype=torch.float32, device=v.device)
    live = (s >= 0).nonzero().flatten()
    if live.numel():
        out[live] = torch.einsum("mr,mnr->mn", v[live], b[s[live]].float())
    return out
