"""The reference backend: backprop written out as plain loops.

This file is the teaching text of minicnn. Every function loops over the
batch and the output positions and states the math it computes; nothing is
vectorised beyond a dot product over one window. It is slow on purpose: step
into it with a debugger, or compare the fast backends against it.

Conventions (shared by all backends)
-----------------------------------
- Images are NHWC: ``x`` has shape ``(n, h, w, c)``.
- A Conv2D kernel has the Keras shape ``(kh, kw, c, f)``; a Dense kernel
  ``(in_features, units)``.
- ``strides = (sh, sw)``; ``pads = (top, bottom, left, right)`` are computed
  by :mod:`minicnn.ops._shapes` from ``padding='same'|'valid'``.
- Output sizes: ``oh = (h + top + bottom - kh) // sh + 1`` (same for ``ow``).
- Backward functions return gradients with respect to their inputs; they never
  modify their arguments.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from ._shapes import out_hw

#: The slope of ``'leaky_relu'`` used as an activation name: Keras 3's
#: ``keras.activations.leaky_relu(x, negative_slope=0.2)`` (the ``LeakyReLU`` layer's
#: default is 0.3; that layer calls :func:`leaky_relu_forward` with its own slope).
LEAKY_RELU_SLOPE = 0.2


# ----------------------------------------------------------------------------- convolution
def conv2d_forward(x, kernel, bias, strides, pads, relu=False, moments=False, residual=None):
    """2-D cross-correlation, NHWC (then ``max(., 0)`` when ``relu``).

    Parameters
    ----------
    x : (n, h, w, c)
    kernel : (kh, kw, c, f)
    bias : (f,) or None
    strides : (sh, sw)
    pads : (top, bottom, left, right), zero padding
    residual : (n, oh, ow, f) or None, added before the ReLU (the end of a residual block)

    Returns
    -------
    y : (n, oh, ow, f) with
        ``y[b, i, j, f] = bias[f] + sum_{a, d, c} xp[b, i*sh + a, j*sw + d, c] * kernel[a, d, c, f]``
        where ``xp`` is ``x`` zero-padded by ``pads``; with ``residual``, ``y + residual``
        (:func:`add_residual`).
    With ``moments``, ``(y, mean, var)``: also the batch statistics of ``y`` that a
    BatchNormalization after the convolution needs (:func:`with_moments`); the numba
    backend gathers them in the kernel, while each image's output is still in cache.
    """
    if moments:
        return with_moments(conv2d_forward(x, kernel, bias, strides, pads, relu,
                                           residual=residual))
    if residual is not None:
        y = conv2d_forward(x, kernel, bias, strides, pads)
        return add_residual(y, residual, relu, "conv2d_forward")
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    pt, pb, pl, pr = pads
    oh, ow = out_hw(h, w, kh, kw, strides, pads)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    y = np.zeros((n, oh, ow, f), dtype=x.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                window = xp[b, i * sh:i * sh + kh, j * sw:j * sw + kw, :]   # (kh, kw, c)
                for o in range(f):
                    y[b, i, j, o] = np.sum(window * kernel[:, :, :, o])
                if bias is not None:
                    y[b, i, j, :] += bias
    return activation_forward("relu", y) if relu else y


def check_residual(residual, shape, dtype, op):
    """A ValueError naming ``op`` unless ``residual`` is None or an array of the op's
    output ``shape`` and ``dtype`` (a convolution's, a batch norm's)."""
    if residual is None:
        return
    if not isinstance(residual, np.ndarray) or residual.shape != tuple(shape) \
            or residual.dtype != dtype:
        got = (f"an array of shape {residual.shape} and dtype {residual.dtype}"
               if isinstance(residual, np.ndarray) else type(residual).__name__)
        raise ValueError(f"{op}: residual must be None or an array of the output's shape "
                         f"{tuple(shape)} and dtype {np.dtype(dtype)}, received {got}")


def add_residual(y, residual, relu, op):
    """``max(y + residual, 0)`` (``y + residual`` without ``relu``): a convolution's output
    ``y`` (bias added) with the other branch of a residual block, checked by
    :func:`check_residual`. The order of the sums, ``(conv + bias) + residual``, is that of
    the layers run one by one (Add after the convolution), so every backend's fused
    kernel gives the same bits."""
    check_residual(residual, y.shape, y.dtype, op)
    y = y + residual
    return activation_forward("relu", y) if relu else y


class BatchNormGradient(NamedTuple):
    """A batch norm (+ ReLU) in training mode after a convolution, as the convolution's
    backward needs it to compute its own output gradient: the ``bn`` argument of
    :func:`conv2d_backward` and :func:`winograd_conv2d_backward`.

    ``z (n, oh, ow, f)`` is the convolution's output (batch norm's input); ``gamma``,
    ``beta`` (``(f,)`` or None), ``mean`` and ``inv_std`` those of
    :func:`batchnorm_relu_train_forward`; ``dgamma`` and ``dbeta`` the sums
    :func:`batchnorm_relu_backward` returns (with ``need_dx=False`` it computes only
    them); ``relu`` as given to the forward. With it, the ``dy`` given to the
    convolution's backward is dL/d(batch norm's output) and the convolution's output
    gradient is ``batchnorm_relu_backward(dy, z, ...)[0]`` (:func:`bn_input_gradient`).
    """
    z: np.ndarray
    gamma: np.ndarray | None
    beta: np.ndarray | None
    mean: np.ndarray
    inv_std: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    relu: bool


def check_bn(dy, y, bn, op):
    """A ValueError naming ``op`` unless ``bn`` is None or a :class:`BatchNormGradient`
    whose ``z`` has dy's shape, given without ``y`` (a ReLU's mask: they exclude each other)."""
    if bn is None:
        return
    if y is not None:
        raise ValueError(f"{op}: y (a ReLU's mask) and bn (a batch norm's) exclude each other; "
                         f"received both")
    if not isinstance(bn, BatchNormGradient):
        raise ValueError(f"{op}: bn must be a BatchNormGradient or None, received "
                         f"{type(bn).__name__}")
    if bn.z.shape != dy.shape:
        raise ValueError(f"{op}: bn.z must have dy's shape {dy.shape}, received {bn.z.shape}")


def bn_input_gradient(dy, y, bn, op, bn_backward=None):
    """dL/dz of a convolution's output from its backward's ``dy`` and ``y`` (a ReLU'd
    output's mask) or ``bn`` (a :class:`BatchNormGradient`), checked by :func:`check_bn`;
    ``bn_backward`` is the backend's :func:`batchnorm_relu_backward` (this one's by
    default)."""
    check_bn(dy, y, bn, op)
    if bn is None:
        return dy if y is None else activation_backward("relu", y, y, dy)
    backward = batchnorm_relu_backward if bn_backward is None else bn_backward
    return backward(dy, bn.z, bn.gamma, bn.beta, bn.mean, bn.inv_std, relu=bn.relu)[0]


def conv2d_backward(x, kernel, dy, strides, pads, need_dx=True, y=None, bn=None):
    """Gradients of :func:`conv2d_forward`.

    Parameters
    ----------
    x : (n, h, w, c), the forward input
    kernel : (kh, kw, c, f)
    dy : (n, oh, ow, f), dL/dy
    need_dx : bool, skip dx (the first layer never needs it)
    y : (n, oh, ow, f) or None; the output of a ``relu=True`` forward, whose mask
        ``y > 0`` is applied to dy first (``dz = dy * (y > 0)``)
    bn : a :class:`BatchNormGradient` or None: dy is the gradient of a batch norm (+ ReLU)
        after the convolution, whose backward gives dz first (:func:`bn_input_gradient`;
        the numba backend computes it row by row as it gathers dz, never writing it out)

    Returns
    -------
    dx : (n, h, w, c) or None
        ``dx[b, i*sh + a, j*sw + d, :] += kernel[a, d, :, :] @ dy[b, i, j, :]`` (then unpadded)
    dkernel : (kh, kw, c, f)
        ``dkernel[a, d, c, f] = sum_{b, i, j} xp[b, i*sh + a, j*sw + d, c] * dy[b, i, j, f]``
    dbias : (f,)
        ``dbias[f] = sum_{b, i, j} dy[b, i, j, f]``
    """
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    pt, pb, pl, pr = pads
    _, oh, ow, _ = dy.shape
    dy = bn_input_gradient(dy, y, bn, "conv2d_backward")
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    dxp = np.zeros_like(xp)
    dkernel = np.zeros_like(kernel)
    dbias = np.zeros(f, dtype=dy.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                g = dy[b, i, j, :]                                        # (f,)
                window = xp[b, i * sh:i * sh + kh, j * sw:j * sw + kw, :]  # (kh, kw, c)
                dkernel += window[:, :, :, None] * g                      # outer product
                dbias += g
                if need_dx:
                    dxp[b, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += kernel @ g
    dx = dxp[:, pt:pt + h, pl:pl + w, :].copy() if need_dx else None
    return dx, dkernel, dbias


# ----------------------------------------------------------------------------- Winograd convolution
#: Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
#: Convolutional Neural Networks", 2016): a 2x2 block of outputs of a 3x3 convolution
#: from a 4x4 tile of input, with 16 multiplications per channel pair instead of 36.
#: ``Y = A^T [ (G g G^T) * (B^T d B) ] A`` for a 4x4 input tile ``d``, a 3x3 kernel ``g``
#: and ``*`` the elementwise product.
WINOGRAD_BT = np.array([[1, 0, -1, 0],
                        [0, 1, 1, 0],
                        [0, -1, 1, 0],
                        [0, 1, 0, -1]], dtype=np.float64)
WINOGRAD_G = np.array([[1, 0, 0],
                       [0.5, 0.5, 0.5],
                       [0.5, -0.5, 0.5],
                       [0, 0, 1]], dtype=np.float64)
WINOGRAD_AT = np.array([[1, 1, 1, 0],
                        [0, 1, -1, -1]], dtype=np.float64)


def _winograd_check(kernel, pads, op):
    if kernel.shape[:2] != (3, 3):
        raise ValueError(f"{op}: Winograd convolution needs a 3x3 kernel, received kernel "
                         f"shape {kernel.shape}")
    if len(pads) != 4:
        raise ValueError(f"{op}: pads must be (top, bottom, left, right), received {pads!r}")


def winograd_kernel_transform(kernel):
    """``U[a, b] = (G g G^T)[a, b]`` for every channel pair: (3, 3, c, f) -> (4, 4, c, f).

    Computed once per call; its entries are sums of halves of the kernel's.
    """
    g = WINOGRAD_G.astype(kernel.dtype)
    return np.einsum("ai,ijcf,bj->abcf", g, kernel, g)


def _winograd_tiles(x, pads, m=2):
    """``xp`` (x zero-padded by ``pads``, plus rows/columns where the output size is not a
    multiple of ``m``, so that every ``m x m`` output block has its ``(m+2) x (m+2)``
    tile), and ``(oh, ow, th, tw)``: the output size and the tiles down and across."""
    n, h, w, c = x.shape
    pt, pb, pl, pr = pads
    oh, ow = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = np.pad(x, ((0, 0), (pt, pb + m * th - oh), (pl, pr + m * tw - ow), (0, 0)))
    return xp, (oh, ow, th, tw)


def winograd_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    """The 3x3, stride-1 convolution of :func:`conv2d_forward` by Winograd's F(2x2, 3x3).

    Parameters
    ----------
    x : (n, h, w, c)
    kernel : (3, 3, c, f)
    bias : (f,) or None
    pads : (top, bottom, left, right)

    Returns
    -------
    y : (n, oh, ow, f), ``oh = h + top + bottom - 2``: the same numbers as
        ``conv2d_forward(x, kernel, bias, (1, 1), pads, relu)``, rounded differently.
        For each 2x2 block of outputs at ``(2i, 2j)`` and its 4x4 input tile
        ``d = xp[b, 2i:2i+4, 2j:2j+4, :]``:

        - ``V[a, e, c] = (B^T d[:, :, c] B)[a, e]``           (input transform)
        - ``M[a, e, f] = sum_c V[a, e, c] * U[a, e, c, f]``   (16 dot products over c)
        - ``y[b, 2i:2i+2, 2j:2j+2, f] = (A^T M[:, :, f] A)``  (output transform)

        with ``U`` from :func:`winograd_kernel_transform`. Only additions happen in
        the transforms; the multiplications are the 16 dot products, against 36 for
        the 3x3 window (2.25x fewer). With ``moments``, ``(y, mean, var)`` as
        :func:`conv2d_forward` gives them; ``residual`` as there.
    """
    _winograd_check(kernel, pads, "winograd_conv2d_forward")
    y = _winograd_tiles_forward(x, winograd_kernel_transform(kernel), bias, pads,
                                relu and residual is None, WINOGRAD_BT, WINOGRAD_AT)
    if residual is not None:
        y = add_residual(y, residual, relu, "winograd_conv2d_forward")
    return with_moments(y) if moments else y


def _winograd_tiles_forward(x, u, bias, pads, relu, bt, at):
    """F(m x m, 3x3) tile by tile, ``m = at.shape[0]``, ``a = m + 2``: for each ``m x m``
    block of outputs its ``a x a`` input tile ``d``, ``V = B^T d B``, the ``a*a`` dot
    products over the channels with ``u (a, a, c, f)``, ``y = A^T M A`` (the steps of
    :func:`winograd_conv2d_forward` and :func:`winograd4_conv2d_forward`)."""
    n = x.shape[0]
    f = u.shape[3]
    m, a = at.shape
    bt = bt.astype(x.dtype)
    at = at.astype(x.dtype)
    xp, (oh, ow, th, tw) = _winograd_tiles(x, pads, m)
    y = np.zeros((n, m * th, m * tw, f), dtype=x.dtype)
    for b in range(n):
        for i in range(th):
            for j in range(tw):
                d = xp[b, m * i:m * i + a, m * j:m * j + a, :]          # (a, a, c)
                v = np.einsum("ai,ijc,bj->abc", bt, d, bt)              # B^T d B
                prods = np.einsum("abc,abcf->abf", v, u)                # a*a dots over c
                y[b, m * i:m * i + m, m * j:m * j + m, :] = np.einsum("ia,abf,jb->ijf",
                                                                      at, prods, at)
    y = y[:, :oh, :ow, :]
    if bias is not None:
        y = y + bias
    return activation_forward("relu", y) if relu else np.ascontiguousarray(y)


def winograd_conv2d_backward(x, kernel, dy, pads, need_dx=True, y=None, bn=None):
    """Gradients of :func:`winograd_conv2d_forward`, by backprop through its three steps.

    Parameters
    ----------
    x : (n, h, w, c), the forward input
    kernel : (3, 3, c, f)
    dy : (n, oh, ow, f)
    need_dx : bool
    y : (n, oh, ow, f) or None, the output of a ``relu=True`` forward (masks dy first)
    bn : a :class:`BatchNormGradient` or None, as for :func:`conv2d_backward`

    Returns
    -------
    dx, dkernel, dbias as :func:`conv2d_backward` with strides (1, 1). Per tile, the
    forward's steps run backwards (each one is linear, so its gradient is its transpose):

    - ``dM[:, :, f] = A dy_tile[:, :, f] A^T``     (4x4 from the 2x2 block; zero outside)
    - ``dU[a, e, c, f] += V[a, e, c] dM[a, e, f]``
    - ``dV[a, e, c] = sum_f dM[a, e, f] U[a, e, c, f]``
    - ``dxp[tile] += B dV[:, :, c] B^T``           (tiles overlap by two rows and columns)

    and finally ``dkernel = G^T dU G`` per channel pair (the transpose of the kernel
    transform).
    """
    _winograd_check(kernel, pads, "winograd_conv2d_backward")
    n, h, w, c = x.shape
    f = kernel.shape[3]
    pt, _, pl, _ = pads
    dy = bn_input_gradient(dy, y, bn, "winograd_conv2d_backward")
    bt = WINOGRAD_BT.astype(x.dtype)
    at = WINOGRAD_AT.astype(x.dtype)
    g = WINOGRAD_G.astype(x.dtype)
    u = winograd_kernel_transform(kernel)
    xp, (oh, ow, th, tw) = _winograd_tiles(x, pads)
    dyp = np.zeros((n, 2 * th, 2 * tw, f), dtype=dy.dtype)
    dyp[:, :oh, :ow, :] = dy
    du = np.zeros((4, 4, c, f), dtype=x.dtype)
    dxp = np.zeros_like(xp)
    for b in range(n):
        for i in range(th):
            for j in range(tw):
                d = xp[b, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :]
                v = np.einsum("ai,ijc,bj->abc", bt, d, bt)
                dm = np.einsum("ia,ijf,jb->abf", at, dyp[b, 2 * i:2 * i + 2, 2 * j:2 * j + 2, :],
                               at)
                du += np.einsum("abc,abf->abcf", v, dm)
                if need_dx:
                    dv = np.einsum("abf,abcf->abc", dm, u)
                    dxp[b, 2 * i:2 * i + 4, 2 * j:2 * j + 4, :] += np.einsum("ai,abc,bj->ijc",
                                                                             bt, dv, bt)
    dkernel = np.einsum("ai,abcf,bj->ijcf", g, du, g)
    dbias = dy.sum(axis=(0, 1, 2))
    dx = dxp[:, pt:pt + h, pl:pl + w, :].copy() if need_dx else None
    return dx, dkernel, dbias


def winograd_conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, pads, need_dx=True):
    """Gradients of :func:`winograd_conv2d_relu_maxpool_forward`, all three by Winograd.

    Parameters
    ----------
    x : (n, h, w, c), the forward input; kernel : (3, 3, c, f); pads as for
        :func:`winograd_conv2d_forward`
    dy, y, argmax : (n, oh // 2, ow // 2, f), dL/d(pooled output), the pooled output and
        the uint8 winner of each 2x2 window (row-major, 0..3)

    Returns
    -------
    dx, dkernel, dbias as :func:`conv2d_relu_maxpool_backward`: dy goes to its window's
    winner when the pooled output is positive (the ReLU mask), then back through
    :func:`winograd_conv2d_backward`. (The numba backend never builds that unpooled
    gradient: each Winograd tile's 2x2 output block is one pool window, so it is made
    tile by tile.)
    """
    n, h, w, c = x.shape
    f = kernel.shape[3]
    oh, ow = out_hw(h, w, 3, 3, (1, 1), pads)
    dpool = activation_backward("relu", y, y, dy)
    dz = maxpool2d_backward(dpool, argmax.astype(np.int32), (n, oh, ow, f), (2, 2), (2, 2),
                            (0, 0, 0, 0))
    return winograd_conv2d_backward(x, kernel, dz, pads, need_dx)


def winograd_conv2d_backward_input(dz, kernel, pads):
    """dx of a 3x3, stride-1 convolution, computed as a Winograd convolution of ``dz``.

    The input gradient of a convolution is itself a convolution: of the output gradient,
    padded by ``2 - pad`` on each side, with the kernel rotated by 180 degrees and its
    channel axes swapped,

        ``dx[b, r, s, ch] = sum_{a, d, o} dzp[b, r + a, s + d, o] * kernel[2 - a, 2 - d, ch, o]``

    (the ``dx`` of :func:`conv2d_backward`, every tap's contribution gathered instead of
    scattered), so :func:`winograd_conv2d_forward` computes it with 2.25x fewer
    multiplications (the numba backend: :func:`winograd4_conv2d_forward`, 4x fewer). A
    caller that wants Winograd only for this pass (where its weight gradient is slower
    than im2col's) pairs it with ``conv2d_backward(..., need_dx=False)``.

    Parameters
    ----------
    dz : (n, oh, ow, f), dL/d(conv output); any ReLU mask already applied
    kernel : (3, 3, c, f)
    pads : (top, bottom, left, right) of the forward convolution, each 0, 1 or 2

    Returns
    -------
    dx : (n, h, w, c) with ``h = oh + 2 - top - bottom``, ``w = ow + 2 - left - right``
    """
    _winograd_check(kernel, pads, "winograd_conv2d_backward_input")
    back_pads = backward_input_pads(pads, "winograd_conv2d_backward_input")
    return winograd_conv2d_forward(dz, rotated_kernel(kernel), None, back_pads)


def rotated_kernel(kernel):
    """``kernel[::-1, ::-1]`` with its channel axes swapped: (kh, kw, c, f) -> (kh, kw, f, c)."""
    return np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))


def backward_input_pads(pads, op):
    """The padding of dz that makes the input-gradient convolution (3x3 kernel) return
    x's size: ``2 - pad`` on each side."""
    if any(not 0 <= int(p) <= 2 for p in pads):
        raise ValueError(f"{op}: each pad must be 0, 1 or 2 for a 3x3 kernel, received "
                         f"pads {tuple(pads)}")
    return tuple(2 - int(p) for p in pads)


def winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads):
    """:func:`conv2d_relu_maxpool_forward` with the convolution by Winograd F(2x2, 3x3)
    (3x3, stride 1): ``maxpool(relu(winograd_conv(x) + bias))``. Each 2x2 block of
    Winograd outputs is exactly one 2x2 pool window, so the numba backend pools each
    tile's block as it leaves the output transform. Returns ``y (n, oh // 2, ow // 2, f)``
    and ``argmax`` (uint8), which :func:`conv2d_relu_maxpool_backward` takes.
    """
    z = winograd_conv2d_forward(x, kernel, bias, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, argmax.astype(np.uint8)


#: Winograd's F(4x4, 3x3) (Lavin & Gray 2016, interpolation points 0, 1, -1, 2, -2 and
#: infinity): a 4x4 block of outputs of a 3x3 convolution from a 6x6 input tile, with 36
#: multiplications per channel pair instead of 144 (4x fewer; F(2x2, 3x3): 2.25x). Same
#: formula ``Y = A^T [ (G g G^T) * (B^T d B) ] A``; the larger entries of these matrices
#: (up to 8 in A, 5 in B, fractions 1/6 and 1/24 in G) make it round further from the
#: direct sum: in float32 about 1.1-1.6e-6 of the output's scale, against 8e-8 for F(2x2,
#: 3x3) and 0.6-2.5e-7 for im2col (``tests/test_winograd4.py`` states the bound).
WINOGRAD4_BT = np.array([[4, 0, -5, 0, 1, 0],
                         [0, -4, -4, 1, 1, 0],
                         [0, 4, -4, -1, 1, 0],
                         [0, -2, -1, 2, 1, 0],
                         [0, 2, -1, -2, 1, 0],
                         [0, 4, 0, -5, 0, 1]], dtype=np.float64)
WINOGRAD4_G = np.array([[1 / 4, 0, 0],
                        [-1 / 6, -1 / 6, -1 / 6],
                        [-1 / 6, 1 / 6, -1 / 6],
                        [1 / 24, 1 / 12, 1 / 6],
                        [1 / 24, -1 / 12, 1 / 6],
                        [0, 0, 1]], dtype=np.float64)
WINOGRAD4_AT = np.array([[1, 1, 1, 1, 1, 0],
                         [0, 1, -1, 2, -2, 0],
                         [0, 1, 1, 4, 4, 0],
                         [0, 1, -1, 8, -8, 1]], dtype=np.float64)


def winograd4_kernel_transform(kernel):
    """``U[a, b] = (G g G^T)[a, b]`` of F(4x4, 3x3) for every channel pair: (3, 3, c, f) ->
    (6, 6, c, f), in the kernel's dtype."""
    g = WINOGRAD4_G.astype(kernel.dtype)
    return np.einsum("ai,ijcf,bj->abcf", g, kernel, g)


def winograd4_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    """The 3x3, stride-1 convolution of :func:`conv2d_forward` by Winograd's F(4x4, 3x3).

    Parameters
    ----------
    x : (n, h, w, c)
    kernel : (3, 3, c, f)
    bias : (f,) or None
    pads : (top, bottom, left, right)

    Returns
    -------
    y : (n, oh, ow, f), ``oh = h + top + bottom - 2``: the numbers of
        ``conv2d_forward(x, kernel, bias, (1, 1), pads, relu)``, rounded differently.
        For each 4x4 block of outputs at ``(4i, 4j)`` and its 6x6 input tile
        ``d = xp[b, 4i:4i+6, 4j:4j+6, :]``:

        - ``V[a, e, c] = (B^T d[:, :, c] B)[a, e]``           (input transform, 6x6)
        - ``M[a, e, f] = sum_c V[a, e, c] * U[a, e, c, f]``   (36 dot products over c)
        - ``y[b, 4i:4i+4, 4j:4j+4, f] = (A^T M[:, :, f] A)``  (output transform, 4x4)

        with ``U`` from :func:`winograd4_kernel_transform` and B^T, G, A^T as
        :data:`WINOGRAD4_BT`, :data:`WINOGRAD4_G`, :data:`WINOGRAD4_AT`. Its gradient is
        that of the convolution: :func:`winograd_conv2d_backward` or
        :func:`conv2d_backward` compute it (the layers pair this forward with either).
        With ``moments``, ``(y, mean, var)`` as :func:`conv2d_forward` gives them;
        ``residual`` as there.
    """
    _winograd_check(kernel, pads, "winograd4_conv2d_forward")
    y = _winograd_tiles_forward(x, winograd4_kernel_transform(kernel), bias, pads,
                                relu and residual is None, WINOGRAD4_BT, WINOGRAD4_AT)
    if residual is not None:
        y = add_residual(y, residual, relu, "winograd4_conv2d_forward")
    return with_moments(y) if moments else y


def winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, pads, need_argmax=True):
    """:func:`conv2d_relu_maxpool_forward` with the convolution by Winograd F(4x4, 3x3)
    (3x3, stride 1): ``maxpool(relu(winograd4_conv(x) + bias))``. Each 4x4 block of
    outputs holds four whole 2x2 pool windows, so the numba backend pools them as they
    leave the output transform. Returns ``y (n, oh // 2, ow // 2, f)`` and ``argmax``
    (uint8), which :func:`conv2d_relu_maxpool_backward` and
    :func:`winograd_conv2d_relu_maxpool_backward` take (None when not ``need_argmax``, as
    in :func:`conv2d_relu_maxpool_forward`).
    """
    z = winograd4_conv2d_forward(x, kernel, bias, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, (argmax.astype(np.uint8) if need_argmax else None)


# ----------------------------------------------------------------------------- max pooling
def maxpool2d_forward(x, pool, strides, pads):
    """Max pooling, NHWC; padded positions never win (TensorFlow's 'same').

    Parameters
    ----------
    x : (n, h, w, c)
    pool : (ph, pw); strides : (sh, sw); pads : (top, bottom, left, right)

    Returns
    -------
    y : (n, oh, ow, c), ``y[b, i, j, c] = max_{a, d} x[b, i*sh + a - top, j*sw + d - left, c]``
        over the positions inside the image.
    argmax : (n, oh, ow, c) int32, the flat window index ``a * pw + d`` of the
        first maximum (row-major order), which receives the whole gradient. A NaN
        wins over numbers (the first NaN), so NaN propagates as in NumPy.
    """
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    pt, pb, pl, pr = pads
    oh, ow = out_hw(h, w, ph, pw, strides, pads)
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    argmax = np.empty((n, oh, ow, c), dtype=np.int32)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    best, best_k = -np.inf, -1
                    for a in range(ph):
                        for d in range(pw):
                            r, s = i * sh + a - pt, j * sw + d - pl
                            if not (0 <= r < h and 0 <= s < w):
                                continue
                            v = x[b, r, s, ch]
                            if best_k < 0 or (best == best and (v > best or v != v)):
                                best, best_k = v, a * pw + d
                    y[b, i, j, ch] = best
                    argmax[b, i, j, ch] = best_k
    return y, argmax


def maxpool2d_backward(dy, argmax, x_shape, pool, strides, pads):
    """Gradient of max pooling: each dy goes to the single position that won.

    ``dx[b, i*sh + a - top, j*sw + d - left, c] += dy[b, i, j, c]`` for
    ``a * pw + d == argmax[b, i, j, c]``; windows that overlap add up.
    """
    n, h, w, c = x_shape
    _, pw = pool
    sh, sw = strides
    pt, _, pl, _ = pads
    _, oh, ow, _ = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    a, d = divmod(int(argmax[b, i, j, ch]), pw)
                    dx[b, i * sh + a - pt, j * sw + d - pl, ch] += dy[b, i, j, ch]
    return dx


def conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads, need_argmax=True):
    """Conv2D with ReLU followed by a 2x2, stride-2, 'valid' max-pool, as one op.

    Exactly the composition ``maxpool(relu(conv(x) + bias))`` written with the
    ops above; the numba backend fuses it into one pass per image. Returns the
    pooled ``y (n, oh // 2, ow // 2, f)`` and ``argmax`` (uint8, 0..3: the
    row-major position of the first maximum in each 2x2 window), or None for it when
    not ``need_argmax`` (inference: no backward pass will read it, and the numba
    kernels then never compute it).
    """
    z = conv2d_forward(x, kernel, bias, strides, pads, relu=True)
    y, argmax = maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    return y, (argmax.astype(np.uint8) if need_argmax else None)


def conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads, need_dx=True,
                                 dx_algorithm="im2col"):
    """Gradients of :func:`conv2d_relu_maxpool_forward`: dy goes to its window's winner
    when the pooled output is positive (the ReLU mask), then through the convolution.

    ``dx_algorithm``: ``"im2col"`` computes dx with the weight gradient
    (:func:`conv2d_backward`); ``"winograd"`` (3x3, stride 1) computes it as
    :func:`winograd_conv2d_backward_input` of the unpooled gradient instead. The same
    numbers either way, rounded differently.
    """
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    oh, ow = out_hw(h, w, kh, kw, strides, pads)
    split = split_dx(need_dx, dx_algorithm, kernel, strides, "conv2d_relu_maxpool_backward")
    dpool = activation_backward("relu", y, y, dy)
    dz = maxpool2d_backward(dpool, argmax.astype(np.int32), (n, oh, ow, f), (2, 2), (2, 2),
                            (0, 0, 0, 0))
    dx, dkernel, dbias = conv2d_backward(x, kernel, dz, strides, pads, need_dx and not split)
    if split:
        dx = winograd_conv2d_backward_input(dz, kernel, pads)
    return dx, dkernel, dbias


