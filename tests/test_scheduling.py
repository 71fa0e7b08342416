"""Dynamic scheduling of the numba conv kernels and the threads' wait policy.

No timings here (never a timed assertion): the slowdown under load is measured by
benchmarks/contention.py. These tests hold the pieces it relies on: the atomic
counter hands out every ticket once, the slots cover the batch exactly once, the
results do not depend on which thread took which slot, and libgomp really starts
with minicnn's wait policy (its default spinning, PASSIVE when thread adaptation is off),
whichever call starts Numba's threads first.
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
import os, sys
import numpy as np
from minicnn import config
first = sys.argv[1]
if first == "ops":
    from minicnn.ops import numba_ops
elif first == "set_num_threads":
    import minicnn
    minicnn.set_num_threads(1)
elif first == "train_on_batch":         # the trainer's adapt_threads is the first call
    import minicnn
    from minicnn import layers, models
    model = models.Sequential([minicnn.Input((4, 4, 1)), layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    model.train_on_batch(np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int64))
print("STATUS", config.apply_wait_policy())
print("LAYER", config.threading_layer())
print("LEFT", os.environ.get("OMP_WAIT_POLICY"))
"""


def _probe(env_extra, first="ops"):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MINICNN_ADAPT_THREADS")}
    env.update(env_extra, OMP_DISPLAY_ENV="VERBOSE", NUMBA_THREADING_LAYER="omp")
    proc = subprocess.run([sys.executable, "-c", _WAIT_PROBE, first], capture_output=True,
                          text=True, timeout=300, env=env)
    if proc.returncode != 0 and "omp" in proc.stderr.lower() and "layer" in proc.stderr.lower():
        pytest.skip("Numba's OpenMP threading layer is not available here")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


_FIRST_CALLS = ("ops", "set_num_threads", "train_on_batch")


@pytest.mark.parametrize("first", _FIRST_CALLS)
def test_numba_threads_start_with_libgomps_default_spinning(first):
    """libgomp prints its settings at start-up with OMP_DISPLAY_ENV: whichever minicnn call
    starts Numba's threads, they spin before they sleep (libgomp's default; a sleeping
    thread costs a wake-up per parallel region, benchmarks/RESULTS.md 11), and the
    variable does not stay behind in os.environ."""
    proc = _probe({}, first)
    assert "GOMP_SPINCOUNT = '300000'" in proc.stderr
    assert "STATUS libgomp's default" in proc.stdout
    assert "LEFT None" in proc.stdout


@pytest.mark.parametrize("first", _FIRST_CALLS)
def test_without_thread_adaptation_the_threads_sleep_at_once(first):
    """MINICNN_ADAPT_THREADS=0: nothing moves a step off a busy core, so a waiting thread
    must not spin (seed step with one core busy: 79 ms spinning, 22.5 passive). The
    variable is set only while the threads start (torch or TensorFlow loaded later keep
    their defaults)."""
    proc = _probe({"MINICNN_ADAPT_THREADS": "0"}, first)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in proc.stderr
    assert "GOMP_SPINCOUNT = '0'" in proc.stderr
    assert "STATUS PASSIVE" in proc.stdout
    assert "LEFT None" in proc.stdout


def test_a_wait_policy_set_by_the_user_is_left_alone():
    proc = _probe({"OMP_WAIT_POLICY": "ACTIVE", "MINICNN_ADAPT_THREADS": "0"})
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in proc.stderr
    assert "STATUS OMP_WAIT_POLICY=ACTIVE (yours)" in proc.stdout
    assert "LEFT ACTIVE" in proc.stdout
