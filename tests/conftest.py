"""Shared fixtures: a seeded generator, the backend and the dtype.

``error_log`` collects the worst relative errors seen by the comparison tests
(between backends, against PyTorch, against finite differences); they are
printed in the terminal summary so a run shows how close the numbers are.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

# Conv2D(algorithm="auto") on the numba backend times both algorithms the first time it
# sees a shape and caches the choice in ~/.minicnn: tests use the fixed rule instead
# (MINICNN_AUTOTUNE=0), so that they never depend on timings nor write to the home
# directory; tests/test_winograd.py runs the autotuner itself in a temporary home.
os.environ.setdefault("MINICNN_AUTOTUNE", "0")
# The thread governor (minicnn.config.adapt_threads) drops threads when other processes
# load the machine; the partial sums of a step then round differently. Tests must not
# depend on the load: off here, and tests/test_threads_under_load.py drives it with fake
# counters.
os.environ.setdefault("MINICNN_ADAPT_THREADS", "0")

import minicnn  # noqa: E402
from minicnn import config  # noqa: E402

BACKENDS = config.BACKENDS
DTYPES = (np.float32, np.float64)

_WORST_ERRORS: dict[str, float] = {}


class ErrorLog:
    """Keep the largest error seen under each label."""

    def __init__(self, store):
        self._store = store

    def record(self, label: str, err: float) -> float:
        err = float(err)
        if err > self._store.get(label, -1.0):
            self._store[label] = err
        return err


@pytest.fixture(scope="session")
def error_log():
    return ErrorLog(_WORST_ERRORS)


def pytest_terminal_summary(terminalreporter):
    if not _WORST_ERRORS:
        return
    terminalreporter.section("minicnn: worst relative errors observed")
    width = max(len(k) for k in _WORST_ERRORS)
    for label in sorted(_WORST_ERRORS):
        terminalreporter.write_line(f"{label:<{width}}  {_WORST_ERRORS[label]:.3e}")


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Run the test once per backend; the previous backend is restored afterwards."""
    with minicnn.use_backend(request.param):
        yield request.param


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return request.param
