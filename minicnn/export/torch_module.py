"""PyTorch export: a minicnn model as an equivalent ``torch.nn.Module``.

``to_torch(model)`` returns a module that takes minicnn's input (**NHWC**, float32 or the
model's dtype) and returns minicnn's output (NHWC for images): ``module(x)`` is
``model.predict(x)`` in eval mode. Inside, images run NCHW (torch's layout), with the
weights copied into torch's layout (:mod:`minicnn.export.layout`).

Modes: the module comes back in **eval** mode, which is minicnn's inference (``predict``:
BatchNormalization on the moving statistics, Dropout off). ``module.train()`` is
minicnn's ``training=True`` for BatchNormalization (batch statistics; Keras's momentum
0.99 is torch's 0.01, epsilon is kept) and Dropout (torch's own random mask). Two
differences remain in training mode: torch updates ``running_var`` with the *unbiased*
batch variance where Keras and minicnn use the biased one, and RandomFlip /
RandomTranslation are the identity (torch has no such layers: they do not augment).

torch is imported only here, when used.
"""
from __future__ import annotations

import numpy as np

from . import layout
from .layout import TO_CHANNELS_FIRST, TO_CHANNELS_LAST, is_image, module_key


def torch_module():
    try:
        import torch
    except ImportError:
        raise ImportError("PyTorch export needs torch: pip install torch") from None
    return torch


_CLASSES = None


