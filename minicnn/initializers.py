"""Weight initializers with Keras's definitions.

For a Conv2D kernel ``(kh, kw, c, f)``: ``fan_in = kh * kw * c`` and
``fan_out = kh * kw * f``; for a Dense kernel ``(k, u)``: ``fan_in = k``,
``fan_out = u``.

- glorot_uniform: U(-l, l), ``l = sqrt(6 / (fan_in + fan_out))`` (Keras's default)
- glorot_normal: truncated N(0, s), ``s = sqrt(2 / (fan_in + fan_out))``
- he_normal: truncated N(0, s), ``s = sqrt(2 / fan_in)``
- he_uniform: U(-l, l), ``l = sqrt(6 / fan_in)``
- zeros, ones

Truncated normals redraw values beyond two standard deviations, as Keras does
(the ``0.87962566`` factor keeps the variance at ``s**2``).
"""
from __future__ import annotations

import numpy as np

from . import config

INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "zeros", "ones")


def get(name, owner: str = "initializer") -> str:
    if isinstance(name, str) and name.lower() in INITIALIZERS:
        return name.lower()
    raise ValueError(f"{owner}: unknown initializer {name!r}; known initializers: "
                     f"{', '.join(INITIALIZERS)}")


def fans(shape) -> tuple[int, int]:
    if len(shape) == 0:          # a scalar weight
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


def _truncated_normal(rng, std, shape):
    out = rng.standard_normal(shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(out) > 2
    return out * (std / 0.87962566103423978)


def initialize(name, shape, dtype=np.float32, rng=None) -> np.ndarray:
    """Return a new array of ``shape`` drawn by initializer ``name`` in ``dtype``."""
    name = get(name)
    rng = config.get_rng() if rng is None else rng
    shape = tuple(int(s) for s in shape)
    fan_in, fan_out = fans(shape)
    if name == "zeros":
        out = np.zeros(shape)
    elif name == "ones":
        out = np.ones(shape)
    elif name == "glorot_uniform":
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        out = rng.uniform(-limit, limit, shape)
    elif name == "he_uniform":
        limit = np.sqrt(6.0 / fan_in)
        out = rng.uniform(-limit, limit, shape)
    elif name == "glorot_normal":
        out = _truncated_normal(rng, np.sqrt(2.0 / (fan_in + fan_out)), shape)
    else:  # he_normal
        out = _truncated_normal(rng, np.sqrt(2.0 / fan_in), shape)
    return np.array(out, dtype=dtype, order="C")     # ascontiguousarray makes a scalar 1-d


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
