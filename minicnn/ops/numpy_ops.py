"""The numpy backend: vectorised im2col / col2im.

A convolution becomes one matrix product. For NHWC input the patches matrix
``cols`` has one row per output pixel and one column per kernel tap:

    cols : (n * oh * ow, kh * kw * c)      kernel2d : (kh * kw * c, f)
    y = cols @ kernel2d  ->  (n * oh * ow, f) = (n, oh, ow, f), NHWC with no transpose.

Backward: ``dkernel2d = cols.T @ dy2d``, ``dcols = dy2d @ kernel2d.T`` and
col2im adds every tap of ``dcols`` back onto the pixel it was read from.
Same signatures and conventions as :mod:`minicnn.ops.reference`.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided
from scipy.special import erfc

from ._shapes import out_hw
from .reference import (LEAKY_RELU_SLOPE, WINOGRAD4_AT, WINOGRAD4_BT, WINOGRAD_AT, WINOGRAD_BT,
                        WINOGRAD_G, _winograd_check, _winograd_tiles, backward_input_pads,
                        bn_input_gradient, check_residual, given_moments, rotated_kernel,
                        split_dx, winograd4_kernel_transform, winograd_kernel_transform)


def _pad(x, pads, value=0):
    pt, pb, pl, pr = pads
    if not any(pads):
        return x
    return np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)), constant_values=value)


def _windows(xp, kh, kw, sh, sw, oh, ow):
    """A read-only view (n, oh, ow, kh, kw, c) of every window of a padded image batch."""
    n, _, _, c = xp.shape
    s0, s1, s2, s3 = xp.strides
    return as_strided(xp, shape=(n, oh, ow, kh, kw, c),
                      strides=(s0, s1 * sh, s2 * sw, s1, s2, s3), writeable=False)


def im2col(x, kh, kw, strides, pads):
    """Patches matrix ``(n * oh * ow, kh * kw * c)`` of an NHWC batch (zero padding)."""
    n, h, w, c = x.shape
    sh, sw = strides
    oh, ow = out_hw(h, w, kh, kw, strides, pads)
    win = _windows(np.ascontiguousarray(_pad(x, pads)), kh, kw, sh, sw, oh, ow)
    return win.reshape(n * oh * ow, kh * kw * c), oh, ow


def col2im(dcols, x_shape, kh, kw, strides, pads, oh, ow):
    """Adjoint of :func:`im2col`: add each tap of ``dcols`` onto its input pixel."""
    n, h, w, c = x_shape
    sh, sw = strides
    pt, pb, pl, pr = pads
    d6 = dcols.reshape(n, oh, ow, kh, kw, c)
    dxp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=dcols.dtype)
    for a in range(kh):
        for d in range(kw):
            dxp[:, a:a + sh * (oh - 1) + 1:sh, d:d + sw * (ow - 1) + 1:sw, :] += d6[:, :, :, a, d, :]
    return dxp[:, pt:pt + h, pl:pl + w, :]


def _with_moments(y, moments):
    """``y``, or with ``moments`` ``(y, mean, var)``: the one-pass float64 statistics of
    :func:`minicnn.ops.reference.batch_moments`, vectorised, in y's dtype."""
    if not moments:
        return y
    rows = y.reshape(-1, y.shape[-1]).astype(np.float64)
    mean = rows.mean(axis=0)
    var = np.maximum((rows * rows).mean(axis=0) - mean * mean, 0.0)
    return y, mean.astype(y.dtype), var.astype(y.dtype)


def conv2d_forward(x, kernel, bias, strides, pads, relu=False, moments=False, residual=None):
    kh, kw, c, f = kernel.shape
    cols, oh, ow = im2col(x, kh, kw, strides, pads)
    check_residual(residual, (x.shape[0], oh, ow, f), x.dtype, "conv2d_forward")
    y = cols @ kernel.reshape(kh * kw * c, f)
    if bias is not None:
        y += bias
    if residual is not None:
        y += residual.reshape(-1, f)
    if relu:
        np.maximum(y, 0, out=y)
    return _with_moments(y.reshape(x.shape[0], oh, ow, f), moments)


