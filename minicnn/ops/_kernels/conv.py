"""Convolution kernels: forward, backward, and conv + bias + ReLU + 2x2 max-pool fused.

Shapes: ``x (n, h, w, c)`` NHWC; ``k2 (kh*kw*c, f)`` is the Keras kernel
``(kh, kw, c, f)`` reshaped; outputs and output gradients are ``(n, oh*ow, f)``
(the wrapper reshapes them to ``(n, oh, ow, f)``). Geometry arguments as in
:mod:`.patches`; ``zero`` is 0 in x's dtype, ``nt`` the number of threads and
``grp`` the images stacked per GEMM.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .norm import _bn_dz_row, _image_moments
from .partials import _slot_partials, _sum_partials
from .pool import _conv_outputs, _max4, _window_max4
from .patches import (_col2im_one, _patch_buffers, _patch_views, _patches_into,
                      _patches_times_kernel, _transposed_patches)
from .sched import _fetch_add, _slot_count, _slot_range


@njit(parallel=True, cache=True)
def conv2d_forward(x, k2, bias, kh, kw, sh, sw, pt, pl, oh, ow, relu, pool, need_arg, zero, nt,
                   grp, counter, moments, res):
    """y = im2col(x) @ k2 + bias (then max(., 0) if ``relu``), or with ``pool`` conv + bias
    + ReLU + 2x2/2 max-pool in one pass (``relu`` ignored).

    The batch is cut into slots of contiguous images that the threads take from a
    shared counter (:mod:`.sched`), ``grp`` images per GEMM (see
    :func:`conv2d_backward`); the GEMM writes a thread-local buffer and the bias and
    ReLU (or the pool) are applied on the way out to ``y``. One kernel for both, so one
    compile (the fused variant was a near-copy of this one, benchmarks/RESULTS.md 5).

    With ``pool`` the conv output never leaves the thread-local buffer; only the pooled
    ``y (n, oh//2, ow//2, f)`` and the winner ``arg`` (uint8, 0..3 = row-major position
    in the 2x2 window, the first maximum) are written out; without ``need_arg`` (inference)
    only ``y``, by plain maxima (``arg`` is allocated, never written). Bias is added
    before the max and ReLU after it (max and ReLU commute); an odd last row or column is
    dropped.

    ``x (n, h, w, c)``, ``k2 (kh*kw*c, f)``, ``bias (f,)`` (zeros for none), one dtype;
    ``relu``, ``pool`` bool; ``oh, ow`` the conv output size. Returns new ``(y, arg)``:
    ``y (n, oh, ow, f)`` and an empty ``arg`` unless ``pool``.

    ``moments``: zeros ``(n, 2, f)`` float64, or ``(0, 2, f)`` for none; without ``pool``,
    each image's output, still in cache, adds its per-channel sums of ``y`` and ``y**2``
    into its own row (:func:`.norm._image_moments`): the statistics of a batch norm after
    the convolution, without another pass over ``y``.

    ``res``: ``(n, oh, ow, f)``, or ``(0, 0, 0, f)`` for none; without ``pool``, added to
    the output after the bias and before the ReLU (the end of a residual block: the Add
    after the convolution, in the same order, so the same bits).
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    ph = oh // 2
    pw = ow // 2
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, False)
    y, arg = _conv_outputs(n, oh, ow, f, pool, x)
    y3 = y.reshape((n, y.shape[1] * y.shape[2], f))
    r3 = res.reshape((res.shape[0], res.shape[1] * res.shape[2], f))
    cbuf, xcs = _patch_buffers(x, nt, grp * p, kk, transposed)
    zs = np.empty((nt, grp * p, f), dtype=x.dtype)
    slots = _slot_count(n, nt)
    for t in prange(nt):
        cr, ct = _patch_views(cbuf, t, grp * p, kk)
        z = zs[t]
        s = _fetch_add(counter, 0, 1)
        while s < slots:
            lo, hi = _slot_range(s, slots, n)
            for b0 in range(lo, hi, grp):
                g = min(grp, hi - b0)
                for i in range(g):
                    _patches_into(x, b0 + i, cr, ct, xcs[t], i * p, transposed,
                                  kh, kw, sh, sw, pt, pl, oh, ow)
                # rows of a partial group hold stale patches: computed, never copied out
                _patches_times_kernel(cr, ct, transposed, k2, z)
                if pool and need_arg:
                    for i in range(g):
                        _pool_out(z, i * p, y, arg, b0 + i, ph, pw, ow, f, bias, zero)
                elif pool:
                    for i in range(g):
                        _pool_max_out(z, i * p, y, b0 + i, ph, pw, ow, f, bias, zero)
                elif r3.shape[0]:
                    for i in range(g):
                        for q in range(p):
                            zr, rr, yr = z[i * p + q], r3[b0 + i, q], y3[b0 + i, q]
                            for o in range(f):
                                v = (zr[o] + bias[o]) + rr[o]
                                yr[o] = zero if (relu and v <= zero) else v  # NaN stays
                else:
                    for i in range(g):
                        for q in range(p):
                            for o in range(f):
                                v = z[i * p + q, o] + bias[o]
                                y3[b0 + i, q, o] = zero if (relu and v <= zero) else v  # NaN stays
                if moments.shape[0] and not pool:
                    for i in range(g):
                        _image_moments(y3[b0 + i], moments[b0 + i])
            s = _fetch_add(counter, 0, 1)
    return y, arg


