"""Fusion: one planner over the model graph, fused steps that are proper layers.

A :class:`Fusion` names a pattern of graph nodes, each feeding the next, and makes the
layer that runs it as one step:

- ``conv2d_relu_maxpool``: ``Conv2D(activation='relu')`` then ``MaxPooling2D(2, 2,
  'valid')`` (:class:`ConvReluPool`): one kernel that keeps each image's convolution
  output in a thread-local buffer and writes only the pooled result and a uint8 argmax;
- ``conv2d_batchnorm_relu`` and ``conv2d_batchnorm``: ``Conv2D`` (no activation) then
  ``BatchNormalization`` [then ``ReLU``] (:class:`ConvBatchNorm`): in training, the batch
  norm and the ReLU in one pass each way; at inference, one convolution with batch norm
  folded into its weights and the ReLU into its epilogue;
- ``add_relu``: ``Add`` of two tensors then ``ReLU`` (:class:`AddRelu`), one pass;
- ``conv2d_batchnorm_add_relu``: ``Conv2D`` then ``BatchNormalization`` then ``Add`` with
  a shortcut then ``ReLU``, the end of a residual block (:class:`ConvBatchNormAddRelu`):
  at inference one convolution, the shortcut added and the ReLU applied in its epilogue.
  Its Add has a second input from outside the pattern, so the step reads two tensors
  and runs where the pattern's last node ran.

:func:`plan` walks a model's nodes in order and replaces every match, but only for the
fusions the active backend declares (:func:`minicnn.ops.fusions`; the numba backend
declares them all). The reference and numpy backends declare none, so there the layers
run one by one and a learner steps through each; a fused layer used on such a backend
anyway composes the same math from the layers' own passes.

The math never changes (each fused op's reference in :mod:`minicnn.ops.reference` is
the composition of the layers' ops), and every layer's ``grads`` are filled as by its
own backward. A node is fused only when its output feeds nothing but the next node of
the pattern and is not a model output, and when no layer of the pattern is used twice in
the model.
"""
from __future__ import annotations

from .. import ops
from ..ops import algorithms
from .base import Layer
from .conv import Conv2D
from .core import Activation
from .merging import Add
from .normalization import BatchNormalization
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
        if self.fusion not in fusions or (wanted in algorithms.WINOGRAD and forward == wanted):
            self._composed = True
            return self.pool.forward(conv.forward(x, training), training)
        self._composed = False
        # the pool's winners only when a backward pass may follow: at inference the
        # kernels skip them (backward() recomputes them if it is called after all)
        forward, y, argmax = self._fused_forward(x, forward, need_argmax=training)
        self._forward_algorithm, self._backward_algorithm = forward, backward
        self._x, self._y, self._argmax = x, y, argmax
        return y

    def _fused_forward(self, x, forward, need_argmax):
        """``(algorithm run, y, argmax)``: the fused conv + ReLU + pool forward by
        ``forward`` where the backend fuses it, else by im2col; ``argmax`` is None when
        not ``need_argmax`` (F(2x2, 3x3)'s kernel always writes it)."""
        conv, fusions = self.conv, ops.fusions()
        kernel, bias = conv.params["kernel"], conv.params.get("bias")
        if forward == "winograd" and "winograd_conv2d_relu_maxpool" in fusions:
            return (forward,) + ops.winograd_conv2d_relu_maxpool_forward(x, kernel, bias,
                                                                         conv.pads)
        if forward == "winograd4" and "winograd4_conv2d_relu_maxpool" in fusions:
            return (forward,) + ops.winograd4_conv2d_relu_maxpool_forward(
                x, kernel, bias, conv.pads, need_argmax=need_argmax)
        return ("im2col",) + ops.conv2d_relu_maxpool_forward(
            x, kernel, bias, conv.strides, conv.pads, need_argmax=need_argmax)

    @property
    def fused_forward(self):
        """What the last forward pass ran: ``'im2col'``, ``'winograd'`` or ``'winograd4'``
        (the fused kernel's convolution), or None when the two layers ran their own passes
        (or no pass ran yet)."""
        if getattr(self, "_composed", True):
            return None
        return self._forward_algorithm

    @property
    def fused_backward(self):
        """What the backward of the last forward pass runs: ``'winograd'`` (where the
        algorithm choice gives the conv a Winograd backward: the fused Winograd kernel,
        whose tiles are the pool windows), ``'im2col+winograd'`` (after a Winograd forward
        with an im2col backward: the im2col weight gradient, dx by Winograd) or
        ``'im2col'``; None when the two layers run their own passes. The three fused forwards
        write the same pooled output and argmax, so either backward follows any of them."""
        if getattr(self, "_composed", True):
            return None
        if self._backward_algorithm == "winograd":
            return "winograd"
        if self._forward_algorithm in algorithms.WINOGRAD and self.compute_input_gradient:
            return "im2col+winograd"
        return "im2col"

    def backward(self, dy):
        conv = self.conv
        if self._composed:
            return conv.backward(self.pool.backward(dy))
        kernel, need_dx = conv.params["kernel"], self.compute_input_gradient
        if self._argmax is None:     # after an inference-mode forward: the winners now
            _, _, self._argmax = self._fused_forward(self._x, self._forward_algorithm, True)
        args = (self._x, kernel, dy, self._y, self._argmax)
        algorithm = self.fused_backward
        if algorithm == "winograd":
            grads = ops.winograd_conv2d_relu_maxpool_backward(*args, conv.pads, need_dx)
        else:
            grads = ops.conv2d_relu_maxpool_backward(
                *args, conv.strides, conv.pads, need_dx,
                dx_algorithm="winograd" if algorithm == "im2col+winograd" else "im2col")
        return conv.set_kernel_grads(*grads)


