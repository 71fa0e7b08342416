"""Rescaling, ZeroPadding2D and Softmax: small layers that are one NumPy expression each.

- ``Rescaling(scale, offset=0.0)``: ``y = x * scale + offset``; ``dx = dy * scale``.
- ``ZeroPadding2D(padding=(1, 1))``: ``(n, h, w, c) -> (n, h + t + b, w + l + r, c)`` with
  zeros around each image; ``dx`` is the inside of ``dy``. ``padding`` is an int, a pair
  ``(rows, cols)`` (both sides) or ``((top, bottom), (left, right))``, as in Keras.
- ``Softmax(axis=-1)``: ``y = softmax(x)`` over the last axis (the ``'softmax'``
  activation op, so the three backends run it); ``dx = y * (dy - sum(dy * y))``.

Rescaling and ZeroPadding2D are the same single NumPy expression on every backend.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import activations
from .base import Layer


class Rescaling(Layer):
    def __init__(self, scale, offset=0.0, **kwargs):
        for arg, val in (("scale", scale), ("offset", offset)):
            if isinstance(val, bool) or not isinstance(val, numbers.Real) or not np.isfinite(val):
                raise ValueError(f"Rescaling: {arg} must be a finite number, received {val!r}")
        self.scale, self.offset = float(scale), float(offset)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        dt = x.dtype.type
        return x * dt(self.scale) + dt(self.offset)

    def backward(self, dy):
        return dy * dy.dtype.type(self.scale)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(scale=self.scale, offset=self.offset)
        return cfg


def _padding(value):
    def nonneg_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0
    if nonneg_int(value):
        return ((int(value),) * 2,) * 2
    if isinstance(value, (tuple, list)) and len(value) == 2:
        if all(nonneg_int(v) for v in value):
            return ((int(value[0]),) * 2, (int(value[1]),) * 2)
        if all(isinstance(v, (tuple, list)) and len(v) == 2 and all(nonneg_int(u) for u in v)
               for v in value):
            return tuple(tuple(int(u) for u in v) for v in value)
    raise ValueError(f"ZeroPadding2D: padding must be an int, a pair of ints or a pair of pairs "
                     f"((top, bottom), (left, right)) of non-negative ints, received {value!r}")


class ZeroPadding2D(Layer):
    def __init__(self, padding=(1, 1), data_format=None, **kwargs):
        if data_format not in (None, "channels_last"):
            raise ValueError(f"ZeroPadding2D: minicnn is NHWC only (data_format="
                             f"'channels_last'), received {data_format!r}")
        self.padding = _padding(padding)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: ZeroPadding2D expects images (h, w, c), received "
                             f"input_shape {tuple(input_shape)}")
        (t, b), (l, r) = self.padding
        h, w, c = input_shape
        return (h + t + b, w + l + r, c)

    def call(self, x, training=False):
        (t, b), (l, r) = self.padding
        return np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))

    def backward(self, dy):
        (t, b), (l, r) = self.padding
        h, w = dy.shape[1] - t - b, dy.shape[2] - l - r
        return np.ascontiguousarray(dy[:, t:t + h, l:l + w, :])

    def get_config(self):
        cfg = super().get_config()
        cfg["padding"] = [list(p) for p in self.padding]
        return cfg


class Softmax(Layer):
    def __init__(self, axis=-1, **kwargs):
        if axis != -1:
            raise ValueError(f"Softmax: minicnn normalises over the last axis only (axis=-1), "
                             f"received {axis!r}")
        self.axis = -1
        self.activation = "softmax"
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        self._x, self._y = x, activations.forward("softmax", x)
        return self._y

    def backward(self, dy):
        return activations.backward("softmax", self._x, self._y, dy)

    def preactivation(self):
        return getattr(self, "_x", None)

    def backward_preactivation(self, dz):
        return dz

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg
