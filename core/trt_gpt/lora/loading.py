"""Finding the adapter format plugin for a path and loading it into a validated canonical adapter."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import ModelConfig
from ..errors import TrtGptError
from .canonical import ROLES, LoraAdapter


def lora_formats() -> list[Any]:
    from ..support import registered_adapters

    return [a for a, _ in registered_adapters() if getattr(a, "kind", None) == "lora"]


def find_format(path: Path, source: str | None) -> Any:
    """The format named by `source` (a name or alias, e.g. hf, peft, nemo) or the first that detects `path`."""
    formats = lora_formats()
    if source and source != "auto":
        for f in formats:
            if source == f.name or source in getattr(f, "aliases", ()):
                return f
        known = ", ".join(n for f in formats for n in (f.name, *getattr(f, "aliases", ())))
        raise TrtGptError(f"--lora_ckpt_source: unknown LoRA format '{source}' (installed: {known or 'none'})")
    for f in formats:
        if f.detect(path):
            return f
    raise TrtGptError(f"{path}: not a LoRA adapter in a known format ({', '.join(f.name for f in formats)})")


def load_lora(path: str | Path, cfg: ModelConfig, max_rank: int, roles: tuple[str, ...] = ROLES,
              source: str | None = None, name: str | None = None) -> LoraAdapter:
    """Read an adapter from `path` and check it against the base model and the engine's LoRA limits."""
    p = Path(path)
    if not p.exists():
        raise TrtGptError(f"{p}: no such file or directory")
    return find_format(p, source).load(p, cfg, name=name).validate(cfg, max_rank, roles)
