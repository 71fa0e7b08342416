"""Dense, Flatten, Activation, ReLU and Dropout."""
from __future__ import annotations

import numpy as np

from .. import activations, initializers, ops, regularizers
from .augment import RandomLayer
from .base import Layer, positive_int, reject_kwargs


class Dense(Layer):
    """Fully connected layer: ``y = activation(x @ kernel + bias)``.

    Shapes: ``x (n, k)``, ``kernel (k, units)``, ``bias (units,)``, ``y (n, units)``.
    Backward: ``dz = activation'(dy)``, ``dkernel = x.T @ dz``, ``dbias = sum_n dz``,
    ``dx = dz @ kernel.T``.
    """

    _cache = None      # (x, z, y) of the last forward

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 input_shape=None, dtype="float32", name=None,
                 trainable=True, **kwargs):
        owner = "Dense"
        self.units = positive_int(units, "units", owner)
        self.activation = activations.get(activation, owner)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer, owner)
        self.bias_initializer = initializers.get(bias_initializer, owner)
        self.kernel_regularizer = regularizers.get(kernel_regularizer, owner)
        self.bias_regularizer = regularizers.get(bias_regularizer, owner)
        reject_kwargs(owner, kwargs)
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"{self.name}: Dense expects flat inputs (features,), received "
                             f"input_shape {tuple(input_shape)}; add a Flatten layer before it")
        return (self.units,)

    def build(self, input_shape):
        self.add_weight("kernel", (input_shape[0], self.units), self.kernel_initializer,
                        regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer,
                            regularizer=self.bias_regularizer)

    def call(self, x, training=False):
        z = ops.dense_forward(x, self.params["kernel"], self.params.get("bias"))
        y = z if self.activation == "linear" else activations.forward(self.activation, z)
        self._cache = (x, z, y)
        return y

    def backward(self, dy):
        x, z, y = self._cache
        dz = dy if self.activation == "linear" else activations.backward(self.activation, z, y, dy)
        return self.backward_preactivation(dz)

    def preactivation(self):
        return None if self._cache is None else self._cache[1]

    def backward_preactivation(self, dz):
        """Backward from dL/dz, the gradient before the activation (used for fused softmax-CE)."""
        dx, dkernel, dbias = ops.dense_backward(self._cache[0], self.params["kernel"], dz,
                                                self.compute_input_gradient)
        self.grads["kernel"] = dkernel
        if self.use_bias:
            self.grads["bias"] = dbias
        return dx

    def get_config(self):
        cfg = super().get_config()
        cfg.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                   kernel_initializer=self.kernel_initializer,
                   bias_initializer=self.bias_initializer,
                   kernel_regularizer=regularizers.serialize(self.kernel_regularizer),
                   bias_regularizer=regularizers.serialize(self.bias_regularizer))
        return cfg


class Flatten(Layer):
    """Flatten each example to a vector: ``(n, h, w, c) -> (n, h * w * c)`` in NHWC order."""

    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def call(self, x, training=False):
        self._x_shape = x.shape
        return np.ascontiguousarray(x).reshape(x.shape[0], -1)

    def backward(self, dy):
        return dy.reshape(self._x_shape)


class Activation(Layer):
    """Apply an activation by name (see :data:`minicnn.activations.ACTIVATIONS`)."""

    _cache = None      # (x, y) of the last forward

    def __init__(self, activation, input_shape=None, dtype="float32", name=None, trainable=True):
        self.activation = activations.get(activation, "Activation")
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        y = activations.forward(self.activation, x)
        self._cache = (x, y)
        return y

    def backward(self, dy):
        x, y = self._cache
        return activations.backward(self.activation, x, y, dy)

    def preactivation(self):
        return None if self._cache is None else self._cache[0]

    def backward_preactivation(self, dz):
        return dz

    def get_config(self):
        cfg = super().get_config()
        cfg["activation"] = self.activation
        return cfg


class ReLU(Activation):
    """``max(x, 0)`` as a layer (``Activation('relu')``)."""

    def __init__(self, input_shape=None, dtype="float32", name=None, trainable=True):
        super().__init__("relu", input_shape=input_shape, dtype=dtype, name=name,
                         trainable=trainable)

    def get_config(self):
        cfg = super().get_config()
        del cfg["activation"]
        return cfg


class LeakyReLU(Layer):
    """``y = x`` where ``x > 0``, ``negative_slope * x`` elsewhere (Keras 3's default slope
    0.3); backward ``dx = dy`` or ``negative_slope * dy``."""

    def __init__(self, negative_slope=0.3, **kwargs):
        if isinstance(negative_slope, bool) or not isinstance(negative_slope, (int, float)) \
                or negative_slope < 0:
            raise ValueError(f"LeakyReLU: negative_slope must be a number >= 0, received "
                             f"{negative_slope!r}")
        self.negative_slope = float(negative_slope)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        self._x = x
        return ops.leaky_relu_forward(x, self.negative_slope)

    def backward(self, dy):
        return ops.leaky_relu_backward(self._x, dy, self.negative_slope)

    def get_config(self):
        cfg = super().get_config()
        cfg["negative_slope"] = self.negative_slope
        return cfg


class Dropout(RandomLayer):
    """Inverted dropout: in training, zero each unit with probability ``rate`` and
    scale the kept ones by ``1 / (1 - rate)``; at inference, the identity.

    The mask comes from minicnn's generator (:func:`minicnn.utils.set_random_seed`)
    or, when ``seed`` is given, from the layer's own generator.
    """

    def __init__(self, rate, seed=None, input_shape=None, dtype="float32", name=None,
                 trainable=True, **kwargs):
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.floating)) \
                or not 0 <= rate < 1:
            raise ValueError(f"Dropout: rate must be a float in [0, 1), received {rate!r}")
        self.rate = float(rate)
        super().__init__(seed=seed, input_shape=input_shape, dtype=dtype, name=name,
                         trainable=trainable, **kwargs)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            self._mask = None
            return x.copy()
        self._mask = self.rng().random(x.shape, dtype=np.float32) >= self.rate
        return ops.dropout_forward(x, self._mask, 1.0 / (1.0 - self.rate))

    def backward(self, dy):
        if self._mask is None:           # inference pass: the identity
            return dy.copy()
        return ops.dropout_forward(dy, self._mask, 1.0 / (1.0 - self.rate))

    def get_config(self):
        cfg = super().get_config()
        cfg["rate"] = self.rate
        return cfg
