"""The thread governor: under load from other processes, Numba runs on the CPUs left free.

The counters (/proc/stat, this process's CPU time) and the clock are faked here: no
timing, no load generator. benchmarks/contention.py measures the effect itself.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

import minicnn
from minicnn import config, layers, machine, models


@pytest.mark.parametrize("base, cpus, others, expected", [
    (2, 2, 0.0, 2), (2, 2, 0.3, 2), (2, 2, 0.49, 2), (2, 2, 0.51, 1), (2, 2, 0.9, 1),
    (2, 2, 2.0, 1), (8, 8, 2.6, 5), (4, 8, 0.0, 4), (1, 2, 0.0, 1),
])
def test_free_threads(base, cpus, others, expected):
    assert config.free_threads(base, cpus, others) == expected


class FakeMachine:
    """A clock and counters: ``others`` CPUs busy besides this process's ``own`` CPUs."""

    def __init__(self, monkeypatch):
        self.t = 100.0
        self.busy = 1000.0
        self.own_total = 10.0
        monkeypatch.setattr(config, "_clock", lambda: self.t)
        monkeypatch.setattr(machine, "machine_busy_seconds", lambda stat_text=None: self.busy)
        monkeypatch.setattr(machine, "own_cpu_seconds", lambda: self.own_total)

    def advance(self, seconds, others, own=1.0):
        self.t += seconds
        self.own_total += own * seconds
        self.busy += (others + own) * seconds


@pytest.fixture
def governed(monkeypatch):
    monkeypatch.delenv("MINICNN_ADAPT_THREADS", raising=False)
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs a Numba pool of at least 2 threads")
    monkeypatch.setattr(config, "_adapt", {"sample": None, "status": "not started",
                                           "others": None})
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    before = numba.get_num_threads()
    with minicnn.use_backend("numba"):
        config.set_num_threads(2)
        yield FakeMachine(monkeypatch)
    config.set_num_threads(before)


def test_a_busy_core_drops_a_thread_and_a_quiet_one_gives_it_back(governed):
    assert config.adapt_threads() == 2                    # first look: a sample only
    governed.advance(0.2, others=1.0)
    assert config.adapt_threads() == 2                    # not ADAPT_INTERVAL yet
    governed.advance(0.4, others=1.0)
    assert config.adapt_threads() == 1
    assert numba.get_num_threads() == 1
    assert "1 of 2 threads" in config.adapt_status() and "1.00 of 2" in config.adapt_status()
    governed.advance(0.6, others=0.05)
    assert config.adapt_threads() == 2 and numba.get_num_threads() == 2


def test_the_governor_can_be_switched_off(governed, monkeypatch):
    monkeypatch.setenv("MINICNN_ADAPT_THREADS", "0")
    config.adapt_threads()
    governed.advance(1.0, others=1.0)
    assert config.adapt_threads() == 2
    assert config.adapt_status().startswith("off")


def test_never_more_threads_than_the_user_set(governed):
    config.set_num_threads(1)
    config.adapt_threads()
    governed.advance(1.0, others=0.0)
    assert config.adapt_threads() == 1


def test_training_steps_consult_the_governor(governed):
    """train_on_batch, predict and evaluate all run under the governor's thread count."""
    model = models.Sequential([layers.Conv2D(2, 3, input_shape=(6, 6, 1)), layers.Flatten(),
                               layers.Dense(3, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    x = np.zeros((4, 6, 6, 1), dtype=np.float32)
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    model.train_on_batch(x, y)                             # the first sample
    governed.advance(1.0, others=1.5)
    model.train_on_batch(x, y)
    assert numba.get_num_threads() == 1
    governed.advance(1.0, others=0.0)
    model.predict(x, batch_size=2)
    assert numba.get_num_threads() == 2
    governed.advance(1.0, others=1.0)
    model.evaluate(x, y, verbose=0)
    assert numba.get_num_threads() == 1
