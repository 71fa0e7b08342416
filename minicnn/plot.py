"""Plots for training and inspection: learning curves, filters, feature maps, confusion
matrices and misclassified images.

Every function builds a :class:`matplotlib.figure.Figure` on an Agg canvas (never
``pyplot``), so it works without a display and leaves a user's pyplot state alone.
Each one saves the figure to ``path`` when a path is given (PNG, or the format of the
file extension matplotlib knows, such as ``.pdf`` or ``.svg``) and returns the Figure::

    from minicnn import plot
    history = model.fit(x_train, y_train, epochs=10, validation_data=(x_test, y_test))
    plot.history(history, "history.png")
    plot.filters(model.layers[0], "filters.png")
    plot.feature_maps(model, x_test[0] / 255.0, "maps.png")
    y_prob = model.predict(x_test / 255.0)
    plot.confusion_matrix(y_test, y_prob, class_names, "confusion.png")
    plot.misclassified(x_test, y_test, y_prob, class_names, "mistakes.png")

Labels (``y_true``, ``y_pred``) may be integer labels ``(n,)`` or ``(n, 1)``, or one-hot
labels / predicted probabilities ``(n, k)``, which are reduced with ``argmax``.
"""
from __future__ import annotations

import math
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from .callbacks import ModelCheckpoint

__all__ = ["history", "best_epoch", "filters", "feature_maps", "confusion_matrix",
           "misclassified", "worst_errors"]

#: cells of a confusion matrix are annotated only up to this many classes
MAX_ANNOTATED_CLASSES = 30


