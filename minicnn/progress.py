"""Progress output of ``fit`` and ``evaluate``: a Keras-like bar and per-epoch lines."""
from __future__ import annotations

import sys
import time

import numpy as np


def check_verbose(verbose, what):
    if verbose == "auto":
        return 1
    if isinstance(verbose, (int, np.integer)) and verbose in (0, 1, 2):
        return int(verbose)
    raise ValueError(f"{what}: verbose must be 0, 1, 2 or 'auto', received {verbose!r}")


def print_line(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def fmt_logs(logs):
    order = ["accuracy", "loss", "val_accuracy", "val_loss"]
    keys = [k for k in order if k in logs] + sorted(k for k in logs if k not in order
                                                     and k != "batch_loss")
    return " - ".join(f"{k}: {logs[k]:.4f}" for k in keys)


class Progbar:
    """Keras-like epoch progress: verbose 1 redraws a bar in place on a terminal and prints
    only the final line otherwise; verbose 2 prints one line per epoch."""

    def __init__(self, steps, verbose=1, width=30, stream=None):
        self.steps, self.verbose, self.width = steps, verbose, width
        self.stream = stream or sys.stdout
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._after_first = None     # when the first step ended: the ETA leaves it out
        self._last_draw = 0.0

    def eta(self, step, now):
        """Seconds left, from the steps after the first (which may include compiling)."""
        if step <= 1 or self._after_first is None:
            return None
        return (now - self._after_first) / (step - 1) * (self.steps - step)

    def update(self, step, logs):
        now = time.perf_counter()
        if step == 1:
            self._after_first = now
        if self.verbose != 1 or not self.tty:
            return
        if step < self.steps and now - self._last_draw < 0.1:
            return
        self._last_draw = now
        done = int(self.width * step / max(self.steps, 1))
        bar = "=" * max(done - 1, 0) + (">" if done < self.width else "=") + "." * (self.width - done)
        eta = self.eta(step, now)
        eta = "?" if eta is None else f"{eta:.0f}s"
        self.stream.write(f"\r{step}/{self.steps} [{bar}] - ETA: {eta} - {fmt_logs(logs)}  ")
        self.stream.flush()

    def finish(self, logs, elapsed):
        if not self.verbose:
            return
        per_step = elapsed / max(self.steps, 1) * 1000
        text = f"{self.steps}/{self.steps} - {elapsed:.0f}s - {per_step:.0f}ms/step - {fmt_logs(logs)}"
        if self.verbose == 1 and self.tty:
            self.stream.write("\r" + " " * 120 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()
