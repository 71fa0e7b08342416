"""Optimizers: Adam, AdamW and SGD (momentum, Nesterov), Keras's formulas and defaults.

An optimizer updates parameter arrays in place and keeps its state (moments,
velocities) per parameter, keyed by ``"layer_name/param_name"``. It never owns
the parameters: the layers do.

Every optimizer takes, as Keras 3's do:

- ``learning_rate``: a number or a schedule (:mod:`minicnn.optimizers.schedules`);
  ``optimizer.learning_rate`` reads as the rate of the next step (a float);
- ``weight_decay``: decoupled decay, ``w -= learning_rate * weight_decay * w`` before
  each update (AdamW's default 0.004; None elsewhere);
- ``clipnorm`` (each gradient scaled to norm at most ``clipnorm``), ``global_clipnorm``
  (all gradients scaled together to a global norm at most that) and ``clipvalue``
  (each element clipped to ``[-clipvalue, clipvalue]``), applied before the decay and
  the update.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from . import ops
from . import schedules
from .schedules import LearningRateSchedule


def _real(value) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _optional_positive(value, arg, owner):
    if value is None:
        return None
    if not _real(value) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{owner}: {arg} must be a positive number or None, received {value!r}")
    return float(value)


class Optimizer:
    def __init__(self, learning_rate, weight_decay=None, clipnorm=None, clipvalue=None,
                 global_clipnorm=None, name=None, **kwargs):
        owner = type(self).__name__
        if kwargs:
            raise ValueError(f"{owner}: unexpected argument(s) {', '.join(sorted(kwargs))}")
        self._schedule = None
        self.learning_rate = learning_rate
        if weight_decay is not None and (not _real(weight_decay) or weight_decay < 0):
            raise ValueError(f"{owner}: weight_decay must be a number >= 0 or None, "
                             f"received {weight_decay!r}")
        self.weight_decay = None if weight_decay is None else float(weight_decay)
        self.clipnorm = _optional_positive(clipnorm, "clipnorm", owner)
        self.clipvalue = _optional_positive(clipvalue, "clipvalue", owner)
        self.global_clipnorm = _optional_positive(global_clipnorm, "global_clipnorm", owner)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError(f"{owner}: give clipnorm or global_clipnorm, not both")
        self.name = name or owner.lower()
        self.iterations = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step (a schedule evaluated at ``iterations``)."""
        if self._schedule is not None:
            return float(self._schedule(self.iterations))
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value):
        if isinstance(value, LearningRateSchedule):
            self._schedule = value
            return
        if self._schedule is not None:
            raise TypeError(f"{type(self).__name__}: the learning rate follows a "
                            f"{type(self._schedule).__name__} schedule and cannot be set")
        if not _real(value) or not value > 0 or not math.isfinite(value):
            raise ValueError(f"{type(self).__name__}: learning_rate must be a positive number "
                             f"or a schedule, received {value!r}")
        self._lr = float(value)

    @property
    def schedule(self):
        """The learning-rate schedule, or None for a constant rate."""
        return self._schedule

    def _slots(self, key, param):
        raise NotImplementedError

    def _clipped(self, grads):
        if self.clipvalue is not None:
            grads = [np.clip(g, -g.dtype.type(self.clipvalue), g.dtype.type(self.clipvalue))
                     for g in grads]
        if self.clipnorm is not None:
            out = []
            for g in grads:
                norm = float(np.sqrt(np.sum(np.square(g, dtype=np.float64))))
                out.append(g * g.dtype.type(self.clipnorm / norm) if norm > self.clipnorm else g)
            grads = out
        if self.global_clipnorm is not None:
            norm = math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads))
            if norm > self.global_clipnorm:
                grads = [g * g.dtype.type(self.global_clipnorm / norm) for g in grads]
        return grads

    def apply_gradients(self, items):
        """One step. ``items``: iterable of ``(key, param, grad)``; ``param`` changes in place.

        In order: the gradients are clipped, the weights decayed by
        ``learning_rate * weight_decay``, then updated; the learning rate is the
        schedule's at ``iterations`` (0 for the first step), then ``iterations`` grows by 1.
        """
        items = list(items)
        lr = self.learning_rate
        grads = self._clipped([g for _, _, g in items])
        self.iterations += 1
        for (key, param, _), grad in zip(items, grads):
            if self.weight_decay:
                param -= param * param.dtype.type(lr * self.weight_decay)
            slots = self.state.get(key)
            if slots is None:
                slots = self.state[key] = self._slots(key, param)
            self._update(param, grad, slots, lr)

    # -- saving: plain arrays and numbers only ------------------------------------
    def get_config(self):
        lr = (self._lr if self._schedule is None else
              {"class_name": type(self._schedule).__name__,
               "config": self._schedule.get_config()})
        cfg = {"class_name": type(self).__name__, "learning_rate": lr}
        for key in ("weight_decay", "clipnorm", "clipvalue", "global_clipnorm"):
            if getattr(self, key) is not None:
                cfg[key] = getattr(self, key)
        return cfg

    def get_state(self):
        arrays = {f"{key}/{slot}": arr for key, slots in self.state.items()
                  for slot, arr in slots.items()}
        return self.iterations, arrays

    def set_state(self, iterations, arrays):
        self.iterations = int(iterations)
        self.state = {}
        for name, arr in arrays.items():
            key, slot = name.rsplit("/", 1)
            self.state.setdefault(key, {})[slot] = np.array(arr)