def split_dx(need_dx, dx_algorithm, kernel, strides, op):
    """True when dx is to come from :func:`winograd_conv2d_backward_input` (a ValueError
    naming ``op`` when ``dx_algorithm`` is neither choice, or Winograd cannot compute it)."""
    if dx_algorithm not in ("im2col", "winograd"):
        raise ValueError(f"{op}: dx_algorithm must be 'im2col' or 'winograd', received "
                         f"{dx_algorithm!r}")
    if dx_algorithm == "winograd" and (kernel.shape[:2] != (3, 3) or tuple(strides) != (1, 1)):
        raise ValueError(f"{op}: dx_algorithm='winograd' needs a 3x3 kernel at strides (1, 1), "
                         f"received kernel shape {kernel.shape} and strides {tuple(strides)}")
    return bool(need_dx) and dx_algorithm == "winograd"


# ----------------------------------------------------------------------------- average pooling
def _window_cells(i, j, h, w, pool, strides, pads):
    """The positions ``(r, s)`` inside an ``h x w`` image of output ``(i, j)``'s window,
    in row-major window order."""
    ph, pw = pool
    sh, sw = strides
    pt, _, pl, _ = pads
    cells = []
    for a in range(ph):
        for d in range(pw):
            r, s = i * sh + a - pt, j * sw + d - pl
            if 0 <= r < h and 0 <= s < w:
                cells.append((r, s))
    return cells


