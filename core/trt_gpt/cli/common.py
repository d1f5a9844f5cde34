"""Shared CLI pieces: progress display, the one-line summary, checks of user-given paths and devices, and
options several commands declare alike."""
from __future__ import annotations

import contextlib
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import typer
from rich.console import Console

from ..errors import TrtGptError

err_console = Console(stderr=True, log_path=False)   # log lines without the source file:line suffix
out_console = Console(highlight=False, soft_wrap=True)


def lora_ckpt_source_option() -> Any:
    """`--lora_ckpt_source` (build and serve): the format the `--lora_dir` adapters are read in."""
    return typer.Option("auto", "--lora_ckpt_source", help="hf (PEFT) or nemo; auto detects.")


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


DEFAULT_PROMPT = "Born in north-east France, Soyer trained as a"   # the reference run.py's default --input_text


def check_device(device: str | None) -> str | None:
    """`--device`: cpu, cuda, cuda:N or auto (None: automatic)."""
    if device is not None and not re.fullmatch(r"cpu|auto|cuda(:\d+)?", device):
        raise TrtGptError(f"--device is '{device}', expected cpu, cuda, cuda:N or auto")
    return device


def check_dir(path: Path | None, flag: str) -> Path | None:
    """An existing directory given with `flag`."""
    if path is not None:
        if not path.exists():
            raise TrtGptError(f"{flag} {path}: no such directory")
        if not path.is_dir():
            raise TrtGptError(f"{flag} {path}: is a file, expected a directory")
    return path


def check_output_file(path: Path | None, flag: str) -> Path | None:
    """A file `flag` will write: not a directory, and its directory creatable (checked before the work)."""
    if path is not None:
        if path.is_dir():
            raise TrtGptError(f"{flag} {path}: is a directory, expected a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TrtGptError(f"{flag} {path}: cannot create its directory ({e.strerror or e})") from None
    return path


def write_output_file(path: Path, write: Callable[[object], None], newline: str | None = None) -> None:
    """Write `path` through a temporary file renamed into place, so a failure leaves no half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline=newline) as f:
            write(f)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise TrtGptError(f"{path}: cannot write ({e.strerror or e})") from None


def kv_cache_pool(llm) -> dict:
    """The KV pool an `LLM` chose: storage dtype, capacity in tokens, blocks, bytes (an 8-bit cache holds
    about twice the tokens of a 16-bit one in the same memory)."""
    c = llm.cache
    nbytes = sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in c.layers)
    return {"dtype": c.spec.name, "tokens": c.num_blocks * c.block_size, "blocks": c.num_blocks,
            "block_size": c.block_size, "bytes": nbytes}


def kv_cache_line(llm) -> str:
    """The KV pool an `LLM` chose, in one line (tokens, blocks, bytes, device; an 8-bit cache says so)."""
    p = kv_cache_pool(llm)
    eight_bit = f" {p['dtype']}" if p["dtype"] in ("int8", "float8_e4m3fn") else ""
    return (f"kv cache: {p['tokens']} tokens ({p['blocks']} blocks of {p['block_size']}), "
            f"{human_bytes(p['bytes'])}{eight_bit} on {llm.engine.device}")
