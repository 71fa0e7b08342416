"""Conv2D: 2-D convolution (cross-correlation) over NHWC images."""
from __future__ import annotations

from .. import activations, initializers, ops, regularizers
from ..ops import algorithms
from .base import Layer, as_pair, check_padding, positive_int, reject_kwargs, window_geometry


class Conv2D(Layer):
    """2-D convolution layer, Keras signature and semantics.

    Forward: ``z = conv(x, kernel) + bias`` then ``y = activation(z)``.

    Shapes: ``x (n, h, w, c)``, ``kernel (kh, kw, c, filters)``, ``bias (filters,)``,
    ``y (n, oh, ow, filters)`` with ``oh = ceil(h / sh)`` for ``'same'`` and
    ``oh = floor((h - kh) / sh) + 1`` for ``'valid'`` (same for ``ow``).

    Backward: ``dz = activation'(dy)``; ``dkernel = sum over positions of
    patch x dz``; ``dbias = sum dz``; ``dx`` spreads ``kernel @ dz`` back over
    each patch (col2im). See :func:`minicnn.ops.reference.conv2d_backward`.

    ``algorithm`` (minicnn's, not Keras's): ``"auto"`` (default), ``"im2col"``,
    ``"winograd"`` (3x3 kernels at stride 1; :func:`minicnn.ops.reference.winograd_conv2d_forward`)
    or ``"winograd4"`` (F(4x4, 3x3) forward, F(2x2, 3x3) backward;
    :func:`minicnn.ops.reference.winograd4_conv2d_forward`).
    ``"auto"`` picks per input shape and per pass, see :mod:`minicnn.ops.algorithms`;
    :meth:`algorithm_for` tells which ones run.
    """

    _cache = None      # (x, z, y, algorithm) of the last forward; z is None when the ReLU fused

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", activation=None,
                 use_bias=True, kernel_initializer="glorot_uniform", bias_initializer="zeros",
                 kernel_regularizer=None, bias_regularizer=None, input_shape=None,
                 dtype="float32", name=None, trainable=True, algorithm="auto", **kwargs):
        owner = "Conv2D"
        self.filters = positive_int(filters, "filters", owner)
        self.kernel_size = as_pair(kernel_size, "kernel_size", owner)
        self.strides = as_pair(strides, "strides", owner)
        self.padding = check_padding(padding, owner)
        self.activation = activations.get(activation, owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, owner)
        self.bias_initializer = initializers.get(bias_initializer, owner)
        self.kernel_regularizer = regularizers.get(kernel_regularizer, owner)
        self.bias_regularizer = regularizers.get(bias_regularizer, owner)
        self.algorithm = algorithms.check(algorithm, owner)
        algorithms.check_applies(algorithm, self.kernel_size, self.strides, owner)
        reject_kwargs(owner, kwargs)
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable)

    def compute_output_shape(self, input_shape):
        oh, ow, self.pads = window_geometry(self, input_shape, self.kernel_size, "kernel_size")
        return (oh, ow, self.filters)

    def build(self, input_shape):
        kh, kw = self.kernel_size
        self.add_weight("kernel", (kh, kw, input_shape[2], self.filters), self.kernel_initializer,
                        regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer,
                            regularizer=self.bias_regularizer)

    def algorithm_for(self, x_shape):
        """``(forward, backward)``: what the passes on an input of ``x_shape`` run
        (``'im2col'``, ``'winograd'`` or, forward only, ``'winograd4'``)."""
        return algorithms.resolve(self.algorithm, tuple(x_shape), self.params["kernel"].shape,
                                  self.strides, self.pads, self.dtype,
                                  owner=f"Conv2D {self.name!r}")

    def _forward_op(self, x, relu):
        return self.convolve(x, self.params["kernel"], self.params.get("bias"), relu)

    def convolve(self, x, kernel, bias, relu=False, moments=False, residual=None):
        """``(y, algorithms)``: this layer's convolution of ``x`` with the given ``kernel``
        (its shape) and ``bias`` (or None), ReLU fused when ``relu``, by the algorithm
        :meth:`algorithm_for` picks; for weights derived from the layer's own (batch norm
        folded into them, :class:`minicnn.layers.fused.ConvBatchNorm`). With ``moments``,
        ``y`` is ``(y, mean, var)``: also the per-channel batch statistics of the output,
        for a batch norm after it; ``residual``, of the output's shape, is added before
        the ReLU (see :func:`minicnn.ops.conv2d_forward`)."""
        algo = self.algorithm_for(x.shape)
        if algo[0] == "winograd":
            return ops.winograd_conv2d_forward(x, kernel, bias, self.pads, relu=relu,
                                               moments=moments, residual=residual), algo
        if algo[0] == "winograd4":
            return ops.winograd4_conv2d_forward(x, kernel, bias, self.pads, relu=relu,
                                                moments=moments, residual=residual), algo
        return ops.conv2d_forward(x, kernel, bias, self.strides, self.pads, relu=relu,
                                  moments=moments, residual=residual), algo

    def gradients(self, x, dz, algorithms, y=None, bn=None):
        """``(dx, dkernel, dbias)`` of this layer's convolution of ``x`` from ``dz``, the
        gradient of its output before the activation (``y``: its ReLU'd output, whose mask
        ``y > 0`` applies to ``dz``; ``bn``: a :class:`minicnn.ops.BatchNormGradient`, when
        ``dz`` is the gradient of a batch norm after it), by the backward of
        ``algorithms`` (as :meth:`convolve` returned them); dx is None unless
        ``compute_input_gradient``. For a fused step that ran :meth:`convolve` itself."""
        kernel = self.params["kernel"]
        if algorithms[1] == "winograd":
            return ops.winograd_conv2d_backward(x, kernel, dz, self.pads,
                                                self.compute_input_gradient, y=y, bn=bn)
        return ops.conv2d_backward(x, kernel, dz, self.strides, self.pads,
                                   self.compute_input_gradient, y=y, bn=bn)

    def _backward_op(self, dz, y=None):
        x, algo = self._cache[0], self._cache[3]
        return self.gradients(x, dz, algo, y=y)

    def call(self, x, training=False):
        if self.activation == "relu":
            # bias and ReLU fused into the convolution op; y > 0 is the ReLU mask
            y, algo = self._forward_op(x, relu=True)
            self._cache = (x, None, y, algo)
            return y
        z, algo = self._forward_op(x, relu=False)
        y = z if self.activation == "linear" else activations.forward(self.activation, z)
        self._cache = (x, z, y, algo)
        return y

    def backward(self, dy):
        x, z, y, _ = self._cache
        if self.activation == "relu":
            return self.set_kernel_grads(*self._backward_op(dy, y=y))
        dz = dy if self.activation == "linear" else activations.backward(self.activation, z, y, dy)
        return self.backward_preactivation(dz)

    def preactivation(self):
        return None if self._cache is None else self._cache[1]

    def backward_preactivation(self, dz):
        """Backward from dL/dz, the gradient before the activation (used for fused softmax-CE)."""
        return self.set_kernel_grads(*self._backward_op(dz))

    def set_kernel_grads(self, dx, dkernel, dbias):
        """Store the gradients of the kernel (and bias); return dx."""
        self.grads["kernel"] = dkernel
        if "bias" in self.params:
            self.grads["bias"] = dbias
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(filters=self.filters, kernel_size=list(self.kernel_size),
                   strides=list(self.strides), padding=self.padding, activation=self.activation,
                   use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                   bias_initializer=self.bias_initializer,
                   kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
                   bias_regularizer=regularizers.serialize(self.bias_regularizer),
                   algorithm=self.algorithm)
        return cfg