class _Chain(Layer):
    """A fused step over ``parts``, layers each feeding the next. It has no weights of its
    own: :meth:`weight_slots` are the parts' and each part's ``grads`` are filled as by its
    own backward. Its ``compute_input_gradient`` is the first part's."""

    fusion = None

    def __init__(self, *parts):
        self.parts = parts
        flag = parts[0].compute_input_gradient
        super().__init__(dtype=parts[0].dtype, name="+".join(p.name for p in parts))
        self.compute_input_gradient = flag
        if parts[0].built:
            self.build(parts[0].input_shape)

    compute_input_gradient = property(
        lambda self: self.parts[0].compute_input_gradient,
        lambda self, value: setattr(self.parts[0], "compute_input_gradient", value))

    def weight_slots(self):
        return [(f"{p.name}/{path}", owner, key) for p in self.parts
                for path, owner, key in p.weight_slots()]

    def compute_output_shape(self, input_shape):
        shape = input_shape
        for part in self.parts:
            if not part.built:
                part.build(shape)
            shape = part.output_shape
        return tuple(shape)

    def _fused_here(self):
        return self.fusion in ops.fusions()

    def composed_forward(self, x, training):
        """Every part's own forward pass, in turn (where the backend has no fused kernel)."""
        for part in self.parts:
            x = part.forward(x, training)
        return x

    def composed_backward(self, dy):
        for part in reversed(self.parts):
            dy = part.backward(dy)
        return dy


def _is_relu(layer):
    return isinstance(layer, Activation) and layer.activation == "relu"


