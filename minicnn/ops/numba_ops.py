"""The numba backend: thin validating wrappers around the kernels of :mod:`minicnn.ops._kernels`.

Each wrapper makes its arrays C-contiguous, reshapes them to what the kernel
expects and converts every scalar to the arrays' dtype, so a float32 model
only ever compiles float32 signatures. Same signatures and conventions as
:mod:`minicnn.ops.reference`.
"""
from __future__ import annotations

import math
import warnings

import numba
import numpy as np

from .. import config
from ._kernels import conv as conv_k
from ._kernels import dense as dense_k
from ._kernels import elementwise as elementwise_k
from ._kernels import loss as loss_k
from ._kernels import norm as norm_k
from ._kernels import optim as optim_k
from ._kernels import pool as pool_k
from ._kernels import winograd as winograd_k
from ._kernels import winograd4 as winograd4_k
from ._shapes import out_hw
from .reference import (LEAKY_RELU_SLOPE, _flat_inplace, _winograd_check, backward_input_pads,
                        check_bn, check_moments, check_residual, rotated_kernel, split_dx)

config.apply_thread_policy()
config.tune_malloc()
config.apply_wait_policy()

_c = np.ascontiguousarray


_GROUP_ROWS = 256


#: fused steps this backend implements (see :func:`minicnn.ops.fusions`)
FUSIONS = ("conv2d_relu_maxpool", "winograd_conv2d_relu_maxpool",
           "winograd4_conv2d_relu_maxpool", "conv2d_batchnorm_relu",
           "conv2d_batchnorm", "add_relu", "conv2d_batchnorm_add_relu")


