"""Sequential: structure, compile, fit / evaluate / predict, the learner API, save / load
and every bad input the Keras-style API must reject with a clear ValueError.

Models here are tiny (a Conv2D(4, 3) on 8x8x3 images) so the whole file runs in seconds;
the seed model itself is exercised in test_seed_program.py.
"""
from __future__ import annotations

import io
import math
import pickle
import sys
import tracemalloc

import numpy as np
import pytest

from minicnn import callbacks, layers, losses, models, optimizers
from minicnn.callbacks import NonFiniteLossError
from minicnn.utils import set_random_seed, to_categorical

SHAPE = (8, 8, 3)
CLASSES = 5


def tiny_model(seed=0, extra=(), dtype="float32", input_shape=SHAPE):
    """Conv2D(4, 3, relu, same) -> MaxPool(2) -> Flatten -> Dense(5, softmax): 585 params."""
    set_random_seed(seed)
    return models.Sequential([
        *extra,
        layers.Conv2D(4, 3, activation="relu", padding="same", dtype=dtype,
                      input_shape=None if extra else input_shape),
        layers.MaxPooling2D(2, dtype=dtype),
        layers.Flatten(dtype=dtype),
        layers.Dense(CLASSES, activation="softmax", dtype=dtype)])


def compiled(model=None, optimizer="adam", loss="categorical_crossentropy", metrics=("accuracy",),
             **kwargs):
    model = tiny_model(**kwargs) if model is None else model
    model.compile(optimizer=optimizer, loss=loss, metrics=list(metrics) if metrics else None)
    return model


def data(n=40, seed=1, sparse=False):
    """float64 images in [0, 1] (as the seed's x / 255.0) and labels that depend on them."""
    rng = np.random.default_rng(seed)
    x = rng.random((n,) + SHAPE)
    labels = (x[:, :4, :4, 0].mean(axis=(1, 2)) * CLASSES * 1.999).astype(int) % CLASSES
    y = labels if sparse else to_categorical(labels, CLASSES)
    return x, y


def weights_equal(a, b):
    return len(a) == len(b) and all(np.array_equal(u, v) for u, v in zip(a, b))


# ----------------------------------------------------------------------------- structure
def test_build_from_first_layer_input_shape_and_count_params():
    model = tiny_model()
    assert model.built and model.input_shape == SHAPE
    assert model.output_shape == (CLASSES,)
    # conv 3*3*3*4 + 4, dense 4*4*4*5 + 5
    assert model.count_params() == 112 + 325
    assert [type(l).__name__ for l in model.layers] == ["Conv2D", "MaxPooling2D", "Flatten",
                                                         "Dense"]
    model.layers.append("not a layer")             # a copy: the model is untouched
    assert len(model.layers) == 4


def test_build_from_first_data_seen_and_explicit_build():
    model = models.Sequential()
    model.add(layers.Conv2D(2, 3))
    model.add(layers.Flatten())
    model.add(layers.Dense(3, activation="softmax"))
    assert not model.built
    out = model.predict(np.zeros((2, 6, 6, 1)))
    assert model.built and model.input_shape == (6, 6, 1) and out.shape == (2, 3)
    other = models.Sequential([layers.Flatten(), layers.Dense(2)])
    other.build((None, 4, 4, 1))                  # Keras's form with the batch dimension
    assert other.input_shape == (4, 4, 1) and other.count_params() == 16 * 2 + 2


def test_add_rejects_a_layer_that_does_not_fit_and_leaves_the_model_intact():
    model = tiny_model()
    n = len(model.layers)
    with pytest.raises(ValueError, match="Dense"):
        models.Sequential([layers.Conv2D(2, 3, input_shape=SHAPE), layers.Dense(3)])
    with pytest.raises(ValueError, match="layer"):
        model.add("dense")
    with pytest.raises(ValueError, match="already"):
        model.add(layers.Flatten(name=model.layers[2].name))
    assert len(model.layers) == n
    with pytest.raises(ValueError, match="no layers"):
        models.Sequential().build(SHAPE)


