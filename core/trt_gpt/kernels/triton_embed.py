"""The input embedding of a small decode step in one kernel: token row [* multiplier] [+ position row].

The module path spends three or four kernels on it (the token lookup, the multiplier, the position lookup,
the add), each a few microseconds at batch 1, before the first GEMV can start. This kernel also takes a
row's token from the previous step's on-GPU picks where `feed` says so, which is how overlapped decoding
hands a token to the next CUDA-graph replay without a separate gather kernel (runtime/cuda_graphs.py).

Rounding follows the module path exactly: the multiplier's product and the position add are each rounded
to the table's dtype, as the two separate torch ops round them. `embed_ref.embed_ref` is the same in torch,
prompt-table rows (ids >= vocab_size) included.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .embed_ref import Prompt, check_embed_args
from .triton_common import next_pow2, pdl_launch, pdl_release, pdl_start, pdl_wait, use_pdl

MAX_BLOCK_H = 1024


@triton.jit
def _embed_kernel(IDS, FEED, PICKS, POS, WTE, WPE, PTAB, OUT, H, vocab, stride_te, stride_pe, stride_pt, stride_o,
                  multiplier, BLOCK_H: tl.constexpr, HAS_FEED: tl.constexpr, HAS_POS: tl.constexpr,
                  SCALE: tl.constexpr, HAS_PTAB: tl.constexpr, PDL: tl.constexpr):
    pdl_start(PDL)
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = offs < H
    # Everything after the wait: the ids may come from the kernel just before (a gather), and as the first
    # kernel of a decode graph there is nothing to wait for anyway. Releasing at once lets the first GEMV
    # start streaming its weights.
    pdl_wait(PDL)
    pdl_release(PDL)
    tok = tl.load(IDS + row)
    if HAS_FEED:
        src = tl.load(FEED + row)
        tok = tl.where(src > 0, tl.load(PICKS + tl.maximum(src - 1, 0)), tok)
    if HAS_PTAB:
        # a virtual token (id >= vocab) reads the prompt table; the other load reads row 0 of its table
        # (a valid, cached row) and is discarded
        virt = tok >= vocab
        e = tl.load(WTE + tl.where(virt, 0, tok).to(tl.int64) * stride_te + offs, mask=mask, other=0.0)
        pt = tl.load(PTAB + tl.where(virt, tok - vocab, 0).to(tl.int64) * stride_pt + offs, mask=mask, other=0.0)
        e = tl.where(virt, pt, e)
    else:
        e = tl.load(WTE + tok.to(tl.int64) * stride_te + offs, mask=mask, other=0.0)
    if HAS_POS:
        pe = tl.load(WPE + tl.load(POS + row).to(tl.int64) * stride_pe + offs, mask=mask, other=0.0)
    ty = WTE.dtype.element_ty
    if SCALE:
        e = (e.to(tl.float32) * multiplier).to(ty)
    if HAS_POS:
        e = (e.to(tl.float32) + pe.to(tl.float32)).to(ty)
    tl.store(OUT + row * stride_o + offs, e, mask=mask)


def embed(ids: torch.Tensor, wte: torch.Tensor, positions: torch.Tensor | None = None,
          wpe: torch.Tensor | None = None, multiplier: float = 1.0,
          feed: tuple[torch.Tensor, torch.Tensor] | None = None, prompt: Prompt | None = None) -> torch.Tensor:
    """hidden [T, H] = wte[token] [* multiplier] [+ wpe[position]] (Triton).

    `feed = (rows, picks)`: a row i with rows[i] > 0 embeds picks[rows[i] - 1] instead of ids[i].
    `prompt = (table, vocab_size)`: a token >= vocab_size embeds table[token - vocab_size].
    """
    check_embed_args(ids, wte, positions, wpe, feed, prompt=prompt)
    t, h = ids.shape[0], wte.shape[1]
    out = torch.empty(t, h, device=wte.device, dtype=wte.dtype)
    if t == 0:
        return out
    block_h = min(MAX_BLOCK_H, next_pow2(h))
    dummy = ids
    # Released after its wait, never at start: in a decode graph this kernel follows the input stage
    # (triton_stage), and the kernels after it read the staged inputs before their own wait, so they may
    # start only once this one's wait has made the stage's writes visible.
    pdl = use_pdl(wte.device)
    _embed_kernel[(t, triton.cdiv(h, block_h))](
        ids, feed[0] if feed is not None else dummy, feed[1] if feed is not None else dummy,
        positions if positions is not None else dummy, wte, wpe if wpe is not None else wte,
        prompt[0] if prompt is not None else wte, out, h, int(prompt[1]) if prompt is not None else 0,
        wte.stride(0), wpe.stride(0) if wpe is not None else 0, prompt[0].stride(0) if prompt is not None else 0,
        out.stride(0), float(multiplier), BLOCK_H=block_h, HAS_FEED=feed is not None, HAS_POS=wpe is not None,
        SCALE=multiplier != 1.0, HAS_PTAB=prompt is not None, PDL=pdl, num_warps=4, **pdl_launch(wte.device),
        # No multiply-add contraction: with fp32 tables the product's rounding cast is a no-op, and ptxas
        # would fuse `e * multiplier + pe` into one FMA (one rounding instead of the module path's two;
        # an H200 run of test_triton_embed caught the 1-ulp difference). The interpreter ignores the option.
        enable_fp_fusion=False,
    )
    return out
