"""The op registry: one dispatcher per op, documented by the reference implementation.

:func:`register` makes the dispatcher of an op from its reference function: the
dispatcher has the reference's name, signature and docstring (the math and the
shapes, so ``help(minicnn.ops.conv2d_forward)`` shows them) and each call runs the
same-named function of the active backend. Every backend module implements every
registered op with the reference's signature (``tests/test_ops_registry.py``).
"""
from __future__ import annotations

import functools
import importlib

from .. import config
from . import reference

_MODULES = {"reference": ".reference", "numpy": ".numpy_ops", "numba": ".numba_ops"}
_loaded = {}

#: ``{op name: dispatcher}``, in registration order.
OPS = {}


def backend_module(name=None):
    """The module implementing the ops of backend ``name`` (default: the active one)."""
    name = config.get_backend() if name is None else config.check_backend(name)
    mod = _loaded.get(name)
    if mod is None:
        mod = importlib.import_module(_MODULES[name], __package__)
        _loaded[name] = mod
    return mod


def register(name):
    """The dispatcher of op ``name``: ``reference.<name>``'s signature and docstring, and a
    call of ``<active backend>.<name>`` with the same arguments."""
    if name in OPS:
        raise ValueError(f"ops: op {name!r} is already registered")
    ref = getattr(reference, name)

    @functools.wraps(ref)
    def dispatcher(*args, **kwargs):
        return getattr(backend_module(), name)(*args, **kwargs)

    dispatcher.__module__ = "minicnn.ops"
    OPS[name] = dispatcher
    return dispatcher
