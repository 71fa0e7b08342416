"""A compiled helper handed to a parallel kernel by address, so it is compiled only once.

Why: Numba links every ``@njit`` function a kernel calls into that kernel's LLVM module,
re-optimises it there and emits its machine code again. A ``prange`` loop makes that
happen four times over: its body becomes a gufunc, wrapped twice (``_GufuncWrapper``,
``parallelgufuncwrapper``), and the kernel links all three. A per-slot helper of 2.5 s
(``winograd._winograd_backward_slot``: optimise and emit) was compiled five times, and the
cold compile of ``winograd_backward`` took 22 s of ``minicnn compile``'s 73 s.

Passed as an argument typed :class:`numba.types.FunctionType`, the helper is called
through a pointer: the kernel's module holds a declaration, not a copy. The helper stays an
``@njit(cache=True)`` function (compiled and cached once per signature); the call goes
through the C wrapper Numba makes for every compiled function, which does not propagate
exceptions: the helpers behind it raise none (the wrappers validated the shapes, and the
kernels index without bounds checks). One indirect call per slot of the batch costs
nothing measurable.

With ``NUMBA_DISABLE_JIT=1`` the kernels are Python and get the Python function itself.
"""
from __future__ import annotations

import numba
from numba import types
from numba.core.types.function_type import WrapperAddressProtocol
# registers the typeof of WrapperAddressProtocol objects (as FunctionType) and the unboxing
from numba.experimental.function_type import _get_wrapper_address


class _Compiled(WrapperAddressProtocol):
    """``dispatcher`` compiled for ``sig``, seen by a kernel as a first-class function."""

    def __init__(self, dispatcher, sig):
        self._dispatcher = dispatcher
        self._sig = sig
        self._address = None

    def signature(self):
        return self._sig

    def __wrapper_address__(self):
        if self._address is None:
            self._address = _get_wrapper_address(self._dispatcher, self._sig)  # compiles once
        return self._address


_made = {}


def by_address(dispatcher, *argtypes):
    """``dispatcher`` (an ``@njit`` function returning nothing) for the Numba types
    ``argtypes``, as an argument a kernel calls through a pointer; memoised."""
    if numba.config.DISABLE_JIT:
        return dispatcher                       # plain Python
    key = (dispatcher, argtypes)
    made = _made.get(key)
    if made is None:
        made = _made[key] = _Compiled(dispatcher, types.void(*argtypes))
    return made


def array(dtype, ndim, layout="C"):
    """The Numba type of a mutable aligned ``ndim``-d array of NumPy ``dtype``."""
    return types.Array(numba.from_dtype(dtype), ndim, layout)


def scalar(dtype):
    """The Numba type of a NumPy scalar ``dtype``."""
    return numba.from_dtype(dtype)