@njit(cache=True, inline="always")
def _pool_out(z, r_off, y, arg, b, ph, pw, ow, f, bias, zero):
    """ReLU(max-pool(z + bias)) of one image's conv output ``z[r_off:r_off + oh*ow]`` into
    ``y[b]`` and its 2x2 winners into ``arg[b]`` (see :func:`conv2d_forward`)."""
    for i in range(ph):
        for j in range(pw):
            r0 = r_off + 2 * i * ow + 2 * j
            for o in range(f):
                bo = bias[o]
                m, a = _window_max4(z[r0, o] + bo, z[r0 + 1, o] + bo, z[r0 + ow, o] + bo,
                                    z[r0 + ow + 1, o] + bo)
                y[b, i, j, o] = zero if m <= zero else m
                arg[b, i, j, o] = a


@njit(cache=True)
def _pool_max_out(z, r_off, y, b, ph, pw, ow, f, bias, zero):
    """:func:`_pool_out` without the winners: ``y[b]`` only, by plain maxima (at
    inference, where no backward pass reads ``arg``: 0.80 against 0.91 ms for the seed
    model's conv1 at batch 64, benchmarks/RESULTS.md 10). A NaN wins, as there."""
    for i in range(ph):
        for j in range(pw):
            r0 = r_off + 2 * i * ow + 2 * j
            for o in range(f):
                bo = bias[o]
                m = _max4(z[r0, o] + bo, z[r0 + 1, o] + bo, z[r0 + ow, o] + bo,
                          z[r0 + ow + 1, o] + bo)
                y[b, i, j, o] = zero if m <= zero else m


@njit(cache=True)
def _backward_buffers(x, nt, slots, p, kk, f, need_dx, transposed):
    """Work buffers of a conv backward pass (patches, dz, partial gradients).

    ``nt`` threads, ``slots`` batch slots (:mod:`.sched`), ``p``: patch rows per
    thread, ``kk = kh*kw*c``, ``f`` filters. Returns the patch buffers of
    :func:`.patches._patch_buffers`, ``dzs (nt, p, f)``, the per-slot partial sums
    ``dk_part (slots, kk, f)`` and ``db_part (slots, f)`` of
    :func:`.partials._slot_partials`, GEMM scratch ``tmp (nt, kk, f)``, and ``dx (n, h,
    w, c)`` plus ``dcols (nt, p, kk)`` (both empty when not ``need_dx``).
    """
    cbuf, xcs = _patch_buffers(x, nt, p, kk, transposed)
    dzs = np.empty((nt, p, f), dtype=x.dtype)
    dk_part, db_part = _slot_partials(slots, kk, f, x)
    tmp = np.empty((nt, kk, f), dtype=x.dtype)
    if need_dx:
        dx = np.empty(x.shape, dtype=x.dtype)
        dcols = np.empty((nt, p, kk), dtype=x.dtype)
    else:
        dx = np.empty((0, 0, 0, 0), dtype=x.dtype)
        dcols = np.empty((nt, 0, 0), dtype=x.dtype)
    return cbuf, xcs, dzs, dk_part, db_part, tmp, dx, dcols


