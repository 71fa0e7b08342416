"""minicnn.plot: every function writes a valid PNG and returns a Figure with the expected axes.

Tiny models on the reference backend (no JIT compilation) and random data keep this fast.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure

import minicnn
from minicnn import layers, models, plot
from minicnn.callbacks import History

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NAMES = ["cat", "dog", "bird"]


@pytest.fixture(autouse=True)
def reference_backend():
    with minicnn.use_backend("reference"):
        yield


@pytest.fixture
def model():
    minicnn.set_random_seed(0)
    return models.Sequential([
        layers.Conv2D(4, 3, activation="relu", input_shape=(8, 8, 3), name="conv"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(3, activation="softmax", name="out"),
    ])


def assert_png(path):
    assert path.is_file()
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_MAGIC


def image_axes(fig):
    return [ax for ax in fig.axes if ax.images]


# ----------------------------------------------------------------------------- history
def make_history(epochs=3, validation=True):
    h = History()
    h.on_train_begin()
    for e in range(epochs):
        logs = {"loss": 1.0 / (e + 1), "accuracy": 0.3 + 0.1 * e}
        if validation:
            logs.update(val_loss=1.2 / (e + 1), val_accuracy=0.25 + 0.1 * e)
        h.on_epoch_end(e, logs)
    return h


def test_history_object_writes_png_and_has_two_labelled_axes(tmp_path):
    path = tmp_path / "history.png"
    fig = plot.history(make_history(), path)
    assert isinstance(fig, Figure)
    assert_png(path)
    assert len(fig.axes) == 2
    acc, loss = fig.axes
    assert [acc.get_title(), loss.get_title()] == ["Accuracy", "Loss"]
    for ax, name in ((acc, "Accuracy"), (loss, "Loss")):
        assert ax.get_xlabel() == "Epoch"
        assert ax.get_ylabel() == name
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train", "validation", "best epoch 3 (val_loss 0.4)"]    # val_loss: 1.2 / epoch
        for line in ax.get_lines()[:2]:
            assert list(line.get_xdata()) == [1, 2, 3]      # epochs count from 1
    np.testing.assert_allclose(loss.get_lines()[0].get_ydata(), [1.0, 0.5, 1 / 3])
    np.testing.assert_allclose(acc.get_lines()[1].get_ydata(), [0.25, 0.35, 0.45])


def test_history_dict_without_validation_and_with_acc_key(tmp_path):
    path = tmp_path / "h.png"
    fig = plot.history({"loss": [0.9, 0.7], "acc": [0.5, 0.6]}, str(path))
    assert_png(path)
    for ax in fig.axes:     # no validation: the best epoch is the lowest training loss
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train", "best epoch 2 (loss 0.7)"]


def test_history_without_path_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fig = plot.history({"loss": [1.0]})
    assert isinstance(fig, Figure)
    assert list(tmp_path.iterdir()) == []


def test_history_rejects_bad_input():
    with pytest.raises(ValueError, match="history must be a History .* received list"):
        plot.history([1, 2, 3])
    with pytest.raises(ValueError, match=r"no 'loss' or 'accuracy' values.*'lr'"):
        plot.history({"lr": [0.1]})
    with pytest.raises(ValueError, match=r"monitor 'val_accuracy' is not in the history, "
                                         r"received keys \['loss'\]"):
        plot.history({"loss": [1.0]}, monitor="val_accuracy")
    with pytest.raises(ValueError, match="mode must be 'auto', 'min' or 'max', received 'up'"):
        plot.history({"loss": [1.0]}, mode="up")


def best_marker(ax):
    """The epoch of the best-epoch line of an axes (its x data is [e, e]) and its label."""
    lines = [l for l in ax.get_lines() if l.get_label().startswith("best epoch")]
    assert len(lines) == 1, [l.get_label() for l in ax.get_lines()]
    x = list(lines[0].get_xdata())
    assert x[0] == x[1]
    return x[0], lines[0].get_label()


@pytest.mark.parametrize("monitor, expected", [("val_accuracy", 3), ("val_loss", 2),
                                               ("accuracy", 4), ("loss", 1)])
def test_history_marks_the_best_epoch_of_the_monitored_metric(monitor, expected):
    logs = {"loss": [0.5, 0.9, 0.7, 0.8], "accuracy": [0.1, 0.2, 0.3, 0.4],
            "val_loss": [1.0, 0.6, 0.6, 0.9], "val_accuracy": [0.3, 0.5, 0.7, 0.7]}
    # ties keep the earlier epoch (val_loss 0.6 at 2 and 3, val_accuracy 0.7 at 3 and 4), as the
    # checkpoint does; accuracies are best high, losses low
    assert plot.best_epoch(logs, monitor) == expected
    fig = plot.history(logs, monitor=monitor)
    for ax in fig.axes[:2]:
        epoch, label = best_marker(ax)
        assert epoch == expected
        assert label == f"best epoch {expected} ({monitor} {logs[monitor][expected - 1]:.4g})"
    assert plot.best_epoch(logs, "val_loss", mode="max") == 1
    assert plot.best_epoch(logs, "auc") is None


def test_history_default_monitor_is_val_loss_then_loss():
    fig = plot.history({"loss": [1.0, 0.5], "val_loss": [0.4, 0.6]})
    assert best_marker(fig.axes[1])[0] == 1
    fig = plot.history({"loss": [1.0, 0.5]})
    assert best_marker(fig.axes[1])[0] == 2


def test_best_epoch_is_the_epoch_the_checkpoint_keeps(tmp_path, rng):
    """The marker replays ModelCheckpoint(save_best_only=True): same epoch on random curves."""
    from minicnn.callbacks import ModelCheckpoint

    class Saves:
        epochs = []

        def save(self, path):
            self.epochs.append(current[0])

    for trial in range(20):
        values = np.round(rng.random(8), 1).tolist()        # rounded: ties happen
        for monitor in ("val_accuracy", "val_loss"):
            ckpt = ModelCheckpoint(tmp_path / "best.npz", monitor=monitor, save_best_only=True)
            ckpt.model = Saves()
            Saves.epochs = []
            for e, v in enumerate(values):
                current = [e + 1]
                ckpt.on_epoch_end(e, {monitor: v})
            assert plot.best_epoch({monitor: values}, monitor) == Saves.epochs[-1], values


def test_history_learning_rate_on_a_second_axis_when_it_varies(tmp_path):
    logs = {"loss": [1.0, 0.8, 0.7], "val_loss": [1.1, 0.9, 0.95],
            "learning_rate": [1e-3, 5e-4, 1e-4]}
    path = tmp_path / "curves.png"
    fig = plot.history(logs, path)
    assert_png(path)
    assert len(fig.axes) == 3
    acc, loss, lr_axis = fig.axes
    assert lr_axis.get_ylabel() == "learning rate"
    assert lr_axis.get_shared_x_axes().joined(lr_axis, loss)        # a twin of the loss axes
    (line,) = lr_axis.get_lines()
    assert list(line.get_xdata()) == [1, 2, 3]
    np.testing.assert_allclose(line.get_ydata(), logs["learning_rate"])
    assert loss.get_title() == "Loss"


def test_history_constant_learning_rate_has_no_second_axis():
    fig = plot.history({"loss": [1.0, 0.8], "learning_rate": [1e-3, 1e-3]})
    assert len(fig.axes) == 2
    assert fig.axes[1].get_title() == "Loss (learning rate 0.001, constant)"
    fig = plot.history({"loss": [1.0, 0.8]})                      # no rate logged: nothing said
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "Loss"


def test_history_of_no_epoch_says_so():
    with pytest.raises(ValueError, match=r"no 'loss' or 'accuracy' values \(was any epoch "
                                         r"trained\?\), received keys \[\]"):
        plot.history(History())                  # fit(epochs=0) returns an empty History
    with pytest.raises(ValueError, match="was any epoch trained"):
        plot.history({"loss": [], "val_loss": []})
    with pytest.raises(ValueError, match=r"history\['loss'\] must be a list of numbers"):
        plot.history({"loss": ["a", "b"]})


# ----------------------------------------------------------------------------- filters
def test_filters_rgb_tiles_normalised_per_filter(tmp_path, model):
    path = tmp_path / "filters.png"
    fig = plot.filters(model.layers[0], path)
    assert_png(path)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["0", "1", "2", "3"]
    kernel = model.layers[0].params["kernel"]
    for i, ax in enumerate(fig.axes):
        assert ax.images[0].get_interpolation() == "nearest"
        tile = np.asarray(ax.images[0].get_array())
        assert tile.shape == (24, 24, 3)                    # 3x3 weights, 8x8 pixels each
        k = kernel[:, :, :, i]
        normalised = (k - k.min()) / (k.max() - k.min())    # this filter's own min and max
        np.testing.assert_allclose(tile, np.kron(normalised, np.ones((8, 8, 1))), atol=1e-6)
        assert tile.min() == pytest.approx(0) and tile.max() == pytest.approx(1)
    assert "conv" in fig._suptitle.get_text()
    assert "each scaled to [0, 1] on its own" in fig._suptitle.get_text()


def test_filters_each_normalised_on_its_own():
    """A filter of tiny weights beside one of large weights: both span [0, 1]."""
    conv = layers.Conv2D(2, 5, input_shape=(8, 8, 3))
    conv.build((8, 8, 3))
    k = np.arange(5 * 5 * 3 * 2, dtype=np.float32).reshape(5, 5, 3, 2)
    k[..., 0] *= 1e-4
    k[..., 1] = 100.0 - k[..., 1]
    conv.params["kernel"][...] = k
    fig = plot.filters(conv)
    for i, ax in enumerate(fig.axes):
        tile = np.asarray(ax.images[0].get_array())
        assert tile.shape == (25, 25, 3)                    # ceil(24 / 5) = 5 pixels a weight
        assert tile.min() == pytest.approx(0) and tile.max() == pytest.approx(1)
        ki = k[..., i]
        np.testing.assert_allclose(tile[::5, ::5], (ki - ki.min()) / np.ptp(ki), atol=1e-6)


def test_filters_grayscale_for_other_channel_counts_and_model_argument():
    m = models.Sequential([layers.Conv2D(6, 3, input_shape=(5, 5, 2)), layers.Flatten()])
    fig = plot.filters(m)      # a model: its first Conv2D
    assert len(image_axes(fig)) == 6
    tile = np.asarray(fig.axes[0].images[0].get_array())
    assert tile.shape == (24, 24)
    assert tile.min() == pytest.approx(0) and tile.max() == pytest.approx(1)


def test_filters_rejects_layers_without_4d_kernel(model):
    with pytest.raises(ValueError, match=r"4-D kernel.*kernel of shape \(36, 3\)"):
        plot.filters(model.layers[3])
    with pytest.raises(ValueError, match="not built"):
        plot.filters(layers.Conv2D(2, 3))
    with pytest.raises(ValueError, match="no layer with a 4-D kernel"):
        plot.filters(models.Sequential([layers.Dense(2, input_shape=(3,))]))


# ----------------------------------------------------------------------------- feature maps
def test_feature_maps_default_is_first_conv(tmp_path, model, rng):
    image = rng.random((8, 8, 3))
    path = tmp_path / "maps.png"
    fig = plot.feature_maps(model, image, path)
    assert_png(path)
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes] == ["0", "1", "2", "3"]
    assert "conv" in fig._suptitle.get_text()
    expected = model.layers[0].forward(image[None].astype(np.float32))[0]
    for ch, ax in enumerate(fig.axes):
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), expected[:, :, ch],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["pool", 1, -3])
def test_feature_maps_layer_by_name_or_index(model, rng, which):
    fig = plot.feature_maps(model, rng.random((8, 8, 3)), layer=which, max_maps=3)
    assert len(fig.axes) == 3                       # max_maps of the 4 channels
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (3, 3)
    assert "pool" in fig._suptitle.get_text() and "first 3 shown" in fig._suptitle.get_text()


def test_feature_maps_errors(model, rng):
    image = rng.random((8, 8, 3))
    with pytest.raises(ValueError, match=r"no layer named 'nope'; layers are \['conv'"):
        plot.feature_maps(model, image, layer="nope")
    with pytest.raises(ValueError, match=r"layer 'out' \(Dense\) outputs shape \(3,\), not images"):
        plot.feature_maps(model, image, layer="out")
    with pytest.raises(ValueError, match=r"layer index must be in \[-4, 3\], received 7"):
        plot.feature_maps(model, image, layer=7)
    with pytest.raises(ValueError, match=r"input shape \(8, 8, 3\), received shape \(9, 9, 3\)"):
        plot.feature_maps(model, rng.random((9, 9, 3)))
    with pytest.raises(ValueError, match=r"must have shape \(h, w, c\), received shape \(64,\)"):
        plot.feature_maps(model, rng.random(64))
    with pytest.raises(ValueError, match="max_maps must be an integer >= 1, received 0"):
        plot.feature_maps(model, image, max_maps=0)
    no_conv = models.Sequential([layers.MaxPooling2D(2, input_shape=(4, 4, 1))])
    with pytest.raises(ValueError, match="no Conv2D layer"):
        plot.feature_maps(no_conv, np.zeros((4, 4, 1)))


# ----------------------------------------------------------------------------- confusion matrix
def counts_by_loop(t, p, k):
    cm = np.zeros((k, k))
    for a, b in zip(t, p):
        cm[a, b] += 1
    return cm


def test_confusion_matrix_normalised(tmp_path, rng):
    y_true = rng.integers(0, 3, size=(40, 1)).astype(np.uint8)       # (n, 1) like the datasets
    y_prob = rng.random((40, 3))                                      # probabilities: argmax
    path = tmp_path / "cm.png"
    fig = plot.confusion_matrix(y_true, y_prob, NAMES, path)
    assert_png(path)
    assert len(fig.axes) == 2                                         # matrix + colorbar
    ax = fig.axes[0]
    t, p = y_true[:, 0], y_prob.argmax(axis=1)
    cm = counts_by_loop(t, p, 3)
    norm = cm / cm.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), norm)
    assert [tl.get_text() for tl in ax.get_xticklabels()] == NAMES
    ylabels = [tl.get_text() for tl in ax.get_yticklabels()]
    for name, label, i in zip(NAMES, ylabels, range(3)):
        assert label == f"{name} ({norm[i, i]:.0%})"
    assert ax.get_xlabel() == "Predicted label"
    assert ax.get_ylabel().startswith("True label")
    acc = np.mean(t == p)
    assert f"accuracy {acc:.1%}" in ax.get_title()
    assert f"({int(np.sum(t == p))}/40)" in ax.get_title()
    assert len(ax.texts) == 9 and ax.texts[0].get_text() == f"{norm[0, 0]:.2f}"


def test_confusion_matrix_counts_and_one_hot_equal_int_labels(rng):
    t = rng.integers(0, 4, 30)
    p = rng.integers(0, 4, 30)
    fig = plot.confusion_matrix(np.eye(4)[t], p, normalize=False)
    ax = fig.axes[0]
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), counts_by_loop(t, p, 4))
    assert [tl.get_text() for tl in ax.get_xticklabels()] == ["0", "1", "2", "3"]
    assert ax.texts[0].get_text() == str(int(counts_by_loop(t, p, 4)[0, 0]))
    assert "counts" in ax.get_title()


def test_confusion_matrix_class_without_examples_says_na():
    fig = plot.confusion_matrix([0, 0, 1], [0, 1, 1], ["a", "b", "c"])
    assert [tl.get_text() for tl in fig.axes[0].get_yticklabels()] == ["a (50%)", "b (100%)",
                                                                        "c (n/a)"]


def test_confusion_matrix_errors():
    with pytest.raises(ValueError, match="same length, received 3 and 2"):
        plot.confusion_matrix([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match=r"class_names has 2 names but the labels need 3"):
        plot.confusion_matrix([0, 1, 2], [0, 1, 1], ["a", "b"])
    with pytest.raises(ValueError, match=r"y_true must hold integer labels >= 0"):
        plot.confusion_matrix([0, -1], [0, 1])
    with pytest.raises(ValueError, match=r"y_pred must have shape \(n,\), \(n, 1\) or \(n, k\), "
                                         r"received shape \(2, 1, 1\)"):
        plot.confusion_matrix([0, 1], np.zeros((2, 1, 1)))
    with pytest.raises(ValueError, match="empty"):
        plot.confusion_matrix([], [])


# ----------------------------------------------------------------------------- misclassified
def test_misclassified_uint8(tmp_path, rng):
    images = rng.integers(0, 256, size=(10, 6, 6, 3), dtype=np.uint8)
    y_true = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    y_pred = np.array([0, 2, 2, 1, 1, 2, 0, 0, 2, 0])        # wrong at 1, 3, 7
    path = tmp_path / "wrong.png"
    fig = plot.misclassified(images, y_true.reshape(-1, 1), np.eye(3)[y_pred], NAMES, path)
    assert_png(path)
    # one-hot predictions: all equally confident (100%), so the images keep their order
    assert [ax.get_title() for ax in fig.axes] == ["pred: bird 100%\ntrue: dog",
                                                   "pred: dog 100%\ntrue: cat",
                                                   "pred: cat 100%\ntrue: dog"]
    np.testing.assert_allclose(np.asarray(fig.axes[0].images[0].get_array()), images[1] / 255.0)
    assert "3 of 10 misclassified" in fig._suptitle.get_text()


def test_worst_errors_most_confident_wrong_first(rng):
    y_true = np.array([0, 1, 2, 0, 1, 2, 0])
    y_prob = np.array([[0.9, 0.05, 0.05],     # right
                       [0.6, 0.3, 0.1],       # wrong, 0.6
                       [0.1, 0.1, 0.8],       # right
                       [0.2, 0.7, 0.1],       # wrong, 0.7
                       [0.4, 0.35, 0.25],     # wrong, 0.4
                       [0.05, 0.9, 0.05],     # wrong, 0.9: the worst
                       [0.3, 0.6, 0.1]])      # wrong, 0.6: ties with 1, comes after it
    order = plot.worst_errors(y_true, y_prob)
    assert order.tolist() == [5, 3, 1, 6, 4]
    assert plot.worst_errors(np.eye(3)[y_true], y_prob).tolist() == [5, 3, 1, 6, 4]
    assert plot.worst_errors(y_true, y_prob.argmax(axis=1)).tolist() == [1, 3, 4, 5, 6]
    # against a naive sort on random probabilities
    probs = rng.random((200, 5))
    probs /= probs.sum(axis=1, keepdims=True)
    labels = rng.integers(0, 5, 200)
    wrong = [i for i in range(200) if probs[i].argmax() != labels[i]]
    naive = sorted(wrong, key=lambda i: (-probs[i].max(), i))
    assert plot.worst_errors(labels, probs).tolist() == naive
    with pytest.raises(ValueError, match="same length, received 7 and 2"):
        plot.worst_errors(y_true, y_prob[:2])


def test_misclassified_shows_the_worst_first_with_probabilities(tmp_path):
    images = np.zeros((4, 4, 4, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = [10, 20, 30, 40]                     # tell the images apart
    y_true = np.array([0, 1, 2, 0])
    y_prob = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.05, 0.9, 0.05], [0.1, 0.1, 0.8]])
    path = tmp_path / "worst.png"
    fig = plot.misclassified(images, y_true, y_prob, NAMES, path, max_images=2)
    assert_png(path)
    assert [ax.get_title() for ax in fig.axes] == ["pred: dog 90%\ntrue: bird",
                                                   "pred: bird 80%\ntrue: cat"]
    assert np.asarray(fig.axes[0].images[0].get_array())[0, 0, 0] == pytest.approx(30 / 255)
    assert np.asarray(fig.axes[1].images[0].get_array())[0, 0, 0] == pytest.approx(40 / 255)
    assert fig._suptitle.get_text() == ("3 of 4 misclassified (the first 2 shown, most "
                                        "confident first)")


def test_misclassified_float_gray_and_max_images(rng):
    images = rng.random((30, 5, 5, 1))
    y_true = np.zeros(30, dtype=int)
    y_pred = np.ones(30, dtype=int)
    fig = plot.misclassified(images, y_true, y_pred, max_images=7)
    assert len(fig.axes) == 7
    assert fig.axes[0].get_title() == "pred: 1\ntrue: 0"      # labels: no probability
    assert np.asarray(fig.axes[0].images[0].get_array()).shape == (5, 5)
    assert "first 7 shown" in fig._suptitle.get_text()


def test_misclassified_none_wrong(tmp_path):
    path = tmp_path / "none.png"
    fig = plot.misclassified(np.zeros((2, 4, 4, 3)), [0, 1], [0, 1], path=path)
    assert_png(path)
    assert len(fig.axes) == 1
    assert "no misclassified images (2 of 2 correct)" in fig.axes[0].texts[0].get_text()


def test_misclassified_errors(rng):
    images = rng.random((3, 4, 4, 3))
    with pytest.raises(ValueError, match="same length, received 3, 2 and 3"):
        plot.misclassified(images, [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\].*received values "
                                         r"in \[0, 255\]"):
        plot.misclassified(images * 0 + np.array([0, 255, 0]), [0, 1, 0], [1, 1, 0])
    with pytest.raises(ValueError, match=r"c 1 or 3, received shape \(3, 4, 4, 2\)"):
        plot.misclassified(rng.random((3, 4, 4, 2)), [0, 1, 0], [1, 1, 0])
    with pytest.raises(ValueError, match="max_images must be an integer >= 1, received 0"):
        plot.misclassified(images, [0, 1, 0], [1, 1, 0], max_images=0)


# ----------------------------------------------------------------------------- headless
def test_path_without_extension_is_png_and_bad_path_type(tmp_path):
    path = tmp_path / "curves"
    plot.history({"loss": [1.0, 0.5]}, path)
    assert_png(path)
    with pytest.raises(ValueError, match="path must be a file name.*received 42"):
        plot.history({"loss": [1.0]}, 42)


def test_never_imports_pyplot(tmp_path):
    code = ("import sys, numpy as np\n"
            "from minicnn import plot\n"
            f"plot.confusion_matrix([0, 1, 1], [0, 1, 0], path={str(tmp_path / 'c.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot was imported'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
    assert_png(tmp_path / "c.png")
