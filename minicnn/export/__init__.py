"""Export: minicnn models to ONNX and to PyTorch.

::

    model.export("m.onnx", format="onnx")         # Keras 3's spelling; onnxruntime runs it
    model.export("m.pt2", format="torch")         # a torch.export program (torch.export.load)
    module = minicnn.export.to_torch(model)       # an equivalent torch.nn.Module (NHWC in)
    state = minicnn.export.torch_state_dict(model)  # its weights as NumPy, no torch needed

Both keep minicnn's interface: NHWC images in, NHWC images (or vectors) out; channels-first
runs inside. :func:`minicnn.gradcheck.compare_with_torch` checks a model's backprop
against the torch twin's autograd. onnx and torch are imported only when used.
"""
from __future__ import annotations

import os

from .layout import torch_state_dict
from .onnx_graph import save_onnx, to_onnx
from .torch_module import save_torch_program, to_torch

#: what ``model.export(format=...)`` writes
FORMATS = ("onnx", "torch")
#: Keras 3's other formats, which need TensorFlow or OpenVINO
KERAS_ONLY_FORMATS = ("tf_saved_model", "openvino", "litert")


def export_model(model, filepath, format="tf_saved_model", verbose=None,
                 input_signature=None, **kwargs):
    """``model.export``: write ``model`` to ``filepath`` as ``format`` ('onnx' or 'torch').

    ``opset_version=`` (onnx only) picks the opset (default 17). ``input_signature`` must
    be None: a minicnn model has one input shape (any batch size).
    """
    fmt = format.lower() if isinstance(format, str) else format
    if fmt not in FORMATS:
        extra = (" (Keras 3 writes it through TensorFlow or OpenVINO, which minicnn does "
                 "not use)" if fmt in KERAS_ONLY_FORMATS else "")
        raise ValueError(f"export: format must be one of {', '.join(map(repr, FORMATS))}, "
                         f"received format={format!r}{extra}")
    if input_signature is not None:
        raise ValueError(f"export: input_signature must be None (the model's input shape, "
                         f"any batch size, is used), received {input_signature!r}")
    allowed = {"opset_version"} if fmt == "onnx" else set()
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise ValueError(f"export: unexpected argument(s) {', '.join(unknown)} for "
                         f"format={fmt!r}" + ("; onnx takes opset_version" if fmt == "onnx"
                                              else ""))
    filepath = os.fspath(filepath)
    if fmt == "onnx":
        save_onnx(model, filepath, kwargs.get("opset_version"))
    else:
        save_torch_program(model, filepath)
    if verbose:
        print(f"Saved the model as {fmt} to {filepath}")
    return filepath


__all__ = ["export_model", "to_onnx", "save_onnx", "to_torch", "torch_state_dict",
           "save_torch_program", "FORMATS"]
