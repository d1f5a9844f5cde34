"""docs/cli.md from the CLI itself: walks the typer app and writes every command and option with its help.

    python -m trt_gpt.cli.gen_docs                 # rewrite docs/cli.md (run from the repository root)
    python -m trt_gpt.cli.gen_docs --check         # exit 1 when docs/cli.md differs from the CLI

Only what the built-in commands declare is written: third-party plugins are not loaded (their commands
would make the page depend on what happens to be installed). The walk uses what every click-style command
offers (`list_commands`/`get_command` for groups, `get_params` and each parameter's `get_help_record`), so
it follows the options as they are declared, whatever their number or spelling.

`command_options` and `parse_invocation` serve the documentation tests, which check that every command
the docs show names a sub-command and flags the CLI has.
"""
from __future__ import annotations

import argparse
import inspect
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Iterator

REGENERATE = "python -m trt_gpt.cli.gen_docs"

PREAMBLE = f"""# CLI reference

<!-- Generated from the CLI by `{REGENERATE}`; do not edit by hand. -->

Every flag has the reference's underscore spelling and a dashed one (`--model_dir` / `--model-dir`).
Flags that take several values accept them after one flag, as the reference's scripts do
(`--input_text "a" "b"`, `--stop_words "x" "y"`). Errors print one line (`error: …`) on stderr and exit
non-zero; outputs are written to a temporary directory renamed into place at the end.

Multi-process: `mpirun -np N trt-gpt run|bench|summarize …` (or `srun --mpi=pmix`) on an engine converted
with `--tp_size`/`--pp_size`; output is printed once, by rank 0 (see [multi-gpu.md](multi-gpu.md)).
Plugins: `TRT_GPT_PLUGINS` (allowlist of entry-point or distribution names), `TRT_GPT_DISABLE_AUTOLOAD=1`,
`TRT_GPT_PLUGIN_MODULES` (modules to register from a source tree); plugins may add sub-commands, which
`trt-gpt --help` lists and this page does not.
"""

_EXTRA = re.compile(r"\s*\[([^\[\]]*)\]\s*$")  # click's trailing "[default: x; required]"


def _context(cmd: Any, name: str, parent: Any = None) -> Any:
    return cmd.context_class(cmd, info_name=name, parent=parent)


def walk(cmd: Any, ctx: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """Every leaf command under `cmd` (depth first, in the app's order), with its path and context."""
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is None or getattr(sub, "hidden", False):
                continue
            yield from walk(sub, _context(sub, name, ctx), path + (name,))
    else:
        yield path, cmd, ctx


def split_help(text: str) -> tuple[str, str]:
    """('help text', 'default / required') from a help record's right-hand column."""
    m = _EXTRA.search(text)
    if not m:
        return text.strip(), ""
    extras = [e.strip() for e in m.group(1).split(";")]
    shown = [e.removeprefix("default: ") for e in extras if e.startswith("default:") or e == "required"]
    rest = [e for e in extras if not (e.startswith("default:") or e == "required")]
    help_text = text[:m.start()].strip()
    if rest:
        help_text = f"{help_text} [{'; '.join(rest)}]".strip()
    return help_text, ", ".join(shown)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def command_section(path: tuple[str, ...], cmd: Any, ctx: Any) -> str:
    lines = [f"## `{' '.join(path)}`", ""]
    doc = inspect.cleandoc(cmd.help or "").replace("\b\n", "")
    if doc:
        lines += [doc, ""]
    usage = _cell(cmd.get_usage(ctx)).removeprefix("Usage: ")
    lines += [f"`{usage}`", ""]
    rows = []
    for param in cmd.get_params(ctx):
        if getattr(param, "hidden", False) or "--help" in getattr(param, "opts", ()):
            continue
        record = param.get_help_record(ctx) if getattr(param, "param_type_name", "") == "option" else None
        if record is None:  # a positional argument
            rows.append((f"`{param.human_readable_name}`", "required" if param.required else "", ""))
            continue
        names, help_text = record
        help_text, default = split_help(help_text)
        rows.append((f"`{_cell(names)}`", _cell(default), _cell(help_text)))
    if rows:
        lines += ["| option | default | meaning |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
        lines.append("")
    return "\n".join(lines)


def _root(app: Any = None) -> Any:
    import typer.main

    if app is None:
        from .main import make_app

        app = make_app()
    return typer.main.get_command(app)


def command_options(app: Any = None) -> dict[tuple[str, ...], set[str]]:
    """Every leaf command (its words after `trt-gpt`) -> its option names as declared (every spelling)."""
    root = _root(app)
    return {path[1:]: {o for p in cmd.get_params(ctx) for o in (*getattr(p, "opts", ()),
                                                                  *getattr(p, "secondary_opts", ()))
                       if o.startswith("-")}
            for path, cmd, ctx in walk(root, _context(root, "trt-gpt"), ("trt-gpt",))}


def parse_invocation(command: str) -> tuple[list[str], list[str]] | None:
    """(leading sub-command words, `--flags`) of a shown command `... trt-gpt SUB [SUB] --flag v ...`; None
    when `trt-gpt` is not one of its words. Optional parts in brackets (`[--pp_size 1]`) count as flags."""
    try:
        words = shlex.split(command)
    except ValueError:  # an unbalanced quote in prose: plain words are enough here
        words = command.split()
    if "trt-gpt" not in words:
        return None
    words = words[words.index("trt-gpt") + 1:]
    sub = []
    while words and re.fullmatch(r"[a-z][a-z_]*", words[0]):
        sub.append(words.pop(0))
    return sub, [w.strip("[]").split("=", 1)[0] for w in words if w.strip("[]").startswith("--")]


def render(app: Any = None) -> str:
    """The whole page for `app` (default: the trt-gpt app with built-in commands only)."""
    root = _root(app)
    ctx = _context(root, "trt-gpt")
    sections = [command_section(path, cmd, c) for path, cmd, c in walk(root, ctx, ("trt-gpt",))]
    return PREAMBLE + "\n" + "\n".join(sections).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=REGENERATE, description="Write docs/cli.md from the trt-gpt CLI.")
    ap.add_argument("--output", type=Path, default=Path("docs/cli.md"), help="default: docs/cli.md")
    ap.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 when stale")
    args = ap.parse_args(argv)
    # built-in commands only: set before the plugin manager first loads (it reads these once)
    os.environ["TRT_GPT_DISABLE_AUTOLOAD"] = "1"
    os.environ.pop("TRT_GPT_PLUGIN_MODULES", None)
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(f".{args.output.name}.tmp")
    tmp.write_text(text)
    tmp.replace(args.output)
    rows = [ln for ln in text.splitlines() if ln.startswith("| `-")]
    bare = sum(ln.endswith("|  |") for ln in rows)
    print(f"wrote {args.output}: {text.count(chr(10) + '## `trt-gpt ')} commands, {len(rows)} options"
          + (f" ({bare} without a help line)" if bare else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
