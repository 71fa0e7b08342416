"""Layers of the modern-CNN issue: gradchecks, PyTorch parity, Keras arguments."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as keras
from minicnn import gradcheck, layers, models


@pytest.mark.parametrize("make,shape", [
    (lambda: layers.Rescaling(0.25, offset=-0.5, dtype="float64"), (3, 4, 2)),
    (lambda: layers.ZeroPadding2D(((1, 2), (0, 3)), dtype="float64"), (3, 4, 2)),
    (lambda: layers.ZeroPadding2D(2, dtype="float64"), (3, 4, 2)),
    (lambda: layers.Softmax(dtype="float64"), (3, 5)),
], ids=["rescaling", "zero_padding_asym", "zero_padding_int", "softmax"])
def test_small_layers_gradcheck(make, shape, backend, error_log):
    errors = gradcheck.check_layer(make(), shape, batch_size=2)
    for err in errors.values():
        error_log.record(f"gradcheck new layers ({backend})", err)
        assert err < 1e-8


def test_small_layers_match_torch(error_log):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 2))
    pad = layers.ZeroPadding2D(((1, 2), (0, 3)), dtype="float64")
    y = pad.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = pad.backward(dy)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.pad(xt.permute(0, 3, 1, 2), (0, 3, 1, 2)).permute(0, 2, 3, 1)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_array_equal(dx, xt.grad.numpy())
    sm = layers.Softmax(dtype="float64")
    z = rng.standard_normal((4, 5))
    y = sm.forward(z)
    dy = rng.standard_normal(y.shape)
    dx = sm.backward(dy)
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.softmax(zt, -1)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14)
    err = gradcheck.relative_error(dx, zt.grad.numpy())
    error_log.record("torch parity new layers", err)
    assert err < 1e-13


def test_small_layers_shapes_errors_and_saving(tmp_path):
    x = keras.Input((8, 8, 3))
    assert layers.ZeroPadding2D((1, 2))(x).shape == (None, 10, 12, 3)
    with pytest.raises(ValueError, match="padding"):
        layers.ZeroPadding2D(-1)
    with pytest.raises(ValueError, match="scale"):
        layers.Rescaling("1/255")
    with pytest.raises(ValueError, match="axis"):
        layers.Softmax(axis=1)
    inputs = keras.Input((4, 4, 1))
    h = layers.ZeroPadding2D(1)(layers.Rescaling(0.5)(inputs))
    out = layers.Softmax()(layers.Dense(3)(layers.Flatten()(h)))
    model = keras.Model(inputs, out)
    model.save(tmp_path / "m.npz")
    back = models.load_model(tmp_path / "m.npz")
    xv = np.random.default_rng(1).random((2, 4, 4, 1))
    np.testing.assert_array_equal(back.predict(xv), model.predict(xv))
    # a Softmax layer at the end takes the fused softmax + cross-entropy path
    model.compile("adam", "sparse_categorical_crossentropy")
    assert model.compute_loss(model.call(xv.astype(np.float32)), np.array([0, 1]))[2] is not None


# ----------------------------------------------------------------------------- BatchNormalization
def test_batchnorm_weights_order_and_keras_moving_rule():
    bn = layers.BatchNormalization(momentum=0.9)
    bn.build((4, 4, 3))
    assert list(bn.params) == ["gamma", "beta", "moving_mean", "moving_variance"]
    assert [w.shape for w in bn.get_weights()] == [(3,)] * 4
    assert not bn.is_trainable_weight("moving_mean") and bn.is_trainable_weight("gamma")
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((5, 4, 4, 3)) * 2 + 3).astype(np.float32)
    bn.forward(x, training=True)
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))          # biased
    np.testing.assert_allclose(bn.params["moving_mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(bn.params["moving_variance"], 0.9 + 0.1 * var, rtol=1e-5)
    y = bn.forward(x, training=False)                                  # the moving statistics
    expected = (x - bn.params["moving_mean"]) / np.sqrt(bn.params["moving_variance"] + 1e-3)
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
    no_affine = layers.BatchNormalization(center=False, scale=False)
    no_affine.build((3,))
    assert list(no_affine.params) == ["moving_mean", "moving_variance"]
    with pytest.raises(ValueError, match="axis"):
        layers.BatchNormalization(axis=1).build((4, 4, 3))


@pytest.mark.parametrize("shape", [(3, 3, 2), (4,)], ids=["nhwc", "dense"])
@pytest.mark.parametrize("training", [True, False], ids=["training", "inference"])
def test_batchnorm_gradcheck(shape, training, backend, error_log):
    bn = layers.BatchNormalization(dtype="float64")
    bn.build(shape)
    rng = np.random.default_rng(3)
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, shape[-1])
    bn.params["beta"][...] = rng.standard_normal(shape[-1])
    bn.params["moving_variance"][...] = rng.uniform(0.5, 2, shape[-1])
    errors = gradcheck.check_layer(bn, shape, batch_size=4, training=training)
    for name in ("dx", "gamma", "beta"):
        error_log.record(f"gradcheck BatchNormalization ({backend})", errors[name])
        assert errors[name] < 1e-7, (name, errors[name])


def test_batchnorm_after_a_dense_layer_gradcheck(error_log):
    """The layer behind a layer with weights, checked as part of a graph."""
    inputs = keras.Input((5,), dtype="float64")
    h = layers.Dense(4, dtype="float64")(inputs)
    out = layers.Dense(3, dtype="float64")(layers.BatchNormalization(dtype="float64")(h))
    model = keras.Model(inputs, out)
    model.compute_input_gradient = True
    errors = gradcheck.check_layer(model, (5,), batch_size=6, training=True)
    first = model.layers[1]
    # BN subtracts the batch mean: a bias right before it has exactly zero gradient (why
    # convolutions before BatchNormalization are bias-free); its relative error is noise
    assert np.abs(first.grads["bias"]).max() < 1e-12
    for name, err in errors.items():
        if name != f"{first.name}/bias":
            error_log.record("gradcheck BatchNormalization in a graph", err)
            assert err < 1e-7, (name, err)


def test_batchnorm_matches_torch(backend, error_log):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5, 2)) * 3 + 1
    dy = rng.standard_normal(x.shape)
    bn = layers.BatchNormalization(momentum=0.9, epsilon=1e-3, dtype="float64")
    bn.build(x.shape[1:])
    gamma, beta = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    bn.params["gamma"][...], bn.params["beta"][...] = gamma, beta
    y = bn.forward(x, training=True)
    dx = bn.backward(dy)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    yt = torch.nn.functional.batch_norm(xt, rm, rv, gt, bt, training=True, momentum=0.1,
                                        eps=1e-3)
    yt.backward(torch.tensor(dy.transpose(0, 3, 1, 2).copy()))
    np.testing.assert_allclose(y, yt.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12,
                               atol=1e-12)
    for mine, theirs in ((dx, xt.grad.numpy().transpose(0, 2, 3, 1)),
                         (bn.grads["gamma"], gt.grad.numpy()), (bn.grads["beta"], bt.grad.numpy())):
        err = gradcheck.relative_error(mine, theirs)
        error_log.record("torch parity BatchNormalization", err)
        assert err < 1e-12
    # torch's running mean follows the same rule (its momentum is 1 - Keras's)
    np.testing.assert_allclose(bn.params["moving_mean"], rm.numpy(), rtol=1e-12)


def test_batchnorm_moving_statistics_are_saved_and_not_trained(tmp_path):
    inputs = keras.Input((4, 4, 2))
    x = layers.BatchNormalization()(layers.Conv2D(3, 3, padding="same", use_bias=False)(inputs))
    model = keras.Model(inputs, layers.Dense(2, activation="softmax")(
        layers.GlobalAveragePooling2D()(layers.ReLU()(x))))
    model.compile(keras.optimizers.AdamW(0.01), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    xv, yv = rng.random((8, 4, 4, 2)), rng.integers(0, 2, 8)
    bn = next(l for l in model.layers if isinstance(l, layers.BatchNormalization))
    z = model.layers[1].forward(xv.astype(np.float32))          # what BN sees in the step
    model.train_on_batch(xv, yv)
    paths = [p for p, _, _ in model.trainable_slots()]
    assert not any("moving" in p for p in paths)
    # the moving statistics moved by the Keras rule only (AdamW's decay never touched them)
    np.testing.assert_allclose(bn.params["moving_mean"], 0.01 * z.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    model.save(tmp_path / "bn.npz")
    back = models.load_model(tmp_path / "bn.npz")
    np.testing.assert_array_equal(back.get_layer(bn.name).params["moving_variance"],
                                  bn.params["moving_variance"])
    np.testing.assert_array_equal(back.predict(xv), model.predict(xv))
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 6" in lines


# ----------------------------------------------------------------------------- pooling layers
@pytest.mark.parametrize("make,shape", [
    (lambda: layers.AveragePooling2D(2, dtype="float64"), (4, 6, 2)),
    (lambda: layers.AveragePooling2D(3, strides=2, padding="same", dtype="float64"), (5, 6, 2)),
    (lambda: layers.AveragePooling2D(3, strides=1, padding="same", dtype="float64"), (4, 4, 1)),
    (lambda: layers.MaxPooling2D(3, strides=1, padding="same", dtype="float64"), (4, 5, 2)),
    (lambda: layers.MaxPooling2D(3, strides=2, dtype="float64"), (7, 7, 2)),
    (lambda: layers.GlobalAveragePooling2D(dtype="float64"), (3, 4, 2)),
    (lambda: layers.GlobalAveragePooling2D(keepdims=True, dtype="float64"), (3, 4, 2)),
    (lambda: layers.GlobalMaxPooling2D(dtype="float64"), (3, 4, 2)),
    (lambda: layers.LeakyReLU(dtype="float64"), (3, 4)),
], ids=["avg2", "avg3s2same", "avg3s1same", "max3s1same", "max3s2", "gap", "gap_keepdims",
        "gmp", "leaky_relu"])
def test_pooling_layers_gradcheck(make, shape, backend, error_log):
    errors = gradcheck.check_layer(make(), shape, batch_size=2)
    for err in errors.values():
        error_log.record(f"gradcheck new layers ({backend})", err)
        assert err < 1e-7


def test_pooling_layers_shapes_and_keras_defaults():
    x = keras.Input((8, 8, 3))
    assert layers.AveragePooling2D()(x).shape == (None, 4, 4, 3)
    assert layers.AveragePooling2D(3, strides=2, padding="same")(x).shape == (None, 4, 4, 3)
    assert layers.GlobalAveragePooling2D()(x).shape == (None, 3)
    assert layers.GlobalMaxPooling2D(keepdims=True)(x).shape == (None, 1, 1, 3)
    assert layers.LeakyReLU().negative_slope == 0.3
    same = layers.AveragePooling2D(2, strides=1, padding="same", dtype="float64")
    y = same.forward(np.arange(4.0).reshape(1, 2, 2, 1))
    # TF's 'same': the last row and column average only the pixels inside the image
    np.testing.assert_allclose(y[0, :, :, 0], [[1.5, 2.0], [2.5, 3.0]])