def conv2d_backward(x, kernel, dy, strides, pads, need_dx=True, y=None, bn=None):
    kh, kw, c, f = kernel.shape
    if bn is not None:
        dy = bn_input_gradient(dy, y, bn, "conv2d_backward", batchnorm_relu_backward)
    elif y is not None:
        dy = np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
    cols, oh, ow = im2col(x, kh, kw, strides, pads)
    dy2 = dy.reshape(-1, f)
    dkernel = (cols.T @ dy2).reshape(kernel.shape)
    dbias = dy2.sum(axis=0)
    dx = None
    if need_dx:
        dcols = dy2 @ kernel.reshape(kh * kw * c, f).T
        dx = np.ascontiguousarray(col2im(dcols, x.shape, kh, kw, strides, pads, oh, ow))
    return dx, dkernel, dbias


def _winograd_input(xp, th, tw, bt):
    """V (n, th, tw, a, a, c) = B^T d B for every a x a tile d of xp (a strided view);
    ``a = bt.shape[0]``, the tiles ``a - 2`` apart (F(2x2, 3x3): 4 and 2)."""
    n, _, _, c = xp.shape
    a = bt.shape[0]
    s0, s1, s2, s3 = xp.strides
    tiles = as_strided(xp, (n, th, tw, a, a, c), (s0, (a - 2) * s1, (a - 2) * s2, s1, s2, s3),
                       writeable=False)
    return np.einsum("ai,nxyijc,bj->nxyabc", bt, tiles, bt, optimize=True)


def _winograd_forward(x, kernel, bias, pads, relu, bt, at, u, residual, op):
    """Vectorised F(m x m, 3x3), ``m = at.shape[0]``: the input transform of every tile at
    once, then the ``(m+2)^2`` products as one batched GEMM ``(a*a, n*tiles, c) @ (a*a, c,
    f)``, then the output transform; ``u (a, a, c, f)`` the transformed kernel; ``residual``
    added after the bias, before the ReLU (checked, naming ``op``)."""
    n, _, _, c = x.shape
    f = kernel.shape[3]
    m, a = at.shape
    xp, (oh, ow, th, tw) = _winograd_tiles(x, pads, m)
    check_residual(residual, (n, oh, ow, f), x.dtype, op)
    v = _winograd_input(xp, th, tw, bt.astype(x.dtype))
    prods = np.matmul(v.reshape(-1, a * a, c).transpose(1, 0, 2), u.reshape(a * a, c, f))
    prods = prods.transpose(1, 0, 2).reshape(n, th, tw, a, a, f)
    at = at.astype(x.dtype)
    y = np.einsum("ia,nxyabf,jb->nxiyjf", at, prods, at, optimize=True)
    y = y.reshape(n, m * th, m * tw, f)[:, :oh, :ow, :]
    if bias is not None:
        y = y + bias
    if residual is not None:
        y = y + residual
    return np.maximum(y, 0) if relu else np.ascontiguousarray(y)


def winograd_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    """Vectorised F(2x2, 3x3): the 16 products as one batched GEMM ``(16, n*tiles, c) @
    (16, c, f)``."""
    _winograd_check(kernel, pads, "winograd_conv2d_forward")
    return _with_moments(_winograd_forward(x, kernel, bias, pads, relu, WINOGRAD_BT,
                                           WINOGRAD_AT, winograd_kernel_transform(kernel),
                                           residual, "winograd_conv2d_forward"), moments)


def winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads):
    z = winograd_conv2d_forward(x, kernel, bias, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, argmax.astype(np.uint8)


def winograd4_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    """Vectorised F(4x4, 3x3): the 36 products as one batched GEMM ``(36, n*tiles, c) @
    (36, c, f)``."""
    _winograd_check(kernel, pads, "winograd4_conv2d_forward")
    return _with_moments(_winograd_forward(x, kernel, bias, pads, relu, WINOGRAD4_BT,
                                           WINOGRAD4_AT, winograd4_kernel_transform(kernel),
                                           residual, "winograd4_conv2d_forward"), moments)


def winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, pads, need_argmax=True):
    z = winograd4_conv2d_forward(x, kernel, bias, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, (argmax.astype(np.uint8) if need_argmax else None)


def winograd_conv2d_backward(x, kernel, dy, pads, need_dx=True, y=None, bn=None):
    _winograd_check(kernel, pads, "winograd_conv2d_backward")
    n, h, w, c = x.shape
    f = kernel.shape[3]
    pt, _, pl, _ = pads
    if bn is not None:
        dy = bn_input_gradient(dy, y, bn, "winograd_conv2d_backward", batchnorm_relu_backward)
    elif y is not None:
        dy = dy * (y > 0)
    bt = WINOGRAD_BT.astype(x.dtype)
    at = WINOGRAD_AT.astype(x.dtype)
    xp, (oh, ow, th, tw) = _winograd_tiles(x, pads)
    dyp = np.zeros((n, 2 * th, 2 * tw, f), dtype=dy.dtype)
    dyp[:, :oh, :ow, :] = dy
    dm = np.einsum("ia,nxiyjf,jb->nxyabf", at, dyp.reshape(n, th, 2, tw, 2, f), at,
                   optimize=True).reshape(-1, 16, f).transpose(1, 0, 2)    # (16, tiles, f)
    v = _winograd_input(xp, th, tw, bt).reshape(-1, 16, c).transpose(1, 0, 2)
    du = np.matmul(v.transpose(0, 2, 1), dm).reshape(4, 4, c, f)
    g = WINOGRAD_G.astype(x.dtype)
    dkernel = np.einsum("ai,abcf,bj->ijcf", g, du, g, optimize=True)
    dbias = dy.sum(axis=(0, 1, 2))
    dx = None
    if need_dx:
        u = winograd_kernel_transform(kernel).reshape(16, c, f)
        dv = np.matmul(dm, u.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(n, th, tw, 4, 4, c)
        dd = np.einsum("ai,nxyabc,bj->nxyijc", bt, dv, bt, optimize=True)
        dxp = np.zeros_like(xp)
        for a in range(4):          # tiles overlap: add each of the 16 tile positions
            for e in range(4):
                dxp[:, a:a + 2 * th:2, e:e + 2 * tw:2, :] += dd[:, :, :, a, e, :]
        dx = dxp[:, pt:pt + h, pl:pl + w, :].copy()
    return dx, dkernel, dbias


def conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads, need_argmax=True):
    z = conv2d_forward(x, kernel, bias, strides, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, (argmax.astype(np.uint8) if need_argmax else None)


def conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads, need_dx=True,
                                 dx_algorithm="im2col"):
    n, h, w, _ = x.shape
    kh, kw, _, f = kernel.shape
    oh, ow = out_hw(h, w, kh, kw, strides, pads)
    split = split_dx(need_dx, dx_algorithm, kernel, strides, "conv2d_relu_maxpool_backward")
    dpool = np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
    dz = maxpool2d_backward(dpool, argmax, (n, oh, ow, f), (2, 2), (2, 2), (0, 0, 0, 0))
    dx, dkernel, dbias = conv2d_backward(x, kernel, dz, strides, pads, need_dx and not split)
    if split:
        dx = winograd_conv2d_backward_input(dz, kernel, pads)
    return dx, dkernel, dbias


def winograd_conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, pads, need_dx=True):
    n, h, w, _ = x.shape
    f = kernel.shape[3]
    oh, ow = out_hw(h, w, 3, 3, (1, 1), pads)
    dpool = np.where(y > 0, dy, 0).astype(dy.dtype, copy=False)
    dz = maxpool2d_backward(dpool, argmax, (n, oh, ow, f), (2, 2), (2, 2), (0, 0, 0, 0))
    return winograd_conv2d_backward(x, kernel, dz, pads, need_dx)


def winograd_conv2d_backward_input(dz, kernel, pads):
    _winograd_check(kernel, pads, "winograd_conv2d_backward_input")
    back_pads = backward_input_pads(pads, "winograd_conv2d_backward_input")
    return winograd_conv2d_forward(dz, rotated_kernel(kernel), None, back_pads)


