"""Environment settings (`TRT_GPT_*`): one reader that turns a malformed value into a one-line error.

Every variable the package reads goes through `env_setting` with a parser, so `TRT_GPT_PDL=of` is a
`TrtGptError` naming the variable and what it accepts, never a silent default. All of them are listed in
one table, docs/getting-started.md ("Environment variables"); tests/test_env.py checks that every name
read in the sources is there.
"""
from __future__ import annotations

import os
from typing import Callable, TypeVar

from .errors import TrtGptError

T = TypeVar("T")


def env_setting(name: str, parser: Callable[[str], T], default: T) -> T:
    """The parsed value of environment variable `name`, or `default` when it is unset or empty.

    `parser` raises ValueError (its message says what is expected) on a value it does not accept."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return parser(raw)
    except ValueError as e:
        raise TrtGptError(f"environment variable {name}={raw!r}: {e}") from None


def choice(*values: str) -> Callable[[str], str]:
    """A parser accepting exactly `values` (case-insensitive; returned lower-case)."""
    def parse(raw: str) -> str:
        v = raw.lower()
        if v not in values:
            raise ValueError(f"expected one of {', '.join(values)}")
        return v
    return parse


def flag(raw: str) -> bool:
    """0 / 1 (also false / true, off / on)."""
    v = raw.lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise ValueError("expected 0 or 1")


def non_negative_int(raw: str) -> int:
    if not raw.isdigit():
        raise ValueError("expected a non-negative integer")
    return int(raw)


def positive_float(raw: str) -> float:
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not v > 0:
        raise ValueError("expected a positive number")
    return v
