"""Ops: every forward and backward computation, on the active backend.

Layers call these functions, never a backend module directly. Each function
here forwards to the same-named function of the backend chosen with
:func:`minicnn.set_backend` (``reference``: :mod:`.reference`, ``numpy``:
:mod:`.numpy_ops`, ``numba``: :mod:`.numba_ops`). The reference module's
docstrings give the math and shapes of each op.
"""
from __future__ import annotations

import importlib

from .. import config
from ._shapes import conv_geometry, conv_out_size, out_hw, out_size_from_pads  # noqa: F401

_MODULES = {"reference": ".reference", "numpy": ".numpy_ops", "numba": ".numba_ops"}
_loaded = {}


def backend_module(name=None):
    """The module implementing the ops of backend ``name`` (default: the active one)."""
    name = config.get_backend() if name is None else config._check_backend(name)
    mod = _loaded.get(name)
    if mod is None:
        mod = importlib.import_module(_MODULES[name], __name__)
        _loaded[name] = mod
    return mod


def conv2d_forward(x, kernel, bias, strides, pads, relu=False):
    return backend_module().conv2d_forward(x, kernel, bias, strides, pads, relu)


def conv2d_backward(x, kernel, dy, strides, pads, need_dx=True, y=None):
    return backend_module().conv2d_backward(x, kernel, dy, strides, pads, need_dx, y)


def conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads):
    return backend_module().conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads)


def conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads, need_dx=True):
    return backend_module().conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads,
                                                         need_dx)


def maxpool2d_forward(x, pool, strides, pads):
    return backend_module().maxpool2d_forward(x, pool, strides, pads)


def maxpool2d_backward(dy, argmax, x_shape, pool, strides, pads):
    return backend_module().maxpool2d_backward(dy, argmax, x_shape, pool, strides, pads)


def dense_forward(x, kernel, bias):
    return backend_module().dense_forward(x, kernel, bias)


def dense_backward(x, kernel, dy, need_dx=True):
    return backend_module().dense_backward(x, kernel, dy, need_dx)


def activation_forward(name, x):
    return backend_module().activation_forward(name, x)


def activation_backward(name, x, y, dy):
    return backend_module().activation_backward(name, x, y, dy)


def softmax_cross_entropy(logits, target, sparse):
    return backend_module().softmax_cross_entropy(logits, target, sparse)


def dropout_forward(x, mask, scale):
    return backend_module().dropout_forward(x, mask, scale)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t):
    return backend_module().adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t)


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    return backend_module().sgd_update(param, grad, velocity, lr, momentum, nesterov)