def _inside_counts(size, k, s, before, out):
    """``(out, k)`` bool: which of the ``k`` taps of each output read inside ``[0, size)``."""
    pos = np.arange(out)[:, None] * s + np.arange(k)[None, :] - before
    return (pos >= 0) & (pos < size)


def maxpool2d_forward(x, pool, strides, pads):
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    oh, ow = out_hw(h, w, ph, pw, strides, pads)
    xp = np.ascontiguousarray(_pad(x, pads, value=-np.inf))
    win = _windows(xp, ph, pw, sh, sw, oh, ow).reshape(n, oh, ow, ph * pw, c)
    argmax = np.argmax(win, axis=3).astype(np.int32)   # argmax returns the first maximum
    y = np.take_along_axis(win, argmax[:, :, :, None, :].astype(np.intp), axis=3)[:, :, :, 0, :]
    if any(pads) and np.any(y == -np.inf):
        # a window whose numbers inside the image are all -inf ties with its -inf
        # padding: the first -inf inside the image wins, never a padded position
        rows = _inside_counts(h, ph, sh, pads[0], oh)          # (oh, ph)
        cols = _inside_counts(w, pw, sw, pads[2], ow)          # (ow, pw)
        inside = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(oh, ow, ph * pw)
        hit = (win == y[:, :, :, None, :]) & inside[None, :, :, :, None]
        tied = y == -np.inf
        argmax = np.where(tied, np.argmax(hit, axis=3), argmax).astype(np.int32)
    return np.ascontiguousarray(y), argmax


def maxpool2d_backward(dy, argmax, x_shape, pool, strides, pads):
    n, h, w, c = x_shape
    ph, pw = pool
    sh, sw = strides
    pt, pb, pl, pr = pads
    _, oh, ow, _ = dy.shape
    dxp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=dy.dtype)
    for a in range(ph):
        for d in range(pw):
            hit = argmax == a * pw + d
            dxp[:, a:a + sh * (oh - 1) + 1:sh, d:d + sw * (ow - 1) + 1:sw, :] += np.where(hit, dy, 0)
    return np.ascontiguousarray(dxp[:, pt:pt + h, pl:pl + w, :])


def _window_counts(h, w, pool, strides, pads, oh, ow, dtype):
    """``(oh, ow)``: how many positions of each window lie inside the image."""
    rows = _inside_counts(h, pool[0], strides[0], pads[0], oh).sum(axis=1)
    cols = _inside_counts(w, pool[1], strides[1], pads[2], ow).sum(axis=1)
    return np.outer(rows, cols).astype(dtype)


def avgpool2d_forward(x, pool, strides, pads):
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    oh, ow = out_hw(h, w, ph, pw, strides, pads)
    win = _windows(np.ascontiguousarray(_pad(x, pads)), ph, pw, sh, sw, oh, ow)
    counts = _window_counts(h, w, pool, strides, pads, oh, ow, x.dtype)
    return win.sum(axis=(3, 4)) / counts[None, :, :, None]


def avgpool2d_backward(dy, x_shape, pool, strides, pads):
    n, h, w, c = x_shape
    ph, pw = pool
    sh, sw = strides
    pt, pb, pl, pr = pads
    _, oh, ow, _ = dy.shape
    share = dy / _window_counts(h, w, pool, strides, pads, oh, ow, dy.dtype)[None, :, :, None]
    # the padded border collects shares of padded positions; it is cut off below
    dxp = np.zeros((n, h + pt + pb, w + pl + pr, c), dtype=dy.dtype)
    for a in range(ph):
        for d in range(pw):
            dxp[:, a:a + sh * (oh - 1) + 1:sh, d:d + sw * (ow - 1) + 1:sw, :] += share
    return np.ascontiguousarray(dxp[:, pt:pt + h, pl:pl + w, :])


def global_avgpool_forward(x):
    n, h, w, c = x.shape
    return x.sum(axis=(1, 2)) / x.dtype.type(h * w)


