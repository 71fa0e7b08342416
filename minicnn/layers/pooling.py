"""Pooling over NHWC images: MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
GlobalMaxPooling2D."""
from __future__ import annotations

import numpy as np

from .. import ops
from .base import Layer, as_pair, check_padding, window_geometry


class MaxPooling2D(Layer):
    """Max pooling, Keras signature: ``MaxPooling2D(pool_size=(2, 2), strides=None, padding='valid')``.

    ``strides`` defaults to ``pool_size``. With ``'same'`` padding the padded
    positions never win (TensorFlow's rule). Forward records the argmax (the
    first maximum in row-major window order); backward routes each gradient to
    that one position only, never to every tied maximum.
    Shapes: ``x (n, h, w, c) -> y (n, oh, ow, c)``.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", input_shape=None,
                 dtype="float32", name=None, trainable=True, **kwargs):
        owner = "MaxPooling2D"
        self.pool_size = as_pair(pool_size, "pool_size", owner)
        self.strides = self.pool_size if strides is None else as_pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable,
                         **kwargs)

    def compute_output_shape(self, input_shape):
        oh, ow, self.pads = window_geometry(self, input_shape, self.pool_size, "pool_size")
        return (oh, ow, input_shape[2])

    def call(self, x, training=False):
        y, argmax = ops.maxpool2d_forward(x, self.pool_size, self.strides, self.pads)
        self._x_shape, self._argmax = x.shape, argmax
        return y

    def backward(self, dy):
        if not self.compute_input_gradient:
            return None
        x_shape, argmax = self._x_shape, self._argmax
        return ops.maxpool2d_backward(dy, argmax, x_shape, self.pool_size, self.strides, self.pads)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return cfg


class AveragePooling2D(Layer):
    """Average pooling, Keras signature: ``AveragePooling2D(pool_size=(2, 2), strides=None,
    padding='valid')``.

    ``strides`` defaults to ``pool_size``. With ``'same'`` padding each output averages
    only the window's elements inside the image (TensorFlow's rule: padding is not
    counted). Backward spreads ``dy / count`` evenly over each window (summed where
    windows overlap). Shapes: ``x (n, h, w, c) -> y (n, oh, ow, c)``.
    """

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None,
                 **kwargs):
        owner = "AveragePooling2D"
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{owner}: minicnn is NHWC only, received data_format "
                             f"{data_format!r}")
        self.pool_size = as_pair(pool_size, "pool_size", owner)
        self.strides = self.pool_size if strides is None else as_pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        oh, ow, self.pads = window_geometry(self, input_shape, self.pool_size, "pool_size")
        return (oh, ow, input_shape[2])

    def call(self, x, training=False):
        self._x_shape = x.shape
        return ops.avgpool2d_forward(x, self.pool_size, self.strides, self.pads)

    def backward(self, dy):
        if not self.compute_input_gradient:
            return None
        return ops.avgpool2d_backward(dy, self._x_shape, self.pool_size, self.strides, self.pads)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding)
        return cfg


class _GlobalPooling2D(Layer):
    def __init__(self, data_format=None, keepdims=False, **kwargs):
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{type(self).__name__}: minicnn is NHWC only, received "
                             f"data_format {data_format!r}")
        self.keepdims = bool(keepdims)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.name}: {type(self).__name__} expects images (h, w, c), "
                             f"received input_shape {tuple(input_shape)}")
        c = input_shape[2]
        return (1, 1, c) if self.keepdims else (c,)

    def _out(self, y):
        return y.reshape(y.shape[0], 1, 1, -1) if self.keepdims else y

    def _dy(self, dy):
        return np.ascontiguousarray(dy.reshape(dy.shape[0], -1))

    def get_config(self):
        cfg = super().get_config()
        cfg["keepdims"] = self.keepdims
        return cfg


class GlobalAveragePooling2D(_GlobalPooling2D):
    """Mean over each image of every channel: ``(n, h, w, c) -> (n, c)`` (``(n, 1, 1, c)``
    with ``keepdims=True``); backward ``dx = dy / (h * w)`` at every position."""

    def call(self, x, training=False):
        self._x_shape = x.shape
        return self._out(ops.global_avgpool_forward(x))

    def backward(self, dy):
        if not self.compute_input_gradient:
            return None
        return ops.global_avgpool_backward(self._dy(dy), self._x_shape)


class GlobalMaxPooling2D(_GlobalPooling2D):
    """Maximum over each image of every channel: ``(n, h, w, c) -> (n, c)``; the gradient
    goes to the first maximum (row-major) only."""

    def call(self, x, training=False):
        self._x_shape = x.shape
        y, self._argmax = ops.global_maxpool_forward(x)
        return self._out(y)

    def backward(self, dy):
        if not self.compute_input_gradient:
            return None
        return ops.global_maxpool_backward(self._dy(dy), self._argmax, self._x_shape)
