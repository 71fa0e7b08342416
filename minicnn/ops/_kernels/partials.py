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
    for t in range(1, dk_part.shape[0]):
        dk += dk_part[t]
        db += db_part[t]
    return dk, db

