"""Optimizer kernels: one step, in place on flat (C-contiguous) parameter and slot arrays."""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def adam_update(param, grad, m, v, alpha, b1, b2, eps, one):
    """Flat, in place: m, v moments then ``param -= alpha * m / (sqrt(v) + eps)``.

    ``param, grad, m, v``: flat arrays of one dtype (``grad`` read only, the others
    written); ``alpha`` is the step with both bias corrections folded in. Every scalar
    arrives in the parameters' dtype (``one`` is 1 in that dtype).
    """
    for i in prange(param.size):
        g = grad[i]
        mi = b1 * m[i] + (one - b1) * g
        vi = b2 * v[i] + (one - b2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= alpha * mi / (np.sqrt(vi) + eps)


@njit(parallel=True, cache=True)
def sgd_update(param, grad, velocity, lr, mu, nesterov):
    """Flat, in place on ``param`` and ``velocity``: ``velocity = mu velocity - lr g``, then
    ``param += velocity`` or, with ``nesterov``, ``param += mu velocity - lr g``.

    ``lr`` and ``mu`` arrive in the parameters' dtype; ``grad`` is read only.
    """
    for i in prange(param.size):
        vel = mu * velocity[i] - lr * grad[i]
        velocity[i] = vel
        if nesterov:
            param[i] += mu * vel - lr * grad[i]
        else:
            param[i] += vel
