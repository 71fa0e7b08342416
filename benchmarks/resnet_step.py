"""train_on_batch and predict_on_batch of the residual BatchNorm CNN: minicnn against Keras.

The same builder (:func:`minicnn.models.zoo.resnet_cifar`, given each framework's modules)
makes the network in both; each framework runs in its own process, rounds alternating,
batch 64, float32, augmentation layers off (they cost nothing at inference and differ in
interpolation). Prints medians per round and the ratio Keras / minicnn.

    python benchmarks/resnet_step.py --python-keras ../tfvenv/bin/python --rounds 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WORKER = r'''
import json, os, sys, time
sys.path.insert(0, sys.argv[2])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import numpy as np
fw, steps = sys.argv[1], int(sys.argv[3])
if fw == "keras":
    import keras
else:
    import minicnn as keras
from minicnn.models import zoo
keras.utils.set_random_seed(0)
model = zoo.resnet_cifar(augment=False, keras=keras)
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
rng = np.random.default_rng(0)
x = rng.random((64, 32, 32, 3), dtype=np.float32)
y = rng.integers(0, 10, (64, 1))
for _ in range(5):
    model.train_on_batch(x, y)
t_train = []
for _ in range(steps):
    t = time.perf_counter(); model.train_on_batch(x, y); t_train.append(time.perf_counter() - t)
for _ in range(3):
    model.predict_on_batch(x)
t_pred = []
for _ in range(steps):
    t = time.perf_counter(); model.predict_on_batch(x); t_pred.append(time.perf_counter() - t)
print(json.dumps({"train_ms": 1000 * float(np.median(t_train)),
                  "predict_ms": 1000 * float(np.median(t_pred)),
                  "params": int(model.count_params())}))
'''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-keras", required=True)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import _common
    _common.print_header("residual BatchNorm CNN, batch 64: minicnn vs Keras")
    results = {"minicnn": [], "keras": []}
    for r in range(args.rounds):
        for fw, python in (("minicnn", sys.executable), ("keras", args.python_keras)):
            done = subprocess.run([python, "-c", WORKER, fw, str(ROOT), str(args.steps)],
                                  capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if done.returncode:
                raise SystemExit(f"{fw} worker failed:\n{done.stderr[-2000:]}")
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            results[fw].append(rec)
            print(f"round {r + 1} {fw:8s} train_on_batch {rec['train_ms']:7.1f} ms   "
                  f"predict_on_batch {rec['predict_ms']:6.1f} ms   ({rec['params']:,} params)",
                  flush=True)
    med = {fw: {k: sorted(r[k] for r in recs)[len(recs) // 2] for k in ("train_ms", "predict_ms")}
           for fw, recs in results.items()}
    for k in ("train_ms", "predict_ms"):
        print(f"median {k}: minicnn {med['minicnn'][k]:.1f}, keras {med['keras'][k]:.1f}, "
              f"minicnn speed / keras speed = {med['keras'][k] / med['minicnn'][k]:.2f}x")


if __name__ == "__main__":
    main()
