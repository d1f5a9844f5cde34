"""Makes this folder's helper module (`nemo_writer`, the .nemo fixture writer) importable by the tests: the
suite runs pytest with --import-mode=importlib, which puts no test folder on sys.path."""
from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
