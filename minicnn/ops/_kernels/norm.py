"""Batch normalisation kernels, over the rows of ``x (m, c)`` (every axis but the channels).

The batch statistics are float64 sums of ``x`` and ``x**2`` per image
(:func:`_image_moments`: one ``prange`` iteration per image, each writing its own row of
the ``(n, 2, c)`` partials), merged in image order (:func:`merge_moments`); a convolution
that feeds a batch norm adds the same sums from its epilogue (:mod:`.conv`,
:mod:`.winograd4`). The other passes split the rows into ``nt`` contiguous blocks, one per
``prange`` iteration: the backward's per-channel sums go to ``(nt, c)`` partials, each
iteration writing only its own row, merged serially; the elementwise passes write only
their own block of rows. Every scalar (``eps``, ``one``, ``m`` of the backward) arrives in
x's dtype, but ``merge_moments``'s count, a float64.

Rows of the partials are copied channel by channel rather than as ``part[t] = acc``: an
array assigned to a slice makes Numba compile its string formatting for the shape-mismatch
error, about 2 s of a cold compile that no other kernel needs.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import PRANGE_ONLY


@njit(cache=True, inline="always")
def _block(t, nt, m):
    """Rows ``[lo, hi)`` of block ``t`` of ``nt`` over ``m`` rows.

    Inlined: called with the ``prange`` index, it would otherwise compile twice, for the
    int64 index of the kernel's typing and the uint64 one of its parallel loop."""
    chunk = (m + nt - 1) // nt
    lo = min(m, t * chunk)
    return lo, min(m, lo + chunk)


@njit(cache=True)
def _merge(part):
    """Serial sum over the first axis of the per-block partials ``part (nt, c)``; new ``(c,)``."""
    total = part[0].copy()
    for t in range(1, part.shape[0]):
        total += part[t]
    return total


@njit(parallel=True, cache=True)
def batchnorm_inference_forward(x, gamma, beta, mean, inv_std, nt):
    """``y = gamma * ((x - mean) * inv_std) + beta`` for ``x (m, c)`` and ``(c,)`` vectors,
    all one dtype (``inv_std = 1 / sqrt(var + eps)``, from the wrapper). Returns new ``y``."""
    rows, c = x.shape
    y = np.empty_like(x)
    for t in prange(nt):
        lo, hi = _block(t, nt, rows)
        for r in range(lo, hi):
            for ch in range(c):
                y[r, ch] = gamma[ch] * ((x[r, ch] - mean[ch]) * inv_std[ch]) + beta[ch]
    return y


@njit(cache=True)
def _image_moments(rows, out):
    """``out[0] += sum of rows``, ``out[1] += sum of rows**2`` per channel, float64, row
    after row: ``rows (r, c)`` one image's values (NHWC rows of its positions), ``out (2,
    c)`` float64. The one way minicnn gathers batch statistics, here and in the epilogues
    of the convolutions that feed a batch norm, so both give the same bits. (Four rows at
    a time, ``(v0 + v1) + (v2 + v3)``, ran 0.36 against 0.47 ms for 64 images of 32x32x32
    on one thread, but LLVM compiled it differently inside the two kernels: float64 sums
    one ulp apart. One row at a time gives the same bits in every caller, as the tests
    require.)"""
    r, c = rows.shape
    for i in range(r):
        for ch in range(c):
            v = np.float64(rows[i, ch])
            out[0, ch] += v
            out[1, ch] += v * v


@njit(cache=True)
def merge_moments(part, m):
    """Mean and biased variance, float64 ``(c,)`` each, from per-image ``part (n, 2, c)``
    sums of :func:`_image_moments` (summed in image order) over ``m`` values per channel:
    ``var = sum x**2 / m - mean**2`` (float64 sums of float32 values: the cancellation
    costs about ``1e-16 * mean**2 / var`` of the variance; a variance that rounds below 0
    is 0). ``m`` 0 gives NaN statistics."""
    n, _, c = part.shape
    mean = np.zeros(c, dtype=np.float64)
    var = np.zeros(c, dtype=np.float64)
    for b in range(n):
        for ch in range(c):
            mean[ch] += part[b, 0, ch]
            var[ch] += part[b, 1, ch]
    if m == 0:                       # no values: NaN statistics, as 0/0
        for ch in range(c):
            mean[ch] = np.nan
            var[ch] = np.nan
        return mean, var
    for ch in range(c):
        mean[ch] /= m
        v = var[ch] / m - mean[ch] * mean[ch]
        var[ch] = 0.0 if v < 0.0 else v    # rounding only; a NaN stays
    return mean, var


