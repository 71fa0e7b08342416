"""Model: a graph of layers (Keras's Functional API), with hand-written backprop.

::

    import minicnn as keras
    from minicnn import layers

    inputs = keras.Input(shape=(32, 32, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu")(inputs)
    y = layers.Conv2D(16, 3, padding="same")(x)
    x = layers.Activation("relu")(layers.Add()([x, y]))          # a residual connection
    outputs = layers.Dense(10, activation="softmax")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)

How it runs:

- **Structure.** ``Model(inputs, outputs)`` walks the graph back from the outputs, sorts
  its nodes topologically and refuses a graph whose outputs cannot be reached from the
  inputs, or that has a cycle, with a ValueError naming the tensor.
- **Forward** runs the nodes in that order. **Backward** runs them in reverse: the
  gradient of a tensor read by several nodes (fan-out, e.g. the skip branch of a residual
  block) is the *sum* of the gradients its readers send back. A tensor that no weight
  depends on gets no gradient at all (the first layer never computes dL/dx).
- A layer called at several places in the graph (a shared layer) keeps the state of
  each call apart, and its ``grads`` are the sum over its calls.
- ``forward`` (for learners) runs layer by layer. ``fit``, ``predict`` and ``call`` run
  the *plan*: the same nodes, with the patterns the active backend implements fused into
  one step (:mod:`minicnn.layers.fused`).
- A Model is a Layer: it can be called on a symbolic tensor inside another model.

Training (``fit``, ``evaluate``, ``train_step``, ...) lives in :mod:`minicnn.trainer`.
"""
from __future__ import annotations

import numpy as np

from .. import config, losses, ops, optimizers, saving
from ..layers import fused
from ..layers.base import Layer, unique_name
from ..layers.input_layer import InputLayer, KerasTensor
from ..trainer import Trainer

METRICS = ("accuracy", "acc", "categorical_accuracy", "sparse_categorical_accuracy")


class ModelNotCompiledError(ValueError, RuntimeError):
    """``fit``/``evaluate``/``train_on_batch`` before ``compile``."""


class _Step:
    """One step of a pass: a layer run on some tensors (by id), making others."""

    __slots__ = ("layer", "inputs", "outputs", "multi_in", "multi_out", "shared", "state",
                 "frees")

    def __init__(self, layer, first, last, shared, inputs=None):
        self.layer = layer
        self.inputs = [t.id for t in (first.inputs if inputs is None else inputs)]
        self.outputs = [t.id for t in last.outputs]
        self.multi_in = bool(first.multi_input) or len(self.inputs) > 1
        self.multi_out = last.multi_output
        self.shared = shared
        self.state = None
        self.frees = ()


def _sum(a, b):
    """``a + b`` for the fan-out sum of gradients: the backend's add where the two agree
    (the numba one runs on every thread), NumPy's (broadcasting, promoting) otherwise."""
    if a.shape == b.shape and a.dtype == b.dtype:
        return ops.add_forward(a, b)
    return a + b


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