class ConvBatchNorm(_Chain):
    """One step over ``Conv2D`` (no activation) -> ``BatchNormalization`` [-> ``ReLU``].

    Training (batch statistics): the conv's convolution with ``moments`` (its kernel adds
    up each image's share of the batch statistics while the image is still in cache, the
    same sums in the same order as batch norm's own pass, so the same bits), then
    :func:`minicnn.ops.batchnorm_relu_train_forward` given them (normalise and clip in
    one pass, keeping only the conv output ``z`` for the backward, no ``xhat``). On the
    way back :func:`minicnn.ops.batchnorm_relu_backward` with ``need_dx=False`` sums
    dgamma and dbeta (the ReLU's and batch norm's backward, one pass over dy and z), and
    the conv's backward, given them as a :class:`minicnn.ops.BatchNormGradient`, makes
    batch norm's input gradient dz row by row as it gathers it (the numba kernels call
    the very function batch norm's own second pass runs, so the same bits; the other
    backends compute dz first). Without the ReLU the same ops with ``relu=False``. The
    moving statistics move as batch norm's own forward moves them.

    Inference (moving statistics): one convolution with the folded weights of
    :func:`minicnn.ops.fold_batchnorm`, the ReLU in its epilogue. It rounds differently
    from the layers run one by one (one product less), within float32's few ulps.
    """

    def __init__(self, conv, bn, relu=None):
        self.conv, self.bn, self.relu = conv, bn, relu
        super().__init__(*(p for p in (conv, bn, relu) if p is not None))
        self.fusion = "conv2d_batchnorm_relu" if relu is not None else "conv2d_batchnorm"

    @staticmethod
    def applies(conv, bn, relu=None) -> bool:
        return (isinstance(conv, Conv2D) and conv.activation == "linear"
                and isinstance(bn, BatchNormalization) and bn.axis in (-1, 3)
                and (relu is None or _is_relu(relu)))

    def call(self, x, training=False):
        self._mode = "composed"
        if not self._fused_here():
            return self.composed_forward(x, training)
        if not training:
            self._mode, self._x = "folded", x
            return self.folded_convolve(x, self.relu is not None)
        return self.train_convolve(x, self.relu is not None)

    def train_convolve(self, x, relu, residual=None):
        """The training pass (batch statistics): the conv gathering them, then batch norm
        given them, ``residual`` added and the ReLU applied (``relu``) in its one pass. With
        ``residual`` the ReLU is the one after the sum, whose mask the caller's backward
        applies (:class:`ConvBatchNormAddRelu`): this step's backward is batch norm's
        without a ReLU."""
        conv, bn = self.conv, self.bn
        gamma, beta = bn.params.get("gamma"), bn.params.get("beta")
        # the convolution gathers the batch's statistics of z image by image, while each
        # image's output is still in cache: batch norm's own pass over z is saved
        (z, *moments), algorithms = conv.convolve(x, conv.params["kernel"],
                                                  conv.params.get("bias"), moments=True)
        y, mean, var, inv_std = ops.batchnorm_relu_train_forward(
            z, gamma, beta, bn.epsilon, relu=relu, moments=moments, residual=residual)
        bn.update_moving_statistics(mean, var)
        self._mode, self._x, self._z = "fused", x, z
        self._stats = (mean, inv_std, relu and residual is None, algorithms)
        self._last_batch = x.shape[0]
        return y

    def folded_convolve(self, x, relu, residual=None):
        """The inference pass: the conv with batch norm's moving statistics folded into its
        weights (:func:`minicnn.ops.fold_batchnorm`), ``residual`` added and the ReLU
        applied (``relu``) in its epilogue."""
        conv, bn = self.conv, self.bn
        kernel, bias = ops.fold_batchnorm(conv.params["kernel"], conv.params.get("bias"),
                                          bn.params.get("gamma"), bn.params.get("beta"),
                                          bn.params["moving_mean"], bn.params["moving_variance"],
                                          bn.epsilon)
        return conv.convolve(x, kernel, bias, relu=relu, residual=residual)[0]

    def backward(self, dy):
        if self._mode == "fused":
            bn = self.bn
            mean, inv_std, relu, algorithms = self._stats
            gamma, beta = bn.params.get("gamma"), bn.params.get("beta")
            # batch norm's sums here; its input gradient dz is made by the conv's backward
            # as it gathers dz (one pass over dy and z less, and dz never written out)
            _, dgamma, dbeta = ops.batchnorm_relu_backward(dy, self._z, gamma, beta, mean,
                                                           inv_std, relu=relu, need_dx=False)
            bn.set_grads(dgamma, dbeta)
            spec = ops.BatchNormGradient(self._z, gamma, beta, mean, inv_std, dgamma, dbeta,
                                         relu)
            return self.conv.set_kernel_grads(*self.conv.gradients(self._x, dy, algorithms,
                                                                   bn=spec))
        if self._mode == "folded":
            # a backward after an inference pass (gradcheck): the layers' own passes
            self.composed_forward(self._x, False)
        return self.composed_backward(dy)


