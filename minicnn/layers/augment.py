"""Augmentation layers: random transforms active only in training (identity at inference).

Each is written as a gather ``y[b, i, j] = x[b, rows[b, i], cols[b, j]]`` so the
backward pass is the exact adjoint, a scatter-add of ``dy`` onto the pixels read.
"""
from __future__ import annotations

import numpy as np

from .. import config
from .base import Layer

_FILL_MODES = {"constant": "constant", "reflect": "symmetric", "nearest": "edge"}


class RandomLayer(Layer):
    """A layer that draws random numbers in training (Dropout, augmentation).

    It draws from ``self.generator`` when the layer was given a ``seed`` (its own
    ``np.random.Generator``), else from minicnn's global generator
    (:func:`minicnn.utils.set_random_seed`). :meth:`reseed` restarts the own generator
    from ``seed``; models save and restore ``generator``'s state.
    """

    def __init__(self, seed=None, input_shape=None, dtype="float32", name=None, trainable=True,
                 **kwargs):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))
                                 or seed < 0):
            raise ValueError(f"{type(self).__name__}: seed must be a non-negative integer or "
                             f"None, received {seed!r}")
        self.seed = None if seed is None else int(seed)
        self.generator = None
        self.reseed()
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable,
                         **kwargs)

    def reseed(self):
        """Restart the layer's own generator from ``seed`` (no-op without a seed)."""
        self.generator = None if self.seed is None else np.random.default_rng(self.seed)

    def rng(self):
        return self.generator if self.generator is not None else config.get_rng()

    def get_config(self):
        cfg = super().get_config()
        cfg["seed"] = self.seed
        return cfg


class _RandomGather(RandomLayer):
    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: expects images (h, w, c), received input_shape "
                             f"{tuple(input_shape)}")
        return tuple(input_shape)

    def _indices(self, n, h, w):
        """Return ``rows (n, h)`` and ``cols (n, w)``; -1 means 'outside: fill with 0'."""
        raise NotImplementedError

    def call(self, x, training=False):
        n, h, w, _ = x.shape
        if not training:
            self._gather = None
            return x.copy()
        rows, cols = self._indices(n, h, w)
        b = np.arange(n)[:, None, None]
        valid = (rows[:, :, None] >= 0) & (cols[:, None, :] >= 0)
        y = x[b, np.maximum(rows, 0)[:, :, None], np.maximum(cols, 0)[:, None, :]]
        y[~valid] = 0
        self._gather = (x.shape, rows, cols, valid)
        return y

    def backward(self, dy):
        if self._gather is None:       # inference pass: identity
            return dy.copy()
        shape, rows, cols, valid = self._gather
        n = shape[0]
        dx = np.zeros(shape, dtype=dy.dtype)
        b = np.broadcast_to(np.arange(n)[:, None, None], valid.shape)
        r = np.broadcast_to(rows[:, :, None], valid.shape)
        c = np.broadcast_to(cols[:, None, :], valid.shape)
        np.add.at(dx, (b[valid], r[valid], c[valid]), dy[valid])
        return dx


class RandomFlip(_RandomGather):
    """Flip each training image at random: ``mode`` is 'horizontal', 'vertical' or
    'horizontal_and_vertical' (Keras's names); each flip with probability 1/2."""

    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, input_shape=None,
                 dtype="float32", name=None, trainable=True):
        if mode not in self.MODES:
            raise ValueError(f"RandomFlip: mode must be one of {', '.join(self.MODES)}, "
                             f"received {mode!r}")
        self.mode = mode
        super().__init__(seed=seed, input_shape=input_shape, dtype=dtype, name=name,
                         trainable=trainable)

    def _indices(self, n, h, w):
        rng = self.rng()
        rows = np.broadcast_to(np.arange(h), (n, h)).copy()
        cols = np.broadcast_to(np.arange(w), (n, w)).copy()
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            flip = rng.random(n) < 0.5
            cols[flip] = cols[flip, ::-1]
        if self.mode in ("vertical", "horizontal_and_vertical"):
            flip = rng.random(n) < 0.5
            rows[flip] = rows[flip, ::-1]
        return rows, cols

    def get_config(self):
        cfg = super().get_config()
        cfg["mode"] = self.mode
        return cfg


class RandomTranslation(_RandomGather):
    """Shift each training image by a random whole number of pixels.

    ``height_factor`` / ``width_factor``: a float ``f`` (shift drawn uniformly in
    ``[-f, f]`` times the size) or a pair ``(lower, upper)``, as in Keras; the
    shift is rounded to whole pixels. ``fill_mode``: 'constant' (zeros),
    'reflect' or 'nearest' fill the uncovered border.
    """

    def __init__(self, height_factor, width_factor, fill_mode="reflect", seed=None,
                 input_shape=None, dtype="float32", name=None, trainable=True):
        self.height_factor = self._factor(height_factor, "height_factor")
        self.width_factor = self._factor(width_factor, "width_factor")
        if fill_mode not in _FILL_MODES:
            raise ValueError(f"RandomTranslation: fill_mode must be one of "
                             f"{', '.join(_FILL_MODES)}, received {fill_mode!r}")
        self.fill_mode = fill_mode
        super().__init__(seed=seed, input_shape=input_shape, dtype=dtype, name=name,
                         trainable=trainable)

    @staticmethod
    def _factor(value, arg):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            pair = (-float(value), float(value))
        elif isinstance(value, (tuple, list)) and len(value) == 2:
            pair = (float(value[0]), float(value[1]))
        else:
            raise ValueError(f"RandomTranslation: {arg} must be a float or a pair of floats, "
                             f"received {value!r}")
        if not (-1 <= pair[0] <= pair[1] <= 1):
            raise ValueError(f"RandomTranslation: {arg} must lie in [-1, 1] with lower <= upper, "
                             f"received {value!r}")
        return pair

    def _axis(self, rng, n, size, factor):
        shift = np.rint(rng.uniform(factor[0], factor[1], n) * size).astype(np.intp)
        src = np.arange(size)[None, :] - shift[:, None]       # output i reads input i - shift
        if self.fill_mode == "constant":
            return np.where((src >= 0) & (src < size), src, -1)
        if self.fill_mode == "nearest":
            return np.clip(src, 0, size - 1)
        period = 2 * size                                       # reflect: d c b a | a b c d | d c b a
        m = np.mod(src, period)
        return np.where(m < size, m, period - 1 - m)

    def _indices(self, n, h, w):
        rng = self.rng()
        return self._axis(rng, n, h, self.height_factor), self._axis(rng, n, w, self.width_factor)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(height_factor=list(self.height_factor), width_factor=list(self.width_factor),
                   fill_mode=self.fill_mode)
        return cfg
