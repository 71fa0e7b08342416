"""The merge of per-slot partial gradients (after a ``prange`` region).

A conv kernel's threads take slots of the batch from a shared counter (:mod:`.sched`);
each slot adds its weight and bias gradients into a buffer of its own (its first GEMM
writes it: no zero-fill before), and the buffers are summed serially in slot order
afterwards, so the rounding does not depend on which thread took which slot. (Split
over the threads by rows, the sum saved 0.1-0.5 ms of the 8x8x128 F(2x2, 3x3)
backward's 8 MB of partials, and cost a second of compiling per process, as a second
``prange`` loop in each kernel or as a kernel of its own: not kept, RESULTS.md 12.)
"""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def _slot_partials(slots, rows, f, like):
    """Per-slot partial sums in ``like``'s dtype: ``part (slots, rows, f)`` uninitialised
    (each slot's first GEMM writes its own) and ``db_part (slots, f)`` zeroed; with no
    slot (an empty batch: no GEMM runs) one zeroed slot each, so the sums are 0."""
    if slots:
        part = np.empty((slots, rows, f), dtype=like.dtype)
    else:
        part = np.zeros((1, rows, f), dtype=like.dtype)
    return part, np.zeros((max(slots, 1), f), dtype=like.dtype)


@njit(cache=True)
def _sum_partials(dk_part, db_part):
    """Sum the per-thread partial weight and bias gradients, serially, after the prange.

    ``dk_part (nt, kk, f)`` and ``db_part (nt, f)``; returns new ``dk (kk, f)``, ``db (f,)``.
    """
    dk = dk_part[0].copy()
    db = db_part[0].copy()
    kk, f = dk.shape
    # loops, not dk += dk_part[t]: an array expression makes Numba compile the string
    # formatting of its shape-mismatch error (~2 s per process, see .norm)
    for t in range(1, dk_part.shape[0]):
        for e in range(kk):
            for o in range(f):
                dk[e, o] += dk_part[t, e, o]
        for o in range(f):
            db[o] += db_part[t, o]
    return dk, db
