"""Finding the prompt-table format plugin for a path and reading its tasks' tables."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..errors import TrtGptError


def prompt_formats() -> list[Any]:
    from ..support import registered_adapters

    return [a for a, _ in registered_adapters() if getattr(a, "kind", None) == "prompt_table"]


def load_prompt_tables(path: str | Path, source: str | None = None) -> list[torch.Tensor]:
    """Every task's [virtual tokens, hidden] table in `path` (format `source`, or the first that detects it)."""
    p = Path(path)
    if not p.exists():
        raise TrtGptError(f"{p}: no such file or directory")
    formats = prompt_formats()
    if source and source != "auto":
        chosen = [f for f in formats if source == f.name]
        if not chosen:
            raise TrtGptError(f"prompt table format '{source}' is not installed (installed: "
                              f"{', '.join(f.name for f in formats) or 'none'})")
        return chosen[0].load(p)
    for f in formats:
        if f.detect(p):
            return f.load(p)
    raise TrtGptError(f"{p}: not a prompt table in a known format ({', '.join(f.name for f in formats)})")
