"""train_on_batch and predict_on_batch of the residual BatchNorm CNN: minicnn against Keras
and PyTorch.

The same builder (:func:`minicnn.models.zoo.resnet_cifar`, given each framework's modules)
makes the network in minicnn and Keras; PyTorch runs its twin (``_torch_resnet.py``: NCHW,
the same layers and parameters; a training step is ``zero_grad`` + forward +
``CrossEntropyLoss`` on the logits + backward + ``AdamW.step``, inference ``eval()`` under
``inference_mode()``, forward + softmax), twice: in NCHW, its native layout (``torch``),
and in the ``channels_last`` memory format (``torch_cl``), which ran this network faster
on CPU. Each framework runs in its own process, rounds
alternating, batch 64, float32, augmentation layers off (they cost nothing at inference
and differ in interpolation). Prints medians per round and the speed ratios minicnn /
Keras and minicnn / PyTorch. PyTorch is skipped when ``--python-torch`` cannot import it.

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
rng = np.random.default_rng(0)
x = rng.random((64, 32, 32, 3), dtype=np.float32)
y = rng.integers(0, 10, (64, 1))
if fw in ("torch", "torch_cl"):
    try:
        import torch
    except ImportError as exc:
        print(json.dumps({"unavailable": str(exc)}))
        sys.exit(0)
    sys.path.insert(0, os.path.join(sys.argv[2], "benchmarks"))
    import _torch_resnet
    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(0)
    net = _torch_resnet.resnet_cifar()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y[:, 0].astype("int64"))
    if fw == "torch_cl":
        net = net.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = _torch_resnet.optimizer(net)
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step():
        net.train()
        opt.zero_grad(set_to_none=True)
        loss_fn(net(xt), yt).backward()
        opt.step()

    def predict_step():
        net.eval()
        with torch.inference_mode():
            torch.softmax(net(xt), dim=1)
    params = _torch_resnet.count_params(net)
else:
    if fw == "keras":
        import keras
    else:
        import minicnn as keras
    from minicnn.models import zoo
    keras.utils.set_random_seed(0)
    model = zoo.resnet_cifar(augment=False, keras=keras)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")

    def train_step():
        model.train_on_batch(x, y)

    def predict_step():
        model.predict_on_batch(x)
    params = model.count_params()
for _ in range(5):
    train_step()
t_train = []
for _ in range(steps):
    t = time.perf_counter(); train_step(); t_train.append(time.perf_counter() - t)
for _ in range(3):
    predict_step()
t_pred = []
for _ in range(steps):
    t = time.perf_counter(); predict_step(); t_pred.append(time.perf_counter() - t)
print(json.dumps({"train_ms": 1000 * float(np.median(t_train)),
                  "predict_ms": 1000 * float(np.median(t_pred)),
                  "params": int(params)}))
'''


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python-keras", required=True)
    p.add_argument("--python-torch", default=sys.executable,
                   help="the python that imports torch (default: this one)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import _common
    _common.print_header("residual BatchNorm CNN, batch 64: minicnn vs Keras and PyTorch")
    pythons = {"minicnn": sys.executable, "keras": args.python_keras, "torch": args.python_torch,
               "torch_cl": args.python_torch}
    results = {fw: [] for fw in pythons}
    for r in range(args.rounds):
        for fw, python in pythons.items():
            if fw not in results:
                continue
            done = subprocess.run([python, "-c", WORKER, fw, str(ROOT), str(args.steps)],
                                  capture_output=True, text=True,
                                  env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if done.returncode:
                raise SystemExit(f"{fw} worker failed:\n{done.stderr[-2000:]}")
            rec = json.loads(done.stdout.strip().splitlines()[-1])
            if "unavailable" in rec:
                print(f"{fw}: skipped ({rec['unavailable']})", flush=True)
                del results[fw]
                continue
            results[fw].append(rec)
            print(f"round {r + 1} {fw:8s} train_on_batch {rec['train_ms']:7.1f} ms   "
                  f"predict_on_batch {rec['predict_ms']:6.1f} ms   ({rec['params']:,} params)",
                  flush=True)
    med = {fw: {k: sorted(r[k] for r in recs)[len(recs) // 2] for k in ("train_ms", "predict_ms")}
           for fw, recs in results.items()}
    for k in ("train_ms", "predict_ms"):
        others = [fw for fw in med if fw != "minicnn"]
        print(f"median {k}: " + ", ".join(f"{fw} {med[fw][k]:.1f}" for fw in med) + "; "
              + ", ".join(f"minicnn speed / {fw} speed = {med[fw][k] / med['minicnn'][k]:.2f}x"
                          for fw in others))


if __name__ == "__main__":
    main()
