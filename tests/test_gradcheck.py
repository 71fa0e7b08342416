"""Finite-difference checks of every layer's backward pass and of the losses, in float64.

Each layer is checked on every backend with :func:`minicnn.gradcheck.check_layer`
(relative error of dx and of every parameter gradient below 1e-6). Inputs are
chosen away from the points where a gradient is undefined: no pre-activation
within 1e-3 of ReLU's kink and no ties inside a max-pool window.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import gradcheck, losses, ops
from minicnn.layers import (Activation, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, RandomFlip,
                            RandomTranslation, ReLU)

TOL = 1e-6
KINK = 1e-3          # keep |pre-activation| of a ReLU at least this far from 0


def preactivation(layer, x):
    """The input of the layer's activation (Conv2D and Dense), or x itself."""
    if isinstance(layer, Conv2D):
        return ops.conv2d_forward(x, layer.params["kernel"], layer.params.get("bias"),
                                  layer.strides, layer.pads)
    if isinstance(layer, Dense):
        return ops.dense_forward(x, layer.params["kernel"], layer.params.get("bias"))
    return x


def prepared(layer, input_shape, batch=2, seed=0):
    """Build ``layer`` with seeded random parameters and return an input away from kinks."""
    rng = np.random.default_rng(seed)
    layer.build(input_shape)
    for name, p in layer.params.items():
        p[...] = rng.standard_normal(p.shape) * (0.5 if name == "kernel" else 0.2)
    if getattr(layer, "activation", None) != "relu":
        return rng.standard_normal((batch,) + tuple(input_shape))
    for _ in range(50):
        x = rng.standard_normal((batch,) + tuple(input_shape))
        if np.abs(preactivation(layer, x)).min() > KINK:
            return x
    raise AssertionError("could not draw an input away from ReLU's kink")


def check(layer, input_shape, error_log, backend, batch=2, x=None, training=False, seed=0):
    if x is None:
        x = prepared(layer, input_shape, batch, seed)
    elif not layer.built:
        layer.build(input_shape)
    errors = gradcheck.check_layer(layer, input_shape, batch_size=batch, x=x, training=training)
    expected_keys = {"dx"} | set(layer.params)
    assert set(errors) == expected_keys
    for key, err in errors.items():
        error_log.record(f"gradcheck layers ({backend})", err)
        assert err < TOL, f"{layer.name} ({backend}): d{key} relative error {err:.3e}"
    return errors


CONV_CONFIGS = [
    # filters, kernel_size, strides, padding, activation, use_bias, input_shape
    (3, (3, 3), (1, 1), "valid", "relu", True, (5, 6, 2)),
    (2, (3, 3), (2, 2), "same", "tanh", True, (5, 5, 2)),       # odd size, stride 2
    (2, (2, 3), (1, 2), "same", "sigmoid", True, (4, 7, 3)),    # non-square kernel
    (3, (1, 1), (1, 1), "valid", None, True, (3, 4, 2)),        # 1x1
    (4, (3, 2), (2, 1), "valid", "softmax", True, (6, 5, 2)),   # softmax over channels
    (2, (5, 5), (3, 3), "same", "linear", False, (7, 6, 1)),    # 5x5, stride 3, no bias
    (2, (2, 2), (2, 3), "same", "relu", True, (6, 7, 2)),
]


@pytest.mark.parametrize("filters,kernel_size,strides,padding,activation,use_bias,input_shape",
                         CONV_CONFIGS)
def test_conv2d_gradients(backend, error_log, filters, kernel_size, strides, padding, activation,
                          use_bias, input_shape):
    layer = Conv2D(filters, kernel_size, strides=strides, padding=padding, activation=activation,
                   use_bias=use_bias, dtype="float64")
    errors = check(layer, input_shape, error_log, backend)
    assert ("bias" in errors) == use_bias


@pytest.mark.parametrize("pool_size,strides,padding,input_shape", [
    ((2, 2), None, "valid", (4, 6, 2)),
    ((2, 2), None, "same", (5, 5, 2)),            # odd size: a padded row and column
    ((3, 3), (2, 2), "same", (7, 6, 1)),          # overlapping windows
    ((3, 2), (1, 2), "valid", (5, 6, 2)),         # stride != pool
    ((2, 2), (3, 3), "valid", (7, 7, 1)),         # stride > pool: skipped pixels
])
def test_maxpool2d_gradients(backend, error_log, pool_size, strides, padding, input_shape):
    rng = np.random.default_rng(1)
    size = 2 * int(np.prod(input_shape))
    # distinct values 0.01 apart (no ties, far beyond the finite-difference step)
    x = (rng.permutation(size) * 0.01 - size * 0.005).reshape((2,) + input_shape)
    layer = MaxPooling2D(pool_size, strides=strides, padding=padding, dtype="float64")
    check(layer, input_shape, error_log, backend, x=x)


