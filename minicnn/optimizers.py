"""Optimizers: Adam and SGD (momentum, Nesterov), Keras's formulas and defaults.

An optimizer updates parameter arrays in place and keeps its state (moments,
velocities) per parameter, keyed by ``"layer_name/param_name"``. It never owns
the parameters: the layers do.
"""
from __future__ import annotations

import numbers

import numpy as np

from . import ops


def _real(value) -> bool:
    """A real number (Python or NumPy scalar), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


class Optimizer:
    def __init__(self, learning_rate):
        if not _real(learning_rate) or not learning_rate > 0:
            raise ValueError(f"{type(self).__name__}: learning_rate must be a positive number, "
                             f"received {learning_rate!r}")
        self.learning_rate = float(learning_rate)
        self.iterations = 0
        self.state: dict[str, dict[str, np.ndarray]] = {}

    def _slots(self, key, param):
        raise NotImplementedError

    def apply_gradients(self, items):
        """One step. ``items``: iterable of ``(key, param, grad)``; ``param`` changes in place."""
        self.iterations += 1
        for key, param, grad in items:
            slots = self.state.get(key)
            if slots is None:
                slots = self.state[key] = self._slots(key, param)
            self._update(param, grad, slots)

    # -- saving: plain arrays and numbers only ------------------------------------
    def get_config(self):
        return {"class_name": type(self).__name__, "learning_rate": self.learning_rate}

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

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        super().__init__(learning_rate)
        for arg, val in (("beta_1", beta_1), ("beta_2", beta_2)):
            if not _real(val) or not 0 <= val < 1:
                raise ValueError(f"Adam: {arg} must be in [0, 1), received {val!r}")
        if not _real(epsilon) or not epsilon > 0:
            raise ValueError(f"Adam: epsilon must be positive, received {epsilon!r}")
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)

    def _slots(self, key, param):
        return {"m": np.zeros_like(param), "v": np.zeros_like(param)}

    def _update(self, param, grad, slots):
        ops.adam_update(param, grad, slots["m"], slots["v"], self.learning_rate, self.beta_1,
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

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False):
        super().__init__(learning_rate)
        if not _real(momentum) or not 0 <= momentum < 1:
            raise ValueError(f"SGD: momentum must be in [0, 1), received {momentum!r}")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _slots(self, key, param):
        return {"velocity": np.zeros_like(param)}

    def _update(self, param, grad, slots):
        ops.sgd_update(param, grad, slots["velocity"], self.learning_rate, self.momentum,
                       self.nesterov)

    def get_config(self):
        cfg = super().get_config()
        cfg.update(momentum=self.momentum, nesterov=self.nesterov)
        return cfg


OPTIMIZERS = {"adam": Adam, "sgd": SGD}


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
    return classes[name](**cfg)