class AddRelu(_Chain):
    """One step over ``Add`` of two tensors -> ``ReLU``: :func:`minicnn.ops.add_relu_forward`.

    Backward: ``dz = dy where y > 0`` (the ReLU's backward; ``y > 0`` exactly where the sum
    is), the same array for both inputs, as Add's backward gives them.
    """

    fusion = "add_relu"

    def __init__(self, add, relu):
        self.add, self.relu = add, relu
        super().__init__(add, relu)

    @staticmethod
    def applies(add, relu) -> bool:
        return (type(add) is Add and isinstance(add.input_shape, list)
                and len(add.input_shape) == 2 and _is_relu(relu))

    def call(self, xs, training=False):
        if not self._fused_here():
            self._y = None
            return self.composed_forward(xs, training)
        self._y = ops.add_relu_forward(xs[0], xs[1])
        return self._y

    def keep_output(self, y):
        """Take ``y``, the ReLU'd sum made by another step (:class:`ConvBatchNormAddRelu` in
        training), as this step's output: the mask of its backward."""
        self._y, self._last_batch = y, y.shape[0]

    def backward(self, dy):
        if self._y is None:
            return self.composed_backward(dy)
        dz = ops.activation_backward("relu", self._y, self._y, dy)
        return [dz, dz]


class ConvBatchNormAddRelu(_Chain):
    """One step over ``Conv2D`` (no activation) -> ``BatchNormalization`` -> ``Add`` (with
    one other tensor, the shortcut) -> ``ReLU``: the end of a residual block. Its inputs
    are ``[x, shortcut]``: the conv's input and the Add's other one.

    Inference (moving statistics): one convolution with the folded weights of
    :func:`minicnn.ops.fold_batchnorm` and the shortcut added and the ReLU applied in its
    epilogue (the conv ops' ``residual``), so the sum is never written and read back.
    The same bits as :class:`ConvBatchNorm` then :class:`AddRelu` (the same sums in the
    same order; an addition of two numbers does not depend on their order).

    Training: the convolution gathering the batch's statistics, then batch norm given
    them with the shortcut added and the ReLU applied in its one pass
    (:meth:`ConvBatchNorm.train_convolve`; the batch norm needs the whole batch's
    statistics before the sum can be made). Its output is never written and read back
    by an Add; the same bits as ConvBatchNorm then AddRelu. Backward: the ReLU's mask
    (:class:`AddRelu`'s backward) gives dz, the shortcut's gradient and the input of
    ConvBatchNorm's backward.
    """

    fusion = "conv2d_batchnorm_add_relu"

    def __init__(self, conv, bn, add, relu, index=1):
        self.conv_bn, self.add_relu = ConvBatchNorm(conv, bn), AddRelu(add, relu)
        self.index = index                  # the Add's input the conv -> bn branch feeds
        super().__init__(conv, bn, add, relu)
        if self.built:                      # built from the conv's input: the step's are two
            self.input_shape = [tuple(conv.input_shape), tuple(self.output_shape)]

    @staticmethod
    def applies(conv, bn, add, relu) -> bool:
        return (ConvBatchNorm.applies(conv, bn) and AddRelu.applies(add, relu)
                and add.input_shape[0] == add.input_shape[1])

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0] if isinstance(input_shape, list) else input_shape
        return self.conv_bn.compute_output_shape(x_shape)

    conv = property(lambda self: self.conv_bn.conv)

    def _in_add_order(self, y, shortcut):
        return [shortcut, y] if self.index == 1 else [y, shortcut]

    def call(self, xs, training=False):
        x, shortcut = xs
        self._mode = "composed"
        if not self._fused_here():
            y = self.conv_bn.forward(x, training)
            return self.add_relu.forward(self._in_add_order(y, shortcut), training)
        if training:
            y = self.conv_bn.train_convolve(x, True, residual=shortcut)
            self.add_relu.keep_output(y)
            return y
        self._mode, self._xs = "folded", xs
        return self.conv_bn.folded_convolve(x, True, residual=shortcut)

    def backward(self, dy):
        if self._mode == "folded":
            # a backward after an inference pass (gradcheck): the layers' own passes
            x, shortcut = self._xs
            self.add_relu.forward(self._in_add_order(self.conv_bn.forward(x, False),
                                                     shortcut), False)
        d_add = self.add_relu.backward(dy)
        dx = self.conv_bn.backward(d_add[self.index])
        return [dx, d_add[1 - self.index]]


class Fusion:
    """A pattern ``layers[0] -> layers[1] -> ...`` of ``length`` nodes, each but the first
    with a single input, and its step: ``applies(*layers)``, ``make(*layers)``. With
    ``merge``, the node at that index may have a second input from outside the pattern:
    the step's inputs are then the first node's and that one, ``make`` is given the index
    of the pattern's own input among the merge node's as ``index``, and the step runs where
    the pattern's last node ran (after the outside input is made)."""

    def __init__(self, name, applies, make, length=2, merge=None):
        self.name, self.applies, self.make, self.length = name, applies, make, length
        self.merge = merge