class Model(Trainer, Layer):
    """A graph of layers from ``inputs`` to ``outputs`` (one tensor or a list of each).

    Parameters
    ----------
    inputs : tensor(s) from :func:`minicnn.Input`
    outputs : tensor(s) computed from them by calling layers
    name : str, optional (default ``functional``, ``functional_1``, ...)

    The life of a model, as in Keras: build the graph -> ``summary`` ->
    ``compile(optimizer, loss, metrics)`` -> ``fit`` -> ``evaluate`` / ``predict`` ->
    ``save`` / :func:`minicnn.models.load_model`. For learners, :meth:`forward` and
    :meth:`backprop` expose one pass at a time. Images are NHWC.
    """

    _own_bookkeeping = True
    #: summary() has Keras's "Connected to" column (not for a Sequential's chain)
    summary_shows_connections = True

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if inputs is None or outputs is None:
            raise ValueError("Model: inputs and outputs are required: Model(inputs, outputs) "
                             "with inputs = minicnn.Input(shape=...) (subclassed models that "
                             "override call() are not supported)")
        self._init_model(name or unique_name("functional"), trainable, kwargs)
        self._set_graph(inputs, outputs)

    def _init_model(self, name, trainable, kwargs=None):
        Layer.__init__(self, name=name, trainable=trainable, **(kwargs or {}))
        self.optimizer = None
        self.loss = None
        self.metrics: list[str] = []
        self.compiled = False
        self.stop_training = False
        #: stop ``fit`` with an error naming the epoch and batch when the loss is NaN/inf
        self.stop_on_nonfinite = True
        #: run the fusions the backend implements (``fit``, ``predict``, ``call``)
        self.fuse = True
        self.history = None
        self.inputs, self.outputs = [], []
        self._nodes, self._layers_in_graph = [], []
        self._plans = {}
        self._last_steps = None
        #: dL/dinputs is computed only when an outer model needs it (a nested model)
        self.compute_input_gradient = False

    # ------------------------------------------------------------------ structure
    def _set_graph(self, inputs, outputs):
        self._single_input = not isinstance(inputs, (list, tuple))
        self._single_output = not isinstance(outputs, (list, tuple))
        ins, outs = _as_list(inputs), _as_list(outputs)
        if not ins or not outs:
            raise ValueError(f"{self.name}: a model needs at least one input and one output")
        for arg, tensors in (("inputs", ins), ("outputs", outs)):
            for t in tensors:
                if not isinstance(t, KerasTensor):
                    raise ValueError(f"{self.name}: {arg} must be symbolic tensors "
                                     f"(minicnn.Input(...) and layer calls on it), received "
                                     f"{type(t).__name__}")
        for t in ins:
            if not t.node.is_input:
                raise ValueError(f"{self.name}: inputs must come straight from "
                                 f"minicnn.Input(...); tensor {t.name!r} is the output of "
                                 f"layer {t.node.layer.name!r}")
        nodes = _by_depth(_toposort(ins, outs))
        layers, seen = [], set()
        for t in ins:
            if id(t.node.layer) not in seen:
                seen.add(id(t.node.layer))
                layers.append(t.node.layer)
        for node in nodes:
            if id(node.layer) not in seen:
                seen.add(id(node.layer))
                layers.append(node.layer)
        names = [layer.name for layer in layers]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"{self.name}: all layer names should be unique; "
                             f"{', '.join(map(repr, dup))} is used by several layers")
        self.inputs, self.outputs = ins, outs
        self._nodes = nodes
        self._layers_in_graph = layers
        self.consumers = {}
        for node in nodes:
            for t in node.inputs:
                self.consumers.setdefault(t.id, []).append(node)
        self.input_shape = (tuple(ins[0].shape[1:]) if self._single_input
                            else [tuple(t.shape[1:]) for t in ins])
        self.output_shape = (tuple(outs[0].shape[1:]) if self._single_output
                             else [tuple(t.shape[1:]) for t in outs])
        self.dtype = np.dtype(ins[0].dtype)
        self.built = True
        self._plans = {}
        self._last_steps = None
        self._needs_grad = self._gradient_flags(self._plan(fused_steps=False))

    @property
    def layers(self):
        """The model's layers in graph order (its InputLayers first, as in Keras)."""
        return list(self._layers_in_graph)

    @property
    def input(self):
        return self.inputs[0] if self._single_input else list(self.inputs)

    @property
    def output(self):
        return self.outputs[0] if self._single_output else list(self.outputs)

    @property
    def nodes(self):
        """The graph's nodes (layer calls) in topological order, InputLayers excluded."""
        return list(self._nodes)

    def get_layer(self, name=None, index=None):
        """The layer called ``name`` (or at position ``index`` of :attr:`layers`)."""
        if (name is None) == (index is None):
            raise ValueError("get_layer: provide exactly one of name or index")
        layers = self.layers
        if index is not None:
            if not isinstance(index, (int, np.integer)) or not -len(layers) <= index < len(layers):
                raise ValueError(f"get_layer: index must be an int below {len(layers)}, "
                                 f"received {index!r}")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise ValueError(f"get_layer: no layer named {name!r}; the model has "
                         f"{', '.join(l.name for l in layers)}")

    def walk_layers(self):
        """Every layer, nested models opened up (depth first, graph order)."""
        for layer in self.layers:
            if isinstance(layer, Model):
                yield from layer.walk_layers()
            else:
                yield layer

    def node_index(self, node):
        """The index of ``node`` among the calls of its layer in this model (0 for most)."""
        same = [n for n in self._graph_nodes_with_inputs() if n.layer is node.layer]
        return next(i for i, n in enumerate(same) if n is node)

    def _graph_nodes_with_inputs(self):
        return [t.node for t in self.inputs] + self._nodes

    # ------------------------------------------------------------------ weights
    def weight_slots(self):
        return [(f"{layer.name}/{path}", owner, key) for layer in self.layers
                for path, owner, key in layer.weight_slots()]

    def trainable_slots(self):
        if not self.trainable:
            return []
        return [(f"{layer.name}/{path}", owner, key) for layer in self.layers
                for path, owner, key in layer.trainable_slots()]

    @property
    def params(self):
        return {path: owner.params[key] for path, owner, key in self.weight_slots()}

    @property
    def grads(self):
        return {path: owner.grads[key] for path, owner, key in self.weight_slots()}

    @grads.setter
    def grads(self, value):
        raise AttributeError(f"{self.name}: a model's grads are its layers' grads")

    def build(self, input_shape):
        """A graph model is built when it is made; ``input_shape`` must match it."""

    def compute_output_shape(self, input_shape):
        return self.output_shape

    # ------------------------------------------------------------------ summary
    def summary(self, print_fn=print):
        """Print a Keras-like table: layer (type), output shape, parameters, and for a
        graph the "Connected to" column (``layer[node][tensor]`` of each input); then
        the totals."""
        self._require_built("summary")
        graph = self.summary_shows_connections
        rows = []
        for node in (self._graph_nodes_with_inputs() if graph else self._nodes):
            layer = node.layer
            if not graph and isinstance(layer, InputLayer):
                continue
            shapes = [t.shape for t in node.outputs]
            row = [f"{layer.name} ({type(layer).__name__})",
                   str(shapes[0]) if len(shapes) == 1 else str(shapes),
                   f"{layer.count_params():,}"]
            if graph:
                row.append(", ".join(f"{t.node.layer.name}[{self.node_index(t.node)}]"
                                     f"[{t.index}]" for t in node.inputs) or "-")
            rows.append(row)
        head = ["Layer (type)", "Output Shape", "Param #"] + (["Connected to"] if graph else [])
        widths = [max(len(r[i]) for r in rows + [head]) + 3 for i in range(len(head))]
        line = lambda r: "".join(c.ljust(wd) for c, wd in zip(r, widths)).rstrip()  # noqa: E731
        total = self.count_params()
        trainable = int(sum(owner.params[key].size for _, owner, key in self.trainable_slots()))
        width = sum(widths)
        print_fn(f'Model: "{self.name}"')
        print_fn("_" * width)
        print_fn(line(head))
        print_fn("=" * width)
        for i, r in enumerate(rows):
            print_fn(line(r))
            print_fn(("_" if i < len(rows) - 1 else "=") * width)
        print_fn(f"Total params: {total:,}")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")

    def _require_built(self, what):
        if not self.built:
            raise ValueError(f"{what}: the model is not built yet; give the first layer an "
                             f"input_shape or call build(input_shape)")

    def count_params(self) -> int:
        if not self.built:
            raise ValueError(f"You tried to call count_params on model '{self.name}', but the "
                             f"model isn't built. You can build it manually via: "
                             f"`{self.name}.build(input_shape)`.")
        return int(sum(owner.params[key].size for _, owner, key in self.weight_slots()))

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="adam", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=False, steps_per_execution=1,
                jit_compile="auto", auto_scale_loss=True):
        """Choose the optimizer, the loss and the metrics.

        ``optimizer``: a name ('adam', 'sgd') or an optimizer object
        (:mod:`minicnn.optimizers`); ``loss``: 'categorical_crossentropy',
        'sparse_categorical_crossentropy' or a loss object (:mod:`minicnn.losses`);
        ``metrics``: a list of names among :data:`METRICS` (each is the classification
        accuracy: argmax of the output against the label), logged under the name given:
        ``metrics=['accuracy']`` gives ``history.history['accuracy']`` and
        ``'val_accuracy'``. ``run_eagerly``, ``jit_compile`` and ``auto_scale_loss`` are
        accepted for Keras programs and change nothing (minicnn always runs eagerly).
        """
        if loss is None:
            raise ValueError("compile: loss is required, e.g. loss='categorical_crossentropy'")
        for arg, val in (("loss_weights", loss_weights), ("weighted_metrics", weighted_metrics)):
            if val is not None:
                raise ValueError(f"compile: {arg} is not supported by minicnn yet, "
                                 f"received {val!r}")
        if steps_per_execution != 1:
            raise ValueError(f"compile: steps_per_execution must be 1 in minicnn, "
                             f"received {steps_per_execution!r}")
        optimizer = optimizers.get(optimizer)
        loss = losses.get(loss)
        if isinstance(metrics, str):
            metrics = [metrics]
        names = []
        for m in metrics or []:
            if not isinstance(m, str) or m.lower() not in METRICS:
                raise ValueError(f"compile: unknown metric {m!r}; known metrics: "
                                 f"{', '.join(METRICS)}")
            if m not in names:
                names.append(m)
        self.optimizer, self.loss, self.metrics = optimizer, loss, names
        self.compiled = True

    def _require_compiled(self, what):
        if not self.compiled:
            raise ModelNotCompiledError(f"{what}: the model must be compiled first: call "
                                        f"model.compile(optimizer, loss, metrics)")

    # ------------------------------------------------------------------ passes
    def ensure_built(self, x):
        """Build the model from the first batch it sees (Sequential without input shape)."""

    def steps(self, fused_steps=None):
        """The plan: ``[(layer, input tensor ids, output tensor ids)]`` run by ``call``,
        with the backend's fusions applied (``fused_steps=False``: one step per layer)."""
        return [(s.layer, list(s.inputs), list(s.outputs)) for s in self._plan(fused_steps)]

    def _plan(self, fused_steps=None):
        fuse = self.fuse if fused_steps is None else bool(fused_steps)
        key = (config.get_backend(), fuse)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        counts = {}
        for node in self._nodes:
            counts[id(node.layer)] = counts.get(id(node.layer), 0) + 1
        protected = {t.id for t in self.outputs}
        raw = (fused.plan(self._nodes, self.consumers, protected) if fuse
               else [(n.layer, n, n, None) for n in self._nodes])
        plan = [_Step(layer, first, last, counts.get(id(layer), 1) > 1, inputs)
                for layer, first, last, inputs in raw]
        last_use = {}
        for i, step in enumerate(plan):
            for tid in step.inputs:
                last_use[tid] = i
        for tid in protected:
            last_use.pop(tid, None)
        frees = {}
        for tid, i in last_use.items():
            frees.setdefault(i, []).append(tid)
        for i, step in enumerate(plan):
            step.frees = tuple(frees.get(i, ()))
        self._plans[key] = plan
        return plan

    def _gradient_flags(self, plan):
        """Which tensors need dL/dtensor; sets each step layer's compute_input_gradient
        (for a layer called at several steps: whether any of its calls needs dL/dx)."""
        need = {t.id: bool(self.compute_input_gradient) for t in self.inputs}
        wants_dx = {}
        for step in plan:
            needs_dx = any(need.get(tid, False) for tid in step.inputs)
            wants_dx[id(step.layer)] = wants_dx.get(id(step.layer), False) or needs_dx
            produces = needs_dx or bool(step.layer.weight_slots())
            for tid in step.outputs:
                need[tid] = produces
        for step in plan:
            step.layer.compute_input_gradient = wants_dx[id(step.layer)]
        return need

    def _run(self, xs, training, fused_steps=None):
        """Run the plan on input arrays ``xs`` (a list); returns the list of outputs."""
        plan = self._plan(fused_steps)
        self._needs_grad = self._gradient_flags(plan)
        values = {t.id: x for t, x in zip(self.inputs, xs)}
        for step in plan:
            ins = [values[tid] for tid in step.inputs]
            y = step.layer.forward(ins if step.multi_in else ins[0], training=training)
            if step.shared:
                step.state = {k: v for k, v in vars(step.layer).items()
                              if k not in ("_params", "_grads")}
            if step.multi_out:
                values.update(zip(step.outputs, y))
            else:
                values[step.outputs[0]] = y
            if not training:
                for tid in step.frees:       # inference: drop what no later step reads
                    values.pop(tid, None)
        self._last_steps = plan
        self._last_batch = xs[0].shape[0]
        return [values[t.id] for t in self.outputs]

    def _backward_plan(self, dys, preactivation_dz=None):
        """Backward through the last pass from dL/doutputs ``dys`` (None where an output
        has no gradient). With ``preactivation_dz``, the single output's layer starts from
        its pre-activation gradient instead (the fused softmax + cross-entropy)."""
        plan = self._last_steps
        if plan is None:
            raise RuntimeError(f"{self.name}: backward called before forward")
        need = self._needs_grad
        grads = {}
        for t, d in zip(self.outputs, dys):
            if d is not None:
                grads[t.id] = d if t.id not in grads else grads[t.id] + d
        out_step = None
        if preactivation_dz is not None:
            out_step = next(s for s in plan if self.outputs[0].id in s.outputs)
        shared_sums = {}
        for step in reversed(plan):
            layer = step.layer
            if step is out_step:
                if step.shared:
                    vars(layer).update(step.state)
                dx = layer.backward_preactivation(preactivation_dz)
            else:
                douts = [grads.pop(tid, None) for tid in step.outputs]
                if all(d is None for d in douts):
                    continue
                if step.multi_out:
                    douts = [np.zeros((self._last_batch,) + tuple(s), layer.dtype)
                             if d is None else d for d, s in zip(douts, layer.output_shape)]
                if step.shared:
                    vars(layer).update(step.state)
                dx = layer.backward(douts if step.multi_out else douts[0])
            if step.shared:
                acc = shared_sums.setdefault(id(layer), (layer, {}))[1]
                for key, g in layer.grads.items():
                    acc[key] = g.copy() if key not in acc else acc[key] + g
            if dx is None:
                continue
            for tid, d in zip(step.inputs, dx if step.multi_in else [dx]):
                if d is None or not need.get(tid, False):
                    continue
                grads[tid] = d if tid not in grads else _sum(grads[tid], d)   # fan-out
        for layer, acc in shared_sums.values():
            layer.grads = acc
        dxs = [grads.get(t.id) for t in self.inputs]
        return dxs[0] if self._single_input else dxs

    def _inputs_of(self, x, what="forward"):
        if self._single_input:
            if isinstance(x, (list, tuple)) and len(x) == 1:
                x = x[0]
            return [x]
        if not isinstance(x, (list, tuple)) or len(x) != len(self.inputs):
            raise ValueError(f"{what}: the model has {len(self.inputs)} inputs; x must be a "
                             f"list of {len(self.inputs)} arrays")
        return list(x)

    def _outputs_of(self, outs):
        return outs[0] if self._single_output else outs

    def forward(self, x, training=False):
        """Run every layer's forward pass on a batch, layer by layer (never fused), so each
        layer keeps its state for this batch; returns the model output (a list for
        several outputs)."""
        self.ensure_built(x)
        xs = self._check_input(self._inputs_of(x) if not self._single_input else x)
        xs = xs if isinstance(xs, list) else [xs]
        return self._outputs_of(self._run(xs, training, fused_steps=False))

    def call(self, x, training=False):
        """Run the plan (the backend's fusions applied) on checked input arrays."""
        return self._outputs_of(self._run(_as_list(x), training))

    def backward(self, dy):
        """dL/dinputs from dL/doutputs ``dy`` of the last pass; fills every layer's grads."""
        return self._backward_plan(_as_list(dy) if not self._single_output else [dy])

    def compute_loss(self, y_pred, y, sample_weight=None):
        """``(loss, dL/dy_pred or None, dL/dz or None)`` for the last pass's output.

        When the output layer ends in softmax, the loss fuses with it
        (``loss.fuses_with('softmax')``) and nothing else reads the output, the loss is
        computed from the layer's pre-activation ``z`` and the gradient is the fused
        ``dL/dz = w * (softmax(z) - y) / n``; otherwise from ``y_pred``. The loss includes
        the weights' regularization penalties (their gradients are added after backward).
        """
        if not self._single_output:
            raise ValueError(f"{self.name}: training models with several outputs is not "
                             f"supported by minicnn yet")
        if self.loss_from_preactivation():
            z = self.outputs[0].node.layer.preactivation()
            if z is not None:
                loss, dz = self.loss.from_logits_forward(z, y, sample_weight)
                return loss + self.regularization_loss(), None, dz
        loss, dy = self.loss.forward(y_pred, y, sample_weight)
        return loss + self.regularization_loss(), dy, None

    def loss_from_preactivation(self, loss=None) -> bool:
        """True when :meth:`compute_loss` takes ``loss`` (default: the compiled one) from
        the output layer's pre-activation ``z`` (the fused softmax + cross-entropy): a
        single output made by a layer that ends in softmax, read by nothing else."""
        loss = self.loss if loss is None else loss
        if loss is None or not self._single_output:
            return False
        out = self.outputs[0]
        return bool(loss.fuses_with(out.node.layer.output_activation) and not out.node.is_input
                    and not self.consumers.get(out.id) and not out.node.multi_output)

    def regularization_loss(self) -> float:
        """The penalties of every regularized weight (``kernel_regularizer=``)."""
        return float(sum(layer.regularization_loss() for layer in self.walk_layers()))

    def compute_gradients(self, x, y, sample_weight=None):
        """Forward (training mode, the plan), loss and backward on one batch; no update.

        ``x``: the input array (a list for several inputs) already of the model's shape and
        dtype; returns ``(loss, y_pred)`` and leaves every layer's ``grads`` holding
        dL/dweight of the batch-mean loss. Used by :meth:`train_step`.
        """
        y_pred = self.call(x, training=True)
        loss, dy, dz = self.compute_loss(y_pred, y, sample_weight)
        self._backward_plan([dy], preactivation_dz=dz)
        for layer in self.walk_layers():
            layer.add_regularization_gradients()
        return float(loss), y_pred

    def backprop(self, x, y, sample_weight=None):
        """Forward (training=True), loss, and every layer's backward pass; no update.

        ``x (n, *input_shape)``, ``y`` targets for the compiled loss. Leaves each layer's
        ``grads`` (same keys and shapes as ``params``) holding dL/dparam of the batch-mean
        loss, and returns that loss (a float). The weights and the optimizer are untouched.
        With a softmax output and a cross-entropy loss the gradient enters the last layer
        as the fused ``(softmax(z) - y) / n``.
        """
        self._require_compiled("backprop")
        x, y, sample_weight = self.check_batch(x, y, sample_weight, "backprop")
        return self.compute_gradients(x, y, sample_weight)[0]

    # ------------------------------------------------------------------ saving
    def get_config(self):
        return saving.model_config(self)

    @classmethod
    def from_config(cls, config, custom_objects=None):
        return saving.model_from_config({"class_name": cls.__name__, "config": config},
                                        custom_objects)

    def save(self, path):
        """Save architecture (JSON), weights and optimizer state in one ``.npz``-format file.

        Nothing is pickled: the file holds plain arrays and one JSON document, and
        :func:`load_model` reads it with ``allow_pickle=False``. The optimizer state
        includes its moments and iteration count, so a resumed run takes exactly the
        same next steps. Layer random generators (seeded Dropout/augmentation) and
        minicnn's global generator state are stored too.
        """
        self._require_built("save")
        saving.save_model(self, path)

    def save_weights(self, path):
        """Save only the weights (and the layer names and shapes) to ``path``."""
        self._require_built("save_weights")
        saving.save_model(self, path, weights_only=True)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Export the model for inference, Keras 3's ``export``: ``format="onnx"`` writes
        an ONNX graph (``opset_version=`` 17 by default), ``format="torch"`` a
        ``torch.export`` program (``.pt2``, ``torch.export.load(path).module()``). Both
        take NHWC input as minicnn does. Keras's default ``"tf_saved_model"`` (and
        ``"openvino"``, ``"litert"``) are not available. See :mod:`minicnn.export`."""
        self._require_built("export")
        from .. import export
        return export.export_model(self, filepath, format, verbose, input_signature, **kwargs)

    def load_weights(self, path):
        """Load weights saved by :meth:`save` or :meth:`save_weights`.

        Weights are matched layer by layer in order (layers without weights are skipped),
        so the names may differ but the architecture must agree: a missing array or a
        shape that differs raises ValueError naming the layer and both shapes, and then
        no weight has changed. An unbuilt model is first built for the file's input shape.
        """
        saving.load_weights(self, path)


def _by_depth(nodes):
    """``nodes`` (topologically sorted) reordered as Keras orders a graph: by depth, the
    longest path from the node to an output, deepest first; ties keep their order. This is
    still a topological order, and it is the order of ``model.layers`` and ``get_weights()``
    in Keras (a residual block's main branch comes before its 1x1 shortcut)."""
    depth = {id(n): 0 for n in nodes}
    for node in reversed(nodes):                 # every consumer before its producers
        for t in node.inputs:
            if id(t.node) in depth:
                depth[id(t.node)] = max(depth[id(t.node)], depth[id(node)] + 1)
    order = {id(n): i for i, n in enumerate(nodes)}
    return sorted(nodes, key=lambda n: (-depth[id(n)], order[id(n)]))


def _toposort(inputs, outputs):
    """The nodes between ``inputs`` and ``outputs`` in an order where every node comes
    after the nodes producing its inputs (iterative depth-first search)."""
    input_ids = {t.id for t in inputs}
    order, state = [], {}
    names = ", ".join(repr(t.name) for t in inputs)
    for out in outputs:
        if out.id in input_ids:
            continue
        stack = [(out, None)]
        while stack:
            tensor, node = stack.pop()
            if node is not None:               # post-order: all inputs of node done
                state[id(node)] = 2
                order.append(node)
                continue
            if tensor.id in input_ids:
                continue
            src = tensor.node
            if src is None or src.is_input:
                raise ValueError(f"Graph disconnected: cannot obtain the value of tensor "
                                 f"{tensor.name!r} (shape {tensor.shape}) from the model's "
                                 f"inputs {names}; pass the Input it comes from in inputs")
            st = state.get(id(src))
            if st == 2:
                continue
            if st == 1:
                raise ValueError(f"the graph has a cycle: tensor {tensor.name!r} depends on "
                                 f"itself through layer {src.layer.name!r}")
            state[id(src)] = 1
            stack.append((None, src))
            for t in reversed(src.inputs):
                if t.id in input_ids:
                    continue
                if state.get(id(t.node)) == 1 and t.node is not None and not t.node.is_input:
                    raise ValueError(f"the graph has a cycle: tensor {t.name!r} depends on "
                                     f"itself through layer {t.node.layer.name!r}")
                stack.append((t, None))
    return order