@pytest.mark.parametrize("activation", [None, "linear", "relu", "sigmoid", "tanh", "softmax"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_gradients(backend, error_log, activation, use_bias):
    layer = Dense(4, activation=activation, use_bias=use_bias, dtype="float64")
    check(layer, (5,), error_log, backend, batch=3)


def test_flatten_gradients(backend, error_log):
    check(Flatten(dtype="float64"), (3, 2, 4), error_log, backend)


@pytest.mark.parametrize("name", ["linear", "relu", "sigmoid", "tanh", "softmax"])
def test_activation_gradients(backend, error_log, name):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 4))
    x[np.abs(x) < KINK] += 2 * KINK
    check(Activation(name, dtype="float64"), (3, 4), error_log, backend, x=x)


def test_relu_layer_gradients(backend, error_log):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 3, 2))
    x[np.abs(x) < KINK] += 2 * KINK
    check(ReLU(dtype="float64"), (4, 3, 2), error_log, backend, x=x)


@pytest.mark.parametrize("training", [True, False])
def test_dropout_gradients(backend, error_log, training):
    layer = Dropout(0.4, seed=7, dtype="float64")
    check(layer, (6, 5), error_log, backend, training=training)


@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_random_flip_gradients(backend, error_log, mode):
    check(RandomFlip(mode, seed=4, dtype="float64"), (4, 5, 2), error_log, backend, batch=4,
          training=True)


@pytest.mark.parametrize("fill_mode", ["constant", "reflect", "nearest"])
def test_random_translation_gradients(backend, error_log, fill_mode):
    layer = RandomTranslation(0.4, (-0.5, 0.3), fill_mode=fill_mode, seed=5, dtype="float64")
    check(layer, (5, 6, 2), error_log, backend, batch=4, training=True)


def test_augmentation_inference_is_identity_with_identity_gradient(backend, error_log):
    for layer in (RandomFlip(seed=1, dtype="float64"),
                  RandomTranslation(0.3, 0.3, seed=1, dtype="float64")):
        check(layer, (4, 4, 1), error_log, backend, training=False)


# ----------------------------------------------------------------------------- losses
def _loss_inputs(sparse_shape=None, soft=False, n=4, k=5, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * 1.5
    labels = rng.integers(0, k, size=n)
    if sparse_shape == "column":
        return logits, labels.reshape(-1, 1)
    if sparse_shape == "flat":
        return logits, labels
    if soft:
        t = rng.random((n, k)) + 0.05
        return logits, t / t.sum(axis=1, keepdims=True)
    return logits, np.eye(k)[labels]


@pytest.mark.parametrize("soft", [False, True])
def test_categorical_crossentropy_gradients(backend, error_log, soft):
    logits, y = _loss_inputs(soft=soft)
    errors = gradcheck.check_loss(losses.CategoricalCrossentropy(), logits, y)
    assert set(errors) == {"fused_logits", "probabilities"}
    for key, err in errors.items():
        error_log.record(f"gradcheck losses ({backend})", err)
        assert err < TOL, f"categorical {key}: {err:.3e}"


@pytest.mark.parametrize("shape", ["flat", "column"])
def test_sparse_categorical_crossentropy_gradients(backend, error_log, shape):
    logits, y = _loss_inputs(sparse_shape=shape)
    errors = gradcheck.check_loss(losses.SparseCategoricalCrossentropy(), logits, y)
    for key, err in errors.items():
        error_log.record(f"gradcheck losses ({backend})", err)
        assert err < TOL, f"sparse {key}: {err:.3e}"


# ----------------------------------------------------------------------------- the checker itself
class _WrongDense(Dense):
    """A Dense layer whose kernel gradient is deliberately off by a factor 2."""

    def backward_preactivation(self, dz):
        dx = super().backward_preactivation(dz)
        self.grads["kernel"] = 2 * self.grads["kernel"]
        return dx


def test_gradcheck_detects_a_wrong_gradient(error_log):
    layer = _WrongDense(3, dtype="float64")
    x = prepared(layer, (4,))
    errors = gradcheck.check_layer(layer, (4,), x=x)
    assert errors["dx"] < TOL and errors["bias"] < TOL
    assert errors["kernel"] > 0.1


def test_gradcheck_leaves_parameters_and_input_unchanged():
    layer = Conv2D(2, 3, padding="same", dtype="float64")
    x = prepared(layer, (4, 4, 1))
    params = {k: v.copy() for k, v in layer.params.items()}
    x_before = x.copy()
    gradcheck.check_layer(layer, (4, 4, 1), x=x)
    np.testing.assert_array_equal(x, x_before)
    for k, v in params.items():
        np.testing.assert_array_equal(layer.params[k], v)


def test_numerical_gradient_of_a_known_function():
    x = np.array([[0.5, -1.0], [2.0, 0.25]])
    g = gradcheck.numerical_gradient(lambda v: np.sum(v ** 3), x)
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)
    assert gradcheck.relative_error(np.zeros(3), np.zeros(3)) == 0.0
