"""minicnn: a convolutional-network library written from scratch with NumPy and Numba.

Every forward and backward pass is code you can read (``minicnn.ops.reference``),
run fast (``numba`` backend, the default) and check (``minicnn.gradcheck``).

A Keras 3 program runs with only its imports changed::

    import minicnn as keras
    from minicnn import layers, models, optimizers, callbacks

    inputs = keras.Input(shape=(32, 32, 3))
    ...
    model = keras.Model(inputs, outputs)
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

from . import config, ops  # noqa: E402
from .config import (get_backend, get_num_threads, set_backend, set_num_threads,  # noqa: E402
                     use_backend)
from .utils import set_random_seed  # noqa: E402

_LAZY = ("layers", "models", "datasets", "utils", "gradcheck", "losses", "optimizers",
         "callbacks", "initializers", "activations", "plot", "cli", "train", "trainer",
         "saving", "regularizers", "schedules", "machine", "export")
#: Keras's top-level names, loaded on first use
_FROM = {"Input": "layers", "Model": "models", "Sequential": "models",
         "load_model": "models"}


def __getattr__(name):
    # submodules load on first use, so `import minicnn` stays fast
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    if name in _FROM:
        return getattr(importlib.import_module(f".{_FROM[name]}", __name__), name)
    from ._missing import missing
    return missing(__name__)(name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(_FROM))


__all__ = ["config", "ops", "get_backend", "set_backend", "use_backend", "set_num_threads",
           "get_num_threads", "set_random_seed", "__version__", *_LAZY, *_FROM]
