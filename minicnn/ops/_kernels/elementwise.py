"""Elementwise kernels on flat arrays (activations, dropout) and softmax by rows.

Every array argument is a C-contiguous vector (the wrapper flattens it) or, for
softmax, a 2-D array whose rows are the softmax axis; all of one float dtype.
Scalars (``zero``, ``one``, ...) arrive in that dtype. Every ``prange``
iteration writes its own element (or its own row for softmax) of a new array;
no input is modified.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def relu_forward(x, zero):
    """``y[i] = max(x[i], 0)`` for a flat ``x``; a NaN stays NaN. Returns new ``y`` like ``x``."""
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        y[i] = zero if v <= zero else v   # NaN stays NaN
    return y


@njit(parallel=True, cache=True)
def add_forward(a, b):
    """``y[i] = a[i] + b[i]`` for flat ``a`` and ``b`` of one size, on every thread (NumPy's
    ``a + b`` runs on one). Returns new ``y`` like ``a``."""
    y = np.empty_like(a)
    for i in prange(a.size):
        y[i] = a[i] + b[i]
    return y


@njit(parallel=True, cache=True)
def add_relu_forward(a, b, zero):
    """``y[i] = max(a[i] + b[i], 0)`` for flat ``a`` and ``b`` of one size (the Add and the
    ReLU of a residual block in one pass); a NaN stays NaN. Returns new ``y`` like ``a``."""
    y = np.empty_like(a)
    for i in prange(a.size):
        v = a[i] + b[i]
        y[i] = zero if v <= zero else v
    return y


@njit(parallel=True, cache=True)
def relu_backward(x, dy, zero):
    """``dx[i] = dy[i] if x[i] > 0 else 0`` (flat ``x`` and ``dy``). Returns new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > zero else zero
    return dx


