"""Dynamic scheduling of the numba conv kernels and the threads' wait policy.

No timings here (never a timed assertion): the slowdown under load is measured by
benchmarks/contention.py. These tests hold the pieces it relies on: the atomic
counter hands out every ticket once, the slots cover the batch exactly once, the
results do not depend on which thread took which slot, and libgomp really starts
with the passive wait policy.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit, prange

from minicnn.ops import numba_ops, numpy_ops
from minicnn.ops._kernels import sched


@njit(parallel=True)
def _count_up(steps, counter, olds):
    """Thread ``t`` adds ``steps[t, i]`` for every ``i``; the old values of the first
    ``olds.shape[1]`` additions are kept."""
    keep = olds.shape[1]
    for t in prange(steps.shape[0]):
        for i in range(steps.shape[1]):
            old = sched._fetch_add(counter, 0, np.int64(steps[t, i]))
            if i < keep:
                olds[t, i] = old


def test_fetch_add_hands_out_every_ticket_exactly_once():
    """Millions of increments from every Numba thread at once, of 1-3 each: the counter
    ends at their sum and no old value is handed out twice. (A plain read-modify-write
    put in its place passed this test too on a 2-core machine: the threads seldom
    collide on one counter. The test holds the intrinsic's arithmetic and indexing.)"""
    nt = max(2, numba.get_num_threads())
    rng = np.random.default_rng(0)
    steps = rng.integers(1, 4, size=(nt, 8_000_000), dtype=np.int8)
    olds = np.full((nt, 200_000), -1, dtype=np.int64)
    counter = np.zeros(1, dtype=np.int64)
    _count_up(steps, counter, olds)
    assert counter[0] == steps.sum(dtype=np.int64)
    assert np.unique(olds).size == olds.size


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 300), nt=st.integers(1, 16))
def test_slots_cover_the_batch_exactly_once_in_order(n, nt):
    slots = sched._slot_count(n, nt)
    assert 1 <= slots <= n
    assert slots == (1 if nt == 1 else min(n, sched.SLOTS_PER_THREAD * nt))
    bounds = [sched._slot_range(s, slots, n) for s in range(slots)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    for (lo, hi), (lo2, _) in zip(bounds, bounds[1:]):
        assert hi == lo2
    sizes = [hi - lo for lo, hi in bounds]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("shape, kernel_shape", [((13, 9, 9, 3), (3, 3, 3, 8)),
                                                 ((16, 8, 8, 16), (3, 3, 16, 8))])
def test_conv_backward_is_bitwise_reproducible_and_right(shape, kernel_shape):
    """Per-slot partial gradients summed in slot order: the same bits on every call,
    whichever thread took which slot."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    kernel = rng.standard_normal(kernel_shape).astype(np.float32)
    dy = rng.standard_normal(shape[:3] + (kernel_shape[3],)).astype(np.float32)
    first = numba_ops.conv2d_backward(x, kernel, dy, (1, 1), (1, 1, 1, 1))
    for _ in range(10):
        again = numba_ops.conv2d_backward(x, kernel, dy, (1, 1), (1, 1, 1, 1))
        for a, b in zip(first, again):
            assert np.array_equal(a, b)
    expected = numpy_ops.conv2d_backward(x.astype(np.float64), kernel.astype(np.float64),
                                         dy.astype(np.float64), (1, 1), (1, 1, 1, 1))
    for got, want in zip(first, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


_WAIT_PROBE = """
import os
from minicnn import config
from minicnn.ops import numba_ops
print("STATUS", config.apply_wait_policy())
print("LAYER", config.threading_layer())
print("LEFT", os.environ.get("OMP_WAIT_POLICY"))
"""


def _probe(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_extra, OMP_DISPLAY_ENV="TRUE", NUMBA_THREADING_LAYER="omp")
    return subprocess.run([sys.executable, "-c", _WAIT_PROBE], capture_output=True,
                          text=True, timeout=300, env=env)


def test_numba_threads_start_with_the_passive_wait_policy():
    """libgomp prints its settings at start-up with OMP_DISPLAY_ENV: the policy it read
    must be PASSIVE, and the variable must not stay behind in os.environ (torch or
    TensorFlow loaded later keep their defaults)."""
    proc = _probe({})
    if proc.returncode != 0 and "omp" in proc.stderr.lower() and "layer" in proc.stderr.lower():
        pytest.skip("Numba's OpenMP threading layer is not available here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in proc.stderr
    assert "STATUS PASSIVE" in proc.stdout
    assert "LEFT None" in proc.stdout


def test_a_wait_policy_set_by_the_user_is_left_alone():
    proc = _probe({"OMP_WAIT_POLICY": "ACTIVE"})
    if proc.returncode != 0 and "omp" in proc.stderr.lower() and "layer" in proc.stderr.lower():
        pytest.skip("Numba's OpenMP threading layer is not available here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in proc.stderr
    assert "STATUS OMP_WAIT_POLICY=ACTIVE (yours)" in proc.stdout
