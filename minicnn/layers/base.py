"""The Layer base class: the contract every layer follows, shipped or your own.

Writing a layer (Keras's lifecycle, plus the backward pass Keras leaves to autodiff)::

    from minicnn import layers

    class Scale(layers.Layer):
        '''y = x * w, one weight per channel.'''

        def build(self, input_shape):                  # input_shape excludes the batch
            self.w = self.add_weight(name="w", shape=(input_shape[-1],), initializer="ones")

        def call(self, x, training=False):             # x: (n, ..., c)
            self.x = x                                  # whatever backward needs
            return x * self.w

        def backward(self, dy):                         # dL/dy -> dL/dx, fills self.grads
            self.grads["w"] = np.sum(dy * self.x, axis=tuple(range(dy.ndim - 1)))
            return dy * self.w

        def get_config(self):                           # for saving; add your arguments
            return super().get_config()

The rules:

- ``__init__(**kwargs)`` validates settings and passes ``name``, ``dtype``,
  ``trainable`` and ``input_shape`` on to ``super().__init__``.
- ``build(input_shape)`` creates weights with ``self.add_weight(name=, shape=,
  initializer=, trainable=)``; they live in ``self.params`` (name -> array, in the order
  created, which is the order of ``get_weights``) and their gradients in ``self.grads``
  (same keys and shapes, zeros until the first backward). Layers without weights need
  no ``build``.
- ``call(x, training=False) -> y``: the forward pass on one batch ``x (n, *input_shape)``
  (a list of arrays for a layer with several inputs). Keep what ``backward`` needs in
  attributes of your choice; never modify ``x``.
- ``backward(dy) -> dx``: from dL/dy (shaped like the last output) return dL/dx (a list
  for several inputs) and write every ``self.grads[key]``. It may return ``None`` when
  ``self.compute_input_gradient`` is False (nothing below needs dL/dx).
- ``compute_output_shape(input_shape)`` is optional: without it the output shape is
  found by running ``call`` once on a zero batch after ``build``.
- ``get_config()`` returns the constructor's arguments as JSON-able values, for
  ``model.save``; ``minicnn.models.load_model(path, custom_objects={"Scale": Scale})``
  (or :func:`minicnn.saving.register_keras_serializable`) loads such layers back.

The base class does the bookkeeping around those methods, so a subclass needs none:
``forward(x, training)`` checks the input shape and dtype (building the layer from the
first batch if needed) and calls ``call``; ``backward`` is checked against the last
forward (shape and dtype of ``dy``) before your code runs; ``build`` records
``input_shape``/``output_shape`` and creates ``grads``. Calling a layer on a symbolic
tensor (:func:`minicnn.Input`) builds it and returns a new symbolic tensor: that is how
graphs (``minicnn.Model(inputs, outputs)``) are made. On arrays, ``layer(x)`` is
``layer.forward(x)``.
"""
from __future__ import annotations

import functools
import inspect
import re
from collections import defaultdict

import numpy as np

from .. import config, initializers

_name_counts: dict[str, int] = defaultdict(int)


def _snake(name: str) -> str:
    s = re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name)
    return re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", s).lower().replace("2_d", "2d")


def unique_name(base: str) -> str:
    """Keras-style automatic names: conv2d, conv2d_1, conv2d_2, ..."""
    count = _name_counts[base]
    _name_counts[base] += 1
    return base if count == 0 else f"{base}_{count}"


def reset_names() -> None:
    """Start automatic names afresh (``conv2d``, ``conv2d_1``, ...), as Keras's
    ``clear_session`` does."""
    _name_counts.clear()


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


def reject_kwargs(owner, kwargs):
    if kwargs:
        raise ValueError(f"{owner}: unexpected argument(s) {', '.join(sorted(kwargs))}")


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def normalize_shape(shape, owner="build", arg="input_shape"):
    """One shape ``(h, w, c)`` as a tuple of positive ints (a leading ``None``, Keras's batch
    dimension, is dropped), or a list of such shapes for a layer with several inputs."""
    if isinstance(shape, list) and shape and all(isinstance(s, (tuple, list)) for s in shape):
        return [normalize_shape(s, owner, arg) for s in shape]
    try:
        shape = tuple(shape)
        if shape and shape[0] is None:
            shape = shape[1:]
        if not all(_is_int(s) for s in shape):
            raise TypeError
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"{owner}: {arg} must be a tuple of ints (without the batch "
                         f"dimension), received {shape!r}") from None
    if any(s < 1 for s in shape):
        raise ValueError(f"{owner}: {arg} must hold positive sizes, received {shape!r}")
    return shape


def is_symbolic(x) -> bool:
    """True for a symbolic tensor (:func:`minicnn.Input`) or a list holding one."""
    from .input_layer import KerasTensor
    if isinstance(x, (list, tuple)):
        return any(isinstance(t, KerasTensor) for t in x)
    return isinstance(x, KerasTensor)


class Layer:
    """Base class of every layer; see the module docstring for the contract.

    Parameters
    ----------
    input_shape : tuple of int, optional
        Shape of one example (no batch dimension); lets a model build at once.
    dtype : 'float32' (default) or 'float64'
    name : str, optional; Keras-style automatic names otherwise (``conv2d_1``)
    trainable : bool; False freezes every weight of the layer
    """

    def __init__(self, input_shape=None, dtype="float32", name=None, trainable=True, **kwargs):
        owner = type(self).__name__
        reject_kwargs(owner, kwargs)
        self.dtype = config.check_dtype(dtype, owner)
        if name is None:
            name = unique_name(_snake(owner))
        elif not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{owner}: name must be a non-empty string without '/', "
                             f"received {name!r}")
        self.name = name
        if input_shape is not None:
            input_shape = normalize_shape(input_shape, owner)
        self.input_shape = input_shape
        self._given_input_shape = input_shape
        self.trainable = bool(trainable)
        self._params: dict[str, np.ndarray] = {}
        self._grads: dict[str, np.ndarray] = {}
        self._frozen: set[str] = set()
        self._regularizers: dict = {}
        self.output_shape = None
        self.built = False
        #: False when nothing below the layer needs dL/dx (set by the model): backward may
        #: then skip computing it and return None
        self.compute_input_gradient = True
        #: graph nodes where this layer was called on symbolic tensors
        self.inbound_nodes = []
        self._last_batch = None      # batch size of the last forward, for backward's check
        self._in_build = self._in_backward = False

    # -- what subclasses override ---------------------------------------------------
    def build(self, input_shape):
        """Create the weights for inputs of ``input_shape`` (no batch dimension)."""

    def call(self, x, training=False):
        """The forward pass on one batch; returns the output batch."""
        raise NotImplementedError(f"{type(self).__name__} must implement call(x, training=False)")

    def backward(self, dy):
        """dL/dx for dL/dy ``dy`` of the last forward; writes ``self.grads``."""
        raise NotImplementedError(f"{type(self).__name__} must implement backward(dy) -> dx")

    def compute_output_shape(self, input_shape):
        """Output shape (no batch dimension) for ``input_shape``. Optional: without it the
        base class runs ``call`` on a zero batch after ``build`` to find it."""
        return self._infer_output_shape(input_shape)

    def get_config(self) -> dict:
        """The constructor's arguments as JSON-able values (for saving)."""
        cfg = {"name": self.name, "dtype": np.dtype(self.dtype).name, "trainable": self.trainable}
        # built layers record their input shape: a file whose shapes do not chain is refused
        shape = self.input_shape if self.input_shape is not None else self._given_input_shape
        if shape is not None and not isinstance(shape, list):
            cfg["input_shape"] = list(shape)
        return cfg

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    # -- weights --------------------------------------------------------------------
    @property
    def params(self) -> dict:
        """Every weight array by name, in creation order (``get_weights`` order)."""
        return self._params

    @property
    def grads(self) -> dict:
        """dL/dweight of the last backward pass, same keys and shapes as :attr:`params`."""
        return self._grads

    @grads.setter
    def grads(self, value):
        self._grads = dict(value)

    def add_weight(self, name=None, shape=(), initializer="glorot_uniform", trainable=True,
                   dtype=None, regularizer=None):
        """Create a weight array, store it in ``self.params[name]`` and return it.

        ``initializer``: a name from :mod:`minicnn.initializers`; ``trainable=False``
        keeps the optimizer away from it (BatchNormalization's moving statistics);
        ``regularizer`` (:mod:`minicnn.regularizers`) adds its penalty to the loss and its
        gradient to ``grads[name]`` in training. The array is updated in place by training and loading, so the reference you
        keep (``self.w = self.add_weight(...)``) stays valid.
        """
        owner = f"{self.name}.add_weight"
        if name is None:
            name = f"weight_{len(self._params)}"
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"{owner}: name must be a non-empty string without '/', "
                             f"received {name!r}")
        if name in self._params:
            raise ValueError(f"{owner}: the layer already has a weight named {name!r}")
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise ValueError(f"{owner}: shape must be a tuple of ints, received {shape!r}") from None
        dtype = self.dtype if dtype is None else config.check_dtype(dtype, owner)
        value = initializers.initialize(initializers.get(initializer, owner), shape, dtype)
        self._params[name] = value
        self._grads[name] = np.zeros_like(value)
        if not trainable:
            self._frozen.add(name)
        if regularizer is not None:
            from .. import regularizers
            self._regularizers[name] = regularizers.get(regularizer, owner)
        return value

    def regularization_loss(self) -> float:
        """The sum of the penalties of this layer's regularized weights."""
        return float(sum(reg(self._params[k]) for k, reg in self._regularizers.items()))

    def add_regularization_gradients(self):
        """Add each regularized weight's ``dR/dw`` to its gradient (after backward)."""
        for key, reg in self._regularizers.items():
            self._grads[key] = self._grads[key] + reg.gradient(self._params[key])

    def is_trainable_weight(self, key) -> bool:
        """True when the optimizer updates weight ``key`` (the layer is trainable and the
        weight was not created with ``trainable=False``)."""
        return self.trainable and key not in self._frozen

    def weight_slots(self):
        """``[(path, layer, key)]`` for every weight, in ``get_weights`` order; ``path`` is
        ``key`` here and ``"<layer>/<key>"`` inside a model."""
        return [(key, self, key) for key in self._params]

    def trainable_slots(self):
        """The :meth:`weight_slots` the optimizer updates."""
        return [s for s in self.weight_slots() if s[1].is_trainable_weight(s[2])
                and self.trainable]

    def get_weights(self):
        """Copies of the weights, in creation order (Keras's order: kernel, then bias)."""
        return [layer.params[key].copy() for _, layer, key in self.weight_slots()]

    def set_weights(self, weights):
        """Set every weight from a list in :meth:`get_weights` order (shapes must match)."""
        slots = self.weight_slots()
        weights = list(weights)
        if len(weights) != len(slots):
            raise ValueError(f"{self.name}.set_weights: the layer has {len(slots)} weight "
                             f"arrays, received {len(weights)}")
        arrays = [np.asarray(w) for w in weights]
        for (path, layer, key), w in zip(slots, arrays):
            if w.shape != layer.params[key].shape:
                raise ValueError(f"{self.name}.set_weights: {path} has shape "
                                 f"{layer.params[key].shape}, received shape {w.shape}")
        for (_, layer, key), w in zip(slots, arrays):
            layer.params[key][...] = w

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"You tried to call count_params on layer '{self.name}', but the "
                             f"layer isn't built. You can build it manually via: "
                             f"`{self.name}.build(input_shape)`.")
        return int(sum(layer.params[key].size for _, layer, key in self.weight_slots()))

    # -- lifecycle (the base class's bookkeeping) -------------------------------------
    def unbuild(self, input_shape=None):
        """Forget the weights and the shapes of :meth:`build` (``input_shape``: the one given
        to the constructor, if any), as if the layer had never been built."""
        self.input_shape = input_shape
        self._params, self._grads, self._frozen, self._regularizers = {}, {}, set(), {}
        self.output_shape = None
        self.built = False
        self._last_batch = None

    def _infer_output_shape(self, input_shape):
        if isinstance(input_shape, list):
            probe = [np.zeros((1,) + tuple(s), self.dtype) for s in input_shape]
        else:
            probe = np.zeros((1,) + tuple(input_shape), self.dtype)
        y = self._invoke_call(probe, False)
        if isinstance(y, (list, tuple)):
            return [tuple(np.shape(t)[1:]) for t in y]
        return tuple(np.shape(y)[1:])

    def _run_build(self, raw_build, input_shape):
        if self._in_build:                  # super().build(...) inside a subclass's build
            return raw_build(self, input_shape)
        shape = normalize_shape(input_shape, self.name)
        if self.input_shape is not None and self.input_shape != shape:
            raise ValueError(f"{self.name}: built for input_shape {self.input_shape}, "
                             f"received input_shape {shape}")
        given = self._given_input_shape
        self._in_build = True
        try:
            self.input_shape = shape
            custom_shape = type(self).compute_output_shape is not Layer.compute_output_shape
            out = self.compute_output_shape(shape) if custom_shape else None
            self.built = True                 # call() may run inside shape inference below
            raw_build(self, shape)
            if not custom_shape:
                out = self._infer_output_shape(shape)
            self.output_shape = (list(map(tuple, out)) if isinstance(out, list)
                                 else tuple(int(s) for s in out))
            for key, p in self._params.items():
                if key not in self._grads:
                    self._grads[key] = np.zeros_like(p)
        except Exception:
            self.unbuild(given)
            raise
        finally:
            self._in_build = False
        self._last_batch = None
        return self

    # -- passes -------------------------------------------------------------------------
    def _check_array(self, x, shape, what="input"):
        if not isinstance(x, np.ndarray):
            x = np.asarray(x)
        if x.ndim != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape):
            raise ValueError(f"{self.name}: expected {what} of shape (batch, "
                             f"{', '.join(map(str, shape))}), received {x.shape}")
        if x.dtype != self.dtype:
            if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
                raise ValueError(f"{self.name}: expected a real numeric array, "
                                 f"received dtype {x.dtype}")
            x = x.astype(self.dtype)   # a new array: the caller's is never touched
        return x

    def _check_input(self, x):
        multi = isinstance(x, (list, tuple))
        if not self.built:
            self.build([np.shape(t)[1:] for t in x] if multi else np.shape(x)[1:])
        if isinstance(self.input_shape, list):
            if not multi or len(x) != len(self.input_shape):
                got = f"{len(x)} arrays" if multi else "one array"
                raise ValueError(f"{self.name}: expected a list of {len(self.input_shape)} "
                                 f"input arrays, received {got}")
            xs = [self._check_array(t, s) for t, s in zip(x, self.input_shape)]
            if len({t.shape[0] for t in xs}) != 1:
                raise ValueError(f"{self.name}: the inputs must have the same batch size, "
                                 f"received shapes {[t.shape for t in xs]}")
            return xs
        if multi:
            raise ValueError(f"{self.name}: expected one input array, received a list of "
                             f"{len(x)}")
        return self._check_array(x, self.input_shape)

    def _invoke_call(self, x, training):
        if _takes_training(type(self)):
            return self.call(x, training=training)
        return self.call(x)

    def forward(self, x, training=False):
        """Run :meth:`call` on a batch ``x`` of shape ``(n, *input_shape)`` (checked, cast to
        the layer's dtype, the layer built from it if needed)."""
        x = self._check_input(x)
        y = self._invoke_call(x, bool(training))
        self._last_batch = (x[0] if isinstance(x, list) else x).shape[0]
        return y

    def _run_backward(self, raw_backward, dy):
        if self._in_backward:              # super().backward(...) inside a subclass's backward
            return raw_backward(self, dy)
        if self._last_batch is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        if isinstance(self.output_shape, list):
            dy = [self._check_array(d, (s), "dy") for d, s in zip(dy, self.output_shape)]
        else:
            dy = self._check_dy(dy, self.output_shape)
        self._in_backward = True
        try:
            return raw_backward(self, dy)
        finally:
            self._in_backward = False

    def _check_dy(self, dy, shape):
        dy = np.asarray(dy)
        expected = (self._last_batch,) + tuple(shape)
        if dy.shape != expected:
            raise ValueError(f"{self.name}: expected dy of shape {expected}, received {dy.shape}")
        return dy if dy.dtype == self.dtype else dy.astype(self.dtype)

    def __call__(self, x, training=False):
        """On symbolic tensors: add this layer to the graph; on arrays: :meth:`forward`."""
        if is_symbolic(x):
            from .input_layer import call_symbolic
            return call_symbolic(self, x)
        return self.forward(x, training=training)

    # -- for the softmax + cross-entropy shortcut and fusion ----------------------------
    @property
    def output_activation(self):
        """The activation that ends this layer's forward ('softmax', 'relu', ...) or None."""
        act = getattr(self, "activation", None)
        return act if isinstance(act, str) else None

    def preactivation(self):
        """The pre-activation ``z`` of the last forward (``y = activation(z)``), for layers
        that keep it; None otherwise."""
        return None

    def backward_preactivation(self, dz):
        """Backward from dL/dz, the gradient before the activation; only for layers whose
        :meth:`preactivation` is not None."""
        raise NotImplementedError(f"{self.name}: no backward from the pre-activation")

    # -- bookkeeping ----------------------------------------------------------------------
    def __repr__(self):
        return f"<{type(self).__name__} name={self.name!r} output_shape={self.output_shape}>"

    #: True for classes (models) that check their own passes instead of the wrappers
    _own_bookkeeping = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls._own_bookkeeping:
            return
        if "build" in cls.__dict__:
            cls.build = _wrap(cls.__dict__["build"], Layer._run_build)
        if "backward" in cls.__dict__:
            cls.backward = _wrap(cls.__dict__["backward"], Layer._run_backward)


def _wrap(raw, runner):
    if getattr(raw, "_minicnn_wrapped", False):
        return raw

    @functools.wraps(raw)
    def wrapper(self, arg):
        return runner(self, raw, arg)
    wrapper._minicnn_wrapped = True
    return wrapper


Layer.build = _wrap(Layer.__dict__["build"], Layer._run_build)
Layer.backward = _wrap(Layer.__dict__["backward"], Layer._run_backward)


@functools.lru_cache(maxsize=None)
def _takes_training(cls) -> bool:
    try:
        params = inspect.signature(cls.call).parameters
    except (TypeError, ValueError):
        return True
    return "training" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
