"""Scratch space for a tile on the calling thread's stack.

A transform that reads a tile into scratch, then rewrites it, runs its inner loops (over
the channels) with a handful of row pointers each. Given scratch arrays as arguments,
LLVM cannot tell them apart from the image and the output, nor from each other: before
each short channel loop it tests at run time whether the rows overlap, and that test
cost about as much as the loop (the F(4x4, 3x3) input transform of a 32-channel layer
ran at scalar speed, 20 ns per tile and channel). Memory on the function's own stack
is provably its own: with it the loops run without the tests (the same transform 28-33%
faster, benchmarks/RESULTS.md 14).

:func:`_tile_scratch` gives a ``(6, 6, TILE_CHANNELS)`` array of ``like``'s dtype in the
stack frame of the function that calls it (it is inlined there, so the array lives as
long as that call; never return it or keep it). With ``NUMBA_DISABLE_JIT=1`` it is a
plain ``np.empty``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import carray, njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: channels a tile's scratch holds; wider layers go through it in blocks of this many
TILE_CHANNELS = 64
_TILE_ELEMENTS = 6 * 6 * TILE_CHANNELS


@intrinsic
def _stack_tile(typingctx, like):
    """A pointer to ``6 * 6 * TILE_CHANNELS`` elements of ``like``'s dtype, allocated once
    in the calling function's stack frame (its entry block)."""
    if not isinstance(like, types.Array):
        return None
    dtype = like.dtype

    def codegen(context, builder, signature, args):
        size = context.get_constant(types.intp, _TILE_ELEMENTS)
        return cgutils.alloca_once(builder, context.get_value_type(dtype), size=size)

    return types.CPointer(dtype)(like), codegen


@njit(cache=True, inline="always")   # inlined: ``d`` stays the caller's own stack memory
def _read_tile(x, b, r0, s0, c0, cw, size, d):
    """``d[a, e, :cw] = x[b, r0 + a, s0 + e, c0:c0 + cw]`` for ``a, e < size``, zeros where
    the pixel lies outside the image: the tile a Winograd input transform starts from.
    Rows are read through views, so no index needs Numba's negative-index wraparound."""
    h, w = x.shape[1], x.shape[2]
    zero = x.dtype.type(0)
    for a in range(size):
        r = r0 + a
        for e in range(size):
            s = s0 + e
            if r >= 0 and r < h and s >= 0 and s < w:
                xr = x[b, r, s, c0:c0 + cw]
                for ch in range(cw):
                    d[a, e, ch] = xr[ch]
            else:
                for ch in range(cw):
                    d[a, e, ch] = zero


if numba.config.DISABLE_JIT:
    def _tile_scratch(like):
        return np.empty((6, 6, TILE_CHANNELS), dtype=like.dtype)
else:
    @njit(inline="always")    # inlined: the stack memory belongs to the caller's frame
    def _tile_scratch(like):
        return carray(_stack_tile(like), (6, 6, TILE_CHANNELS))
