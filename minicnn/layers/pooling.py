"""MaxPooling2D over NHWC images."""
from __future__ import annotations

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
