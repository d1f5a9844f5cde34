"""Shared CLI pieces: progress display and the one-line summary."""
from __future__ import annotations

import contextlib
import time
from typing import Callable, Iterator

from rich.console import Console

err_console = Console(stderr=True)
out_console = Console(highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(title: str) -> Iterator[Callable[[str], None]]:
    """A spinner with the latest step on stderr; yields a callback taking a step description."""
    start = time.perf_counter()
    with err_console.status(title) as status:
        def update(msg: str) -> None:
            status.update(f"{title}: {msg}")
            err_console.log(msg)
        yield update
    progress.elapsed = time.perf_counter() - start  # type: ignore[attr-defined]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"