@njit(cache=True)
def _conv_grads(x, b0, g, k2t, dz, cr, ct, transposed, tmp, dk, first, dcols, dx,
                kh, kw, sh, sw, pt, pl, oh, ow, need_dx):
    """Weight gradient (added into ``dk``, or written there when ``first``) and dx of
    images ``b0 .. b0+g-1`` from their stacked dz; the patches were written into ``cr``
    or ``ct`` by the caller.

    ``k2t (f, kk)``, ``dz (grp*oh*ow, f)``, ``tmp (kk, f)`` scratch, ``dk (kk, f)`` this
    slot's partial sum, ``dcols (grp*oh*ow, kk)`` scratch; writes ``dx[b0 .. b0+g-1]``.
    """
    p = oh * ow
    out = dk if first else tmp
    if transposed:
        np.dot(ct, dz, out)
    else:
        np.dot(cr.T, dz, out)
    if not first:
        for e in range(tmp.shape[0]):    # loops, not dk += tmp: see .partials
            for o in range(tmp.shape[1]):
                dk[e, o] += tmp[e, o]
    if need_dx:
        np.dot(dz, k2t, dcols)
        for i in range(g):
            _col2im_one(dcols[i * p:(i + 1) * p], dx, b0 + i, kh, kw, sh, sw, pt, pl, oh, ow)


