"""Training, evaluation and prediction: the loop lives here, not in the model.

As in Keras, :class:`minicnn.Model` inherits :class:`Trainer`: the model holds the
structure and the passes (``forward``, ``backward``, ``compute_gradients``), the trainer
holds what runs them over data:

- :meth:`Trainer.train_step` is *the* training step: ``compute_gradients`` on one batch,
  then the optimizer update. ``fit``, ``train_on_batch`` and ``minicnn train`` all go
  through it.
- :class:`EpochIterator` cuts the data into batches (shuffled each epoch from minicnn's
  generator), casts each batch to the model's dtype (a float64 ``x`` is never copied
  whole) and checks it for NaN/inf.
- the callbacks are called through one :class:`minicnn.callbacks.CallbackList`.
"""
from __future__ import annotations

import math
import time

import numpy as np

from . import config, progress
from .callbacks import Callback, CallbackList, History, NonFiniteLossError, TerminateOnNonFinite


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def check_batch_size(batch_size, what):
    if batch_size is None:          # Keras's default
        return 32
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"{what}: batch_size must be an integer >= 1, received {batch_size!r}")
    return int(batch_size)


def check_finite(x, what, arg, where=""):
    if not np.all(np.isfinite(x)):
        raise NonFiniteLossError(f"{what}: {arg} holds NaN or inf{where}")