#: every fusion the planner knows, longest first; a backend lists the names it implements
#: in FUSIONS
FUSIONS = (Fusion(ConvBatchNormAddRelu.fusion, ConvBatchNormAddRelu.applies,
                  ConvBatchNormAddRelu, 4, merge=2),
           Fusion("conv2d_batchnorm_relu", ConvBatchNorm.applies, ConvBatchNorm, 3),
           Fusion(ConvReluPool.fusion, ConvReluPool.applies, ConvReluPool),
           Fusion("conv2d_batchnorm", ConvBatchNorm.applies, ConvBatchNorm),
           Fusion(AddRelu.fusion, AddRelu.applies, AddRelu))


def plan(nodes, consumers=None, protected=(), enabled=None):
    """The steps that run ``nodes`` (in topological order), fused where possible.

    ``consumers``: tensor id -> the nodes reading it; ``protected``: ids of tensors that
    must stay visible (model outputs); ``enabled``: fusion names to apply (default: the
    active backend's). Returns a list of ``(layer, first_node, last_node, inputs)``: the
    step reads the tensors ``inputs`` (``first_node.inputs``, and for a merging fusion the
    merge node's outside input) and makes ``last_node.outputs``.

    Given a plain list of layers instead (a chain: each feeds the next), it returns the
    list of steps, fused layers in place of the runs they replace, for every fusion
    minicnn knows unless ``enabled`` says otherwise.
    """
    if consumers is None:
        return _plan_chain(nodes, enabled)
    enabled = ops.fusions() if enabled is None else frozenset(enabled)
    active = [f for f in FUSIONS if f.name in enabled]
    longest = max((f.length for f in active), default=1)
    uses = {}
    for node in nodes:
        uses[id(node.layer)] = uses.get(id(node.layer), 0) + 1
    steps, skip, deferred = [], set(), {}
    for node in nodes:
        if id(node) in deferred:        # a merging step runs where its last node ran
            steps.append(deferred.pop(id(node)))
            continue
        if id(node) in skip:
            continue
        run = [node]       # node and the nodes after it that only it feeds, one after another
        while len(run) < longest and uses[id(run[-1].layer)] == 1 \
                and len(run[-1].outputs) == 1:
            out = run[-1].outputs[0]
            after = consumers.get(out.id, [])
            if len(after) != 1 or out.id in protected or uses[id(after[0].layer)] != 1 \
                    or [t.id for t in after[0].inputs].count(out.id) != 1 \
                    or id(after[0]) in skip:
                break           # (the last test: a merge node the other branch took)
            run.append(after[0])
        match = next((f for f in active if f.length <= len(run) and _inputs_fit(f, run)
                      and f.applies(*(n.layer for n in run[:f.length]))), None)
        if match is None:
            steps.append((node.layer, node, node, list(node.inputs)))
            continue
        taken = run[:match.length]
        layers, last = [n.layer for n in taken], taken[-1]
        skip.update(id(n) for n in taken[1:])
        if match.merge is None:
            steps.append((match.make(*layers), node, last, list(node.inputs)))
            continue
        merge, feed = taken[match.merge], taken[match.merge - 1].outputs[0].id
        index = [t.id for t in merge.inputs].index(feed)
        deferred[id(last)] = (match.make(*layers, index=index), node, last,
                              list(node.inputs) + [merge.inputs[1 - index]])
    return steps


def _inputs_fit(fusion, run):
    """Whether the nodes ``run[1:fusion.length]`` have one input each, but the fusion's
    ``merge`` node, which has two."""
    return all(len(n.inputs) == (2 if i == fusion.merge else 1)
               for i, n in enumerate(run[1:fusion.length], 1))


def _plan_chain(layers, enabled=None):
    active = [f for f in FUSIONS if enabled is None or f.name in enabled]
    steps, i = [], 0
    while i < len(layers):
        f = next((f for f in active if i + f.length <= len(layers)
                  and f.applies(*layers[i:i + f.length])), None)
        if f is not None:
            steps.append(f.make(*layers[i:i + f.length]))
            i += f.length
        else:
            steps.append(layers[i])
            i += 1
    return steps
