"""Shared pytest setup for the course's tests and notebooks."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# `book` (and `tools`) importable from the tests even without `pip install -e .` ...
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# ... and from the kernels that nbval and tests/test_exercises.py start, which inherit our environment.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)

# Figures drawn by tests render off-screen. Set in-process, not through MPLBACKEND: kernels inherit
# the environment, and notebooks must keep their inline figures to match their committed outputs.
try:
    import matplotlib
except ImportError:
    pass
else:
    matplotlib.use("Agg")

# Fixture notebooks are data for the tests, not notebooks for nbval to run.
collect_ignore_glob = ["fixtures/*"]


import pytest


@pytest.fixture(scope="session")
def _book_cache_path(tmp_path_factory):
    return tmp_path_factory.mktemp("book-cache")


@pytest.fixture
def book_cache(_book_cache_path, monkeypatch):
    """A private cache folder (measured peaks, sweeps) for unit tests that train or measure.

    Shared by the session, so peaks are measured once; set per test, so that kernels
    started by other tests still see the real cache."""
    monkeypatch.setenv("BOOK_CACHE_DIR", str(_book_cache_path))
    return _book_cache_path
