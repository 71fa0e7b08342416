"""Where the residual network's step goes: per-step forward and backward times, FLOPs, GFLOP/s.

Builds :func:`minicnn.models.zoo.resnet_cifar` (augmentation off, AdamW, sparse CE, batch
64, float32, as ``benchmarks/resnet_step.py``), warms it up, then times every step of the
plan that ``train_on_batch`` runs (fused steps where the backend fuses) by wrapping each
step layer's ``forward`` and ``backward`` with a timer, and the same for
``predict_on_batch``. Prints per step the median forward and backward times (ms), the
conv/dense FLOPs (2 x multiply-adds; the backward counts the kernel gradient and, unless
the step needs no dL/dx, the input gradient) and the GFLOP/s against the roof given.
The summary lines split the whole step into the layers, the loss, the optimizer update
and what is left (the graph runner, checks, allocations); the last two compare the fused
plan with the layers run one by one (``model.fuse = False``), alternating in one process::

    python benchmarks/resnet_profile.py --steps 20 --roof 270
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _conv_of(layer):
    """The Conv2D or Dense inside a step (a fused step holds its conv as ``.conv``)."""
    from minicnn.layers import Conv2D, Dense
    for cand in (layer, getattr(layer, "conv", None)):
        if isinstance(cand, (Conv2D, Dense)):
            return cand
    return None


def step_flops(layer, n):
    """``(forward, backward)`` FLOPs (2 x multiply-adds) of a step's conv or dense, else 0."""
    conv = _conv_of(layer)
    if conv is None or not conv.built:
        return 0.0, 0.0
    kernel = conv.params["kernel"]
    fwd = 2.0 * n * kernel.size * (conv.output_shape[0] * conv.output_shape[1]
                                   if kernel.ndim == 4 else 1)
    return fwd, fwd * (2 if conv.compute_input_gradient else 1)


class _Timed:
    """Wraps a step layer's passes with timers (instance attributes shadow the methods)."""

    def __init__(self, layer):
        self.layer, self.fwd, self.bwd = layer, [], []
        self._forward, self._backward = layer.forward, layer.backward
        self._backward_pre = getattr(layer, "backward_preactivation", None)
        layer.forward = self.forward
        layer.backward = self.backward
        if self._backward_pre is not None:
            layer.backward_preactivation = self.backward_pre

    def forward(self, x, training=False):
        t = time.perf_counter()
        y = self._forward(x, training=training)
        self.fwd.append(time.perf_counter() - t)
        return y

    def backward(self, dy):
        t = time.perf_counter()
        dx = self._backward(dy)
        self.bwd.append(time.perf_counter() - t)
        return dx

    def backward_pre(self, dz):
        t = time.perf_counter()
        dx = self._backward_pre(dz)
        self.bwd.append(time.perf_counter() - t)
        return dx

    def restore(self):
        for attr in ("forward", "backward", "backward_preactivation"):
            self.layer.__dict__.pop(attr, None)


def _med_ms(times):
    return 1000 * statistics.median(times) if times else 0.0


