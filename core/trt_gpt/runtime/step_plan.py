"""One executor step as rank 0 hands it to the other ranks: the packed model inputs (tokens, positions,
attention metadata, logits rows, attention window) and the KV-cache block copies rank 0's scheduler made
since the last step (copy-on-write of beams), encoded as two int64 tensors for a broadcast; and its split
into pipeline micro-batches by whole sequences.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..kernels.metadata import AttentionMetadata

OP_STOP, OP_STEP = 0, 1
# header: op, tokens, seqs, block-table width, logits rows (-1: all), window (-1: none), max_q_len,
# max_context_len, micro-batches, block copies, side-input entries
HEADER_LEN = 11


@dataclass
class StepPlan:
    """The model call of one step, identical on every rank."""
    input_ids: torch.Tensor           # int64 [T]
    positions: torch.Tensor           # int64 [T]
    meta: AttentionMetadata
    logits_rows: torch.Tensor | None  # int64 [R] rows of the packed tokens to return logits for; None: all
    window: int | None
    micro_batches: int = 1
    token_start: int = 0              # where this (micro-)batch's tokens sit in the whole step
    # KV blocks src[i] -> dst[i] that the other ranks copy before running the step
    copies: tuple[list[int], list[int]] = dataclasses.field(default_factory=lambda: ([], []))
    # the step's per-token side inputs as rank 0 staged them (LoRA slots and slot owners:
    # lora_pool.LoraManager.wire), for the other ranks to stage before running the step
    side: list[int] = dataclasses.field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_rows(self) -> int:
        return self.num_tokens if self.logits_rows is None else int(self.logits_rows.shape[0])

    # ------------------------------------------------------------------ wire format
    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.meta
        b, w = m.block_tables.shape
        rows = -1 if self.logits_rows is None else self.num_rows
        header = torch.tensor([OP_STEP, self.num_tokens, b, w, rows, -1 if self.window is None else self.window,
                               m.max_q_len, m.max_context_len, self.micro_batches, len(self.copies[0]),
                               len(self.side)], dtype=torch.int64)
        parts = [self.input_ids, self.positions, m.slot_mapping, m.cu_q_lens, m.context_lens, m.block_tables.flatten()]
        if self.logits_rows is not None:
            parts.append(self.logits_rows)
        parts += [torch.tensor(c, dtype=torch.int64) for c in self.copies]
        parts.append(torch.tensor(self.side, dtype=torch.int64))
        payload = torch.cat([p.to("cpu", torch.int64) for p in parts])
        return header, payload

    @staticmethod
    def payload_len(header: torch.Tensor) -> int:
        _, t, b, w, rows, *_, copies, side = header.tolist()
        return 3 * t + (b + 1) + b + b * w + max(rows, 0) + 2 * copies + side

    @classmethod
    def decode(cls, header: torch.Tensor, payload: torch.Tensor, device: torch.device) -> "StepPlan":
        _, t, b, w, rows, window, max_q, max_ctx, mbs, copies, nside = header.tolist()
        sizes = [t, t, t, b + 1, b, b * w, max(rows, 0), copies, copies, nside]
        ids, pos, slots, cu, ctx, tables, lrows, src, dst, side = payload.split(sizes)
        cu_host, ctx_host = cu.tolist(), ctx.tolist()
        meta = AttentionMetadata(
            cu_q_lens=cu.to(device, torch.int32), context_lens=ctx.to(device, torch.int32),
            block_tables=tables.view(b, w).to(device, torch.int32), slot_mapping=slots.to(device),
            max_q_len=max_q, max_context_len=max_ctx,
            q_lens_host=[cu_host[i + 1] - cu_host[i] for i in range(b)], context_lens_host=ctx_host)
        return cls(ids.to(device), pos.to(device), meta, lrows.to(device) if rows >= 0 else None,
                   None if window < 0 else window, mbs, copies=(src.tolist(), dst.tolist()), side=side.tolist())

    # ------------------------------------------------------------------ micro-batches
    def split(self) -> list["StepPlan"]:
        """Contiguous groups of whole sequences with about equal token counts (sequences are independent,
        so running the groups one after another equals running them together); at most one per sequence."""
        m = self.meta
        q_lens = m.q_lens_host or torch.diff(m.cu_q_lens).tolist()
        n = min(self.micro_batches, len(q_lens))
        if n <= 1:
            return [self]
        cu = [0]
        for q in q_lens:
            cu.append(cu[-1] + q)
        ctx = m.context_lens_host or m.context_lens.tolist()
        bounds = [0]
        for i in range(len(q_lens) - 1):          # the last sequence always closes the last group
            groups_left, seqs_left = n - len(bounds), len(q_lens) - (i + 1)
            if groups_left > 0 and (cu[i + 1] >= cu[-1] * len(bounds) / n or seqs_left == groups_left):
                bounds.append(i + 1)
        bounds.append(len(q_lens))
        return [self._slice(b0, b1, cu, q_lens, ctx) for b0, b1 in zip(bounds, bounds[1:])]

    def _slice(self, b0: int, b1: int, cu: list[int], q_lens: list[int], ctx: list[int]) -> "StepPlan":
        m = self.meta
        t0, t1 = cu[b0], cu[b1]
        sub = dataclasses.replace(
            m, cu_q_lens=m.cu_q_lens[b0:b1 + 1] - m.cu_q_lens[b0], context_lens=m.context_lens[b0:b1],
            block_tables=m.block_tables[b0:b1], slot_mapping=m.slot_mapping[t0:t1], max_q_len=max(q_lens[b0:b1]),
            max_context_len=max(ctx[b0:b1]), q_lens_host=q_lens[b0:b1], context_lens_host=ctx[b0:b1])
        rows = None
        if self.logits_rows is not None:
            r = self.logits_rows
            rows = r[(r >= t0) & (r < t1)] - t0
        return StepPlan(self.input_ids[t0:t1], self.positions[t0:t1], sub, rows, self.window, 1,
                        self.token_start + t0)


def merge_logits(plan: StepPlan, parts: list[StepPlan], logits: list[torch.Tensor]) -> torch.Tensor:
    """The micro-batches' logits back in the order of the whole step's logits rows."""
    out = torch.cat(logits, dim=0) if len(logits) > 1 else logits[0]
    if plan.logits_rows is None or len(parts) == 1:
        return out
    # rows were taken micro-batch by micro-batch; undo that permutation when the rows were not ascending
    taken = torch.cat([p.logits_rows + p.token_start - plan.token_start for p in parts])
    if bool((taken == plan.logits_rows).all()):
        return out
    order = torch.empty_like(taken)
    pos = {int(v): i for i, v in enumerate(taken.tolist())}
    for j, v in enumerate(plan.logits_rows.tolist()):
        order[j] = pos[int(v)]
    return out[order.to(out.device)]