@njit(parallel=True, cache=True)
def conv2d_backward(x, k2, dy, y, arg, kh, kw, sh, sw, pt, pl, oh, ow, need_dx, relu, pool,
                    dz_out, zero, nt, grp, counter, bn, m):
    """dx (recomputing im2col), dkernel2d and dbias from dy, of :func:`conv2d_forward`
    plain (``dy`` and ``y (n, oh, ow, f)``) or with ``pool`` (the pooled ``dy``, ``y`` and
    the uint8 ``arg (n, oh//2, ow//2, f)``; ``arg`` is not read otherwise).

    dz, the gradient of the conv output, is built in a thread-local buffer: with ``relu``
    ``dz = dy * (y > 0)``; with ``pool`` the pooled gradient goes to its one winner if the
    pooled output is positive (the ReLU mask), 0 elsewhere. Each thread takes a
    contiguous share of the batch, ``grp`` images at a time: their patches stack
    into one ``(grp*oh*ow, kh*kw*c)`` matrix, so small layers (conv3: 64 rows per
    image) make one larger GEMM instead of several thin ones. Rows of a last,
    partial group are zero and add nothing. The threads take slots of the batch from
    a shared counter (:mod:`.sched`); each slot sums its own partial gradients. One
    kernel for both variants, so one compile (benchmarks/RESULTS.md 5).

    ``bn (7, f)`` with rows (not ``(0, f)``): ``dy`` is the gradient of a batch norm's
    output whose input was this convolution's output ``y``, and dz its input gradient,
    row by row as batch norm's own backward writes it (:func:`.norm._bn_dz_row`, ``relu``
    its ReLU, ``m`` the rows it normalised over; see
    :class:`minicnn.ops.reference.BatchNormGradient`).

    ``x (n, h, w, c)``, ``k2 (kh*kw*c, f)``; ``y`` is read only when ``relu``, ``pool`` or
    ``bn``. Returns new ``dx (n, h, w, c)`` (empty when not ``need_dx``), ``dk (kh*kw*c, f)`` and
    ``db (f,)``. A ``dz_out (n, oh*ow, f)`` with rows (not ``(0, 0, 0)``) receives each
    image's dz, for a caller that computes dx another way.
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, True)
    slots = _slot_count(n, nt)
    cbuf, xcs, dzs, dk_part, db_part, tmp, dx, dcols = _backward_buffers(
        x, nt, slots, grp * p, kk, f, need_dx, transposed)
    k2t = k2.T
    # plain: (n, oh*ow, f) views; pooled: read as 4-d in the slot
    dy3 = dy.reshape((n, dy.shape[1] * dy.shape[2], f))
    y3 = y.reshape((n, y.shape[1] * y.shape[2], f))
    for t in prange(nt):
        dz = dzs[t]
        cr, ct = _patch_views(cbuf, t, grp * p, kk)
        s = _fetch_add(counter, 0, 1)
        while s < slots:
            lo, hi = _slot_range(s, slots, n)
            _conv_backward_slot(x, lo, hi, grp, k2t, dy, y, dy3, y3, arg, dz, dz_out, cr, ct,
                                xcs[t], transposed, tmp[t], dk_part, db_part, s, dcols[t], dx,
                                kh, kw, sh, sw, pt, pl, oh, ow, need_dx, relu, pool, zero, bn, m)
            s = _fetch_add(counter, 0, 1)
    dk, db = _sum_partials(dk_part, db_part)
    return dx, dk, db


@njit(cache=True)
def _conv_backward_slot(x, lo, hi, grp, k2t, dy, y, dy3, y3, arg, dz, dz_out, cr, ct, xc,
                        transposed, tmp, dk_part, db_part, s, dcols, dx, kh, kw, sh, sw, pt, pl,
                        oh, ow, need_dx, relu, pool, zero, bn, m):
    """Images ``lo .. hi-1`` (slot ``s``) of :func:`conv2d_backward`, ``grp`` per GEMM: adds
    their weight and bias gradients into ``dk_part[s] (kk, f)`` and ``db_part[s] (f,)`` and
    writes their rows of ``dx`` (and of ``dz_out``); ``dz``, ``cr``/``ct``, ``xc``, ``tmp``
    and ``dcols`` are the calling thread's buffers, ``dy3``/``y3`` the (n, oh*ow, f) views
    of the plain ``dy``/``y``."""
    kk, f = k2t.shape[1], k2t.shape[0]
    p = oh * ow
    ph = oh // 2
    pw = ow // 2
    dk = dk_part[s]
    db = db_part[s]
    for b0 in range(lo, hi, grp):
        g = min(grp, hi - b0)
        if pool:
            for i in range(g):
                _pooled_dz(dy, y, arg, b0 + i, dz, i * p, ph, pw, oh, ow, f, db, zero)
        elif bn.shape[0]:
            for i in range(g):
                for q in range(p):
                    _bn_dz_row(dy3[b0 + i, q], y3[b0 + i, q], dz[i * p + q], bn, m, zero, relu)
            for r in range(g * p):
                for o in range(f):
                    db[o] += dz[r, o]
        else:
            # branch-free masking, and the bias gradient in its own loop, so both vectorise
            for i in range(g):
                for q in range(p):
                    for o in range(f):
                        gv = dy3[b0 + i, q, o]
                        dz[i * p + q, o] = zero if (relu and not y3[b0 + i, q, o] > zero) else gv
            for r in range(g * p):
                for o in range(f):
                    db[o] += dz[r, o]
        if dz_out.shape[0]:
            for i in range(g):
                for q in range(p):   # loops, not a slice assignment: see .partials
                    for o in range(f):
                        dz_out[b0 + i, q, o] = dz[i * p + q, o]
        if g < grp:                  # a partial group: zero patches add nothing
            for r in range(g * p, grp * p):
                for o in range(f):
                    dz[r, o] = zero
            if transposed:
                for e in range(kk):
                    for r in range(g * p, grp * p):
                        ct[e, r] = zero
            else:
                for r in range(g * p, grp * p):
                    for e in range(kk):
                        cr[r, e] = zero
        for i in range(g):
            _patches_into(x, b0 + i, cr, ct, xc, i * p, transposed,
                          kh, kw, sh, sw, pt, pl, oh, ow)
        _conv_grads(x, b0, g, k2t, dz, cr, ct, transposed, tmp, dk, b0 == lo, dcols, dx,
                    kh, kw, sh, sw, pt, pl, oh, ow, need_dx)


@njit(cache=True, inline="always")
def _pooled_dz(dy, y, arg, b, dz, r_off, ph, pw, oh, ow, f, db, zero):
    """dz rows ``r_off .. r_off + oh*ow - 1`` of image ``b`` from the pooled ``dy``, ``y``
    and ``arg``: the gradient at each window's winner if the pooled output is positive.
    Every one of the four window positions is written (g or 0) with selects rather than
    branches, and the bias gradient (added into ``db``) is summed in a loop of its own, so
    both loops vectorise."""
    if oh % 2 or ow % 2:             # an odd last row or column is never a winner
        dz[r_off:r_off + oh * ow, :] = zero
    for i in range(ph):
        for j in range(pw):
            r0 = r_off + 2 * i * ow + 2 * j
            for o in range(f):
                g = dy[b, i, j, o] if y[b, i, j, o] > zero else zero
                a = arg[b, i, j, o]
                dz[r0, o] = g if a == 0 else zero
                dz[r0 + 1, o] = g if a == 1 else zero
                dz[r0 + ow, o] = g if a == 2 else zero
                dz[r0 + ow + 1, o] = g if a == 3 else zero
    for i in range(ph):
        for j in range(pw):
            for o in range(f):
                db[o] += dy[b, i, j, o] if y[b, i, j, o] > zero else zero
