"""The seed program's own training path, timed: ``model.fit`` in minicnn and Keras, an epoch loop in PyTorch.

``compare_frameworks.py`` times single ``train_on_batch`` calls. The seed program
(the Keras CIFAR-10 tutorial) trains with ``model.fit(..., batch_size=64)``, and
in Keras 3 ``fit`` and ``train_on_batch`` do not run the same compiled function
(``jit_compile='auto'`` turns XLA on for ``fit``; measured here it is about
twice slower than ``train_on_batch``'s oneDNN kernels). This script times what
the seed program runs: one epoch of ``fit`` over ``--steps`` batches of random
32x32x3 images (shuffled, no validation), ms per step = epoch time / steps.
PyTorch gets the equivalent hand-written epoch (shuffled index, batch slicing,
forward, CrossEntropyLoss, backward, Adam) on NCHW tensors made before timing.

Each framework runs in its own process; rounds alternate minicnn, Keras,
PyTorch; every process runs one warm-up epoch (JIT / tracing) and then
``--epochs`` timed epochs. Reported: the median ms/step over all timed epochs.

    python benchmarks/compare_fit.py --rounds 3 --python-keras /work/venvs/tf/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMON = r"""
import json, os, sys, time
import numpy as np
steps, batch, threads, epochs = {steps}, {batch}, {threads}, {epochs}
rng = np.random.default_rng(0)
n = steps * batch
x = rng.random((n, 32, 32, 3), dtype=np.float32)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, n)]
"""

MINICNN = COMMON + r"""
sys.path.insert(0, {repo!r})
import minicnn
from minicnn import layers, models
minicnn.set_num_threads(threads)
model = models.Sequential([
    layers.Conv2D(32, (3, 3), activation='relu', padding='same', input_shape=(32, 32, 3)),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
    layers.Flatten(),
    layers.Dense(64, activation='relu'),
    layers.Dense(10, activation='softmax')])
model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
model.fit(x[:10 * batch], y[:10 * batch], epochs=1, batch_size=batch, verbose=0)
times = []
for _ in range(epochs):
    t = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
    times.append((time.perf_counter() - t) / steps)
print(json.dumps({{"version": minicnn.__version__, "ms_per_step": [t * 1e3 for t in times],
                  "note": "threading layer " + minicnn.config.threading_layer()
                          + ", OpenBLAS kernels " + minicnn.config.openblas_kernels()}}))
"""

KERAS = COMMON + r"""
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tensorflow as tf, keras
from keras import layers, models
tf.config.threading.set_intra_op_parallelism_threads(threads)
tf.config.threading.set_inter_op_parallelism_threads(threads)
model = models.Sequential([
    keras.Input((32, 32, 3)),
    layers.Conv2D(32, (3, 3), activation='relu', padding='same'),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
    layers.Flatten(),
    layers.Dense(64, activation='relu'),
    layers.Dense(10, activation='softmax')])
model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
model.fit(x[:10 * batch], y[:10 * batch], epochs=1, batch_size=batch, verbose=0)
times = []
for _ in range(epochs):
    t = time.perf_counter()
    model.fit(x, y, epochs=1, batch_size=batch, verbose=0)
    times.append((time.perf_counter() - t) / steps)
print(json.dumps({{"version": "keras " + keras.__version__ + " / tensorflow " + tf.__version__,
                  "ms_per_step": [t * 1e3 for t in times], "note": "model.fit defaults"}}))
"""

TORCH = COMMON + r"""
import torch
from torch import nn
torch.set_num_threads(threads)
torch.manual_seed(0)
model = nn.Sequential(
    nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
    nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
    nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten(),
    nn.Linear(4096, 64), nn.ReLU(), nn.Linear(64, 10))
loss_fn = nn.CrossEntropyLoss()
opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)
xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
yt = torch.from_numpy(y)
model.train()
def epoch(count):
    order = torch.randperm(count)
    for s in range(0, count, batch):
        idx = order[s:s + batch]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    return loss.item()
epoch(min(10 * batch, n))
times = []
for _ in range(epochs):
    t = time.perf_counter()
    epoch(n)
    times.append((time.perf_counter() - t) / steps)
print(json.dumps({{"version": torch.__version__, "ms_per_step": [t * 1e3 for t in times],
                  "note": "NCHW epoch loop"}}))
"""


def run(code, python, args):
    src = code.format(steps=args.steps, batch=args.batch, threads=args.threads,
                      epochs=args.epochs, repo=REPO)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    proc = subprocess.run([python, "-c", src], capture_output=True, text=True, env=env,
                          timeout=1800)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": err}
    return json.loads(lines[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=100, help="batches per timed epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per process")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--python-keras", default=sys.executable)
    p.add_argument("--python-torch", default=sys.executable)
    args = p.parse_args(argv)
    workers = {"minicnn": (MINICNN, sys.executable), "Keras/TF": (KERAS, args.python_keras),
               "PyTorch": (TORCH, args.python_torch)}
    results = {name: {"ms": [], "version": "", "error": None} for name in workers}
    for rnd in range(args.rounds):
        for name, (code, python) in workers.items():
            if results[name]["error"]:
                continue
            rec = run(code, python, args)
            if "error" in rec:
                results[name]["error"] = rec["error"]
                print(f"round {rnd + 1}: {name} unavailable: {rec['error']}", file=sys.stderr)
                continue
            results[name]["ms"] += rec["ms_per_step"]
            results[name]["version"] = rec["version"]
            results[name]["note"] = rec.get("note")
            print(f"round {rnd + 1}: {name:8s} " + ", ".join(f"{v:.1f}" for v in rec["ms_per_step"])
                  + " ms/step", file=sys.stderr)
    print(f"Seed program training path (fit, batch {args.batch}, {args.threads} threads, "
          f"{args.steps} steps per epoch, {args.rounds} rounds x {args.epochs} epochs; "
          f"OPENBLAS_CORETYPE {os.environ.get('OPENBLAS_CORETYPE') or 'unset'} for every "
          f"worker; minicnn: {results['minicnn'].get('note') or '-'})\n")
    print("| framework | version | ms/step (median) | images/s | minicnn speed-up |")
    print("|---|---|---:|---:|---:|")
    mine = statistics.median(results["minicnn"]["ms"]) if results["minicnn"]["ms"] else None
    for name, r in results.items():
        if not r["ms"]:
            print(f"| {name} | unavailable: {r['error']} | | | |")
            continue
        med = statistics.median(r["ms"])
        ratio = f"{med / mine:.2f}x" if mine else "-"
        print(f"| {name} | {r['version']} | {med:.1f} | {args.batch / med * 1e3:.0f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
