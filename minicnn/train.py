"""The trainer behind ``minicnn train`` and ``examples/train_cifar10.py``.

By default it runs the seed recipe: the seed model (:func:`build_model`) on CIFAR-10,
Adam (learning rate 1e-3), batch 64, 15 epochs, the last 20% of the training images
held out for validation. It writes into ``out``:

- ``best.npz``: the model of the epoch with the best ``val_accuracy``
  (:class:`minicnn.callbacks.ModelCheckpoint`);
- ``last.npz`` and ``last.json``: the model after the latest epoch and the training
  state beside it (epochs done, history so far, best score, settings), rewritten every
  epoch, for ``--resume out/last.npz``;
- ``history.json``: per-epoch lists 'loss', 'accuracy', 'val_loss', 'val_accuracy',
  'seconds' and 'images_per_second'; after the test also 'test_loss',
  'test_accuracy' and 'best_epoch' (1-based);
- ``curves.png``, ``confusion_matrix.png``, ``misclassified.png``
  (:mod:`minicnn.plot`), all on the test set scored by the best checkpoint.

A run never overwrites another by accident. Without ``out`` it writes into
``runs/<dataset>``, or, when that folder already holds a run (any of the files above),
into the first of ``runs/<dataset>-2``, ``runs/<dataset>-3``, ... that holds none; the
folder is claimed atomically (:func:`claim_run_folder`), so runs started at the same
moment never share one. An ``out`` that holds a run is refused (:class:`TrainError`)
unless ``overwrite=True`` (``--overwrite``), which first deletes that run's files. ``resume`` writes into the
checkpoint's folder, as it continues the run there.

Use it from Python::

    from minicnn import train
    result = train.train(dataset="shapes", epochs=3, out="runs/shapes")
    result["test_accuracy"]

Preprocessing is the seed's, ``x / 255`` and one-hot labels, except that the images
are divided in float32 rather than float64: the model computes in float32 anyway (fit
casts each batch), and it halves the memory of the training set.

Resuming: ``last.npz`` holds the weights, the Adam moments and minicnn's global random
generator at the end of the epoch (:meth:`minicnn.models.Sequential.save`), so the
shuffling, dropout and augmentation of the next epochs are drawn exactly as in an
uninterrupted run and the weights come out bit-for-bit the same (same backend and
thread count).
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import sys
import time

import numpy as np

from . import config, layers, losses, models, optimizers, progress
from .callbacks import Callback, ModelCheckpoint
from .utils import to_categorical

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "mnist", "shapes")
COLOUR_DATASETS = ("cifar10", "cifar100", "shapes")

MODELS = ("seed", "resnet")
#: the seed recipe; a setting left at None takes the model's recipe value (RECIPES)
DEFAULTS = {"dataset": "cifar10", "data": None, "epochs": 15, "batch_size": 64, "lr": None,
            "augment": False, "dropout": 0.0, "seed": 0, "n_train": None, "n_test": None,
            "model": "seed", "label_smoothing": 0.0}
#: per model: the peak learning rate and the fraction of training images held out.
#: seed: Adam at a constant rate (the tutorial's recipe). resnet (models.zoo.resnet_cifar,
#: flips and translations always on): AdamW, weight decay 5e-4, the rate warming up
#: linearly from 1e-4 over the first 10% of the steps, then a cosine decay to 0.
RECIPES = {"seed": {"lr": 1e-3, "validation_split": 0.2},
           "resnet": {"lr": 3e-3, "validation_split": 0.1}}
VALIDATION_SPLIT = RECIPES["seed"]["validation_split"]

#: settings a resumed run must share with the run it continues
_FIXED_ON_RESUME = ("dataset", "batch_size", "lr", "augment", "dropout", "seed", "n_train",
                    "n_test", "model", "label_smoothing")
STATE_FORMAT = "minicnn-train-state"
STATE_VERSION = 1

#: what a run writes into its folder; a folder holding any of these holds a run
RUN_FILES = ("best.npz", "last.npz", "last.json", "history.json", "curves.png",
             "confusion_matrix.png", "misclassified.png")


class TrainError(Exception):
    """A problem with the settings or the inputs of a run (the CLI prints it and exits 2)."""


class DatasetUnavailableError(TrainError, FileNotFoundError):
    """The dataset is absent and could not be downloaded; the message says what was tried
    and how to go on (``--data`` or ``--dataset shapes``). Never replaced by another dataset."""


# ----------------------------------------------------------------------------- data
def load_dataset(name, path=None, n_train=None, n_test=None):
    """Load a dataset by name as uint8 NHWC images, integer labels and class names.

    Parameters
    ----------
    name : one of :data:`DATASETS`
    path : file or folder handed to the dataset's ``load_data(path=...)`` (not for 'shapes')
    n_train, n_test : keep only the first ``n`` images (for 'shapes': generate ``n``)

    Returns
    -------
    (x_train, y_train), (x_test, y_test), class_names
        ``x_*`` uint8 ``(n, h, w, c)`` (the MNIST family gets its channel axis:
        ``(n, 28, 28) -> (n, 28, 28, 1)``), ``y_*`` int64 ``(n,)``, ``class_names`` a
        list of str or None.

    Raises
    ------
    FileNotFoundError
        (a ``minicnn.datasets`` subclass) when the data is absent and cannot be downloaded.
    """
    if name not in DATASETS:
        raise TrainError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    module = importlib.import_module(f"minicnn.datasets.{name}")
    if name == "shapes":
        if path is not None:
            raise TrainError("--data does not apply to --dataset shapes: it is generated")
        kwargs = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
        (x_train, y_train), (x_test, y_test) = module.load_data(**kwargs)
    else:
        (x_train, y_train), (x_test, y_test) = module.load_data(path=path)
        if n_train is not None:
            x_train, y_train = x_train[:n_train], y_train[:n_train]
        if n_test is not None:
            x_test, y_test = x_test[:n_test], y_test[:n_test]
    if x_train.ndim == 3:
        x_train, x_test = x_train[..., None], x_test[..., None]
    y_train = np.asarray(y_train).reshape(-1).astype(np.int64)
    y_test = np.asarray(y_test).reshape(-1).astype(np.int64)
    names = getattr(module, "CLASS_NAMES", None)
    if isinstance(names, dict):          # CIFAR-100: {'fine': ..., 'coarse': ...}
        names = names.get("fine")
    return (x_train, y_train), (x_test, y_test), (list(names) if names is not None else None)


def preprocess(x, y, num_classes):
    """``x / 255`` in float32 and one-hot labels ``(n, num_classes)`` float32."""
    xf = x.astype(np.float32)
    xf /= np.float32(255.0)
    return xf, to_categorical(y, num_classes)


# ----------------------------------------------------------------------------- model
def build_model(input_shape, num_classes, dropout=0.0, augment=False):
    """The seed architecture for images of ``input_shape`` (h, w, c) and ``num_classes``.

    ``Conv2D(32) - MaxPool - Conv2D(64) - MaxPool - Conv2D(64) - Flatten - Dense(64) -
    Dense(num_classes, softmax)``, every Conv2D 3x3, 'same', ReLU; MaxPooling2D(2, 2).
    For 32x32 inputs the feature maps go 32 -> 16 -> 8, for 28x28 28 -> 14 -> 7.

    ``augment=True`` puts ``RandomFlip('horizontal')`` and ``RandomTranslation(0.1, 0.1)``
    in front (active in training only); ``dropout=r > 0`` puts ``Dropout(r)`` before each
    Dense layer.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if len(input_shape) != 3:
        raise TrainError(f"build_model: input_shape must be (h, w, c), received {input_shape}")
    if not 0.0 <= dropout < 1.0:
        raise TrainError(f"--dropout must be in [0, 1), received {dropout}")
    stack = []
    if augment:
        stack += [layers.RandomFlip("horizontal", input_shape=input_shape),
                  layers.RandomTranslation(0.1, 0.1)]
    first = {} if augment else {"input_shape": input_shape}
    stack += [
        layers.Conv2D(32, (3, 3), activation="relu", padding="same", **first),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(),
    ]
    for units, activation in ((64, "relu"), (num_classes, "softmax")):
        if dropout > 0:
            stack.append(layers.Dropout(dropout))
        stack.append(layers.Dense(units, activation=activation))
    return models.Sequential(stack)