def avgpool2d_forward(x, pool, strides, pads):
    """Average pooling, NHWC, over the window positions inside the image.

    TensorFlow's 'same' average: padded positions are not counted, so a window that
    hangs over the border averages fewer numbers (PyTorch's
    ``count_include_pad=False``).

    Parameters
    ----------
    x : (n, h, w, c)
    pool : (ph, pw); strides : (sh, sw); pads : (top, bottom, left, right), as for
        :func:`maxpool2d_forward` (from :func:`minicnn.ops.conv_geometry`)

    Returns
    -------
    y : (n, oh, ow, c), ``y[b, i, j, c] = 1/|W_ij| sum_{(r, s) in W_ij} x[b, r, s, c]`` with
        ``W_ij = {(i*sh + a - top, j*sw + d - left) : 0 <= a < ph, 0 <= d < pw}``
        restricted to the image (never empty for pads from ``conv_geometry``).
    """
    n, h, w, c = x.shape
    oh, ow = out_hw(h, w, *pool, strides, pads)
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                cells = _window_cells(i, j, h, w, pool, strides, pads)
                for ch in range(c):
                    total = x.dtype.type(0)
                    for r, s in cells:
                        total += x[b, r, s, ch]
                    y[b, i, j, ch] = total / x.dtype.type(len(cells))
    return y


