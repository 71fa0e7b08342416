"""The merge of per-slot partial gradients (after a ``prange`` region).

A conv kernel's threads take slots of the batch from a shared counter (:mod:`.sched`);
each slot adds its weight and bias gradients into a buffer of its own, and the buffers
are summed in slot order afterwards, so the rounding does not depend on which thread
took which slot. A slot's first GEMM writes its buffer (no zero-fill before); the sum
is split over the threads by rows of the gradient (:func:`_sum_rows`), each row added
up over the slots in order, so the bits are those of the serial sum.
"""
from __future__ import annotations

from numba import njit


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


@njit(cache=True)
def _sum_rows(part, out, lo, hi):
    """``out[e] = part[0, e] + part[1, e] + ...`` (in slot order) for rows ``lo .. hi-1``:
    one thread's share of the merge. ``part (slots, rows, f)``, ``out (rows, f)``."""
    for e in range(lo, hi):
        acc = out[e]
        first = part[0, e]
        for o in range(acc.shape[0]):
            acc[o] = first[o]
        for s in range(1, part.shape[0]):
            row = part[s, e]
            for o in range(acc.shape[0]):
                acc[o] += row[o]


@njit(cache=True)
def _sum_bias(db_part):
    """``db_part (slots, f)`` summed over the slots, in order (new ``(f,)``)."""
    db = db_part[0].copy()
    for s in range(1, db_part.shape[0]):
        for o in range(db.shape[0]):
            db[o] += db_part[s, o]
    return db
