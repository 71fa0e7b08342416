"""Symbolic tensors and graph nodes: how ``minicnn.Input`` and layer calls make a graph.

``x = minicnn.Input(shape=(32, 32, 3))`` is a :class:`KerasTensor`: no data, only a
``shape`` (batch dimension ``None``) and a ``dtype``. Calling a layer on it builds the
layer for that shape and returns a new tensor; each call is recorded as a :class:`Node`
(the layer, the tensors it read, the tensors it made). ``minicnn.Model(inputs, outputs)``
walks those nodes back from the outputs.
"""
from __future__ import annotations

import itertools

import numpy as np

from .base import Layer, normalize_shape

_tensor_ids = itertools.count()


class KerasTensor:
    """A symbolic tensor: ``shape`` (``(None, *example_shape)``), ``dtype``, ``name``, and
    ``node``, the :class:`Node` that produced it (``index``: which of its outputs)."""

    def __init__(self, shape, dtype, name, node=None, index=0):
        self.shape = (None,) + tuple(shape)
        self.dtype = np.dtype(dtype).name
        self.name = name
        self.node = node
        self.index = index
        self.id = next(_tensor_ids)

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={self.shape}, dtype={self.dtype}, name={self.name}>"

    def __array__(self, *args, **kwargs):
        raise TypeError(f"{self!r} is symbolic: it holds no values. Build a model with "
                        f"minicnn.Model(inputs, outputs) and call it on arrays")


class Node:
    """One call of ``layer`` on symbolic tensors: ``inputs`` -> ``outputs`` (lists)."""

    def __init__(self, layer, inputs, outputs_shapes):
        self.layer = layer
        self.inputs = list(inputs)
        self.multi_input = None
        many = isinstance(outputs_shapes, list)
        shapes = outputs_shapes if many else [outputs_shapes]
        base = layer.name if len(layer.inbound_nodes) == 0 else \
            f"{layer.name}_{len(layer.inbound_nodes)}"
        self.outputs = [KerasTensor(s, layer.dtype, base if len(shapes) == 1 else f"{base}_{i}",
                                    self, i) for i, s in enumerate(shapes)]
        self.multi_output = many
        self.index = len(layer.inbound_nodes)
        layer.inbound_nodes.append(self)

    @property
    def is_input(self):
        return isinstance(self.layer, InputLayer)

    def __repr__(self):
        return (f"<Node {self.layer.name}: {[t.name for t in self.inputs]} -> "
                f"{[t.name for t in self.outputs]}>")


class InputLayer(Layer):
    """The layer behind :func:`Input`: the identity, marking where data enters a graph."""

    def __init__(self, shape=None, batch_size=None, dtype=None, name=None, input_shape=None,
                 **kwargs):
        owner = "InputLayer"
        shape = shape if shape is not None else input_shape
        if shape is None:
            raise ValueError(f"{owner}: shape is required, e.g. Input(shape=(32, 32, 3))")
        if isinstance(shape, (int, np.integer)) and not isinstance(shape, bool):
            shape = (int(shape),)
        if not isinstance(shape, (tuple, list)):
            raise ValueError(f"{owner}: shape must be a tuple of ints (without the batch "
                             f"dimension), received {shape!r}")
        if any(s is None for s in shape):
            raise ValueError(f"{owner}: minicnn needs every dimension of shape but the batch, "
                             f"received {tuple(shape)!r}")
        shape = normalize_shape(tuple(shape), owner, "shape")
        self.batch_size = batch_size
        super().__init__(input_shape=shape, dtype=dtype or "float32", name=name, **kwargs)
        self.build(shape)
        self.output = Node(self, [], shape).outputs[0]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def call(self, x, training=False):
        return x

    def backward(self, dy):
        return dy

    def get_config(self):
        return {"name": self.name, "dtype": np.dtype(self.dtype).name,
                "shape": list(self.input_shape), "batch_size": self.batch_size}


def Input(shape=None, batch_size=None, dtype=None, name=None, **kwargs):  # noqa: N802 (Keras)
    """A symbolic input tensor of ``shape`` (no batch dimension), as ``keras.Input``.

    >>> x = Input(shape=(32, 32, 3))
    >>> x.shape
    (None, 32, 32, 3)
    """
    return InputLayer(shape=shape, batch_size=batch_size, dtype=dtype, name=name,
                      **kwargs).output


def call_symbolic(layer, x):
    """Call ``layer`` on symbolic tensor(s) ``x``: build it for their shapes and record a
    :class:`Node`; returns the output tensor (a list for a layer with several outputs)."""
    multi = isinstance(x, (list, tuple))
    tensors = list(x) if multi else [x]
    for t in tensors:
        if not isinstance(t, KerasTensor):
            raise ValueError(f"{layer.name}: cannot mix symbolic tensors and arrays in one "
                             f"call, received {type(t).__name__}")
    shapes = [t.shape[1:] for t in tensors]
    shape = list(shapes) if multi else shapes[0]
    if not layer.built:
        layer.build(shape)
    else:
        expected = layer.input_shape
        if (isinstance(expected, list) != multi) or \
                (multi and [tuple(s) for s in expected] != shapes) or \
                (not multi and tuple(expected) != tuple(shape)):
            raise ValueError(f"{layer.name}: built for input_shape {expected}, called on a "
                             f"tensor of shape {shape if not multi else shapes}")
    node = Node(layer, tensors, layer.output_shape)
    node.multi_input = multi
    return node.outputs if node.multi_output else node.outputs[0]