@njit(parallel=PRANGE_ONLY, cache=True)
def batch_moments(x, n):
    """Per-channel mean and biased variance (float64) of ``x (m, c)``, the rows of ``n``
    images of ``m // n`` rows each: one pass, an image per ``prange`` iteration
    (:func:`_image_moments` into its own row of the partials), merged in image order."""
    rows, c = x.shape
    r = rows // n if n > 0 else 0
    part = np.zeros((n, 2, c), dtype=np.float64)
    x3 = x.reshape((n, r, c))        # an image as the convolutions pass it: (r, c), C order
    for b in prange(n):
        _image_moments(x3[b], part[b])
    return merge_moments(part, float(rows))     # one signature: m float64 everywhere


@njit(parallel=PRANGE_ONLY, cache=True)
def batchnorm_relu_train_forward(x, gamma, beta, mean64, var64, eps, one, zero, relu, xhat,
                                 nt, res):
    """``y = max(gamma * xhat + beta, 0)`` for ``x (m, c)``, ``xhat`` by the batch statistics
    (without the max when ``relu`` is False: plain batch normalisation, the same kernel).

    ``mean64, var64 (c,)``: the batch's float64 moments, from :func:`batch_moments` or a
    convolution's epilogue; one pass normalises and clips, writing only ``y`` (the fused
    backward recomputes ``xhat`` from ``x``), and ``xhat (m, c)`` too when it has rows
    (not ``(0, c)``). ``res (m, c)`` with rows: added before the ReLU, ``y = max((gamma *
    xhat + beta) + res, 0)`` (the end of a residual block: the Add after batch norm, then
    its ReLU; not with ``xhat``). ``eps``, ``one``, ``zero`` in x's dtype. Returns new ``y
    (m, c)``, ``mean``, ``var``, ``inv_std (c,)`` in x's dtype.
    """
    rows, c = x.shape
    mean = mean64.astype(x.dtype)
    var = var64.astype(x.dtype)
    inv_std = one / np.sqrt(var + eps)
    y = np.empty_like(x)
    keep = xhat.shape[0] > 0
    add = res.shape[0] > 0
    for t in prange(nt):
        lo, hi = _block(t, nt, rows)
        if keep:                     # a loop each, so none tests a flag per element
            for r in range(lo, hi):
                for ch in range(c):
                    v = (x[r, ch] - mean[ch]) * inv_std[ch]
                    xhat[r, ch] = v
                    v = gamma[ch] * v + beta[ch]
                    y[r, ch] = zero if relu and v <= zero else v  # NaN stays NaN
        elif add:
            for r in range(lo, hi):
                for ch in range(c):
                    v = gamma[ch] * ((x[r, ch] - mean[ch]) * inv_std[ch]) + beta[ch]
                    v = v + res[r, ch]
                    y[r, ch] = zero if relu and v <= zero else v  # NaN stays NaN
        else:
            for r in range(lo, hi):
                for ch in range(c):
                    v = gamma[ch] * ((x[r, ch] - mean[ch]) * inv_std[ch]) + beta[ch]
                    y[r, ch] = zero if relu and v <= zero else v  # NaN stays NaN
    return y, mean, var, inv_std


@njit(cache=True)
def bn_coefficients(mean, x_scale, gamma, beta, inv_std, dgamma, dbeta, m):
    """``(7, c)``: the rows ``mean, x_scale, gamma, beta, scale, dbeta, dgamma`` that
    :func:`_bn_dz_row` reads, with ``scale = gamma * inv_std / m`` (all ``(c,)`` in one
    dtype, ``m`` the rows summed over, in that dtype)."""
    c = mean.shape[0]
    bn = np.empty((7, c), dtype=mean.dtype)
    scale = gamma * inv_std / m
    for ch in range(c):
        bn[0, ch] = mean[ch]
        bn[1, ch] = x_scale[ch]
        bn[2, ch] = gamma[ch]
        bn[3, ch] = beta[ch]
        bn[4, ch] = scale[ch]
        bn[5, ch] = dbeta[ch]
        bn[6, ch] = dgamma[ch]
    return bn


