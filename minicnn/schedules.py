"""Learning-rate schedules (``minicnn.optimizers.schedules``), Keras 3's names and formulas.

A schedule maps the optimizer's step (``optimizer.iterations`` before the update: 0 for
the first step) to a learning rate. Give one as ``learning_rate`` to any optimizer;
``optimizer.learning_rate`` then reads as the rate of the next step.

- ``ExponentialDecay(lr0, decay_steps, decay_rate, staircase=False)``:
  ``lr0 * decay_rate ** (step / decay_steps)`` (the exponent floored with ``staircase``).
- ``PiecewiseConstantDecay(boundaries, values)``: ``values[0]`` while ``step <= b[0]``,
  ``values[i]`` while ``b[i-1] < step <= b[i]``, ``values[-1]`` after the last boundary.
- ``CosineDecay(lr0, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0)``:
  with a warm-up, ``lr0 + (warmup_target - lr0) * step / warmup_steps`` for the first
  ``warmup_steps`` steps; then, with ``s = min(step - warmup_steps, decay_steps)`` and
  ``peak = warmup_target or lr0``,
  ``peak * ((1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha)``.
"""
from __future__ import annotations

import math
import numbers

import numpy as np


def _number(value, arg, owner, positive=False, minimum=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {arg} must be a finite number, received {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{owner}: {arg} must be > 0, received {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}: {arg} must be >= {minimum}, received {value!r}")
    return float(value)


def _steps(value, arg, owner, minimum=1):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {arg} must be an integer >= {minimum}, received {value!r}")
    return int(value)


class LearningRateSchedule:
    """Base class: ``schedule(step) -> learning rate`` (a float)."""

    def __call__(self, step):
        raise NotImplementedError

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class ExponentialDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, decay_rate, staircase=False,
                 name="ExponentialDecay"):
        owner = "ExponentialDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             owner, positive=True)
        self.decay_steps = _steps(decay_steps, "decay_steps", owner)
        self.decay_rate = _number(decay_rate, "decay_rate", owner, positive=True)
        self.staircase = bool(staircase)
        self.name = name

    def __call__(self, step):
        p = step / self.decay_steps
        if self.staircase:
            p = math.floor(p)
        return self.initial_learning_rate * self.decay_rate ** p

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "decay_rate": self.decay_rate,
                "staircase": self.staircase, "name": self.name}


class PiecewiseConstantDecay(LearningRateSchedule):
    def __init__(self, boundaries, values, name="PiecewiseConstant"):
        owner = "PiecewiseConstantDecay"
        boundaries, values = list(boundaries), list(values)
        if len(values) != len(boundaries) + 1:
            raise ValueError(f"{owner}: values must have one more element than boundaries, "
                             f"received {len(boundaries)} boundaries and {len(values)} values")
        self.boundaries = [_steps(b, "boundaries", owner, 0) for b in boundaries]
        if self.boundaries != sorted(self.boundaries):
            raise ValueError(f"{owner}: boundaries must increase, received {boundaries!r}")
        self.values = [_number(v, "values", owner, minimum=0) for v in values]
        self.name = name

    def __call__(self, step):
        for b, v in zip(self.boundaries, self.values):
            if step <= b:
                return v
        return self.values[-1]

    def get_config(self):
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class CosineDecay(LearningRateSchedule):
    def __init__(self, initial_learning_rate, decay_steps, alpha=0.0, name="CosineDecay",
                 warmup_target=None, warmup_steps=0):
        owner = "CosineDecay"
        self.initial_learning_rate = _number(initial_learning_rate, "initial_learning_rate",
                                             owner, minimum=0)
        self.decay_steps = _steps(decay_steps, "decay_steps", owner)
        self.alpha = _number(alpha, "alpha", owner, minimum=0)
        self.warmup_target = (None if warmup_target is None
                              else _number(warmup_target, "warmup_target", owner, minimum=0))
        self.warmup_steps = _steps(warmup_steps, "warmup_steps", owner, 0)
        self.name = name

    def __call__(self, step):
        if self.warmup_target is not None and step < self.warmup_steps:
            return (self.initial_learning_rate + (self.warmup_target - self.initial_learning_rate)
                    * step / self.warmup_steps)
        peak = self.initial_learning_rate if self.warmup_target is None else self.warmup_target
        s = min(max(step - self.warmup_steps, 0), self.decay_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * s / self.decay_steps))
        return peak * ((1.0 - self.alpha) * cosine + self.alpha)

    def get_config(self):
        return {"initial_learning_rate": self.initial_learning_rate,
                "decay_steps": self.decay_steps, "alpha": self.alpha, "name": self.name,
                "warmup_target": self.warmup_target, "warmup_steps": self.warmup_steps}


SCHEDULES = {cls.__name__: cls for cls in (ExponentialDecay, PiecewiseConstantDecay,
                                           CosineDecay)}


def from_config(cfg):
    """A schedule from ``{"class_name": ..., "config": {...}}`` (minicnn's classes only)."""
    cls = SCHEDULES.get(cfg.get("class_name")) if isinstance(cfg, dict) else None
    if cls is None:
        raise ValueError(f"unknown learning-rate schedule {cfg!r}; known: "
                         f"{', '.join(SCHEDULES)}")
    return cls.from_config(dict(cfg.get("config") or {}))


from ._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
