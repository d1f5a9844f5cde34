"""Prompt-tuning tables at run time: reading them through the registered formats, and the device pool.

An engine built with `max_prompt_embedding_table_size = R` gets one preallocated [R, hidden] buffer in the
model's dtype (`PromptTablePool.buffer`); the embedding reads it for every id >= vocab_size
(kernels/embed_ref.py). Because the buffer never moves, captured CUDA graphs stay valid as tables come and go.

A table [tasks, virtual_tokens, hidden] (read by a `register_adapters` format of kind "prompt_table") takes
tasks * virtual_tokens consecutive rows of the pool while it is loaded. A request names a table and a task;
its prompt ids follow the reference's convention, vocab_size + k meaning row k of that task's table, and
`translate` turns them into pool ids (vocab_size + the task's first pool row + k) once at admission, so every
packer, the decode graphs and the multi-rank step plan carry them as ordinary ids. A table in use by a
request cannot be removed (its rows may be read again if the request is preempted and recomputed).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import ModelConfig
from ..errors import TrtGptError


def prompt_table_formats() -> list[Any]:
    """The registered prompt-table formats (adapter kind "prompt_table"), third-party plugins first."""
    from ..support import registered_adapters

    return [a for a, _ in registered_adapters() if getattr(a, "kind", None) == "prompt_table"]


def load_prompt_table(path: str | Path, cfg: ModelConfig, max_rows: int | None = None,
                      source: str | None = None) -> torch.Tensor:
    """float32 [tasks, virtual_tokens, hidden] from `path` (a format chosen by `source` or detected), checked
    against the model's hidden size and, where given, the engine's `max_rows`."""
    path = Path(path)
    if not path.exists():
        raise TrtGptError(f"{path}: prompt table not found")
    formats = prompt_table_formats()
    if source is not None:
        fmt = [f for f in formats if source == f.name or source in getattr(f, "aliases", ())]
        if not fmt:
            raise TrtGptError(f"prompt table source '{source}' is not a registered format (expected one of "
                              f"{', '.join(f.name for f in formats)})")
    else:
        fmt = [f for f in formats if f.detect(path)]
        if not fmt:
            raise TrtGptError(f"{path}: not a prompt table (expected a .npy [tasks, virtual_tokens, hidden], an HF "
                              "PEFT prompt-tuning directory or a NeMo p-tuning .nemo)")
    table = fmt[0].load(path, cfg)
    if table.shape[-1] != cfg.hidden_size:
        raise TrtGptError(f"{path}: prompt table hidden size is {table.shape[-1]}, the model's hidden_size is "
                          f"{cfg.hidden_size}")
    if not torch.isfinite(table).all():
        raise TrtGptError(f"{path}: prompt table holds NaN or infinite values")
    rows = table.shape[0] * table.shape[1]
    if max_rows is not None and rows > max_rows:
        raise TrtGptError(f"{path}: prompt table of {table.shape[0]} task(s) x {table.shape[1]} virtual tokens = "
                          f"{rows} rows exceeds the engine's max_prompt_embedding_table_size ({max_rows}); "
                          "rebuild with a larger --max_prompt_embedding_table_size")
    return table


@dataclass
class _Loaded:
    start: int
    tasks: int
    tokens: int
    users: int = 0


class PromptTablePool:
    """Named tables in one preallocated device buffer [rows, hidden] (first-fit placement)."""

    def __init__(self, rows: int, hidden: int, dtype: torch.dtype, device: torch.device, vocab_size: int):
        self.rows, self.vocab_size = rows, vocab_size
        self.buffer = torch.zeros(rows, hidden, dtype=dtype, device=device)
        self.tables: dict[str, _Loaded] = {}

    def add(self, name: str, table: torch.Tensor) -> None:
        """Copy `table` [tasks, tokens, hidden] into free rows under `name` (replacing an unused one)."""
        if name in self.tables:
            self.remove(name)
        tasks, tokens, hidden = table.shape
        need = tasks * tokens
        start = self._free_run(need)
        if start is None:
            free = self.rows - sum(t.tasks * t.tokens for t in self.tables.values())
            raise TrtGptError(f"prompt table '{name}': needs {need} rows but the pool of "
                              f"max_prompt_embedding_table_size {self.rows} has {free} free (tables loaded: "
                              f"{', '.join(self.tables) or 'none'}); remove one or rebuild with a larger size")
        self.buffer[start:start + need].copy_(table.reshape(need, hidden).to(self.buffer.dtype))
        self.tables[name] = _Loaded(start, tasks, tokens)

    def remove(self, name: str) -> None:
        t = self._get(name)
        if t.users:
            raise TrtGptError(f"prompt table '{name}' is used by {t.users} running request(s); remove it after "
                              "they finish")
        del self.tables[name]

    def _get(self, name: str) -> _Loaded:
        if name not in self.tables:
            raise TrtGptError(f"prompt table '{name}' is not loaded (loaded: {', '.join(self.tables) or 'none'})")
        return self.tables[name]

    def _free_run(self, need: int) -> int | None:
        o = 0
        for t in sorted(self.tables.values(), key=lambda t: t.start):
            if t.start - o >= need:
                return o
            o = t.start + t.tasks * t.tokens
        return o if self.rows - o >= need else None

    def translate(self, ids: Sequence[int], name: str | None, task: int | None) -> list[int]:
        """The request's ids with each virtual id vocab_size + k (row k of the task's table) turned into the
        pool id vocab_size + (the task's first pool row) + k; real ids unchanged."""
        v = self.vocab_size
        virtual = [t for t in ids if t >= v]
        if name is None:
            if task is not None:
                raise TrtGptError(f"sampling: 'prompt_task' is {task} but no 'prompt_table' is named")
            if virtual:
                raise TrtGptError(f"prompt id {virtual[0]} >= vocab_size {v} but the request names no prompt table")
            return list(ids)
        t = self._get(name)
        task = 0 if task is None else task
        if not isinstance(task, int) or isinstance(task, bool) or not 0 <= task < t.tasks:
            raise TrtGptError(f"prompt table '{name}': task {task!r} unknown (the table has {t.tasks} task(s): "
                              f"0..{t.tasks - 1})")
        bad = [x for x in virtual if x - v >= t.tokens]
        if bad:
            raise TrtGptError(f"prompt id {bad[0]} is virtual token {bad[0] - v} but prompt table '{name}' has "
                              f"{t.tokens} per task (ids {v}..{v + t.tokens - 1})")
        base = t.start + task * t.tokens
        return [x + base if x >= v else x for x in ids]

    def acquire(self, name: str) -> None:
        self._get(name).users += 1

    def release(self, name: str) -> None:
        if name in self.tables:
            self.tables[name].users = max(0, self.tables[name].users - 1)
