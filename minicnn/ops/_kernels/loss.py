"""Softmax cross-entropy kernels: per-row loss and the fused gradient, one row per iteration."""
from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def _row_logsumexp(logits, b, zero):
    """Stable ``log sum_j exp(logits[b, j])``: ``m + log sum_j exp(logits[b, j] - m)``.

    Inlined into both losses (no helper of its own to compile)."""
    k = logits.shape[1]
    m = logits[b, 0]
    for j in range(1, k):
        if logits[b, j] > m:
            m = logits[b, j]
    s = zero
    for j in range(k):
        s += np.exp(logits[b, j] - m)
    return m + np.log(s)


@njit(cache=True)
def softmax_cross_entropy(logits, target, inv_n):
    """Per-row loss and fused gradient ``(p - t) * inv_n``; ``target`` is (n, k).

    ``logits (n, k)``; returns new ``row_loss (n,)``, ``-sum_j t[b, j] log p[b, j]``, and
    ``d (n, k)``. Serial: see :func:`sparse_softmax_cross_entropy`.

    ``inv_n`` is ``1 / n`` in the logits' dtype.
    """
    n, k = logits.shape
    d = np.empty_like(logits)
    row_loss = np.empty(n, dtype=logits.dtype)
    zero = inv_n - inv_n
    for b in range(n):
        lse = _row_logsumexp(logits, b, zero)
        acc = zero
        for j in range(k):
            logp = logits[b, j] - lse
            acc -= target[b, j] * logp
            d[b, j] = (np.exp(logp) - target[b, j]) * inv_n
        row_loss[b] = acc
    return row_loss, d


@njit(cache=True)
def sparse_softmax_cross_entropy(logits, labels, inv_n, one):
    """:func:`softmax_cross_entropy` with int64 class indices ``labels (n,)``.

    Returns new ``row_loss (n,) = lse - logits[b, label]`` and ``d (n, k) = (p - onehot) *
    inv_n``; ``inv_n = 1/n`` and ``one`` in the logits' dtype. Serial: a (batch, classes)
    array is too small for threads (64 x 10: 11 us serial, 66 us as a ``prange`` loop,
    benchmarks/RESULTS.md 5), and a parallel kernel costs more to compile.
    """
    n, k = logits.shape
    d = np.empty_like(logits)
    row_loss = np.empty(n, dtype=logits.dtype)
    zero = one - one
    for b in range(n):
        lse = _row_logsumexp(logits, b, zero)
        lab = labels[b]
        row_loss[b] = lse - logits[b, lab]
        for j in range(k):
            p = np.exp(logits[b, j] - lse)
            d[b, j] = ((p - one) if j == lab else p) * inv_n
    return row_loss, d

