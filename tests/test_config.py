"""Process-level settings the numba backend makes: glibc malloc thresholds, huge pages
under the heap."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from minicnn import config

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def test_malloc_opt_out_is_respected(monkeypatch):
    monkeypatch.setattr(config, "_malloc_status", "not applied")
    monkeypatch.setenv("MINICNN_MALLOPT", "0")
    assert config.tune_malloc() == "left alone (MINICNN_MALLOPT=0)"
    assert config.malloc_status() == "left alone (MINICNN_MALLOPT=0)"


_STEPS = textwrap.dedent("""
    import json, resource, numpy as np
    import minicnn
    from minicnn import config, layers, models
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", padding="same", input_shape=(32, 32, 3)),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((64, 32, 32, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 64)]
    for _ in range(3):
        model.train_on_batch(x, y)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        model.train_on_batch(x, y)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
    print(json.dumps({"status": config.malloc_status(), "faults": faults}))
""")


def _faults_per_step(opt_out):
    env = dict(os.environ, MINICNN_BACKEND="numba")
    env.pop("MINICNN_MALLOPT", None)
    if opt_out:
        env["MINICNN_MALLOPT"] = "0"
    out = subprocess.run([sys.executable, "-c", _STEPS], capture_output=True, text=True,
                         env=env, timeout=600, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_numba_backend_keeps_its_pages_between_steps():
    """Without the thresholds every step faults its big buffers in again (hundreds of
    page faults); with them the pages stay with the process."""
    tuned, untuned = _faults_per_step(False), _faults_per_step(True)
    assert tuned["status"].startswith("glibc mmap threshold 32 MiB"), tuned
    assert untuned["status"] == "left alone (MINICNN_MALLOPT=0)", untuned
    assert untuned["faults"] > 50, untuned        # the problem is real at these sizes
    assert tuned["faults"] < untuned["faults"] / 5, (tuned, untuned)


# ----------------------------------------------------------------------------- huge pages
class FakeHeap:
    """A heap whose end moves when told, a clock, and a recording madvise."""

    def __init__(self, monkeypatch, start=0x10000000):
        self.t, self.start, self.end, self.calls, self.collapse_error = 0.0, start, start, [], 0
        monkeypatch.setattr(config, "_heap", {"seen": None, "done": None,
                                              "checked": None, "status": "not applied"})
        monkeypatch.setattr(config, "_clock", lambda: self.t)
        monkeypatch.setattr(config, "_heap_range", lambda: (self.start, self.end))
        monkeypatch.setattr(config, "_huge_pages_off", lambda: None)
        monkeypatch.setattr(config, "_madvise", self.madvise)

    def madvise(self, addr, size, advice):
        self.calls.append((addr, size, advice))
        return self.collapse_error if advice == config._MADV_COLLAPSE else 0

    def step(self, grow=0, seconds=1.0):
        self.t += seconds
        self.end += grow
        return config.settle_heap()


def test_settle_heap_waits_for_the_heap_to_stop_growing(monkeypatch):
    heap = FakeHeap(monkeypatch)
    mib = 2**20
    assert config.heap_status().startswith("none yet: asked for between training")
    heap.step(grow=100 * mib)                   # first look
    heap.step(grow=50 * mib)                    # still growing
    assert heap.calls == []
    status = heap.step()                        # settled: 150 MiB in 2 MiB pages
    assert heap.calls == [(heap.start, 150 * mib, config._MADV_HUGEPAGE),
                          (heap.start, 150 * mib, config._MADV_COLLAPSE)]
    assert status.startswith("2 MiB pages asked for under 150 MiB of the heap"), status
    heap.step(seconds=0.1, grow=0)              # within ADAPT_INTERVAL: no look at all
    heap.step()
    assert len(heap.calls) == 2                 # nothing new to ask for
    heap.step(grow=10 * mib)
    heap.step()                                 # 10 MiB more: below HEAP_STEP
    assert len(heap.calls) == 2
    heap.step(grow=40 * mib + 12345)
    heap.step()                                 # the new part, in whole 2 MiB pages
    assert heap.calls[2:] == [(heap.start + 150 * mib, 50 * mib, config._MADV_HUGEPAGE),
                              (heap.start + 150 * mib, 50 * mib, config._MADV_COLLAPSE)]
    assert config.heap_status().startswith("2 MiB pages asked for under 200 MiB")
    heap.step(grow=-100 * mib)                  # malloc gave 100 MiB back to the system
    heap.step(grow=100 * mib)                   # and took it again: new pages there
    heap.step()
    assert heap.calls[4:] == [(heap.start + 100 * mib, 100 * mib, config._MADV_HUGEPAGE),
                              (heap.start + 100 * mib, 100 * mib, config._MADV_COLLAPSE)]
    assert config.heap_status().startswith("2 MiB pages asked for under 200 MiB")


def test_settle_heap_without_collapse_says_so(monkeypatch):
    heap = FakeHeap(monkeypatch, start=0x10000000 + 4096)    # not on a 2 MiB boundary
    heap.collapse_error = 22                                 # EINVAL: before Linux 6.1
    heap.step(grow=64 * 2**20)
    status = heap.step()
    assert heap.calls[0][0] == 0x10000000 + config.HUGE_PAGE  # the first whole 2 MiB page
    assert "for new pages only: MADV_COLLAPSE needs Linux 6.1" in status, status


def test_huge_pages_opt_out_is_respected(monkeypatch):
    monkeypatch.setattr(config, "_heap", {"seen": None, "done": None, "checked": None,
                                          "status": "not applied"})
    monkeypatch.setenv("MINICNN_HUGEPAGES", "0")
    calls = []
    monkeypatch.setattr(config, "_madvise", lambda *a: calls.append(a) or 0)
    assert config.settle_heap() == "left alone (MINICNN_HUGEPAGES=0)"
    assert config.heap_status() == "left alone (MINICNN_HUGEPAGES=0)" and calls == []


_HEAP = textwrap.dedent("""
    import json, time, numba, numpy as np
    from minicnn import config
    from minicnn.ops import numba_ops          # tunes malloc: big buffers on the heap
    @numba.njit
    def buffers(k):
        out = []
        for i in range(k):
            a = np.empty(2**21, np.float32)      # 8 MB each, as the kernels allocate them
            a[:] = i
            out.append(a)
        return out
    keep = buffers(12)
    t = [0.0]
    config._clock = lambda: t[0]
    for _ in range(3):
        t[0] += 1.0
        status = config.settle_heap()
    with open("/proc/self/smaps_rollup") as f:
        huge = [int(line.split()[1]) for line in f if line.startswith("AnonHugePages")]
    print(json.dumps({"status": status, "huge_kb": huge[0] if huge else None}))
""")


@pytest.mark.skipif(not GLIBC, reason="the heap and madvise of glibc on Linux")
def test_settle_heap_gives_the_kernels_buffers_huge_pages():
    """A heap of kernel buffers (Numba's allocations, 96 MB) gets 2 MiB pages, where the
    kernel has transparent huge pages and MADV_COLLAPSE (Linux 6.1)."""
    env = dict(os.environ)
    env.pop("MINICNN_HUGEPAGES", None)
    env.pop("MINICNN_MALLOPT", None)
    out = subprocess.run([sys.executable, "-c", _HEAP], capture_output=True, text=True,
                         env=env, timeout=600, check=True).stdout
    got = json.loads(out.strip().splitlines()[-1])
    if got["status"].startswith("left alone") or "MADV_COLLAPSE needs" in got["status"]:
        pytest.skip(f"no huge pages to ask for here: {got['status']}")
    assert got["status"].startswith("2 MiB pages asked for under"), got
    assert got["huge_kb"] is not None and got["huge_kb"] >= 64 * 1024, got