def _group(n, nt, rows_per_image):
    """Images per GEMM in the plain conv kernels: about 256 patch rows (the seed model's
    conv3, 8x8 outputs, stacks 4 images; bigger layers keep 1), never more than a
    thread's share of the batch."""
    return max(1, min(-(-n // nt), _GROUP_ROWS // rows_per_image))


def _threads(n):
    """Threads for a batch of ``n``: never more threads than images."""
    return max(1, min(numba.get_num_threads(), n))


_NO_PARALLEL_HINT = r"(?s).*no transformation for parallel execution was possible"


def _quiet(kernel, *args):
    """``kernel(*args)`` without Numba's hint that ``parallel=True`` found nothing to do.

    The kernels compiled with ``parallel=PRANGE_ONLY`` (see :mod:`._kernels`) get it,
    for the inner function of their ``prange`` loop, at every cold compile: only their
    ``prange`` loops are parallel, on purpose. Any other warning still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NO_PARALLEL_HINT,
                                category=numba.NumbaPerformanceWarning)
        return kernel(*args)


def _counter():
    """The shared slot counter of a conv kernel (see :mod:`._kernels.sched`)."""
    return np.zeros(1, dtype=np.int64)


def _bias_or_zeros(bias, n, dtype):
    return np.zeros(n, dtype=dtype) if bias is None else _c(bias, dtype=dtype)


def _conv_args(x, kernel, strides, pads):
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    oh, ow = out_hw(h, w, kh, kw, strides, pads)
    return _c(kernel).reshape(kh * kw * c, f), (kh, kw, *strides, pads[0], pads[2], oh, ow)


def _no_dz(dtype):
    """The ``dz_out`` of a conv backward that keeps no dz."""
    return np.empty((0, 0, 0), dtype=dtype)


def _moments_buffer(n, f, moments):
    """The per-image moment sums a conv kernel fills (zeros ``(n, 2, f)``), or none."""
    return np.zeros((n if moments else 0, 2, f), dtype=np.float64)


def _with_moments(y, part, moments):
    """``y``, or with ``moments`` ``(y, mean, var)`` in y's dtype from the kernel's sums."""
    if not moments:
        return y
    mean, var = norm_k.merge_moments(part, float(y.size // y.shape[-1]))
    return y, mean.astype(y.dtype), var.astype(y.dtype)


def _no_residual(f, dtype):
    """The conv kernels' ``res`` argument when no residual is added: ``(0, 0, 0, f)``."""
    return np.empty((0, 0, 0, f), dtype)


def _residual_arg(residual, shape, dtype, op):
    """The conv kernels' ``res`` argument: ``residual`` (checked against the output's
    ``shape``, contiguous) or none."""
    check_residual(residual, shape, dtype, op)
    return _no_residual(shape[3], dtype) if residual is None else _c(residual)


def conv2d_forward(x, kernel, bias, strides, pads, relu=False, moments=False, residual=None):
    n, f = x.shape[0], kernel.shape[3]
    k2, geo = _conv_args(x, kernel, strides, pads)
    res = _residual_arg(residual, (n, geo[6], geo[7], f), x.dtype, "conv2d_forward")
    nt = _threads(n)
    part = _moments_buffer(n, f, moments)
    y, _ = conv_k.conv2d_forward(_c(x), k2, _bias_or_zeros(bias, f, x.dtype), *geo, bool(relu),
                                 False, False, x.dtype.type(0), nt, _group(n, nt, geo[6] * geo[7]),
                                 _counter(), part, res)
    return _with_moments(y, part, moments)


def _no_bn(f, dtype):
    """The conv backward kernels' ``bn, m`` arguments when no batch norm follows."""
    return np.empty((0, f), dtype=dtype), dtype.type(0)


def _bn_args(dy, y, bn, op):
    """``(y, relu, coefficients, m)`` for a conv backward kernel: the ReLU'd output ``y``
    (dy itself when None) and its mask flag, or with ``bn`` (a
    :class:`minicnn.ops.reference.BatchNormGradient`) batch norm's input ``z``, its ReLU
    flag, the ``(7, f)`` rows of :func:`.norm.bn_coefficients` and its row count; without
    ``bn`` the coefficients are ``(0, f)``."""
    check_bn(dy, y, bn, op)
    dt, f = dy.dtype, dy.shape[-1]
    if bn is None:
        return (dy if y is None else _c(y)), y is not None, *_no_bn(f, dt)
    m = dt.type(dy.size // f)
    inv_std = _c(bn.inv_std, dtype=dt)
    coefficients = norm_k.bn_coefficients(
        _c(bn.mean, dtype=dt), inv_std, _channel_vector(bn.gamma, f, dt, 1),
        _channel_vector(bn.beta, f, dt, 0), inv_std, _c(bn.dgamma, dtype=dt),
        _c(bn.dbeta, dtype=dt), m)
    return _c(bn.z, dtype=dt), bool(bn.relu), coefficients, m


def conv2d_backward(x, kernel, dy, strides, pads, need_dx=True, y=None, bn=None):
    n = x.shape[0]
    k2, geo = _conv_args(x, kernel, strides, pads)
    dy4 = _c(dy)
    y4, relu, coefficients, m = _bn_args(dy4, y, bn, "conv2d_backward")
    nt = _threads(n)
    dx, dk, db = conv_k.conv2d_backward(_c(x), k2, dy4, y4, np.empty((0, 0, 0, 0), np.uint8),
                                        *geo, bool(need_dx), relu, False, _no_dz(x.dtype),
                                        x.dtype.type(0), nt, _group(n, nt, geo[6] * geo[7]),
                                        _counter(), coefficients, m)
    return (dx if need_dx else None), dk.reshape(kernel.shape), db


def conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads, need_argmax=True):
    k2, geo = _conv_args(x, kernel, strides, pads)
    # one image per GEMM, as the fused kernel always ran (the pool needs no bigger GEMMs)
    y, arg = conv_k.conv2d_forward(_c(x), k2, _bias_or_zeros(bias, kernel.shape[3], x.dtype),
                                   *geo, True, True, bool(need_argmax), x.dtype.type(0),
                                   _threads(x.shape[0]), 1, _counter(),
                                   _moments_buffer(0, kernel.shape[3], False),
                                   _no_residual(kernel.shape[3], x.dtype))
    return y, (arg if need_argmax else None)


def conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads, need_dx=True,
                                 dx_algorithm="im2col"):
    split = split_dx(need_dx, dx_algorithm, kernel, strides, "conv2d_relu_maxpool_backward")
    k2, geo = _conv_args(x, kernel, strides, pads)
    n, oh, ow, f = x.shape[0], geo[6], geo[7], kernel.shape[3]
    # split: the kernel keeps dz (the unpooled, masked gradient) and skips its dx
    dz = np.empty((n, oh * ow, f), dtype=x.dtype) if split else _no_dz(x.dtype)
    dx, dk, db = conv_k.conv2d_backward(
        _c(x), k2, _c(dy), _c(y), _c(argmax, dtype=np.uint8), *geo,
        bool(need_dx) and not split, True, True, dz, x.dtype.type(0), _threads(n), 1,
        _counter(), *_no_bn(f, x.dtype))
    if split:
        dx = winograd_conv2d_backward_input(dz.reshape(n, oh, ow, f), kernel, pads)
    return (dx if need_dx else None), dk.reshape(kernel.shape), db


def _winograd_geometry(x, kernel, pads, op):
    _winograd_check(kernel, pads, op)
    n, h, w, c = x.shape
    oh, ow = out_hw(h, w, 3, 3, (1, 1), pads)
    tiles = -(-oh // 2) * -(-ow // 2)
    nt = _threads(n)
    # images per GEMM: about 128 tiles (16 GEMMs of (grp*tiles, c) x (c, f)); 256, as for
    # im2col's patch rows, measured slower at 16x16 (64 tiles: fwd 1.84 / bwd 4.57 ms for
    # the seed's conv2 at 1 image, 1.70 / 4.05 at 2) and at 8x8 (bwd 2.53 at 4, 2.39 at 8)
    return nt, _group(n, nt, 2 * tiles), oh, ow


def winograd_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    nt, grp, oh, ow = _winograd_geometry(x, kernel, pads, "winograd_conv2d_forward")
    f = kernel.shape[3]
    check_residual(residual, (x.shape[0], oh, ow, f), x.dtype, "winograd_conv2d_forward")
    u = winograd_k.kernel_transform(_c(kernel), x.dtype.type(0.5))
    y, _ = winograd_k.winograd_forward(_c(x), u, _bias_or_zeros(bias, f, x.dtype), pads[0],
                                       pads[2], oh, ow, bool(relu) and residual is None, False,
                                       x.dtype.type(0), nt, grp, _counter())
    # F(2x2, 3x3)'s forward runs only when asked for by name: its residual and its
    # moments each take a pass of their own
    if residual is not None:
        y = (add_relu_forward if relu else add_forward)(y, _c(residual))
    if not moments:
        return y
    mean, var = _quiet(norm_k.batch_moments, y.reshape(-1, f), y.shape[0])
    return y, mean.astype(y.dtype), var.astype(y.dtype)


def winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads):
    nt, grp, oh, ow = _winograd_geometry(x, kernel, pads, "winograd_conv2d_relu_maxpool_forward")
    f = kernel.shape[3]
    u = winograd_k.kernel_transform(_c(kernel), x.dtype.type(0.5))
    return winograd_k.winograd_forward(_c(x), u, _bias_or_zeros(bias, f, x.dtype), pads[0],
                                       pads[2], oh, ow, True, True, x.dtype.type(0), nt, grp,
                                       _counter())


def _winograd4_forward(x, kernel, bias, pads, relu, pool, need_arg, op, part=None,
                       residual=None):
    _winograd_check(kernel, pads, op)
    n, h, w, c = x.shape
    f = kernel.shape[3]
    oh, ow = out_hw(h, w, 3, 3, (1, 1), pads)
    tiles = -(-oh // 4) * -(-ow // 4)
    nt = _threads(n)
    # images per GEMM: about 32 tiles (36 GEMMs of (grp*tiles, c) x (c, f)); measured at
    # batch 64, 2 threads, the seed's conv2 (16 tiles per image) fwd+pool 1.51 / 1.34 / 1.40
    # / 1.41 ms at 1 / 2 / 4 / 8 images, conv3 (4 tiles) 0.89 / 0.86 / 0.84 / 0.83 / 1.11
    # at 1 / 2 / 4 / 8 / 16
    grp = _group(n, nt, 8 * tiles)
    res = _residual_arg(residual, (n, oh, ow, f), x.dtype, op)
    u = winograd4_k.kernel_transform(_c(kernel))
    return winograd4_k.winograd4_forward(_c(x), u, _bias_or_zeros(bias, f, x.dtype), pads[0],
                                         pads[2], oh, ow, bool(relu), pool, need_arg,
                                         x.dtype.type(0), nt, grp, _counter(),
                                         _moments_buffer(0, f, False) if part is None else part,
                                         res)


def winograd4_conv2d_forward(x, kernel, bias, pads, relu=False, moments=False, residual=None):
    part = _moments_buffer(x.shape[0], kernel.shape[3], moments)
    y = _winograd4_forward(x, kernel, bias, pads, relu, False, False,
                           "winograd4_conv2d_forward", part, residual)[0]
    return _with_moments(y, part, moments)


def winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, pads, need_argmax=True):
    y, arg = _winograd4_forward(x, kernel, bias, pads, True, True, bool(need_argmax),
                                "winograd4_conv2d_relu_maxpool_forward")
    return y, (arg if need_argmax else None)


_NO_ARGMAX = np.zeros((0, 0, 0, 0), dtype=np.uint8)


#: bytes of a thread's transformed tiles in the Winograd backward (``v``, ``dm``, ``dv``,
#: see :func:`_winograd_backward_group`): half of one core's 2 MiB L2, the other half for
#: the slot's partial dU, the transformed kernel and the images
_WINOGRAD_BACKWARD_BYTES = 2**20


def _winograd_backward_group(grp, th, tw, c, f, itemsize):
    """``(images, tile rows)`` per GEMM in the F(2x2, 3x3) backward: ``grp`` images (the
    forward's rule) of ``th`` tile rows each, fewer where a thread's transformed tiles
    would outgrow :data:`_WINOGRAD_BACKWARD_BYTES` (per tile, 16 positions of ``v`` (c),
    ``dm`` (f) and dx's ``dv`` (c)); where one image's tiles would, one image cut into
    even chunks of tile rows. Kernel alone, batch 64, 2 threads (Intel Xeon family 6, 2 MiB
    L2, benchmarks/RESULTS.md 11): the 8x8x128 -> 128 layer 2 images instead of 8 (6.8
    against 8.2-8.3 ms), 16x16x64 -> 64 one image instead of 2 (6.0 against 6.2-6.3), the
    32x32x32 -> 32 layer half an image (8.6-8.8 against 9.2-9.4; a quarter 9.0); the seed
    model's layers within noise (8x8x64: 5 images instead of 8, 1.65-1.66 against 1.67)."""
    per_tile = 16 * itemsize * (2 * c + f)
    fit = max(1, _WINOGRAD_BACKWARD_BYTES // per_tile)      # tiles
    tiles = th * tw
    if tiles <= fit:
        return max(1, min(grp, fit // tiles)), th
    rows = max(1, fit // tw)                                  # tile rows that fit
    pieces = -(-th // rows)
    return 1, -(-th // pieces)


def _winograd_backward(x, kernel, dy, y, argmax, pads, need_dx, op, bn=None):
    nt, grp, oh, ow = _winograd_geometry(x, kernel, pads, op)
    c, f = kernel.shape[2], kernel.shape[3]
    grp, chunk = _winograd_backward_group(grp, -(-oh // 2), -(-ow // 2), c, f,
                                          x.dtype.itemsize)
    u_t = _c(winograd_k.kernel_transform(_c(kernel), x.dtype.type(0.5)).transpose(0, 2, 1))
    dy = _c(dy)
    pool = argmax is not None
    if pool:
        y4, relu, (coefficients, m) = _c(y), False, _no_bn(f, x.dtype)
    else:
        y4, relu, coefficients, m = _bn_args(dy, y, bn, op)
    dx, du, db = winograd_k.winograd_backward(
        _c(x), u_t, dy, y4,
        _NO_ARGMAX if argmax is None else _c(argmax, dtype=np.uint8), pads[0], pads[2], oh, ow,
        bool(need_dx), relu, pool, x.dtype.type(0), nt, grp, chunk, _counter(),
        coefficients, m)
    dkernel = winograd_k.kernel_gradient(du.reshape(16, c, f), x.dtype.type(0.5))
    return (dx if need_dx else None), dkernel, db


def winograd_conv2d_backward(x, kernel, dy, pads, need_dx=True, y=None, bn=None):
    return _winograd_backward(x, kernel, dy, y, None, pads, need_dx, "winograd_conv2d_backward",
                              bn)


def winograd_conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, pads, need_dx=True):
    return _winograd_backward(x, kernel, dy, y, argmax, pads, need_dx,
                              "winograd_conv2d_relu_maxpool_backward")


def winograd_conv2d_backward_input(dz, kernel, pads):
    # by F(4x4, 3x3): the forward kernel the autotuner and ``minicnn compile`` use
    # (F(2x2, 3x3)'s forward is compiled only for a layer that asks for it by name)
    _winograd_check(kernel, pads, "winograd_conv2d_backward_input")
    back_pads = backward_input_pads(pads, "winograd_conv2d_backward_input")
    return winograd4_conv2d_forward(dz, rotated_kernel(kernel), None, back_pads)


def maxpool2d_forward(x, pool, strides, pads):
    n, h, w, c = x.shape
    ph, pw = pool
    oh, ow = out_hw(h, w, ph, pw, strides, pads)
    return pool_k.maxpool2d_forward(_c(x), ph, pw, *strides, pads[0], pads[2], oh, ow)


def maxpool2d_backward(dy, argmax, x_shape, pool, strides, pads):
    _, h, w, _ = x_shape
    sh, sw = strides
    return _quiet(pool_k.maxpool2d_backward, _c(dy), _c(argmax, dtype=np.int32), h, w,
                  pool[0], pool[1], sh, sw, pads[0], pads[2])


def avgpool2d_forward(x, pool, strides, pads):
    n, h, w, c = x.shape
    ph, pw = pool
    oh, ow = out_hw(h, w, ph, pw, strides, pads)
    return pool_k.avgpool2d_forward(_c(x), ph, pw, *strides, pads[0], pads[2], oh, ow,
                                    x.dtype.type(1))


def avgpool2d_backward(dy, x_shape, pool, strides, pads):
    _, h, w, _ = x_shape
    return pool_k.avgpool2d_backward(_c(dy), h, w, *pool, *strides, pads[0], pads[2],
                                     dy.dtype.type(1))


def global_avgpool_forward(x):
    _, h, w, _ = x.shape
    return pool_k.global_avgpool_forward(_c(x), x.dtype.type(h * w))


def global_avgpool_backward(dy, x_shape):
    _, h, w, _ = x_shape
    return pool_k.global_avgpool_backward(_c(dy), h, w, dy.dtype.type(h * w))


def global_maxpool_forward(x):
    return _quiet(pool_k.global_maxpool_forward, _c(x))


def global_maxpool_backward(dy, argmax, x_shape):
    _, h, w, _ = x_shape
    return _quiet(pool_k.global_maxpool_backward, _c(dy), _c(argmax, dtype=np.int32), h, w)


def _channel_vector(v, c, dtype, fill):
    """A ``(c,)`` parameter in ``dtype``: ``v``, or ``fill`` everywhere when it is None."""
    return np.full(c, fill, dtype=dtype) if v is None else _c(v, dtype=dtype)


def batchnorm_train_forward(x, gamma, beta, epsilon):
    # the fused kernel with relu=False, keeping xhat: one kernel less to compile
    dt = x.dtype.type
    c = x.shape[-1]
    rows = _c(x).reshape(-1, c)
    xhat = np.empty_like(rows)
    mean64, var64 = _quiet(norm_k.batch_moments, rows, x.shape[0])
    y, mean, var, inv_std = _quiet(
        norm_k.batchnorm_relu_train_forward, rows, _channel_vector(gamma, c, x.dtype, 1),
        _channel_vector(beta, c, x.dtype, 0), mean64, var64, dt(epsilon), dt(1), dt(0),
        False, xhat, _threads(rows.shape[0]), np.empty((0, c), dtype=x.dtype))
    return y.reshape(x.shape), mean, var, xhat.reshape(x.shape), inv_std


def batchnorm_inference_forward(x, gamma, beta, mean, var, epsilon):
    dt = x.dtype.type
    c = x.shape[-1]
    rows = _c(x).reshape(-1, c)
    inv_std = dt(1) / np.sqrt(_c(var, dtype=x.dtype) + dt(epsilon))
    y = norm_k.batchnorm_inference_forward(
        rows, _channel_vector(gamma, c, x.dtype, 1), _channel_vector(beta, c, x.dtype, 0),
        _c(mean, dtype=x.dtype), inv_std, _threads(rows.shape[0]))
    return y.reshape(x.shape)


def batchnorm_backward(dy, xhat, gamma, inv_std):
    # the fused kernel with relu=False, given xhat as x with mean 0 and scale 1 (exact)
    dt = dy.dtype.type
    c = dy.shape[-1]
    rows = _c(dy).reshape(-1, c)
    zeros = np.zeros(c, dtype=dy.dtype)
    dx, dgamma, dbeta = _quiet(
        norm_k.batchnorm_relu_backward, rows, _c(xhat, dtype=dy.dtype).reshape(-1, c),
        _channel_vector(gamma, c, dy.dtype, 1), zeros, zeros, np.ones(c, dtype=dy.dtype),
        _c(inv_std, dtype=dy.dtype), dt(rows.shape[0]), dt(0), False, _threads(rows.shape[0]),
        True)
    return dx.reshape(dy.shape), dgamma, dbeta


def batchnorm_relu_train_forward(x, gamma, beta, epsilon, relu=True, moments=None,
                                 residual=None):
    dt = x.dtype.type
    c = x.shape[-1]
    check_residual(residual, x.shape, x.dtype, "batchnorm_relu_train_forward")
    rows = _c(x).reshape(-1, c)
    if moments is None:
        mean64, var64 = _quiet(norm_k.batch_moments, rows, x.shape[0])
    else:
        mean64, var64 = (_c(v, dtype=np.float64) for v in check_moments(moments, c))
    res = (np.empty((0, c), dtype=x.dtype) if residual is None
           else _c(residual).reshape(-1, c))
    y, mean, var, inv_std = _quiet(
        norm_k.batchnorm_relu_train_forward, rows, _channel_vector(gamma, c, x.dtype, 1),
        _channel_vector(beta, c, x.dtype, 0), mean64, var64, dt(epsilon), dt(1), dt(0),
        bool(relu), np.empty((0, c), dtype=x.dtype), _threads(rows.shape[0]), res)
    return y.reshape(x.shape), mean, var, inv_std


def batchnorm_relu_backward(dy, x, gamma, beta, mean, inv_std, relu=True, need_dx=True):
    if x.shape != dy.shape:
        raise ValueError(f"batchnorm_relu_backward: x must have dy's shape {dy.shape}, "
                         f"received {x.shape}")
    dt = dy.dtype.type
    c = dy.shape[-1]
    rows = _c(dy).reshape(-1, c)
    inv_std = _c(inv_std, dtype=dy.dtype)
    dx, dgamma, dbeta = _quiet(
        norm_k.batchnorm_relu_backward, rows, _c(x, dtype=dy.dtype).reshape(-1, c),
        _channel_vector(gamma, c, dy.dtype, 1), _channel_vector(beta, c, dy.dtype, 0),
        _c(mean, dtype=dy.dtype), inv_std, inv_std, dt(rows.shape[0]), dt(0),
        bool(relu), _threads(rows.shape[0]), bool(need_dx))
    return (dx.reshape(dy.shape) if need_dx else None), dgamma, dbeta


def dense_forward(x, kernel, bias):
    return dense_k.dense_forward(_c(x), _c(kernel), _bias_or_zeros(bias, kernel.shape[1], x.dtype),
                           _threads(x.shape[0]))


def dense_backward(x, kernel, dy, need_dx=True):
    dx, dk, db = _quiet(dense_k.dense_backward, _c(x), _c(kernel), _c(dy), bool(need_dx),
                        _threads(x.shape[0]))
    return (dx if need_dx else None), dk, db


def activation_forward(name, x):
    dt = x.dtype.type
    flat = _c(x).reshape(-1)
    if name == "linear":
        return x.copy()
    if name == "relu":
        y = elementwise_k.relu_forward(flat, dt(0))
    elif name == "sigmoid":
        y = elementwise_k.sigmoid_forward(flat, dt(1))
    elif name == "tanh":
        y = elementwise_k.tanh_forward(flat)
    elif name == "softmax":
        y = elementwise_k.softmax_forward(_c(x).reshape(-1, x.shape[-1]), dt(0))
    elif name == "gelu":
        y = elementwise_k.gelu_forward(flat, dt(0.5), dt(1), dt(1 / math.sqrt(2)))
    elif name in ("swish", "silu"):
        y = elementwise_k.swish_forward(flat, dt(1))
    elif name == "elu":
        y = elementwise_k.elu_forward(flat, dt(0))
    elif name == "leaky_relu":
        return leaky_relu_forward(x, LEAKY_RELU_SLOPE)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return y.reshape(x.shape)


def activation_backward(name, x, y, dy):
    dt = dy.dtype.type
    fdy = _c(dy).reshape(-1)
    if name == "linear":
        return dy.copy()
    if name == "relu":
        dx = elementwise_k.relu_backward(_c(x).reshape(-1), fdy, dt(0))
    elif name == "sigmoid":
        dx = elementwise_k.sigmoid_backward(_c(y).reshape(-1), fdy, dt(1))
    elif name == "tanh":
        dx = elementwise_k.tanh_backward(_c(y).reshape(-1), fdy, dt(1))
    elif name == "softmax":
        k = dy.shape[-1]
        dx = elementwise_k.softmax_backward(_c(y).reshape(-1, k), _c(dy).reshape(-1, k), dt(0))
    elif name == "gelu":
        dx = elementwise_k.gelu_backward(_c(x, dtype=dy.dtype).reshape(-1), fdy, dt(0.5), dt(1),
                                         dt(1 / math.sqrt(2)), dt(1 / math.sqrt(2 * math.pi)))
    elif name in ("swish", "silu"):
        dx = elementwise_k.swish_backward(_c(x, dtype=dy.dtype).reshape(-1), fdy, dt(1))
    elif name == "elu":
        dx = elementwise_k.elu_backward(_c(x, dtype=dy.dtype).reshape(-1), fdy, dt(0))
    elif name == "leaky_relu":
        return leaky_relu_backward(x, dy, LEAKY_RELU_SLOPE)
    else:
        raise ValueError(f"unknown activation {name!r}")
    return dx.reshape(dy.shape)


def _same_as_a(op, a, b):
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"{op}: b must have a's shape {a.shape} and dtype {a.dtype}, "
                         f"received {b.shape} {b.dtype}")


def add_forward(a, b):
    _same_as_a("add_forward", a, b)
    return elementwise_k.add_forward(_c(a).reshape(-1), _c(b).reshape(-1)).reshape(a.shape)


def add_relu_forward(a, b):
    _same_as_a("add_relu_forward", a, b)
    return elementwise_k.add_relu_forward(_c(a).reshape(-1), _c(b).reshape(-1),
                                          a.dtype.type(0)).reshape(a.shape)


def leaky_relu_forward(x, slope):
    dt = x.dtype.type
    return elementwise_k.leaky_relu_forward(_c(x).reshape(-1), dt(slope), dt(0)).reshape(x.shape)


def leaky_relu_backward(x, dy, slope):
    dt = dy.dtype.type
    return elementwise_k.leaky_relu_backward(_c(x, dtype=dy.dtype).reshape(-1),
                                             _c(dy).reshape(-1), dt(slope),
                                             dt(0)).reshape(dy.shape)


def softmax_cross_entropy(logits, target, sparse, weights=None):
    dt = logits.dtype.type
    n = logits.shape[0]
    if sparse:
        labels = _c(target, dtype=np.int64).reshape(-1)
        rows, d = loss_k.sparse_softmax_cross_entropy(_c(logits), labels, dt(1) / dt(n), dt(1))
    else:
        rows, d = loss_k.softmax_cross_entropy(_c(logits), _c(target, dtype=logits.dtype),
                                               dt(1) / dt(n))
    if weights is not None:
        rows = rows * weights
        d *= weights[:, None]
    return dt(rows.sum() / dt(n)), d


def dropout_forward(x, mask, scale):
    dt = x.dtype.type
    y = elementwise_k.dropout_forward(_c(x).reshape(-1), _c(mask).reshape(-1), dt(scale))
    return y.reshape(x.shape)


def adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t):
    dt = param.dtype.type
    alpha = dt(lr * np.sqrt(1.0 - beta_2 ** t) / (1.0 - beta_1 ** t))
    optim_k.adam_update(_flat_inplace(param, "param"), _c(grad, dtype=param.dtype).reshape(-1),
                        _flat_inplace(m, "m"), _flat_inplace(v, "v"),
                        alpha, dt(beta_1), dt(beta_2), dt(epsilon), dt(1))


def sgd_update(param, grad, velocity, lr, momentum, nesterov):
    dt = param.dtype.type
    optim_k.sgd_update(_flat_inplace(param, "param"), _c(grad, dtype=param.dtype).reshape(-1),
                       _flat_inplace(velocity, "velocity"), dt(lr), dt(momentum), bool(nesterov))
