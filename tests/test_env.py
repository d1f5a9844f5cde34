"""`env_setting`: a malformed TRT_GPT_* value is a one-line error naming the variable, an unset one the
default; and every TRT_GPT_* variable the sources read is in docs/getting-started.md's one table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from trt_gpt.env import choice, env_setting, flag, non_negative_int, positive_float
from trt_gpt.errors import TrtGptError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("parser,raw,value", [(flag, "1", True), (flag, "0", False), (flag, "off", False),
                                              (non_negative_int, "12", 12), (positive_float, "2.5", 2.5),
                                              (choice("stage", "copy"), "COPY", "copy")])
def test_values_parse(monkeypatch, parser, raw, value):
    monkeypatch.setenv("TRT_GPT_X", raw)
    assert env_setting("TRT_GPT_X", parser, None) == value


@pytest.mark.parametrize("parser,raw,message", [(flag, "2", "expected 0 or 1"),
                                                (non_negative_int, "-1", "expected a non-negative integer"),
                                                (positive_float, "0", "expected a positive number"),
                                                (positive_float, "nan", "expected a positive number"),
                                                (choice("stage", "copy"), "stag", "expected one of stage, copy")])
def test_bad_values_are_one_line_errors(monkeypatch, parser, raw, message):
    monkeypatch.setenv("TRT_GPT_X", raw)
    with pytest.raises(TrtGptError, match=f"^environment variable TRT_GPT_X='{raw}': {message}$"):
        env_setting("TRT_GPT_X", parser, None)


def test_unset_or_empty_is_the_default(monkeypatch):
    monkeypatch.delenv("TRT_GPT_X", raising=False)
    assert env_setting("TRT_GPT_X", flag, "d") == "d"
    monkeypatch.setenv("TRT_GPT_X", "  ")
    assert env_setting("TRT_GPT_X", flag, "d") == "d"


def test_every_variable_read_is_in_the_one_table():
    names = set()
    for sub in ("core", "plugins", "variants", "tests"):
        for f in (ROOT / sub).rglob("*.py"):
            names |= set(re.findall(r"TRT_GPT_[A-Z][A-Z0-9_]*[A-Z0-9]", f.read_text(encoding="utf-8")))
    names -= {"TRT_GPT_X"}   # this test's own
    doc = (ROOT / "docs" / "getting-started.md").read_text(encoding="utf-8")
    table = doc[doc.index("### Environment variables"):]
    documented = set(re.findall(r"^\| `(TRT_GPT_[A-Z0-9_]+)` \|", table, flags=re.M))
    assert names - documented == set()
    assert documented - names == set()
