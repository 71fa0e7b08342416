"""Process-level settings the numba backend makes: glibc malloc thresholds."""
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
