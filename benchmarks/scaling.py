"""Images/s of the seed model on the numba backend against batch size and thread count.

For each thread count (``minicnn.set_num_threads``) and each batch size, a fresh seed
model (float32, Adam, categorical CE) runs ``--warmup`` untimed training steps
(``model.train_on_batch``; the first one loads or compiles the Numba kernels) and then
``--steps`` timed ones; the same for inference (``model.predict(x, batch_size=batch)``).
Reported: the median step time, images/s = batch / median, and the speed-up of each
thread count over the first one. Prints a markdown table to paste into RESULTS.md::

    python benchmarks/scaling.py
    python benchmarks/scaling.py --batches 32,64,128 --threads 1,2 --steps 30 --warmup 5

Default runtime on the 2-core machine: about 30 s when it is quiet.
"""
from __future__ import annotations

import argparse
import os
import sys

import numba

import minicnn

from _common import (markdown_table, median, print_header, seed_batch, seed_model,
                     time_calls)


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, "
                                         f"received {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, received {text!r}")
    return values


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=_int_list, default=[16, 32, 64, 128, 256],
                   help="comma-separated batch sizes (default 16,32,64,128,256)")
    p.add_argument("--threads", type=_int_list, default=None,
                   help="comma-separated thread counts (default 1,...,NUMBA_NUM_THREADS)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per point (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--no-predict", action="store_true", help="skip the inference rows")
    return p.parse_args(argv)


def measure(batch, steps, warmup, predict=True):
    """Median seconds of a training step and (optionally) of a predict call at ``batch``."""
    model = seed_model()
    x, y = seed_batch(batch)
    train = median(time_calls(lambda: model.train_on_batch(x, y), steps, warmup))
    infer = None
    if predict:
        infer = median(time_calls(lambda: model.predict(x, batch_size=batch), steps, warmup))
    return train, infer


def main(argv=None):
    args = parse_args(argv)
    minicnn.set_backend("numba")
    max_threads = numba.config.NUMBA_NUM_THREADS
    threads = args.threads or list(range(1, max_threads + 1))
    if max(threads) > max_threads:
        sys.exit(f"scaling.py: --threads {max(threads)} exceeds NUMBA_NUM_THREADS={max_threads}")
    print_header("Seed model on the numba backend: images/s against batch and threads")
    print(f"Median of {args.steps} steps after {args.warmup} warm-up steps per point; "
          f"train = `model.train_on_batch(x, y)` (forward, loss, backward, Adam), "
          f"predict = `model.predict(x, batch_size=batch)`; float32, NHWC.\n")
    results = {}
    for t in threads:
        minicnn.set_num_threads(t)
        for batch in args.batches:
            results[t, batch] = measure(batch, args.steps, args.warmup, not args.no_predict)
            tr, inf = results[t, batch]
            msg = f"threads {t}, batch {batch}: train {tr * 1e3:.1f} ms"
            if inf is not None:
                msg += f", predict {inf * 1e3:.1f} ms"
            print(msg, file=sys.stderr, flush=True)
    base = threads[0]
    rows = []
    for batch in args.batches:
        for t in threads:
            tr, inf = results[t, batch]
            row = [batch, t, f"{tr * 1e3:.1f}", f"{batch / tr:.0f}",
                   f"{results[base, batch][0] / tr:.2f}"]
            if not args.no_predict:
                row += [f"{inf * 1e3:.1f}", f"{batch / inf:.0f}",
                        f"{results[base, batch][1] / inf:.2f}"]
            rows.append(row)
    header = ["batch", "threads", "train ms/step", "train images/s", f"speed-up vs {base}T"]
    if not args.no_predict:
        header += ["predict ms", "predict images/s", f"speed-up vs {base}T"]
    print(markdown_table(header, rows))
    print(f"\nload average at the end: {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
