"""The `trt-gpt` entry point: help readable at 80 columns (every option whole, one spelling shown, a help line
each, switches shown as switches), both spellings accepted, unknown options as one `error:` line naming the
closest option, and log lines without a source file:line suffix."""
from __future__ import annotations

import re

import pytest
import typer

from trt_gpt.cli.main import make_app
from trt_gpt.testing import assert_one_line_error, run_cli


def _commands():
    root = typer.main.get_command(make_app())
    out = []

    def walk(cmd, path):
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, path + [name])
        else:
            out.append((" ".join(path), cmd))
    walk(root, [])
    return out


COMMANDS = _commands()


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_help_at_80_columns(path, cmd):
    ctx = cmd.context_class(cmd, info_name=path, terminal_width=80, max_content_width=80,
                            token_normalize_func=lambda s: s.replace("-", "_"))
    text = cmd.get_help(ctx)
    assert "<bool>" not in text and "…" not in text
    assert all(len(line) <= 80 for line in text.splitlines()), text
    words = set(re.findall(r"--[\w-]+", text))
    for p in cmd.params:
        if p.name == "help" or getattr(p, "hidden", False):
            continue
        assert (p.help or "").strip(), f"trt-gpt {path} {p.opts[0]}: no help line"
        for o in (*p.opts, *p.secondary_opts):
            assert o in words, f"trt-gpt {path}: {o} not shown whole"
            assert "-" not in o[2:], f"trt-gpt {path}: {o} shown with dashes (help shows the underscore spelling)"
        if getattr(p, "is_flag", False) and not p.secondary_opts:
            assert re.search(rf"{re.escape(p.opts[0])}\s{{2,}}", text), f"{p.opts[0]} not shown as a switch"


def test_both_spellings_parse():
    root = typer.main.get_command(make_app())
    ctx = root.make_context("trt-gpt", ["run", "--engine-dir", "e", "--max_output-len", "3", "--top-k", "2"])
    run = root.commands["run"]
    sub = run.make_context("run", ["--engine-dir", "e", "--max_output-len", "3", "--top-k", "2"], parent=ctx)
    assert (str(sub.params["engine_dir"]), sub.params["max_output_len"], sub.params["top_k"]) == ("e", 3, 2)


def test_unknown_option_one_line_with_the_closest(tmp_path):
    proc = run_cli("run", "--engine_dir", tmp_path, "--max_outptu_len", "3", check=False)
    assert_one_line_error(proc, "error:", "no such option --max_outptu_len", "did you mean --max_output_len?")
    proc = run_cli("build", "--checkpoint-dir", tmp_path, "--max_batch_size", "many", check=False)
    assert_one_line_error(proc, "error:", "--max_batch_size")


def test_log_lines_have_no_source_location(gpt2_dir, tmp_path):
    proc = run_cli("convert", "--model_dir", gpt2_dir[0], "--output_dir", tmp_path / "c", "--dtype", "float32")
    logged = [line for line in proc.stderr.splitlines() if "rank 0" in line]
    assert logged, proc.stderr
    assert not any(re.search(r"\w+\.py:\d+\s*$", line) for line in proc.stderr.splitlines()), proc.stderr


def test_multi_value_flags_in_either_spelling():
    from trt_gpt.cli.main import expand_multi_value

    assert expand_multi_value(["run", "--input-text", "a b", "c", "--top_k", "1", "--stop_words", "x", "y"]) == [
        "run", "--input-text", "a b", "--input-text", "c", "--top_k", "1", "--stop_words", "x", "--stop_words", "y"]
