"""Callbacks: History, EarlyStopping, ModelCheckpoint and the non-finite-loss guard.

The monitored values are scripted (a callback placed before the one under test rewrites
the epoch logs), so the tests check the callbacks' logic exactly instead of hoping that
a real run improves or worsens on cue.
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest

from minicnn import callbacks, layers, models
from minicnn.callbacks import (EarlyStopping, History, ModelCheckpoint, NonFiniteLossError,
                               TerminateOnNonFinite)
from minicnn.utils import set_random_seed, to_categorical


def tiny_model(seed=0):
    set_random_seed(seed)
    model = models.Sequential([
        layers.Conv2D(3, 3, activation="relu", input_shape=(6, 6, 2)),
        layers.Flatten(),
        layers.Dense(4, activation="softmax")])
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    return model


@pytest.fixture
def xy():
    rng = np.random.default_rng(0)
    return rng.random((24, 6, 6, 2)), to_categorical(rng.integers(0, 4, 24), 4)


class Script(callbacks.Callback):
    """Overwrite ``logs[key]`` with scripted values and record the weights of each epoch."""

    def __init__(self, key, values):
        super().__init__()
        self.key, self.values, self.weights = key, list(values), []

    def on_epoch_end(self, epoch, logs=None):
        logs[self.key] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def same(a, b):
    return all(np.array_equal(u, v) for u, v in zip(a, b))


# ----------------------------------------------------------------------------- History
def test_history_records_every_epoch_log():
    h = History()
    h.on_train_begin()
    h.on_epoch_end(4, {"loss": 1.0, "accuracy": 0.5})
    h.on_epoch_end(5, {"loss": 0.5, "accuracy": 0.75})
    assert h.epoch == [4, 5] and h.history == {"loss": [1.0, 0.5], "accuracy": [0.5, 0.75]}


def test_callbacks_get_model_params_and_hooks_in_order(xy):
    events = []

    class Spy(callbacks.Callback):
        def on_train_begin(self, logs=None):
            events.append(("train_begin", dict(self.params)))

        def on_epoch_begin(self, epoch, logs=None):
            events.append(("epoch_begin", epoch))

        def on_train_batch_begin(self, batch, logs=None):
            events.append(("batch_begin", batch))

        def on_train_batch_end(self, batch, logs=None):
            events.append(("batch_end", batch, sorted(logs)))

        def on_epoch_end(self, epoch, logs=None):
            events.append(("epoch_end", epoch, sorted(logs)))

        def on_train_end(self, logs=None):
            events.append(("train_end",))
    model = tiny_model()
    spy = Spy()
    model.fit(*xy, batch_size=10, epochs=1, validation_split=0.25, callbacks=[spy], verbose=0)
    assert spy.model is model
    params = events[0][1]
    assert params["epochs"] == 1 and params["steps"] == 2 and params["samples"] == 18
    assert params["metrics"] == ["loss", "accuracy", "val_loss", "val_accuracy"]
    assert [e[0] for e in events] == ["train_begin", "epoch_begin", "batch_begin", "batch_end",
                                      "batch_begin", "batch_end", "epoch_end", "train_end"]
    assert events[3][2] == ["accuracy", "batch_loss", "loss"]
    assert events[6][2] == ["accuracy", "loss", "val_accuracy", "val_loss"]


def test_a_callback_can_stop_training_mid_epoch(xy):
    class StopAfterTwoBatches(callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            self.batches = batch + 1
            if batch == 1:
                self.model.stop_training = True
    stop = StopAfterTwoBatches()
    history = tiny_model().fit(*xy, batch_size=4, epochs=5, callbacks=[stop], verbose=0)
    assert stop.batches == 2 and history.epoch == [0]


# ----------------------------------------------------------------------------- EarlyStopping
def test_early_stopping_waits_patience_epochs_without_improvement(xy):
    model = tiny_model()
    script = Script("val_loss", [1.0, 0.8, 0.85, 0.9, 0.7, 0.6])
    stop = EarlyStopping(monitor="val_loss", patience=2)
    history = model.fit(*xy, epochs=6, batch_size=8, validation_split=0.25,
                        callbacks=[script, stop], verbose=0)
    assert history.epoch == [0, 1, 2, 3]
    assert history.history["val_loss"] == [1.0, 0.8, 0.85, 0.9]
    assert stop.stopped_epoch == 3 and stop.best == 0.8 and stop.best_epoch == 1
    assert same(model.get_weights(), script.weights[-1])      # not restored by default


def test_early_stopping_restores_the_best_weights(xy, capsys):
    model = tiny_model()
    script = Script("val_accuracy", [0.2, 0.5, 0.4, 0.45, 0.3])
    stop = EarlyStopping(monitor="val_accuracy", patience=2, restore_best_weights=True,
                         verbose=1)
    assert stop.mode == "max"
    history = model.fit(*xy, epochs=5, batch_size=8, validation_split=0.25,
                        callbacks=[script, stop], verbose=0)
    assert history.epoch == [0, 1, 2, 3]
    assert same(model.get_weights(), script.weights[1])
    assert "Epoch 4: early stopping" in capsys.readouterr().out


def test_early_stopping_min_delta_and_restore_when_epochs_run_out(xy):
    model = tiny_model()
    script = Script("loss", [1.0, 0.5, 0.499, 0.6])
    stop = EarlyStopping(monitor="loss", min_delta=0.01, patience=5, restore_best_weights=True)
    history = model.fit(*xy, epochs=4, batch_size=8, callbacks=[script, stop], verbose=0)
    assert history.epoch == [0, 1, 2, 3] and stop.best == 0.5
    assert same(model.get_weights(), script.weights[1])       # 0.499 is not 0.01 better


def test_early_stopping_on_an_unlogged_metric_fails_before_training(xy):
    model = tiny_model()
    before = model.get_weights()
    with pytest.raises(ValueError, match="'val_loss'.*validation_split"):
        model.fit(*xy, epochs=2, callbacks=[EarlyStopping()], verbose=0)
    with pytest.raises(ValueError, match="'val_auc'"):
        model.fit(*xy, epochs=2, validation_split=0.25, callbacks=[EarlyStopping("val_auc")],
                  verbose=0)
    assert same(model.get_weights(), before)


@pytest.mark.parametrize("kwargs,words", [
    ({"patience": -1}, ["patience", "-1"]),
    ({"patience": 1.5}, ["patience", "1.5"]),
    ({"mode": "up"}, ["mode", "'up'"]),
    ({"monitor": 3}, ["monitor", "3"]),
])
def test_early_stopping_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        EarlyStopping(**kwargs)
    assert all(w in str(err.value) for w in words)


# ----------------------------------------------------------------------------- ModelCheckpoint
def test_checkpoint_every_epoch_with_formatted_names(xy, tmp_path):
    model = tiny_model()
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{val_accuracy:.2f}.npz")
    model.fit(*xy, epochs=2, batch_size=8, validation_split=0.25, verbose=0,
              callbacks=[ModelCheckpoint(pattern, save_best_only=False)])
    names = sorted(os.listdir(tmp_path / "ckpt"))
    assert [n[:5] for n in names] == ["m-01-", "m-02-"]
    last = models.load_model(tmp_path / "ckpt" / names[-1])
    x = xy[0]
    np.testing.assert_array_equal(last.predict(x), model.predict(x))
    assert last.optimizer.iterations == model.optimizer.iterations


def test_checkpoint_save_best_only_writes_on_improvement(xy, tmp_path):
    model = tiny_model()
    path = tmp_path / "best.npz"
    script = Script("val_loss", [0.9, 0.7, 0.8, 0.75])
    saved = []

    class Watch(callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            saved.append(os.path.getmtime(path) if path.exists() else None)
            if path.exists():
                os.utime(path, (0, 0))           # mark: a new save would reset the time
    model.fit(*xy, epochs=4, batch_size=8, validation_split=0.25, verbose=0,
              callbacks=[script, ModelCheckpoint(path, monitor="val_loss", save_best_only=True),
                         Watch()])
    wrote = [t is not None and t != 0 for t in saved]
    assert wrote == [True, True, False, False]
    best = models.load_model(path)
    reference = tiny_model()
    reference.set_weights(script.weights[1])
    np.testing.assert_array_equal(best.predict(xy[0]), reference.predict(xy[0]))


def test_checkpoint_weights_only_and_bad_settings(xy, tmp_path):
    model = tiny_model()
    path = tmp_path / "w.npz"
    model.fit(*xy, epochs=1, batch_size=8, verbose=0,
              callbacks=[ModelCheckpoint(path, monitor="loss", save_weights_only=True)])
    other = tiny_model(seed=5)
    other.load_weights(path)
    assert same(other.get_weights(), model.get_weights())
    with pytest.raises(ValueError, match="weights only"):
        models.load_model(path)
    before = model.get_weights()
    with pytest.raises(ValueError, match="filepath.*val_accuracy"):
        model.fit(*xy, epochs=1, verbose=0,
                  callbacks=[ModelCheckpoint(str(tmp_path / "{val_accuracy}.npz"))])
    with pytest.raises(ValueError, match="'val_loss'"):
        model.fit(*xy, epochs=1, verbose=0,
                  callbacks=[ModelCheckpoint(tmp_path / "b.npz", save_best_only=True)])
    assert same(model.get_weights(), before)
    with pytest.raises(ValueError, match="mode"):
        ModelCheckpoint(path, mode="best")


# ----------------------------------------------------------------------------- non-finite guard
def test_guard_is_on_by_default_and_names_epoch_and_batch():
    guard = TerminateOnNonFinite()
    guard.on_epoch_begin(6)
    guard.on_train_batch_end(0, {"loss": 1.0, "batch_loss": 1.0})
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(NonFiniteLossError, match="epoch 7, batch 4"):
            guard.on_train_batch_end(3, {"loss": 1.0, "batch_loss": bad})
    assert tiny_model().stop_on_nonfinite is True


def test_guard_stops_fit_before_a_nan_batch_changes_the_weights(xy):
    class Poison(callbacks.Callback):
        """Make the model's weights NaN before batch 2 of epoch 2."""
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_begin(self, batch, logs=None):
            if self.epoch == 1 and batch == 1:
                self.model.layers[-1].params["bias"][0] = np.nan
    model = tiny_model()
    history_before = None
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 2"):
        history_before = model.fit(*xy, epochs=3, batch_size=8, callbacks=[Poison()], verbose=0)
    assert history_before is None
    kernel = model.layers[0].params["kernel"]
    assert np.all(np.isfinite(kernel))                     # the NaN step was never applied