@njit(parallel=True, cache=True)
def sigmoid_forward(x, one):
    """``y[i] = 1 / (1 + exp(-x[i]))`` for a flat ``x``, with two branches so exp never
    overflows. ``one`` is 1 in x's dtype. Returns new ``y``."""
    y = np.empty_like(x)
    zero = one - one
    for i in prange(x.size):
        v = x[i]
        if v >= zero:
            y[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            y[i] = e / (one + e)
    return y


@njit(parallel=True, cache=True)
def sigmoid_backward(y, dy, one):
    """``dx[i] = dy[i] * y[i] * (1 - y[i])`` from the forward output ``y`` (flat); new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (one - y[i])
    return dx


@njit(parallel=True, cache=True)
def tanh_forward(x):
    """``y[i] = tanh(x[i])`` for a flat ``x``. Returns new ``y``."""
    y = np.empty_like(x)
    for i in prange(x.size):
        y[i] = np.tanh(x[i])
    return y


@njit(parallel=True, cache=True)
def tanh_backward(y, dy, one):
    """``dx[i] = dy[i] * (1 - y[i]**2)`` from the forward output ``y`` (flat); new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(y.size):
        dx[i] = dy[i] * (one - y[i] * y[i])
    return dx


@njit(cache=True)
def _sigmoid(v, one):
    """The logistic of one number, in two branches so that exp never overflows."""
    if v >= one - one:
        return one / (one + np.exp(-v))
    e = np.exp(v)
    return e / (one + e)


@njit(parallel=True, cache=True)
def gelu_forward(x, half, one, inv_sqrt2):
    """Exact GELU: ``y[i] = x[i]/2 erfc(-x[i] / sqrt 2)`` (= ``x/2 (1 + erf(x / sqrt 2))``
    without the cancellation of ``1 + erf`` for negative x, which left float32 at 0 where
    the answer is -1e-8); ``half``, ``one`` and ``inv_sqrt2 = 1/sqrt(2)`` in x's dtype."""
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        y[i] = half * v * math.erfc(-v * inv_sqrt2)
    return y


@njit(parallel=True, cache=True)
def gelu_backward(x, dy, half, one, inv_sqrt2, inv_sqrt_2pi):
    """``dx[i] = dy[i] (Phi(x[i]) + x[i] phi(x[i]))`` with ``Phi(v) = erfc(-v/sqrt 2) / 2``
    and ``phi(v) = exp(-v**2/2) / sqrt(2 pi)``; constants in x's dtype. Returns new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(x.size):
        v = x[i]
        cdf = half * math.erfc(-v * inv_sqrt2)
        pdf = np.exp(-half * v * v) * inv_sqrt_2pi
        dx[i] = dy[i] * (cdf + v * pdf)
    return dx


@njit(parallel=True, cache=True)
def swish_forward(x, one):
    """Swish / SiLU: ``y[i] = x[i] s(x[i])`` with the logistic ``s``. Returns new ``y``."""
    y = np.empty_like(x)
    for i in prange(x.size):
        y[i] = x[i] * _sigmoid(x[i], one)
    return y


@njit(parallel=True, cache=True)
def swish_backward(x, dy, one):
    """``dx[i] = dy[i] s (1 + x[i] (1 - s))`` with ``s = s(x[i])``. Returns new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(x.size):
        s = _sigmoid(x[i], one)
        dx[i] = dy[i] * (s * (one + x[i] * (one - s)))
    return dx


@njit(parallel=True, cache=True)
def elu_forward(x, zero):
    """ELU with alpha 1: ``y[i] = x[i]`` if ``x[i] > 0`` else ``expm1(x[i])``; new ``y``."""
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > zero else np.expm1(v)
    return y


@njit(parallel=True, cache=True)
def elu_backward(x, dy, zero):
    """``dx[i] = dy[i]`` if ``x[i] > 0`` else ``dy[i] exp(x[i])``. Returns new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(x.size):
        v = x[i]
        dx[i] = dy[i] if v > zero else dy[i] * np.exp(v)
    return dx


@njit(parallel=True, cache=True)
def leaky_relu_forward(x, slope, zero):
    """``y[i] = x[i]`` if ``x[i] > 0`` else ``slope * x[i]`` (NaN stays NaN); ``slope`` in
    x's dtype. Returns new ``y``."""
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > zero else slope * v
    return y


@njit(parallel=True, cache=True)
def leaky_relu_backward(x, dy, slope, zero):
    """``dx[i] = dy[i]`` if ``x[i] > 0`` else ``slope * dy[i]``. Returns new ``dx``."""
    dx = np.empty_like(dy)
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > zero else slope * dy[i]
    return dx


@njit(cache=True)
def softmax_forward(x, zero):
    """Row-wise softmax of a 2-D ``x (rows, k)``: ``exp(x - max) / sum exp(x - max)``.

    ``zero`` is 0 in x's dtype (the accumulator's type). Returns new ``y (rows, k)``.
    Serial, like the losses: (batch, classes) rows are too few for threads.
    """
    n, k = x.shape
    y = np.empty_like(x)
    for b in range(n):
        m = x[b, 0]
        for j in range(1, k):
            if x[b, j] > m:
                m = x[b, j]
        s = zero
        for j in range(k):
            e = np.exp(x[b, j] - m)
            y[b, j] = e
            s += e
        for j in range(k):
            y[b, j] = y[b, j] / s
    return y


@njit(cache=True)
def softmax_backward(y, dy, zero):
    """Row-wise ``dx = y * (dy - sum(dy * y))`` for ``y, dy (rows, k)``; returns new ``dx``."""
    n, k = y.shape
    dx = np.empty_like(dy)
    for b in range(n):
        s = zero
        for j in range(k):
            s += dy[b, j] * y[b, j]
        for j in range(k):
            dx[b, j] = y[b, j] * (dy[b, j] - s)
    return dx


@njit(parallel=True, cache=True)
def dropout_forward(x, mask, scale):
    """Inverted dropout on flat arrays: ``y[i] = x[i] * scale if mask[i] else 0``.

    ``mask`` is a flat bool (or 0/1) array like ``x``; ``scale = 1 / (1 - rate)`` in
    x's dtype. Returns new ``y``.
    """
    y = np.empty_like(x)
    zero = scale - scale
    for i in prange(x.size):
        y[i] = x[i] * scale if mask[i] else zero
    return y
