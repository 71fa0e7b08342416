"""minicnn / Keras worker for benchmarks/contention.py: times ``train_on_batch`` of the
residual BatchNorm CNN (:func:`minicnn.models.zoo.resnet_cifar`, augmentation off).

The same builder makes the network in both frameworks (given each one's modules), as in
``benchmarks/resnet_step.py``; run it with the Keras virtualenv's python for Keras::

    python benchmarks/_resnet_train.py --framework minicnn --steps 20 --warmup 5 --threads 2
    ../tfvenv/bin/python benchmarks/_resnet_train.py --framework keras --steps 20

It prints one JSON line (the last line) in the format of the seed workers
(``_minicnn_seed.py``...): ``step_times`` in seconds, measured with ``time.perf_counter``
around each step after the untimed warm-up (which pays for Numba's JIT or TF's tracing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--framework", choices=("minicnn", "keras"), required=True)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    base = {"framework": args.framework, "mode": "train", "batch": args.batch,
            "threads": args.threads}
    try:
        import numpy as np
        if args.framework == "keras":
            import keras
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
            version = f"keras {keras.__version__} / tensorflow {tf.__version__}"
        else:
            import minicnn as keras
            keras.set_num_threads(args.threads)
            version = keras.__version__
        from minicnn.models import zoo
    except Exception as exc:
        print(json.dumps(dict(base, unavailable=f"{type(exc).__name__}: {exc}")))
        return 3
    keras.utils.set_random_seed(args.seed)
    model = zoo.resnet_cifar(augment=False, keras=keras)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, (args.batch, 1))
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        model.train_on_batch(x, y)
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(base, version=version, python=platform.python_version(),
                          numpy=np.__version__, layout="NHWC",
                          method="model.train_on_batch (AdamW, sparse categorical CE)",
                          params=int(model.count_params()), warmup=args.warmup,
                          warmup_s=warmup_s, step_times=times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
