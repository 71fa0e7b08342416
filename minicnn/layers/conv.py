"""Conv2D: 2-D convolution (cross-correlation) over NHWC images."""
from __future__ import annotations


from .. import activations, initializers, ops
from .base import Layer, as_pair, check_padding, positive_int, window_geometry


class Conv2D(Layer):
    """2-D convolution layer, Keras signature and semantics.

    Forward: ``z = conv(x, kernel) + bias`` then ``y = activation(z)``.

    Shapes: ``x (n, h, w, c)``, ``kernel (kh, kw, c, filters)``, ``bias (filters,)``,
    ``y (n, oh, ow, filters)`` with ``oh = ceil(h / sh)`` for ``'same'`` and
    ``oh = floor((h - kh) / sh) + 1`` for ``'valid'`` (same for ``ow``).

    Backward: ``dz = activation'(dy)``; ``dkernel = sum over positions of
    patch x dz``; ``dbias = sum dz``; ``dx`` spreads ``kernel @ dz`` back over
    each patch (col2im). See :func:`minicnn.ops.reference.conv2d_backward`.
    """

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 input_shape=None, dtype="float32", name=None, trainable=True, **kwargs):
        owner = "Conv2D"
        self.filters = positive_int(filters, "filters", owner)
        self.kernel_size = as_pair(kernel_size, "kernel_size", owner)
        self.strides = as_pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        self.activation = activations.get(activation, owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, owner)
        self.bias_initializer = initializers.get(bias_initializer, owner)
        _reject_kwargs(owner, kwargs)
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable)

    def compute_output_shape(self, input_shape):
        oh, ow, self.pads = window_geometry(self, input_shape, self.kernel_size, "kernel_size")
        return (oh, ow, self.filters)

    def _build(self, input_shape):
        kh, kw = self.kernel_size
        c = input_shape[2]
        self.params["kernel"] = initializers.initialize(
            self.kernel_initializer, (kh, kw, c, self.filters), self.dtype)
        if self.use_bias:
            self.params["bias"] = initializers.initialize(self.bias_initializer, (self.filters,),
                                                          self.dtype)

    def _forward(self, x, training):
        kernel, bias = self.params["kernel"], self.params.get("bias")
        if self.activation == "relu":
            # bias and ReLU fused into the convolution op; y > 0 is the ReLU mask
            y = ops.conv2d_forward(x, kernel, bias, self.strides, self.pads, relu=True)
            self._cache, self._cache_batch = (x, None, y), x.shape[0]
            return y
        z = ops.conv2d_forward(x, kernel, bias, self.strides, self.pads)
        y = z if self.activation == "linear" else activations.forward(self.activation, z)
        self._cache, self._cache_batch = (x, z, y), x.shape[0]
        return y

    def _backward(self, dy):
        x, z, y = self._cache
        if self.activation == "relu":
            return self._set_grads(*ops.conv2d_backward(
                x, self.params["kernel"], dy, self.strides, self.pads,
                self.compute_input_gradient, y=y))
        dz = dy if self.activation == "linear" else activations.backward(self.activation, z, y, dy)
        return self.backward_preactivation(dz)

    def backward_preactivation(self, dz):
        """Backward from dL/dz, the gradient before the activation (used for fused softmax-CE)."""
        x = self._cache[0]
        return self._set_grads(*ops.conv2d_backward(x, self.params["kernel"], dz, self.strides,
                                                    self.pads, self.compute_input_gradient))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=list(self.kernel_size),
                   strides=list(self.strides), padding=self.padding, activation=self.activation,
                   use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                   bias_initializer=self.bias_initializer)
        return cfg


def _reject_kwargs(owner, kwargs):
    if kwargs:
        raise ValueError(f"{owner}: unexpected argument(s) {', '.join(sorted(kwargs))}")