def _classes():
    """The torch module classes (defined on first use, so torch stays optional)."""
    global _CLASSES
    if _CLASSES is not None:
        return _CLASSES
    torch = torch_module()
    nn, F = torch.nn, torch.nn.functional
    from ..ops.reference import LEAKY_RELU_SLOPE

    def activation(name, x, channels_first):
        if name == "linear":
            return x
        if name == "relu":
            return F.relu(x)
        if name == "sigmoid":
            return torch.sigmoid(x)
        if name == "tanh":
            return torch.tanh(x)
        if name == "softmax":
            return F.softmax(x, dim=1 if channels_first else -1)
        if name == "gelu":
            return F.gelu(x)
        if name in ("swish", "silu"):
            return F.silu(x)
        if name == "elu":
            return F.elu(x, alpha=1.0)
        if name == "leaky_relu":
            return F.leaky_relu(x, LEAKY_RELU_SLOPE)
        raise ValueError(f"to_torch: activation {name!r} has no torch form")

    def tf_pad(pads):
        t, b, l, r = pads
        return (l, r, t, b)                      # F.pad's order: last dim first

    class Conv2D(nn.Conv2d):
        """Conv2d after TensorFlow's padding (F.pad when it is asymmetric), then the
        activation."""

        def __init__(self, layer):
            t, b, l, r = layer.pads
            symmetric = t == b and l == r
            super().__init__(layer.input_shape[2], layer.filters, layer.kernel_size,
                             stride=layer.strides, padding=(t, l) if symmetric else 0,
                             bias=layer.use_bias)
            self.pads = None if symmetric else tf_pad(layer.pads)
            self.activation = layer.activation

        def forward(self, x, preactivation=False):
            if self.pads is not None:
                x = F.pad(x, self.pads)
            z = super().forward(x)
            return z if preactivation else activation(self.activation, z, True)

    class Dense(nn.Linear):
        def __init__(self, layer):
            super().__init__(layer.input_shape[0], layer.units, bias=layer.use_bias)
            self.activation = layer.activation

        def forward(self, x, preactivation=False):
            z = super().forward(x)
            return z if preactivation else activation(self.activation, z, False)

    class MaxPooling2D(nn.Module):
        """max_pool2d after padding with -inf (padded cells never win)."""

        def __init__(self, layer):
            super().__init__()
            self.pool, self.strides = tuple(layer.pool_size), tuple(layer.strides)
            self.pads = tf_pad(layer.pads) if any(layer.pads) else None

        def forward(self, x):
            if self.pads is not None:
                x = F.pad(x, self.pads, value=float("-inf"))
            return F.max_pool2d(x, self.pool, self.strides)

    class AveragePooling2D(nn.Module):
        """avg_pool2d over the zero-padded input, rescaled so that each window averages
        its cells inside the image only (TensorFlow's 'same')."""

        def __init__(self, layer):
            super().__init__()
            self.pool, self.strides = tuple(layer.pool_size), tuple(layer.strides)
            self.pads = tf_pad(layer.pads) if any(layer.pads) else None
            if self.pads is not None:
                h, w, _ = layer.input_shape
                ones = F.pad(torch.ones((1, 1, h, w), dtype=torch.float64), self.pads)
                inside = F.avg_pool2d(ones, self.pool, self.strides)
                self.register_buffer("rescale", (1 / inside).to(_dtype(layer)),
                                     persistent=False)

        def forward(self, x):
            if self.pads is None:
                return F.avg_pool2d(x, self.pool, self.strides)
            return F.avg_pool2d(F.pad(x, self.pads), self.pool, self.strides) * self.rescale

    class GlobalPooling2D(nn.Module):
        def __init__(self, layer, reduce):
            super().__init__()
            self.keepdims, self.reduce = layer.keepdims, reduce

        def forward(self, x):                    # (n, c, 1, 1) is NCHW of (n, 1, 1, c)
            if self.reduce == "mean":
                return x.mean(dim=(2, 3), keepdim=self.keepdims)
            return x.amax(dim=(2, 3), keepdim=self.keepdims)

    class BatchNorm2d(nn.BatchNorm2d):
        pass

    class BatchNorm1d(nn.BatchNorm1d):
        """On ``(n, c)``, or on ``(n, t, c)`` with the channels moved to axis 1 and back."""

        def forward(self, x):
            if x.dim() == 3:
                return super().forward(x.transpose(1, 2)).transpose(1, 2)
            return super().forward(x)

    def batchnorm(layer):
        cls = BatchNorm2d if is_image(layer.input_shape) else BatchNorm1d
        bn = cls(layer.input_shape[-1], eps=layer.epsilon, momentum=1 - layer.momentum)
        # minicnn without scale/center: torch keeps the weight (ones) / bias (zeros) fixed
        bn.weight.requires_grad_(layer.scale)
        bn.bias.requires_grad_(layer.center)
        return bn

    class Flatten(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.image = is_image(layer.input_shape)

        def forward(self, x):
            if self.image:                       # back to NHWC: Keras's order
                x = x.permute(*TO_CHANNELS_LAST)
            return torch.flatten(x, 1)

    class Activation(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.activation = layer.activation
            self.channels_first = is_image(layer.input_shape)

        def forward(self, x, preactivation=False):
            return x if preactivation else activation(self.activation, x, self.channels_first)

    class LeakyReLU(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.negative_slope = layer.negative_slope

        def forward(self, x):
            return F.leaky_relu(x, self.negative_slope)

    class Rescaling(nn.Module):
        def __init__(self, layer):
            super().__init__()
            self.scale, self.offset = layer.scale, layer.offset

        def forward(self, x):
            return x * self.scale + self.offset

    class ZeroPadding2D(nn.Module):
        def __init__(self, layer):
            super().__init__()
            (t, b), (l, r) = layer.padding
            self.pads = (l, r, t, b)

        def forward(self, x):
            return F.pad(x, self.pads)

    class Identity(nn.Identity):
        """RandomFlip, RandomTranslation: the identity in both modes (no augmentation)."""

    class Merge(nn.Module):
        def __init__(self, layer, op, axis=None):
            super().__init__()
            self.op, self.axis = op, axis

        def forward(self, *xs):
            if self.op == "concatenate":
                return torch.cat(xs, dim=self.axis)
            if self.op == "subtract":
                return xs[0] - xs[1]
            if self.op == "average":
                return torch.stack(xs).mean(dim=0)
            if self.op == "maximum":
                return torch.stack(xs).amax(dim=0)
            if self.op == "minimum":
                return torch.stack(xs).amin(dim=0)
            y = xs[0]
            for x in xs[1:]:
                y = y + x if self.op == "add" else y * x
            return y

    def concatenate(layer):
        ndim = len(layer.input_shape[0])
        return Merge(layer, "concatenate", layout.channels_first_axis(layer.axis, ndim))

    class Graph(nn.Module):
        """A minicnn graph: ``layers`` (one module per minicnn layer, by name) run in the
        order of ``program``. Takes and returns NHWC images."""

        def __init__(self, model, makers):
            super().__init__()
            from ..models import Model
            self.layers = nn.ModuleDict()
            program, owners = [], {}
            for node in model.nodes:
                layer = node.layer
                key = module_key(layer.name)
                if owners.setdefault(key, layer) is not layer:
                    raise ValueError(f"to_torch: layers {owners[key].name!r} and "
                                     f"{layer.name!r} both become torch module {key!r} "
                                     f"(torch refuses '.' in names); rename one")
                if key not in self.layers:
                    if isinstance(layer, Model):
                        self.layers[key] = Graph(layer, makers)
                    else:
                        make = makers.get(type(layer))
                        if make is None:
                            raise ValueError(
                                f"to_torch: layer {layer.name!r} ({type(layer).__name__}) "
                                f"has no torch form; to_torch converts "
                                f"{', '.join(sorted(c.__name__ for c in makers))} and "
                                f"nested models")
                        self.layers[key] = make(layer)
                program.append((key, tuple(t.id for t in node.inputs), node.outputs[0].id,
                                bool(node.multi_input), isinstance(layer, Model)))
            self.program = program
            self.input_ids = [t.id for t in model.inputs]
            self.output_ids = [t.id for t in model.outputs]
            self.input_images = [is_image(t.shape[1:]) for t in model.inputs]
            self.output_images = [is_image(t.shape[1:]) for t in model.outputs]
            self.single_output = model.output is model.outputs[0]

        def run(self, xs, preactivation=False, channels_first=False):
            """Run on the list of inputs ``xs``; returns the list of outputs. With
            ``preactivation`` the layer making the (first) output stops before its
            activation (for a loss on logits)."""
            values = {}
            for tid, x, image in zip(self.input_ids, xs, self.input_images):
                values[tid] = x.permute(*TO_CHANNELS_FIRST) if image and not channels_first \
                    else x
            for key, ins, out, multi, nested in self.program:
                module = self.layers[key]
                args = [values[t] for t in ins]
                if nested:
                    values[out] = module.run(args, channels_first=True)[0]
                elif multi:
                    values[out] = module(*args)
                elif preactivation and out == self.output_ids[0]:
                    values[out] = module(args[0], preactivation=True)
                else:
                    values[out] = module(args[0])
            outs = [values[t] for t in self.output_ids]
            if channels_first:
                return outs
            return [y.permute(*TO_CHANNELS_LAST) if image else y
                    for y, image in zip(outs, self.output_images)]

        def forward(self, *xs):
            outs = self.run(list(xs))
            return outs[0] if self.single_output else tuple(outs)

    from .. import layers as L
    makers = {L.Conv2D: Conv2D, L.Dense: Dense, L.MaxPooling2D: MaxPooling2D,
              L.AveragePooling2D: AveragePooling2D,
              L.GlobalAveragePooling2D: lambda layer: GlobalPooling2D(layer, "mean"),
              L.GlobalMaxPooling2D: lambda layer: GlobalPooling2D(layer, "max"),
              L.BatchNormalization: batchnorm, L.Flatten: Flatten, L.Activation: Activation,
              L.ReLU: Activation, L.Softmax: Activation, L.LeakyReLU: LeakyReLU,
              L.Rescaling: Rescaling, L.ZeroPadding2D: ZeroPadding2D,
              L.Dropout: lambda layer: nn.Dropout(layer.rate),
              L.RandomFlip: lambda layer: Identity(), L.RandomTranslation: lambda layer: Identity(),
              L.Add: lambda layer: Merge(layer, "add"),
              L.Subtract: lambda layer: Merge(layer, "subtract"),
              L.Multiply: lambda layer: Merge(layer, "multiply"),
              L.Average: lambda layer: Merge(layer, "average"),
              L.Maximum: lambda layer: Merge(layer, "maximum"),
              L.Minimum: lambda layer: Merge(layer, "minimum"),
              L.Concatenate: concatenate}
    _CLASSES = (Graph, makers)
    return _CLASSES


def _dtype(layer):
    torch = torch_module()
    return torch.float64 if np.dtype(layer.dtype) == np.float64 else torch.float32


def to_torch(model):
    """An equivalent ``torch.nn.Module`` of ``model``, weights copied, in eval mode.

    It takes **NHWC** input as minicnn does (``module(torch.from_numpy(x))``; a model with
    several inputs takes them as several arguments) and computes in the model's dtype.
    Its ``state_dict`` is :func:`minicnn.export.torch_state_dict` (keys
    ``layers.<layer name>.weight``, ...). See the module docstring for train/eval mode.
    """
    layout.require_built(model, "to_torch")
    torch = torch_module()
    graph_cls, makers = _classes()
    module = graph_cls(model, makers).to(_dtype(model))
    state = {k: torch.from_numpy(v) for k, v in layout.torch_state_dict(model).items()}
    module.load_state_dict(state, strict=True)
    return module.eval()


def save_torch_program(model, path):
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``; a ``.pt2``
    file, Keras 3's ``format="torch"``) with a dynamic batch size. Load it without
    minicnn: ``torch.export.load(path).module()(x_nhwc)``."""
    torch = torch_module()
    module = to_torch(model)
    examples = tuple(torch.zeros((2,) + tuple(t.shape[1:]), dtype=_dtype(model))
                     for t in model.inputs)
    batch = torch.export.Dim("batch")
    dynamic = {"xs": tuple({0: batch} for _ in examples)}
    program = torch.export.export(module, examples, dynamic_shapes=dynamic)
    torch.export.save(program, path)
    return program
