"""Dynamic scheduling for the batch loops: threads take slots from a shared counter.

A static split (thread ``t`` takes images ``t*chunk .. (t+1)*chunk``) stalls the whole
step when the OS deschedules one thread: the other finishes its share and waits.
With a second busy process on a two-core machine the seed step ran 3.5x slower than
idle that way (benchmarks/RESULTS.md). Here the batch is cut into ``slots``
contiguous ranges, more than there are threads, and each thread takes the next free
slot from a shared counter (an atomic fetch-and-add) until none is left, so a thread
that runs slowly simply takes fewer slots. It does not cure a core taken by another
process on its own: every parallel region still ends only when each of its threads has
at least looked at the counter, and the thread sharing the busy core waits for a time
slice to do so (section 8a of benchmarks/RESULTS.md); ``minicnn.config.adapt_threads``
then runs on fewer threads.

Results stay reproducible: a slot's partial weight gradient goes to that slot's own
buffer, and the buffers are summed in slot order afterwards, so the rounding does
not depend on which thread took which slot.

The counter is a zeroed one-element int64 array made by the Python wrapper and passed
in: made inside a parallel kernel, Numba treated it as an array the loop never writes
(the intrinsic's write is invisible to its analysis): it fused the zero-fill of
``np.zeros(1)`` into the ``prange`` loop, so the threads read an uninitialised counter,
and a read after the loop came back 0 (Numba 0.68).

With ``NUMBA_DISABLE_JIT=1`` the kernels run as Python on one thread and
:func:`_fetch_add` is a plain read-and-increment.
"""
from __future__ import annotations

import numba
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

#: slots per thread: the granularity of the load balancing (a slot is a run of images)
SLOTS_PER_THREAD = 4


def _fetch_add_python(counter, i, v):
    old = counter[i]
    counter[i] += v
    return old


@intrinsic
def _atomic_fetch_add(typingctx, counter, i, v):
    """``old = counter[i]; counter[i] += v`` as one atomic step; returns ``old``.

    ``counter``: a C-contiguous int64 array, ``i`` an integer index, ``v`` an int64.
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None
    sig = types.int64(counter, i, types.int64)

    def codegen(context, builder, signature, args):
        arr_t, idx_t, _ = signature.args
        arr, idx, val = args
        ary = context.make_array(arr_t)(context, builder, arr)
        idx = context.cast(builder, idx, idx_t, types.intp)
        ptr = cgutils.get_item_pointer(context, builder, arr_t, ary, [idx],
                                       wraparound=False)
        return builder.atomic_rmw("add", ptr, val, "seq_cst")

    return sig, codegen


_fetch_add = _fetch_add_python if numba.config.DISABLE_JIT else _atomic_fetch_add


@njit(cache=True)
def _slot_count(n_items, nt):
    """How many slots to cut ``n_items`` (images or image groups) into for ``nt`` threads."""
    if nt <= 1:
        return min(n_items, 1) if n_items > 0 else 0
    return min(n_items, SLOTS_PER_THREAD * nt)


@njit(cache=True)
def _slot_range(s, slots, n_items):
    """Items ``lo .. hi-1`` of slot ``s`` of ``slots`` (contiguous, sizes differ by <= 1)."""
    base = n_items // slots
    extra = n_items % slots
    lo = s * base + min(s, extra)
    hi = lo + base + (1 if s < extra else 0)
    return lo, hi
