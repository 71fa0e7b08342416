"""ONNX export: a minicnn model as an ONNX graph (``model.export(path, format="onnx")``).

The graph takes minicnn's input as it is (NHWC, named after the model's ``Input``, any
batch size) and gives minicnn's outputs. Inside, rank-4 tensors run NCHW, ONNX's layout
(see :mod:`minicnn.export.layout`): one Transpose after each image input, one before each
Flatten (so Dense kernels keep Keras's row order) and one before each image output.

Layer by layer:

=========================  =================================================================
minicnn                    ONNX
=========================  =================================================================
Conv2D                     Conv, OIHW weights, TensorFlow's 'same' as explicit (possibly
                           asymmetric) ``pads``; then the activation
Dense                      Gemm (MatMul without a bias); then the activation
MaxPooling2D               MaxPool (padded cells never win, as TensorFlow)
AveragePooling2D           AveragePool, ``count_include_pad=0`` (TensorFlow averages the
                           cells inside the image only)
GlobalAverage/MaxPooling   GlobalAveragePool / GlobalMaxPool (+ Flatten without keepdims)
BatchNormalization         BatchNormalization, inference form: moving statistics, epsilon
Flatten                    Transpose to NHWC, Flatten
Activation, ReLU, Softmax  Relu, Sigmoid, Tanh, Softmax, Elu, LeakyRelu (slope 0.2 for
LeakyReLU                  the name, the layer's own for LeakyReLU), gelu as
                           ``x/2 (1 + Erf(x / sqrt 2))`` (the Gelu op from opset 20),
                           swish/silu as ``x Sigmoid(x)``
Rescaling, ZeroPadding2D   Mul (+ Add), Pad
Dropout, RandomFlip,       nothing: the identity at inference
RandomTranslation
Add ... Concatenate        Add/Sum, Sub, Mul, Mean, Max, Min, Concat (axis mapped to NCHW)
a nested model             its layers, inlined
=========================  =================================================================

onnx is imported only here, when used (``pip install "minicnn[interop]"``).
"""
from __future__ import annotations

import math

import numpy as np

from . import layout
from .layout import TO_CHANNELS_FIRST, TO_CHANNELS_LAST, is_image

#: the default opset; 17 is what onnxruntime has supported since 1.12
DEFAULT_OPSET = 17
MIN_OPSET = 17


def onnx_module():
    try:
        import onnx
        import onnx.helper  # noqa: F401
        import onnx.numpy_helper  # noqa: F401
    except ImportError:
        raise ImportError('ONNX export needs the onnx package: pip install "minicnn[interop]"') \
            from None
    return onnx


class _Graph:
    """The nodes, initializers and names of the graph being written."""

    def __init__(self, onnx, dtype, opset):
        self.onnx, self.helper = onnx, onnx.helper
        self.dtype = np.dtype(dtype)
        self.opset = opset
        self.nodes, self.initializers = [], []
        self.used = set()
        self.weights = {}                  # (id(layer), key) -> initializer name

    def fresh(self, base):
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, value, base, dtype=None):
        array = np.asarray(value, dtype=self.dtype if dtype is None else dtype)
        name = self.fresh(base)
        self.initializers.append(self.onnx.numpy_helper.from_array(array, name))
        return name

    def weight(self, layer, key, prefix, convert=None):
        """The initializer of ``layer.params[key]`` (once per layer, shared layers too)."""
        cached = self.weights.get((id(layer), key))
        if cached is None:
            value = layer.params[key]
            cached = self.const(value if convert is None else convert(value),
                                f"{prefix}{layer.name}/{key}")
            self.weights[(id(layer), key)] = cached
        return cached

    def op(self, op_type, inputs, base, outputs=None, **attrs):
        out = outputs or [self.fresh(base)]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), out,
                                                name=self.fresh(f"{base}/{op_type}"), **attrs))
        return out[0]


# ----------------------------------------------------------------------------- activations
def _activation(g, name, x, channels_first, base, slope=None):
    if name == "linear":
        return x
    if name == "relu":
        return g.op("Relu", [x], base)
    if name == "sigmoid":
        return g.op("Sigmoid", [x], base)
    if name == "tanh":
        return g.op("Tanh", [x], base)
    if name == "softmax":
        return g.op("Softmax", [x], base, axis=1 if channels_first else -1)
    if name == "elu":
        return g.op("Elu", [x], base, alpha=1.0)
    if name == "leaky_relu":
        from ..ops.reference import LEAKY_RELU_SLOPE
        return g.op("LeakyRelu", [x], base, alpha=float(LEAKY_RELU_SLOPE if slope is None
                                                         else slope))
    if name in ("swish", "silu"):
        return g.op("Mul", [x, g.op("Sigmoid", [x], base)], base)
    if name == "gelu":
        if g.opset >= 20:
            return g.op("Gelu", [x], base, approximate="none")
        erf = g.op("Erf", [g.op("Mul", [x, g.const(1 / math.sqrt(2), f"{base}/rsqrt2")],
                                base)], base)
        half = g.op("Mul", [g.op("Add", [erf, g.const(1.0, f"{base}/one")], base),
                            g.const(0.5, f"{base}/half")], base)
        return g.op("Mul", [x, half], base)
    raise ValueError(f"export: activation {name!r} has no ONNX form")


