"""Keras/TensorFlow worker for benchmarks/compare_frameworks.py: times the seed CNN.

Run by the driver in its own process, usually with the python of a separate
virtualenv (TensorFlow may want another NumPy than the main environment)::

    /work/venvs/tf/bin/python benchmarks/_keras_seed.py --steps 30 --warmup 5 \\
        --batch 64 --threads 2 --mode train

It prints one JSON line on stdout (the last line) with the per-step times in
seconds, measured with ``time.perf_counter`` around each step after the warm-up.
TensorFlow's intra-op and inter-op pools both get ``--threads`` threads.

Training step (``--train-step``):

- ``train_on_batch`` (default): ``model.train_on_batch(x, y)`` on the model
  compiled with ``optimizer='adam', loss='categorical_crossentropy'`` - the
  ordinary Keras call, which runs Keras's own compiled ``tf.function``;
- ``tf_function``: a hand-written ``tf.function`` with ``GradientTape`` and the
  same loss and optimizer.

Inference step (``--infer-step``):

- ``predict_on_batch`` (default): ``model.predict_on_batch(x)``, Keras's
  compiled predict function;
- ``tf_function``: ``tf.function(lambda x: model(x, training=False))``;
- ``call``: eager ``model(x, training=False)``.

``--jit auto|on|off`` is passed to ``compile(jit_compile=...)`` and to the
hand-written ``tf.function`` (XLA). Inputs are converted to tensors once,
outside the timed region. Every step brings its loss (or one output value)
back to Python, so the time covers the work actually done.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

FRAMEWORK = "keras"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-step", choices=("train_on_batch", "tf_function"),
                   default="train_on_batch")
    p.add_argument("--infer-step", choices=("predict_on_batch", "tf_function", "call"),
                   default="predict_on_batch")
    p.add_argument("--jit", choices=("auto", "on", "off"), default="auto",
                   help="XLA: compile(jit_compile=...) / tf.function(jit_compile=...)")
    return p.parse_args(argv)


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    base = {"framework": FRAMEWORK, "mode": args.mode, "batch": args.batch,
            "threads": args.threads}
    try:
        import numpy as np
        import tensorflow as tf
        try:
            import keras
            from keras import layers, models
        except ImportError:  # TF < 2.16 without the standalone keras package
            from tensorflow import keras
            from tensorflow.keras import layers, models
    except Exception as exc:
        emit(dict(base, unavailable=f"{type(exc).__name__}: {exc}"))
        return 3

    # Must happen before TensorFlow runs its first op.
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    keras.utils.set_random_seed(args.seed)

    jit = {"auto": "auto", "on": True, "off": False}[args.jit]

    # The seed model, exactly (keras.Input instead of input_shape= only avoids
    # Keras 3's warning; the network is the same).
    model = models.Sequential([
        keras.Input(shape=(32, 32, 3)),
        layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(10, activation="softmax"),
    ])
    compile_kwargs = {} if jit == "auto" else {"jit_compile": jit}
    model.compile(optimizer="adam", loss="categorical_crossentropy", **compile_kwargs)
    n_params = model.count_params()

    rng = np.random.default_rng(args.seed)
    x_np = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y_np = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=args.batch)]
    # Data preparation stays out of the timed region.
    x = tf.convert_to_tensor(x_np)
    y = tf.convert_to_tensor(y_np)

    tf_jit = None if jit == "auto" else jit
    if args.mode == "train":
        if args.train_step == "train_on_batch":
            def step():
                return float(model.train_on_batch(x, y))
            method = "model.train_on_batch (compiled: adam, categorical_crossentropy)"
        else:
            loss_fn = keras.losses.CategoricalCrossentropy()
            opt = model.optimizer
            variables = model.trainable_variables

            @tf.function(jit_compile=tf_jit)
            def train_step(xb, yb):
                with tf.GradientTape() as tape:
                    loss = loss_fn(yb, model(xb, training=True))
                grads = tape.gradient(loss, variables)
                opt.apply_gradients(zip(grads, variables))
                return loss

            def step():
                return float(train_step(x, y))
            method = "tf.function(GradientTape + CategoricalCrossentropy + Adam.apply_gradients)"
    else:
        if args.infer_step == "predict_on_batch":
            def step():
                return float(np.asarray(model.predict_on_batch(x))[0, 0])
            method = "model.predict_on_batch"
        elif args.infer_step == "tf_function":
            fwd = tf.function(lambda xb: model(xb, training=False), jit_compile=tf_jit)

            def step():
                return float(fwd(x)[0, 0])
            method = "tf.function(model(x, training=False))"
        else:
            def step():
                return float(model(x, training=False)[0, 0])
            method = "eager model(x, training=False)"

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

    emit(dict(
        base,
        version=f"keras {keras.__version__} / tensorflow {tf.__version__}",
        python=platform.python_version(),
        numpy=np.__version__,
        layout="NHWC",
        method=method + (f", jit_compile={args.jit}" if args.jit != "auto" else ""),
        params=int(n_params),
        tf_enable_onednn_opts=os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
        tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
        warmup=args.warmup,
        warmup_s=warmup_s,
        first_value=values[0] if values else None,
        last_value=values[-1] if values else None,
        step_times=times,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
