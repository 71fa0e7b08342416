"""Models: :class:`Model` (a graph of layers, Keras's Functional API), :class:`Sequential`
(a chain of layers) and :func:`load_model`.

The model holds the structure and the passes; training lives in :mod:`minicnn.trainer`
and the file format in :mod:`minicnn.saving`.
"""
from ..saving import load_model
from .functional import METRICS, Model, ModelNotCompiledError
from .sequential import Sequential
from . import zoo  # noqa: E402  (the ready-made models)

#: model classes by the name a saved architecture uses
MODEL_CLASSES = {"Sequential": Sequential, "Functional": Model, "Model": Model}

__all__ = ["Model", "Sequential", "load_model", "ModelNotCompiledError", "METRICS"]


from .._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
