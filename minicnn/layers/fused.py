"""Fusion: one planner over the model graph, fused steps that are proper layers.

A :class:`Fusion` names a pattern of graph nodes (today: ``Conv2D(activation='relu')``
followed by ``MaxPooling2D(2, 2, 'valid')``) and makes the layer that runs it as one
step. :func:`plan` walks a model's nodes in order and replaces every match, but only
for the fusions the active backend declares (:func:`minicnn.ops.fusions`): the numba
backend implements ``conv2d_relu_maxpool`` as one kernel that keeps each image's
convolution output in a thread-local buffer and writes only the pooled result and a
uint8 argmax. The reference and numpy backends declare none, so there the layers run
one by one and a learner steps through each; a fused layer used on such a backend
anyway composes the same math from the layers' own passes.

The math never changes: ``maxpool(relu(conv(x) + bias))`` (see
:mod:`minicnn.ops.reference`), and the conv layer's ``grads`` are filled as by its own
backward. A node is fused only when its output feeds nothing but the next node of the
pattern and is not a model output, and when neither layer is used twice in the model.
"""
from __future__ import annotations

from .. import ops
from ..ops import algorithms
from .base import Layer
from .conv import Conv2D
from .pooling import MaxPooling2D


class ConvReluPool(Layer):
    """One step over a ``Conv2D(relu)`` layer and the 2x2 max-pool after it.

    Its weights are the conv layer's: ``params`` and ``grads`` are ``conv.params`` and
    ``conv.grads``, read and filled as by the conv's own backward.
    """

    fusion = "conv2d_relu_maxpool"

    def __init__(self, conv: Conv2D, pool: MaxPooling2D):
        self.conv, self.pool = conv, pool
        flag = conv.compute_input_gradient
        super().__init__(dtype=conv.dtype, name=f"{conv.name}+{pool.name}")
        self.compute_input_gradient = flag
        if conv.built:
            self.build(conv.input_shape)

    #: the conv layer's flag: whether dL/dx is computed
    compute_input_gradient = property(
        lambda self: self.conv.compute_input_gradient,
        lambda self, value: setattr(self.conv, "compute_input_gradient", value))

    params = property(lambda self: self.conv.params)

    @property
    def grads(self):
        return self.conv.grads

    @grads.setter
    def grads(self, value):
        self.conv.grads = value

    def weight_slots(self):
        return self.conv.weight_slots()

    def is_trainable_weight(self, key):
        return self.conv.is_trainable_weight(key)

    @staticmethod
    def applies(conv, pool) -> bool:
        return (isinstance(conv, Conv2D) and conv.activation == "relu"
                and isinstance(pool, MaxPooling2D) and pool.pool_size == (2, 2)
                and pool.strides == (2, 2) and pool.padding == "valid")

    def compute_output_shape(self, input_shape):
        if not self.conv.built:
            self.conv.build(input_shape)
        if not self.pool.built:
            self.pool.build(self.conv.output_shape)
        return tuple(self.pool.output_shape)

    def call(self, x, training=False):
        conv = self.conv
        # compose, each layer's own pass: where the backend has no fused kernel, and where
        # Winograd is asked for by name. An "auto" conv stays fused: forward by the
        # algorithm the autotuner chose (the Winograd variant pools each tile's 2x2 output
        # block as it leaves the output transform), backward by the fused kernel of the
        # backward's choice (see fused_backward), which reads only x, the pooled y and the
        # argmax. (Composing Winograd with a separate pool instead was slower than the
        # fused im2col step: 21.5 against 20.2 ms per seed step.)
        wanted = conv.algorithm if conv.algorithm != "auto" else algorithms.forced()
        forward, backward = conv.algorithm_for(x.shape)
        fusions = ops.fusions()
        if self.fusion not in fusions or (wanted == "winograd" and forward == "winograd"):
            self._composed = True
            return self.pool.forward(conv.forward(x, training), training)
        self._composed = False
        kernel, bias = conv.params["kernel"], conv.params.get("bias")
        if forward == "winograd" and "winograd_conv2d_relu_maxpool" in fusions:
            y, argmax = ops.winograd_conv2d_relu_maxpool_forward(x, kernel, bias, conv.pads)
        else:
            forward = "im2col"
            y, argmax = ops.conv2d_relu_maxpool_forward(x, kernel, bias, conv.strides,
                                                        conv.pads)
        self._forward_algorithm, self._backward_algorithm = forward, backward
        self._x, self._y, self._argmax = x, y, argmax
        return y

    @property
    def fused_forward(self):
        """What the last forward pass ran: ``'im2col'`` or ``'winograd'`` (the fused kernel's
        convolution), or None when the two layers ran their own passes (or no pass ran
        yet)."""
        if getattr(self, "_composed", True):
            return None
        return self._forward_algorithm

    @property
    def fused_backward(self):
        """What the backward of the last forward pass runs: ``'winograd'`` (where the
        algorithm choice gives the conv a Winograd backward: the fused Winograd kernel,
        whose tiles are the pool windows), ``'im2col+winograd'`` (after a Winograd forward
        with an im2col backward: the im2col weight gradient, dx by Winograd) or
        ``'im2col'``; None when the two layers run their own passes. Both fused forwards
        write the same pooled output and argmax, so either backward follows either."""
        if getattr(self, "_composed", True):
            return None
        if self._backward_algorithm == "winograd":
            return "winograd"
        if self._forward_algorithm == "winograd" and self.compute_input_gradient:
            return "im2col+winograd"
        return "im2col"

    def backward(self, dy):
        conv = self.conv
        if self._composed:
            return conv.backward(self.pool.backward(dy))
        kernel, need_dx = conv.params["kernel"], self.compute_input_gradient
        args = (self._x, kernel, dy, self._y, self._argmax)
        algorithm = self.fused_backward
        if algorithm == "winograd":
            grads = ops.winograd_conv2d_relu_maxpool_backward(*args, conv.pads, need_dx)
        else:
            grads = ops.conv2d_relu_maxpool_backward(
                *args, conv.strides, conv.pads, need_dx,
                dx_algorithm="winograd" if algorithm == "im2col+winograd" else "im2col")
        return conv.set_kernel_grads(*grads)


