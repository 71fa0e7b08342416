"""minicnn / Keras / PyTorch worker for benchmarks/contention.py: times a training step of
the residual BatchNorm CNN (:func:`minicnn.models.zoo.resnet_cifar`, augmentation off).

The same builder makes the network in minicnn and Keras (given each one's modules), as in
``benchmarks/resnet_step.py``; PyTorch runs its twin, ``_torch_resnet.py`` (NCHW,
``zero_grad`` + forward + ``CrossEntropyLoss`` on the logits + backward + ``AdamW.step``).
Run it with the Keras virtualenv's python for Keras::

    python benchmarks/_resnet_train.py --framework minicnn --steps 20 --warmup 5 --threads 2
    ../tfvenv/bin/python benchmarks/_resnet_train.py --framework keras --steps 20
    python benchmarks/_resnet_train.py --framework torch --steps 20

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
    p.add_argument("--framework", choices=("minicnn", "keras", "torch"), required=True)
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
        if args.framework == "torch":
            import torch
            torch.set_num_threads(args.threads)
            version = torch.__version__
        elif args.framework == "keras":
            import keras
            import tensorflow as tf
            tf.config.threading.set_intra_op_parallelism_threads(args.threads)
            tf.config.threading.set_inter_op_parallelism_threads(args.threads)
            version = f"keras {keras.__version__} / tensorflow {tf.__version__}"
        else:
            import minicnn as keras
            keras.set_num_threads(args.threads)
            version = keras.__version__
        if args.framework != "torch":
            from minicnn.models import zoo
    except Exception as exc:
        print(json.dumps(dict(base, unavailable=f"{type(exc).__name__}: {exc}")))
        return 3
    rng = np.random.default_rng(args.seed)
    x = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, (args.batch, 1))
    if args.framework == "torch":
        step, params, layout, method = torch_step(args.seed, x, y)
    else:
        keras.utils.set_random_seed(args.seed)
        model = zoo.resnet_cifar(augment=False, keras=keras)
        model.compile(optimizer=keras.optimizers.AdamW(1e-3),
                      loss="sparse_categorical_crossentropy")
        params, layout = int(model.count_params()), "NHWC"
        method = "model.train_on_batch (AdamW, sparse categorical CE)"

        def step():
            model.train_on_batch(x, y)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        step()
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    print(json.dumps(dict(base, version=version, python=platform.python_version(),
                          numpy=np.__version__, layout=layout, method=method,
                          params=params, warmup=args.warmup,
                          warmup_s=warmup_s, step_times=times)))
    return 0


def torch_step(seed, x, y):
    """``(step, parameters, layout, method)`` for the PyTorch twin on the NHWC
    batch ``x`` and labels ``y (n, 1)``; the input is transposed once, outside the timing."""
    import torch
    from torch import nn
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _torch_resnet
    torch.manual_seed(seed)
    model = _torch_resnet.resnet_cifar()
    model.train()
    opt = _torch_resnet.optimizer(model)
    loss_fn = nn.CrossEntropyLoss()
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    yt = torch.from_numpy(y[:, 0].astype("int64"))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
    return (step, _torch_resnet.count_params(model), "NCHW (native)",
            "zero_grad + forward + CrossEntropyLoss(logits) + backward + AdamW.step")


if __name__ == "__main__":
    sys.exit(main())
