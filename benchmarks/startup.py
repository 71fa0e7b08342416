"""Start-up cost: time to the first training step, with a warm and with an empty Numba cache.

(a) **Warm cache**: a new ``python -c`` process imports minicnn, builds the seed model
    (float32, Adam, categorical CE) and runs one ``train_on_batch`` on 64 images. The
    time is measured from just before the process is launched (so it includes the
    interpreter start and ``import minicnn``) to the end of that first step, with the
    system-wide monotonic clock read in both processes. The process runs once to warm
    the cache (compiling whatever is missing or stale), then ``--runs`` more times; the
    median of those is reported. Target: < 2 s.
(b) **Cold compile**: the same in a process whose ``NUMBA_CACHE_DIR`` is a fresh empty
    directory, so every kernel compiles: one training step, then ``model.predict``, then
    (unless ``--no-other-ops``) every other op of the numba backend on float32 (the other
    activations, sparse softmax-CE, dropout, SGD, plain conv and max-pool), each phase
    timed. Target: < 60 s for the training step + predict.

Usage::

    python benchmarks/startup.py
    python benchmarks/startup.py --runs 3 --no-other-ops

Default runtime: about 30-60 s (dominated by the cold compile).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from _common import markdown_table, print_header

# The child process: time stamps (time.monotonic, system-wide on Linux) after each phase.
CHILD = r'''
import time
t_start = time.monotonic()
import json, sys
import numpy as np
import minicnn
from minicnn import layers, models
t_import = time.monotonic()
model = models.Sequential([
    layers.Conv2D(32, (3, 3), activation="relu", padding="same", input_shape=(32, 32, 3)),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
    layers.MaxPooling2D(2, 2),
    layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
    layers.Flatten(),
    layers.Dense(64, activation="relu"),
    layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="categorical_crossentropy")
rng = np.random.default_rng(0)
x = rng.random((64, 32, 32, 3), dtype=np.float32)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=64)]
t_build = time.monotonic()
model.train_on_batch(x, y)
t_step = time.monotonic()
stamps = {"start": t_start, "import": t_import, "build": t_build, "first_step": t_step}
if "predict" in sys.argv[1:]:
    model.predict(x, batch_size=64)
    stamps["predict"] = time.monotonic()
if "other-ops" in sys.argv[1:]:
    from minicnn import ops
    f32 = np.float32
    a = rng.standard_normal((8, 6, 6, 4)).astype(f32)
    k = rng.standard_normal((3, 3, 4, 5)).astype(f32)
    b = np.zeros(5, f32)
    for name in ("relu", "sigmoid", "tanh", "softmax", "linear"):
        out = ops.activation_forward(name, a)
        ops.activation_backward(name, a, out, a)
    z = ops.conv2d_forward(a, k, b, (1, 1), (1, 1, 1, 1), relu=False)
    ops.conv2d_backward(a, k, z, (1, 1), (1, 1, 1, 1), need_dx=True)
    p, arg = ops.maxpool2d_forward(a, (2, 2), (2, 2), (0, 0, 0, 0))
    ops.maxpool2d_backward(p, arg, a.shape, (2, 2), (2, 2), (0, 0, 0, 0))
    logits = rng.standard_normal((8, 10)).astype(f32)
    ops.softmax_cross_entropy(logits, rng.integers(0, 10, size=8), True)
    ops.dropout_forward(a, (rng.random(a.shape) > 0.5).astype(f32), 2.0)
    w, g, v = (np.ones(20, f32), np.ones(20, f32), np.zeros(20, f32))
    ops.sgd_update(w, g, v, 0.01, 0.9, True)
    ops.sgd_update(w, g, v, 0.01, 0.0, False)
    stamps["other_ops"] = time.monotonic()
stamps["threads"] = minicnn.get_num_threads()
stamps["threading_layer"] = minicnn.config.threading_layer()
print("STARTUP-JSON " + json.dumps(stamps))
'''


def run_child(env_extra=None, args=(), cwd=None):
    """Run the child once; returns its stamps relative to the launch, in seconds."""
    env = dict(os.environ)
    env.update(env_extra or {})
    launch = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, cwd=cwd,
                          capture_output=True, text=True)
    done = time.monotonic()
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("STARTUP-JSON ")), None)
    if proc.returncode != 0 or line is None:
        sys.exit(f"startup.py: the child process failed (exit {proc.returncode}):\n"
                 f"{proc.stdout}\n{proc.stderr}")
    stamps = json.loads(line[len("STARTUP-JSON "):])
    rel = {k: v - launch for k, v in stamps.items() if isinstance(v, float)}
    rel["exit"] = done - launch
    rel["threads"], rel["threading_layer"] = stamps["threads"], stamps["threading_layer"]
    return rel


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1,
                   help="measured warm-cache runs after the one that warms the cache (default 1)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-compile run")
    p.add_argument("--no-other-ops", action="store_true",
                   help="cold run: compile only what a training step and predict need")
    p.add_argument("--keep-cache", action="store_true",
                   help="keep the cold run's NUMBA_CACHE_DIR (printed) instead of deleting it")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    print_header("Start-up: process start to the end of the first training step")
    # the repository root: `python -c` puts the working directory first on sys.path, so the
    # child imports this working tree's minicnn (the same one as an editable install)
    cwd = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    first = run_child(cwd=cwd)
    warm = [run_child(cwd=cwd) for _ in range(max(1, args.runs))]
    med = {k: statistics.median(r[k] for r in warm) for k in ("start", "import", "build",
                                                                "first_step", "exit")}
    rows = [["(a) warm cache, median of %d" % len(warm), f"{med['start']:.2f}",
             f"{med['import'] - med['start']:.2f}", f"{med['first_step'] - med['build']:.2f}",
             f"**{med['first_step']:.2f}**", "< 2 s"],
            ["(a) the cache-warming run before it", f"{first['start']:.2f}",
             f"{first['import'] - first['start']:.2f}",
             f"{first['first_step'] - first['build']:.2f}", f"{first['first_step']:.2f}", ""]]
    print(f"Warm: `{sys.executable} -c CHILD` (the seed model, float32, one "
          f"`train_on_batch` on 64 images); threads {warm[0]['threads']}, threading layer "
          f"{warm[0]['threading_layer']}.\n")

    if not args.no_cold:
        cache = tempfile.mkdtemp(prefix="minicnn-numba-cache-")
        child_args = ["predict"] + ([] if args.no_other_ops else ["other-ops"])
        try:
            cold = run_child({"NUMBA_CACHE_DIR": cache}, child_args, cwd=cwd)
        finally:
            if args.keep_cache:
                print(f"cold cache kept in {cache}\n")
            else:
                shutil.rmtree(cache, ignore_errors=True)
        rows.append(["(b) empty cache: first training step", f"{cold['start']:.2f}",
                     f"{cold['import'] - cold['start']:.2f}",
                     f"{cold['first_step'] - cold['build']:.2f}",
                     f"{cold['first_step']:.2f}", ""])
        rows.append(["(b) empty cache: + predict", "", "",
                     f"{cold['predict'] - cold['first_step']:.2f}",
                     f"**{cold['predict']:.2f}**", "< 60 s"])
        if "other_ops" in cold:
            rows.append(["(b) empty cache: + every other op (float32)", "", "",
                         f"{cold['other_ops'] - cold['predict']:.2f}",
                         f"{cold['other_ops']:.2f}", ""])
        extra = "" if args.no_other_ops else " and every other numba op on float32"
        print(f"Cold: the same with `NUMBA_CACHE_DIR` set to a new empty directory, then "
              f"`model.predict(x, batch_size=64)`{extra}.\n")
    print(markdown_table(["run", "interpreter start s", "import minicnn s", "phase s",
                          "since launch s", "target"], rows))
    print("\n'phase' is the first training step (or predict, or the other ops) alone; "
          "'since launch' runs from just before the process is launched to the end of "
          "that phase.")
    print(f"\nload average at the end: {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
