"""Compile the numba backend's kernels ahead of time, in groups that can run in parallel.

``minicnn compile`` runs :data:`GROUPS` in separate processes (one per core, at most two),
each calling its kernels once on tiny float32 inputs, so that Numba's on-disk cache holds
them; then it runs the shipped models, which load them. Numba compiles on one thread, so
two processes on two cores take about half the time. The groups share no kernel, so no two
processes write the same kernel's cache files; small helpers (the slot scheduler, the
partial-gradient sum) may be compiled by both, with the same signature and the same file
names, each file written whole and renamed into place by Numba.

The inputs are shaped like the models' (NHWC, C-contiguous, float32; labels int64), so
each call compiles the signature the models then look up.
"""
from __future__ import annotations

import numpy as np

from . import numba_ops as nb
from .reference import BatchNormGradient

F32 = np.float32


def _conv_inputs(rng, c=4, f=4):
    x = rng.standard_normal((2, 4, 4, c)).astype(F32)
    kernel = rng.standard_normal((3, 3, c, f)).astype(F32)
    return x, kernel, np.zeros(f, F32)


def winograd(rng):
    """Winograd F(4x4, 3x3) forward and F(2x2, 3x3) backward, plain and fused with ReLU +
    max-pool: what "auto" runs. (F(2x2, 3x3)'s forward, 10-11 s of compiling, is left to a
    layer that asks for ``algorithm="winograd"``.)"""
    x, kernel, bias = _conv_inputs(rng)
    y = nb.winograd4_conv2d_forward(x, kernel, bias, (1, 1, 1, 1), relu=True)
    nb.winograd4_conv2d_forward(x, kernel, bias, (1, 1, 1, 1), moments=True)   # before a BN
    p, arg = nb.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1, 1, 1))
    nb.winograd_conv2d_backward(x, kernel, y, (1, 1, 1, 1), y=y)
    nb.winograd_conv2d_relu_maxpool_backward(x, kernel, p, p, arg, (1, 1, 1, 1))


def im2col(rng):
    """im2col convolution forward and backward, plain and fused with ReLU + max-pool."""
    x, kernel, bias = _conv_inputs(rng)
    pads = (1, 1, 1, 1)
    y = nb.conv2d_forward(x, kernel, bias, (1, 1), pads, relu=True)
    nb.conv2d_backward(x, kernel, y, (1, 1), pads, need_dx=True, y=y)
    p, arg = nb.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    nb.conv2d_relu_maxpool_backward(x, kernel, p, p, arg, (1, 1), pads)


def dense(rng):
    """The dense layer, forward and backward."""
    x = rng.standard_normal((2, 6)).astype(F32)
    kernel = rng.standard_normal((6, 3)).astype(F32)
    y = nb.dense_forward(x, kernel, np.zeros(3, F32))
    nb.dense_backward(x, kernel, y, need_dx=True)


def losses(rng):
    """Activations, dropout, softmax cross-entropy, Adam."""
    x = rng.standard_normal((2, 6)).astype(F32)
    y = rng.standard_normal((2, 3)).astype(F32)
    a = nb.activation_forward("relu", x)
    nb.activation_backward("relu", x, a, x)
    nb.activation_forward("softmax", y)
    nb.dropout_forward(x, rng.random(x.shape) > 0.5, 2.0)
    nb.softmax_cross_entropy(y, np.array([[0], [1]]), True)
    w, g = np.ones(5, F32), np.ones(5, F32)
    nb.adam_update(w, g, np.zeros(5, F32), np.zeros(5, F32), 1e-3, 0.9, 0.999, 1e-7, 1)


def norm_and_pool(rng):
    """Batch normalisation (training, inference, backward; alone and fused with ReLU), the
    residual additions (plain and with ReLU) and global average pooling."""
    x = rng.standard_normal((2, 4, 4, 3)).astype(F32)
    gamma, beta = np.ones(3, F32), np.zeros(3, F32)
    y, mean, var, xhat, inv_std = nb.batchnorm_train_forward(x, gamma, beta, 1e-3)
    nb.batchnorm_inference_forward(x, gamma, beta, mean, var, 1e-3)
    nb.batchnorm_backward(y, xhat, gamma, inv_std)
    z, mean, _, inv_std = nb.batchnorm_relu_train_forward(x, gamma, beta, 1e-3)
    # a convolution that feeds a batch norm gathers its statistics
    kernel = rng.standard_normal((3, 3, 3, 3)).astype(F32)
    c, *moments = nb.conv2d_forward(x, kernel, beta, (1, 1), (1, 1, 1, 1), moments=True)
    nb.batchnorm_relu_train_forward(c, gamma, beta, 1e-3, moments=moments)
    nb.batchnorm_relu_backward(z, x, gamma, beta, mean, inv_std)
    # a convolution before a batch norm makes its input gradient (ConvBatchNorm)
    _, dgamma, dbeta = nb.batchnorm_relu_backward(z, c, gamma, beta, mean, inv_std,
                                                  need_dx=False)
    spec = BatchNormGradient(c, gamma, beta, mean, inv_std, dgamma, dbeta, True)
    nb.conv2d_backward(x, kernel, z, (1, 1), (1, 1, 1, 1), bn=spec)
    nb.add_relu_forward(x, z)
    nb.add_forward(x, z)
    g = nb.global_avgpool_forward(x)
    nb.global_avgpool_backward(g, x.shape)


#: the groups, split for two processes about evenly (measured, benchmarks/RESULTS.md 5,
#: 12 and 14: one process each from an empty cache; with the Winograd transforms' scratch
#: on the stack the Winograd kernels compile in 23 s instead of 27, and dense, 3.7 s, moved
#: to their group: 29.7 and 28.9 s in a slow hour)
GROUPS = {"winograd": (winograd, losses, dense), "im2col": (im2col, norm_and_pool)}


def run(group):
    """Compile every kernel of ``group`` (a key of :data:`GROUPS`)."""
    rng = np.random.default_rng(0)
    for task in GROUPS[group]:
        task(rng)
