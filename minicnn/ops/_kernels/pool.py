"""Pooling kernels (NHWC), one image per ``prange`` iteration.

Each iteration writes only ``y[b]`` / ``dx[b]`` of its own image ``b``; the
gradients of overlapping windows add up inside that image, serially.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import PRANGE_ONLY


@njit(cache=True, inline="always")
def _window_max4(v0, v1, v2, v3):
    """``(max, arg)`` of a 2x2 pool window's four values in row-major order: the first
    maximum wins (``arg`` 0..3), and a NaN wins and stays (the first NaN, as in
    :func:`maxpool2d_forward`). Selects, not branches (the winner is data-dependent),
    so the callers' loops over the filters vectorise. Used by the fused conv + ReLU +
    pool epilogues (:mod:`.conv`, :mod:`.winograd`)."""
    m = v0
    a = 0
    take = (m == m) & ((v1 > m) | (v1 != v1))
    m = v1 if take else m
    a = 1 if take else a
    take = (m == m) & ((v2 > m) | (v2 != v2))
    m = v2 if take else m
    a = 2 if take else a
    take = (m == m) & ((v3 > m) | (v3 != v3))
    m = v3 if take else m
    a = 3 if take else a
    return m, a


@njit(cache=True, inline="always")
def _max4(v0, v1, v2, v3):
    """The value :func:`_window_max4` returns, without the position: the first NaN, else
    the maximum (selects, so the callers' loops vectorise)."""
    m = v0
    m = v1 if (m == m) & ((v1 > m) | (v1 != v1)) else m
    m = v2 if (m == m) & ((v2 > m) | (v2 != v2)) else m
    return v3 if (m == m) & ((v3 > m) | (v3 != v3)) else m


@njit(cache=True)
def _conv_outputs(n, oh, ow, f, pool, like):
    """The outputs of a conv forward kernel with the dtype of ``like``: ``y (n, oh, ow, f)``
    and an empty uint8 ``arg``, or with ``pool`` the 2x2/2 pooled ``y (n, oh//2, ow//2,
    f)`` and its ``arg`` of the same shape."""
    if pool:
        y = np.empty((n, oh // 2, ow // 2, f), dtype=like.dtype)
        arg = np.empty((n, oh // 2, ow // 2, f), dtype=np.uint8)
    else:
        y = np.empty((n, oh, ow, f), dtype=like.dtype)
        arg = np.empty((0, 0, 0, 0), dtype=np.uint8)
    return y, arg


@njit(parallel=True, cache=True)
def maxpool2d_forward(x, ph, pw, sh, sw, pt, pl, oh, ow):
    """Max pooling of ``x (n, h, w, c)`` over ``ph x pw`` windows, strides ``sh, sw``.

    ``pt, pl``: padding at the top and left (positions outside the image never win);
    ``oh, ow``: the output size. Returns new ``y (n, oh, ow, c)`` (x's dtype) and
    ``arg (n, oh, ow, c)`` int32, the flat window index ``a*pw + d`` of the first
    maximum in row-major order (the first NaN wins over numbers).

    Per output position the window's first position inside the image starts ``y`` and
    ``arg``; each later one (the window clamped to the image) replaces them
    channel by channel where it wins, by selects (:func:`_pool_take`), so the loop over
    the channels vectorises. (The first kernel kept the running maximum per channel with
    branches inside the window loops: 4.4 ms against 0.54 now, 2x2 over 64 x 32 x 32 x
    32, two threads, Intel Xeon family 6, 2026-12-02.)
    """
    n, h, w, c = x.shape
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    arg = np.empty((n, oh, ow, c), dtype=np.int32)
    for b in prange(n):
        for i in range(oh):
            r0 = i * sh - pt
            r_lo, r_hi = max(0, r0), min(h, r0 + ph)
            for j in range(ow):
                s0 = j * sw - pl
                s_lo, s_hi = max(0, s0), min(w, s0 + pw)
                if r_lo >= r_hi or s_lo >= s_hi:   # no position inside the image
                    _pool_first(x[b, 0, 0], y[b, i, j], arg[b, i, j], -1)
                    continue
                _pool_first(x[b, r_lo, s_lo], y[b, i, j], arg[b, i, j],
                            (r_lo - r0) * pw + s_lo - s0)
                for r in range(r_lo, r_hi):
                    for s_ in range(s_lo, s_hi):
                        if r > r_lo or s_ > s_lo:
                            _pool_take(x[b, r, s_], y[b, i, j], arg[b, i, j],
                                       (r - r0) * pw + s_ - s0)
    return y, arg


@njit(cache=True)
def _pool_first(xr, yr, ar, k):
    """``yr = xr``, ``ar = k``: a window's first position (one position's channels)."""
    for ch in range(xr.shape[0]):
        yr[ch] = xr[ch]
        ar[ch] = k


@njit(cache=True)
def _pool_take(xr, yr, ar, k):
    """Window position ``k`` (values ``xr``) replaces ``yr``, ``ar`` where it wins: greater
    than a number, or the first NaN (selects, no branches). One-dimensional views: with
    the four-dimensional arrays and their indices passed instead, LLVM vectorised the
    loop only for 64 channels or more (2x2 pool of 64 x 32 x 32 x 32: 3.6 against 0.45
    ms)."""
    for ch in range(xr.shape[0]):
        v = xr[ch]
        m = yr[ch]
        take = (m == m) & ((v > m) | (v != v))
        yr[ch] = v if take else m
        ar[ch] = k if take else ar[ch]


@njit(parallel=PRANGE_ONLY, cache=True)
def maxpool2d_backward(dy, arg, h, w, ph, pw, sh, sw, pt, pl):
    """Route ``dy (n, oh, ow, c)`` to the winners ``arg`` (int32, like dy) of
    :func:`maxpool2d_forward`: returns new ``dx (n, h, w, c)`` (dy's dtype) with
    ``dx[b, i*sh + a - pt, j*sw + d - pl, ch] += dy[b, i, j, ch]``, ``a*pw + d = arg``
    (windows ``ph x pw``). Overlapping windows add up; image ``b`` is one ``prange``
    iteration.

    For each output position and each window position ``(a, d)`` inside the image, the
    channels whose winner it is receive ``dy``, by selects over the channels (a scatter
    per channel, the first kernel, did not vectorise).
    """
    n, oh, ow, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    zero = dy.dtype.type(0)
    for b in prange(n):
        dx[b] = 0
        for i in range(oh):
            r0 = i * sh - pt
            for j in range(ow):
                s0 = j * sw - pl
                for r in range(max(0, r0), min(h, r0 + ph)):
                    for s_ in range(max(0, s0), min(w, s0 + pw)):
                        _route(dy[b, i, j], arg[b, i, j], dx[b, r, s_], (r - r0) * pw + s_ - s0,
                               zero)
    return dx


@njit(cache=True)
def _route(dyr, ar, dxr, k, zero):
    """``dxr += dyr`` in the channels whose winner ``ar`` is window position ``k``."""
    for ch in range(dyr.shape[0]):
        dxr[ch] += dyr[ch] if ar[ch] == k else zero


@njit(parallel=True, cache=True)
def avgpool2d_forward(x, ph, pw, sh, sw, pt, pl, oh, ow, one):
    """Average of each ``ph x pw`` window of ``x (n, h, w, c)`` over its positions inside
    the image (padding is not counted), strides ``sh, sw``, top/left padding ``pt, pl``.

    The count is kept in x's dtype (``one`` is 1 in it). Returns new ``y (n, oh, ow, c)``.
    """
    n, h, w, c = x.shape
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    zero = one - one
    for b in prange(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    y[b, i, j, ch] = zero
                count = zero
                for a in range(ph):
                    r = i * sh + a - pt
                    if r < 0 or r >= h:
                        continue
                    for d in range(pw):
                        s = j * sw + d - pl
                        if s < 0 or s >= w:
                            continue
                        count += one
                        for ch in range(c):
                            y[b, i, j, ch] += x[b, r, s, ch]
                for ch in range(c):
                    y[b, i, j, ch] = y[b, i, j, ch] / count
    return y


@njit(parallel=True, cache=True)
def avgpool2d_backward(dy, h, w, ph, pw, sh, sw, pt, pl, one):
    """Share each ``dy (n, oh, ow, c)`` equally among its window's positions inside the
    ``h x w`` image; overlapping windows add up. Returns new ``dx (n, h, w, c)``."""
    n, oh, ow, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    zero = one - one
    for b in prange(n):
        dx[b] = zero
        for i in range(oh):
            r_lo = max(0, i * sh - pt)
            r_hi = min(h, i * sh - pt + ph)
            for j in range(ow):
                s_lo = max(0, j * sw - pl)
                s_hi = min(w, j * sw - pl + pw)
                count = zero                 # counted in dy's dtype: int * float32 is float64
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        count += one
                for r in range(r_lo, r_hi):
                    for s in range(s_lo, s_hi):
                        for ch in range(c):
                            dx[b, r, s, ch] += dy[b, i, j, ch] / count
    return dx


@njit(cache=True)
def global_avgpool_forward(x, hw):
    """``y[b, ch] = sum_{r, s} x[b, r, s, ch] / hw`` for ``x (n, h, w, c)``; ``hw = h*w`` in
    x's dtype. Returns new ``y (n, c)``. Serial, as its backward: at the residual network's
    (64, 8, 8, 64) 24 us against 80 as a ``prange`` over the images (benchmarks/RESULTS.md 5).
    """
    n, h, w, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    zero = hw - hw
    for b in range(n):
        for ch in range(c):
            y[b, ch] = zero
        for r in range(h):
            for s in range(w):
                for ch in range(c):
                    y[b, ch] += x[b, r, s, ch]
        for ch in range(c):
            y[b, ch] = y[b, ch] / hw
    return y


@njit(cache=True)
def global_avgpool_backward(dy, h, w, hw):
    """``dx[b, r, s, ch] = dy[b, ch] / hw`` for ``dy (n, c)``; returns new ``dx (n, h, w, c)``."""
    n, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    for b in range(n):
        for r in range(h):
            for s in range(w):
                for ch in range(c):
                    dx[b, r, s, ch] = dy[b, ch] / hw
    return dx


@njit(parallel=PRANGE_ONLY, cache=True)
def global_maxpool_forward(x):
    """Per image and channel of ``x (n, h, w, c)``: the maximum and the flat position
    ``r*w + s`` (int32) of the first maximum in row-major order (the first NaN wins over
    numbers). Returns new ``y (n, c)`` and ``arg (n, c)``."""
    n, h, w, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    arg = np.zeros((n, c), dtype=np.int32)
    for b in prange(n):
        for ch in range(c):
            y[b, ch] = x[b, 0, 0, ch]
        for k in range(1, h * w):
            r = k // w
            s = k - r * w
            for ch in range(c):
                best = y[b, ch]
                v = x[b, r, s, ch]
                if best == best and (v > best or v != v):
                    y[b, ch] = v
                    arg[b, ch] = k
    return y, arg


@njit(parallel=PRANGE_ONLY, cache=True)
def global_maxpool_backward(dy, arg, h, w):
    """``dx[b, r, s, ch] = dy[b, ch]`` at ``r*w + s == arg[b, ch]`` (int32), 0 elsewhere;
    ``dy, arg (n, c)``. Returns new ``dx (n, h, w, c)``."""
    n, c = dy.shape
    dx = np.zeros((n, h, w, c), dtype=dy.dtype)
    for b in prange(n):
        for ch in range(c):
            k = arg[b, ch]
            r = k // w
            dx[b, r, k - r * w, ch] = dy[b, ch]
    return dx