# ----------------------------------------------------------------------------- learning curves
def history(history, path=None, monitor=None, mode="auto"):
    """Accuracy and loss against the epoch (1-based), training beside validation, with the
    best epoch marked and the learning rate on a second axis when a schedule ran.

    Parameters
    ----------
    history : :class:`minicnn.callbacks.History` (what ``fit`` returns) or a dict
        mapping 'loss', 'accuracy' (or 'acc'), 'val_loss', 'val_accuracy' and optionally
        'learning_rate' to lists of per-epoch values. Missing entries are not drawn.
    path : str or os.PathLike, optional
    monitor : the metric whose best epoch is marked, e.g. 'val_accuracy' (what
        ``minicnn train`` checkpoints); default 'val_loss' (Keras's ModelCheckpoint
        default), or 'loss' without validation. See :func:`best_epoch`.
    mode : 'auto', 'min' or 'max', as for :class:`minicnn.callbacks.ModelCheckpoint`.

    The best epoch is a dotted vertical line on both axes, labelled 'best epoch E
    (monitor V)'. 'learning_rate' (logged by ``fit`` when the optimizer has a schedule:
    the rate of the next step, read at the end of each epoch) is drawn on a second y axis
    of the loss plot, labelled 'learning rate', when it varies; a constant rate is only
    named in the loss plot's title.

    Returns
    -------
    Figure with the axes 'Accuracy' and 'Loss' (x label 'Epoch'), plus the learning-rate
    axis (a twin of 'Loss') when a schedule ran.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise ValueError(f"plot.history: history must be a History (what fit returns) or a dict "
                         f"of per-epoch lists, received {type(history).__name__}")
    acc_key = next((k for k in ("accuracy", "acc") if k in logs), None)
    series = {}
    for label, key in (("acc", acc_key), ("val_acc", acc_key and "val_" + acc_key),
                       ("loss", "loss"), ("val_loss", "val_loss")):
        if key is not None and key in logs:
            series[label] = _as_series(logs[key], key)
    if not series or not any(len(v) for v in series.values()):
        raise ValueError(f"plot.history: history holds no 'loss' or 'accuracy' values (was any "
                         f"epoch trained?), received keys {sorted(logs)}")
    if monitor is None:
        monitor = "val_loss" if "val_loss" in logs else "loss"
    elif monitor not in logs:
        raise ValueError(f"plot.history: monitor {monitor!r} is not in the history, received "
                         f"keys {sorted(logs)}")
    best = best_epoch(logs, monitor, mode)

    fig = _figure((11, 4))
    ax_acc, ax_loss = fig.subplots(1, 2)
    for ax, name, train, val in ((ax_acc, "Accuracy", "acc", "val_acc"),
                                 (ax_loss, "Loss", "loss", "val_loss")):
        drawn = False
        for key, label, style in ((train, "train", "o-"), (val, "validation", "s--")):
            if key in series:
                values = series[key]
                ax.plot(np.arange(1, len(values) + 1), values, style, label=label, markersize=4)
                drawn = True
        if drawn and best is not None:
            value = float(np.asarray(logs[monitor], dtype=np.float64)[best - 1])
            ax.axvline(best, color="tab:green", linestyle=":", linewidth=1.5,
                       label=f"best epoch {best} ({monitor} {value:.4g})")
        if drawn:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name.lower()} recorded", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set_title(name)
        ax.set_xlabel("Epoch")
        ax.set_ylabel(name)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if "learning_rate" in logs:
        lr = _as_series(logs["learning_rate"], "learning_rate")
        if len(lr) and np.ptp(lr) > 1e-6 * np.max(np.abs(lr)):
            ax_lr = ax_loss.twinx()
            ax_lr.plot(np.arange(1, len(lr) + 1), lr, "-", color="tab:gray", alpha=0.7,
                       linewidth=1, label="learning rate")
            ax_lr.set_ylabel("learning rate", color="tab:gray")
            ax_lr.tick_params(axis="y", colors="tab:gray")
            ax_lr.set_ylim(bottom=0)
            ax_lr.legend(loc="upper center", fontsize=8)
        elif len(lr):
            ax_loss.set_title(f"Loss (learning rate {lr[0]:.3g}, constant)")
    return _finish(fig, path)


def best_epoch(history, monitor="val_loss", mode="auto"):
    """The 1-based epoch that :class:`minicnn.callbacks.ModelCheckpoint` with
    ``save_best_only=True`` keeps: the first epoch whose ``monitor`` value beats every
    earlier one (strictly; a tie keeps the earlier epoch), the highest for accuracies and
    the lowest for losses (``mode='auto'``). None when the history has no such value
    (``monitor`` absent or empty). A NaN is never better than a number, as in the checkpoint
    (a NaN first epoch stays best: nothing compares better than it).

    ``history``: a History or a dict of per-epoch lists.
    """
    logs = getattr(history, "history", history)
    if not isinstance(logs, dict):
        raise ValueError(f"plot.best_epoch: history must be a History or a dict of per-epoch "
                         f"lists, received {type(history).__name__}")
    if monitor not in logs:
        return None
    rule = ModelCheckpoint(os.devnull, monitor=monitor, save_best_only=True, mode=mode).mode
    best, epoch = None, None
    for i, v in enumerate(_as_series(logs[monitor], monitor)):
        if best is None or (v > best if rule == "max" else v < best):
            best, epoch = v, i + 1
    return epoch


def _as_series(values, key):
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"plot.history: history[{key!r}] must be a list of numbers, "
                         f"received {values!r}") from None
    return arr


# ----------------------------------------------------------------------------- filters
#: a filter tile is enlarged to at least this many pixels a side, by whole-pixel repeats
FILTER_TILE_PIXELS = 24


def filters(layer, path=None):
    """The kernels of a Conv2D layer as a grid of image tiles, one per filter, labelled by
    the filter index.

    Parameters
    ----------
    layer : a built Conv2D layer (``layer.params['kernel']`` of shape ``(kh, kw, c, f)``),
        or a model, whose first layer with such a kernel is used.
    path : str or os.PathLike, optional

    Each filter is min-max normalised on its own, ``(k - k.min()) / (k.max() - k.min())``
    (so the tiles compare patterns, not magnitudes; a constant filter is mid-grey), and
    enlarged by repeating every weight ``s x s`` times (``s = ceil(24 / max(kh, kw))``:
    a 3x3 kernel becomes 24x24 pixels of 8x8 blocks, drawn with nearest-neighbour
    interpolation, so no smoothing blurs the weights together). With ``c == 3`` a filter
    is drawn in colour (the RGB weights of the first layer); otherwise the mean over the
    input channels is drawn in grey. Bright means a large weight.

    Returns
    -------
    Figure with ``f`` axes titled '0', '1', ... (the filter index); each holds one image
    of shape ``(kh*s, kw*s, 3)`` or ``(kh*s, kw*s)`` with values in [0, 1].
    """
    if hasattr(layer, "walk_layers"):          # a model
        conv = next((l for l in layer.walk_layers() if _kernel4(l) is not None), None)
        if conv is None:
            raise ValueError(f"plot.filters: the model has no layer with a 4-D kernel "
                             f"(kh, kw, c, f); received layers "
                             f"{[type(l).__name__ for l in layer.layers]}")
        layer = conv
    kernel = _kernel4(layer)
    if kernel is None:
        params = getattr(layer, "params", None)
        got = (f"kernel of shape {np.shape(params['kernel'])}"
               if isinstance(params, dict) and "kernel" in params else "no kernel (not built?)")
        raise ValueError(f"plot.filters: layer must be a built Conv2D layer with a 4-D kernel "
                         f"(kh, kw, c, f), received {layer!r} with {got}")
    kh, kw, c, f = kernel.shape
    kernel = np.asarray(kernel, dtype=np.float64)
    scale = max(1, math.ceil(FILTER_TILE_PIXELS / max(kh, kw)))
    fig, axes = _grid(f, tile=1.1, title_space=0.3)
    for i, ax in enumerate(axes):
        k = kernel[:, :, :, i] if c == 3 else kernel[:, :, :, i].mean(axis=2)
        tile = np.repeat(np.repeat(_minmax(k), scale, axis=0), scale, axis=1)
        if c == 3:
            ax.imshow(tile, interpolation="nearest")
        else:
            ax.imshow(tile, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(str(i), fontsize=8, pad=2)
    mode = "RGB" if c == 3 else ("grey" if c == 1 else f"mean of {c} channels")
    fig.suptitle(f"{getattr(layer, 'name', 'conv')}: {f} filters {kh}x{kw}x{c} ({mode}), "
                 f"each scaled to [0, 1] on its own")
    return _finish(fig, path)


def _kernel4(layer):
    params = getattr(layer, "params", None)
    if not isinstance(params, dict):
        return None
    kernel = params.get("kernel")
    return kernel if isinstance(kernel, np.ndarray) and kernel.ndim == 4 else None


def _minmax(a):
    lo, hi = float(a.min()), float(a.max())
    return np.zeros_like(a) + 0.5 if hi == lo else (a - lo) / (hi - lo)


# ----------------------------------------------------------------------------- feature maps
def feature_maps(model, image, path=None, layer=None, max_maps=32):
    """The output channels of one layer for one image, as a grid of tiles.

    Parameters
    ----------
    model : a :class:`minicnn.models.Sequential` (anything with ``.layers``)
    image : array (h, w, c) (or (1, h, w, c)), preprocessed as the model's training
        inputs were (e.g. divided by 255); it is not rescaled here.
    path : str or os.PathLike, optional
    layer : name (str), index (int, negative counts from the end) or the layer object
        itself; default: the first Conv2D layer. Its output must be images (h, w, c).
    max_maps : int >= 1, the number of channels shown (the first ones)

    The image runs through ``layer.forward(x, training=False)`` of every layer up to
    and including the chosen one.

    Returns
    -------
    Figure with ``min(channels, max_maps)`` axes titled by channel index.
    """
    layers_ = list(getattr(model, "layers", None) or [])
    if not layers_:
        raise ValueError(f"plot.feature_maps: model must be a model with layers, "
                         f"received {type(model).__name__}")
    if isinstance(max_maps, bool) or not isinstance(max_maps, (int, np.integer)) or max_maps < 1:
        raise ValueError(f"plot.feature_maps: max_maps must be an integer >= 1, "
                         f"received {max_maps!r}")
    x = np.asarray(image)
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"plot.feature_maps: image must have shape (h, w, c), "
                         f"received shape {np.shape(image)}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"plot.feature_maps: image must be a real numeric array, "
                         f"received dtype {x.dtype}")
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape) != tuple(expected):
        raise ValueError(f"plot.feature_maps: image must have the model's input shape "
                         f"{tuple(expected)}, received shape {x.shape}")
    index = _layer_index(layers_, layer)
    chosen = layers_[index]

    out = x[None]
    for lay in layers_[:index + 1]:
        out = lay.forward(out, training=False)
    maps = np.asarray(out[0], dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"plot.feature_maps: layer {chosen.name!r} ({type(chosen).__name__}) "
                         f"outputs shape {maps.shape}, not images (h, w, c); choose a "
                         f"Conv2D or pooling layer")
    h, w, c = maps.shape
    shown = min(c, int(max_maps))
    fig, axes = _grid(shown, tile=1.4, title_space=0.45)
    for ch, ax in enumerate(axes):
        ax.imshow(maps[:, :, ch], cmap="viridis", interpolation="nearest")
        ax.set_title(str(ch), fontsize=8)
    more = f", first {shown} shown" if shown < c else ""
    fig.suptitle(f"{chosen.name} ({type(chosen).__name__}): output {h}x{w}x{c}{more}")
    return _finish(fig, path)


def _layer_index(layers_, layer):
    names = [l.name for l in layers_]
    if layer is None:
        for i, l in enumerate(layers_):
            if type(l).__name__ == "Conv2D" or _kernel4(l) is not None:
                return i
        raise ValueError(f"plot.feature_maps: the model has no Conv2D layer; pass layer= "
                         f"(a name or index), layers are {names}")
    if isinstance(layer, str):
        if layer not in names:
            raise ValueError(f"plot.feature_maps: no layer named {layer!r}; layers are {names}")
        return names.index(layer)
    if isinstance(layer, (int, np.integer)) and not isinstance(layer, bool):
        if not -len(layers_) <= layer < len(layers_):
            raise ValueError(f"plot.feature_maps: layer index must be in "
                             f"[{-len(layers_)}, {len(layers_) - 1}], received {layer}")
        return int(layer) % len(layers_)
    for i, l in enumerate(layers_):
        if l is layer:
            return i
    raise ValueError(f"plot.feature_maps: layer must be a layer name, an index or a layer of "
                     f"the model, received {layer!r}")


# ----------------------------------------------------------------------------- confusion matrix
def confusion_matrix(y_true, y_pred, class_names=None, path=None, normalize=True):
    """The confusion matrix as an image: true class down, predicted class across.

    Parameters
    ----------
    y_true, y_pred : int labels (n,) or (n, 1), or one-hot / probabilities (n, k)
    class_names : sequence of str, optional (default '0', '1', ...); one per class
    path : str or os.PathLike, optional
    normalize : bool. True: each row divided by its sum, so a cell is the fraction of
        that true class predicted as the column's class and the diagonal is the
        per-class accuracy (recall). False: counts.

    The y tick labels carry each class's accuracy, e.g. 'cat (54%)'; the title gives the
    overall accuracy. Cells are annotated when there are at most 30 classes.

    Returns
    -------
    Figure with two axes: the matrix and its colorbar.
    """
    what = "plot.confusion_matrix"
    t, k_true, p, k_pred = _label_pair(y_true, y_pred, what)
    if len(t) == 0:
        raise ValueError(f"{what}: y_true and y_pred are empty")
    names = _class_names(class_names, max(k_true, k_pred, int(max(t.max(), p.max())) + 1), what)
    k = len(names)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (t, p), 1)
    row = counts.sum(axis=1)
    recall = np.divide(np.diag(counts), row, out=np.zeros(k), where=row > 0)
    values = (np.divide(counts, row[:, None], out=np.zeros((k, k)), where=row[:, None] > 0)
              if normalize else counts)

    side = min(max(4.0, 0.55 * k + 2.5), 16.0)
    fig = _figure((side + 1.5, side))
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(int(counts.max()), 1))
    fig.colorbar(im, ax=ax, label="fraction of the true class" if normalize else "count")
    ax.set_xticks(np.arange(k), labels=names, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(np.arange(k), labels=[
        f"{name} ({r:.0%})" if n else f"{name} (n/a)" for name, r, n in zip(names, recall, row)])
    ax.set_xlabel("Predicted label")
    ax.set_ylabel("True label (per-class accuracy)")
    if k <= MAX_ANNOTATED_CLASSES:
        threshold = (1 if normalize else counts.max()) / 2
        for i in range(k):
            for j in range(k):
                text = f"{values[i, j]:.2f}" if normalize else str(counts[i, j])
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if values[i, j] > threshold else "black")
    correct = int(np.trace(counts))
    kind = "row-normalised" if normalize else "counts"
    ax.set_title(f"Confusion matrix ({kind}): accuracy {correct / len(t):.1%} "
                 f"({correct}/{len(t)})")
    return _finish(fig, path)


def _labels(y, arg, what):
    """Integer labels (n,) from (n,), (n, 1) or one-hot / probabilities (n, k), and the
    number of classes the shape tells (k, or 0 for integer labels)."""
    y = np.asarray(y)
    if not np.issubdtype(y.dtype, np.number) or np.issubdtype(y.dtype, np.complexfloating):
        raise ValueError(f"{what}: {arg} must be numeric labels, received dtype {y.dtype}")
    if y.ndim == 2 and y.shape[1] > 1:
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{what}: {arg} holds NaN or inf")
        return np.argmax(y, axis=1).astype(np.int64), y.shape[1]
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"{what}: {arg} must have shape (n,), (n, 1) or (n, k), "
                         f"received shape {y.shape}")
    if y.size and (not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or y.min() < 0):
        raise ValueError(f"{what}: {arg} must hold integer labels >= 0 (or one-hot rows), "
                         f"received values such as {y[:5].tolist()}")
    return y.astype(np.int64), 0


def _label_pair(y_true, y_pred, what):
    """:func:`_labels` of both, checked to be as long as each other:
    ``(t, k_true, p, k_pred)``."""
    t, k_true = _labels(y_true, "y_true", what)
    p, k_pred = _labels(y_pred, "y_pred", what)
    if len(t) != len(p):
        raise ValueError(f"{what}: y_true and y_pred must have the same length, received "
                         f"{len(t)} and {len(p)}")
    return t, k_true, p, k_pred


def _class_names(class_names, k, what):
    if class_names is None:
        return [str(i) for i in range(k)]
    if isinstance(class_names, str) or not hasattr(class_names, "__len__"):
        raise ValueError(f"{what}: class_names must be a sequence of names, "
                         f"received {class_names!r}")
    names = [str(n) for n in class_names]
    if len(names) < k:
        raise ValueError(f"{what}: class_names has {len(names)} names but the labels need {k} "
                         f"(labels run up to {k - 1}), received {class_names!r}")
    return names


# ----------------------------------------------------------------------------- misclassified
def worst_errors(y_true, y_pred):
    """The indices of the misclassified examples, worst first.

    The worst error is the most confident wrong prediction: examples are ordered by the
    probability the model gave its (wrong) predicted class, highest first; equal
    probabilities keep the examples' order. With integer labels for ``y_pred`` (no
    probabilities) the order is the examples' order.

    Parameters
    ----------
    y_true : int labels (n,) or (n, 1), or one-hot (n, k)
    y_pred : probabilities (n, k) (what ``model.predict`` returns), or int labels

    Returns
    -------
    int64 array of the indices ``i`` with ``argmax y_pred[i] != y_true[i]``.
    """
    what = "plot.worst_errors"
    t, _, p, _ = _label_pair(y_true, y_pred, what)
    wrong = np.flatnonzero(t != p)
    confidence = _confidence(y_pred, p)
    if confidence is None:
        return wrong.astype(np.int64)
    return wrong[np.argsort(-confidence[wrong], kind="stable")].astype(np.int64)


def _confidence(y_pred, p):
    """The probability of each predicted class ``p`` when ``y_pred`` is (n, k), else None."""
    y = np.asarray(y_pred)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.asarray(y, dtype=np.float64)[np.arange(len(p)), p]
    return None


def misclassified(images, y_true, y_pred, class_names=None, path=None, max_images=25):
    """The misclassified images, worst first (:func:`worst_errors`: the most confident
    wrong predictions first), at most ``max_images``, each titled with the predicted
    class and its probability over the true class: 'pred: dog 93%' / 'true: cat'.

    Parameters
    ----------
    images : (n, h, w, c) with c 1 or 3 (or (n, h, w)), uint8 in [0, 255] or float in [0, 1]
    y_true : int labels (n,) or (n, 1), or one-hot (n, k)
    y_pred : predicted probabilities (n, k) (``model.predict``), or int labels (then no
        probability is shown and the images keep their order)
    class_names : sequence of str, optional (default: the label numbers)
    path : str or os.PathLike, optional
    max_images : int >= 1

    Returns
    -------
    Figure with one axes per image shown (one axes with a note when nothing is wrong).
    """
    what = "plot.misclassified"
    if isinstance(max_images, bool) or not isinstance(max_images, (int, np.integer)) \
            or max_images < 1:
        raise ValueError(f"{what}: max_images must be an integer >= 1, received {max_images!r}")
    x = _images(images, what)
    t, k_true = _labels(y_true, "y_true", what)
    p, k_pred = _labels(y_pred, "y_pred", what)
    if not len(x) == len(t) == len(p):
        raise ValueError(f"{what}: images, y_true and y_pred must have the same length, "
                         f"received {len(x)}, {len(t)} and {len(p)}")
    k = max(k_true, k_pred, int(max(t.max(), p.max())) + 1 if len(t) else 0)
    names = _class_names(class_names, k, what)
    wrong = worst_errors(y_true, y_pred)
    confidence = _confidence(y_pred, p)
    shown = wrong[:int(max_images)]
    if len(shown) == 0:
        fig = _figure((4, 2))
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, f"no misclassified images ({len(t)} of {len(t)} correct)",
                ha="center", va="center", transform=ax.transAxes)
        return _finish(fig, path)
    fig, axes = _grid(len(shown), tile=1.9, title_space=0.5)
    for ax, i in zip(axes, shown):
        img = x[i]
        if img.shape[2] == 1:
            ax.imshow(img[:, :, 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(img, interpolation="nearest")
        prob = "" if confidence is None else f" {confidence[i]:.0%}"
        ax.set_title(f"pred: {names[p[i]]}{prob}\ntrue: {names[t[i]]}", fontsize=7)
    order = (", most confident first" if confidence is not None else "")
    fig.suptitle(f"{len(wrong)} of {len(t)} misclassified"
                 + (f" (the first {len(shown)} shown{order})" if len(shown) < len(wrong)
                    else (f" ({order[2:]})" if order else "")))
    return _finish(fig, path)


def _images(images, what):
    """Float images (n, h, w, c) in [0, 1] from uint8 or float input."""
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[3] not in (1, 3):
        raise ValueError(f"{what}: images must have shape (n, h, w, c) with c 1 or 3, "
                         f"received shape {np.shape(images)}")
    if np.issubdtype(x.dtype, np.integer) or x.dtype == np.bool_:
        if x.size and (x.min() < 0 or x.max() > 255):
            raise ValueError(f"{what}: integer images must lie in [0, 255], received values "
                             f"in [{x.min()}, {x.max()}]")
        return x.astype(np.float64) / 255.0
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{what}: images must be uint8 or float, received dtype {x.dtype}")
    if x.size and (not np.all(np.isfinite(x)) or x.min() < -1e-6 or x.max() > 1 + 1e-6):
        raise ValueError(f"{what}: float images must lie in [0, 1] (divide uint8 pixels by "
                         f"255), received values in [{np.nanmin(x):.4g}, {np.nanmax(x):.4g}]")
    return np.clip(x.astype(np.float64), 0.0, 1.0)


# ----------------------------------------------------------------------------- helpers
def _figure(figsize):
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)   # an Agg canvas: rendering never needs a display or pyplot
    return fig


def _grid(n, tile, title_space):
    """A figure with ``n`` image axes (ticks off) in a near-square grid; spare cells removed."""
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    fig = _figure((max(cols * tile, 4.0), rows * (tile + title_space) + 0.6))
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        fig.delaxes(ax)
    for ax in axes[:n]:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, list(axes[:n])


def _finish(fig, path):
    if path is not None:
        if not isinstance(path, (str, os.PathLike)):
            raise ValueError(f"plot: path must be a file name (str or os.PathLike) or None, "
                             f"received {path!r}")
        ext = os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
        known = fig.canvas.get_supported_filetypes()
        fig.savefig(path, format=ext if ext in known else "png", dpi=100)
    return fig
