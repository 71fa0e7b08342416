"""With ``NUMBA_DISABLE_JIT=1`` every Numba kernel runs as plain Python and gives the
numpy backend's results (the README's promise to learners who step into the kernels).

One fresh process (the variable must be set before Numba is imported) runs
``tests/jit_disabled_run.py``: every op of ``minicnn.ops.OPS`` on the numba backend on
tiny shapes in float32 and float64, against the numpy backend, and two training steps of
a tiny model. The tests below read its report:

- every registered op has cases there (a new op fails here until it gets one);
- each case agrees with the numpy backend and raised nothing: a kernel that only works
  compiled (a Numba intrinsic, a typed-container trick, an integer that wraps only in
  machine arithmetic) or that computes a wrong value fails, naming the op and the case;
- every kernel of ``minicnn/ops/_kernels/`` ran as Python at least once (the list of
  kernels is taken, with the JIT on, from the Numba dispatchers of those modules).

No timing is asserted; the run takes a few seconds.
"""
from __future__ import annotations

import importlib
import json
import os
import pkgutil
import subprocess
import sys

import numba
import pytest

from minicnn import ops
from minicnn.ops import _kernels

HERE = os.path.dirname(os.path.abspath(__file__))
RUNNER = os.path.join(HERE, "jit_disabled_run.py")


@pytest.fixture(scope="module")
def report():
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, RUNNER], capture_output=True, text=True, env=env,
                          timeout=600, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def failures(rows):
    return [f"{r['case']}: {r['exception']}" if r["exception"] else
            f"{r['case']}: relative error {r['error']:.3e} > {r['tolerance']:g}"
            for r in rows if r["exception"] or not r["error"] <= r["tolerance"]]


def test_the_run_had_the_jit_off(report):
    assert report["disable_jit"], "NUMBA_DISABLE_JIT=1 did not reach Numba's config"
    assert not report["dispatchers"], f"still Numba dispatchers: {report['dispatchers']}"
    assert len(report["ran"]) >= 40, report["ran"]     # and the kernels ran as Python


def test_every_case_names_a_registered_op(report):
    assert not report["unknown"], f"cases for ops that are not registered: {report['unknown']}"


@pytest.mark.parametrize("name", list(ops.OPS))
def test_op_runs_as_python_and_matches_numpy(report, name):
    rows = report["ops"].get(name)
    assert rows, (f"ops.{name} has no case in tests/jit_disabled_run.py: add a "
                  f"{name}_cases() there")
    bad = failures(rows)
    assert not bad, f"ops.{name} on numba with NUMBA_DISABLE_JIT=1:\n  " + "\n  ".join(bad)


def test_tiny_model_trains_as_python_like_numpy(report):
    bad = failures([report["model"]])
    assert not bad, bad


def numba_kernels():
    """``module.function`` of every Numba kernel defined in ``minicnn/ops/_kernels/``."""
    names = []
    for info in pkgutil.iter_modules(_kernels.__path__):
        module = importlib.import_module(f"{_kernels.__name__}.{info.name}")
        for attr in dir(module):
            obj = getattr(module, attr)
            if (isinstance(obj, numba.core.dispatcher.Dispatcher)
                    and obj.py_func.__module__ == module.__name__):
                names.append(f"{info.name}.{attr}")
    return names


def test_every_kernel_ran_as_python(report):
    kernels = numba_kernels()
    assert len(kernels) >= 40, kernels           # the discovery itself works
    not_run = sorted(set(kernels) - set(report["ran"]))
    assert not not_run, f"kernels no case reached with the JIT off: {not_run}"


def test_info_reports_the_jit_off():
    """`minicnn info` loads the numba backend: with the JIT off there is no thread pool to
    ask about, and it says so instead of failing."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1", PYTHONPATH=os.path.dirname(HERE))
    proc = subprocess.run([sys.executable, "-m", "minicnn.cli", "info"], capture_output=True,
                          text=True, env=env, timeout=300, cwd=os.path.dirname(HERE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "numba threading layer: none (NUMBA_DISABLE_JIT=1" in proc.stdout, proc.stdout