def build_recipe(s, input_shape, num_classes, steps):
    """The model and optimizer of settings ``s`` (see :data:`RECIPES`); ``steps``: the
    optimizer steps of the whole run, for the resnet's schedule."""
    if s["model"] == "seed":
        return (build_model(input_shape, num_classes, s["dropout"], s["augment"]),
                optimizers.Adam(learning_rate=s["lr"]))
    from .models import zoo
    if len(input_shape) != 3:
        raise TrainError(f"--model resnet needs images (h, w, c), received {input_shape}")
    model = zoo.resnet_cifar(tuple(input_shape), num_classes, augment=s["dataset"] in
                             COLOUR_DATASETS, dropout=s["dropout"] or 0.2)
    warmup = max(steps // 10, 1)
    schedule = optimizers.schedules.CosineDecay(1e-4, decay_steps=max(steps - warmup, 1),
                                                warmup_target=s["lr"], warmup_steps=warmup)
    return model, optimizers.AdamW(learning_rate=schedule, weight_decay=5e-4)


# ----------------------------------------------------------------------------- callbacks
class EpochReport(Callback):
    """A progress bar while an epoch trains (on a terminal) and one line when it ends::

        Epoch 3/15 - 14.2s - 3012 images/s - loss: 1.0234 - accuracy: 0.6412 - val_loss: ...

    'seconds' is the whole epoch, validation included; 'images/s' counts the training
    images over the training part alone. The line ends with '*' when the best
    checkpoint was written, which a legend printed once before the first epoch says
    (``* = new best val_accuracy, saved to best.npz``). ``seconds`` and
    ``images_per_second`` keep the per-epoch figures.
    """

    def __init__(self, stream=None, checkpoint=None):
        super().__init__()
        self.stream = stream or sys.stdout
        self.checkpoint = checkpoint
        self.seconds, self.images_per_second = [], []
        self._legend_shown = False

    def legend(self):
        """The line that explains the '*' of the epoch lines (None without a checkpoint)."""
        if self.checkpoint is None:
            return None
        return (f"* = new best {self.checkpoint.monitor}, saved to "
                f"{os.path.basename(self.checkpoint.filepath)}")

    def on_epoch_begin(self, epoch, logs=None):
        if not self._legend_shown and self.legend() is not None:
            self.stream.write(self.legend() + "\n")
        self._legend_shown = True
        self._t0 = self._t_train = time.perf_counter()
        self._best_before = getattr(self.checkpoint, "best", None)
        self._bar = progress.Progbar(self.params["steps"], verbose=1, stream=self.stream)
        if self._bar.tty:
            self.stream.write(f"Epoch {epoch + 1}/{self.params['epochs']}\n")

    def on_train_batch_end(self, batch, logs=None):
        self._t_train = time.perf_counter()
        self._bar.update(batch + 1, {k: v for k, v in (logs or {}).items() if k != "batch_loss"})

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        seconds = now - self._t0
        rate = self.params["samples"] / max(self._t_train - self._t0, 1e-9)
        self.seconds.append(seconds)
        self.images_per_second.append(rate)
        order = ("loss", "accuracy", "val_loss", "val_accuracy")
        metrics = " - ".join(f"{k}: {logs[k]:.4f}" for k in order if k in (logs or {}))
        saved = self.checkpoint is not None and self.checkpoint.best != self._best_before
        if self._bar.tty:
            self.stream.write("\r" + " " * 120 + "\r")
        self.stream.write(f"Epoch {epoch + 1}/{self.params['epochs']} - {seconds:.1f}s - "
                          f"{rate:.0f} images/s - {metrics}{' *' if saved else ''}\n")
        self.stream.flush()


class TrainingState(Callback):
    """After each epoch: ``last.npz`` (model, optimizer, generator), ``last.json`` (epochs
    done, history, best score, settings) and ``history.json``.

    ``history`` starts from the history of the run being resumed, if any.
    """

    def __init__(self, out, settings, report, checkpoint, history=None, best_epoch=None):
        super().__init__()
        self.out, self.settings = out, settings
        self.report, self.checkpoint = report, checkpoint
        self.history = {k: list(v) for k, v in (history or {}).items()}
        self.best_epoch = best_epoch
        self.epochs_done = len(self.history.get("loss", []))

    def on_epoch_begin(self, epoch, logs=None):
        self._best_before = self.checkpoint.best

    def on_epoch_end(self, epoch, logs=None):
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(float(v))
        self.history.setdefault("seconds", []).append(round(self.report.seconds[-1], 3))
        self.history.setdefault("images_per_second", []).append(
            round(self.report.images_per_second[-1], 1))
        if self.checkpoint.best != self._best_before:     # ModelCheckpoint saved this epoch
            self.best_epoch = epoch + 1
        self.epochs_done = epoch + 1
        self.model.save(os.path.join(self.out, "last.npz"))
        write_json(os.path.join(self.out, "last.json"), {
            "format": STATE_FORMAT, "version": STATE_VERSION, "epochs_done": self.epochs_done,
            "best": self.checkpoint.best, "best_epoch": self.best_epoch,
            "settings": self.settings, "history": self.history})
        write_json(os.path.join(self.out, "history.json"), self.history)


def write_json(path, obj):
    """Write ``obj`` as JSON through a temporary file, so a crash never leaves half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, path)


def read_state(checkpoint):
    """The training state saved beside ``checkpoint`` (``<name>.json``)."""
    path = os.path.splitext(os.fspath(checkpoint))[0] + ".json"
    if not os.path.isfile(os.fspath(checkpoint)):
        raise TrainError(f"--resume: no such checkpoint {os.fspath(checkpoint)!r}")
    try:
        with open(path) as fh:
            state = json.load(fh)
    except FileNotFoundError:
        raise TrainError(f"--resume: {path!r} is missing: resume from the last.npz written by "
                         f"minicnn train (its training state lives in last.json)") from None
    except (OSError, ValueError) as exc:
        raise TrainError(f"--resume: cannot read {path!r}: {exc}") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise TrainError(f"--resume: {path!r} is not a minicnn training state")
    return state


# ----------------------------------------------------------------------------- output folder
def run_files_in(folder):
    """The names in :data:`RUN_FILES` that ``folder`` holds (an empty list if it is free)."""
    return [name for name in RUN_FILES if os.path.isfile(os.path.join(folder, name))]


def free_run_folder(base):
    """``base`` if it holds no run, else the first of ``base-2``, ``base-3``, ... that holds
    none (a folder being claimed by a run that has not written a file yet counts as holding
    one). Only a look: :func:`claim_run_folder` is the one that takes a folder."""
    for candidate in _numbered(base):
        if not _taken(candidate):
            return candidate


#: the file by which a run claims its folder before writing anything else (removed at the end)
CLAIM_FILE = ".minicnn-train-claim"


def claim_run_folder(base):
    """Take the first of ``base``, ``base-2``, ``base-3``, ... that holds no run, atomically.

    A folder is claimed by creating :data:`CLAIM_FILE` in it with ``O_CREAT | O_EXCL``:
    of several runs starting at once (two terminals, a job array), exactly one creates
    it and the others move on to the next number, so no two runs share a folder even
    when each saw it free (a missing or an empty folder). Returns the folder's path; the
    caller removes the claim when the run's own files are there (:func:`release_claim`).
    """
    for candidate in _numbered(base):
        if run_files_in(candidate):
            continue
        os.makedirs(candidate, exist_ok=True)
        try:
            fd = os.open(os.path.join(candidate, CLAIM_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:        # another run claimed it first
            continue
        os.close(fd)
        if run_files_in(candidate):    # a run that started earlier wrote its files and
            release_claim(candidate)   # released its claim between our look and our claim
            continue
        return candidate


def release_claim(folder):
    """Remove the claim :func:`claim_run_folder` left in ``folder`` (if any)."""
    try:
        os.remove(os.path.join(folder, CLAIM_FILE))
    except FileNotFoundError:
        pass


def _numbered(base):
    yield base
    number = 2
    while True:
        yield f"{base}-{number}"
        number += 1


def _taken(folder):
    return bool(run_files_in(folder)) or os.path.exists(os.path.join(folder, CLAIM_FILE))


# ----------------------------------------------------------------------------- the run
def train(dataset=None, data=None, epochs=None, batch_size=None, lr=None, augment=None,
          dropout=None, seed=None, threads=None, backend=None, out=None, resume=None,
          n_train=None, n_test=None, stream=None, overwrite=False, model=None,
          label_smoothing=None):
    """Train, checkpoint, test and plot; see the module docstring for the files written.

    Every setting left at None takes the seed recipe's value (:data:`DEFAULTS`) or, with
    ``resume``, the value of the run being resumed; a resumed run may raise ``epochs``
    but must keep the other settings (:class:`TrainError` otherwise). ``out`` defaults to
    ``runs/<dataset>`` (``runs/<dataset>-2``, ``-3``, ... when that holds a run), or the
    checkpoint's folder when resuming. An ``out`` holding a run (other than the one being
    resumed) raises :class:`TrainError` unless ``overwrite`` is true.

    Returns
    -------
    dict with 'history' (per-epoch lists), 'test_loss', 'test_accuracy', 'best_epoch',
    'out' and 'files' (name -> path).
    """
    stream = stream or sys.stdout
    given = {"dataset": dataset, "data": data, "epochs": epochs, "batch_size": batch_size,
             "lr": lr, "augment": augment, "dropout": dropout, "seed": seed,
             "n_train": n_train, "n_test": n_test, "model": model,
             "label_smoothing": label_smoothing}
    state = None
    earlier = None                   # the default folder, when it held a run and was skipped
    base = None                      # the default folder, when no --out is given
    continuing = False               # writing into the folder of the run being resumed
    if resume is not None:
        state = read_state(resume)
        saved = state.get("settings", {})
        for key in _FIXED_ON_RESUME:
            if given[key] is not None and key in saved and given[key] != saved[key]:
                raise TrainError(f"--resume: the checkpoint was trained with {key}="
                                 f"{saved[key]!r}, received {given[key]!r}; a resumed run "
                                 f"keeps its settings (only --epochs may change)")
        settings = {k: (given[k] if given[k] is not None else saved.get(k, DEFAULTS[k]))
                    for k in DEFAULTS}
        checkpoint_dir = os.path.dirname(os.path.realpath(os.fspath(resume)))
        if out is None:
            out = checkpoint_dir
        continuing = os.path.realpath(os.fspath(out)) == checkpoint_dir
    else:
        settings = {k: (given[k] if given[k] is not None else DEFAULTS[k]) for k in DEFAULTS}
        if out is None:              # claimed once the run starts (claim_run_folder)
            base = os.path.join("runs", settings["dataset"])
    out = None if out is None else os.fspath(out)
    stale = [] if continuing or out is None else run_files_in(out)
    if stale and not overwrite:
        hint = (f", --resume {os.path.join(out, 'last.npz')} to continue it"
                if resume is None and "last.npz" in stale else "")
        raise TrainError(f"--out {out!r} already holds a run ({', '.join(stale)}); pass "
                         f"--overwrite to replace it{hint}, or choose another folder")
    s = settings
    if s["model"] not in MODELS:
        raise TrainError(f"unknown model {s['model']!r}; choose one of {', '.join(MODELS)}")
    if s["lr"] is None:
        s["lr"] = RECIPES[s["model"]]["lr"]
    split = RECIPES[s["model"]]["validation_split"]
    if not 0.0 <= s["label_smoothing"] < 1.0:
        raise TrainError(f"--label-smoothing must be in [0, 1), received {s['label_smoothing']}")
    if s["data"] is not None:
        s["data"] = os.path.abspath(os.fspath(s["data"]))
    if s["dataset"] not in DATASETS:
        raise TrainError(f"unknown dataset {s['dataset']!r}; choose one of {', '.join(DATASETS)}")
    for key in ("epochs", "batch_size"):
        if s[key] < (0 if key == "epochs" else 1):
            raise TrainError(f"--{key.replace('_', '-')} must be "
                             f"{'>= 0' if key == 'epochs' else '>= 1'}, received {s[key]}")
    if s["augment"] and s["dataset"] not in COLOUR_DATASETS:
        raise TrainError(f"--augment is for the colour datasets ({', '.join(COLOUR_DATASETS)}): "
                         f"a horizontal flip can change what a {s['dataset']} image shows")
    try:
        if backend is not None:
            config.set_backend(backend)
        if threads is not None:
            config.set_num_threads(threads)
        optimizers.Adam(learning_rate=s["lr"])
        config.set_random_seed(s["seed"])
    except ValueError as exc:
        raise TrainError(str(exc)) from None
    if not 0.0 <= s["dropout"] < 1.0:
        raise TrainError(f"--dropout must be in [0, 1), received {s['dropout']}")
    s["backend"], s["threads"] = config.get_backend(), config.get_num_threads()
    if state is not None:
        for key in ("backend", "threads"):
            before = state["settings"].get(key)
            if before is not None and before != s[key]:
                stream.write(f"note: the checkpoint was trained with {key}={before!r}, now "
                             f"{s[key]!r}: the results may differ from an uninterrupted run "
                             f"in the last bits\n")

    try:
        (x_train, y_train), (x_test, y_test), class_names = load_dataset(
            s["dataset"], s["data"], s["n_train"], s["n_test"])
    except FileNotFoundError as exc:
        raise DatasetUnavailableError(
            f"{exc}\n\nThe {s['dataset']} dataset is not available: use --data PATH to point "
            f"at it, or --dataset shapes for the built-in dataset that needs no files and no "
            f"network.") from None
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    if class_names is not None:
        num_classes = max(num_classes, len(class_names))
    x, y = preprocess(x_train, y_train, num_classes)
    xt, yt = preprocess(x_test, y_test, num_classes)
    n_val = len(x) - int(np.floor(len(x) * (1.0 - split)))
    if n_val < 1 or n_val >= len(x):
        raise TrainError(f"{len(x)} training images are too few to hold out "
                         f"{split:.0%} for validation")

    for name in stale:               # --overwrite: no file of the earlier run may survive
        os.remove(os.path.join(out, name))
    claimed = out is None
    if claimed:
        out = claim_run_folder(base)
        earlier = base if out != base else None
    os.makedirs(out, exist_ok=True)
    if state is None:
        steps = s["epochs"] * -(-(len(x) - n_val) // s["batch_size"])
        model, optimizer = build_recipe(s, x.shape[1:], num_classes, steps)
        model.compile(optimizer=optimizer, loss=losses.CategoricalCrossentropy(
            label_smoothing=s["label_smoothing"]), metrics=["accuracy"])
        done, history, best, best_epoch = 0, {}, None, None
    else:
        model = models.load_model(resume, restore_rng=True)
        done, history = int(state["epochs_done"]), state.get("history", {})
        best, best_epoch = state.get("best"), state.get("best_epoch")
        if tuple(model.input_shape) != tuple(x.shape[1:]):
            raise TrainError(f"--resume: the checkpoint takes images of shape "
                             f"{tuple(model.input_shape)}, the data has {tuple(x.shape[1:])}")
        steps = -(-(len(x) - n_val) // s["batch_size"])
        if model.optimizer is None or model.optimizer.iterations != done * steps:
            got = None if model.optimizer is None else model.optimizer.iterations
            raise TrainError(f"--resume: {os.fspath(resume)!r} has taken {got} optimizer steps, "
                             f"but its training state says {done} epochs of {steps} steps: "
                             f"the checkpoint and last.json do not belong together")
        source_best = os.path.join(os.path.dirname(os.fspath(resume)), "best.npz")
        target_best = os.path.join(out, "best.npz")
        if os.path.isfile(source_best) and not os.path.exists(target_best):
            shutil.copyfile(source_best, target_best)     # resumed into another folder

    if earlier is not None:
        stream.write(f"{earlier} holds an earlier run: writing to {out}\n")
    notice = config.compile_notice()
    if notice:
        stream.write(notice + "\n")
    stream.write(f"minicnn {s['dataset']}: {len(x) - n_val} training, {n_val} validation, "
                 f"{len(xt)} test images of shape {tuple(x.shape[1:])}, {num_classes} classes; "
                 f"backend {s['backend']}, {s['threads']} threads, seed {s['seed']}\n")
    if state is None:
        model.summary(print_fn=lambda line: stream.write(line + "\n"))
    else:
        stream.write(f"Resuming from {os.fspath(resume)} after epoch {done}\n")
    stream.flush()

    checkpoint = ModelCheckpoint(os.path.join(out, "best.npz"), monitor="val_accuracy",
                                 save_best_only=True)
    checkpoint.best = best
    report = EpochReport(stream, checkpoint)
    recorder = TrainingState(out, s, report, checkpoint, history, best_epoch)
    if done < s["epochs"]:
        model.fit(x, y, batch_size=s["batch_size"], epochs=s["epochs"], initial_epoch=done,
                  validation_split=split, verbose=0,
                  callbacks=[checkpoint, report, recorder])
    history = recorder.history

    # ---- test, with the best checkpoint
    best_path = os.path.join(out, "best.npz")
    if os.path.isfile(best_path):
        model = models.load_model(best_path)
    test_loss, test_acc = model.evaluate(xt, yt, batch_size=s["batch_size"], verbose=0)
    y_prob = model.predict(xt, batch_size=s["batch_size"])
    result = dict(history, test_loss=float(test_loss), test_accuracy=float(test_acc),
                  best_epoch=recorder.best_epoch)
    files = {"best": best_path, "last": os.path.join(out, "last.npz"),
             "state": os.path.join(out, "last.json"),
             "history": os.path.join(out, "history.json"),
             "curves": os.path.join(out, "curves.png"),
             "confusion_matrix": os.path.join(out, "confusion_matrix.png"),
             "misclassified": os.path.join(out, "misclassified.png")}
    write_json(files["history"], result)

    from . import plot
    if history.get("loss"):
        plot.history(history, files["curves"], monitor=checkpoint.monitor, mode=checkpoint.mode)
    else:                            # --epochs 0: the untrained model is tested, no curves
        del files["curves"]
        stream.write("No epoch was trained (--epochs 0): no curves.png; the test scores "
                     "below are the untrained model's\n")
    plot.confusion_matrix(y_test, y_prob, class_names, files["confusion_matrix"])
    plot.misclassified(x_test, y_test, y_prob, class_names, files["misclassified"])
    if claimed:
        release_claim(out)           # the run's own files mark the folder from now on

    where = (f"best checkpoint, epoch {recorder.best_epoch} of {len(history.get('loss', []))}"
             if recorder.best_epoch else "final model")
    written = [os.path.basename(p) for p in files.values() if os.path.isfile(p)]
    stream.write(f"Wrote {', '.join(written)} to {out}\n")
    stream.write(f"Test accuracy: {test_acc:.4f} (loss {test_loss:.4f}, {len(xt)} images, "
                 f"{where})\n")
    stream.flush()
    return {"history": history, "test_loss": float(test_loss), "test_accuracy": float(test_acc),
            "best_epoch": recorder.best_epoch, "out": out, "files": files}


# ----------------------------------------------------------------------------- command line
def add_arguments(p):
    """The options of ``minicnn train`` (and ``examples/train_cifar10.py``)."""
    d = DEFAULTS
    p.add_argument("--model", choices=MODELS, default=None,
                   help="seed: the Keras tutorial CNN and its recipe (default); resnet: the "
                        "residual BatchNorm CNN (models.zoo.resnet_cifar) with flips and "
                        "translations, AdamW and a warmed-up cosine schedule")
    p.add_argument("--label-smoothing", type=float, default=None, metavar="S",
                   help="label smoothing of the cross-entropy (default 0)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help=f"which dataset (default {d['dataset']})")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="the dataset's file or folder (e.g. cifar-10-python.tar.gz); default: "
                        "the dataset module's own search and download")
    p.add_argument("--epochs", type=int, default=None,
                   help=f"total epochs (default {d['epochs']}; with --resume, may be raised)")
    p.add_argument("--batch-size", type=int, default=None, help=f"default {d['batch_size']}")
    p.add_argument("--lr", type=float, default=None,
                   help=f"learning rate (default {RECIPES['seed']['lr']} for seed, the peak "
                        f"{RECIPES['resnet']['lr']} for resnet)")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random horizontal flips and 10%% translations (colour datasets)")
    p.add_argument("--dropout", type=float, default=None, metavar="RATE",
                   help="Dropout(RATE) before each Dense layer (default: none)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"seed of initialisation, shuffling and dropout (default {d['seed']})")
    p.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    p.add_argument("--backend", choices=config.BACKENDS, default=None,
                   help=f"default {config.get_backend()}")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output folder (default runs/<dataset>, or runs/<dataset>-2, -3, ... "
                        "if that holds a run; the checkpoint's folder with --resume)")
    p.add_argument("--overwrite", action="store_true", default=False,
                   help="replace the run already in --out DIR (refused without it)")
    p.add_argument("--resume", metavar="CHECKPOINT", default=None,
                   help="continue from DIR/last.npz of an earlier run")
    p.add_argument("--n-train", type=int, default=None, metavar="N",
                   help="use the first N training images (shapes: generate N; default 10000)")
    p.add_argument("--n-test", type=int, default=None, metavar="N",
                   help="use the first N test images (shapes: generate N; default 2000)")
    return p


def run(args, stream=None):
    """Run ``minicnn train`` from parsed arguments; returns the exit code.

    A dataset that is absent (and cannot be downloaded) or a bad setting prints its
    message to stderr and returns 2; never another dataset in its place.
    """
    kwargs = {k: getattr(args, k) for k in ("dataset", "data", "epochs", "batch_size", "lr",
                                             "augment", "dropout", "seed", "threads", "backend",
                                             "out", "resume", "n_train", "n_test", "model",
                                             "label_smoothing")}
    kwargs["overwrite"] = bool(getattr(args, "overwrite", False))
    try:
        train(stream=stream, **kwargs)
    except (TrainError, *_dataset_errors()) as exc:
        sys.stderr.write(f"minicnn train: {exc}\n")
        return 2
    return 0


def _dataset_errors():
    try:
        from .datasets._errors import DatasetError
        return (DatasetError,)
    except ImportError:          # pragma: no cover
        return ()