def test_get_and_set_weights_round_trip_in_keras_order():
    model = tiny_model(seed=0)
    w = model.get_weights()
    assert [a.shape for a in w] == [(3, 3, 3, 4), (4,), (64, 5), (5,)]
    w[0][...] = 7                                   # copies: the model is untouched
    assert not np.any(model.get_weights()[0] == 7)
    other = tiny_model(seed=5)
    other.set_weights(model.get_weights())
    assert weights_equal(other.get_weights(), model.get_weights())
    with pytest.raises(ValueError, match="4 weight arrays, received 3"):
        other.set_weights(w[:3])
    with pytest.raises(ValueError, match=r"\(64, 5\).*\(5, 64\)"):
        other.set_weights(w[:2] + [w[2].T, w[3]])


def test_summary_table_and_totals():
    lines = []
    model = tiny_model()
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    for needle in ("Layer (type)", "Output Shape", "Param #", "(Conv2D)", "(None, 8, 8, 4)",
                   "(None, 4, 4, 4)", "(None, 64)", "(None, 5)", "112", "325",
                   "Total params: 437", "Trainable params: 437", "Non-trainable params: 0"):
        assert needle in text, needle
    row = next(l for l in lines if l.startswith(model.layers[0].name + " "))
    assert row.split()[-1] == "112"
    with pytest.raises(ValueError, match="not built"):
        models.Sequential([layers.Dense(2)]).summary()


# ----------------------------------------------------------------------------- compile
@pytest.mark.parametrize("optimizer,loss,sparse", [
    ("adam", "categorical_crossentropy", False),
    ("sgd", "sparse_categorical_crossentropy", True),
    (optimizers.SGD(0.05, momentum=0.9), losses.CategoricalCrossentropy(), False),
    (optimizers.Adam(2e-3), losses.SparseCategoricalCrossentropy(), True),
])
def test_compile_accepts_names_and_objects(optimizer, loss, sparse):
    model = compiled(optimizer=optimizer, loss=loss)
    x, y = data(sparse=sparse)
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}
    assert all(math.isfinite(v) for v in history.history["loss"])
    if not isinstance(optimizer, str):
        assert model.optimizer is optimizer


def test_metric_is_logged_under_the_name_given():
    model = compiled(metrics=["acc"])
    x, y = data()
    history = model.fit(x, y, epochs=1, batch_size=8, validation_split=0.25, verbose=0)
    assert set(history.history) == {"loss", "acc", "val_loss", "val_acc"}
    model.compile("adam", "categorical_crossentropy", metrics="accuracy")   # a bare string
    assert model.metrics == ["accuracy"]


# ----------------------------------------------------------------------------- fit
def test_fit_returns_history_with_keras_keys_and_epochs():
    model = compiled()
    x, y = data()
    history = model.fit(x, y, batch_size=8, epochs=3, validation_split=0.2, verbose=0)
    assert isinstance(history, callbacks.History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 3 for v in history.history.values())
    assert history.epoch == [0, 1, 2]
    assert all(isinstance(v, float) for v in history.history["val_accuracy"])
    assert model.history is history
    history = model.fit(x, y, batch_size=8, epochs=5, initial_epoch=3, verbose=0)
    assert history.epoch == [3, 4] and set(history.history) == {"loss", "accuracy"}
    assert model.fit(x, y, epochs=0, verbose=0).epoch == []


def _record_batches(model):
    """Wrap the model's batch runner; return the list of (rows, training) it receives."""
    seen = []
    run = model.call

    def recording(x, training=False):
        seen.append((np.array(x), training))
        return run(x, training=training)
    model.call = recording
    return seen


def _rows_of(batch, pool):
    """Index in ``pool`` of every image of ``batch`` (images are unique random arrays)."""
    flat = pool.reshape(len(pool), -1)
    return [int(np.flatnonzero((flat == img.reshape(-1)).all(axis=1))[0]) for img in batch]


