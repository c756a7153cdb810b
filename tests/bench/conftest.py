"""The benchmarks' verdict logic, tested without running them (tests/integration/test_benchmarks.py
runs them). bench/'s scripts import their shared module as ``common``, as ``python bench/x.py``
finds it, so bench/ goes on the import path here as it does there."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "bench"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
