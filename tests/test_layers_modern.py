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