class Adam(Optimizer):
    """Adam (Kingma & Ba) with Keras's defaults.

    Per step ``t`` and parameter ``w`` with gradient ``g``::

        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g**2
        alpha = learning_rate * sqrt(1 - beta_2**t) / (1 - beta_1**t)
        w -= alpha * m / (sqrt(v) + epsilon)

    Epsilon placement: epsilon is added to ``sqrt(v)`` (the uncorrected second
    moment) after the bias corrections are folded into ``alpha``: the
    "efficient version" at the end of section 2 of the paper, which is what
    Keras and TensorFlow compute. It makes ``epsilon=1e-7`` mean exactly what it
    means in Keras (the textbook form ``m_hat / (sqrt(v_hat) + eps)`` differs
    by a factor ``sqrt(1 - beta_2**t)`` on epsilon), so the seed recipe trains
    the same way here as there.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, weight_decay=None, **kwargs):
        if amsgrad:
            raise ValueError(f"{type(self).__name__}: amsgrad=True is not supported by minicnn")
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)
        for arg, val in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not _real(val) or not 0 <= val < 1:
                raise ValueError(f"Adam: {arg} must be in [0, 1), received {val!r}")
        if not _real(epsilon) or not epsilon > 0:
            raise ValueError(f"Adam: epsilon must be positive, received {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _slots(self, key, param):
        return {"m": np.zeros_like(param), "v": np.zeros_like(param)}

    def _update(self, param, grad, slots, lr):
        ops.adam_update(param, grad, slots["m"], slots["v"], lr, self.beta_1,
                        self.beta_2, self.epsilon, self.iterations)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(beta_1=self.beta_1, beta_2=self.beta_2, epsilon=self.epsilon)
        return cfg


class SGD(Optimizer):
    """Stochastic gradient descent with optional (Nesterov) momentum, Keras's formulas::

        velocity = momentum * velocity - learning_rate * g
        w += velocity                                      (plain momentum)
        w += momentum * velocity - learning_rate * g       (nesterov=True)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None,
                 **kwargs):
        super().__init__(learning_rate, weight_decay=weight_decay, **kwargs)
        if not _real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), received {momentum!r}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _slots(self, key, param):
        return {"velocity": np.zeros_like(param)}

    def _update(self, param, grad, slots, lr):
        ops.sgd_update(param, grad, slots["velocity"], lr, self.momentum, self.nesterov)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter), Keras's default
    ``weight_decay=0.004``: each step first ``w -= learning_rate * weight_decay * w``,
    then the Adam update of :class:`Adam`."""

    def __init__(self, learning_rate=1e-3, weight_decay=0.004, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, amsgrad=False, **kwargs):
        if weight_decay is None:
            raise ValueError("AdamW: weight_decay must be a number >= 0, received None")
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad,
                         weight_decay=weight_decay, **kwargs)


OPTIMIZERS = {"adam": Adam, "adamw": AdamW, "sgd": SGD}


def get(optimizer) -> Optimizer:
    if isinstance(optimizer, Optimizer):
        return optimizer
    if isinstance(optimizer, str) and optimizer.lower() in OPTIMIZERS:
        return OPTIMIZERS[optimizer.lower()]()
    raise ValueError(f"compile: unknown optimizer {optimizer!r}; known optimizers: "
                     f"{', '.join(OPTIMIZERS)}")


def from_config(cfg) -> Optimizer:
    cfg = dict(cfg)
    name = cfg.pop("class_name", None)
    classes = {cls.__name__: cls for cls in OPTIMIZERS.values()}
    if name not in classes:
        raise ValueError(f"unknown optimizer class {name!r}")
    if isinstance(cfg.get("learning_rate"), dict):
        cfg["learning_rate"] = schedules.from_config(cfg["learning_rate"])
    return classes[name](**cfg)


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
