"""The custom-layer contract: subclass Layer, build/add_weight, call, backward, get_config."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn as keras
from minicnn import gradcheck, layers, models, saving
from minicnn.utils import set_random_seed, to_categorical


class Scale(layers.Layer):
    """``y = x * w + b``, one weight pair per channel: the README's example layer."""

    def __init__(self, offset=True, **kwargs):
        super().__init__(**kwargs)
        self.offset = offset

    def build(self, input_shape):
        self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="glorot_uniform")
        if self.offset:
            self.b = self.add_weight(name="b", shape=(input_shape[-1],), initializer="zeros")

    def call(self, x, training=False):
        self.x = x
        return x * self.w + (self.b if self.offset else 0)

    def backward(self, dy):
        axes = tuple(range(dy.ndim - 1))
        self.grads["w"] = np.sum(dy * self.x, axis=axes)
        if self.offset:
            self.grads["b"] = np.sum(dy, axis=axes)
        return dy * self.w

    def get_config(self):
        cfg = super().get_config()
        cfg["offset"] = self.offset
        return cfg


class Square(layers.Layer):
    """No weights, no compute_output_shape, no training argument: ``y = x**2``."""

    def call(self, x):
        self.x = x
        return x * x

    def backward(self, dy):
        return 2 * self.x * dy


@saving.register_keras_serializable(package="tests")
class Doubler(layers.Layer):
    def call(self, x, training=False):
        return 2 * x

    def backward(self, dy):
        return 2 * dy


def test_custom_layer_passes_gradcheck(error_log):
    set_random_seed(0)
    errors = gradcheck.check_layer(Scale(dtype="float64"), (4, 4, 3))
    assert set(errors) == {"dx", "w", "b"}
    for err in errors.values():
        error_log.record("gradcheck custom layer", err)
        assert err < 1e-8


def test_output_shape_is_inferred_from_call_and_training_argument_is_optional():
    sq = Square()
    y = sq(keras.Input(shape=(5, 2)))
    assert sq.output_shape == (5, 2) and y.shape == (None, 5, 2)
    out = sq.forward(np.full((3, 5, 2), 3.0), training=True)
    np.testing.assert_array_equal(out, 9.0)
    np.testing.assert_array_equal(sq.backward(np.ones((3, 5, 2))), 6.0)


def test_base_class_checks_a_custom_layers_passes():
    layer = Scale()
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3)))
    layer.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"expected dy of shape \(2, 3\)"):
        layer.backward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        layer.forward(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="already has a weight"):
        layer.add_weight(name="w", shape=(3,))


def test_non_trainable_weights_are_saved_but_never_updated():
    class Counter(Scale):
        def build(self, input_shape):
            super().build(input_shape)
            self.seen = self.add_weight(name="seen", shape=(), initializer="zeros",
                                        trainable=False)

        def call(self, x, training=False):
            if training:
                self.seen[...] += len(x)
            return super().call(x, training)

        def backward(self, dy):
            self.grads["seen"] = np.ones_like(self.seen)     # even a gradient is ignored
            return super().backward(dy)

    model = keras.Sequential([keras.Input((3,)), Counter(), layers.Dense(2, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    layer = model.layers[0]
    assert [k for k in layer.params] == ["w", "b", "seen"]
    assert not layer.is_trainable_weight("seen") and layer.is_trainable_weight("w")
    model.train_on_batch(np.ones((4, 3)), to_categorical([0, 1, 0, 1], 2))
    assert float(layer.seen) == 4.0                          # only the layer changed it
    lines = []
    model.summary(print_fn=lines.append)
    assert "Non-trainable params: 1" in lines


def test_custom_layer_trains_saves_and_loads_with_custom_objects(tmp_path):
    set_random_seed(1)
    model = keras.Sequential([keras.Input((6,)), Scale(offset=False, name="scale"), Square(),
                              layers.Dense(3, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 6))
    y = to_categorical((x[:, 0] > 0).astype(int) + (x[:, 1] > 0), 3)
    w_before = model.get_layer("scale").params["w"].copy()
    history = model.fit(x, y, epochs=20, batch_size=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.array_equal(w_before, model.get_layer("scale").params["w"])
    path = tmp_path / "custom.npz"
    model.save(path)
    with pytest.raises(ValueError, match="unknown layer class 'Scale'.*custom_objects"):
        models.load_model(path)
    back = models.load_model(path, custom_objects={"Scale": Scale, "Square": Square})
    assert back.get_layer("scale").offset is False
    np.testing.assert_array_equal(back.predict(x), model.predict(x))


def test_registered_layer_loads_without_custom_objects(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, layers.Dense(2)(Doubler()(inputs)))
    model.save(tmp_path / "d.npz")
    back = models.load_model(tmp_path / "d.npz")
    x = np.random.default_rng(0).standard_normal((3, 4))
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    assert type(back.layers[1]) is Doubler


def test_a_file_never_makes_the_loader_import_or_call_what_it_names(tmp_path):
    import json
    model = keras.Sequential([keras.Input((4,)), layers.Dense(2)])
    model.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as f:
        meta = json.loads(f["__minicnn__.json"].tobytes())
        arrays = {k: f[k] for k in f.files if k != "__minicnn__.json"}
    marker = tmp_path / "ran"
    meta["model"]["layers"][0] = {"class_name": "os.system",
                                  "config": {"command": f"touch {marker}"}}
    np.savez(tmp_path / "evil.npz",
             **{"__minicnn__.json": np.frombuffer(json.dumps(meta).encode(), np.uint8)}, **arrays)
    with pytest.raises(ValueError, match="unknown layer class 'os.system'"):
        models.load_model(tmp_path / "evil.npz")
    assert not marker.exists()