class EpochIterator:
    """Batches of ``(x, y, sample_weight)`` for one pass over the data.

    ``xs`` is a list of input arrays (one per model input), ``y`` the targets,
    ``sample_weight`` an ``(n,)`` array or None. Each batch is a list of input batches
    cast to ``dtype`` and checked finite, the targets and the weights of the same rows.
    """

    def __init__(self, xs, y, sample_weight, batch_size, dtype, shuffle=False, what="fit"):
        self.xs, self.y, self.sample_weight = xs, y, sample_weight
        self.batch_size, self.dtype, self.shuffle, self.what = batch_size, dtype, shuffle, what
        self.n = len(xs[0])
        self.num_batches = -(-self.n // batch_size)

    def cast(self, x):
        """A batch in the model's dtype (a copy only when the dtype differs)."""
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    def __iter__(self):
        return self.epoch(None)

    def epoch(self, epoch=None):
        """Iterate over the batches of ``epoch`` (0-based; named in NaN/inf errors)."""
        order = config.get_rng().permutation(self.n) if self.shuffle else None
        for step in range(self.num_batches):
            lo, hi = step * self.batch_size, min((step + 1) * self.batch_size, self.n)
            rows = order[lo:hi] if order is not None else slice(lo, hi)
            xb = [self.cast(x[rows]) for x in self.xs]
            where = (f" (batch {step + 1}, rows {lo}:{hi})" if epoch is None
                     else f" in epoch {epoch + 1}, batch {step + 1}")
            for i, x in enumerate(xb):
                check_finite(x, self.what, "x" if len(xb) == 1 else f"x[{i}]", where)
            yb = None if self.y is None else self.y[rows]
            wb = None if self.sample_weight is None else self.sample_weight[rows]
            yield step, lo, xb, yb, wb


class _Totals:
    """Running means over batches: the loss weighted by batch size (Keras's loss tracker),
    the accuracy weighted by the sample weights."""

    def __init__(self, names):
        self.names = names
        self.loss_sum = 0.0
        self.seen = 0
        self.correct = 0.0
        self.weight = 0.0

    def add(self, loss, nb, correct, weight):
        self.loss_sum += loss * nb
        self.seen += nb
        self.correct += correct
        self.weight += weight

    def logs(self, prefix=""):
        out = {prefix + "loss": self.loss_sum / max(self.seen, 1)}
        acc = self.correct / self.weight if self.weight else 0.0
        out.update((prefix + name, acc) for name in self.names)
        return out


class Trainer:
    """``fit``, ``evaluate``, ``predict`` and the per-batch calls, over a model's passes."""

    # ------------------------------------------------------------------ checks
    def check_x(self, x, what, arg="x"):
        """``x`` as a list of arrays of the model's input shapes; never copied when they
        already are arrays (a float64 ``x`` is cast batch by batch)."""
        many = isinstance(x, (list, tuple)) and isinstance(self.input_shape, list)
        xs = list(x) if many else [x]
        out = []
        for i, xi in enumerate(xs):
            name = arg if len(xs) == 1 else f"{arg}[{i}]"
            if not isinstance(xi, np.ndarray):
                xi = np.asarray(xi)
            if not np.issubdtype(xi.dtype, np.number) or np.issubdtype(xi.dtype, np.complexfloating):
                raise ValueError(f"{what}: {name} must be a real numeric array, received dtype "
                                 f"{xi.dtype}")
            if xi.ndim < 2 or len(xi) == 0:
                raise ValueError(f"{what}: {name} must be a non-empty batch of shape (n, ...), "
                                 f"received shape {xi.shape}")
            out.append(xi)
        self.ensure_built(out[0] if len(out) == 1 else out)
        shapes = self.input_shape if isinstance(self.input_shape, list) else [self.input_shape]
        if len(shapes) != len(out):
            raise ValueError(f"{what}: the model has {len(shapes)} inputs, received "
                             f"{len(out)} arrays")
        for i, (xi, shape) in enumerate(zip(out, shapes)):
            if tuple(xi.shape[1:]) != tuple(shape):
                name = arg if len(out) == 1 else f"{arg}[{i}]"
                raise ValueError(f"{what}: {name} must have shape (n, "
                                 f"{', '.join(map(str, shape))}) to match the model input, "
                                 f"received {xi.shape}")
        if len({len(xi) for xi in out}) != 1:
            raise ValueError(f"{what}: the input arrays must have the same length, received "
                             f"{[len(xi) for xi in out]}")
        return out

    def check_y(self, n, y, what, arg="y"):
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != n:
            got = "a scalar" if y.ndim == 0 else f"{len(y)} labels"
            raise ValueError(f"{what}: x and {arg} must have the same length, received "
                             f"{n} images and {got}")
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            raise ValueError(f"{what}: {arg} must be a numeric array, received dtype {y.dtype}")
        out_shape = self.output_shape if not isinstance(self.output_shape, list) \
            else self.output_shape[0]
        self.loss.check_targets(y, out_shape[-1], arg)
        return y

    def check_sample_weight(self, n, sample_weight, what, arg="sample_weight"):
        if sample_weight is None:
            return None
        w = np.asarray(sample_weight)
        if w.ndim == 2 and w.shape[1] == 1:
            w = w[:, 0]
        if w.shape != (n,) or not (np.issubdtype(w.dtype, np.number) or w.dtype == np.bool_):
            raise ValueError(f"{what}: {arg} must be a numeric array of shape ({n},), one "
                             f"weight per sample, received shape {w.shape} dtype {w.dtype}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"{what}: {arg} must hold finite weights >= 0")
        return w.astype(np.float64)

    def class_weights(self, y, class_weight, what):
        """``class_weight`` ({class: weight}) as per-sample weights for the labels ``y``."""
        if not isinstance(class_weight, dict):
            raise ValueError(f"{what}: class_weight must be a dict {{class index: weight}}, "
                             f"received {type(class_weight).__name__}")
        labels = (np.asarray(y).reshape(-1).astype(np.int64) if self.loss.sparse
                  else np.argmax(y, axis=-1))
        k = (self.output_shape if not isinstance(self.output_shape, list)
             else self.output_shape[0])[-1]
        table = np.ones(k)
        for c, wt in class_weight.items():
            if not _is_int(c) or not 0 <= c < k:
                raise ValueError(f"{what}: class_weight keys must be class indices in "
                                 f"[0, {k}), received {c!r}")
            if isinstance(wt, bool) or not isinstance(wt, (int, float, np.number)) \
                    or not np.isfinite(wt) or wt < 0:
                raise ValueError(f"{what}: class_weight[{c}] must be a number >= 0, "
                                 f"received {wt!r}")
            table[int(c)] = float(wt)
        return table[labels]

    def check_batch(self, x, y, sample_weight, what, class_weight=None):
        """A batch checked and cast: ``(x for compute_gradients, y, sample_weight)``."""
        self._require_compiled(what)
        xs = self.check_x(x, what)
        y = self.check_y(len(xs[0]), y, what)
        w = self.check_sample_weight(len(xs[0]), sample_weight, what)
        if class_weight is not None:
            if w is not None:
                raise ValueError(f"{what}: you cannot use class_weight and sample_weight at "
                                 f"the same time")
            w = self.class_weights(y, class_weight, what)
        xs = self._cast_checked(xs, what)
        return (xs[0] if len(xs) == 1 else xs), y, w

    def _cast_checked(self, xs, what):
        """The input arrays ``xs`` in the model's dtype (a copy only where it differs),
        checked for NaN/inf."""
        xs = [x if x.dtype == self.dtype else x.astype(self.dtype) for x in xs]
        for i, xb in enumerate(xs):
            check_finite(xb, what, "x" if len(xs) == 1 else f"x[{i}]")
        return xs

    # ------------------------------------------------------------------ the steps
    def correct_count(self, y_pred, y, sample_weight=None) -> float:
        """The (weighted) number of examples whose argmax prediction is the label."""
        pred = np.argmax(y_pred, axis=-1)
        true = np.asarray(y).reshape(-1) if self.loss.sparse else np.argmax(y, axis=-1)
        hit = pred == true
        return float(hit.sum()) if sample_weight is None else float(np.dot(hit, sample_weight))

    def apply_gradients(self):
        """One optimizer step over every trainable weight, from the layers' ``grads``."""
        self.optimizer.apply_gradients((path, owner.params[key], owner.grads[key])
                                       for path, owner, key in self.trainable_slots())

    def train_step(self, x, y, sample_weight=None):
        """One training step on a checked batch: gradients, then the optimizer update.

        A batch whose loss is NaN or inf leaves the weights as they were. Returns the
        batch's logs: ``{'loss': batch-mean loss, <metric>: batch accuracy}``; the
        predictions are kept as ``self.last_predictions``.
        """
        config.between_steps()
        loss, y_pred = self.compute_gradients(x, y, sample_weight)
        if math.isfinite(loss):
            self.apply_gradients()
        self.last_predictions = y_pred
        return self._batch_logs(loss, y_pred, y, sample_weight)

    def test_step(self, x, y, sample_weight=None):
        """Loss and metrics on a checked batch in inference mode (the plan, no update)."""
        config.between_steps()
        y_pred = self.call(x, training=False)
        loss = float(self.compute_loss(y_pred, y, sample_weight)[0])
        self.last_predictions = y_pred
        return self._batch_logs(loss, y_pred, y, sample_weight)

    def _batch_logs(self, loss, y_pred, y, sample_weight):
        logs = {"loss": loss}
        if self.metrics:
            weight = len(y_pred) if sample_weight is None else float(np.sum(sample_weight))
            acc = self.correct_count(y_pred, y, sample_weight) / weight if weight else 0.0
            logs.update((name, acc) for name in self.metrics)
        return logs

    @staticmethod
    def _results(logs, names, return_dict):
        if return_dict:
            return {k: float(logs[k]) for k in ["loss"] + names}
        if not names:
            return float(logs["loss"])
        return [float(logs["loss"])] + [float(logs[k]) for k in names]

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None,
                       return_dict=False):
        """One optimizer step on one batch (:meth:`train_step`). Returns ``[loss, metric...]``
        (a float when no metrics were compiled; a dict with ``return_dict``)."""
        x, y, w = self.check_batch(x, y, sample_weight, "train_on_batch", class_weight)
        return self._results(self.train_step(x, y, w), self.metrics, return_dict)

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        """Loss and metrics on one batch, inference mode. Returns like :meth:`train_on_batch`."""
        x, y, w = self.check_batch(x, y, sample_weight, "test_on_batch")
        return self._results(self.test_step(x, y, w), self.metrics, return_dict)

    def predict_on_batch(self, x):
        """The model's output for one batch, inference mode."""
        xs = self._cast_checked(self.check_x(x, "predict_on_batch"), "predict_on_batch")
        config.between_steps()
        return self.call(xs[0] if len(xs) == 1 else xs, training=False)

    # ------------------------------------------------------------------ loops
    def _evaluate(self, xs, y, w, batch_size, what):
        """Mean loss and (weighted) accuracy over all of ``xs``, batch by batch."""
        totals = _Totals(self.metrics)
        for _, _, xb, yb, wb in EpochIterator(xs, y, w, batch_size, self.dtype, what=what):
            config.between_steps()
            y_pred = self.call(xb[0] if len(xb) == 1 else xb, training=False)
            loss = float(self.compute_loss(y_pred, yb, wb)[0])
            totals.add(loss, len(yb), self.correct_count(y_pred, yb, wb) if self.metrics else 0,
                       len(yb) if wb is None else float(np.sum(wb)))
        return totals.logs()

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None,
                 steps=None, callbacks=None, return_dict=False):
        """Loss (and metrics) over ``x`` in inference mode, ``batch_size`` images at a time.

        Returns ``[loss, accuracy]`` (one accuracy per compiled metric), or the loss alone
        (a float) when no metrics were compiled, or ``{'loss': ..., 'accuracy': ...}``
        with ``return_dict=True``. With ``sample_weight`` the loss is
        ``sum_i w_i l_i / n`` and the accuracy ``sum_i w_i [correct_i] / sum_i w_i``.
        """
        what = "evaluate"
        self._require_compiled(what)
        if steps is not None or callbacks is not None:
            raise ValueError(f"{what}: steps and callbacks are not supported by minicnn yet")
        batch_size = check_batch_size(batch_size, what)
        verbose = progress.check_verbose(verbose, what)
        xs = self.check_x(x, what)
        y = self.check_y(len(xs[0]), y, what)
        w = self.check_sample_weight(len(xs[0]), sample_weight, what)
        t0 = time.perf_counter()
        logs = self._evaluate(xs, y, w, batch_size, what)
        if verbose:
            n_steps = -(-len(xs[0]) // batch_size)
            text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            progress.print_line(f"{n_steps}/{n_steps} - {time.perf_counter() - t0:.0f}s - {text}")
        return self._results(logs, self.metrics, return_dict)

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None):
        """Model outputs for ``x`` (probabilities for a softmax model), inference mode.

        Computed ``batch_size`` images at a time, so a large ``x`` never becomes one giant
        batch. Returns an array ``(n, *output_shape)`` in the model's dtype (a list for
        several outputs). ``verbose`` is accepted for Keras compatibility.
        """
        what = "predict"
        if steps is not None or callbacks is not None:
            raise ValueError(f"{what}: steps and callbacks are not supported by minicnn yet")
        batch_size = check_batch_size(batch_size, what)
        progress.check_verbose(verbose, what)
        xs = self.check_x(x, what)
        n = len(xs[0])
        shapes = self.output_shape if isinstance(self.output_shape, list) else [self.output_shape]
        outs = [np.empty((n,) + tuple(s), dtype=self.dtype) for s in shapes]
        for _, lo, xb, _, _ in EpochIterator(xs, None, None, batch_size, self.dtype, what=what):
            config.between_steps()
            got = self.call(xb[0] if len(xb) == 1 else xb, training=False)
            for out, g in zip(outs, got if isinstance(got, list) else [got]):
                out[lo:lo + len(g)] = g
        return outs[0] if not isinstance(self.output_shape, list) else outs

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1):
        """Train for ``epochs`` epochs (counting from ``initial_epoch``), as Keras does.

        - ``x``: images ``(n, *input_shape)`` of any real dtype (a list of arrays for a
          model with several inputs); ``y``: one-hot ``(n, k)`` for
          'categorical_crossentropy', integer labels ``(n,)`` or ``(n, 1)`` in ``[0, k)``
          for 'sparse_categorical_crossentropy'.
        - ``validation_split``: the *last* fraction of ``x`` and ``y`` is held out for
          validation, taken before any shuffling (Keras's rule), so the split is the same
          every epoch and every run: with ``n`` samples the first
          ``floor(n * (1 - validation_split))`` train. ``validation_data=(x_val, y_val)``
          (or ``(x_val, y_val, sample_weight_val)``) overrides it.
        - ``validation_freq``: validate every that many epochs (an int), or after the
          epochs listed (1-based, e.g. ``[1, 5, 10]``).
        - ``sample_weight (n,)`` weights each example's loss (the batch loss is
          ``sum_i w_i l_i / batch_size``) and its accuracy; ``class_weight`` ({class:
          weight}) gives every example the weight of its class. Not both at once.
        - The training 'loss' and 'accuracy' of an epoch are running averages over the
          batches of that epoch, weighted by batch size, computed while the weights change
          (as Keras reports them); 'val_loss' / 'val_accuracy' are computed after the epoch
          with the final weights, in inference mode.
        - Batches are cast to the model's dtype one at a time: a float64 ``x`` (the seed
          divides by 255.0) is never copied whole.
        - ``shuffle``: a new permutation of the training part each epoch, drawn from
          minicnn's generator (:func:`minicnn.utils.set_random_seed`).
        - ``verbose``: 0 silent; 1 (or 'auto') a progress bar per epoch with ETA, loss and
          accuracy, redrawn in place on a terminal (only the final line per epoch when the
          output is not a terminal); 2 one line per epoch.
        - Non-finite values: a batch of ``x`` holding NaN/inf raises
          :class:`minicnn.callbacks.NonFiniteLossError` (a ValueError) naming the epoch and
          batch; so does a NaN/inf loss while ``model.stop_on_nonfinite`` is True (the
          default). A batch with a non-finite loss never updates the weights.

        Returns a :class:`minicnn.callbacks.History`: ``history`` maps 'loss', each metric
        and, with validation, 'val_loss' and 'val_<metric>' to per-epoch lists; ``epoch``
        lists the 0-based epochs run.
        """
        what = "fit"
        self._require_compiled(what)
        for arg, val in (("steps_per_epoch", steps_per_epoch),
                         ("validation_steps", validation_steps)):
            if val is not None:
                raise ValueError(f"{what}: {arg} is not supported by minicnn yet (it trains "
                                 f"on arrays, one pass per epoch), received {val!r}")
        batch_size = check_batch_size(batch_size, what)
        val_batch_size = (batch_size if validation_batch_size is None
                          else check_batch_size(validation_batch_size, what))
        if not _is_int(epochs) or epochs < 0:
            raise ValueError(f"{what}: epochs must be an integer >= 0, received {epochs!r}")
        if not _is_int(initial_epoch) or initial_epoch < 0:
            raise ValueError(f"{what}: initial_epoch must be an integer >= 0, "
                             f"received {initial_epoch!r}")
        if isinstance(validation_split, bool) \
                or not isinstance(validation_split, (int, float, np.floating)) \
                or not 0 <= validation_split < 1:
            raise ValueError(f"{what}: validation_split must be a float in [0, 1), "
                             f"received {validation_split!r}")
        validate_at = _validation_epochs(validation_freq, epochs, what)
        verbose = progress.check_verbose(verbose, what)
        xs = self.check_x(x, what)
        n_all = len(xs[0])
        y = self.check_y(n_all, y, what)
        w = self.check_sample_weight(n_all, sample_weight, what)
        if class_weight is not None:
            if w is not None:
                raise ValueError(f"{what}: you cannot use class_weight and sample_weight at "
                                 f"the same time")
            w = self.class_weights(y, class_weight, what)
        val = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError(f"{what}: validation_data must be a tuple (x_val, y_val) or "
                                 f"(x_val, y_val, sample_weight_val), received "
                                 f"{type(validation_data).__name__}")
            xv = self.check_x(validation_data[0], what, "validation_data x")
            yv = self.check_y(len(xv[0]), validation_data[1], what, "validation_data y")
            wv = self.check_sample_weight(len(xv[0]), validation_data[2] if len(validation_data)
                                          == 3 else None, what, "validation_data sample_weight")
            val = (xv, yv, wv)
        elif validation_split > 0:
            split = int(math.floor(n_all * (1.0 - validation_split)))
            if split == 0 or split == n_all:
                raise ValueError(f"{what}: validation_split={validation_split} leaves "
                                 f"{split} training and {n_all - split} validation samples "
                                 f"out of {n_all}")
            val = ([x[split:] for x in xs], y[split:], None if w is None else w[split:])
            xs, y = [x[:split] for x in xs], y[:split]
            w = None if w is None else w[:split]

        history = History()
        # History last, as in Keras: it records the logs as the user's callbacks leave them
        cbs = list(callbacks or []) + [history]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise ValueError(f"{what}: callbacks must be minicnn Callback objects, "
                                 f"received {cb!r}")
        if self.stop_on_nonfinite and not any(isinstance(c, TerminateOnNonFinite) for c in cbs):
            cbs.append(TerminateOnNonFinite())
        data = EpochIterator(xs, y, w, batch_size, self.dtype, shuffle=bool(shuffle), what=what)
        log_names = ["loss"] + self.metrics
        if val is not None:
            log_names += ["val_" + k for k in log_names]
        params = {"epochs": epochs, "steps": data.num_batches, "batch_size": batch_size,
                  "samples": data.n, "verbose": verbose, "do_validation": val is not None,
                  "metrics": log_names}
        callback_list = CallbackList(cbs, model=self, params=params)
        self.stop_training = False
        self.history = history
        callback_list.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            callback_list.on_epoch_begin(epoch)
            if verbose:
                progress.print_line(f"Epoch {epoch + 1}/{epochs}")
            bar = progress.Progbar(data.num_batches, verbose=verbose)
            t0 = time.perf_counter()
            totals = _Totals(self.metrics)
            for step, _, xb, yb, wb in data.epoch(epoch):
                callback_list.on_train_batch_begin(step)
                batch = self.train_step(xb[0] if len(xb) == 1 else xb, yb, wb)
                nb = len(yb)
                weight = nb if wb is None else float(np.sum(wb))
                correct = batch[self.metrics[0]] * weight if self.metrics else 0.0
                totals.add(batch["loss"], nb, correct, weight)
                logs = dict(totals.logs(), batch_loss=batch["loss"])
                callback_list.on_train_batch_end(step, logs)
                bar.update(step + 1, logs)
                if self.stop_training:
                    break
            logs = totals.logs()
            if val is not None and (epoch + 1) in validate_at:
                val_logs = self._evaluate(*val, val_batch_size, "fit (validation)")
                logs.update(("val_" + k, v) for k, v in val_logs.items())
            if self.optimizer.schedule is not None:     # the rate of the next step
                logs["learning_rate"] = float(self.optimizer.learning_rate)
            elapsed = time.perf_counter() - t0
            callback_list.on_epoch_end(epoch, logs)
            bar.finish(logs, elapsed)
            if self.stop_training:
                break
        callback_list.on_train_end()
        return history


def _validation_epochs(validation_freq, epochs, what):
    """The set of 1-based epochs after which ``fit`` validates."""
    if _is_int(validation_freq) and validation_freq >= 1:
        return {e for e in range(1, epochs + 1) if e % int(validation_freq) == 0}
    if isinstance(validation_freq, (list, tuple, set)) and all(
            _is_int(e) and e >= 1 for e in validation_freq):
        return {int(e) for e in validation_freq}
    raise ValueError(f"{what}: validation_freq must be an integer >= 1 or a list of epochs "
                     f"(1-based), received {validation_freq!r}")
