"""Pooling kernels (NHWC), one image per ``prange`` iteration.

Each iteration writes only ``y[b]`` / ``dx[b]`` of its own image ``b``; the
gradients of overlapping windows add up inside that image, serially.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def maxpool2d_forward(x, ph, pw, sh, sw, pt, pl, oh, ow):
    """Max pooling of ``x (n, h, w, c)`` over ``ph x pw`` windows, strides ``sh, sw``.

    ``pt, pl``: padding at the top and left (positions outside the image never win);
    ``oh, ow``: the output size. Returns new ``y (n, oh, ow, c)`` (x's dtype) and
    ``arg (n, oh, ow, c)`` int32, the flat window index ``a*pw + d`` of the first
    maximum in row-major order (the first NaN wins over numbers).
    """
    n, h, w, c = x.shape
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    arg = np.empty((n, oh, ow, c), dtype=np.int32)
    for b in prange(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    best = -np.inf
                    best_k = -1
                    for a in range(ph):
                        r = i * sh + a - pt
                        if r < 0 or r >= h:
                            continue
                        for d in range(pw):
                            s = j * sw + d - pl
                            if s < 0 or s >= w:
                                continue
                            v = x[b, r, s, ch]
                            # first maximum wins ties; the first NaN wins over numbers
                            if best_k < 0 or (best == best and (v > best or v != v)):
                                best = v
                                best_k = a * pw + d
                    y[b, i, j, ch] = best
                    arg[b, i, j, ch] = best_k
    return y, arg


@njit(parallel=True, cache=True)
def maxpool2d_backward(dy, arg, h, w, pw, sh, sw, pt, pl):
    """Route ``dy (n, oh, ow, c)`` to the winners ``arg`` (int32, like dy) of
    :func:`maxpool2d_forward`: returns new ``dx (n, h, w, c)`` (dy's dtype) with
    ``dx[b, i*sh + a - pt, j*sw + d - pl, ch] += dy[b, i, j, ch]``, ``a*pw + d = arg``.
    Overlapping windows add up; image ``b`` is one ``prange`` iteration.
    """
    n, oh, ow, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    for b in prange(n):
        dx[b] = 0
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    k = arg[b, i, j, ch]
                    a = k // pw
                    d = k - a * pw
                    dx[b, i * sh + a - pt, j * sw + d - pl, ch] += dy[b, i, j, ch]
    return dx