def profile(steps=20, batch=64, warmup=5):
    """Per-step medians of a training step and of an inference step: returns
    ``(train_rows, train_total_ms, train_parts, infer_rows, infer_total_ms)``; a row is
    ``(name, fwd_ms, bwd_ms, fwd_flops, bwd_flops)``."""
    import minicnn
    from minicnn.models import zoo
    minicnn.utils.set_random_seed(0)
    model = zoo.resnet_cifar(augment=False)
    model.compile(optimizer=minicnn.optimizers.AdamW(1e-3),
                  loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, (batch, 1))
    for _ in range(warmup):
        model.train_on_batch(x, y)
        model.predict_on_batch(x)

    def timed_pass(fn, training):
        plan = model._plan(None)
        timers = [_Timed(s.layer) for s in plan]
        parts = {"loss": [], "update": []}
        orig_loss, orig_update = model.compute_loss, model.apply_gradients

        def compute_loss(*a, **k):
            t = time.perf_counter()
            r = orig_loss(*a, **k)
            parts["loss"].append(time.perf_counter() - t)
            return r

        def apply_gradients():
            t = time.perf_counter()
            orig_update()
            parts["update"].append(time.perf_counter() - t)

        model.compute_loss, model.apply_gradients = compute_loss, apply_gradients
        whole = []
        try:
            for _ in range(steps):
                t = time.perf_counter()
                fn()
                whole.append(time.perf_counter() - t)
        finally:
            for tm in timers:
                tm.restore()
            del model.compute_loss, model.apply_gradients
        rows = []
        for tm in timers:
            f, b = step_flops(tm.layer, batch)
            rows.append((tm.layer.name, _med_ms(tm.fwd), _med_ms(tm.bwd), f,
                         b if training else 0.0))
        return rows, _med_ms(whole), {k: _med_ms(v) for k, v in parts.items()}

    train = timed_pass(lambda: model.train_on_batch(x, y), True)
    infer = timed_pass(lambda: model.predict_on_batch(x), False)
    return train[0], train[1], train[2], infer[0], infer[1], _fused_against_unfused(model, x, y,
                                                                                    steps)


def _fused_against_unfused(model, x, y, steps, rounds=3):
    """Median ms of ``train_on_batch`` and ``predict_on_batch`` with the plan's fusions
    (``model.fuse``) on and off, alternating in rounds within this one process (so that
    a change of the machine's speed between runs does not enter the comparison)."""
    times = {(fuse, what): [] for fuse in (True, False) for what in ("train", "predict")}
    for _ in range(rounds):
        for fuse in (True, False):
            model.fuse = fuse
            for what, fn in (("train", lambda: model.train_on_batch(x, y)),
                             ("predict", lambda: model.predict_on_batch(x))):
                fn()
                for _ in range(max(1, steps // rounds)):
                    t = time.perf_counter()
                    fn()
                    times[(fuse, what)].append(time.perf_counter() - t)
    model.fuse = True
    return {k: _med_ms(v) for k, v in times.items()}


def _table(rows, total, parts, roof, out):
    out(f"{'step':44s} {'fwd ms':>7s} {'GF/s':>6s} {'bwd ms':>7s} {'GF/s':>6s} {'% roof':>6s}")
    sum_f = sum_b = 0.0
    for name, f, b, ff, bf in rows:
        sum_f += f
        sum_b += b
        gf = f"{ff / f / 1e6:6.0f}" if ff and f else "     -"
        gb = f"{bf / b / 1e6:6.0f}" if bf and b else "     -"
        pct = (ff + bf) / (f + b) / 1e6 / roof * 100 if (ff or bf) and (f + b) else None
        out(f"{name[:44]:44s} {f:7.2f} {gf} {b:7.2f} {gb} "
            + (f"{pct:5.0f}%" if pct is not None else "     -"))
    rest = total - sum_f - sum_b - sum(parts.values())
    out(f"layers: forward {sum_f:.1f} ms, backward {sum_b:.1f} ms; "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in parts.items())
        + f"; the rest (runner, checks) {rest:.1f} ms; whole step {total:.1f} ms (median)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--roof", type=float, default=270.0,
                   help="GEMM roof in GFLOP/s for the %% column (default 270, 2 threads)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).parent))
    import _common
    _common.print_header("residual BatchNorm CNN: per-step profile, batch "
                         f"{args.batch}, float32")
    train_rows, train_ms, parts, infer_rows, infer_ms, ab = profile(args.steps, args.batch)
    print("train_on_batch:")
    _table(train_rows, train_ms, parts, args.roof, print)
    print("predict_on_batch:")
    _table(infer_rows, infer_ms, {}, args.roof, print)
    for what in ("train", "predict"):
        on, off = ab[(True, what)], ab[(False, what)]
        print(f"{what}: fused plan {on:.1f} ms, layer by layer (model.fuse = False) {off:.1f} "
              f"ms, alternating in this process: {off / on:.2f}x")


if __name__ == "__main__":
    main()
