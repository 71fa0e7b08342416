"""The serial merge of per-thread partial gradients (after a ``prange`` region)."""
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

