"""The ops registry: one dispatcher per op, with the reference's docstring and signature,
implemented by every backend, and forwarding to the active backend."""
from __future__ import annotations

import inspect

import numpy as np
import pytest

import minicnn
from minicnn import ops
from minicnn.ops import reference

BACKENDS = ("reference", "numpy", "numba")


def test_every_op_is_a_registered_public_dispatcher():
    assert len(ops.OPS) >= 14
    for name, dispatcher in ops.OPS.items():
        assert getattr(ops, name) is dispatcher, name
        assert dispatcher.__name__ == name


@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_dispatcher_carries_the_reference_docstring_and_signature(name):
    dispatcher = ops.OPS[name]
    ref = getattr(reference, name)
    assert ref.__doc__ and len(ref.__doc__.strip()) > 20, f"reference.{name} has no docstring"
    assert dispatcher.__doc__ == ref.__doc__
    assert inspect.signature(dispatcher) == inspect.signature(ref)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("name", sorted(ops.OPS))
def test_every_backend_implements_every_op_with_the_reference_signature(backend_name, name):
    module = ops.backend_module(backend_name)
    impl = getattr(module, name, None)
    assert callable(impl), f"backend {backend_name!r} does not implement {name}"
    assert inspect.signature(impl) == inspect.signature(getattr(reference, name)), \
        f"{backend_name}.{name}{inspect.signature(impl)} != reference"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_dispatcher_calls_the_active_backend(backend_name, monkeypatch):
    calls = []
    for name in BACKENDS:
        module = ops.backend_module(name)
        monkeypatch.setattr(module, "dense_forward",
                            lambda *args, _name=name, **kwargs: calls.append((_name, args, kwargs)))
    x = np.ones((2, 3))
    with minicnn.use_backend(backend_name):
        ops.dense_forward(x, x.T, bias=None)
    assert len(calls) == 1
    got_backend, args, kwargs = calls[0]
    assert got_backend == backend_name
    assert args[0] is x and kwargs == {"bias": None}


def test_backend_module_names_the_three_backends():
    assert ops.backend_module("reference") is reference
    assert ops.backend_module("numpy").__name__ == "minicnn.ops.numpy_ops"
    assert ops.backend_module("numba").__name__ == "minicnn.ops.numba_ops"
    with pytest.raises(ValueError):
        ops.backend_module("bogus")


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        ops.register("dense_forward")


def test_help_shows_the_math():
    assert "cross-correlation" in ops.conv2d_forward.__doc__
    assert "(n, h, w, c)" in ops.conv2d_forward.__doc__
