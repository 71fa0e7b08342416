"""Layouts shared by the ONNX and PyTorch exporters; nothing here imports onnx or torch.

minicnn (as Keras) is channels-last: images ``(n, h, w, c)``, Conv2D kernels
``(kh, kw, c, f)``, Dense kernels ``(k, units)``. ONNX and PyTorch are channels-first:
images ``(n, c, h, w)``, convolution weights ``(f, c, kh, kw)`` (OIHW), Linear weights
``(units, k)``. The exported graphs keep minicnn's interface (NHWC in, NHWC out) and run
every rank-4 tensor channels-first inside: the input is transposed once, and transposed
back before ``Flatten`` (so that a Dense kernel after it keeps Keras's row order) and at
4-D outputs.

:func:`torch_state_dict` is the weights of :func:`minicnn.export.to_torch`'s module, as
NumPy arrays, without torch.
"""
from __future__ import annotations

import numpy as np

#: NHWC -> NCHW and back
TO_CHANNELS_FIRST = (0, 3, 1, 2)
TO_CHANNELS_LAST = (0, 2, 3, 1)


def is_image(shape) -> bool:
    """True for the shape of one example ``(h, w, c)``: such tensors run channels-first."""
    return not isinstance(shape, list) and len(shape) == 3


def channels_first_axis(axis: int, example_ndim: int) -> int:
    """The axis (batch included) that minicnn's ``axis`` (batch included, negative counts
    from the end) becomes inside an exported graph, for tensors of ``example_ndim``."""
    a = axis - 1 if axis > 0 else example_ndim + axis        # index into one example
    if example_ndim != 3:
        return a + 1
    return {0: 2, 1: 3, 2: 1}[a]                            # h, w, c -> 2, 3, 1


def module_key(name: str) -> str:
    """A layer name as a torch module name (torch refuses '.' in them)."""
    return name.replace(".", "_")


# ----------------------------------------------------------------------------- weights
def conv_kernel_to_oihw(kernel):
    """``(kh, kw, c, f) -> (f, c, kh, kw)``."""
    return np.ascontiguousarray(np.transpose(kernel, (3, 2, 0, 1)))


def oihw_to_conv_kernel(weight):
    return np.ascontiguousarray(np.transpose(weight, (2, 3, 1, 0)))


def dense_kernel_to_torch(kernel):
    """``(k, units) -> (units, k)``."""
    return np.ascontiguousarray(np.asarray(kernel).T)


#: minicnn weight key -> (torch name, to torch layout, back to minicnn's), per layer class
_TORCH_WEIGHTS = {
    "Conv2D": {"kernel": ("weight", conv_kernel_to_oihw, oihw_to_conv_kernel),
               "bias": ("bias", None, None)},
    "Dense": {"kernel": ("weight", dense_kernel_to_torch, dense_kernel_to_torch),
              "bias": ("bias", None, None)},
    "BatchNormalization": {"gamma": ("weight", None, None), "beta": ("bias", None, None),
                           "moving_mean": ("running_mean", None, None),
                           "moving_variance": ("running_var", None, None)},
}


def _copy(a):
    return np.array(a, copy=True)


def torch_weights(model, prefix=""):
    """``[(torch name, layer, minicnn key or None, to_torch, from_torch)]`` for every tensor
    of the torch module's ``state_dict``, in its order. ``key`` None marks what minicnn has
    no weight for: BatchNormalization's gamma/beta when ``scale``/``center`` is False
    (ones/zeros in torch) and torch's ``num_batches_tracked``."""
    from ..models import Model
    out, seen, owners = [], set(), {}
    for node in model.nodes:
        layer = node.layer
        if id(layer) in seen:           # a shared layer is one torch module
            continue
        seen.add(id(layer))
        key = module_key(layer.name)
        if owners.setdefault(key, layer) is not layer:
            raise ValueError(f"torch_state_dict: layers {owners[key].name!r} and "
                             f"{layer.name!r} both become torch module {key!r} (torch "
                             f"refuses '.' in names); rename one")
        name = f"{prefix}layers.{key}"
        if isinstance(layer, Model):
            out.extend(torch_weights(layer, name + "."))
            continue
        table = _TORCH_WEIGHTS.get(type(layer).__name__)
        if table is None or not layer.params:
            continue
        for key, (tname, to_torch, from_torch) in table.items():
            if key in layer.params:
                out.append((f"{name}.{tname}", layer, key, to_torch or _copy,
                            from_torch or _copy))
            elif key in ("gamma", "beta"):
                out.append((f"{name}.{tname}", layer, None, None, None))
        if type(layer).__name__ == "BatchNormalization":
            out.append((f"{name}.num_batches_tracked", layer, None, None, None))
    return out


def torch_state_dict(model):
    """The state_dict of ``minicnn.export.to_torch(model)``, as NumPy arrays (new arrays,
    in torch's layout), without importing torch.

    Conv2D ``kernel (kh, kw, c, f)`` -> ``weight (f, c, kh, kw)``; Dense ``kernel (k, u)``
    -> ``weight (u, k)``; BatchNormalization ``gamma, beta, moving_mean,
    moving_variance`` -> ``weight, bias, running_mean, running_var`` and
    ``num_batches_tracked`` (0: minicnn does not count). Keys are
    ``layers.<layer name>.<weight>`` (nested models: ``layers.<model>.layers...``).
    ``torch_module.load_state_dict({k: torch.from_numpy(v) ...})`` loads it back.
    """
    require_built(model, "torch_state_dict")
    state = {}
    for tname, layer, key, to_torch, _ in torch_weights(model):
        if key is not None:
            state[tname] = to_torch(layer.params[key])
        elif tname.endswith("num_batches_tracked"):
            state[tname] = np.array(0, dtype=np.int64)
        else:
            c = layer.params["moving_mean"].shape[0]
            fill = np.ones if tname.endswith("weight") else np.zeros
            state[tname] = fill(c, dtype=layer.params["moving_mean"].dtype)
    return state


def require_built(model, what):
    from ..models import Model
    if not isinstance(model, Model):
        raise ValueError(f"{what}: model must be a minicnn Model or Sequential, received "
                         f"{type(model).__name__}")
    if not model.built:
        raise ValueError(f"{what}: the model {model.name!r} is not built yet; give it an "
                         f"input shape (minicnn.Input(shape=...)) or call build(input_shape)")
