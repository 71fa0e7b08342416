"""Cross-entropy losses, stable and with the fused softmax gradient.

``loss.forward(y_pred, y_true, sample_weight=None) -> (loss, dL/dy_pred)`` where
``loss`` is the batch mean. When the model's output layer ends in softmax and
``loss.fuses_with('softmax')`` (a cross-entropy on probabilities), the model calls
``loss.from_logits_forward(z, y_true, sample_weight)`` on the pre-softmax ``z``
(``layer.preactivation()``) instead: the loss comes from a log-sum-exp and the
gradient is the fused ``(p - y) / n``, never the softmax Jacobian times the
cross-entropy gradient.

``sample_weight (n,)`` weights each example's loss; the mean divides by ``n``, not by
the sum of the weights (Keras's default 'sum_over_batch_size' reduction).
"""
from __future__ import annotations

import numpy as np

from . import ops

#: probabilities are clipped to [EPSILON, 1 - EPSILON] when the loss is given
#: probabilities rather than logits (Keras's backend epsilon)
EPSILON = 1e-7


class Loss:
    name = "loss"
    sparse = False

    def __init__(self, from_logits=False, reduction="sum_over_batch_size", name=None):
        if reduction != "sum_over_batch_size":
            raise ValueError(f"{type(self).__name__}: only reduction='sum_over_batch_size' (the "
                             f"Keras default) is supported, received {reduction!r}")
        self.from_logits = bool(from_logits)

    def __call__(self, y_true, y_pred, sample_weight=None):
        """The mean loss (a float), Keras's argument order."""
        return float(self.forward(np.asarray(y_pred), np.asarray(y_true), sample_weight)[0])

    def check_targets(self, y_true, n_classes, arg="y"):
        """Raise ValueError when ``y_true`` cannot be the targets of ``n_classes`` outputs."""

    def fuses_with(self, activation) -> bool:
        """True when this loss, given the output of ``activation``, can be computed from
        the pre-activation instead (with a fused gradient)."""
        return False

    @staticmethod
    def _weights(sample_weight, n, dtype):
        """``sample_weight`` as an ``(n,)`` array of ``dtype``, or None."""
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight)
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape != (n,) or not np.issubdtype(w.dtype, np.number):
            raise ValueError(f"sample_weight must be a numeric array of shape ({n},), "
                             f"received shape {w.shape} dtype {w.dtype}")
        return np.ascontiguousarray(w, dtype=dtype)

    def get_config(self):
        return {"class_name": type(self).__name__, "from_logits": self.from_logits}


class _CrossEntropy(Loss):
    def fuses_with(self, activation) -> bool:
        return activation == "softmax" and not self.from_logits

    def from_logits_forward(self, logits, y_true, sample_weight=None):
        """Loss and fused gradient ``w * (softmax(z) - y) / n`` from logits ``z (n, k)``."""
        w = self._weights(sample_weight, logits.shape[0], logits.dtype)
        return ops.softmax_cross_entropy(logits, self._target(y_true, logits), self.sparse, w)

    def forward(self, y_pred, y_true, sample_weight=None):
        if self.from_logits:
            return self.from_logits_forward(y_pred, y_true, sample_weight)
        # probabilities: -mean sum y log p, as Keras: p renormalised then clipped
        dt = y_pred.dtype.type
        n = y_pred.shape[0]
        total = y_pred.sum(axis=-1, keepdims=True)
        p = y_pred / total
        clipped = np.clip(p, dt(EPSILON), dt(1 - EPSILON))
        t = self._target(y_true, y_pred)
        if self.sparse:
            t = np.eye(y_pred.shape[-1], dtype=y_pred.dtype)[t]
        w = self._weights(sample_weight, n, y_pred.dtype)
        if w is not None:
            t = t * w[:, None]           # the loss is linear in the targets
        loss = -np.sum(t * np.log(clipped)) / n
        # d/dp of -sum t log p, zero where the clip is active; then through p = y / sum(y)
        dp = np.where(clipped == p, -t / clipped, dt(0)) / dt(n)
        dy = (dp - np.sum(dp * p, axis=-1, keepdims=True)) / total
        return dt(loss), dy.astype(y_pred.dtype, copy=False)

    def _target(self, y_true, ref):
        """Validated targets for predictions ``ref (n, k)`` (a wrong label would make the
        numba kernel read outside the row)."""
        y_true = np.asarray(y_true)
        if len(y_true) != ref.shape[0]:
            raise ValueError(f"{self.name}: y_true has {len(y_true)} rows for {ref.shape[0]} "
                             f"predictions")
        self.check_targets(y_true, ref.shape[-1], "y_true")
        if self.sparse:
            return y_true.reshape(-1).astype(np.int64)
        return np.asarray(y_true, dtype=ref.dtype)


