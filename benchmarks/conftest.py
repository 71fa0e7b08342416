"""Fixtures of the pytest-benchmark suites: backend cases, the ``bench`` runner, a summary.

These suites never run with the project's tests (``testpaths = ["tests"]``); run them
explicitly::

    python -m pytest benchmarks/ --benchmark-only
    python -m pytest benchmarks/ --benchmark-only --benchmark-columns=min,median,max,rounds
    python -m pytest benchmarks/ --benchmark-only -k numba --minicnn-threads 1
    python -m pytest benchmarks/ --benchmark-only --benchmark-json /tmp/bench.json

Every test takes a ``case`` (one per backend: ``reference-b1``, ``numpy-b64``,
``numba-b64``; the reference backend is plain Python loops and runs 1 image, see
``--reference-batch``) and times one callable with ``bench(fn, ...)``:

- the callable runs once before timing (JIT compile or cache load with the same
  dtypes and layouts, first touch of the buffers), so no compile time is counted;
- numpy and numba cases use pytest-benchmark's normal calibrated mode (so
  ``--benchmark-min-rounds`` / ``--benchmark-max-time`` apply); the reference case
  uses ``benchmark.pedantic`` with ``--reference-rounds`` rounds of one call;
- ``benchmark.extra_info`` gets the backend, batch, threads, Numba threading layer,
  BLAS threads, numba/numpy versions, and from the median: GFLOP/s for the GEMM-based
  ops (FLOPs from the shapes) and images/s for whole steps. ``--benchmark-json`` keeps it.

At the end a markdown table of medians, GFLOP/s and images/s is printed, with the
conv backward-data rows derived as described in ``test_bench_kernels.py``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numba
import numpy as np
import pytest

import minicnn
from minicnn.config import BACKENDS

from _common import BATCH, blas_threads, machine_info, markdown_table

_ROWS: list[dict] = []
_INFO: dict = {}


def pytest_addoption(parser):
    group = parser.getgroup("minicnn benchmarks")
    group.addoption("--minicnn-threads", type=int, default=None,
                    help="threads for minicnn.set_num_threads (default: NUMBA_NUM_THREADS, "
                         "i.e. every core)")
    group.addoption("--minicnn-backends", default="reference,numpy,numba",
                    help="comma-separated backends to benchmark (default: all three)")
    group.addoption("--reference-batch", type=int, default=BATCH["reference"],
                    help="batch of the reference backend (plain loops; default 1)")
    group.addoption("--reference-rounds", type=int, default=3,
                    help="timed rounds of one call each on the reference backend (default 3)")


@dataclass(frozen=True)
class Case:
    """One backend at its batch size, with the thread count in force."""
    backend: str
    batch: int
    threads: int = 0

    @property
    def id(self):
        return f"{self.backend}-b{self.batch}"


def _threads(config_):
    n = config_.getoption("--minicnn-threads")
    return int(n) if n else int(numba.config.NUMBA_NUM_THREADS)


def pytest_configure(config):
    config.addinivalue_line("markers", "only_backends(*names): generate the case fixture for "
                                       "these backends only")


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames:
        return
    opt = metafunc.config.getoption
    names = [b.strip() for b in opt("--minicnn-backends").split(",") if b.strip()]
    only = metafunc.definition.get_closest_marker("only_backends")
    if only is not None:
        names = [b for b in names if b.lower() in only.args]
    cases = []
    for name in names:
        backend = name.lower()
        if backend not in BACKENDS:
            raise pytest.UsageError(f"--minicnn-backends: unknown backend {name!r}; known: "
                                    f"{', '.join(BACKENDS)}")
        batch = opt("--reference-batch") if backend == "reference" else BATCH[backend]
        cases.append(Case(backend, int(batch)))
    metafunc.parametrize("case", cases, ids=[c.id for c in cases], indirect=True)


@pytest.fixture
def case(request):
    """Switch to the case's backend for the test, then restore the previous one.

    ``set_num_threads`` runs inside the switch because it also sets the BLAS limit for the
    active backend (1 thread on numba, where Numba's pool owns the parallelism; ``n`` on
    numpy and reference): ``set_backend`` alone keeps whatever limit was set last, so a
    numba case after a numpy one would otherwise run with multi-threaded BLAS.
    """
    param = request.param
    threads = _threads(request.config)
    with minicnn.use_backend(param.backend):
        minicnn.set_num_threads(threads)
        yield Case(param.backend, param.batch, minicnn.get_num_threads())


def _base_info(case_):
    if not _INFO:
        _INFO.update(machine_info())
    return {
        "backend": case_.backend,
        "batch": case_.batch,
        "threads": minicnn.get_num_threads(),
        "threading_layer": _INFO["threading_layer"],
        "blas_threads": blas_threads(),
        "openblas_kernels": _INFO["blas_kernels"],
        "numba": numba.__version__,
        "numpy": np.__version__,
    }


class Bench:
    """Times one callable for a test; see the module docstring."""

    def __init__(self, benchmark, case_, request):
        self.benchmark, self.case, self.request = benchmark, case_, request

    def __call__(self, fn, *, group, flops=None, nbytes=None, images=None, layer=None, op=None,
                 **extra):
        """Benchmark ``fn()``.

        group : the pytest-benchmark group (one table per group, every backend in it)
        flops : floating-point operations of one call, for GFLOP/s (GEMM-based ops)
        nbytes : bytes one call must read and write at least, for GB/s (memory-bound ops)
        images : images processed by one call, for images/s (whole steps)
        layer, op : labels for the summary and the derived backward-data rows
        """
        bm, case_ = self.benchmark, self.case
        bm.group = group
        info = bm.extra_info
        info.update(_base_info(case_))
        info.update(extra)
        if layer is not None:
            info["layer"] = layer
        if op is not None:
            info["op"] = op
        if flops is not None:
            info["flops"] = int(flops)
        if nbytes is not None:
            info["bytes"] = int(nbytes)
        if case_.backend == "reference":
            rounds = self.request.config.getoption("--reference-rounds")
            result = bm.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1)
        else:
            fn()   # warm-up outside the timed region: JIT compile / cache load, first touch
            result = bm(fn)
        med = None
        if bm.stats is not None and bm.stats.stats.rounds:
            med = bm.stats.stats.median
            info["median_s"] = med
            if flops is not None:
                info["gflops"] = flops / med / 1e9
            if nbytes is not None:
                info["gbytes_per_s"] = nbytes / med / 1e9
            if images is not None:
                info["images_per_s"] = images / med
        _ROWS.append({"name": self.request.node.name, "group": group, "backend": case_.backend,
                      "batch": case_.batch, "threads": info["threads"], "median": med,
                      "flops": flops, "nbytes": nbytes, "images": images, "layer": layer, "op": op})
        return result


@pytest.fixture
def bench(benchmark, case, request):
    return Bench(benchmark, case, request)


# ----------------------------------------------------------------------------- summary
def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def _derived_rows():
    """Backward-data = (weights + data) - (weights only), per backend and conv layer."""
    by_key = {}
    for r in _ROWS:
        if r["op"] in ("bwd-weights", "bwd-weights+data") and r["median"] is not None:
            by_key.setdefault((r["group"], r["backend"], r["batch"]), {})[r["op"]] = r
    rows = []
    for (group, backend, batch), ops in by_key.items():
        if len(ops) != 2:
            continue
        w, wd = ops["bwd-weights"], ops["bwd-weights+data"]
        diff = wd["median"] - w["median"]
        gflops = (w["flops"] / diff / 1e9) if diff > 0 and w["flops"] else None
        rows.append([f"{group}: backward-data (derived)", backend, batch, w["threads"],
                     _fmt(diff * 1e3, ".3f"), _fmt(gflops, ".1f"), "", ""])
    return rows


def pytest_terminal_summary(terminalreporter):
    if not any(r["median"] is not None for r in _ROWS):    # none ran, or --benchmark-disable
        return
    tr = terminalreporter
    tr.section("minicnn benchmarks: medians")
    info = _INFO or machine_info()
    load = os.getloadavg() if hasattr(os, "getloadavg") else ()
    tr.write_line(f"CPU: {info['cpu']} ({info['cores']} cores, {info['simd']}); Python "
                  f"{info['python']}, NumPy {info['numpy']}, Numba {info['numba']}, "
                  f"SciPy {info['scipy']}; threading layer {info['threading_layer']}")
    tr.write_line(f"load average at first benchmark {info['loadavg']}, at the end "
                  f"{tuple(round(v, 2) for v in load)}")
    tr.write_line("")
    rows = []
    for r in _ROWS:
        med = r["median"]
        if med is None:
            continue
        gflops = r["flops"] / med / 1e9 if (med and r["flops"]) else None
        gbs = r["nbytes"] / med / 1e9 if (med and r["nbytes"]) else None
        ips = r["images"] / med if (med and r["images"]) else None
        rows.append([r["name"], r["backend"], r["batch"], r["threads"],
                     _fmt(med * 1e3 if med else None, ".3f"), _fmt(gflops, ".1f"),
                     _fmt(gbs, ".1f"), _fmt(ips, ".0f")])
    rows += _derived_rows()
    header = ["benchmark", "backend", "batch", "threads", "median ms", "GFLOP/s", "GB/s",
              "images/s"]
    for line in markdown_table(header, rows).splitlines():
        tr.write_line(line)
    tr.write_line("")
    tr.write_line("backward-data (derived) = median(need_dx=True) - median(need_dx=False): the "
                  "kernels compute dkernel and dx in one pass that recomputes im2col, so dx "
                  "is not timed on its own.")
