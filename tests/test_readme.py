"""README.md opens with exactly the two set-up commands, and CI runs the README's test command verbatim."""
from __future__ import annotations

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
