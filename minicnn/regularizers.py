"""Weight regularizers (``kernel_regularizer=``), Keras's names and defaults.

A regularizer adds a penalty ``R(w)`` to the loss and its gradient ``dR/dw`` to the
weight's gradient, in every training step (and the penalty to the loss ``evaluate``
reports, as Keras does):

- ``L2(l2=0.01)``: ``R = l2 * sum(w**2)``, ``dR/dw = 2 * l2 * w``;
- ``L1(l1=0.01)``: ``R = l1 * sum(|w|)``, ``dR/dw = l1 * sign(w)``;
- ``L1L2(l1=0.0, l2=0.0)``: both.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def _factor(value, arg, owner):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0 \
            or not math.isfinite(value):
        raise ValueError(f"{owner}: {arg} must be a number >= 0, received {value!r}")
    return float(value)


class Regularizer:
    def __call__(self, w) -> float:
        """The penalty ``R(w)``."""
        raise NotImplementedError

    def gradient(self, w):
        """``dR/dw``, an array like ``w``."""
        raise NotImplementedError

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class L1L2(Regularizer):
    def __init__(self, l1=0.0, l2=0.0):
        owner = type(self).__name__
        self.l1, self.l2 = _factor(l1, "l1", owner), _factor(l2, "l2", owner)

    def __call__(self, w):
        w = np.asarray(w, dtype=np.float64)
        return self.l1 * float(np.sum(np.abs(w))) + self.l2 * float(np.sum(w * w))

    def gradient(self, w):
        dt = w.dtype.type
        return dt(self.l1) * np.sign(w) + dt(2 * self.l2) * w

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=l2)

    def get_config(self):
        return {"l2": self.l2}


REGULARIZERS = {"L1": L1, "L2": L2, "L1L2": L1L2}
_NAMES = {"l1": L1, "l2": L2, "l1_l2": L1L2}


def get(value, owner="regularizer"):
    """``None``, a :class:`Regularizer`, a name ('l1', 'l2', 'l1_l2') or a saved config."""
    if value is None or isinstance(value, Regularizer):
        return value
    if isinstance(value, str) and value.lower() in _NAMES:
        return _NAMES[value.lower()]()
    if isinstance(value, dict) and value.get("class_name") in REGULARIZERS:
        return REGULARIZERS[value["class_name"]].from_config(dict(value.get("config") or {}))
    raise ValueError(f"{owner}: unknown regularizer {value!r}; use regularizers.L1, L2 or L1L2")


def serialize(reg):
    return None if reg is None else {"class_name": type(reg).__name__, "config": reg.get_config()}


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
