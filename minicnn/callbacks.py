"""Callbacks for :meth:`minicnn.Model.fit`, with Keras's names and hooks.

``fit`` calls every callback through one :class:`CallbackList`, in the order given, with
:class:`History` last.
"""
from __future__ import annotations

import math
import os

import numpy as np


class Callback:
    """Base class. ``fit`` sets ``self.model`` and ``self.params`` then calls the hooks.

    ``params`` holds 'epochs', 'steps', 'batch_size', 'samples', 'verbose',
    'do_validation' and 'metrics' (the names the epoch logs will have, e.g.
    ``['loss', 'accuracy', 'val_loss', 'val_accuracy']``). Batch logs hold the
    running 'loss' and metrics of the epoch so far and 'batch_loss', the loss of
    that batch alone.
    """

    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    def on_train_batch_begin(self, batch, logs=None): pass
    def on_train_batch_end(self, batch, logs=None): pass


class CallbackList:
    """Calls each hook on every callback in order (Keras's ``CallbackList``).

    ``CallbackList(callbacks, model=m, params=p)`` gives each callback the model and the
    training parameters; then ``callback_list.on_epoch_end(epoch, logs)`` (and every other
    hook of :class:`Callback`) runs that hook on each callback.
    """

    def __init__(self, callbacks, model=None, params=None):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            if model is not None:
                cb.set_model(model)
            if params is not None:
                cb.set_params(params)

    def _dispatch(self, hook, *args):
        for cb in self.callbacks:
            getattr(cb, hook)(*args)

    def on_train_begin(self, logs=None):
        self._dispatch("on_train_begin", logs)

    def on_train_end(self, logs=None):
        self._dispatch("on_train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._dispatch("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._dispatch("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._dispatch("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._dispatch("on_train_batch_end", batch, logs)


class History(Callback):
    """Records the epoch logs: ``history`` maps 'loss', 'accuracy', 'val_loss', ... to lists;
    ``epoch`` lists the (0-based) epoch indices, as in Keras."""

    def __init__(self):
        super().__init__()
        self.history: dict[str, list] = {}
        self.epoch: list[int] = []

    def on_train_begin(self, logs=None):
        self.epoch = []

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)


class NonFiniteLossError(ValueError, FloatingPointError):
    """Training met a NaN or infinite loss (or input)."""


class TerminateOnNonFinite(Callback):
    """Stop training with an error naming the epoch and batch where the loss became NaN or inf.

    ``fit`` adds one by default; set ``model.stop_on_nonfinite = False`` to train on regardless.
    """

    def __init__(self):
        super().__init__()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("batch_loss")
        if loss is not None and not math.isfinite(loss):
            raise NonFiniteLossError(
                f"fit: the loss became {loss} at epoch {self.epoch + 1}, batch {batch + 1}; "
                f"check the inputs for NaN/inf and try a smaller learning rate")


def _mode_for(monitor, mode):
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', received {mode!r}")
    if mode == "auto":
        mode = "max" if ("acc" in monitor or monitor.endswith("auc")) else "min"
    return mode


def _check_monitor(owner, monitor, params):
    """Fail before training, not after the first epoch, when ``monitor`` will never be logged."""
    names = (params or {}).get("metrics")
    if names is not None and monitor not in names:
        hint = (" (validation metrics need validation_split or validation_data)"
                if monitor.startswith("val_") else "")
        raise ValueError(f"{owner}: monitor {monitor!r} is not among the logged metrics "
                         f"{names}{hint}")


def _improved(mode, current, best, min_delta=0.0):
    if best is None:
        return True
    return current < best - min_delta if mode == "min" else current > best + min_delta


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved for ``patience`` epochs.

    With ``restore_best_weights=True`` the weights of the best epoch are put back
    when training stops (also when it runs out of epochs, like Keras 3).
    """

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, mode="auto",
                 restore_best_weights=False, verbose=0):
        super().__init__()
        if not isinstance(monitor, str):
            raise ValueError(f"EarlyStopping: monitor must be a metric name, received {monitor!r}")
        if isinstance(patience, bool) or not isinstance(patience, (int, np.integer)) \
                or patience < 0:
            raise ValueError(f"EarlyStopping: patience must be a non-negative int, "
                             f"received {patience!r}")
        self.monitor, self.patience = monitor, int(patience)
        self.min_delta = abs(float(min_delta))
        self.mode = _mode_for(monitor, mode)
        self.restore_best_weights = bool(restore_best_weights)
        self.verbose = verbose

    def on_train_begin(self, logs=None):
        _check_monitor("EarlyStopping", self.monitor, self.params)
        self.wait, self.best, self.best_weights, self.best_epoch = 0, None, None, 0
        self.stopped_epoch, self.stopped = 0, False

    def on_epoch_end(self, epoch, logs=None):
        current = (logs or {}).get(self.monitor)
        if current is None:
            raise ValueError(f"EarlyStopping: monitor {self.monitor!r} is not among the logged "
                             f"metrics {sorted(logs or {})}")
        if _improved(self.mode, current, self.best, self.min_delta):
            self.best, self.best_epoch, self.wait = current, epoch, 0
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()      # copies already
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch, self.stopped = epoch, True
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.restore_best_weights and self.best_weights is not None:
            self.model.set_weights(self.best_weights)
        if self.verbose and self.stopped:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping "
                  f"(best {self.monitor} {self.best:.4f} at epoch {self.best_epoch + 1})")


class ModelCheckpoint(Callback):
    """Save the model (or only its weights) after each epoch.

    ``filepath`` may hold format fields: ``'ckpt-{epoch:02d}-{val_accuracy:.3f}.npz'``
    (epoch counts from 1). With ``save_best_only`` the file is written only when
    ``monitor`` improves.
    """

    def __init__(self, filepath, monitor="val_loss", save_best_only=False, mode="auto",
                 save_weights_only=False, verbose=0):
        super().__init__()
        if not isinstance(monitor, str):
            raise ValueError(f"ModelCheckpoint: monitor must be a metric name, "
                             f"received {monitor!r}")
        self.filepath = os.fspath(filepath)
        self.monitor, self.save_best_only = monitor, bool(save_best_only)
        self.mode = _mode_for(monitor, mode)
        self.save_weights_only, self.verbose = bool(save_weights_only), verbose
        self.best = None

    def on_train_begin(self, logs=None):
        if self.save_best_only:
            _check_monitor("ModelCheckpoint", self.monitor, self.params)
        names = (self.params or {}).get("metrics")
        if names is not None:
            self._path(0, {k: 0.0 for k in names})       # a bad filepath fails before training

    def _path(self, epoch, logs):
        try:
            return self.filepath.format(epoch=epoch + 1, **logs)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"ModelCheckpoint: filepath {self.filepath!r} has a field that is "
                             f"not 'epoch' nor a logged metric {sorted(logs)}: {exc!r}") from None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        path = self._path(epoch, logs)
        if self.save_best_only:
            current = logs.get(self.monitor)
            if current is None:
                raise ValueError(f"ModelCheckpoint: monitor {self.monitor!r} is not among the "
                                 f"logged metrics {sorted(logs)}")
            if not _improved(self.mode, current, self.best):
                return
            self.best = current
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path)
        else:
            self.model.save(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved model to {path}")


def _set_learning_rate(owner, model, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool) \
            or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{owner}: the learning rate must be a positive number, "
                         f"received {value!r}")
    try:
        model.optimizer.learning_rate = float(value)
    except TypeError as exc:
        raise ValueError(f"{owner}: {exc}") from None


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)`` (0-based
    epoch, the current rate), or ``schedule(epoch)``, as Keras does; the epoch logs get
    'learning_rate'."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise ValueError(f"LearningRateScheduler: schedule must be callable, "
                             f"received {schedule!r}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.model.optimizer.learning_rate
        try:
            new = self.schedule(epoch, lr)
        except TypeError:                      # the one-argument form
            new = self.schedule(epoch)
        _set_learning_rate("LearningRateScheduler", self.model, new)
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: LearningRateScheduler setting learning rate to {new}.")

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more
    than ``min_delta`` for ``patience`` epochs; wait ``cooldown`` epochs after a reduction;
    never go below ``min_lr``. Keras's arguments and defaults; the epoch logs get
    'learning_rate'."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto",
                 min_delta=1e-4, cooldown=0, min_lr=0.0):
        super().__init__()
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), received {factor!r}")
        for arg, val in (("patience", patience), ("cooldown", cooldown)):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)) or val < 0:
                raise ValueError(f"ReduceLROnPlateau: {arg} must be a non-negative int, "
                                 f"received {val!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.mode = verbose, _mode_for(monitor, mode)
        self.min_delta, self.cooldown, self.min_lr = abs(float(min_delta)), int(cooldown), \
            float(min_lr)

    def on_train_begin(self, logs=None):
        _check_monitor("ReduceLROnPlateau", self.monitor, self.params)
        self.best, self.wait, self.cooldown_counter = None, 0, 0

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        current = logs.get(self.monitor)
        if current is not None:
            if self.cooldown_counter > 0:
                self.cooldown_counter -= 1
                self.wait = 0
            if _improved(self.mode, current, self.best, self.min_delta):
                self.best, self.wait = current, 0
            elif self.cooldown_counter <= 0:
                self.wait += 1
                if self.wait >= self.patience:
                    old = float(self.model.optimizer.learning_rate)
                    if old > self.min_lr:
                        new = max(old * self.factor, self.min_lr)
                        _set_learning_rate("ReduceLROnPlateau", self.model, new)
                        if self.verbose:
                            print(f"\nEpoch {epoch + 1}: ReduceLROnPlateau reducing learning "
                                  f"rate to {new}.")
                        self.cooldown_counter, self.wait = self.cooldown, 0
        logs["learning_rate"] = float(self.model.optimizer.learning_rate)


class CSVLogger(Callback):
    """Write one CSV row per epoch (``epoch`` then every log, in a fixed column order) to
    ``filename``; with ``append=True`` continue an existing file."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, bool(append)
        self.keys = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.isfile(self.filename)
        self.keys = None
        if exists:
            with open(self.filename, encoding="utf-8") as fh:
                first = fh.readline().strip()
            self.keys = first.split(self.sep)[1:] if first else None
        self.file = open(self.filename, "a" if self.append else "w", encoding="utf-8",
                         newline="")

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.keys is None:
            self.keys = sorted(logs)
            self.file.write(self.sep.join(["epoch"] + self.keys) + "\n")
        row = [str(epoch)] + [repr(float(logs[k])) if k in logs else "NA" for k in self.keys]
        self.file.write(self.sep.join(row) + "\n")
        self.file.flush()

    def on_train_end(self, logs=None):
        self.file.close()


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
