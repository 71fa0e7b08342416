"""Merge layers: Add, Subtract, Multiply, Average, Maximum, Minimum, Concatenate.

Each takes a list of tensors, ``[x_1, ..., x_k]``, and has its backward written out:

=============  ==============================  ===========================================
layer          forward                         backward (``dy`` is dL/dy)
=============  ==============================  ===========================================
Add            ``y = sum_i x_i``               ``dx_i = dy``
Subtract       ``y = x_1 - x_2``               ``dx_1 = dy``, ``dx_2 = -dy``
Multiply       ``y = prod_i x_i``              ``dx_i = dy * prod_{j != i} x_j``
Average        ``y = (1/k) sum_i x_i``         ``dx_i = dy / k``
Maximum        ``y = max_i x_i`` elementwise   ``dx_i = dy`` where ``x_i`` is the first
                                               maximum, 0 elsewhere (one winner per element)
Minimum        ``y = min_i x_i``               as Maximum, for the first minimum
Concatenate    ``y = [x_1 | ... | x_k]``       ``dx_i`` = the slice of ``dy`` ``x_i`` filled
=============  ==============================  ===========================================

Add runs :func:`minicnn.ops.add_forward` (on the numba backend a parallel kernel: NumPy's
``a + b`` uses one thread); the others are single NumPy expressions, the same on every
backend. A tensor that feeds two branches and comes back through
Add gets the sum of both gradients: the model adds the gradients of every use (fan-out).
"""
from __future__ import annotations

import numpy as np

from .. import ops
from .base import Layer


def _fmt(shape):
    return str(tuple(shape))


class _Merge(Layer):
    """Elementwise merge of inputs that all have one shape."""

    min_inputs, max_inputs = 1, None

    def _check_shapes(self, input_shape):
        kind = type(self).__name__
        if not isinstance(input_shape, list):
            raise ValueError(f"{self.name}: a merge layer ({kind}) must be called on a list of "
                             f"inputs, received one input of shape {_fmt(input_shape)}")
        k = len(input_shape)
        if k < self.min_inputs or (self.max_inputs is not None and k > self.max_inputs):
            want = (f"exactly {self.min_inputs}" if self.min_inputs == self.max_inputs
                    else f"at least {self.min_inputs}")
            raise ValueError(f"{self.name}: {kind} needs {want} inputs, received {k}")
        return k

    def compute_output_shape(self, input_shape):
        self._check_shapes(input_shape)
        first = tuple(input_shape[0])
        for other in input_shape[1:]:
            if tuple(other) != first:
                raise ValueError(f"{self.name}: {type(self).__name__} needs inputs of one shape, "
                                 f"received shapes {_fmt(first)} and {_fmt(other)}")
        return first


class Add(_Merge):
    """``y = x_1 + x_2 + ... + x_k``; backward ``dx_i = dy`` (the same array for every input)."""

    def call(self, inputs, training=False):
        self._k = len(inputs)
        if self._k == 1:
            return inputs[0].copy()
        y = ops.add_forward(inputs[0], inputs[1])
        for x in inputs[2:]:
            y = ops.add_forward(y, x)
        return y

    def backward(self, dy):
        return [dy] * self._k


class Subtract(_Merge):
    """``y = x_1 - x_2``; backward ``dx_1 = dy``, ``dx_2 = -dy``."""

    min_inputs = max_inputs = 2

    def call(self, inputs, training=False):
        return inputs[0] - inputs[1]

    def backward(self, dy):
        return [dy, -dy]


class Multiply(_Merge):
    """``y = x_1 * x_2 * ... * x_k``; backward ``dx_i = dy * prod_{j != i} x_j``."""

    def call(self, inputs, training=False):
        self._inputs = inputs
        y = inputs[0].copy()
        for x in inputs[1:]:
            y *= x
        return y

    def backward(self, dy):
        out = []
        for i in range(len(self._inputs)):
            d = dy.copy()
            for j, x in enumerate(self._inputs):
                if j != i:
                    d *= x
            out.append(d)
        return out


class Average(_Merge):
    """``y = (x_1 + ... + x_k) / k``; backward ``dx_i = dy / k``."""

    def call(self, inputs, training=False):
        self._k = len(inputs)
        y = inputs[0].copy()
        for x in inputs[1:]:
            y += x
        return y / y.dtype.type(self._k)

    def backward(self, dy):
        d = dy / dy.dtype.type(self._k)
        return [d] * self._k


class Maximum(_Merge):
    """Elementwise maximum; each gradient goes to the first input holding the maximum."""

    _pick = staticmethod(np.argmax)

    def call(self, inputs, training=False):
        stacked = np.stack(inputs)
        self._winner = self._pick(stacked, axis=0)     # first maximum on ties
        return np.take_along_axis(stacked, self._winner[None], axis=0)[0]

    def backward(self, dy):
        zero = dy.dtype.type(0)
        return [np.where(self._winner == i, dy, zero) for i in range(self._winner_count())]

    def _winner_count(self):
        return len(self.input_shape)


class Minimum(Maximum):
    """Elementwise minimum; each gradient goes to the first input holding the minimum."""

    _pick = staticmethod(np.argmin)


class Concatenate(Layer):
    """Join inputs along ``axis`` (default -1, the channels of NHWC images).

    ``axis`` counts the batch dimension as Keras does: ``axis=1`` is the first axis of
    an example, ``-1`` the last. Every other dimension must agree. Backward: each input
    gets its slice of ``dy``.
    """

    def __init__(self, axis=-1, input_shape=None, dtype="float32", name=None, trainable=True,
                 **kwargs):
        if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or axis == 0:
            raise ValueError(f"Concatenate: axis must be a non-zero integer (axis 0 is the "
                             f"batch), received {axis!r}")
        self.axis = int(axis)
        super().__init__(input_shape=input_shape, dtype=dtype, name=name, trainable=trainable,
                         **kwargs)

    def _example_axis(self, ndim):
        """``axis`` as an index into one example's shape (no batch dimension)."""
        axis = self.axis - 1 if self.axis > 0 else ndim + self.axis
        if not 0 <= axis < ndim:
            raise ValueError(f"{self.name}: axis {self.axis} is out of range for inputs with "
                             f"{ndim + 1} dimensions (batch included)")
        return axis

    def compute_output_shape(self, input_shape):
        if not isinstance(input_shape, list) or len(input_shape) < 1:
            raise ValueError(f"{self.name}: Concatenate must be called on a list of inputs, "
                             f"received {input_shape!r}")
        first = tuple(input_shape[0])
        axis = self._example_axis(len(first))
        size = 0
        for shape in input_shape:
            shape = tuple(shape)
            if len(shape) != len(first) or any(a != b for i, (a, b) in
                                               enumerate(zip(shape, first)) if i != axis):
                raise ValueError(f"{self.name}: Concatenate along axis {self.axis} needs inputs "
                                 f"whose other dimensions agree, received shapes {_fmt(first)} "
                                 f"and {_fmt(shape)}")
            size += shape[axis]
        out = list(first)
        out[axis] = size
        return tuple(out)

    def call(self, inputs, training=False):
        axis = self._example_axis(inputs[0].ndim - 1) + 1
        self._sizes = [x.shape[axis] for x in inputs]
        return np.concatenate(inputs, axis=axis)

    def backward(self, dy):
        axis = self._example_axis(dy.ndim - 1) + 1
        bounds = np.cumsum(self._sizes)[:-1]
        return [np.ascontiguousarray(d) for d in np.split(dy, bounds, axis=axis)]

    def get_config(self):
        cfg = super().get_config()
        cfg["axis"] = self.axis
        return cfg
