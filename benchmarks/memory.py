"""How much memory ``fit`` adds on top of the caller's arrays, for the seed program.

The seed program trains on CIFAR-10 as ``x_train / 255.0``: 50,000 x 32 x 32 x 3
float64 (1,229 MB) with one-hot float32 labels (2 MB), ``batch_size=64,
validation_split=0.2``. This script makes arrays of exactly those shapes and dtypes
(random pixels, ``k / 255.0``), then:

1. imports minicnn, builds and compiles the seed model and runs one training step of
   a throwaway model on 64 images, so the Numba kernels are loaded (or compiled) and
   their memory is not counted as fit's;
2. resets the kernel's peak-RSS counter (``/proc/self/clear_refs``, "5") when it may,
   and reads the baseline: VmHWM, VmRSS from ``/proc/self/status``;
3. calls ``model.fit(x, y, batch_size=64, validation_split=0.2, epochs=1, verbose=0)``
   with a callback that sets ``model.stop_training`` after ``--steps`` batches (fit
   checks it after every batch; ``--steps 0`` runs the whole epoch of 625 batches), so
   the validation pass over the held-out 10,000 images runs too;
4. reads VmHWM again: **added = peak after - baseline**. Target: < 300 MB.

The arrays are filled in chunks, so no full-size temporary raises the peak before the
baseline. ``ru_maxrss`` (getrusage) is printed too; it cannot be reset, so it is only a
cross-check. Usage::

    python benchmarks/memory.py              # 100 batches + validation, ~30 s
    python benchmarks/memory.py --steps 0    # a whole epoch
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import numpy as np

MB = 1024 * 1024
TARGET_MB = 300


def status_kb(field):
    """A ``kB`` field of ``/proc/self/status`` (VmRSS, VmHWM) in bytes, or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0). Returns True when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def maxrss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # kB on Linux


def make_arrays(n, seed=0, chunk=2000):
    """``x`` (n, 32, 32, 3) float64 = random uint8 / 255.0 and one-hot ``y`` (n, 10) float32."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, 32, 32, 3), dtype=np.float64)
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        x[lo:hi] = rng.integers(0, 256, size=(hi - lo, 32, 32, 3), dtype=np.uint8) / 255.0
    y = np.zeros((n, 10), dtype=np.float32)
    y[np.arange(n), rng.integers(0, 10, size=n)] = 1
    return x, y


class _StopFit(Exception):
    """Raised by the callback when fit goes on past ``stop_training``."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="training images (default 50000)")
    p.add_argument("--steps", type=int, default=100,
                   help="stop fit after this many batches (default 100; 0: the whole epoch)")
    p.add_argument("--batch", type=int, default=64, help="batch_size (default 64, as the seed)")
    p.add_argument("--validation-split", type=float, default=0.2,
                   help="validation_split (default 0.2, as the seed; 0 disables)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start_rss = status_kb("VmRSS")
    x, y = make_arrays(args.n)
    arrays_mb = (x.nbytes + y.nbytes) / MB
    rss_arrays = status_kb("VmRSS")

    import minicnn
    from minicnn.callbacks import Callback
    from _common import print_header, seed_batch, seed_model

    print_header("Memory that fit adds for the seed program")
    print(f"Caller's arrays: x {x.shape} {x.dtype} ({x.nbytes / MB:.0f} MB), y {y.shape} "
          f"{y.dtype} ({y.nbytes / MB:.1f} MB); fit(batch_size={args.batch}, "
          f"validation_split={args.validation_split}, epochs=1) stopped after "
          f"{args.steps or 'all'} batches; backend {minicnn.get_backend()}.\n")

    model = seed_model()
    warm = seed_model()
    xb, yb = seed_batch(args.batch)
    warm.train_on_batch(xb, yb)          # kernels loaded (or compiled) outside the measurement
    del warm, xb, yb
    rss_warm = status_kb("VmRSS")

    class StopAfter(Callback):
        """Set ``stop_training`` after ``steps`` batches; should fit run another batch anyway
        (a fit that checks the flag only at epoch end), stop it with an exception."""

        def __init__(self, steps):
            super().__init__()
            self.steps, self.seen = steps, 0

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.steps and self.seen > self.steps:
                raise _StopFit
            if self.steps and self.seen >= self.steps:
                self.model.stop_training = True

    reset_ok = reset_peak()
    base_hwm = status_kb("VmHWM")
    base_rss = status_kb("VmRSS")
    base_maxrss = maxrss_bytes()
    stop = StopAfter(args.steps)
    t0 = time.perf_counter()
    validated = True
    try:
        model.fit(x, y, batch_size=args.batch, epochs=1, verbose=0, callbacks=[stop],
                  validation_split=args.validation_split)
    except _StopFit:
        validated = False
    seconds = time.perf_counter() - t0
    hwm, rss, maxrss = status_kb("VmHWM"), status_kb("VmRSS"), maxrss_bytes()

    rows = [
        ("RSS at start (numpy imported)", start_rss),
        ("RSS after creating x and y", rss_arrays),
        ("RSS after import minicnn, model built, kernels warm", rss_warm),
        ("baseline before fit: VmRSS", base_rss),
        ("baseline before fit: VmHWM" + (" (reset)" if reset_ok else " (not resettable)"),
         base_hwm),
        ("peak during fit: VmHWM", hwm),
        ("RSS after fit", rss),
    ]
    print("| measurement | MB |\n| --- | --- |")
    for label, value in rows:
        print(f"| {label} | {value / MB:.0f} |" if value is not None else f"| {label} | n/a |")
    print(f"| ru_maxrss before fit / after fit (cross-check, never reset) | "
          f"{base_maxrss / MB:.0f} / {maxrss / MB:.0f} |")
    if hwm is None or base_hwm is None:
        added = (maxrss - base_maxrss) / MB
        how = "ru_maxrss after - before (a lower bound: the peak may predate fit)"
    else:
        added = (hwm - base_hwm) / MB
        how = "VmHWM after fit - VmHWM before fit"
    n_val = args.n - int(args.n * (1 - args.validation_split))
    val = f"+ validation over {n_val} images" if validated and n_val else "no validation pass"
    print(f"\nfit ran {stop.seen} batches ({val}) in {seconds:.1f} s")
    print(f"caller's arrays: {arrays_mb:.0f} MB")
    verdict = "meets" if added < TARGET_MB else "MISSES"
    print(f"**fit added {added:.0f} MB** ({how}); {verdict} the target of < {TARGET_MB} MB")
    print(f"load average at the end: {tuple(round(v, 2) for v in os.getloadavg())}")
    return 0 if added < TARGET_MB else 1


if __name__ == "__main__":
    sys.exit(main())
