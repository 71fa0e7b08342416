"""Numbers from real Keras 3 against minicnn's: schedules, optimizer steps (weight decay,
clipping), losses (label smoothing, sample weights).

Keras runs in its own virtualenv (TensorFlow is never a dependency of minicnn): the test
uses ``$MINICNN_KERAS_PYTHON`` or ``../tfvenv/bin/python`` beside the project, and skips
when neither exists.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minicnn import losses, optimizers
from minicnn.optimizers import schedules

ROOT = Path(__file__).resolve().parents[1]


def keras_python():
    env = os.environ.get("MINICNN_KERAS_PYTHON")
    candidates = [env] if env else [str(ROOT.parent / "tfvenv" / "bin" / "python")]
    for c in candidates:
        if c and Path(c).is_file():
            return c
    return None


KERAS_SCRIPT = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import keras
out = {"version": keras.__version__}
s = keras.optimizers.schedules
out["cosine"] = [float(s.CosineDecay(0.0, 10, alpha=0.1, warmup_target=1.0, warmup_steps=4)(i))
                 for i in range(16)]
out["exponential"] = [float(s.ExponentialDecay(0.1, 10, 0.5, staircase=st)(i))
                      for st in (False, True) for i in range(0, 30, 3)]
out["piecewise"] = [float(s.PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])(i)) for i in range(9)]
w0 = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
grads = [np.array([[0.5, 0.1], [-0.2, 3.0]], np.float32),
         np.array([[0.1, -0.4], [0.2, 0.05]], np.float32)]
def run(opt):
    v = keras.Variable(w0.copy())
    for g in grads:
        opt.apply_gradients([(keras.ops.convert_to_tensor(g), v)])
    return np.asarray(v).tolist()
out["adamw"] = run(keras.optimizers.AdamW(learning_rate=0.01))
out["adam_wd_clip"] = run(keras.optimizers.Adam(0.01, weight_decay=0.1, clipnorm=0.5))
out["sgd_wd_gclip"] = run(keras.optimizers.SGD(0.1, momentum=0.9, weight_decay=0.2,
                                               global_clipnorm=1.0))
out["adam_cosine"] = run(keras.optimizers.Adam(s.CosineDecay(0.01, 3)))
z = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0], [0.3, 0.3, 0.1]], np.float32)
y = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
w = np.array([0.5, 2.0, 1.0], np.float32)
cce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
out["smoothed"] = float(cce(y, z))
out["weighted"] = float(keras.losses.CategoricalCrossentropy(from_logits=True)(y, z, sample_weight=w))
out["sparse_weighted"] = float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
    np.argmax(y, 1), z, sample_weight=w))
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def keras_numbers():
    python = keras_python()
    if python is None:
        pytest.skip("no Keras virtualenv (set MINICNN_KERAS_PYTHON or make ../tfvenv)")
    done = subprocess.run([python, "-c", KERAS_SCRIPT], capture_output=True, text=True,
                          timeout=300)
    if done.returncode != 0:
        pytest.skip(f"Keras did not run: {done.stderr[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_schedules_match_keras(keras_numbers):
    cos = schedules.CosineDecay(0.0, 10, alpha=0.1, warmup_target=1.0, warmup_steps=4)
    np.testing.assert_allclose([cos(i) for i in range(16)], keras_numbers["cosine"], rtol=1e-6,
                               atol=1e-7)
    exp = [schedules.ExponentialDecay(0.1, 10, 0.5, staircase=st)(i)
           for st in (False, True) for i in range(0, 30, 3)]
    np.testing.assert_allclose(exp, keras_numbers["exponential"], rtol=1e-6)
    pw = schedules.PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])
    np.testing.assert_allclose([pw(i) for i in range(9)], keras_numbers["piecewise"], rtol=1e-6)


@pytest.mark.parametrize("key,make", [
    ("adamw", lambda: optimizers.AdamW(learning_rate=0.01)),
    ("adam_wd_clip", lambda: optimizers.Adam(0.01, weight_decay=0.1, clipnorm=0.5)),
    ("sgd_wd_gclip", lambda: optimizers.SGD(0.1, momentum=0.9, weight_decay=0.2,
                                            global_clipnorm=1.0)),
    ("adam_cosine", lambda: optimizers.Adam(schedules.CosineDecay(0.01, 3))),
])
def test_optimizer_steps_match_keras(keras_numbers, key, make):
    w = np.array([[1.0, -2.0], [3.0, 0.5]], np.float32)
    grads = [np.array([[0.5, 0.1], [-0.2, 3.0]], np.float32),
             np.array([[0.1, -0.4], [0.2, 0.05]], np.float32)]
    opt = make()
    for g in grads:
        opt.apply_gradients([("w", w, g)])
    np.testing.assert_allclose(w, keras_numbers[key], rtol=2e-6, atol=1e-7)


def test_losses_match_keras(keras_numbers):
    z = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 2.0], [0.3, 0.3, 0.1]], np.float32)
    y = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    w = np.array([0.5, 2.0, 1.0], np.float32)
    smoothed = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    assert smoothed(y, z) == pytest.approx(keras_numbers["smoothed"], rel=1e-6)
    weighted = losses.CategoricalCrossentropy(from_logits=True)
    assert weighted(y, z, sample_weight=w) == pytest.approx(keras_numbers["weighted"], rel=1e-6)
    sparse = losses.SparseCategoricalCrossentropy(from_logits=True)
    assert sparse(np.argmax(y, 1), z, sample_weight=w) == pytest.approx(
        keras_numbers["sparse_weighted"], rel=1e-6)
