"""README.md opens with exactly the two set-up commands, and CI runs the README's test command verbatim."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_has_two_setup_commands_and_ci_runs_the_second():
    demo, tests = commands()
    assert "trt-gpt demo" in demo and "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()


def test_every_variant_package_is_installed_by_the_test_command():
    tests = commands()[1]
    for pkg in sorted((ROOT / "variants").iterdir()):
        if (pkg / "pyproject.toml").is_file():
            assert f"-e variants/{pkg.name}" in tests, pkg.name


# ---------------------------------------------------------------- the support matrix
# The reference's GPT-example support matrix, and the features users look for beside it: the matrix must keep
# a row for each (a row may say "not yet", never disappear).
REQUIRED_ROWS = ("FP16 / BF16", "FP8", "in-flight batching", "paged KV cache", "INT8 KV cache", "FP8 KV cache",
                 "tensor parallel", "pipeline parallel", "INT8 SmoothQuant", "INT8 weight-only", "INT4 weight-only",
                 "embedding parallelism", "LoRA", "multi-LoRA", "prompt tuning", "GPT-2", "SantaCoder", "StarCoder",
                 "StarCoder2", "Granite", "GPT-Next", "serving")


def matrix_rows() -> list[dict[str, str]]:
    text = (ROOT / "README.md").read_text()
    assert "\n## Support matrix\n" in text, "README.md has no '## Support matrix' section"
    section = text.split("\n## Support matrix\n", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["feature", "trt-gpt", "command", "doc"], header
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split(" | ")))) for ln in lines[2:]]


def documented_commands(cell: str) -> list[tuple[list[str], list[str]]]:
    """(sub-command words, flags) of each `trt-gpt ...` invocation in a command cell."""
    from trt_gpt.cli.gen_docs import parse_invocation

    return [p for p in map(parse_invocation, re.findall(r"`([^`]+)`", cell)) if p is not None]


def test_support_matrix_has_every_feature_row_with_a_status_and_a_doc():
    rows = matrix_rows()
    features = [r["feature"] for r in rows]
    for want in REQUIRED_ROWS:
        assert any(f == want or f.startswith(want + " ") for f in features), f"support matrix lacks a row for {want}"
    for r in rows:
        assert r["trt-gpt"] in ("yes", "not yet"), f"{r['feature']}: status {r['trt-gpt']!r}, expected yes / not yet"
        # that each link resolves (file and heading) is checked for every doc by tests/test_docs_commands.py
        assert re.search(r"\]\(docs/[^)]+\.md[^)]*\)", r["doc"]), f"{r['feature']}: no link to its doc"


def test_every_yes_row_names_commands_and_flags_the_cli_has():
    from trt_gpt.cli.gen_docs import command_options

    options = {path: {o.replace("-", "_") for o in opts} for path, opts in command_options().items()}
    cli_md = (ROOT / "docs" / "cli.md").read_text()
    for r in matrix_rows():
        if r["trt-gpt"] != "yes":
            continue
        cmds = documented_commands(r["command"])
        assert cmds, f"{r['feature']}: a 'yes' row must name a `trt-gpt ...` command"
        for sub, flags in cmds:
            path = tuple(sub)
            assert path in options, f"{r['feature']}: `trt-gpt {' '.join(sub)}` is not a trt-gpt command"
            assert f"## `trt-gpt {' '.join(path)}`" in cli_md, f"{r['feature']}: docs/cli.md lacks trt-gpt {path}"
            for flag in flags:
                assert flag.replace("-", "_") in options[path], (
                    f"{r['feature']}: `trt-gpt {' '.join(path)}` has no option {flag}")
