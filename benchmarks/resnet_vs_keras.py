"""Train examples/resnet_cifar.py on minicnn and, with its two import lines swapped, on Keras.

Both runs read the same images (one ``.npz`` made from the CIFAR-10 archive with
minicnn's loader), use the same seed, epochs and recipe, and print their test accuracy
and training time; this script prints them side by side with the CPU it ran on.

    python benchmarks/resnet_vs_keras.py --data ../shared/datasets/cifar-10-python.tar.gz \
        --python-keras ../tfvenv/bin/python --epochs 12 --seeds 0,1

Each framework runs in its own process, one after the other (never at once).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "resnet_cifar.py"
MINICNN_IMPORTS = ("import minicnn as keras\nfrom minicnn import layers, models, optimizers, "
                   "callbacks\n")
KERAS_IMPORTS = "import keras\nfrom keras import layers, models, optimizers, callbacks\n"


def keras_source():
    text = EXAMPLE.read_text()
    if MINICNN_IMPORTS not in text:
        raise SystemExit(f"{EXAMPLE}: the import lines changed; update this script")
    return text.replace(MINICNN_IMPORTS, KERAS_IMPORTS)


def run(python, source_path, env, log):
    done = subprocess.run([python, str(source_path)], env=env, capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise SystemExit(f"{source_path} failed under {python}; see {log}")
    acc = re.search(r"Test accuracy \(best checkpoint\): ([0-9.]+)", done.stdout)
    secs = re.search(r"Training time: ([0-9.]+) s \(([0-9]+) ms/step\)", done.stdout)
    return float(acc.group(1)), float(secs.group(1)), int(secs.group(2))


def cpu():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*: (.*)", info)
    family = re.search(r"cpu family\s*: (\d+)", info)
    return f"{model.group(1) if model else '?'} (family {family.group(1) if family else '?'})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="cifar-10-python.tar.gz or its folder")
    p.add_argument("--python-keras", required=True, help="a Python with Keras 3 installed")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seeds", default="0")
    p.add_argument("--out", default=None, help="folder for logs and checkpoints")
    args = p.parse_args(argv)
    from minicnn.datasets import cifar10
    out = Path(args.out or tempfile.mkdtemp(prefix="resnet_vs_keras_"))
    out.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = cifar10.load_data(path=args.data)
    npz = out / "cifar.npz"
    np.savez(npz, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    keras_file = out / "resnet_cifar_keras.py"
    keras_file.write_text(keras_source())
    print(f"{len(xtr)} training and {len(xte)} test images; {args.epochs} epochs; CPU {cpu()}")
    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, python, source in (("minicnn", sys.executable, EXAMPLE),
                                     ("keras", args.python_keras, keras_file)):
            env = dict(os.environ, CIFAR_NPZ=str(npz), EPOCHS=str(args.epochs), SEED=str(seed),
                       CHECKPOINT=str(out / f"best_{name}_{seed}.keras"),
                       TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(ROOT))
            acc, secs, ms = run(python, source, env, out / f"{name}_{seed}.log")
            rows.append((name, seed, acc, secs, ms))
            print(f"{name:8s} seed {seed}: test accuracy {acc:.4f}, training {secs:.0f} s "
                  f"({ms} ms/step)", flush=True)
    for name in ("minicnn", "keras"):
        accs = [r[2] for r in rows if r[0] == name]
        print(f"{name:8s} mean test accuracy {np.mean(accs):.4f} over {len(accs)} seed(s)")
    print(f"logs in {out}")


if __name__ == "__main__":
    main()
