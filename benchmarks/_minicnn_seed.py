"""minicnn worker for benchmarks/compare_frameworks.py: times the seed CNN.

Run by the driver in its own process; it can also be run by hand::

    python benchmarks/_minicnn_seed.py --steps 30 --warmup 5 --batch 64 --threads 2 --mode train

It prints one JSON line on stdout (the last line) with the per-step times in
seconds, measured with ``time.perf_counter`` around each step after the warm-up
(the warm-up also pays for Numba's JIT compilation, reported as ``warmup_s``).
The minicnn of this working tree is imported (the repository root goes first on
``sys.path``). The model is the Keras seed model written with minicnn's
Keras-style API, in NHWC float32, compiled with ``optimizer='adam',
loss='categorical_crossentropy'`` like the Keras one. Training is
``model.train_on_batch(x, y)``; inference is ``model.predict(x,
batch_size=batch)`` (the fused inference path, as Keras's ``predict_on_batch``),
or with ``--infer-step forward`` the layer-by-layer ``model.forward(x)``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

FRAMEWORK = "minicnn"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None,
                   help="minicnn backend (reference, numpy, numba); default: the library's")
    p.add_argument("--infer-step", choices=("forward", "predict"), default="predict",
                   help="predict (default): model.predict(x, batch_size=batch), the fused "
                        "path; forward: model.forward(x), layer by layer")
    return p.parse_args(argv)


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def _first_value(result):
    """The loss out of whatever train_on_batch returns (float, list or dict)."""
    if isinstance(result, dict):
        result = result.get("loss", next(iter(result.values()), None))
    elif isinstance(result, (list, tuple)):
        result = result[0] if result else None
    try:
        return float(result)
    except (TypeError, ValueError):
        return None


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    # Numba's pool must be at least as large as the threads asked for.
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(args.threads, os.cpu_count() or 1)))
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    base = {"framework": FRAMEWORK, "mode": args.mode, "batch": args.batch,
            "threads": args.threads}
    try:
        import numpy as np
        import minicnn
        from minicnn import layers, models
    except Exception as exc:
        emit(dict(base, unavailable=f"{type(exc).__name__}: {exc}"))
        return 3

    config = getattr(minicnn, "config", None)
    if args.backend:
        (getattr(minicnn, "set_backend", None) or config.set_backend)(args.backend)
    (getattr(minicnn, "set_num_threads", None) or config.set_num_threads)(args.threads)
    if config is not None and hasattr(config, "set_random_seed"):
        config.set_random_seed(args.seed)

    # The seed model, written exactly as in Keras.
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", padding="same", input_shape=(32, 32, 3)),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    try:
        n_params = int(model.count_params())
    except Exception:
        n_params = None

    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=args.batch)]

    if args.mode == "train":
        def step():
            return _first_value(model.train_on_batch(x, y))
        method = "model.train_on_batch (compiled: adam, categorical_crossentropy)"
    else:
        if args.infer_step == "forward":
            def step():
                return float(np.asarray(model.forward(x, training=False))[0, 0])
            method = "model.forward(x, training=False)"
        else:
            def step():
                return float(np.asarray(model.predict(x, batch_size=args.batch))[0, 0])
            method = f"model.predict(x, batch_size={args.batch})"

    values = []
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        values.append(step())
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        val = step()
        times.append(time.perf_counter() - t)
        values.append(val)

    extra = {}
    if config is not None:
        for key, fn in (("backend", "get_backend"), ("numba_threads", "get_num_threads"),
                        ("threading_layer", "threading_layer"),
                        ("openblas", "openblas_kernels")):   # OPENBLAS_CORETYPE can pin them
            try:
                extra[key] = getattr(config, fn)()
            except Exception as exc:  # report, don't fail the run over metadata
                extra[key] = f"unknown ({type(exc).__name__})"
    try:
        import numba
        extra["numba"] = numba.__version__
    except Exception:
        pass

    emit(dict(
        base,
        version=getattr(minicnn, "__version__", "unknown"),
        python=platform.python_version(),
        numpy=np.__version__,
        layout="NHWC",
        method=method,
        params=n_params,
        warmup=args.warmup,
        warmup_s=warmup_s,
        first_value=values[0] if values else None,
        last_value=values[-1] if values else None,
        step_times=times,
        **extra,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