def avgpool2d_backward(dy, x_shape, pool, strides, pads):
    """Gradient of :func:`avgpool2d_forward`: each dy is shared equally by its window.

    ``dx[b, r, s, c] += dy[b, i, j, c] / |W_ij|`` for every ``(r, s)`` in ``W_ij``;
    overlapping windows add up. dy : (n, oh, ow, c); returns dx : ``x_shape`` = (n, h, w, c).
    """
    n, h, w, c = x_shape
    _, oh, ow, _ = dy.shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for b in range(n):
        for i in range(oh):
            for j in range(ow):
                cells = _window_cells(i, j, h, w, pool, strides, pads)
                for ch in range(c):
                    share = dy[b, i, j, ch] / dy.dtype.type(len(cells))
                    for r, s in cells:
                        dx[b, r, s, ch] += share
    return dx


# ----------------------------------------------------------------------------- global pooling
def global_avgpool_forward(x):
    """Mean over the image of every channel: x (n, h, w, c) -> y (n, c),
    ``y[b, c] = 1/(h*w) sum_{r, s} x[b, r, s, c]``."""
    n, h, w, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            total = x.dtype.type(0)
            for r in range(h):
                for s in range(w):
                    total += x[b, r, s, ch]
            y[b, ch] = total / x.dtype.type(h * w)
    return y


