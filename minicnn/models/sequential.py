"""Sequential: a linear stack of layers, which is a :class:`Model` whose graph is a chain.

The seed program of the project (the Keras CIFAR-10 tutorial) runs on it with only its
imports changed::

    from minicnn import layers, models, datasets
    model = models.Sequential([layers.Conv2D(32, (3, 3), activation='relu',
                                             padding='same', input_shape=(32, 32, 3)), ...])

and so does Keras 3's spelling with an input tensor first:
``keras.Sequential([keras.Input(shape=(28, 28, 1)), layers.Conv2D(32, 3), ...])``.
"""
from __future__ import annotations

import numpy as np

from ..layers.base import Layer, normalize_shape, unique_name
from ..layers.input_layer import Input, InputLayer, KerasTensor
from .functional import Model


class Sequential(Model):
    """A linear stack of layers with Keras's API.

    Parameters
    ----------
    layers : list of layers, optional (the first may be ``minicnn.Input(shape)``)
        Added in order with :meth:`add`. The model is built as soon as its input shape
        is known: from ``Input``, from the first layer's ``input_shape``, by
        :meth:`build`, or from the first data it is given.
    name : str, optional (default ``sequential``, ``sequential_1``, ...)

    Everything of :class:`Model` applies: ``compile``, ``fit``, ``evaluate``,
    ``predict``, ``save``; ``forward`` and ``backprop`` for learners.
    """

    summary_shows_connections = False

    def __init__(self, layers=None, name=None, trainable=True, **kwargs):
        self._init_model(name or unique_name("sequential"), trainable, kwargs)
        self._layers: list[Layer] = []
        self._input = None          # the InputLayer given with Input(...), if any
        self.built = False
        self.input_shape = None
        for layer in layers or []:
            self.add(layer)

    @property
    def layers(self):
        """The stacked layers (an ``Input`` given first is not one of them, as in Keras)."""
        return list(self._layers)

    def add(self, layer):
        """Append ``layer`` (or, first of all, an ``Input`` tensor) and build when possible."""
        if isinstance(layer, KerasTensor) or isinstance(layer, InputLayer):
            if self._layers or self._input is not None:
                raise ValueError("Sequential.add: an Input can only come first")
            self._input = layer if isinstance(layer, InputLayer) else layer.node.layer
            if not isinstance(self._input, InputLayer):
                raise ValueError("Sequential.add: expected minicnn.Input(shape=...) or a layer, "
                                 "received a tensor computed by a layer")
            self.input_shape = tuple(self._input.input_shape)
            return
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential.add: expected a minicnn layer, received {layer!r}")
        if any(layer.name == other.name for other in self._layers):
            raise ValueError(f"Sequential.add: a layer named {layer.name!r} is already in the model")
        was_built = self.built
        self._layers.append(layer)
        self.built = False
        try:
            if self.input_shape is not None:
                self.build(self.input_shape)
            elif len(self._layers) == 1 and layer.input_shape is not None \
                    and not isinstance(layer.input_shape, list):
                self.build(layer.input_shape)
        except Exception:
            # a layer that does not fit (Dense on images, ...) must not stay in the model
            self._layers.pop()
            self.built = was_built
            raise

    def pop(self):
        """Remove the last layer (Keras's ``Sequential.pop``)."""
        if not self._layers:
            raise ValueError("Sequential.pop: the model has no layers")
        layer = self._layers.pop()
        self.built = False
        if self._layers and self.input_shape is not None:
            self.build(self.input_shape)
        return layer

    def build(self, input_shape=None):
        """Build every layer for inputs of ``input_shape``.

        ``input_shape`` excludes the batch dimension; Keras's ``(None, 32, 32, 3)``
        is accepted too. Without it the first layer's ``input_shape`` is used.
        """
        if not self._layers:
            raise ValueError("Sequential.build: the model has no layers; add some with "
                             "model.add(layer) first")
        if input_shape is None:
            if self.input_shape is not None:
                input_shape = self.input_shape
            elif self._layers[0].input_shape is None:
                raise ValueError("Sequential.build: no input_shape given and the first layer "
                                 "has none")
            else:
                input_shape = self._layers[0].input_shape
        try:
            shape = normalize_shape(input_shape, "Sequential.build")
        except ValueError:
            raise ValueError(f"Sequential.build: input_shape must be a tuple of positive ints "
                             f"(without the batch dimension), received {input_shape!r}") from None
        if not shape or isinstance(shape, list):
            raise ValueError(f"Sequential.build: input_shape must hold positive sizes (without "
                             f"the batch dimension), received {input_shape!r}")
        if self._input is not None and tuple(self._input.input_shape) == shape:
            x = self._input.output
        else:
            x = Input(shape=shape, dtype=self._layers[0].dtype)
        inputs = x
        built_here = []   # (layer, the input_shape it was given) for layers built by this call
        try:
            for layer in self._layers:
                if layer.built and layer.input_shape != tuple(x.shape[1:]):
                    raise ValueError(f"Sequential.build: layer {layer.name!r} was built for "
                                     f"input shape {layer.input_shape}, received "
                                     f"{tuple(x.shape[1:])}")
                if not layer.built:
                    built_here.append((layer, layer.input_shape))
                x = layer(x)
        except Exception:
            # a layer that does not fit: leave the others as they were, so that a retry
            # with other data starts clean
            for layer, given in built_here:
                layer.unbuild(given)
            raise
        self._set_graph(inputs, x)
        return self

    def ensure_built(self, x):
        if not self.built:
            if not self._layers:
                raise ValueError("the model has no layers; add some with model.add(layer)")
            self.build(np.shape(x)[1:])

    @property
    def output_shape(self):
        return self._output_shape if self.built else None

    @output_shape.setter
    def output_shape(self, value):
        self._output_shape = value

    def get_config(self):
        from .. import saving
        return saving.sequential_config(self)