def global_avgpool_backward(dy, x_shape):
    n, h, w, c = x_shape
    share = dy / dy.dtype.type(h * w)
    return np.ascontiguousarray(np.broadcast_to(share[:, None, None, :], x_shape))


def global_maxpool_forward(x):
    n, h, w, c = x.shape
    rows = x.reshape(n, h * w, c)
    argmax = np.argmax(rows, axis=1)                  # the first maximum, or the first NaN
    y = np.take_along_axis(rows, argmax[:, None, :], axis=1)[:, 0, :]
    return np.ascontiguousarray(y), argmax.astype(np.int32)


def global_maxpool_backward(dy, argmax, x_shape):
    n, h, w, c = x_shape
    dx = np.zeros((n, h * w, c), dtype=dy.dtype)
    np.put_along_axis(dx, np.asarray(argmax, dtype=np.intp)[:, None, :], dy[:, None, :], axis=1)
    return dx.reshape(x_shape)


def _rows_and_affine(x, gamma, beta):
    c = x.shape[-1]
    g = np.ones(c, dtype=x.dtype) if gamma is None else np.asarray(gamma, dtype=x.dtype)
    b = np.zeros(c, dtype=x.dtype) if beta is None else np.asarray(beta, dtype=x.dtype)
    return x.reshape(-1, c), g, b


def batchnorm_train_forward(x, gamma, beta, epsilon):
    dt = x.dtype.type
    rows, g, b = _rows_and_affine(x, gamma, beta)
    m = dt(rows.shape[0])
    mean = rows.sum(axis=0) / m
    xmu = rows - mean
    var = (xmu * xmu).sum(axis=0) / m
    inv_std = dt(1) / np.sqrt(var + dt(epsilon))
    xhat = xmu * inv_std
    y = g * xhat + b
    return y.reshape(x.shape), mean, var, xhat.reshape(x.shape), inv_std


def batchnorm_inference_forward(x, gamma, beta, mean, var, epsilon):
    dt = x.dtype.type
    rows, g, b = _rows_and_affine(x, gamma, beta)
    inv_std = dt(1) / np.sqrt(np.asarray(var, dtype=x.dtype) + dt(epsilon))
    return (g * ((rows - np.asarray(mean, dtype=x.dtype)) * inv_std) + b).reshape(x.shape)


def batchnorm_backward(dy, xhat, gamma, inv_std):
    dt = dy.dtype.type
    d_rows, g, _ = _rows_and_affine(dy, gamma, None)
    xh_rows = xhat.reshape(d_rows.shape)
    m = dt(d_rows.shape[0])
    dbeta = d_rows.sum(axis=0)
    dgamma = (d_rows * xh_rows).sum(axis=0)
    # sum(dxhat) = gamma * dbeta and sum(dxhat * xhat) = gamma * dgamma
    dx = (g * inv_std / m) * (m * d_rows - dbeta - xh_rows * dgamma)
    return dx.reshape(dy.shape), dgamma, dbeta


def batchnorm_relu_train_forward(x, gamma, beta, epsilon, relu=True, moments=None,
                                 residual=None):
    check_residual(residual, x.shape, x.dtype, "batchnorm_relu_train_forward")
    if moments is None:
        t, mean, var, _, inv_std = batchnorm_train_forward(x, gamma, beta, epsilon)
    else:
        mean, var, inv_std = given_moments(x, moments, epsilon)
        t = batchnorm_inference_forward(x, gamma, beta, mean, var, epsilon)
    if residual is not None:
        t = t + residual
    return (np.maximum(t, t.dtype.type(0)) if relu else t), mean, var, inv_std


def batchnorm_relu_backward(dy, x, gamma, beta, mean, inv_std, relu=True, need_dx=True):
    rows, g, b = _rows_and_affine(x, gamma, beta)
    xhat = (rows - mean) * inv_std
    d_t = dy.reshape(rows.shape)
    if relu:
        d_t = np.where(g * xhat + b > 0, d_t, dy.dtype.type(0))
    dx, dgamma, dbeta = batchnorm_backward(d_t.reshape(dy.shape), xhat.reshape(dy.shape),
                                           gamma, inv_std)
    return (dx if need_dx else None), dgamma, dbeta


