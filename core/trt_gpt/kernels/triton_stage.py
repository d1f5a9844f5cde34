"""The decode graph's input stage: one kernel that copies the step's packed int32 inputs from a pinned host
mirror into the graph's static device buffer.

A decode step used to upload its inputs with a host-to-device copy queued before the graph replay. At
batch 1 that copy of a few hundred bytes cost ~11 µs of GPU time a step on an H200 (the copy engine's
own latency plus the hand-offs between it and the graph's kernels), 2.6% of a GPT-2 medium step. Read by
the graph's first kernel instead, the same bytes cost one PCIe round trip: from one step's last kernel to
the next step's embedding, 11.6-15.6 µs became 5.9 µs (stage kernel included). The graph then reads a *fixed*
host buffer, so `runtime.cuda_graphs` captures two graphs per shape, each on its own mirror, and
alternates them: the host fills one mirror while the other graph may still be reading its own.

The kernel is launched without programmatic dependent launch and never releases its dependents, so the
embedding kernel after it starts once it has completed, and that kernel releases its own dependents only
after its `gdc_wait` (in every PDL mode), which makes the staged values visible: every later kernel's
reads before its wait of host uploads (slots, block tables, context lengths) see this step's values
(see `triton_common.use_pdl`).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _stage_kernel(SRC, DST, N, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    # volatile: the mirror changes between replays behind the compiler's back, never serve it from cache
    tl.store(DST + offs, tl.load(SRC + offs, mask=mask, volatile=True), mask=mask)


def stage_inputs(src: torch.Tensor, dst: torch.Tensor) -> None:
    """dst[:n] = src[:n] for int32 `src` [n] (pinned host memory, or any CPU tensor under the interpreter)
    and `dst` [>= n] on the device: a kernel, so that a CUDA graph can capture it."""
    n = src.numel()
    if src.dtype != torch.int32 or dst.dtype != torch.int32 or src.dim() != 1 or dst.dim() != 1:
        raise ValueError(f"stage_inputs: src and dst must be 1-D int32, got {src.dtype} {tuple(src.shape)} and "
                         f"{dst.dtype} {tuple(dst.shape)}")
    if dst.numel() < n or src.stride(0) != 1 or dst.stride(0) != 1:
        raise ValueError(f"stage_inputs: dst must be contiguous with >= {n} entries, got {tuple(dst.shape)}")
    if dst.device.type == "cuda" and (src.device.type != "cpu" or not src.is_pinned()):
        raise ValueError("stage_inputs: src must be pinned host memory when dst is on a GPU")
    if n:
        _stage_kernel[(triton.cdiv(n, BLOCK),)](src, dst, n, BLOCK=BLOCK, num_warps=4)
