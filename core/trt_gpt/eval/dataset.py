"""JSONL data sets (one JSON object a line), with errors that name the file and the line."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import TrtGptError


def read_jsonl(path: str | Path, fields: Sequence[str] = ("article", "highlights"),
               limit: int | None = None) -> list[dict]:
    """Records of a JSONL file; each must be an object whose `fields` are strings.

    Blank lines are skipped; `limit` stops after that many records (later lines are not read, so a
    bad line past the limit does not matter, as with the reference's dataset slicing).
    """
    p = Path(path)
    if not p.is_file():
        raise TrtGptError(f"{p}: data set not found")
    out: list[dict] = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if limit is not None and len(out) >= limit:
                break
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TrtGptError(f"{p}: line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
            except UnicodeDecodeError as e:
                raise TrtGptError(f"{p}: line {n}: not UTF-8 text ({e.reason})") from None
            if not isinstance(rec, dict):
                raise TrtGptError(f"{p}: line {n}: expected a JSON object with fields {', '.join(fields)}")
            for name in fields:
                if name not in rec:
                    raise TrtGptError(f"{p}: line {n}: missing field '{name}'")
                if not isinstance(rec[name], str):
                    raise TrtGptError(f"{p}: line {n}: field '{name}' is {type(rec[name]).__name__}, "
                                      "expected a string")
            rec["_line"] = n
            out.append(rec)
    if not out:
        raise TrtGptError(f"{p}: no records (expected one JSON object a line)")
    return out
