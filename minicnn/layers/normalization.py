"""BatchNormalization, Keras's arguments and defaults, with the full backward pass.

Per channel (the last axis: NHWC images after Conv2D, features after Dense), over the
``m`` values of the batch (``m = n*h*w`` for images)::

    training:   mu = mean(x),  var = mean((x - mu)**2)       (biased, as Keras)
                xhat = (x - mu) / sqrt(var + epsilon),   y = gamma * xhat + beta
                moving_mean     = moving_mean     * momentum + mu  * (1 - momentum)
                moving_variance = moving_variance * momentum + var * (1 - momentum)
    inference:  y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta

Backward in training mode is the full one: the gradient flows through ``mu`` and
``var`` as well as through ``xhat``, which the closed form sums up as
``dx = inv_std / m * (m * dxhat - sum(dxhat) - xhat * sum(dxhat * xhat))`` with
``dxhat = dy * gamma``; ``dgamma = sum(dy * xhat)``, ``dbeta = sum(dy)``.
:func:`minicnn.ops.reference.batchnorm_backward_graph` walks the same graph back node by
node. In inference mode the statistics are constants: ``dx = dy * gamma * inv_std``.

``get_weights()`` is ``[gamma, beta, moving_mean, moving_variance]`` (gamma without
``scale=False``, beta without ``center=False``); the moving statistics are saved and
never touched by the optimizer.
"""
from __future__ import annotations

import numbers

import numpy as np

from .. import initializers, ops, regularizers
from .base import Layer


class BatchNormalization(Layer):
    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones",
                 beta_regularizer=None, gamma_regularizer=None, **kwargs):
        owner = "BatchNormalization"
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
            raise ValueError(f"{owner}: axis must be an integer, received {axis!r}")
        self.axis = int(axis)
        for arg, val, lo, hi in (("momentum", momentum, 0, 1), ("epsilon", epsilon, 0, None)):
            if isinstance(val, bool) or not isinstance(val, numbers.Real) or val < lo \
                    or (hi is not None and val > hi) or (arg == "epsilon" and val <= 0):
                raise ValueError(f"{owner}: {arg} must be a number in "
                                 f"{'[0, 1]' if hi else '(0, inf)'}, received {val!r}")
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer, owner)
        self.gamma_initializer = initializers.get(gamma_initializer, owner)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer, owner)
        self.moving_variance_initializer = initializers.get(moving_variance_initializer, owner)
        self.beta_regularizer = regularizers.get(beta_regularizer, owner)
        self.gamma_regularizer = regularizers.get(gamma_regularizer, owner)
        super().__init__(**kwargs)

    def compute_output_shape(self, input_shape):
        rank = len(input_shape) + 1
        if self.axis not in (-1, rank - 1):
            raise ValueError(f"{self.name}: minicnn normalises the last axis (channels of NHWC, "
                             f"features of Dense): axis must be -1 or {rank - 1}, received "
                             f"{self.axis}")
        return tuple(input_shape)

    def build(self, input_shape):
        c = (input_shape[-1],)
        if self.scale:
            self.add_weight("gamma", c, self.gamma_initializer, regularizer=self.gamma_regularizer)
        if self.center:
            self.add_weight("beta", c, self.beta_initializer, regularizer=self.beta_regularizer)
        self.add_weight("moving_mean", c, self.moving_mean_initializer, trainable=False)
        self.add_weight("moving_variance", c, self.moving_variance_initializer, trainable=False)

    def call(self, x, training=False):
        gamma, beta = self.params.get("gamma"), self.params.get("beta")
        if training:
            y, mean, var, self._xhat, self._inv_std = ops.batchnorm_train_forward(
                x, gamma, beta, self.epsilon)
            self.update_moving_statistics(mean, var)
            self._training = True
            return y
        self._training = False
        self._x = x              # xhat is recomputed only if a backward follows (gradcheck)
        mean, var = self.params["moving_mean"], self.params["moving_variance"]
        return ops.batchnorm_inference_forward(x, gamma, beta, mean, var, self.epsilon)

    def update_moving_statistics(self, mean, var):
        """Move the moving mean and variance towards a training batch's ``mean``, ``var``
        (in place: the arrays stay the ones in ``params``)."""
        mm, mv = self.params["moving_mean"], self.params["moving_variance"]
        dt = mm.dtype.type
        mm *= dt(self.momentum)
        mm += mean * dt(1 - self.momentum)
        mv *= dt(self.momentum)
        mv += var * dt(1 - self.momentum)

    def set_grads(self, dgamma, dbeta):
        """Store dL/dgamma and dL/dbeta (those the layer has) and zeros for the statistics."""
        if self.scale:
            self.grads["gamma"] = dgamma
        if self.center:
            self.grads["beta"] = dbeta
        self.grads["moving_mean"] = np.zeros_like(self.params["moving_mean"])
        self.grads["moving_variance"] = np.zeros_like(self.params["moving_variance"])

    def backward(self, dy):
        gamma = self.params.get("gamma")
        if self._training:
            dx, dgamma, dbeta = ops.batchnorm_backward(dy, self._xhat, gamma, self._inv_std)
        else:
            mean, var = self.params["moving_mean"], self.params["moving_variance"]
            self._inv_std = (1 / np.sqrt(var + var.dtype.type(self.epsilon))).astype(dy.dtype)
            self._xhat = (self._x - mean) * self._inv_std
            axes = tuple(range(dy.ndim - 1))
            dgamma = np.sum(dy * self._xhat, axis=axes)
            dbeta = np.sum(dy, axis=axes)
            dx = dy * (self._inv_std if gamma is None else gamma * self._inv_std)
        self.set_grads(dgamma, dbeta)
        return dx if self.compute_input_gradient else None

    def get_config(self):
        cfg = super().get_config()
        cfg.update(axis=self.axis, momentum=self.momentum, epsilon=self.epsilon,
                   center=self.center, scale=self.scale,
                   beta_initializer=self.beta_initializer,
                   gamma_initializer=self.gamma_initializer,
                   moving_mean_initializer=self.moving_mean_initializer,
                   moving_variance_initializer=self.moving_variance_initializer,
                   beta_regularizer=regularizers.serialize(self.beta_regularizer),
                   gamma_regularizer=regularizers.serialize(self.gamma_regularizer))
        return cfg
