"""docs/cli.md is generated from the CLI (`python -m trt_gpt.cli.gen_docs`) and kept in sync with it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from trt_gpt.cli.gen_docs import REGENERATE, command_options, parse_invocation, render, split_help

ROOT = Path(__file__).resolve().parents[2]


def _gen(*args: str) -> subprocess.CompletedProcess:
    # a child process: the generator loads the built-in plugins only, whatever this test process loaded
    return subprocess.run([sys.executable, "-m", "trt_gpt.cli.gen_docs", *args], cwd=ROOT, capture_output=True,
                          text=True, env=dict(os.environ), timeout=300)


def test_committed_cli_md_matches_the_cli():
    res = _gen("--check", "--output", str(ROOT / "docs" / "cli.md"))
    assert res.returncode == 0, (f"docs/cli.md is stale; regenerate it with `{REGENERATE}` from the repository "
                                 f"root and commit it.\n{res.stderr}")


def test_check_fails_on_a_stale_page_and_names_the_command(tmp_path):
    stale = tmp_path / "cli.md"
    stale.write_text((ROOT / "docs" / "cli.md").read_text().replace("--tp_size", "--tp_sise", 1))
    res = _gen("--check", "--output", str(stale))
    assert res.returncode == 1 and REGENERATE in res.stderr
    assert _gen("--output", str(stale)).returncode == 0
    assert _gen("--check", "--output", str(stale)).returncode == 0


def _toy_app() -> typer.Typer:
    app = typer.Typer()
    sub = typer.Typer(help="Things.")

    @app.command("make")
    def make(out: Path = typer.Option(..., "--out_dir", "--out-dir", help="Where | to write."),
             size: int = typer.Option(7, "--size", help="How big."),
             fast: bool = typer.Option(False, "--fast", help="Go fast."),
             mode: bool = typer.Option(True, "--on/--off", help="Switch."),
             note: Optional[str] = typer.Option(None, "--note")) -> None:
        """Make a thing."""

    @sub.command("list")
    def list_things(as_json: bool = typer.Option(False, "--json", help="Machine-readable.")) -> None:
        """List things."""

    app.add_typer(sub, name="things")
    return app


def test_render_writes_every_command_and_option_of_an_app():
    text = render(_toy_app())
    assert "## `trt-gpt make`" in text and "## `trt-gpt things list`" in text
    assert "Make a thing." in text and "List things." in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| `--")}
    assert set(rows) == {"`--out_dir, --out-dir <path>`", "`--size <int>`", "`--fast`", "`--on / --off`",
                         "`--note <str>`", "`--json`"}
    assert "| required | Where \\| to write. |" in rows["`--out_dir, --out-dir <path>`"]
    assert "| 7 | How big. |" in rows["`--size <int>`"]
    assert "--help" not in text.split("## `trt-gpt make`")[1]


def test_split_help_separates_default_and_required():
    assert split_help("How big.  [default: 7]") == ("How big.", "7")
    assert split_help("Where.  [required]") == ("Where.", "required")
    assert split_help("[default: a; required]") == ("", "a, required")
    assert split_help("Range.  [x>=0; default: 1]") == ("Range. [x>=0]", "1")
    assert split_help("Plain.") == ("Plain.", "")


def test_command_options_lists_every_spelling_of_every_leaf_command():
    opts = command_options(_toy_app())
    assert set(opts) == {("make",), ("things", "list")}
    assert opts[("make",)] == {"--out_dir", "--out-dir", "--size", "--fast", "--on", "--off", "--note", "--help"}


def test_parse_invocation():
    assert parse_invocation("mpirun -np 2 trt-gpt run --engine_dir ./e --input_text 'a b' --max_output_len=8") == (
        ["run"], ["--engine_dir", "--input_text", "--max_output_len"])
    assert parse_invocation("trt-gpt variants list [--json]") == (["variants", "list"], ["--json"])
    assert parse_invocation("python3 convert_checkpoint.py --model_dir gpt2") is None
