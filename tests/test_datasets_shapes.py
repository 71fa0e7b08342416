"""The generated shapes dataset: format, determinism, balance, speed, and not linearly easy."""
from __future__ import annotations

import time

import numpy as np
import pytest

from minicnn.datasets import shapes


@pytest.fixture(scope="module")
def small():
    return shapes.load_data(n_train=3000, n_test=1000, seed=0)


def test_format_like_cifar10(small):
    (x_train, y_train), (x_test, y_test) = small
    assert x_train.shape == (3000, 32, 32, 3) and x_train.dtype == np.uint8
    assert y_train.shape == (3000, 1) and y_train.dtype == np.uint8
    assert x_test.shape == (1000, 32, 32, 3) and y_test.shape == (1000, 1)
    assert x_train.flags.c_contiguous
    assert set(np.unique(y_train)) == set(range(10))


def test_class_names():
    assert len(shapes.CLASS_NAMES) == 10 and len(set(shapes.CLASS_NAMES)) == 10
    assert {"circle", "square", "triangle", "cross", "ring", "stripes"} <= set(shapes.CLASS_NAMES)


@pytest.mark.parametrize("n", [0, 1, 9, 10, 1234])
def test_classes_are_balanced(n):
    (_, y), _ = shapes.load_data(n_train=n, n_test=0)
    counts = np.bincount(y[:, 0], minlength=10)
    assert counts.sum() == n and counts.max() - counts.min() <= 1


def test_deterministic_for_a_seed():
    (a, ya), (ta, tya) = shapes.load_data(n_train=200, n_test=50, seed=3)
    (b, yb), (tb, tyb) = shapes.load_data(n_train=200, n_test=50, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(ya, yb)
    np.testing.assert_array_equal(ta, tb)
    (c, _), _ = shapes.load_data(n_train=200, n_test=50, seed=4)
    assert not np.array_equal(a, c)


def test_test_set_does_not_depend_on_n_train():
    _, (t1, y1) = shapes.load_data(n_train=10, n_test=40, seed=1)
    _, (t2, y2) = shapes.load_data(n_train=500, n_test=40, seed=1)
    np.testing.assert_array_equal(t1, t2)
    np.testing.assert_array_equal(y1, y2)


def test_train_and_test_differ(small):
    (x_train, _), (x_test, _) = small
    train_set = {img.tobytes() for img in x_train}
    assert not any(img.tobytes() in train_set for img in x_test)


def test_images_vary(small):
    (x, y), _ = small
    x = x.astype(np.float32)
    # Backgrounds of different colours, shapes of different sizes and places: images differ a lot.
    assert x.reshape(len(x), -1, 3).mean(axis=1).std(axis=0).min() > 30
    assert x.std(axis=(1, 2, 3)).min() > 5  # every image has visible content (shape + noise)
    # Noise: neighbouring background pixels are not all equal.
    assert np.mean(x[:, 0, 0] != x[:, 0, 1]) > 0.5


def test_generation_is_fast():
    start = time.perf_counter()
    shapes.load_data(n_train=10000, n_test=2000, seed=5)
    assert time.perf_counter() - start < 8.0  # about 1 s on the reference machine; loose for CI


def _fit_softmax(x, y, epochs=25, lr=0.5):
    """Multinomial logistic regression on standardised raw pixels, by full-batch gradient descent.

    Returns a function mapping images to predicted classes.
    """
    a = x.reshape(len(x), -1).astype(np.float32)
    mean, std = a.mean(axis=0), a.std(axis=0) + 1e-3
    a = (a - mean) / std
    onehot = np.eye(10, dtype=np.float32)[y[:, 0]]
    w = np.zeros((a.shape[1], 10), np.float32)
    b = np.zeros(10, np.float32)
    step = np.float32(lr / np.sqrt(a.shape[1]))
    for _ in range(epochs):
        z = a @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / np.float32(len(a))
        w -= step * (a.T @ g)
        b -= np.float32(lr) * g.sum(axis=0)

    def predict(images):
        t = (images.reshape(len(images), -1).astype(np.float32) - mean) / std
        return (t @ w + b).argmax(axis=1)

    return predict


def test_a_linear_model_does_clearly_worse_than_a_cnn(small):
    # The seed CNN reaches > 90% in a few epochs; a linear model on raw pixels stays far below,
    # since each shape appears at any place, size and colour.
    (x_train, y_train), (x_test, y_test) = small
    predict = _fit_softmax(x_train, y_train)
    train_accuracy = float(np.mean(predict(x_train) == y_train[:, 0]))
    test_accuracy = float(np.mean(predict(x_test) == y_test[:, 0]))
    assert test_accuracy < 0.5, test_accuracy
    assert train_accuracy > 0.2, train_accuracy  # the model did fit something: not a broken test


def test_argument_checks():
    with pytest.raises(ValueError, match="shapes.load_data: n_train must be >= 0, received -1"):
        shapes.load_data(n_train=-1)
    with pytest.raises(TypeError, match="n_test must be an integer, received 2.5"):
        shapes.load_data(n_test=2.5)
    with pytest.raises(TypeError, match="seed must be an integer"):
        shapes.load_data(seed="zero")
    with pytest.raises(ValueError, match="seed must be >= 0"):
        shapes.load_data(seed=-3)
    (x, y), (xt, yt) = shapes.load_data(n_train=np.int64(3), n_test=0, seed=np.int32(2))
    assert x.shape == (3, 32, 32, 3) and xt.shape == (0, 32, 32, 3) and yt.shape == (0, 1)