# ----------------------------------------------------------------------------- layers
def _conv(g, layer, xs, base, prefix):
    kh, kw = layer.kernel_size
    t, b, l, r = layer.pads
    inputs = [xs[0], g.weight(layer, "kernel", prefix, layout.conv_kernel_to_oihw)]
    if "bias" in layer.params:
        inputs.append(g.weight(layer, "bias", prefix))
    z = g.op("Conv", inputs, base, kernel_shape=[kh, kw], strides=list(layer.strides),
             pads=[t, l, b, r], dilations=[1, 1], group=1)
    return _activation(g, layer.activation, z, True, base)


def _dense(g, layer, xs, base, prefix):
    kernel = g.weight(layer, "kernel", prefix)
    if "bias" in layer.params:
        z = g.op("Gemm", [xs[0], kernel, g.weight(layer, "bias", prefix)], base)
    else:
        z = g.op("MatMul", [xs[0], kernel], base)
    return _activation(g, layer.activation, z, False, base)


def _pool(op_type):
    def emit(g, layer, xs, base, prefix):
        t, b, l, r = layer.pads
        attrs = {"count_include_pad": 0} if op_type == "AveragePool" else {}
        return g.op(op_type, xs, base, kernel_shape=list(layer.pool_size),
                    strides=list(layer.strides), pads=[t, l, b, r], **attrs)
    return emit


def _global_pool(op_type):
    def emit(g, layer, xs, base, prefix):
        y = g.op(op_type, xs, base)                  # (n, c, 1, 1): NCHW of (n, 1, 1, c)
        return y if layer.keepdims else g.op("Flatten", [y], base, axis=1)
    return emit


def _batchnorm(g, layer, xs, base, prefix):
    c = layer.params["moving_mean"].shape[0]
    scale = (g.weight(layer, "gamma", prefix) if "gamma" in layer.params
             else g.const(np.ones(c), f"{prefix}{layer.name}/gamma"))
    bias = (g.weight(layer, "beta", prefix) if "beta" in layer.params
            else g.const(np.zeros(c), f"{prefix}{layer.name}/beta"))
    stats = [g.weight(layer, "moving_mean", prefix), g.weight(layer, "moving_variance", prefix)]
    x, ndim = xs[0], len(layer.input_shape)
    if ndim == 2:                                     # (n, t, c): channels to axis 1
        x = g.op("Transpose", [x], base, perm=[0, 2, 1])
    y = g.op("BatchNormalization", [x, scale, bias] + stats, base,
             epsilon=float(layer.epsilon))
    return g.op("Transpose", [y], base, perm=[0, 2, 1]) if ndim == 2 else y


def _flatten(g, layer, xs, base, prefix):
    x = xs[0]
    if is_image(layer.input_shape):                   # back to NHWC: Keras's order
        x = g.op("Transpose", [x], base, perm=list(TO_CHANNELS_LAST))
    return g.op("Flatten", [x], base, axis=1)


def _activation_layer(g, layer, xs, base, prefix):
    return _activation(g, layer.activation, xs[0], is_image(layer.input_shape), base)


def _leaky_relu(g, layer, xs, base, prefix):
    return _activation(g, "leaky_relu", xs[0], False, base, slope=layer.negative_slope)


def _rescaling(g, layer, xs, base, prefix):
    y = g.op("Mul", [xs[0], g.const(layer.scale, f"{prefix}{layer.name}/scale")], base)
    if layer.offset:
        y = g.op("Add", [y, g.const(layer.offset, f"{prefix}{layer.name}/offset")], base)
    return y


def _zero_padding(g, layer, xs, base, prefix):
    (t, b), (l, r) = layer.padding
    pads = g.const([0, 0, t, l, 0, 0, b, r], f"{prefix}{layer.name}/pads", np.int64)
    return g.op("Pad", [xs[0], pads], base, mode="constant")


def _identity(g, layer, xs, base, prefix):
    return xs[0]


def _variadic(op_type, binary=False):
    def emit(g, layer, xs, base, prefix):
        if not binary:
            return g.op(op_type, xs, base)
        y = xs[0]
        for x in xs[1:]:
            y = g.op(op_type, [y, x], base)
        return y
    return emit


def _concatenate(g, layer, xs, base, prefix):
    ndim = len(layer.input_shape[0])
    return g.op("Concat", xs, base, axis=layout.channels_first_axis(layer.axis, ndim))