@njit(cache=True)
def _bn_dz_row(dy, z, out, bn, m, zero, relu):
    """One row of batch norm's input gradient (the second pass of
    :func:`batchnorm_relu_backward`): ``out = scale * (m * d - dbeta - xhat * dgamma)``,
    ``xhat = (z - mean) * x_scale``, ``d = dy`` where ``gamma * xhat + beta > 0`` (or
    everywhere without ``relu``), else 0. ``dy, z, out (c,)``; ``bn (7, c)`` from
    :func:`bn_coefficients`. The conv backward kernels call it on the rows they gather,
    so a convolution followed by batch norm gets the bits this pass would write, without
    writing them (:class:`minicnn.layers.fused.ConvBatchNorm`)."""
    mean, xs, gamma, beta = bn[0], bn[1], bn[2], bn[3]
    scale, dbeta, dgamma = bn[4], bn[5], bn[6]
    for ch in range(out.shape[0]):
        v = (z[ch] - mean[ch]) * xs[ch]
        d = dy[ch] if not relu or gamma[ch] * v + beta[ch] > zero else zero
        out[ch] = scale[ch] * (m * d - dbeta[ch] - v * dgamma[ch])


@njit(parallel=PRANGE_ONLY, cache=True)
def batchnorm_relu_backward(dy, x, gamma, beta, mean, x_scale, inv_std, m, zero, relu,
                           nt, need_dx):
    """Backward of :func:`batchnorm_relu_train_forward` for ``dy, x (m, c)``.

    ``xhat = (x - mean) * x_scale`` (``x_scale`` is ``inv_std``; plain batch norm, with
    ``relu`` False, passes xhat itself as ``x`` with ``mean`` 0 and ``x_scale`` 1, exact)
    and the ReLU's input ``t = gamma * xhat + beta`` are recomputed from ``x`` by
    the forward's expression (so the mask ``t > 0`` is the forward's, bit for bit); with
    ``d = dy where t > 0 else 0`` (``d = dy`` when ``relu`` is False): ``dbeta = sum d``,
    ``dgamma = sum d * xhat`` (per-block partials, merged serially), then, with
    ``need_dx``, ``dx = gamma * inv_std / m * (m * d - dbeta - xhat * dgamma)`` as
    :func:`batchnorm_backward` (:func:`_bn_dz_row`). Two passes over ``dy`` and ``x``
    where the two layers made five over three tensors. Returns new ``dx (m, c)`` (``(0,
    c)`` without ``need_dx``), ``dgamma``, ``dbeta``.
    """
    rows, c = dy.shape
    part_b = np.zeros((nt, c), dtype=dy.dtype)
    part_g = np.zeros((nt, c), dtype=dy.dtype)
    for t in prange(nt):
        lo, hi = _block(t, nt, rows)
        acc_b = np.zeros(c, dtype=dy.dtype)
        acc_g = np.zeros(c, dtype=dy.dtype)
        for r in range(lo, hi):
            for ch in range(c):
                v = (x[r, ch] - mean[ch]) * x_scale[ch]
                d = dy[r, ch] if not relu or gamma[ch] * v + beta[ch] > zero else zero
                acc_b[ch] += d
                acc_g[ch] += d * v
        for ch in range(c):
            part_b[t, ch] = acc_b[ch]
            part_g[t, ch] = acc_g[ch]
    dbeta = _merge(part_b)
    dgamma = _merge(part_g)
    if not need_dx:
        return np.empty((0, c), dtype=dy.dtype), dgamma, dbeta
    bn = bn_coefficients(mean, x_scale, gamma, beta, inv_std, dgamma, dbeta, m)
    dx = np.empty_like(dy)
    for t in prange(nt):
        lo, hi = _block(t, nt, rows)
        for r in range(lo, hi):
            _bn_dz_row(dy[r], x[r], dx[r], bn, m, zero, relu)
    return dx, dgamma, dbeta