class Fusion:
    """A pattern ``layers[0] -> layers[1] -> ...`` of single-input nodes, and its step."""

    def __init__(self, name, applies, make):
        self.name, self.applies, self.make = name, applies, make


#: every fusion the planner knows; a backend lists the names it implements in FUSIONS
FUSIONS = (Fusion(ConvReluPool.fusion, ConvReluPool.applies, ConvReluPool),)


def plan(nodes, consumers=None, protected=(), enabled=None):
    """The steps that run ``nodes`` (in topological order), fused where possible.

    ``consumers``: tensor id -> the nodes reading it; ``protected``: ids of tensors that
    must stay visible (model outputs); ``enabled``: fusion names to apply (default: the
    active backend's). Returns a list of ``(layer, first_node, last_node)``: the inputs
    of the step are ``first_node.inputs``, its outputs ``last_node.outputs``.

    Given a plain list of layers instead (a chain: each feeds the next), it returns the
    list of steps, fused layers in place of the pairs they replace, for every fusion
    minicnn knows unless ``enabled`` says otherwise.
    """
    if consumers is None:
        return _plan_chain(nodes, enabled)
    enabled = ops.fusions() if enabled is None else frozenset(enabled)
    active = [f for f in FUSIONS if f.name in enabled]
    uses = {}
    for node in nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    steps, skip = [], set()
    for node in nodes:
        if id(node) in skip:
            continue
        fused = None
        if len(node.outputs) == 1 and uses[id(node.layer)] == 1:
            out = node.outputs[0]
            after = consumers.get(out.id, [])
            if len(after) == 1 and out.id not in protected:
                nxt = after[0]
                for f in active:
                    if (uses[id(nxt.layer)] == 1 and len(nxt.inputs) == 1
                            and f.applies(node.layer, nxt.layer)):
                        fused = (f.make(node.layer, nxt.layer), node, nxt)
                        skip.add(id(nxt))
                        break
        steps.append(fused or (node.layer, node, node))
    return steps


def _plan_chain(layers, enabled=None):
    active = [f for f in FUSIONS if enabled is None or f.name in enabled]
    steps, i = [], 0
    while i < len(layers):
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        f = next((f for f in active if nxt is not None and f.applies(layers[i], nxt)), None)
        if f is not None:
            steps.append(f.make(layers[i], nxt))
            i += 2
        else:
            steps.append(layers[i])
            i += 1
    return steps