def _emitters():
    from .. import layers as L
    return {L.Conv2D: _conv, L.Dense: _dense, L.MaxPooling2D: _pool("MaxPool"),
            L.AveragePooling2D: _pool("AveragePool"),
            L.GlobalAveragePooling2D: _global_pool("GlobalAveragePool"),
            L.GlobalMaxPooling2D: _global_pool("GlobalMaxPool"),
            L.BatchNormalization: _batchnorm, L.Flatten: _flatten,
            L.Activation: _activation_layer, L.ReLU: _activation_layer,
            L.Softmax: _activation_layer, L.LeakyReLU: _leaky_relu, L.Rescaling: _rescaling,
            L.ZeroPadding2D: _zero_padding, L.Dropout: _identity, L.RandomFlip: _identity,
            L.RandomTranslation: _identity, L.Add: _variadic("Add", binary=True),
            L.Subtract: _variadic("Sub", binary=True), L.Multiply: _variadic("Mul", binary=True),
            L.Average: _variadic("Mean"), L.Maximum: _variadic("Max"),
            L.Minimum: _variadic("Min"), L.Concatenate: _concatenate}


def supported_layers():
    """The minicnn layer classes the ONNX export writes (and nested models)."""
    return sorted(cls.__name__ for cls in _emitters())


def _emit_model(g, model, values, prefix, emitters):
    """Add ``model``'s nodes to ``g``; ``values`` maps its input tensor ids to ONNX names
    (NCHW for images) and receives every tensor it computes."""
    from ..models import Model
    for node in model.nodes:
        layer = node.layer
        xs = [values[t.id] for t in node.inputs]
        if isinstance(layer, Model):
            inner = {t.id: x for t, x in zip(layer.inputs, xs)}
            _emit_model(g, layer, inner, f"{prefix}{layer.name}/", emitters)
            for t, inner_t in zip(node.outputs, layer.outputs):
                values[t.id] = inner[inner_t.id]
            continue
        emit = emitters.get(type(layer))
        if emit is None:
            raise ValueError(f"export: layer {layer.name!r} ({type(layer).__name__}) has no "
                             f"ONNX form; the ONNX export writes "
                             f"{', '.join(supported_layers())} and nested models")
        values[node.outputs[0].id] = emit(g, layer, xs, f"{prefix}{layer.name}", prefix)


def _value_info(g, name, example_shape):
    elem = g.helper.np_dtype_to_tensor_dtype(g.dtype)
    return g.helper.make_tensor_value_info(name, elem, ["batch", *example_shape])


def to_onnx(model, opset_version=None):
    """The ONNX ``ModelProto`` of ``model`` (see the module docstring), checked by
    ``onnx.checker.check_model``.

    Parameters
    ----------
    model : a built minicnn Model or Sequential
    opset_version : int >= 17, default 17. The IR version is pinned to the oldest one
        that holds that opset (8 for opset 17), so that every onnxruntime since the opset
        appeared opens the file.

    The graph computes in the model's dtype (float32 or float64; onnxruntime runs
    Conv in float32 only, ``onnx.reference`` in both). ONNX attributes are float32, so a
    float64 graph holds BatchNormalization's epsilon and LeakyReLU's slope to float32
    precision (outputs within about 1e-10 of minicnn's). Raises ValueError naming a layer
    with no ONNX form.
    """
    from .. import __version__
    layout.require_built(model, "export")
    onnx = onnx_module()
    opset = DEFAULT_OPSET if opset_version is None else opset_version
    if isinstance(opset, bool) or not isinstance(opset, (int, np.integer)) \
            or opset < MIN_OPSET or opset > onnx.defs.onnx_opset_version():
        raise ValueError(f"export: opset_version must be an integer from {MIN_OPSET} to "
                         f"{onnx.defs.onnx_opset_version()} (the installed onnx's newest), "
                         f"received {opset_version!r}")
    opset = int(opset)
    g = _Graph(onnx, model.dtype, opset)
    inputs, outputs, values = [], [], {}
    for t in model.outputs:
        g.used.add(t.name)
    for t in model.inputs:
        name = g.fresh(t.name)
        shape = t.shape[1:]
        inputs.append(_value_info(g, name, shape))
        values[t.id] = (g.op("Transpose", [name], name, perm=list(TO_CHANNELS_FIRST))
                        if is_image(shape) else name)
    _emit_model(g, model, values, "", _emitters())
    for i, t in enumerate(model.outputs):
        shape = t.shape[1:]
        y = values[t.id]
        name = t.name if i == [u.name for u in model.outputs].index(t.name) \
            else g.fresh(t.name)
        if is_image(shape):
            g.op("Transpose", [y], name, outputs=[name], perm=list(TO_CHANNELS_LAST))
        else:
            g.op("Identity", [y], name, outputs=[name])
        outputs.append(_value_info(g, name, shape))
    graph = g.helper.make_graph(g.nodes, model.name, inputs, outputs, g.initializers)
    opset_id = g.helper.make_opsetid("", opset)
    proto = g.helper.make_model(graph, opset_imports=[opset_id], producer_name="minicnn",
                                producer_version=__version__,
                                doc_string=f"minicnn model {model.name!r}: NHWC inputs")
    proto.ir_version = g.helper.find_min_ir_version_for([opset_id])
    onnx.checker.check_model(proto, full_check=True)
    return proto


def save_onnx(model, path, opset_version=None):
    """Write :func:`to_onnx` of ``model`` to ``path`` (atomically); returns the proto."""
    from .. import saving
    proto = to_onnx(model, opset_version)
    saving.write_atomically(path, proto.SerializeToString())
    return proto
