"""Multi-rank tests: make `mpi_helpers` (shared by the test modules and not a fixture) importable whatever
pytest's import mode, since the tests directories are not packages."""
from __future__ import annotations

import sys
from pathlib import Path

_HERE = str(Path(__file__).parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
