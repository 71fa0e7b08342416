"""Schedules, AdamW and weight decay, clipping, regularizers, label smoothing, the learning-rate
callbacks and CSVLogger, and gradcheck's float32 warning."""
from __future__ import annotations

import math

import numpy as np
import pytest

import minicnn as keras
from minicnn import callbacks, gradcheck, layers, losses, models, optimizers, regularizers
from minicnn.optimizers import schedules
from minicnn.utils import set_random_seed, to_categorical


# ----------------------------------------------------------------------------- schedules
def test_cosine_decay_with_warmup_formula():
    s = schedules.CosineDecay(0.0, decay_steps=10, alpha=0.1, warmup_target=1.0, warmup_steps=4)
    assert [s(i) for i in range(4)] == pytest.approx([0.0, 0.25, 0.5, 0.75])
    assert s(4) == pytest.approx(1.0)
    assert s(9) == pytest.approx(0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10)) + 0.1)
    assert s(14) == pytest.approx(0.1) and s(100) == pytest.approx(0.1)
    plain = schedules.CosineDecay(0.5, 8)
    assert plain(0) == 0.5 and plain(4) == pytest.approx(0.25) and plain(8) == pytest.approx(0)


def test_exponential_and_piecewise_formulas():
    e = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert e(5) == pytest.approx(0.1 * 0.5 ** 0.5)
    assert schedules.ExponentialDecay(0.1, 10, 0.5, staircase=True)(15) == pytest.approx(0.05)
    p = schedules.PiecewiseConstantDecay([3, 6], [1.0, 0.5, 0.1])
    assert [p(i) for i in (0, 3, 4, 6, 7)] == [1.0, 1.0, 0.5, 0.5, 0.1]
    with pytest.raises(ValueError, match="one more"):
        schedules.PiecewiseConstantDecay([3], [1.0])


def test_an_optimizer_follows_its_schedule_and_reads_as_a_float():
    sched = schedules.PiecewiseConstantDecay([1], [0.5, 0.1])
    opt = optimizers.SGD(learning_rate=sched)
    p = np.ones(2, np.float32)
    seen = []
    for _ in range(3):
        seen.append(opt.learning_rate)
        before = p.copy()
        opt.apply_gradients([("w", p, np.ones(2, np.float32))])
        np.testing.assert_allclose(before - p, seen[-1], rtol=1e-6)
    assert seen == [0.5, 0.5, 0.1] and isinstance(opt.learning_rate, float)
    with pytest.raises(TypeError, match="schedule"):
        opt.learning_rate = 0.3
    back = optimizers.from_config(opt.get_config())
    assert isinstance(back.schedule, schedules.PiecewiseConstantDecay)
    assert back.schedule.values == [0.5, 0.1]


# ----------------------------------------------------------------------------- weight decay, clipping
def test_adamw_is_decoupled_decay_then_adam():
    opt = optimizers.AdamW(learning_rate=0.01)
    assert opt.weight_decay == 0.004
    w = np.array([1.0, -2.0, 3.0])
    g = np.array([0.5, 0.1, -0.2])
    new = w.copy()
    opt.apply_gradients([("w", new, g)])
    decayed = w - 0.01 * 0.004 * w
    m, v = 0.1 * g, 0.001 * g * g
    alpha = 0.01 * math.sqrt(1 - 0.999) / (1 - 0.9)
    np.testing.assert_allclose(new, decayed - alpha * m / (np.sqrt(v) + 1e-7), rtol=1e-12)
    assert optimizers.get("adamw").weight_decay == 0.004


def test_weight_decay_on_sgd():
    opt = optimizers.SGD(0.1, weight_decay=0.5)
    w = np.array([2.0])
    opt.apply_gradients([("w", w, np.array([1.0]))])
    assert w[0] == pytest.approx(2.0 - 0.1 * 0.5 * 2.0 - 0.1 * 1.0)


def test_clipnorm_and_global_clipnorm():
    g1, g2 = np.array([3.0, 4.0]), np.array([0.0, 12.0])
    a, b = np.zeros(2), np.zeros(2)
    optimizers.SGD(1.0, clipnorm=1.0).apply_gradients([("a", a, g1), ("b", b, g2)])
    np.testing.assert_allclose(a, -g1 / 5)
    np.testing.assert_allclose(b, -g2 / 12)
    a, b = np.zeros(2), np.zeros(2)
    optimizers.SGD(1.0, global_clipnorm=1.0).apply_gradients([("a", a, g1), ("b", b, g2)])
    np.testing.assert_allclose(a, -g1 / 13)
    np.testing.assert_allclose(b, -g2 / 13)
    a = np.zeros(2)
    optimizers.SGD(1.0, clipnorm=10.0).apply_gradients([("a", a, g1)])
    np.testing.assert_allclose(a, -g1)                          # below the norm: untouched
    with pytest.raises(ValueError, match="clipnorm"):
        optimizers.Adam(clipnorm=-1)


