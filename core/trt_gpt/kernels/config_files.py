"""Tuned kernel-configuration tables stored as JSON objects (written by the benchmark sweeps) and the
environment variable naming a file whose entries override the built-in tables; shared by the GEMV and the
weight-only kernels' config modules, which supply how one entry reads."""
from __future__ import annotations

import json
import os
from typing import Any, Callable, TypeVar

K = TypeVar("K")
V = TypeVar("V")


def parse_json_table(text: str, source: str, entry: Callable[[str, Any], tuple[K, V]],
                     expected: str) -> dict[K, V]:
    """{key: value} of the JSON object `text`, each item read by `entry(key, value)`; any failure is one
    ValueError naming `source` and the `expected` layout."""
    try:
        raw = json.loads(text)
        if not isinstance(raw, dict):
            raise ValueError("the top level must be an object")
        return dict(entry(key, val) for key, val in raw.items())
    except (ValueError, TypeError) as e:
        raise ValueError(f"{source}: expected {expected}: {e}") from None


def load_env_table(env: str, parse: Callable[[str, str], dict[K, V]], into: dict[K, V],
                   loaded_from: list[str]) -> None:
    """Merge the table in the file named by the environment variable `env` into `into`, once per path
    (`loaded_from` remembers the paths read)."""
    path = os.environ.get(env, "").strip()
    if not path or path in loaded_from:
        return
    try:
        text = open(path, encoding="utf-8").read()
    except OSError as e:
        raise ValueError(f"{env}={path}: cannot read the file ({e.strerror})") from None
    into.update(parse(text, f"{env}={path}"))
    loaded_from.append(path)
