"""`trt-gpt run --prompt_table_path T [--prompt_tasks 0,1] [--num_prepend_vtokens N ...]`: the table loaded
into the engine's prompt-table pool, each input's task chosen, and virtual tokens put before each input.

The reference's run.py prepends ids vocab_size .. vocab_size + n - 1 to input i when given
`--num_prepend_vtokens` (one count per input); so does this, with one count also applying to every input.
Without it the reference prepends nothing, leaving a table unused unless the inputs already hold virtual ids;
here an input with no virtual id gets its task's whole table prepended (what PEFT does), and an input that
already holds virtual ids is left as it is.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from ..errors import TrtGptError

TABLE = "prompt_table"


def prompt_tables(path: Optional[Path]) -> Optional[dict[str, Path]]:
    """The LLM constructor's `prompt_tables` (loaded by every rank of a multi-rank engine)."""
    return {TABLE: path} if path is not None else None


def apply_prompt_tuning(llm: Any, ids: list[list[int]], params: Any, path: Optional[Path], tasks: Optional[str],
                        prepend: Optional[list[int]]) -> tuple[list[list[int]], Any]:
    """(inputs with their virtual tokens, one SamplingParams per input naming the table and task)."""
    if path is None:
        if tasks is not None or prepend:
            raise TrtGptError("--prompt_tasks / --num_prepend_vtokens need --prompt_table_path")
        return ids, params
    loaded = llm.prompt_pool.tables[TABLE]
    try:
        task_ids = [int(t) for t in tasks.split(",")] if tasks else [0] * len(ids)
    except ValueError:
        raise TrtGptError(f"--prompt_tasks is {tasks!r}, expected comma-separated task indices, e.g. 0,1") from None
    if len(task_ids) == 1:
        task_ids *= len(ids)
    if len(task_ids) != len(ids):
        raise TrtGptError(f"--prompt_tasks: {len(task_ids)} tasks for {len(ids)} inputs (one, or one per input)")
    bad = [t for t in task_ids if not 0 <= t < loaded.tasks]
    if bad:
        raise TrtGptError(f"--prompt_tasks: task {bad[0]} unknown ({path} holds {loaded.tasks} task(s): "
                          f"0..{loaded.tasks - 1})")
    vocab = llm.cfg.vocab_size
    counts = list(prepend or [])
    if len(counts) == 1:
        counts *= len(ids)
    if counts and len(counts) != len(ids):
        raise TrtGptError(f"--num_prepend_vtokens: {len(counts)} counts for {len(ids)} inputs (one, or one per input)")
    if any(not 0 <= c <= loaded.tokens for c in counts):
        raise TrtGptError(f"--num_prepend_vtokens: {counts} must each be in 0..{loaded.tokens} (the table's virtual "
                          "tokens per task)")
    out = []
    for i, x in enumerate(ids):
        n = counts[i] if counts else (0 if any(t >= vocab for t in x) else loaded.tokens)
        out.append(list(range(vocab, vocab + n)) + list(x))
    return out, [dataclasses.replace(params, prompt_table=TABLE, prompt_task=t) for t in task_ids]
