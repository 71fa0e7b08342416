"""Activation names and their ops.

Every activation is an elementwise function (or softmax over the last axis)
run by :func:`minicnn.ops.activation_forward` / ``activation_backward`` on the
active backend; see :mod:`minicnn.ops.reference` for the formulas.
"""
from __future__ import annotations

from . import ops

ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "swish", "silu", "elu",
               "leaky_relu")


def get(name, owner: str = "activation") -> str:
    """Validate an activation name; ``None`` means ``'linear'``."""
    if name is None:
        return "linear"
    if isinstance(name, str) and name.lower() in ACTIVATIONS:
        return name.lower()
    raise ValueError(f"{owner}: unknown activation {name!r}; known activations: "
                     f"{', '.join(ACTIVATIONS)}")


def forward(name, x):
    return ops.activation_forward(name, x)


def backward(name, x, y, dy):
    return ops.activation_backward(name, x, y, dy)


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