def global_avgpool_backward(dy, x_shape):
    """Gradient of :func:`global_avgpool_forward`: ``dx[b, r, s, c] = dy[b, c] / (h*w)``.

    dy : (n, c); returns dx : ``x_shape`` = (n, h, w, c).
    """
    n, h, w, c = x_shape
    dx = np.empty(x_shape, dtype=dy.dtype)
    for b in range(n):
        for ch in range(c):
            dx[b, :, :, ch] = dy[b, ch] / dy.dtype.type(h * w)
    return dx


def global_maxpool_forward(x):
    """Maximum over the image of every channel: x (n, h, w, c) -> (y, argmax).

    y : (n, c), ``y[b, c] = max_{r, s} x[b, r, s, c]``.
    argmax : (n, c) int32, the flat position ``r * w + s`` of the first maximum in
        row-major order, which receives the whole gradient; the first NaN wins over
        numbers, as in :func:`maxpool2d_forward`.
    """
    n, h, w, c = x.shape
    y = np.empty((n, c), dtype=x.dtype)
    argmax = np.empty((n, c), dtype=np.int32)
    for b in range(n):
        for ch in range(c):
            best, best_k = x[b, 0, 0, ch], 0
            for k in range(1, h * w):
                v = x[b, k // w, k % w, ch]
                if best == best and (v > best or v != v):
                    best, best_k = v, k
            y[b, ch] = best
            argmax[b, ch] = best_k
    return y, argmax


def global_maxpool_backward(dy, argmax, x_shape):
    """Gradient of :func:`global_maxpool_forward`: ``dx[b, r, s, c] = dy[b, c]`` at the one
    position ``r * w + s == argmax[b, c]``, 0 elsewhere. dy, argmax : (n, c)."""
    n, h, w, c = x_shape
    dx = np.zeros(x_shape, dtype=dy.dtype)
    for b in range(n):
        for ch in range(c):
            r, s = divmod(int(argmax[b, ch]), w)
            dx[b, r, s, ch] = dy[b, ch]
    return dx


# ----------------------------------------------------------------------------- batch normalisation
def _channel_rows(a):
    """``a`` as ``(m, c)``: every axis but the last (channels) flattened into rows."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def _ones_if_none(v, c, dtype, fill):
    return np.full(c, fill, dtype=dtype) if v is None else np.asarray(v, dtype=dtype)


def batch_moments(x):
    """Per-channel mean and biased variance of ``x (n, ..., c)`` over every axis but the
    last, as minicnn gathers a batch norm's statistics on every backend:

        S1[c] = sum_b sum_i x[b, i, c],   S2[c] = sum_b sum_i x[b, i, c]**2
        mean = S1 / m,   var = S2 / m - mean**2          (m = x.size // c)

    in float64, image by image (``b``) and within an image position by position (``i``),
    whatever x's dtype, so that a convolution can add each image's share while the image
    is still in cache (:func:`conv2d_forward` with ``moments``). The one-pass formula
    cancels ``mean**2`` against ``S2 / m``: in float64 that costs about
    ``1e-16 * mean**2 / var`` of the variance, below float32's rounding while
    ``|mean| < 1e4 std``. Returns float64 ``mean, var (c,)``; a variance that rounds
    below 0 is 0.
    """
    c = x.shape[-1]
    images = np.asarray(x).reshape(x.shape[0], -1, c)
    s1 = np.zeros(c)
    s2 = np.zeros(c)
    for image in images:
        for row in image.astype(np.float64):
            s1 += row
            s2 += row * row
    m = images.shape[0] * images.shape[1]
    mean = s1 / m
    return mean, np.maximum(s2 / m - mean * mean, 0.0)


def check_moments(moments, c):
    """``(mean, var)`` given to a batch norm op: two ``(c,)`` arrays, else ValueError."""
    if not isinstance(moments, (tuple, list)) or len(moments) != 2:
        raise ValueError(f"moments must be a pair (mean, var), received {type(moments).__name__}")
    mean, var = (np.asarray(v) for v in moments)
    if mean.shape != (c,) or var.shape != (c,):
        raise ValueError(f"moments: mean and var must have shape ({c},), received "
                         f"{mean.shape} and {var.shape}")
    return mean, var


def given_moments(x, moments, epsilon):
    """``(mean, var, inv_std)`` in x's dtype from the ``moments`` a batch norm op of x was
    given (:func:`check_moments`), ``inv_std = 1 / sqrt(var + epsilon)``."""
    dt = x.dtype.type
    mean, var = (np.asarray(v, dtype=x.dtype) for v in check_moments(moments, x.shape[-1]))
    return mean, var, dt(1) / np.sqrt(var + dt(epsilon))


def with_moments(y):
    """``(y, mean, var)``: ``y`` and its :func:`batch_moments`, cast to y's dtype."""
    mean, var = batch_moments(y)
    return y, mean.astype(y.dtype), var.astype(y.dtype)


def batchnorm_train_forward(x, gamma, beta, epsilon):
    """Batch normalisation in training mode: per channel, over every axis but the last.

    Works for ``(n, c)`` after Dense and NHWC ``(n, h, w, c)`` after Conv2D; each
    channel's statistics run over its ``m = x.size // c`` values. The forward graph,
    node by node (:func:`batchnorm_backward_graph` walks it back)::

        mu      = 1/m sum x                 (c,)
        xmu     = x - mu
        sq      = xmu ** 2
        var     = 1/m sum sq                (c,)  biased, as Keras and TensorFlow normalise
        sqrtvar = sqrt(var + epsilon)
        ivar    = 1 / sqrtvar               (c,)  returned as inv_std
        xhat    = xmu * ivar
        y       = gamma * xhat + beta

    Parameters
    ----------
    x : (..., c)
    gamma : (c,) or None (``scale=False``: 1); beta : (c,) or None (``center=False``: 0)
    epsilon : float, added to the variance

    Returns
    -------
    y : like x;  mean : (c,);  var : (c,) the biased batch variance;
    xhat : like x;  inv_std : (c,) ``1 / sqrt(var + epsilon)``.
    The layer keeps ``xhat`` and ``inv_std`` for :func:`batchnorm_backward` and
    updates its moving statistics from ``mean`` and ``var``.
    """
    dt = x.dtype.type
    rows = _channel_rows(x)
    m, c = rows.shape
    g = _ones_if_none(gamma, c, x.dtype, 1)
    bt = _ones_if_none(beta, c, x.dtype, 0)
    eps = dt(epsilon)
    mean = np.empty(c, dtype=x.dtype)
    var = np.empty(c, dtype=x.dtype)
    inv_std = np.empty(c, dtype=x.dtype)
    xhat = np.empty_like(rows)
    y = np.empty_like(rows)
    for ch in range(c):
        column = rows[:, ch]
        mu = np.sum(column) / dt(m)
        xmu = column - mu
        sq = xmu * xmu
        var[ch] = np.sum(sq) / dt(m)
        sqrtvar = np.sqrt(var[ch] + eps)
        inv_std[ch] = dt(1) / sqrtvar
        xhat[:, ch] = xmu * inv_std[ch]
        y[:, ch] = g[ch] * xhat[:, ch] + bt[ch]
        mean[ch] = mu
    return y.reshape(x.shape), mean, var, xhat.reshape(x.shape), inv_std


def batchnorm_inference_forward(x, gamma, beta, mean, var, epsilon):
    """Batch normalisation with given statistics (the layer's moving mean and variance).

    ``y = gamma * ((x - mean) * inv_std) + beta`` with ``inv_std = 1 / sqrt(var + epsilon)``,
    per channel (the last axis). x : (..., c); gamma, beta : (c,) or None (1 and 0);
    mean, var : (c,); returns y like x.
    """
    dt = x.dtype.type
    rows = _channel_rows(x)
    m, c = rows.shape
    g = _ones_if_none(gamma, c, x.dtype, 1)
    bt = _ones_if_none(beta, c, x.dtype, 0)
    y = np.empty_like(rows)
    for ch in range(c):
        inv_std = dt(1) / np.sqrt(dt(var[ch]) + dt(epsilon))
        for r in range(m):
            y[r, ch] = g[ch] * ((rows[r, ch] - dt(mean[ch])) * inv_std) + bt[ch]
    return y.reshape(x.shape)


def batchnorm_backward(dy, xhat, gamma, inv_std):
    """Gradients of :func:`batchnorm_train_forward`, through the batch mean and variance.

    With ``m`` values per channel and sums over every axis but the last::

        dbeta  = sum dy
        dgamma = sum dy * xhat
        dxhat  = dy * gamma
        dx     = inv_std / m * (m * dxhat - sum dxhat - xhat * sum(dxhat * xhat))

    the closed form of the staged backward of :func:`batchnorm_backward_graph` (the
    three terms: the direct path through ``xhat``, the path through ``mu``, and the
    path through ``var``, where ``dvar`` collapses to ``-inv_std**3 / 2 * sum dxhat*xmu``).

    Parameters
    ----------
    dy, xhat : (..., c);  gamma : (c,) or None (1);  inv_std : (c,), from the forward

    Returns
    -------
    dx : like dy;  dgamma : (c,);  dbeta : (c,) (both returned even when the layer has no
    gamma or beta: it ignores them)
    """
    dt = dy.dtype.type
    d_rows, xh_rows = _channel_rows(dy), _channel_rows(xhat)
    m, c = d_rows.shape
    g = _ones_if_none(gamma, c, dy.dtype, 1)
    dx = np.empty_like(d_rows)
    dgamma = np.empty(c, dtype=dy.dtype)
    dbeta = np.empty(c, dtype=dy.dtype)
    for ch in range(c):
        dbeta[ch] = np.sum(d_rows[:, ch])
        dgamma[ch] = np.sum(d_rows[:, ch] * xh_rows[:, ch])
        dxhat = d_rows[:, ch] * g[ch]
        dx[:, ch] = inv_std[ch] / dt(m) * (dt(m) * dxhat - np.sum(dxhat)
                                           - xh_rows[:, ch] * np.sum(dxhat * xh_rows[:, ch]))
    return dx.reshape(dy.shape), dgamma, dbeta


def batchnorm_backward_graph(dy, x, gamma, epsilon):
    """The backward of :func:`batchnorm_train_forward` node by node (CS231n's staged graph).

    Not a registered op: the teaching text beside the closed form of
    :func:`batchnorm_backward`, which the tests hold equal to it. Recomputes the forward
    graph from ``x``, then walks it back; every ``d<node>`` is dL/d<node>. Returns
    ``(dx, dgamma, dbeta)``.
    """
    dt = x.dtype.type
    rows, d_rows = _channel_rows(x), _channel_rows(dy)
    m, c = rows.shape
    gamma = _ones_if_none(gamma, c, x.dtype, 1)
    # forward, keeping every node
    mu = np.sum(rows, axis=0) / dt(m)
    xmu = rows - mu
    sq = xmu ** 2
    var = np.sum(sq, axis=0) / dt(m)
    sqrtvar = np.sqrt(var + dt(epsilon))
    ivar = dt(1) / sqrtvar
    xhat = xmu * ivar
    # backward: y = gamma * xhat + beta
    dbeta = np.sum(d_rows, axis=0)
    dgamma = np.sum(d_rows * xhat, axis=0)
    dxhat = d_rows * gamma
    # xhat = xmu * ivar: two inputs, xmu (first path) and ivar
    divar = np.sum(dxhat * xmu, axis=0)
    dxmu1 = dxhat * ivar
    # ivar = 1 / sqrtvar;  sqrtvar = sqrt(var + eps)
    dsqrtvar = -divar / sqrtvar ** 2
    dvar = dsqrtvar / (dt(2) * sqrtvar)
    # var = 1/m sum sq;  sq = xmu ** 2 (the second path into xmu)
    dsq = np.ones_like(rows) * dvar / dt(m)
    dxmu2 = dt(2) * xmu * dsq
    # xmu = x - mu: into x directly, and into mu
    dx1 = dxmu1 + dxmu2
    dmu = -np.sum(dx1, axis=0)
    # mu = 1/m sum x
    dx2 = np.ones_like(rows) * dmu / dt(m)
    dx = dx1 + dx2
    return dx.reshape(dy.shape), dgamma, dbeta


def batchnorm_relu_train_forward(x, gamma, beta, epsilon, relu=True, moments=None,
                                 residual=None):
    """Batch normalisation in training mode, then ReLU: ``y = relu(gamma * xhat + beta)``.

    The composition of :func:`batchnorm_train_forward` and the ReLU of
    :func:`activation_forward`, per channel over every axis but the last::

        mu = 1/m sum x,  var = 1/m sum (x - mu)**2,  inv_std = 1 / sqrt(var + epsilon)
        xhat = (x - mu) * inv_std,   t = gamma * xhat + beta,   y = max(t, 0)

    Parameters
    ----------
    x : (..., c);  gamma, beta : (c,) or None (1 and 0);  epsilon : float
    relu : bool; False gives ``y = t``, batch norm alone (that keeps no ``xhat``)
    moments : None, or ``(mean, var)`` (c,): x's batch statistics gathered already (by
        the convolution that made x, :func:`conv2d_forward` with ``moments``), used
        instead of computing them
    residual : None, or an array of x's shape and dtype added to ``t`` before the ReLU:
        ``y = max(t + residual, 0)``, the end of a residual block (the Add of the
        shortcut after batch norm, then its ReLU). The sum of two numbers does not depend
        on their order, so the bits are those of batch norm, then
        :func:`add_relu_forward`. The ReLU's mask is then ``y > 0``: the backward is the
        ReLU's (:func:`activation_backward` on ``y``), then
        :func:`batchnorm_relu_backward` with ``relu=False``.

    Returns
    -------
    y : like x;  mean, var, inv_std : (c,). Neither ``xhat`` nor ``t`` is returned:
    :func:`batchnorm_relu_backward` recomputes both from ``x`` and the statistics, so
    a fused step keeps one tensor (its input) where the two layers kept three.
    """
    check_residual(residual, x.shape, x.dtype, "batchnorm_relu_train_forward")
    if moments is None:
        t, mean, var, _, inv_std = batchnorm_train_forward(x, gamma, beta, epsilon)
    else:
        mean, var, inv_std = given_moments(x, moments, epsilon)
        t = batchnorm_inference_forward(x, gamma, beta, mean, var, epsilon)
    if residual is not None:
        return add_residual(t, residual, relu, "batchnorm_relu_train_forward"), mean, var, \
            inv_std
    return (activation_forward("relu", t) if relu else t), mean, var, inv_std


def batchnorm_relu_backward(dy, x, gamma, beta, mean, inv_std, relu=True, need_dx=True):
    """Gradients of :func:`batchnorm_relu_train_forward`: the ReLU's, then batch norm's.

    Recomputes ``xhat = (x - mean) * inv_std`` and ``t = gamma * xhat + beta`` exactly as
    the forward did, so the ReLU mask ``t > 0`` is the forward's; then::

        dt = dy where t > 0, else 0           (dt = dy when relu is False)
        dx, dgamma, dbeta = batchnorm_backward(dt, xhat, gamma, inv_std)

    Parameters
    ----------
    dy, x : (..., c);  gamma, beta : (c,) or None;  mean, inv_std : (c,), from the forward;
    relu : bool, as given to the forward
    need_dx : bool; without it dx is None: only the sums, for a convolution's backward
        that computes dx itself (:class:`BatchNormGradient`)

    Returns
    -------
    dx : like dy (or None);  dgamma, dbeta : (c,)
    """
    dt = dy.dtype.type
    rows = _channel_rows(x)
    c = rows.shape[1]
    g = _ones_if_none(gamma, c, dy.dtype, 1)
    bt = _ones_if_none(beta, c, dy.dtype, 0)
    xhat = np.empty_like(rows)
    d_t = np.empty_like(rows)
    d_rows = _channel_rows(dy)
    for ch in range(c):
        xhat[:, ch] = (rows[:, ch] - mean[ch]) * inv_std[ch]
        t = g[ch] * xhat[:, ch] + bt[ch]
        d_t[:, ch] = np.where(t > 0, d_rows[:, ch], dt(0)) if relu else d_rows[:, ch]
    dx, dgamma, dbeta = batchnorm_backward(d_t, xhat, gamma, inv_std)
    return (dx.reshape(dy.shape) if need_dx else None), dgamma, dbeta


def fold_batchnorm(kernel, bias, gamma, beta, mean, var, epsilon):
    """A convolution (or Dense) followed by inference-mode batch norm, as one layer's weights.

    Not a registered op (a transform of the weights, the same on every backend, as
    :func:`winograd_kernel_transform`). With ``s = gamma / sqrt(var + epsilon)`` per
    output channel ``f``::

        bn(conv(x, kernel) + bias) = conv(x, kernel * s) + (bias - mean) * s + beta

    Parameters
    ----------
    kernel : (..., f) (a Conv2D's ``(kh, kw, c, f)`` or a Dense's ``(k, f)``);
    bias : (f,) or None (0);  gamma, beta : (f,) or None (1 and 0);  mean, var : (f,)

    Returns
    -------
    kernel : like kernel;  bias : (f,), both new arrays in the kernel's dtype. The folded
    convolution rounds differently from the two layers (one product less per output).
    """
    dt = kernel.dtype.type
    f = kernel.shape[-1]
    g = _ones_if_none(gamma, f, kernel.dtype, 1)
    b = _ones_if_none(beta, f, kernel.dtype, 0)
    inv_std = dt(1) / np.sqrt(np.asarray(var, dtype=kernel.dtype) + dt(epsilon))
    s = g * inv_std
    z = _ones_if_none(bias, f, kernel.dtype, 0)
    return kernel * s, (z - np.asarray(mean, dtype=kernel.dtype)) * s + b


# ----------------------------------------------------------------------------- dense
def dense_forward(x, kernel, bias):
    """Fully connected layer: ``y[b, u] = sum_k x[b, k] * kernel[k, u] + bias[u]``.

    x : (n, k); kernel : (k, u); bias : (u,) or None; returns y : (n, u).
    """
    n, k = x.shape
    u = kernel.shape[1]
    y = np.zeros((n, u), dtype=x.dtype)
    for b in range(n):
        for j in range(u):
            y[b, j] = np.dot(x[b, :], kernel[:, j])
            if bias is not None:
                y[b, j] += bias[j]
    return y


def dense_backward(x, kernel, dy, need_dx=True):
    """Gradients of :func:`dense_forward`.

    ``dx = dy @ kernel.T`` (n, k); ``dkernel = x.T @ dy`` (k, u), i.e. a sum over
    the batch of outer products ``x[b] dy[b]^T``; ``dbias = sum_b dy[b]`` (u,).
    """
    n, k = x.shape
    dkernel = np.zeros_like(kernel)
    dbias = np.zeros(kernel.shape[1], dtype=dy.dtype)
    dx = np.zeros_like(x) if need_dx else None
    for b in range(n):
        dkernel += np.outer(x[b], dy[b])
        dbias += dy[b]
        if need_dx:
            dx[b] = kernel @ dy[b]
    return dx, dkernel, dbias


# ----------------------------------------------------------------------------- activations
def _sigmoid(v):
    """``1 / (1 + exp(-v))`` of one number, in two branches so that exp never overflows."""
    if v >= 0:
        return 1 / (1 + np.exp(-v))
    e = np.exp(v)
    return e / (1 + e)


def _elementwise(fn, *arrays):
    """``fn`` applied element by element to arrays of one shape; the first one's dtype."""
    flats = [np.ascontiguousarray(a).reshape(-1) for a in arrays]
    out = np.empty(arrays[0].shape, dtype=arrays[0].dtype)
    flat_out = out.reshape(-1)
    for k in range(flat_out.size):
        flat_out[k] = fn(*(f[k] for f in flats))
    return out


def _gelu(v):
    # Phi(v) = (1 + erf(v / sqrt 2)) / 2 = erfc(-v / sqrt 2) / 2: the erfc form does not
    # cancel for negative v. math.erfc works on a Python float; the product is rounded
    # back to x's dtype on store
    return 0.5 * v * math.erfc(-v / math.sqrt(2))


def _gelu_slope(v):
    cdf = 0.5 * math.erfc(-v / math.sqrt(2))
    pdf = math.exp(-0.5 * v * v) / math.sqrt(2 * math.pi)
    return cdf + v * pdf


def add_forward(a, b):
    """The elementwise sum ``y = a + b`` (``Add``'s forward, and the sum of the gradients a
    tensor read by several layers gets back). a, b : one shape, one dtype; returns new y."""
    return a + b


def add_relu_forward(a, b):
    """The sum of two tensors, then ReLU: ``y = max(a + b, 0)`` (``Add`` then ``ReLU``).

    a, b : one shape, one dtype; returns y of that shape (a NaN stays NaN). The backward
    needs no op of its own: with ``dz = dy where y > 0, else 0`` (the ReLU's backward
    of :func:`activation_backward`, ``y > 0`` exactly where ``a + b > 0``), both inputs
    get ``dz``.
    """
    z = a + b
    return np.where(z <= 0, np.zeros_like(z), z)   # NaN stays NaN


def activation_forward(name, x):
    """Elementwise activations and softmax over the last axis.

    relu: ``max(x, 0)``; sigmoid: ``s(x) = 1 / (1 + exp(-x))``; tanh; linear: ``x``;
    softmax: ``exp(x - max x) / sum exp(x - max x)`` along the last axis;
    gelu (exact, Keras's ``approximate=False``): ``x Phi(x) = x/2 (1 + erf(x / sqrt 2))``;
    swish, silu (one function): ``x s(x)``; elu (alpha 1): ``x`` if ``x > 0`` else
    ``exp(x) - 1``; leaky_relu: :func:`leaky_relu_forward` with ``LEAKY_RELU_SLOPE`` (0.2).
    """
    if name == "linear":
        return x.copy()
    if name == "relu":
        return np.where(x <= 0, np.zeros_like(x), x)   # NaN stays NaN
    if name == "sigmoid":
        return _elementwise(_sigmoid, x)
    if name == "gelu":
        return _elementwise(_gelu, x)
    if name in ("swish", "silu"):
        return _elementwise(lambda v: v * _sigmoid(v), x)
    if name == "elu":
        return _elementwise(lambda v: v if v > 0 else np.expm1(v), x)
    if name == "leaky_relu":
        return leaky_relu_forward(x, LEAKY_RELU_SLOPE)
    if name == "tanh":
        return np.tanh(x)
    if name == "softmax":
        rows = x.reshape(-1, x.shape[-1])
        out = np.empty_like(rows)
        for r in range(rows.shape[0]):
            e = np.exp(rows[r] - rows[r].max())
            out[r] = e / e.sum()
        return out.reshape(x.shape)
    raise ValueError(f"unknown activation {name!r}")


def activation_backward(name, x, y, dy):
    """dL/dx from dL/dy, given the forward input ``x`` and output ``y``.

    relu: ``dy * (x > 0)`` (the derivative at 0 is taken as 0, as TensorFlow does);
    sigmoid: ``dy * y * (1 - y)``; tanh: ``dy * (1 - y**2)``; linear: ``dy``;
    softmax (per row): ``dx = y * (dy - sum(dy * y))``, the Jacobian-vector product
    ``J^T dy`` with ``J = diag(y) - y y^T``;
    gelu: ``dy * (Phi(x) + x phi(x))``, ``phi(x) = exp(-x**2 / 2) / sqrt(2 pi)``;
    swish, silu: ``dy * s(x) (1 + x (1 - s(x)))``; elu: ``dy`` if ``x > 0`` else
    ``dy * exp(x)``; leaky_relu: :func:`leaky_relu_backward` with ``LEAKY_RELU_SLOPE``.
    """
    if name == "linear":
        return dy.copy()
    if name == "relu":
        return np.where(x > 0, dy, np.zeros_like(dy))
    if name == "gelu":
        return _elementwise(lambda g, v: g * _gelu_slope(v), dy, x)
    if name in ("swish", "silu"):
        def swish_slope(g, v):
            s_v = _sigmoid(v)
            return g * (s_v * (1 + v * (1 - s_v)))
        return _elementwise(swish_slope, dy, x)
    if name == "elu":
        return _elementwise(lambda g, v: g if v > 0 else g * np.exp(v), dy, x)
    if name == "leaky_relu":
        return leaky_relu_backward(x, dy, LEAKY_RELU_SLOPE)
    if name == "sigmoid":
        return dy * y * (1 - y)
    if name == "tanh":
        return dy * (1 - y * y)
    if name == "softmax":
        rows_y = y.reshape(-1, y.shape[-1])
        rows_dy = dy.reshape(-1, dy.shape[-1])
        dx = np.empty_like(rows_dy)
        for r in range(rows_y.shape[0]):
            dx[r] = rows_y[r] * (rows_dy[r] - np.dot(rows_dy[r], rows_y[r]))
        return dx.reshape(dy.shape)
    raise ValueError(f"unknown activation {name!r}")


def leaky_relu_forward(x, slope):
    """Leaky ReLU: ``y = x`` where ``x > 0``, ``slope * x`` elsewhere; x of any shape.

    Keras 3: the ``LeakyReLU`` layer defaults to ``negative_slope=0.3``, the activation
    name ``'leaky_relu'`` to 0.2 (``LEAKY_RELU_SLOPE``). A NaN stays NaN.
    """
    a = x.dtype.type(slope)
    return _elementwise(lambda v: v if v > 0 else a * v, x)


def leaky_relu_backward(x, dy, slope):
    """``dx = dy`` where ``x > 0``, ``slope * dy`` elsewhere (the slope at 0, as TensorFlow)."""
    a = dy.dtype.type(slope)
    return _elementwise(lambda g, v: g if v > 0 else a * g, dy, x)


# ----------------------------------------------------------------------------- loss
def softmax_cross_entropy(logits, target, sparse, weights=None):
    """Mean softmax cross-entropy from logits, and its fused gradient.

    logits : (n, k). target : (n, k) one-hot (or soft) labels, or (n,) int labels if ``sparse``.
    weights : optional (n,) per-sample weights ``w`` (``sample_weight``/``class_weight``).

    ``loss = -1/n sum_b w[b] sum_k t[b, k] * log softmax(z[b])_k`` with the stable
    log-sum-exp ``log softmax(z)_k = z_k - m - log sum_j exp(z_j - m)``,
    ``m = max_j z_j``, and ``w = 1`` without weights. Dividing by ``n`` and not by
    ``sum w`` is Keras's 'sum_over_batch_size' reduction. The gradient is the fused
    ``w[b] * (softmax(z[b]) - t[b]) / n``: the softmax Jacobian and the CE gradient
    multiplied out once, on paper.
    """
    n, k = logits.shape
    dlogits = np.empty_like(logits)
    total = 0.0
    for b in range(n):
        z = logits[b]
        m = z.max()
        lse = m + np.log(np.sum(np.exp(z - m)))
        p = np.exp(z - lse)
        if sparse:
            t = np.zeros(k, dtype=logits.dtype)
            t[int(target[b])] = 1
        else:
            t = target[b]
        wb = 1.0 if weights is None else weights[b]
        total += -wb * np.sum(t * (z - lse))
        dlogits[b] = wb * (p - t) / n
    return logits.dtype.type(total / n), dlogits


# ----------------------------------------------------------------------------- dropout
def dropout_forward(x, mask, scale):
    """Inverted dropout: ``y = x * mask * scale`` with ``scale = 1 / (1 - rate)``.

    mask : same shape as x, 1 where the unit is kept and 0 where it is dropped.
    The backward pass is the same product applied to dy.
    """
    y = np.empty(x.shape, dtype=x.dtype)
    fx, fm, fy = (np.ascontiguousarray(x).reshape(-1), np.ascontiguousarray(mask).reshape(-1),
                  y.reshape(-1))
    for k in range(fx.size):
        fy[k] = fx[k] * scale if fm[k] else 0
    return y


# ----------------------------------------------------------------------------- optimizers
def _flat_inplace(a, name):
    """A flat view of ``a`` for in-place updates (a reshape copy would lose them)."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous to be updated in place")
    return a.reshape(-1)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t):
    """One Adam step, in place on ``param``, ``m`` and ``v`` (Keras's formulation).

    ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    ``alpha = lr * sqrt(1 - b2^t) / (1 - b1^t)``;
    ``param -= alpha * m / (sqrt(v) + eps)``.
    Epsilon is added to ``sqrt(v)`` *after* folding both bias corrections into
    ``alpha`` (Kingma & Ba, end of section 2; Keras and TensorFlow do the same), so
    ``eps`` here equals Keras's ``epsilon=1e-7`` exactly.
    """
    dt = param.dtype.type
    alpha = dt(lr * np.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t))
    b1, b2, eps = dt(beta_1), dt(beta_2), dt(epsilon)
    fp, fm, fv = _flat_inplace(param, "param"), _flat_inplace(m, "m"), _flat_inplace(v, "v")
    fg = np.ascontiguousarray(grad).reshape(-1)
    for k in range(fp.size):
        fm[k] = b1 * fm[k] + (1 - b1) * fg[k]
        fv[k] = b2 * fv[k] + (1 - b2) * fg[k] * fg[k]
        fp[k] -= alpha * fm[k] / (np.sqrt(fv[k]) + eps)


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    """One SGD step with (Nesterov) momentum, in place (Keras's formulation).

    ``velocity = momentum * velocity - lr * g``;
    plain: ``param += velocity``; nesterov: ``param += momentum * velocity - lr * g``.
    With ``momentum == 0`` this is ``param -= lr * g``.
    """
    dt = param.dtype.type
    lr, mu = dt(lr), dt(momentum)
    fp, fvel = _flat_inplace(param, "param"), _flat_inplace(velocity, "velocity")
    fg = np.ascontiguousarray(grad).reshape(-1)
    for k in range(fp.size):
        fvel[k] = mu * fvel[k] - lr * fg[k]
        if nesterov:
            fp[k] += mu * fvel[k] - lr * fg[k]
        else:
            fp[k] += fvel[k]