# ----------------------------------------------------------------------------- regularizers
def test_l2_regularizer_adds_its_term_to_the_loss_and_gradient():
    set_random_seed(0)
    model = keras.Sequential([
        keras.Input((4,), dtype="float64"),
        layers.Dense(3, activation="tanh", kernel_regularizer=regularizers.L2(0.1),
                     dtype="float64"),
        layers.Dense(2, activation="softmax", kernel_regularizer="l2", dtype="float64")])
    model.compile("sgd", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 4)), rng.integers(0, 2, 5)
    k1, k2 = model.layers[0].params["kernel"], model.layers[1].params["kernel"]
    plain = losses.SparseCategoricalCrossentropy()(y, model.predict(x))
    penalty = 0.1 * np.sum(k1 ** 2) + 0.01 * np.sum(k2 ** 2)
    loss = model.backprop(x, y)
    assert loss == pytest.approx(plain + penalty, rel=1e-12)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + penalty, rel=1e-12)

    def total(kv):
        k1[...] = kv
        return models.Model.compute_loss(model, model.call(x), y)[0]
    original = k1.copy()
    numeric = gradcheck.numerical_gradient(total, original)
    k1[...] = original
    model.backprop(x, y)
    assert gradcheck.relative_error(model.layers[0].grads["kernel"], numeric) < 1e-8
    cfg = model.layers[0].get_config()
    again = layers.Dense.from_config(
        {**cfg, "kernel_regularizer": cfg["kernel_regularizer"]})
    assert isinstance(again.kernel_regularizer, regularizers.L2)
    assert again.kernel_regularizer.l2 == 0.1


# ----------------------------------------------------------------------------- label smoothing
def test_label_smoothing_trains_on_smoothed_targets():
    rng = np.random.default_rng(1)
    z = rng.standard_normal((4, 5))
    y = to_categorical([0, 1, 4, 2], 5).astype(np.float64)
    smooth = y * 0.8 + 0.2 / 5
    loss = losses.CategoricalCrossentropy(label_smoothing=0.2)
    value, dz = loss.from_logits_forward(z, y)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    assert value == pytest.approx(-np.sum(smooth * logp) / 4, rel=1e-12)
    np.testing.assert_allclose(dz, (np.exp(logp) - smooth) / 4, rtol=1e-12)
    probs = np.exp(logp)
    assert loss.forward(probs, y)[0] == pytest.approx(value, rel=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.CategoricalCrossentropy(label_smoothing=2)
    errors = gradcheck.check_loss(loss, z, y)
    assert max(errors.values()) < 1e-7


# ----------------------------------------------------------------------------- callbacks
def small_model(lr=0.1):
    set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2, activation="softmax")])
    model.compile(optimizers.SGD(lr), "sparse_categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(0)
    return model, rng.standard_normal((20, 3)), rng.integers(0, 2, 20)


def test_learning_rate_scheduler_sets_each_epoch_and_history_shows_it():
    model, x, y = small_model()
    seen = []

    class Spy(callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(self.model.optimizer.learning_rate)
    sched = callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 * 0.5 ** epoch)
    h = model.fit(x, y, epochs=3, verbose=0, callbacks=[sched, Spy()])
    assert seen == pytest.approx([0.1, 0.05, 0.025])
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.05, 0.025])
    one_arg = callbacks.LearningRateScheduler(lambda epoch: 0.01 * (epoch + 1))
    h = model.fit(x, y, epochs=2, verbose=0, callbacks=[one_arg])
    assert h.history["learning_rate"] == pytest.approx([0.01, 0.02])


def test_reduce_lr_on_plateau():
    model, x, y = small_model()

    class Flat(callbacks.Callback):          # a metric that never improves
        def on_epoch_end(self, epoch, logs=None):
            logs["loss"] = 1.0
    cb = callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=2, min_lr=0.02)
    h = model.fit(x, y, epochs=7, verbose=0, callbacks=[Flat(), cb])
    assert h.history["learning_rate"] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025,
                                                        0.02])
    with pytest.raises(ValueError, match="factor"):
        callbacks.ReduceLROnPlateau(factor=1.5)


def test_schedules_show_in_history_and_survive_saving(tmp_path):
    model, x, y = small_model()
    model.compile(optimizers.Adam(schedules.CosineDecay(0.1, 4)),
                  "sparse_categorical_crossentropy")
    h = model.fit(x, y, epochs=2, batch_size=10, verbose=0)
    assert h.history["learning_rate"] == pytest.approx([0.05, 0.0], abs=1e-12)
    model.save(tmp_path / "m.npz")
    back = models.load_model(tmp_path / "m.npz")
    assert back.optimizer.iterations == 4 and back.optimizer.learning_rate == pytest.approx(0.0)


def test_csv_logger(tmp_path):
    model, x, y = small_model()
    path = tmp_path / "log.csv"
    model.fit(x, y, epochs=2, verbose=0, validation_split=0.2,
              callbacks=[callbacks.CSVLogger(path)])
    rows = path.read_text().splitlines()
    assert rows[0] == "epoch,accuracy,loss,val_accuracy,val_loss" and len(rows) == 3
    assert rows[1].startswith("0,") and rows[2].startswith("1,")
    model.fit(x, y, epochs=1, verbose=0, validation_split=0.2,
              callbacks=[callbacks.CSVLogger(path, append=True)])
    assert len(path.read_text().splitlines()) == 4


def test_gradcheck_warns_on_float32():
    with pytest.warns(UserWarning, match="float64"):
        gradcheck.check_layer(layers.Dense(2), (3,))
