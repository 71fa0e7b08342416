"""Sequential: a Keras-style model over minicnn layers, with save/load and no pickle.

The file format lives in :mod:`minicnn.saving`, the progress output in
:mod:`minicnn.progress`.

The seed program of the project (the Keras CIFAR-10 tutorial) runs on it with
only its imports changed::

    from minicnn import layers, models, datasets
    from minicnn.utils import to_categorical
"""
from __future__ import annotations

import math
import os
import time

import numpy as np

from . import config, losses, optimizers, progress, saving
from .callbacks import Callback, History, NonFiniteLossError, TerminateOnNonFinite
from .layers import LAYER_CLASSES, Layer, fused

METRICS = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy")


class ModelNotCompiledError(ValueError, RuntimeError):
    """``fit``/``evaluate``/``train_on_batch`` before ``compile``."""


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


class Sequential:
    """A linear stack of layers with Keras's API.

    Parameters
    ----------
    layers : list of :class:`minicnn.layers.Layer`, optional
        Added in order with :meth:`add`. The model is built as soon as the first layer
        has an ``input_shape`` (or by :meth:`build`, or from the first data it is given).
    name : str, optional

    The life of a model, as in Keras: ``add`` / ``build`` -> ``summary`` ->
    ``compile(optimizer, loss, metrics)`` -> ``fit`` -> ``evaluate`` / ``predict`` ->
    ``save`` / :func:`load_model`. For learners, :meth:`forward` and :meth:`backprop`
    expose one pass at a time; ``train_on_batch`` is ``backprop`` plus the optimizer step.
    Images are NHWC: ``x`` has shape ``(n, *input_shape)``, e.g. ``(n, 32, 32, 3)``.
    Bad arguments raise ValueError naming the argument and the value received.
    """

    def __init__(self, layers=None, name=None):
        self.name = name or "sequential"
        self._layers: list[Layer] = []
        self.built = False
        self.input_shape = None
        self.optimizer = None
        self.loss = None
        self.metrics: list[str] = []
        self.compiled = False
        self.stop_training = False
        #: stop ``fit`` with an error naming the epoch and batch when the loss is NaN/inf
        self.stop_on_nonfinite = True
        #: run Conv2D(relu) + MaxPooling2D(2, 2) as one fused step on the numba backend
        self.fuse = True
        self._plan = self._plan_for = None
        self.history = None
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self):
        return list(self._layers)

    def add(self, layer):
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential.add: expected a minicnn layer, received {layer!r}")
        if any(layer.name == other.name for other in self._layers):
            raise ValueError(f"Sequential.add: a layer named {layer.name!r} is already in the model")
        was_built = self.built
        self._layers.append(layer)
        self.built = False
        try:
            if len(self._layers) == 1 and layer.input_shape is not None:
                self.build(layer.input_shape)
            elif self.input_shape is not None:
                self.build(self.input_shape)
        except Exception:
            # a layer that does not fit (Dense on images, ...) must not stay in the model
            self._layers.pop()
            self.built = was_built
            raise

    def build(self, input_shape=None):
        """Build every layer for inputs of ``input_shape``.

        ``input_shape`` excludes the batch dimension; Keras's ``(None, 32, 32, 3)``
        is accepted too. Without it the first layer's ``input_shape`` is used.
        """
        if not self._layers:
            raise ValueError("Sequential.build: the model has no layers; add some with "
                             "model.add(layer) first")
        if input_shape is None:
            if self._layers[0].input_shape is None:
                raise ValueError("Sequential.build: no input_shape given and the first layer "
                                 "has none")
            input_shape = self._layers[0].input_shape
        try:
            input_shape = tuple(input_shape)
            if input_shape and input_shape[0] is None:
                input_shape = input_shape[1:]
            shape = tuple(int(s) for s in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"Sequential.build: input_shape must be a tuple of ints (without "
                             f"the batch dimension), received {input_shape!r}") from None
        if not shape or any(s < 1 for s in shape):
            raise ValueError(f"Sequential.build: input_shape must hold positive sizes (without "
                             f"the batch dimension), received {input_shape!r}")
        weights_below = False
        built_here = []   # (layer, the input_shape it was given) for layers built by this call
        try:
            for layer in self._layers:
                if not layer.built or layer.input_shape != shape:
                    if layer.built:
                        raise ValueError(f"Sequential.build: layer {layer.name!r} was built for "
                                         f"input shape {layer.input_shape}, received {shape}")
                    built_here.append((layer, layer.input_shape))
                    layer.build(shape)
                # dL/dx is needed only when some layer below has weights: the first layer, and
                # a Conv2D behind augmentation layers, skip computing it
                layer.compute_input_gradient = weights_below
                weights_below = weights_below or bool(layer.params)
                shape = layer.output_shape
        except Exception:
            # a layer that does not fit: leave the others as they were, so that a retry
            # with other data starts clean
            for layer, given in built_here:
                layer.unbuild(given)
            raise
        self.input_shape = tuple(self._layers[0].input_shape)
        self.built = True
        return self

    @property
    def output_shape(self):
        return self._layers[-1].output_shape if self.built else None

    def count_params(self) -> int:
        return int(sum(layer.count_params() for layer in self._layers))

    def _weighted(self):
        return [layer for layer in self._layers if layer.params]

    def get_weights(self):
        """Copies of every parameter array, layer by layer (kernel, then bias), as Keras."""
        return [p.copy() for layer in self._weighted() for p in layer.params.values()]

    def set_weights(self, weights):
        weights = list(weights)
        slots = [(layer, key) for layer in self._weighted() for key in layer.params]
        if len(weights) != len(slots):
            raise ValueError(f"set_weights: the model has {len(slots)} weight arrays, "
                             f"received {len(weights)}")
        for (layer, key), w in zip(slots, weights):
            w = np.asarray(w)
            if w.shape != layer.params[key].shape:
                raise ValueError(f"set_weights: layer {layer.name!r} {key} has shape "
                                 f"{layer.params[key].shape}, received shape {w.shape}")
            layer.params[key][...] = w

    def summary(self, print_fn=print):
        """Print a Keras-like table: layer (type), output shape, parameters; then the totals."""
        self._require_built("summary")
        rows = [(f"{layer.name} ({type(layer).__name__})",
                 str((None,) + tuple(layer.output_shape)),
                 f"{layer.count_params():,}") for layer in self._layers]
        head = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(r[i]) for r in rows + [head]) + 3 for i in range(3)]
        line = lambda r: "".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip()  # noqa: E731
        total = self.count_params()
        trainable = sum(l.count_params() for l in self._layers if l.trainable)
        width = sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * width)
        print_fn(line(head))
        print_fn("=" * width)
        for i, r in enumerate(rows):
            print_fn(line(r))
            print_fn(("_" if i < len(rows) - 1 else "=") * width)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss=None, metrics=None):
        """Choose the optimizer, the loss and the metrics.

        ``optimizer``: 'adam', 'sgd' or an optimizer object (:mod:`minicnn.optimizers`);
        ``loss``: 'categorical_crossentropy', 'sparse_categorical_crossentropy' or a loss
        object (:mod:`minicnn.losses`); ``metrics``: a list of names among
        :data:`METRICS` (every one is the classification accuracy: argmax of the output
        against the label). Each metric is logged under the name given, as in Keras:
        ``metrics=['accuracy']`` gives ``history.history['accuracy']`` and
        ``'val_accuracy'``.
        """
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='categorical_crossentropy'")
        optimizer = optimizers.get(optimizer)
        loss = losses.get(loss)
        if isinstance(metrics, str):
            metrics = [metrics]
        names = []
        for m in metrics or []:
            if not isinstance(m, str) or m.lower() not in METRICS:
                raise ValueError(f"compile: unknown metric {m!r}; known metrics: "
                                 f"{', '.join(METRICS)}")
            if m not in names:
                names.append(m)
        self.optimizer, self.loss, self.metrics = optimizer, loss, names
        self.compiled = True

    def _require_compiled(self, what):
        if not self.compiled:
            raise ModelNotCompiledError(f"{what}: the model must be compiled first: call "
                                        f"model.compile(optimizer, loss, metrics)")

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what}: the model is not built yet; give the first layer an "
                             f"input_shape or call build(input_shape)")

    # ------------------------------------------------------------------ passes
    @property
    def dtype(self):
        return self._layers[0].dtype

    def _fused_softmax_ce(self):
        """True when the last layer ends in softmax and the loss is a cross-entropy on
        probabilities: then the loss is computed from the logits with the fused gradient."""
        last = self._layers[-1]
        return (isinstance(self.loss, losses._CrossEntropy) and not self.loss.from_logits
                and getattr(last, "activation", None) == "softmax"
                and hasattr(last, "backward_preactivation"))

    def forward(self, x, training=False):
        """Run every layer's forward pass on a batch; returns the model output.

        Layer by layer on every backend, so each layer's cache holds this batch.
        """
        self._ensure_built(x)
        for layer in self._layers:
            x = layer.forward(x, training=training)
        return x

    def _steps(self):
        """What ``fit``, ``predict`` and friends run: on the numba backend, Conv2D(relu) +
        MaxPooling2D(2, 2) pairs fused into one step (:mod:`minicnn.layers.fused`); the
        layers one by one on the reference and numpy backends."""
        if config.get_backend() != "numba" or not self.fuse:
            return self._layers
        if self._plan is None or self._plan_for != self._layers:
            self._plan, self._plan_for = fused.plan(self._layers), list(self._layers)
        return self._plan

    def _run(self, x, training=False):
        self._ensure_built(x)
        for step in self._steps():
            x = step.forward(x, training=training)
        return x

    def _ensure_built(self, x):
        if not self.built:
            self.build(np.shape(x)[1:])

    def _loss_and_grad(self, y_pred, y_true):
        if self._fused_softmax_ce():
            last = self._layers[-1]
            z = last._cache[1] if len(last._cache) == 3 else last._cache[0]
            return self.loss.from_logits_forward(z, y_true), True
        return self.loss.forward(y_pred, y_true), False

    def backprop(self, x, y):
        """Forward (training=True), loss, and every layer's backward pass; no update.

        ``x (n, *input_shape)``, ``y`` targets for the compiled loss. Leaves each layer's
        ``grads`` (same keys and shapes as ``params``) holding dL/dparam of the batch-mean
        loss, and returns that loss (a float). The weights and the optimizer are untouched.
        With a softmax output and a cross-entropy loss the gradient enters the last layer
        as the fused ``(softmax(z) - y) / n``.
        """
        self._require_compiled("backprop")
        x, y = self._check_batch(x, y, "backprop")
        loss, _ = self._backprop(x, y)
        return float(loss)

    def _backprop(self, x, y):
        y_pred = self._run(x, training=True)
        (loss, dy), fused_loss = self._loss_and_grad(y_pred, y)
        steps = self._steps()
        if fused_loss:
            dy = steps[-1].backward_preactivation(dy)
            steps = steps[:-1]
        for step in reversed(steps):
            if dy is None:
                break
            dy = step.backward(dy)
        return loss, y_pred

    def _apply_gradients(self):
        self.optimizer.apply_gradients(
            (f"{layer.name}/{key}", layer.params[key], layer.grads[key])
            for layer in self._layers if layer.trainable for key in layer.params)

    def train_on_batch(self, x, y):
        """One optimizer step on one batch: :meth:`backprop` plus the update.

        Returns ``[loss, metric...]`` (a float when no metrics were compiled).
        """
        self._require_compiled("train_on_batch")
        x, y = self._check_batch(x, y, "train_on_batch")
        loss, y_pred = self._backprop(x, y)
        self._apply_gradients()
        return self._results(float(loss), y_pred, y)

    def test_on_batch(self, x, y):
        """Loss and metrics on one batch, inference mode. Returns like :meth:`train_on_batch`."""
        self._require_compiled("test_on_batch")
        x, y = self._check_batch(x, y, "test_on_batch")
        y_pred = self._run(x, training=False)
        (loss, _), _ = self._loss_and_grad(y_pred, y)
        return self._results(float(loss), y_pred, y)

    def _results(self, loss, y_pred, y):
        if not self.metrics:
            return loss
        return [loss] + [self._correct(y_pred, y) / len(y) for _ in self.metrics]

    def _correct(self, y_pred, y):
        pred = np.argmax(y_pred, axis=-1)
        true = np.asarray(y).reshape(-1) if self.loss.sparse else np.argmax(y, axis=-1)
        return int(np.sum(pred == true))

    # ------------------------------------------------------------------ validation
    def _check_x(self, x, what, arg="x"):
        """``x`` as an array of the model's input shape; never copied when it already is one
        (a float64 ``x`` is cast batch by batch later, see :meth:`_cast`)."""
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise ValueError(f"{what}: {arg} must be a real numeric array, received dtype {x.dtype}")
        if x.ndim < 2 or len(x) == 0:
            raise ValueError(f"{what}: {arg} must be a non-empty batch of shape (n, ...), "
                             f"received shape {x.shape}")
        if not self._layers:
            raise ValueError(f"{what}: the model has no layers; add some with model.add(layer)")
        self._ensure_built(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{what}: {arg} must have shape (n, "
                             f"{', '.join(map(str, self.input_shape))}) to match the model input, "
                             f"received {x.shape}")
        return x

    def _check_y(self, x, y, what, arg="y"):
        y = np.asarray(y)
        if y.ndim == 0 or len(y) != len(x):
            got = "a scalar" if y.ndim == 0 else f"{len(y)} labels"
            raise ValueError(f"{what}: x and {arg} must have the same length, received "
                             f"{len(x)} images and {got}")
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            raise ValueError(f"{what}: {arg} must be a numeric array, received dtype {y.dtype}")
        self.loss.check_targets(y, self.output_shape[-1], arg)
        return y

    def _check_batch(self, x, y, what):
        x = self._check_x(x, what)
        y = self._check_y(x, y, what)
        xb = self._cast(x)
        _check_finite(xb, what, "x")
        return xb, y

    def _cast(self, x):
        """A batch in the model's dtype (a copy only when the dtype differs)."""
        return x if x.dtype == self.dtype else x.astype(self.dtype)

    @staticmethod
    def _check_batch_size(batch_size, what):
        if batch_size is None:          # Keras's default
            return 32
        if not _is_int(batch_size) or batch_size < 1:
            raise ValueError(f"{what}: batch_size must be an integer >= 1, received {batch_size!r}")
        return int(batch_size)

    def _batches(self, x, batch_size, what, arg="x"):
        """Yield ``(start, batch)`` over ``x`` in order, each batch cast and checked finite."""
        for i, start in enumerate(range(0, len(x), batch_size)):
            xb = self._cast(x[start:start + batch_size])
            _check_finite(xb, what, arg, f" (batch {i + 1}, rows {start}:{start + len(xb)})")
            yield start, xb

    # ------------------------------------------------------------------ training loop
    def fit(self, x, y, batch_size=32, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, initial_epoch=0):
        """Train for ``epochs`` epochs (counting from ``initial_epoch``), as Keras does.

        - ``x``: images ``(n, *input_shape)`` of any real dtype; ``y``: one-hot ``(n, k)``
          for 'categorical_crossentropy', integer labels ``(n,)`` or ``(n, 1)`` in
          ``[0, k)`` for 'sparse_categorical_crossentropy'.
        - ``validation_split``: the *last* fraction of ``x`` and ``y`` is held out for
          validation, taken before any shuffling (Keras's rule), so the split is the same
          every epoch and every run: with ``n`` samples the first
          ``floor(n * (1 - validation_split))`` train. ``validation_data=(x_val, y_val)``
          overrides it.
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
        batch_size = self._check_batch_size(batch_size, what)
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
        verbose = progress.check_verbose(verbose, what)
        x = self._check_x(x, what)
        y = self._check_y(x, y, what)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError(f"{what}: validation_data must be a tuple (x_val, y_val), "
                                 f"received {type(validation_data).__name__}")
            x_val = self._check_x(validation_data[0], what, "validation_data x")
            y_val = self._check_y(x_val, validation_data[1], what, "validation_data y")
        elif validation_split > 0:
            split = int(math.floor(len(x) * (1.0 - validation_split)))
            if split == 0 or split == len(x):
                raise ValueError(f"{what}: validation_split={validation_split} leaves "
                                 f"{split} training and {len(x) - split} validation samples "
                                 f"out of {len(x)}")
            x, x_val, y, y_val = x[:split], x[split:], y[:split], y[split:]
        else:
            x_val = y_val = None

        history = History()
        # History last, as in Keras: it records the logs as the user's callbacks leave them
        cbs = list(callbacks or []) + [history]
        for cb in cbs:
            if not isinstance(cb, Callback):
                raise ValueError(f"{what}: callbacks must be minicnn Callback objects, "
                                 f"received {cb!r}")
        if self.stop_on_nonfinite and not any(isinstance(c, TerminateOnNonFinite) for c in cbs):
            cbs.append(TerminateOnNonFinite())
        n = len(x)
        steps = -(-n // batch_size)
        log_names = ["loss"] + self.metrics
        if x_val is not None:
            log_names += ["val_" + k for k in log_names]
        params = {"epochs": epochs, "steps": steps, "batch_size": batch_size, "samples": n,
                  "verbose": verbose, "do_validation": x_val is not None, "metrics": log_names}
        for cb in cbs:
            cb.set_model(self)
            cb.set_params(params)
        self.stop_training = False
        self.history = history
        for cb in cbs:
            cb.on_train_begin()
        for epoch in range(initial_epoch, epochs):
            for cb in cbs:
                cb.on_epoch_begin(epoch)
            if verbose:
                progress.print_line(f"Epoch {epoch + 1}/{epochs}")
            bar = progress.Progbar(steps, verbose=verbose)
            order = config.get_rng().permutation(n) if shuffle else None
            t0 = time.perf_counter()
            seen = correct = 0
            loss_sum = 0.0
            for step in range(steps):
                lo, hi = step * batch_size, min((step + 1) * batch_size, n)
                if shuffle:
                    idx = order[lo:hi]
                    xb, yb = x[idx], y[idx]
                else:
                    xb, yb = x[lo:hi], y[lo:hi]
                xb = self._cast(xb)
                for cb in cbs:
                    cb.on_train_batch_begin(step)
                _check_finite(xb, what, "x", f" in epoch {epoch + 1}, batch {step + 1}")
                loss, y_pred = self._backprop(xb, yb)
                loss = float(loss)
                if math.isfinite(loss):
                    self._apply_gradients()
                nb = len(xb)
                seen += nb
                loss_sum += loss * nb
                logs = {"loss": loss_sum / seen, "batch_loss": loss}
                if self.metrics:
                    correct += self._correct(y_pred, yb)
                    logs.update((name, correct / seen) for name in self.metrics)
                for cb in cbs:
                    cb.on_train_batch_end(step, logs)
                bar.update(step + 1, logs)
                if self.stop_training:
                    break
            logs = {"loss": loss_sum / max(seen, 1)}
            logs.update((name, correct / max(seen, 1)) for name in self.metrics)
            if x_val is not None:
                val_loss, val_acc = self._evaluate(x_val, y_val, batch_size, "fit (validation)")
                logs["val_loss"] = val_loss
                logs.update(("val_" + name, val_acc) for name in self.metrics)
            elapsed = time.perf_counter() - t0
            for cb in cbs:
                cb.on_epoch_end(epoch, logs)
            bar.finish(logs, elapsed)
            if self.stop_training:
                break
        for cb in cbs:
            cb.on_train_end()
        return history

    def _evaluate(self, x, y, batch_size, what):
        """Weighted mean loss and accuracy over all of ``x``, batch by batch."""
        n = len(x)
        loss_sum, correct = 0.0, 0
        for start, xb in self._batches(x, batch_size, what):
            yb = y[start:start + len(xb)]
            y_pred = self._run(xb, training=False)
            (loss, _), _ = self._loss_and_grad(y_pred, yb)
            loss_sum += float(loss) * len(xb)
            correct += self._correct(y_pred, yb)
        return loss_sum / n, correct / n

    def evaluate(self, x, y, batch_size=32, verbose=1):
        """Loss (and metrics) over ``x`` in inference mode, ``batch_size`` images at a time.

        Returns ``[loss, accuracy]`` (one accuracy per compiled metric), or the loss alone
        (a float) when no metrics were compiled. Both are means over all of ``x``.
        """
        what = "evaluate"
        self._require_compiled(what)
        batch_size = self._check_batch_size(batch_size, what)
        verbose = progress.check_verbose(verbose, what)
        x = self._check_x(x, what)
        y = self._check_y(x, y, what)
        t0 = time.perf_counter()
        loss, acc = self._evaluate(x, y, batch_size, what)
        if verbose:
            steps = -(-len(x) // batch_size)
            text = " - ".join([f"loss: {loss:.4f}"] + [f"{m}: {acc:.4f}" for m in self.metrics])
            progress.print_line(f"{steps}/{steps} - {time.perf_counter() - t0:.0f}s - {text}")
        return [loss] + [acc for _ in self.metrics] if self.metrics else loss

    def predict(self, x, batch_size=32, verbose=0):
        """Model outputs for ``x`` (probabilities for a softmax model), inference mode.

        Computed ``batch_size`` images at a time, so a large ``x`` never becomes one giant
        batch. Returns an array ``(n, *output_shape)`` in the model's dtype. ``verbose``
        is accepted for Keras compatibility and ignored.
        """
        what = "predict"
        batch_size = self._check_batch_size(batch_size, what)
        x = self._check_x(x, what)
        out = np.empty((len(x),) + tuple(self.output_shape), dtype=self.dtype)
        for start, xb in self._batches(x, batch_size, what):
            out[start:start + len(xb)] = self._run(xb, training=False)
        return out

    __call__ = forward

    # ------------------------------------------------------------------ saving
    def get_config(self):
        return {"name": self.name,
                "layers": [{"class_name": type(layer).__name__, "config": layer.get_config()}
                           for layer in self._layers]}

    def _weight_arrays(self):
        return {f"weights/{layer.name}/{key}": p for layer in self._layers
                for key, p in layer.params.items()}

    def save(self, path):
        """Save architecture (JSON), weights and optimizer state in one ``.npz``-format file.

        Nothing is pickled: the file holds plain arrays and one JSON document, and
        :func:`load_model` reads it with ``allow_pickle=False``. The optimizer state
        includes its moments and iteration count, so a resumed run takes exactly the
        same next steps. Layer random generators (seeded Dropout/augmentation) and
        minicnn's global generator state are stored too.
        """
        self._require_built("save")
        meta = {"format": saving.FORMAT, "version": saving.FORMAT_VERSION,
                "model": self.get_config(),
                "input_shape": list(self.input_shape),
                "rng_state": saving.jsonable_rng(config.get_rng()),
                "layer_rng_states": {l.name: saving.jsonable_rng(l._rng) for l in self._layers
                                     if getattr(l, "_rng", None) is not None}}
        arrays = dict(self._weight_arrays())
        if self.compiled:
            meta["compile"] = {"optimizer": self.optimizer.get_config(),
                               "loss": self.loss.get_config(), "metrics": self.metrics}
            iterations, state = self.optimizer.get_state()
            meta["optimizer_iterations"] = iterations
            arrays.update({f"optimizer/{k}": v for k, v in state.items()})
        saving.write_file(path, meta, arrays)

    def save_weights(self, path):
        """Save only the weights (and the layer names and shapes) to ``path``."""
        self._require_built("save_weights")
        meta = {"format": saving.FORMAT, "version": saving.FORMAT_VERSION, "weights_only": True,
                "model": self.get_config(), "input_shape": list(self.input_shape)}
        saving.write_file(path, meta, self._weight_arrays())

    def load_weights(self, path):
        """Load weights saved by :meth:`save` or :meth:`save_weights`.

        Weights are matched layer by layer in order (layers without weights are skipped),
        so the names may differ but the architecture must agree: a missing array or a
        shape that differs raises ValueError naming the layer and both shapes, and then
        no weight has changed. An unbuilt model is first built for the file's input shape.
        """
        path = os.fspath(path)
        meta, arrays = saving.read_file(path, "load_weights")
        if not self.built:
            try:
                self.build(tuple(meta["input_shape"]))
            except (KeyError, TypeError):
                raise ValueError(f"load_weights: {path!r} does not record an input shape; "
                                 f"build the model first") from None
        saved_layers = []          # [(layer name, {param: array})] in file order
        for k, v in arrays.items():
            if not k.startswith("weights/"):
                continue
            lname, key = k[len("weights/"):].rsplit("/", 1)
            if not saved_layers or saved_layers[-1][0] != lname:
                saved_layers.append((lname, {}))
            saved_layers[-1][1][key] = v
        mine = self._weighted()
        if len(saved_layers) != len(mine):
            raise ValueError(f"load_weights: {path!r} holds weights for {len(saved_layers)} "
                             f"layers ({', '.join(n for n, _ in saved_layers)}), the model has "
                             f"{len(mine)} layers with weights "
                             f"({', '.join(l.name for l in mine)})")
        for layer, (lname, params) in zip(mine, saved_layers):
            for key, p in layer.params.items():
                if key not in params:
                    raise ValueError(f"load_weights: layer {layer.name!r} needs {key!r}, "
                                     f"missing in {path!r} (saved layer {lname!r})")
                if params[key].shape != p.shape:
                    raise ValueError(f"load_weights: layer {layer.name!r} {key} has shape "
                                     f"{p.shape}, the file's layer {lname!r} has shape "
                                     f"{params[key].shape}")
        for layer, (_, params) in zip(mine, saved_layers):
            for key, p in layer.params.items():
                p[...] = params[key]


def load_model(path, restore_rng=False):
    """Load a model written by :meth:`Sequential.save` (never unpickles anything).

    The file is read with ``np.load(allow_pickle=False)``; anything that is not a
    minicnn model file (another ``.npz``, a pickle, random bytes, a truncated file)
    raises ValueError. A model saved after ``compile`` comes back compiled with its
    optimizer state (moments and iteration count), so training continues exactly:
    the next steps on the same batches give the same weights as without the round trip.

    With ``restore_rng=True`` minicnn's global generator is put back in the state
    it had at saving time, so shuffling and dropout continue exactly (used by
    ``minicnn train --resume``).
    """
    path = os.fspath(path)
    meta, arrays = saving.read_file(path, "load_model")
    if meta.get("weights_only"):
        raise ValueError(f"load_model: {path!r} holds weights only (written by save_weights); "
                         f"build the model and call model.load_weights({path!r})")
    try:
        cfg = meta["model"]
        model = Sequential(name=cfg.get("name"))
        for entry in cfg["layers"]:
            cls = LAYER_CLASSES.get(entry["class_name"])
            if cls is None:
                raise ValueError(f"unknown layer class {entry['class_name']!r}; known layers: "
                                 f"{', '.join(LAYER_CLASSES)}")
            model.add(saving.layer_from_config(cls, entry["config"]))
        model.build(tuple(meta["input_shape"]))
        for layer in model.layers:
            for key, p in layer.params.items():
                name = f"weights/{layer.name}/{key}"
                got = arrays.get(name)
                if got is None or got.shape != p.shape or got.dtype.kind not in "fiu":
                    desc = "nothing" if got is None else f"shape {got.shape} dtype {got.dtype}"
                    raise ValueError(f"layer {layer.name!r} {key} should have shape {p.shape}, "
                                     f"the file has {desc}")
                p[...] = got
        for layer in model.layers:
            state = meta.get("layer_rng_states", {}).get(layer.name)
            if state is not None:
                layer._rng = saving.rng_from_json(state)
        if "compile" in meta:
            comp = meta["compile"]
            model.compile(optimizers.from_config(comp["optimizer"]),
                          losses.from_config(comp["loss"]), comp.get("metrics") or None)
            state = {k[len("optimizer/"):]: v for k, v in arrays.items()
                     if k.startswith("optimizer/")}
            if any(v.dtype.kind != "f" for v in state.values()):
                raise ValueError("optimizer state arrays must be floating point")
            model.optimizer.set_state(meta.get("optimizer_iterations", 0), state)
        rng = (saving.rng_from_json(meta["rng_state"])
               if restore_rng and meta.get("rng_state") else None)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"load_model: {path!r} has an invalid model description: {exc}") from None
    if rng is not None:
        config._rng = rng
    return model


def _check_finite(x, what, arg, where=""):
    if not np.all(np.isfinite(x)):
        raise NonFiniteLossError(f"{what}: {arg} holds NaN or inf{where}")
