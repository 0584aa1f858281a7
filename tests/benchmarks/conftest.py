"""The benchmark scripts import their helpers as top-level modules (``common``, ``gpu_report``,
``gpu_accelerators``), as they do when run from benchmarks/; the tests import them the same way."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))
