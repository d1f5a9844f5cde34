"""Source checkpoints: a uniform read-only view over an HF directory, a .nemo archive or random weights.

Readers are registered through `register_checkpoint_sources`; `open_source(path)` asks each in turn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from .errors import TrtGptError
from .plugins import named_registry


class SourceCheckpoint(Protocol):
    """What a variant sees of its input checkpoint."""
    path: Path
    format: str               # "hf", "nemo", "random", ...
    config: dict[str, Any]    # the source's own config (HF config.json, NeMo model_config.yaml)

    def names(self) -> list[str]:
        """All tensor names in the checkpoint."""

    def tensor(self, name: str) -> torch.Tensor:
        """One tensor by name, loaded on the CPU; a missing name raises TrtGptError."""

    def tokenizer_files(self) -> list[Path]:
        """Files to copy next to the converted checkpoint so `run` can tokenize."""


def open_source(path: str | Path) -> SourceCheckpoint:
    """Open a checkpoint with the first registered reader that recognises it."""
    p = Path(path)
    if not p.exists():
        raise TrtGptError(f"{p}: no such file or directory")
    for fmt, opener in named_registry("register_checkpoint_sources").items():
        src = opener(p)
        if src is not None:
            return src
    raise TrtGptError(f"{p}: not a recognised checkpoint (expected an HF model directory with config.json "
                      "and weights, or a .nemo archive)")


def iter_tensors(src: SourceCheckpoint, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    for n in src.names():
        if n.startswith(prefix):
            yield n, src.tensor(n)
