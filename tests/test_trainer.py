"""The trainer: train_step, sample_weight/class_weight, validation_freq, return_dict, and the
keras.io "Simple MNIST convnet" program run with its import changed."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as keras
from minicnn import callbacks, layers, losses, optimizers
from minicnn.utils import set_random_seed, to_categorical


def dense_model(seed=0, k=3):
    set_random_seed(seed)
    model = keras.Sequential([keras.Input((5,), dtype="float64"),
                              layers.Dense(k, activation="softmax", dtype="float64")])
    model.compile(optimizers.SGD(0.1), "sparse_categorical_crossentropy", ["accuracy"])
    return model


def data(n=12, k=3, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 5)), rng.integers(0, k, n)


def hand_loss(model, x, labels, w):
    p = model.predict(x)
    return float(np.sum(-np.log(p[np.arange(len(x)), labels]) * w) / len(x))


def test_sample_weight_against_a_hand_computed_weighted_loss():
    model = dense_model()
    x, labels = data()
    w = np.random.default_rng(2).random(len(x)) * 3
    expected = hand_loss(model, x, labels, w)
    p = model.predict(x)
    hit = (np.argmax(p, axis=1) == labels)
    loss, acc = model.evaluate(x, labels, sample_weight=w, batch_size=5, verbose=0)
    assert loss == pytest.approx(expected, rel=1e-12)
    assert acc == pytest.approx(np.dot(hit, w) / w.sum(), rel=1e-12)
    out = model.evaluate(x, labels, sample_weight=w, batch_size=64, verbose=0, return_dict=True)
    assert out == pytest.approx({"loss": expected, "accuracy": np.dot(hit, w) / w.sum()})
    # one SGD step: the weighted loss's gradient (dW = x.T @ (w * (p - y)) / n)
    k0 = model.layers[0].params["kernel"].copy()
    step_loss = model.train_on_batch(x, labels, sample_weight=w)[0]
    assert step_loss == pytest.approx(expected, rel=1e-12)
    dz = (p - np.eye(3)[labels]) * w[:, None] / len(x)
    np.testing.assert_allclose(model.layers[0].params["kernel"], k0 - 0.1 * x.T @ dz, rtol=1e-12)


def test_class_weight_is_the_weight_of_each_examples_class():
    x, labels = data(n=16)
    cw = {0: 0.5, 1: 2.0, 2: 1.0}
    a, b = dense_model(seed=3), dense_model(seed=3)
    ha = a.fit(x, labels, batch_size=4, epochs=2, class_weight=cw, shuffle=False, verbose=0)
    hb = b.fit(x, labels, batch_size=4, epochs=2, shuffle=False, verbose=0,
               sample_weight=np.array([cw[int(c)] for c in labels]))
    assert ha.history["loss"] == pytest.approx(hb.history["loss"], rel=1e-12)
    np.testing.assert_array_equal(a.get_weights()[0], b.get_weights()[0])
    plain = dense_model(seed=3)
    plain.fit(x, labels, batch_size=4, epochs=2, shuffle=False, verbose=0)
    assert not np.allclose(plain.get_weights()[0], a.get_weights()[0])
    with pytest.raises(ValueError, match="class_weight and sample_weight"):
        a.fit(x, labels, class_weight=cw, sample_weight=np.ones(16), verbose=0)
    with pytest.raises(ValueError, match="class indices"):
        a.fit(x, labels, class_weight={7: 1.0}, verbose=0)
    onehot = dense_model(seed=3)
    onehot.compile(optimizers.SGD(0.1), "categorical_crossentropy")
    hc = onehot.fit(x, to_categorical(labels, 3), batch_size=4, epochs=2, class_weight=cw,
                    shuffle=False, verbose=0)
    assert hc.history["loss"] == pytest.approx(ha.history["loss"], rel=1e-12)


def test_bad_sample_weight_is_named():
    model = dense_model()
    x, labels = data()
    with pytest.raises(ValueError, match=r"sample_weight.*\(12,\).*\(5,\)"):
        model.fit(x, labels, sample_weight=np.ones(5), verbose=0)
    with pytest.raises(ValueError, match="sample_weight.*>= 0"):
        model.evaluate(x, labels, sample_weight=-np.ones(12), verbose=0)


@pytest.mark.parametrize("freq,validated", [(2, [2, 4]), ([1, 3], [1, 3]), (1, [1, 2, 3, 4])])
def test_validation_freq(freq, validated):
    class Epochs(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if "val_loss" in logs:
                self.seen.append(epoch + 1)
    rec = Epochs()
    rec.seen = []
    model = dense_model()
    x, labels = data(n=20)
    h = model.fit(x, labels, epochs=4, validation_split=0.25, validation_freq=freq,
                  callbacks=[rec], verbose=0)
    assert rec.seen == validated
    assert len(h.history["val_loss"]) == len(validated) and len(h.history["loss"]) == 4
    with pytest.raises(ValueError, match="validation_freq"):
        model.fit(x, labels, validation_split=0.25, validation_freq=0, verbose=0)


def test_train_step_is_what_fit_and_train_on_batch_run(monkeypatch):
    model = dense_model()
    x, labels = data(n=8)
    calls = []
    step = model.train_step

    def spy(xb, yb, sample_weight=None):
        calls.append(len(xb))
        return step(xb, yb, sample_weight)
    monkeypatch.setattr(model, "train_step", spy)
    model.fit(x, labels, batch_size=3, epochs=1, verbose=0)
    model.train_on_batch(x, labels)
    assert calls == [3, 3, 2, 8]
    logs = step(x, labels)
    assert set(logs) == {"loss", "accuracy"}
    assert model.train_on_batch(x, labels, return_dict=True).keys() == {"loss", "accuracy"}


def test_predict_on_batch_and_test_on_batch():
    model = dense_model()
    x, labels = data()
    np.testing.assert_allclose(model.predict_on_batch(x), model.predict(x), rtol=1e-14)
    loss, acc = model.test_on_batch(x, labels)
    assert (loss, acc) == pytest.approx(tuple(model.evaluate(x, labels, verbose=0)))


def test_keras_io_simple_mnist_convnet_runs_with_its_import_changed(monkeypatch, capsys):
    """https://keras.io/examples/vision/mnist_convnet/, its import line changed and the data
    replaced by a small generated set (no download here); every other line as published."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 600)
    images = (rng.random((600, 28, 28)) * 60).astype(np.uint8)
    for i, c in enumerate(labels):                 # a learnable bright bar per class
        images[i, 2 + 2 * c:4 + 2 * c, 4:24] = 255
    monkeypatch.setattr(keras.datasets.mnist, "load_data",
                        lambda *a, **k: ((images[:500], labels[:500]),
                                         (images[500:], labels[500:])))
    source = '''
import numpy as np
import minicnn as keras
from minicnn import layers

num_classes = 10
input_shape = (28, 28, 1)
(x_train, y_train), (x_test, y_test) = keras.datasets.mnist.load_data()
x_train = x_train.astype("float32") / 255
x_test = x_test.astype("float32") / 255
x_train = np.expand_dims(x_train, -1)
x_test = np.expand_dims(x_test, -1)
print("x_train shape:", x_train.shape)
y_train = keras.utils.to_categorical(y_train, num_classes)
y_test = keras.utils.to_categorical(y_test, num_classes)
model = keras.Sequential(
    [
        keras.Input(shape=input_shape),
        layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Conv2D(64, kernel_size=(3, 3), activation="relu"),
        layers.MaxPooling2D(pool_size=(2, 2)),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ]
)
model.summary()
batch_size = 128
epochs = 15
model.compile(loss="categorical_crossentropy", optimizer="adam", metrics=["accuracy"])
model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_split=0.1)
score = model.evaluate(x_test, y_test, verbose=0)
print("Test loss:", score[0])
print("Test accuracy:", score[1])
'''
    namespace = {}
    exec(compile(source, "mnist_convnet.py", "exec"), namespace)
    out = capsys.readouterr().out
    assert "Total params: 34,826" in out                 # Keras's own summary says 34,826
    assert namespace["score"][1] > 0.9
