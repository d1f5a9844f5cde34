"""Every `trt-gpt ...` command the documentation shows uses sub-commands and flags the CLI has, and every
relative link in it resolves.

Scans README.md and docs/*.md: inline `trt-gpt ...` spans and the lines of bash blocks (continuations
joined). A line or table row that says "not yet" shows a command of a feature to come and is skipped.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from trt_gpt.cli.gen_docs import command_options, parse_invocation

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_commands(path: Path) -> list[tuple[int, str]]:
    """(line number, command text) of every trt-gpt invocation shown in a markdown file."""
    found: list[tuple[int, str]] = []
    in_bash, pending, start = False, "", 0
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            in_bash = line.strip() in ("```bash", "```sh") and not in_bash
            continue
        if "not yet" in line.lower():
            continue
        if in_bash:
            code = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            if pending:
                code = pending + " " + code.strip()
            else:
                start = n
            if code.rstrip().endswith("\\"):
                pending = code.rstrip()[:-1]
                continue
            pending = ""
            if re.search(r"(^|\s)trt-gpt\s", code):
                found.append((start, code))
        else:
            found += [(n, span) for span in re.findall(r"`([^`]*\btrt-gpt [^`]*)`", line)]
    return found


CASES = [(p, n, c) for p in DOCS for n, c in doc_commands(p)]


@pytest.fixture(scope="module")
def options() -> dict[tuple[str, ...], set[str]]:
    """Leaf command path -> option names, dashes as underscores (both spellings are accepted)."""
    return {path: {o.replace("-", "_") for o in opts} for path, opts in command_options().items()}


@pytest.mark.parametrize("path,line,command", CASES, ids=[f"{p.name}:{n}" for p, n, _ in CASES])
def test_documented_command_exists(options, path, line, command):
    parsed = parse_invocation(command)
    if parsed is None or "|" in command.split("trt-gpt", 1)[1].split()[0]:
        pytest.skip("not an invocation (or a list of sub-commands)")
    sub, flags = parsed
    if not sub:  # `trt-gpt --help` and the like
        return
    # the longest known command path among the leading words (`variants list`, `run`, ...)
    path_ = max((p for p in options if tuple(sub[:len(p)]) == p), key=len, default=None)
    assert path_ is not None, f"{path.name}:{line}: `trt-gpt {' '.join(sub)}` is not a trt-gpt command"
    for flag in flags:
        if flag in ("--help",):
            continue
        assert flag.replace("-", "_") in options[path_], (
            f"{path.name}:{line}: `trt-gpt {' '.join(path_)}` has no option {flag} (in: {command})")


def test_the_scan_finds_commands():
    assert len(CASES) > 40


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=[p.name for p in DOCS])
def test_relative_links_resolve(doc):
    for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
        if re.match(r"[a-z]+://", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.exists(), f"{doc.name}: link to {target}: {path} does not exist"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", dest.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{doc.name}: link to {target}: no such heading"
