"""Small helpers: one-hot labels and the global seed."""
from __future__ import annotations

import numpy as np

from .config import set_random_seed  # noqa: F401  (public here, as in Keras)


def to_categorical(y, num_classes=None, dtype="float32"):
    """One-hot encode integer labels of shape ``(n,)`` or ``(n, 1)`` to ``(n, num_classes)``.

    ``num_classes`` defaults to ``max(y) + 1``; labels must lie in ``[0, num_classes)``.
    Returns a new array of ``dtype`` (float32 by default, as Keras) with
    ``out[i, y[i]] = 1`` and zeros elsewhere.

    >>> to_categorical([[0], [2]], 3)
    array([[1., 0., 0.],
           [0., 0., 1.]], dtype=float32)
    """
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"to_categorical: y must hold integer labels, received dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"to_categorical: y must have shape (n,) or (n, 1), received {y.shape}")
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y))):
        raise ValueError("to_categorical: y must hold integer labels")
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"to_categorical: num_classes must be a positive integer, "
                         f"received {num_classes!r}")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = (y.min() if y.min() < 0 else y.max()).item()
        raise ValueError(f"to_categorical: labels must lie in [0, {num_classes}), received {bad}")
    out = np.zeros((y.shape[0], int(num_classes)), dtype=dtype)
    out[np.arange(y.shape[0]), y] = 1
    return out


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
