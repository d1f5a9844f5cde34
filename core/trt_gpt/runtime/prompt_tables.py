"""Prompt tuning at run time: a preallocated device table of virtual-token embeddings, the named tables
(tasks) placed in it, and the per-token column that tells the embedding which table a token reads.

A prompt token id >= vocab_size is a virtual token (the reference's convention): id vocab_size + i takes row
i of its request's table instead of a vocabulary row, so a prompt may mix virtual and real tokens. The
pool `[max_prompt_embedding_table_size, hidden]` and the column never move: tables are added and removed
between steps without touching captured graphs. The embedding gathers with fixed shapes (no host sync):
ids below the vocabulary look up as usual, the others read pool row `base[t] + id - vocab_size`.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch

from ..errors import TrtGptError


class PromptTables:
    def __init__(self, engine: Any, max_tokens: int):
        cfg, build = engine.cfg, engine.build
        self.size, self.vocab, self.hidden = build.max_prompt_embedding_table_size, cfg.vocab_size, cfg.hidden_size
        self.table = torch.zeros(self.size, self.hidden, dtype=engine.dtype, device=engine.device)
        self.base = torch.zeros(max_tokens, dtype=torch.int32, device=engine.device)
        self.max_tokens = max_tokens
        self._zero_rows = max_tokens
        self.tables: dict[str, tuple[int, int]] = {}      # name -> (first pool row, rows)
        self.holders: dict[str, int] = {}
        self.request_table: dict[int, str] = {}
        emb = engine.model.transformer.vocab_embedding
        emb.prompt = self._embed
        # the fused small-batch embedding kernel reads token rows only
        engine.model.fused = None

    @classmethod
    def for_engine(cls, engine: Any, max_tokens: int) -> "PromptTables | None":
        if not engine.build.max_prompt_embedding_table_size:
            return None
        if engine.cfg.mapping.world_size > 1:
            raise TrtGptError(f"{engine.dir}: prompt tables on a multi-rank engine are not supported yet; build it "
                              "with one rank")
        return cls(engine, max_tokens)

    def _embed(self, ids: torch.Tensor, lookup: Any) -> torch.Tensor:
        virtual = ids >= self.vocab
        h = lookup(torch.where(virtual, torch.zeros_like(ids), ids))
        rows = (ids.long() - self.vocab + self.base[:ids.shape[0]]).clamp(0, self.size - 1)
        return torch.where(virtual.unsqueeze(-1), self.table[rows].to(h.dtype), h)

    # ------------------------------------------------------------------ tables
    def add(self, name: str, rows: torch.Tensor, where: str = "") -> None:
        """Place a [n, hidden] table under `name` (replacing an unused one of that name)."""
        where = where or f"prompt table '{name}'"
        if rows.dim() != 2 or rows.shape[1] != self.hidden:
            raise TrtGptError(f"{where}: shape {list(rows.shape)}, expected [virtual tokens, {self.hidden}] (the "
                              "model's hidden size)")
        if name in self.tables:
            self.remove(name)
        start = self._place(rows.shape[0])
        if start is None:
            used = sum(n for _, n in self.tables.values())
            raise TrtGptError(f"{where}: {rows.shape[0]} rows do not fit the engine's prompt table "
                              f"(max_prompt_embedding_table_size {self.size}, {used} rows in use)")
        self.table[start:start + rows.shape[0]].copy_(rows.to(self.table.dtype))
        self.tables[name] = (start, rows.shape[0])

    def _place(self, n: int) -> int | None:
        """First fit among the gaps between placed tables."""
        pos = 0
        for start, rows in sorted(self.tables.values()):
            if start - pos >= n:
                return pos
            pos = start + rows
        return pos if self.size - pos >= n else None

    def remove(self, name: str) -> None:
        if name not in self.tables:
            raise TrtGptError(f"unknown prompt table '{name}' (loaded: {', '.join(self.tables) or 'none'})")
        if self.holders.get(name):
            raise TrtGptError(f"prompt table '{name}' is in use by {self.holders[name]} running request(s)")
        del self.tables[name]

    # ------------------------------------------------------------------ requests
    def admit(self, seq: Any, name: str | None) -> None:
        """Check a new request's virtual tokens against its table and hold the table until it finishes."""
        virtual = [t for t in seq.prompt_ids if t >= self.vocab]
        if name is None:
            if virtual:
                raise TrtGptError(f"prompt token id {virtual[0]} is beyond the vocabulary ({self.vocab}) and the "
                                  "request names no prompt table")
            return
        if name not in self.tables:
            raise TrtGptError(f"unknown prompt table '{name}' (loaded: {', '.join(self.tables) or 'none'})")
        n = self.tables[name][1]
        bad = [t for t in virtual if t >= self.vocab + n]
        if bad:
            raise TrtGptError(f"prompt token id {bad[0]} is beyond prompt table '{name}' ({n} virtual tokens: ids "
                              f"{self.vocab}..{self.vocab + n - 1})")
        self.holders[name] = self.holders.get(name, 0) + 1
        self.request_table[seq.request_id] = name

    def forget(self, seq: Any) -> None:
        name = self.request_table.pop(seq.request_id, None)
        if name is not None:
            self.holders[name] -= 1

    def stage(self, batch: Iterable[tuple[Any, int]]) -> None:
        """Each token's table start (0 for requests without a table: their ids never read it)."""
        col: list[int] = []
        for seq, n in batch:
            name = self.request_table.get(seq.request_id)
            col.extend([self.tables[name][0] if name is not None else 0] * n)
        if not any(col) and self._zero_rows >= len(col):
            return      # the column already holds 0 wherever this step reads it
        if col:
            self.base[:len(col)].copy_(torch.tensor(col, dtype=torch.int32))
        self._zero_rows = len(col) if not any(col) else 0
