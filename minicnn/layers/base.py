"""The Layer base class: the contract every layer follows.

Lifecycle (as in Keras): ``__init__`` validates settings, ``build(input_shape)``
creates the weights, then ``forward`` / ``backward`` run.

- Shapes given to ``build`` exclude the batch dimension; images are NHWC.
- ``build`` creates ``params`` (name -> ndarray) and ``grads`` (same keys and shapes).
- ``forward(x, training=False) -> y`` caches what backward needs (one batch only);
  ``backward(dy) -> dx`` overwrites ``grads`` from that cache. Neither modifies its inputs.
- ``output_shape``, ``count_params()``, ``name``.
"""
from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from .. import config

_name_counts: dict[str, int] = defaultdict(int)


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower().replace("2_d", "2d")


def unique_name(base: str) -> str:
    """Keras-style automatic names: conv2d, conv2d_1, conv2d_2, ..."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def positive_int(value, arg: str, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{owner}: {arg} must be a positive integer, received {value!r}")
    return int(value)


def as_pair(value, arg: str, owner: str, minimum: int = 1) -> tuple[int, int]:
    """Accept an int or a pair of ints (as Keras does) and return a pair."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        pair = (int(value), int(value))
    elif (isinstance(value, (tuple, list)) and len(value) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)):
        pair = (int(value[0]), int(value[1]))
    else:
        raise ValueError(f"{owner}: {arg} must be an int or a tuple of 2 ints, received {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{owner}: {arg} must be >= {minimum}, received {value!r}")
    return pair


def window_geometry(layer, input_shape, window, window_arg):
    """``(oh, ow, pads)`` of a sliding ``window`` over images ``(h, w, c)``, for Conv2D and
    MaxPooling2D, with a clear error for non-images and 'valid' windows larger than the input."""
    from .. import ops
    if len(input_shape) != 3:
        raise ValueError(f"{layer.name}: {type(layer).__name__} expects images (h, w, c), "
                         f"received input_shape {tuple(input_shape)}")
    h, w, _ = input_shape
    if layer.padding == "valid" and (h < window[0] or w < window[1]):
        raise ValueError(f"{layer.name}: {window_arg} {tuple(window)} is larger than the "
                         f"input ({h}, {w}) with padding='valid'")
    return ops.conv_geometry(h, w, window[0], window[1], *layer.strides, layer.padding)


def check_padding(padding, owner: str) -> str:
    if not isinstance(padding, str) or padding.lower() not in ("same", "valid"):
        raise ValueError(f"{owner}: padding must be 'same' or 'valid', received {padding!r}")
    return padding.lower()


class Layer:
    """Base class. Subclasses implement ``_build``, ``compute_output_shape``,
    ``_forward`` and ``_backward``, and ``get_config`` for saving."""

    def __init__(self, input_shape=None, dtype="float32", name=None, trainable=True):
        owner = type(self).__name__
        self.dtype = config.check_dtype(dtype, owner)
        if name is None:
            name = unique_name(_snake(owner))
        elif not isinstance(name, str) or not name:
            raise ValueError(f"{owner}: name must be a non-empty string, received {name!r}")
        self.name = name
        if input_shape is not None:
            try:
                input_shape = tuple(int(s) for s in input_shape)
            except TypeError:
                raise ValueError(f"{owner}: input_shape must be a tuple of ints "
                                 f"(without the batch dimension), received {input_shape!r}") from None
            if any(s < 1 for s in input_shape):
                raise ValueError(f"{owner}: input_shape must hold positive sizes, "
                                 f"received {input_shape!r}")
        self.input_shape = input_shape
        self.trainable = bool(trainable)
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.output_shape = None
        self.built = False
        #: Sequential sets this to False on its first layer: nobody needs dL/dx there
        self.compute_input_gradient = True
        self._cache = None

    # -- lifecycle -----------------------------------------------------------
    def build(self, input_shape):
        """Create ``params`` and ``grads`` for inputs of ``input_shape`` (no batch dim)."""
        input_shape = tuple(int(s) for s in input_shape)
        if self.input_shape is not None and self.input_shape != input_shape:
            raise ValueError(f"{self.name}: built for input_shape {self.input_shape}, "
                             f"received input_shape {input_shape}")
        self.input_shape = input_shape
        self.output_shape = tuple(self.compute_output_shape(input_shape))
        self._build(input_shape)
        self.grads = {k: np.zeros_like(v) for k, v in self.params.items()}
        self.built = True
        return self

    def unbuild(self, input_shape=None):
        """Forget the weights and the shapes of :meth:`build` (``input_shape``: the one given
        to the constructor, if any), as if the layer had never been built."""
        self.input_shape = input_shape
        self.params, self.grads = {}, {}
        self.output_shape = None
        self.built = False
        self._cache = None

    def _build(self, input_shape):
        pass

    def _set_grads(self, dx, dkernel, dbias):
        """Store the gradients of a kernel-and-bias layer; return dx."""
        self.grads["kernel"] = dkernel
        if "bias" in self.params:
            self.grads["bias"] = dbias
        return dx

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # -- passes --------------------------------------------------------------
    def _check_input(self, x):
        x = np.asarray(x)
        if not self.built:
            self.build(x.shape[1:])
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{self.name}: expected input of shape (batch, "
                             f"{', '.join(map(str, self.input_shape))}), received {x.shape}")
        if x.dtype != self.dtype:
            if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
                raise ValueError(f"{self.name}: expected a real numeric array, received dtype {x.dtype}")
            x = x.astype(self.dtype)   # a new array: the caller's is never touched
        return x

    def forward(self, x, training=False):
        """Compute the output for a batch ``x`` of shape ``(n, *input_shape)``."""
        x = self._check_input(x)
        return self._forward(x, bool(training))

    def backward(self, dy):
        """Return dL/dx for dL/dy ``dy`` and overwrite ``grads``, from the last forward."""
        if self._cache is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        dy = np.asarray(dy)
        expected = (self._cache_batch,) + tuple(self.output_shape)
        if dy.shape != expected:
            raise ValueError(f"{self.name}: expected dy of shape {expected}, received {dy.shape}")
        if dy.dtype != self.dtype:
            dy = dy.astype(self.dtype)
        return self._backward(dy)

    def __call__(self, x, training=False):
        return self.forward(x, training=training)

    # -- bookkeeping ---------------------------------------------------------
    def count_params(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def get_config(self) -> dict:
        cfg = {"name": self.name, "dtype": np.dtype(self.dtype).name, "trainable": self.trainable}
        if self.input_shape is not None:
            cfg["input_shape"] = list(self.input_shape)
        return cfg

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"
