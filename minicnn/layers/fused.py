"""Fusion of Conv2D(activation='relu') + MaxPooling2D(2, 2, 'valid') for fast training.

On the numba backend :class:`minicnn.models.Sequential` runs such a pair as one
step: :func:`minicnn.ops.conv2d_relu_maxpool_forward` keeps each image's
convolution output in a thread-local buffer and writes only the pooled result
and a uint8 argmax, instead of two full-size activations. The math is exactly
``maxpool(relu(conv(x) + bias))`` (see :mod:`minicnn.ops.reference`), and the
conv layer's ``grads`` are filled as by its own backward. The reference and
numpy backends run the layers one by one, so a reader steps through each.
"""
from __future__ import annotations

from .. import ops
from .conv import Conv2D
from .pooling import MaxPooling2D


class ConvReluPool:
    """One training step over a ``Conv2D(relu)`` layer and the 2x2 max-pool after it."""

    def __init__(self, conv: Conv2D, pool: MaxPooling2D):
        self.conv, self.pool = conv, pool
        self.name = f"{conv.name}+{pool.name}"
        self._cache = None

    @staticmethod
    def applies(conv, pool) -> bool:
        return (isinstance(conv, Conv2D) and conv.activation == "relu"
                and isinstance(pool, MaxPooling2D) and pool.pool_size == (2, 2)
                and pool.strides == (2, 2) and pool.padding == "valid")

    @property
    def compute_input_gradient(self):
        return self.conv.compute_input_gradient

    def forward(self, x, training=False):
        conv = self.conv
        x = conv._check_input(x)
        y, argmax = ops.conv2d_relu_maxpool_forward(x, conv.params["kernel"],
                                                    conv.params.get("bias"), conv.strides,
                                                    conv.pads)
        # the layers' own caches would be stale: clear them
        conv._cache = self.pool._cache = None
        self._cache = (x, y, argmax)
        return y

    def backward(self, dy):
        x, y, argmax = self._cache
        conv = self.conv
        return conv._set_grads(*ops.conv2d_relu_maxpool_backward(
            x, conv.params["kernel"], dy, y, argmax, conv.strides, conv.pads,
            conv.compute_input_gradient))


def plan(layers):
    """The steps that run ``layers``: fusable Conv2D(relu) + MaxPooling2D pairs become one."""
    steps, i = [], 0
    while i < len(layers):
        if i + 1 < len(layers) and ConvReluPool.applies(layers[i], layers[i + 1]):
            steps.append(ConvReluPool(layers[i], layers[i + 1]))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps
