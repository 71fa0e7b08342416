"""PyTorch worker for benchmarks/compare_frameworks.py: times the seed CNN.

Run by the driver in its own process; it can also be run by hand::

    python benchmarks/_torch_seed.py --steps 30 --warmup 5 --batch 64 --threads 2 --mode train

It prints one JSON line on stdout (the last line) with the per-step times in
seconds, measured with ``time.perf_counter`` around each step after the warm-up.
The model is the PyTorch twin of the Keras seed model (319,178 parameters), in
NCHW, PyTorch's native layout (``--channels-last`` switches to the
channels_last memory format); the random input is transposed once, outside the
timed region. Training is ``model.train()``, ``CrossEntropyLoss`` on the logits
(the softmax lives inside the loss) and Adam with lr 1e-3, eps 1e-7 (Keras's
defaults). Inference is ``model.eval()`` under ``torch.inference_mode()``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

FRAMEWORK = "torch"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--mode", choices=("train", "infer"), default="train")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--channels-last", action="store_true",
                   help="run in torch.channels_last memory format (NHWC in memory) instead of NCHW")
    return p.parse_args(argv)


def emit(record):
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def main(argv=None):
    args = parse_args(argv)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, str(args.threads))
    base = {"framework": FRAMEWORK, "mode": args.mode, "batch": args.batch,
            "threads": args.threads}
    try:
        import numpy as np
        import torch
        from torch import nn
    except Exception as exc:  # ImportError, or a broken install raising something else
        emit(dict(base, unavailable=f"{type(exc).__name__}: {exc}"))
        return 3

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(args.threads)
    except RuntimeError:  # only allowed before any parallel work; harmless if refused
        pass
    torch.manual_seed(args.seed)

    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 64), nn.ReLU(),
        nn.Linear(64, 10),  # logits: CrossEntropyLoss applies the softmax
    )
    n_params = sum(p.numel() for p in model.parameters())

    rng = np.random.default_rng(args.seed)
    x_nhwc = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y_onehot = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=args.batch)]
    # Data preparation stays out of the timed region.
    x = torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))
    y = torch.from_numpy(y_onehot)  # class-probability targets (one-hot)
    layout = "NCHW"
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        layout = "NCHW (channels_last memory format)"

    losses = []
    if args.mode == "train":
        model.train()
        loss_fn = nn.CrossEntropyLoss()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-7)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            return loss.item()
        method = "zero_grad + forward + CrossEntropyLoss(logits) + backward + Adam.step"
    else:
        model.eval()

        def step():
            with torch.inference_mode():
                out = torch.softmax(model(x), dim=1)
            return float(out[0, 0])
        method = "model.eval(), torch.inference_mode(), forward + softmax"

    t0 = time.perf_counter()
    for _ in range(args.warmup):
        losses.append(step())
    warmup_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        val = step()
        times.append(time.perf_counter() - t)
        losses.append(val)

    emit(dict(
        base,
        version=torch.__version__,
        python=platform.python_version(),
        numpy=np.__version__,
        layout=layout,
        method=method,
        params=int(n_params),
        torch_threads=torch.get_num_threads(),
        torch_interop_threads=torch.get_num_interop_threads(),
        warmup=args.warmup,
        warmup_s=warmup_s,
        first_value=losses[0] if losses else None,
        last_value=losses[-1] if losses else None,
        step_times=times,
    ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