class CategoricalCrossentropy(_CrossEntropy):
    """``-mean_b sum_k y[b, k] log p[b, k]`` with one-hot (or soft) labels ``y (n, k)``.

    ``label_smoothing=s`` trains on ``y * (1 - s) + s / k`` instead of ``y`` (Keras's rule).
    """

    name = "categorical_crossentropy"

    def __init__(self, from_logits=False, label_smoothing=0.0, **kwargs):
        super().__init__(from_logits, **kwargs)
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0 <= label_smoothing <= 1:
            raise ValueError(f"CategoricalCrossentropy: label_smoothing must be in [0, 1], "
                             f"received {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def _target(self, y_true, ref):
        t = super()._target(y_true, ref)
        if self.label_smoothing:
            s = ref.dtype.type(self.label_smoothing)
            t = t * (1 - s) + s / ref.dtype.type(ref.shape[-1])
        return t

    def get_config(self):
        cfg = super().get_config()
        cfg["label_smoothing"] = self.label_smoothing
        return cfg

    def check_targets(self, y, n_classes, arg="y"):
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"categorical_crossentropy: {arg} must be one-hot of shape "
                             f"(n, {n_classes}) to match the model's {n_classes} output units, "
                             f"received shape {y.shape}; use to_categorical(y, {n_classes}) or "
                             f"loss='sparse_categorical_crossentropy' for integer labels")
        if not np.all(np.isfinite(y)):
            raise ValueError(f"categorical_crossentropy: {arg} holds NaN or inf")


class SparseCategoricalCrossentropy(_CrossEntropy):
    """Cross-entropy with integer labels ``y (n,)`` or ``(n, 1)`` in ``[0, k)``."""

    name = "sparse_categorical_crossentropy"
    sparse = True

    def check_targets(self, y, n_classes, arg="y"):
        y = np.asarray(y)
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise ValueError(f"sparse_categorical_crossentropy: {arg} must hold integer labels "
                             f"of shape (n,) or (n, 1), received shape {y.shape}")
        if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
            raise ValueError(f"sparse_categorical_crossentropy: {arg} must hold integer labels")
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            bad = (y.min() if y.min() < 0 else y.max()).item()
            raise ValueError(f"sparse_categorical_crossentropy: {arg} labels must lie in "
                             f"[0, {n_classes}) for the model's {n_classes} output units, "
                             f"received {bad}")


LOSSES = {"categorical_crossentropy": CategoricalCrossentropy,
          "sparse_categorical_crossentropy": SparseCategoricalCrossentropy}


def get(loss) -> Loss:
    if isinstance(loss, Loss):
        return loss
    if isinstance(loss, str) and loss.lower() in LOSSES:
        return LOSSES[loss.lower()]()
    raise ValueError(f"compile: unknown loss {loss!r}; known losses: {', '.join(LOSSES)}")


def from_config(cfg) -> Loss:
    classes = {cls.__name__: cls for cls in LOSSES.values()}
    if cfg.get("class_name") not in classes:
        raise ValueError(f"unknown loss class {cfg.get('class_name')!r}")
    kwargs = {k: v for k, v in cfg.items() if k in ("from_logits", "label_smoothing")}
    return classes[cfg["class_name"]](**kwargs)


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
