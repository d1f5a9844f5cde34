"""Tuned kernel-config tables read from JSON: one parser and one run-time override loader serve the GEMV
and weight-only tables; errors name the source and the expected layout, and each file is read once."""
from __future__ import annotations

import pytest

from trt_gpt.kernels.config_files import load_env_table, parse_json_table


def _entry(key, val):
    if not isinstance(val, int):
        raise ValueError(f"entry {key!r}: an integer")
    return int(key), val


def test_parse_json_table():
    assert parse_json_table('{"1": 10, "2": 20}', "t.json", _entry, '{"N": int}') == {1: 10, 2: 20}
    for bad, why in (("[1]", "the top level must be an object"), ('{"1": "x"}', "entry '1': an integer"),
                     ('{"x": 1}', "invalid literal"), ("not json", "Expecting value")):
        with pytest.raises(ValueError, match=why) as e:
            parse_json_table(bad, "t.json", _entry, '{"N": int}')
        assert str(e.value).startswith('t.json: expected {"N": int}: ') and e.value.__cause__ is None


def test_load_env_table_once_per_path(tmp_path, monkeypatch):
    calls, into, loaded = [], {}, []

    def parse(text, source):
        calls.append(source)
        return parse_json_table(text, source, _entry, '{"N": int}')

    monkeypatch.delenv("TRT_GPT_X", raising=False)
    load_env_table("TRT_GPT_X", parse, into, loaded)
    assert into == {} and calls == []                        # unset: nothing read
    (tmp_path / "a.json").write_text('{"4": 40}')
    monkeypatch.setenv("TRT_GPT_X", str(tmp_path / "a.json"))
    load_env_table("TRT_GPT_X", parse, into, loaded)
    load_env_table("TRT_GPT_X", parse, into, loaded)
    assert into == {4: 40} and calls == [f"TRT_GPT_X={tmp_path / 'a.json'}"]
    monkeypatch.setenv("TRT_GPT_X", str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match=r"TRT_GPT_X=.*missing.json: cannot read the file \(No such"):
        load_env_table("TRT_GPT_X", parse, into, loaded)