def dense_forward(x, kernel, bias):
    y = x @ kernel
    if bias is not None:
        y += bias
    return y


def dense_backward(x, kernel, dy, need_dx=True):
    dx = dy @ kernel.T if need_dx else None
    return dx, x.T @ dy, dy.sum(axis=0)


def add_forward(a, b):
    return a + b


def add_relu_forward(a, b):
    z = a + b
    return np.maximum(z, z.dtype.type(0), out=z)


def activation_forward(name, x):
    if name == "linear":
        return x.copy()
    if name == "relu":
        return np.maximum(x, 0)
    if name == "sigmoid":
        return _sigmoid(x)
    if name == "tanh":
        return np.tanh(x)
    if name == "softmax":
        e = np.exp(x - x.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)
    if name == "gelu":
        dt = x.dtype.type
        return dt(0.5) * x * erfc(-x * dt(1 / np.sqrt(2.0)))     # erfc: no cancellation
    if name in ("swish", "silu"):
        return x * _sigmoid(x)
    if name == "elu":
        return np.where(x > 0, x, np.expm1(np.minimum(x, 0)))
    if name == "leaky_relu":
        return leaky_relu_forward(x, LEAKY_RELU_SLOPE)
    raise ValueError(f"unknown activation {name!r}")


def _sigmoid(x):
    # exp(-|x|) never overflows; both branches of the logistic from it
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype, copy=False)


def activation_backward(name, x, y, dy):
    if name == "linear":
        return dy.copy()
    if name == "relu":
        return np.where(x > 0, dy, 0).astype(dy.dtype, copy=False)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "softmax":
        return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))
    if name == "gelu":
        dt = x.dtype.type
        cdf = dt(0.5) * erfc(-x * dt(1 / np.sqrt(2.0)))
        pdf = np.exp(dt(-0.5) * x * x) * dt(1 / np.sqrt(2 * np.pi))
        return dy * (cdf + x * pdf)
    if name in ("swish", "silu"):
        s = _sigmoid(x)
        return dy * (s * (1 + x * (1 - s)))
    if name == "elu":
        return np.where(x > 0, dy, dy * np.exp(np.minimum(x, 0)))
    if name == "leaky_relu":
        return leaky_relu_backward(x, dy, LEAKY_RELU_SLOPE)
    raise ValueError(f"unknown activation {name!r}")


def leaky_relu_forward(x, slope):
    return np.where(x > 0, x, x * x.dtype.type(slope))


def leaky_relu_backward(x, dy, slope):
    return np.where(x > 0, dy, dy * dy.dtype.type(slope))


def softmax_cross_entropy(logits, target, sparse, weights=None):
    n, k = logits.shape
    shifted = logits - logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    logp = shifted - lse
    p = np.exp(logp)
    if sparse:
        idx = np.asarray(target, dtype=np.intp).reshape(-1)
        rows = -logp[np.arange(n), idx]
        p[np.arange(n), idx] -= 1
        dlogits = p / logits.dtype.type(n)
    else:
        rows = -(target * logp).sum(axis=1)
        dlogits = (p - target) / logits.dtype.type(n)
    if weights is not None:
        rows = rows * weights
        dlogits *= weights[:, None]
    loss = rows.sum() / n
    return logits.dtype.type(loss), dlogits.astype(logits.dtype, copy=False)


def dropout_forward(x, mask, scale):
    return x * (mask * x.dtype.type(scale)).astype(x.dtype, copy=False)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t):
    dt = param.dtype.type
    alpha = dt(lr * np.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t))
    b1, b2, eps = dt(beta_1), dt(beta_2), dt(epsilon)
    m *= b1
    m += (1 - b1) * grad
    v *= b2
    v += (1 - b2) * grad * grad
    param -= alpha * m / (np.sqrt(v) + eps)


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    dt = param.dtype.type
    lr, mu = dt(lr), dt(momentum)
    velocity *= mu
    velocity -= lr * grad
    if nesterov:
        param += mu * velocity - lr * grad
    else:
        param += velocity
