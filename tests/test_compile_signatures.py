"""A cold compile compiles each kernel, and each helper it calls, once per dtype.

A subprocess with an empty NUMBA_CACHE_DIR (a warm cache loads the kernels whole and never
compiles the helpers, so it would show nothing) runs the warm-up groups of ``minicnn compile``
in-process (``minicnn compile`` runs them in processes of their own), then ``minicnn compile``
itself, counting what that compiles, then lists the signatures of every Numba dispatcher in
``minicnn.ops._kernels``. A second signature for the
same dtype is compile time spent twice: a literal constant (``0``, ``True``) or the unsigned
index of a ``prange`` loop passed to a helper, C- and A-contiguous arrays, int32 and int64
scalars.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_ops_backends import float64_outside_accumulators

REPO = Path(__file__).resolve().parents[1]

#: duplicates known to be made by callers: none since the plain and fused im2col kernels are
#: one (the fused ones passed the constants 0 and 1 where the plain ones pass variables)
KNOWN_IN_CONV = set()

LIST_SIGNATURES = r"""
import io, json, sys
from numba.core import event
from numba.core.registry import CPUDispatcher
from minicnn import cli
from minicnn.ops import warmup
import minicnn.ops._kernels as K
from minicnn.ops._kernels import (conv, dense, elementwise, loss, norm, optim, partials,
                                  patches, pool, sched, winograd)
for group in warmup.GROUPS:
    warmup.run(group)
later = []
with event.install_recorder("numba:compile") as rec:
    cli.cmd_compile(io.StringIO())
later = sorted({str(getattr(ev.data["dispatcher"], "py_func", ev.data["dispatcher"]))
                for _, ev in rec.buffer if ev.is_start})
found = {"_after_warmup": later}
for mod in (K, conv, dense, elementwise, loss, norm, optim, partials, patches, pool, sched,
            winograd):
    for name, obj in vars(mod).items():
        if isinstance(obj, CPUDispatcher) and obj.__module__ == mod.__name__:
            found[mod.__name__.rsplit(".", 1)[1] + "." + name] = [
                [str(t) for t in sig] for sig in obj.signatures]
json.dump(found, sys.stdout)
"""


@pytest.fixture(scope="module")
def signatures(tmp_path_factory):
    if os.environ.get("NUMBA_DISABLE_JIT") == "1":
        pytest.skip("NUMBA_DISABLE_JIT=1: nothing is compiled")
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path_factory.mktemp("numba_cache")),
               PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, [os.environ.get(
                   "PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-c", LIST_SIGNATURES], capture_output=True,
                          text=True, env=env, timeout=1200, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def dtype_key(sig):
    """What a signature must differ in to be worth a compile of its own: the array dtypes."""
    return tuple(t.split("(")[1].split(",")[0] if t.startswith("Array(") else "-" for t in sig)


def test_the_warmup_groups_compile_every_kernel_the_shipped_models_use(signatures):
    assert signatures["_after_warmup"] == []


def test_the_shipped_models_compile_each_function_once_per_dtype(signatures):
    compiled = {name: sigs for name, sigs in signatures.items()
                if sigs and not name.startswith("_after")}
    assert {"conv.conv2d_forward", "norm.batchnorm_relu_train_forward", "dense.dense_backward",
            "conv._conv_grads", "winograd.winograd_backward"} <= set(compiled)  # saw them
    twice = {}
    for name, sigs in compiled.items():
        keys = [dtype_key(s) for s in sigs]
        if len(set(keys)) < len(keys):
            twice[name] = sigs
    assert set(twice) <= KNOWN_IN_CONV, json.dumps(twice, indent=1)


def test_only_float32_is_compiled_for_float32_models(signatures):
    for name, sigs in signatures.items():
        if name == "_after_warmup":
            continue
        for sig in sigs:       # the batch-statistics accumulators alone are float64
            assert not float64_outside_accumulators(name, sig), (name, sig)