def test_validation_split_holds_out_the_last_fraction_before_shuffling():
    model = compiled()
    x, y = data(n=40)
    seen = _record_batches(model)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, shuffle=True,
                        verbose=0)
    x32 = x.astype(np.float32)
    train_rows = [r for b, t in seen if t for r in _rows_of(b, x32)]
    val_rows = [r for b, t in seen if not t for r in _rows_of(b, x32)]
    # floor(40 * 0.75) = 30 train: rows 0..29, each once per epoch, shuffled
    assert sorted(train_rows) == sorted(list(range(30)) * 2)
    assert train_rows[:30] != list(range(30))
    assert val_rows == list(range(30, 40)) * 2
    # val_* are the final weights' loss/accuracy on the last 10 rows, in inference mode
    val_loss, val_acc = model.evaluate(x[30:], y[30:], verbose=0)
    assert history.history["val_loss"][-1] == pytest.approx(val_loss, rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(val_acc)


def test_validation_data_overrides_split_and_shuffle_false_keeps_order():
    model = compiled()
    x, y = data(n=20)
    xv, yv = data(n=6, seed=9)
    seen = _record_batches(model)
    model.fit(x, y, batch_size=8, epochs=1, validation_split=0.5, validation_data=(xv, yv),
              shuffle=False, verbose=0)
    train = [b for b, t in seen if t]
    assert [len(b) for b in train] == [8, 8, 4]
    np.testing.assert_array_equal(np.concatenate(train), x.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([b for b, t in seen if not t]),
                                  xv.astype(np.float32))


def test_training_metrics_are_running_averages_over_the_epoch():
    class Batches(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.logs = []

        def on_train_batch_end(self, batch, logs=None):
            self.logs.append(dict(logs))
    model = compiled()
    x, y = data(n=20)
    rec = Batches()
    history = model.fit(x, y, batch_size=8, epochs=2, callbacks=[rec], verbose=0)
    sizes = np.array([8, 8, 4])
    batch_losses = np.array([b["batch_loss"] for b in rec.logs])
    expected = np.cumsum(batch_losses * sizes) / np.cumsum(sizes)
    np.testing.assert_allclose([b["loss"] for b in rec.logs], expected, rtol=1e-12)
    assert history.history["loss"][-1] == pytest.approx(expected[-1], rel=1e-12)
    # accuracy: correct-so-far / seen-so-far, so multiples of 1/8, 1/16, 1/20
    accs = [b["accuracy"] for b in rec.logs]
    assert [round(a * s) for a, s in zip(accs, np.cumsum(sizes))] == \
        pytest.approx([a * s for a, s in zip(accs, np.cumsum(sizes))])
    assert history.history["accuracy"][-1] == accs[-1]


def test_fit_actually_learns():
    model = compiled(optimizer=optimizers.Adam(1e-2))
    x, y = data(n=64)
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]


def test_fit_casts_float64_batch_by_batch_never_the_whole_dataset():
    model = compiled()
    x, y = data(n=1200)                     # 1.8 MB of float64; a float32 copy is 0.9 MB
    seen = []
    run = model.call

    def recording(xb, training=False):
        seen.append((len(xb), xb.dtype))
        return run(xb, training=training)
    model.call = recording
    model.fit(x[:64], y[:64], batch_size=32, epochs=1, verbose=0)      # compile kernels first
    seen.clear()
    tracemalloc.start()
    try:
        model.fit(x, y, batch_size=32, epochs=1, validation_split=0.25, verbose=0)
        model.evaluate(x, y, batch_size=32, verbose=0)
        model.predict(x, batch_size=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert max(n for n, _ in seen) == 32
    assert {dt for _, dt in seen} == {np.dtype(np.float32)}
    # predict's (1200, 5) float32 output is 24 KB; everything else is per batch
    assert peak < x.nbytes / 8, f"peak {peak} bytes for x of {x.nbytes} bytes"


# ----------------------------------------------------------------------------- progress output
def test_verbose_2_prints_one_line_per_epoch(capsys):
    model = compiled()
    x, y = data(n=20)
    model.fit(x, y, batch_size=8, epochs=3, validation_split=0.2, verbose=2)
    out = capsys.readouterr().out
    lines = out.splitlines()
    epoch_lines = [l for l in lines if "ms/step" in l]
    assert len(epoch_lines) == 3 and len(lines) == 6         # "Epoch k/3" + the line
    assert [l for l in lines if l.startswith("Epoch")] == ["Epoch 1/3", "Epoch 2/3", "Epoch 3/3"]
    for line in epoch_lines:
        assert line.startswith("2/2 - ")
        for key in ("s - ", "ms/step", "loss: ", "accuracy: ", "val_loss: ", "val_accuracy: "):
            assert key in line, key
    assert "\r" not in out


def test_verbose_1_without_a_terminal_does_not_spam(capsys):
    model = compiled()
    x, y = data(n=80)
    model.fit(x, y, batch_size=4, epochs=2, verbose=1)        # 20 steps per epoch
    out = capsys.readouterr().out
    assert "\r" not in out and "\b" not in out
    assert len(out.splitlines()) <= 4
    assert out.count("ms/step") == 2 and "accuracy: " in out


def test_verbose_1_on_a_terminal_redraws_a_bar_in_place(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True
    term = Terminal()
    monkeypatch.setattr(sys, "stdout", term)
    model = compiled()
    x, y = data(n=24)
    model.fit(x, y, batch_size=8, epochs=1, verbose="auto")
    out = term.getvalue()
    monkeypatch.undo()
    assert out.count("\r") >= 3 and "ETA: " in out and "[" in out and "loss: " in out
    assert out.count("\n") == 2                              # "Epoch 1/1" and the final line
    assert out.rstrip("\n").split("\r")[-1].startswith("3/3 - ")


def test_verbose_0_is_silent_and_evaluate_prints_one_line(capsys):
    model = compiled()
    x, y = data(n=20)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    model.evaluate(x, y, verbose=0)
    model.predict(x)
    assert capsys.readouterr().out == ""
    model.evaluate(x, y, batch_size=8, verbose=1)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.startswith("3/3 - ") and "accuracy: " in out


# ----------------------------------------------------------------------------- evaluate, predict
def test_evaluate_and_predict_agree_and_work_in_batches():
    model = compiled()
    x, y = data(n=37)
    seen = _record_batches(model)
    proba = model.predict(x, batch_size=10)
    assert max(len(b) for b, _ in seen) == 10 and not any(t for _, t in seen)
    assert proba.shape == (37, CLASSES) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(model.predict(x, batch_size=1000), proba, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(model.forward(x), proba, rtol=1e-6, atol=1e-7)
    loss, acc = model.evaluate(x, y, batch_size=10, verbose=0)
    p = np.clip(proba.astype(np.float64), 1e-7, 1 - 1e-7)
    assert loss == pytest.approx(-np.mean(np.sum(y * np.log(p), axis=1)), rel=1e-5)
    assert acc == pytest.approx(np.mean(proba.argmax(1) == y.argmax(1)))
    assert isinstance(loss, float) and isinstance(acc, float)
    # no metrics: a float
    model.compile("adam", "categorical_crossentropy")
    only = model.evaluate(x, y, verbose=0)
    assert isinstance(only, float) and only == pytest.approx(loss, rel=1e-6)


def test_sparse_labels_of_shape_n_and_n_1_give_the_same_results():
    model = compiled(loss="sparse_categorical_crossentropy")
    x, labels = data(n=20, sparse=True)
    a = model.evaluate(x, labels, verbose=0)
    b = model.evaluate(x, labels.reshape(-1, 1), verbose=0)
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    c = model.evaluate(x, to_categorical(labels, CLASSES), verbose=0)
    assert a == pytest.approx(b) and a == pytest.approx(c, rel=1e-6)


# ----------------------------------------------------------------------------- learner API
def test_backprop_fills_grads_and_applies_no_update():
    model = compiled()
    x, y = data(n=8)
    before = model.get_weights()
    loss = model.backprop(x, y)
    assert isinstance(loss, float)
    assert loss == pytest.approx(model.evaluate(x, y, verbose=0)[0], rel=1e-6)
    assert weights_equal(model.get_weights(), before)
    for layer in model.layers:
        for key, p in layer.params.items():
            g = layer.grads[key]
            assert g.shape == p.shape and g.dtype == p.dtype and np.any(g != 0), (layer.name, key)


def test_backprop_gradient_matches_finite_differences():
    set_random_seed(3)
    model = models.Sequential([
        layers.Conv2D(2, 3, activation="relu", dtype="float64", input_shape=(5, 5, 2)),
        layers.Flatten(dtype="float64"),
        layers.Dense(3, activation="softmax", dtype="float64")])
    model.compile("sgd", "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 5, 5, 2))
    y = to_categorical([0, 1, 2, 1], 3, dtype="float64")
    model.backprop(x, y)
    eps = 1e-6
    for layer in (model.layers[0], model.layers[2]):
        for key, p in layer.params.items():
            g = layer.grads[key].copy()
            for idx in list(np.ndindex(p.shape))[:: max(1, p.size // 6)]:
                old = p[idx]
                p[idx] = old + eps
                up = model.evaluate(x, y, verbose=0)
                p[idx] = old - eps
                down = model.evaluate(x, y, verbose=0)
                p[idx] = old
                assert g[idx] == pytest.approx((up - down) / (2 * eps), rel=1e-5, abs=1e-8)


def test_train_on_batch_is_backprop_plus_the_optimizer_step():
    x, y = data(n=8)
    a = compiled(optimizer=optimizers.SGD(0.1), seed=4)
    b = compiled(optimizer=optimizers.SGD(0.1), seed=4)
    b.backprop(x, y)
    expected = [p - np.float32(0.1) * layer.grads[k]
                for layer in b.layers for k, p in layer.params.items()]
    result = a.train_on_batch(x, y)
    assert isinstance(result, list) and len(result) == 2
    for got, want in zip(a.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    before = a.get_weights()
    loss, acc = a.test_on_batch(x, y)
    assert weights_equal(a.get_weights(), before) and 0 <= acc <= 1
    a.compile(optimizers.SGD(0.1), "categorical_crossentropy")
    assert isinstance(a.train_on_batch(x, y), float)


# ----------------------------------------------------------------------------- overfitting
def test_dropout_and_augmentation_are_active_only_in_training():
    set_random_seed(0)
    model = models.Sequential([
        layers.RandomFlip("horizontal", input_shape=SHAPE),
        layers.RandomTranslation(0.25, 0.25),
        layers.Conv2D(4, 3, activation="relu", padding="same"),
        layers.Flatten(),
        layers.Dropout(0.5),
        layers.Dense(CLASSES, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    x, y = data(n=16)
    p1, p2 = model.predict(x), model.predict(x)
    np.testing.assert_array_equal(p1, p2)                      # inference: deterministic
    t1 = model.forward(x, training=True)
    t2 = model.forward(x, training=True)
    assert not np.allclose(t1, t2)                             # training: random
    history = model.fit(x, y, batch_size=8, epochs=2, validation_split=0.25, verbose=0)
    assert len(history.history["val_loss"]) == 2
    # the first layer with weights sits behind the augmentation: no dL/dx needed there
    assert [l.compute_input_gradient for l in model.layers] == [False] * 3 + [True] * 3


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip_gives_identical_predictions(tmp_path):
    model = compiled(optimizer=optimizers.SGD(0.05, momentum=0.9))
    x, y = data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    assert [l.name for l in loaded.layers] == [l.name for l in model.layers]
    assert [l.get_config() for l in loaded.layers] == [l.get_config() for l in model.layers]
    assert isinstance(loaded.optimizer, optimizers.SGD) and loaded.optimizer.momentum == 0.9
    assert loaded.metrics == ["accuracy"] and loaded.loss.name == "categorical_crossentropy"
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    # uncompiled models save and load too
    fresh = tiny_model(seed=2)
    fresh.save(str(tmp_path / "fresh"))
    again = models.load_model(str(tmp_path / "fresh"))
    assert not again.compiled and weights_equal(again.get_weights(), fresh.get_weights())


@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_resumed_training_takes_identical_next_steps(tmp_path, optimizer):
    def make_opt():
        return optimizers.Adam(3e-3) if optimizer == "adam" else optimizers.SGD(0.05, 0.9)
    x, y = data(n=48, seed=3)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)]
    model = compiled(optimizer=make_opt())
    for xb, yb in batches[:3]:
        model.train_on_batch(xb, yb)
    path = tmp_path / "ckpt.npz"
    model.save(path)
    for xb, yb in batches[3:]:
        model.train_on_batch(xb, yb)
    resumed = models.load_model(path)
    assert resumed.optimizer.iterations == 3
    for xb, yb in batches[3:]:
        resumed.train_on_batch(xb, yb)
    assert weights_equal(resumed.get_weights(), model.get_weights())


def test_restore_rng_continues_shuffling_and_dropout_exactly(tmp_path):
    x, y = data(n=24)
    model = compiled(extra=(layers.Dropout(0.3, input_shape=SHAPE),))
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    model.save(tmp_path / "m.npz")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    set_random_seed(123)                                   # scramble the global generator
    resumed = models.load_model(tmp_path / "m.npz", restore_rng=True)
    resumed.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert weights_equal(resumed.get_weights(), model.get_weights())


def test_save_weights_and_load_weights(tmp_path):
    model = tiny_model(seed=1)
    model.save_weights(tmp_path / "w.npz")
    other = tiny_model(seed=2)
    other.load_weights(tmp_path / "w.npz")
    assert weights_equal(other.get_weights(), model.get_weights())
    full = compiled(seed=3)
    full.save(tmp_path / "full.npz")
    other.load_weights(tmp_path / "full.npz")              # a full save works too
    assert weights_equal(other.get_weights(), full.get_weights())
    lazy = tiny_model(seed=4, input_shape=None)             # not built: built from the file
    lazy.load_weights(tmp_path / "w.npz")
    assert lazy.input_shape == SHAPE and weights_equal(lazy.get_weights(), model.get_weights())
    with pytest.raises(ValueError, match="weights only"):
        models.load_model(tmp_path / "w.npz")


def test_load_weights_into_a_different_architecture_names_layer_and_shapes(tmp_path):
    model = tiny_model()
    model.save_weights(tmp_path / "w.npz")
    set_random_seed(0)
    wider = models.Sequential([
        layers.Conv2D(6, 3, activation="relu", padding="same", input_shape=SHAPE),
        layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(CLASSES, activation="softmax")])
    before = wider.get_weights()
    with pytest.raises(ValueError) as err:
        wider.load_weights(tmp_path / "w.npz")
    msg = str(err.value)
    assert wider.layers[0].name in msg and "(3, 3, 3, 6)" in msg and "(3, 3, 3, 4)" in msg
    assert weights_equal(wider.get_weights(), before)          # nothing half-loaded
    deeper = models.Sequential([layers.Flatten(input_shape=SHAPE), layers.Dense(4),
                                layers.Dense(3), layers.Dense(2)])
    with pytest.raises(ValueError, match="2 layers.*3 layers"):
        deeper.load_weights(tmp_path / "w.npz")


class Canary:
    """Unpickling one of these would flip ``Canary.unpickled``."""
    unpickled = False

    def __reduce__(self):
        return (_trip, ())


def _trip():
    Canary.unpickled = True
    return "tripped"


def _foreign_files(tmp_path):
    files = {}
    files["pickle_npz"] = tmp_path / "pickle.npz"
    np.savez(files["pickle_npz"], __minicnn__=np.array([Canary()], dtype=object),
             w=np.array([Canary(), 1], dtype=object))
    files["random_bytes"] = tmp_path / "random.bin"
    files["random_bytes"].write_bytes(np.random.default_rng(0).bytes(4096))
    files["raw_pickle"] = tmp_path / "raw.pkl"
    files["raw_pickle"].write_bytes(pickle.dumps(Canary()))
    files["npy"] = tmp_path / "a.npy"
    np.save(files["npy"], np.arange(3))
    files["other_npz"] = tmp_path / "other.npz"
    np.savez(files["other_npz"], kernel=np.ones((3, 3)))
    good = tmp_path / "good.npz"
    compiled().save(good)
    raw = good.read_bytes()
    files["truncated"] = tmp_path / "truncated.npz"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["empty"] = tmp_path / "empty.npz"
    files["empty"].write_bytes(b"")
    return files


@pytest.mark.parametrize("kind", ["pickle_npz", "random_bytes", "raw_pickle", "npy",
                                  "other_npz", "truncated", "empty"])
def test_load_model_rejects_foreign_or_corrupt_files_without_unpickling(tmp_path, kind):
    path = _foreign_files(tmp_path)[kind]
    Canary.unpickled = False
    with pytest.raises(ValueError, match="not a minicnn model file"):
        models.load_model(path)
    with pytest.raises(ValueError, match="not a minicnn model file"):
        tiny_model().load_weights(path)
    assert not Canary.unpickled


def test_saved_file_holds_no_pickle_and_bad_headers_are_rejected(tmp_path):
    import json
    import zipfile
    path = tmp_path / "m.npz"
    compiled().save(path)
    with np.load(path, allow_pickle=False) as f:           # readable without pickle
        assert all(f[k].dtype != object for k in f.files)
        meta = json.loads(f["__minicnn__.json"].tobytes())
        arrays = {k: f[k] for k in f.files if k != "__minicnn__.json"}
    assert zipfile.is_zipfile(path)

    def rewrite(change):
        m = json.loads(json.dumps(meta))
        change(m)
        out = tmp_path / "bad.npz"
        np.savez(out, **{"__minicnn__.json": np.frombuffer(json.dumps(m).encode(), np.uint8)},
                 **arrays)
        return out
    cases = [
        (lambda m: m.update(format="other"), "wrong header"),
        (lambda m: m.update(version=99), "newer"),
        (lambda m: m["model"]["layers"][0].update(class_name="Evil"), "unknown layer class"),
        (lambda m: m["model"].update(layers="oops"), "invalid model description"),
        (lambda m: m.update(model=[1, 2]), "invalid model description"),
        (lambda m: m["model"]["layers"][0]["config"].update(filters=8), "max_pooling2d"),
        (lambda m: m["model"]["layers"][-1]["config"].update(units=7), r"\(64, 7\)"),
        (lambda m: m["compile"]["optimizer"].update(class_name="os.system"),
         "unknown optimizer class"),
        (lambda m: m["rng_state"].update(bit_generator="RandomState"), "bit generator"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            models.load_model(rewrite(change), restore_rng=True)
    with pytest.raises(FileNotFoundError):
        models.load_model(tmp_path / "missing.npz")


# ----------------------------------------------------------------------------- bad input
def _bad_cases():
    x, y = data(n=10)
    xs, ys = data(n=10, sparse=True)
    return {
        "image shape": (lambda m: m.fit(np.zeros((10, 8, 8, 1)), y, verbose=0),
                        ["x", "(n, 8, 8, 3)", "(10, 8, 8, 1)"]),
        "image rank": (lambda m: m.predict(np.zeros((10, 64))), ["x", "(10, 64)"]),
        "lengths": (lambda m: m.fit(x, y[:9], verbose=0), ["10 images", "9 labels"]),
        "evaluate lengths": (lambda m: m.evaluate(x[:4], y, verbose=0), ["4 images", "10"]),
        "one-hot width": (lambda m: m.fit(x, to_categorical(ys, 7), verbose=0),
                          ["y", "(n, 5)", "(10, 7)"]),
        "sparse label high": (lambda m: (m.compile("adam", "sparse_categorical_crossentropy"),
                                         m.fit(x, np.full(10, 5), verbose=0)),
                              ["labels", "[0, 5)", "received 5"]),
        "sparse label negative": (lambda m: (m.compile("adam", "sparse_categorical_crossentropy"),
                                             m.evaluate(x, np.full(10, -1), verbose=0)),
                                  ["[0, 5)", "received -1"]),
        "sparse label fraction": (lambda m: (m.compile("adam", "sparse_categorical_crossentropy"),
                                             m.fit(x, np.full(10, 0.5), verbose=0)),
                                  ["integer labels"]),
        "validation_split 1": (lambda m: m.fit(x, y, validation_split=1.0, verbose=0),
                               ["validation_split", "1.0"]),
        "validation_split negative": (lambda m: m.fit(x, y, validation_split=-0.1, verbose=0),
                                      ["validation_split", "-0.1"]),
        "validation_split large": (lambda m: m.fit(x, y, validation_split=0.95, verbose=0),
                                   ["validation_split=0.95", "0 training"]),
        "validation_data": (lambda m: m.fit(x, y, validation_data=x, verbose=0),
                            ["validation_data", "ndarray"]),
        "batch_size 0": (lambda m: m.fit(x, y, batch_size=0, verbose=0), ["batch_size", "0"]),
        "batch_size float": (lambda m: m.evaluate(x, y, batch_size=2.5), ["batch_size", "2.5"]),
        "predict batch_size": (lambda m: m.predict(x, batch_size=-3), ["batch_size", "-3"]),
        "epochs": (lambda m: m.fit(x, y, epochs=-1, verbose=0), ["epochs", "-1"]),
        "verbose": (lambda m: m.fit(x, y, verbose=3), ["verbose", "3"]),
        "optimizer": (lambda m: m.compile("adamax", "categorical_crossentropy"),
                      ["'adamax'", "adam, adamw, sgd"]),
        "loss": (lambda m: m.compile("adam", "mse"),
                 ["'mse'", "categorical_crossentropy, sparse_categorical_crossentropy"]),
        "no loss": (lambda m: m.compile("adam"), ["loss"]),
        "metric": (lambda m: m.compile("adam", "categorical_crossentropy", ["f1"]),
                   ["'f1'", "accuracy"]),
        "conv activation": (lambda m: layers.Conv2D(2, 3, activation="selu"),
                            ["'selu'", "relu", "softmax"]),
        "dense activation": (lambda m: layers.Dense(2, activation="mish"), ["'mish'", "relu"]),
        "string images": (lambda m: m.predict(np.full((2,) + SHAPE, "a")), ["x", "dtype"]),
        "empty x": (lambda m: m.fit(x[:0], y[:0], verbose=0), ["x", "non-empty"]),
        "callback": (lambda m: m.fit(x, y, callbacks=[print], verbose=0), ["callbacks"]),
        "NaN targets": (lambda m: m.fit(x, np.full_like(y, np.nan), verbose=0), ["y", "NaN"]),
    }


BAD = _bad_cases()


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_raises_value_error_naming_argument_and_value(case):
    call, words = BAD[case]
    model = compiled()
    before = model.get_weights()
    with pytest.raises(ValueError) as err:
        call(model)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert weights_equal(model.get_weights(), before)


@pytest.mark.parametrize("call", ["fit", "evaluate", "train_on_batch", "test_on_batch",
                                  "backprop"])
def test_training_calls_before_compile_raise(call):
    model = tiny_model()
    x, y = data(n=4)
    with pytest.raises(ValueError, match="compile"):
        getattr(model, call)(x, y)
    model.predict(x)                                     # needs no compile


@pytest.mark.parametrize("where", ["fit", "validation", "evaluate", "predict", "train_on_batch"])
def test_nan_or_inf_in_inputs_is_caught(where):
    model = compiled()
    x, y = data(n=24)
    bad = x.copy()
    bad[13, 2, 3, 1] = np.nan if where != "predict" else np.inf
    before = model.get_weights()
    with pytest.raises(ValueError, match="NaN or inf") as err:
        if where == "fit":
            model.fit(bad, y, batch_size=8, shuffle=False, verbose=0)
        elif where == "validation":
            model.fit(x, y, validation_data=(bad, y), verbose=0)
        elif where == "evaluate":
            model.evaluate(bad, y, batch_size=8, verbose=0)
        elif where == "predict":
            model.predict(bad, batch_size=8)
        else:
            model.train_on_batch(bad, y)
    assert isinstance(err.value, NonFiniteLossError)
    if where == "fit":
        assert "epoch 1, batch 2" in str(err.value)
        # the batch before it trained; the bad batch changed nothing after that
    if where in ("evaluate", "predict"):
        assert "batch 2" in str(err.value)
    if where in ("evaluate", "predict", "train_on_batch"):
        assert weights_equal(model.get_weights(), before)


def test_non_finite_loss_stops_training_naming_epoch_and_batch():
    model = compiled(optimizer=optimizers.SGD(0.01))
    x, y = data(n=24)
    x = x.copy()
    x[16:] = 3e38          # finite float32 input whose convolution overflows to inf
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 3") as err:
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0,
                  initial_epoch=1)
    assert "loss became nan" in str(err.value)
    assert isinstance(err.value, ValueError)
    # the guard can be switched off; a non-finite batch never updates the weights
    model.stop_on_nonfinite = False
    before = model.get_weights()
    history = model.fit(x[16:], y[16:], batch_size=8, epochs=1, verbose=0)
    assert math.isnan(history.history["loss"][0])
    assert weights_equal(model.get_weights(), before)


# ----------------------------------------------------------------------------- to_categorical
@pytest.mark.parametrize("labels", [np.array([2, 0, 1, 2]), np.array([[2], [0], [1], [2]]),
                                    [2.0, 0.0, 1.0, 2.0], np.array([2, 0, 1, 2], np.uint8)])
def test_to_categorical_accepts_n_and_n_1_labels(labels):
    out = to_categorical(labels, 4)
    expected = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], np.float32)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(to_categorical(labels), expected[:, :3])   # max + 1 classes


@pytest.mark.parametrize("labels,num_classes,words", [
    ([0, 3], 3, ["[0, 3)", "received 3"]),
    ([-1, 0], 3, ["received -1"]),
    ([0.5], 2, ["integer"]),
    (np.zeros((2, 2)), 2, ["(n,) or (n, 1)", "(2, 2)"]),
    ([0, 1], 0, ["num_classes", "0"]),
    (["a", "b"], 2, ["integer", "dtype"]),
])
def test_to_categorical_bad_input(labels, num_classes, words):
    with pytest.raises(ValueError) as err:
        to_categorical(labels, num_classes)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_a_failed_build_from_data_leaves_the_model_retryable():
    model = models.Sequential([layers.Conv2D(2, 3), layers.Flatten(), layers.Dense(3)])
    with pytest.raises(ValueError, match="kernel_size"):
        model.predict(np.zeros((1, 2, 2, 3)))          # too small for a 3x3 'valid' kernel
    assert not any(layer.built for layer in model.layers)
    assert model.predict(np.zeros((2, 5, 5, 3))).shape == (2, 3)
    assert model.layers[0].params["kernel"].shape == (3, 3, 3, 2)
