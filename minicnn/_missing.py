"""The error for a Keras name minicnn does not have (yet).

Each public module ends with ``__getattr__ = missing(__name__)``: a Keras program that
reaches for, say, ``layers.LSTM`` gets an AttributeError that says minicnn has no LSTM
yet and where the list of what exists is, instead of a bare "has no attribute".
"""
from __future__ import annotations


def missing(module_name):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        raise AttributeError(
            f"module {module_name!r} has no attribute {name!r}: minicnn does not have "
            f"{name} yet (what it has: README, 'Keras API coverage'; dir({module_name}) "
            f"lists this module's names)")
    return __getattr__
