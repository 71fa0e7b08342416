"""Private Numba kernels of the numba backend.

Call them through :mod:`minicnn.ops.numba_ops`, which validates and prepares
the arguments (contiguous arrays, scalars already in the array dtype, so no
float64 signature is ever compiled for float32 data).

Parallel design: one ``prange`` region per pass. ``prange(nt)`` hands each of
the ``nt`` threads one iteration; thread ``t`` walks images ``t, t + nt, ...``
one at a time, so the patches of one image stay in its L2 cache and each
thread calls single-threaded BLAS (``np.dot``). Every ``prange`` iteration
writes only its own output rows or its own slot of a per-thread partial
buffer; partial weight gradients are summed serially afterwards. The thread
count ``nt`` is an argument (``numba.get_num_threads()`` read inside a kernel
would stop Numba from caching it).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange, uint64


@njit(parallel=True, cache=True)
def _warm(a):
    for i in prange(a.shape[0]):
        a[i] = i
    return a


def warm_threading():
    """Run a trivial parallel kernel so that Numba chooses its threading layer."""
    _warm(np.zeros(4))


# ----------------------------------------------------------------------------- convolution
@njit(cache=True)
def _im2col_one(x, b, cols, kh, kw, sh, sw, pt, pl, oh, ow):
    """Patches of image ``b``: ``cols[i*ow + j, (a*kw + d)*c + ch] = xp[b, i*sh+a, j*sw+d, ch]``."""
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    for i in range(oh):
        for j in range(ow):
            row = i * ow + j
            for a in range(kh):
                r = i * sh + a - pt
                for d in range(kw):
                    s = j * sw + d - pl
                    base = (a * kw + d) * c
                    if r >= 0 and r < h and s >= 0 and s < w:
                        for ch in range(c):
                            cols[row, base + ch] = x[b, r, s, ch]
                    else:
                        for ch in range(c):
                            cols[row, base + ch] = 0


# Two layouts of the patch matrix of one image:
# - rows, (oh*ow, kk) with kk = kh*kw*c: one row per output pixel, ``c`` contiguous
#   floats per tap; the forward GEMM is ``cols @ k2``.
# - transposed, (kk, oh*ow): one row per (tap, channel), a run of output pixels.
# Which one is faster depends on the pass (benchmarks/RESULTS.md, section 3):
# - few channels (an RGB or grey first layer): the row layout copies 3 floats per
#   tap (conv1: 14 us of patches against 8 us of GEMM per image); the transposed one
#   copies whole runs of pixels with vector loads and stores (3 us). Both passes.
# - the weight gradient, any c: OpenBLAS runs ``ct @ dz`` (both operands in row-major
#   order) at about 215 GFLOP/s on one thread and ``cols.T @ dz`` at 165-175; for
#   stride 1 and a full-width output the transposed patches are long runs of the
#   planar image, cheap enough to win (conv2 backward -0.4 ms per thread).
# - the forward GEMM prefers the row layout (``ct.T @ k2`` is the slower path again).
_TCOLS_MAX_C = 4


@njit(cache=True)
def _transposed_patches(c, sh, sw, w, ow, backward):
    """True where the transposed patch layout is the faster one (see above)."""
    return c <= _TCOLS_MAX_C or (backward and sh == 1 and sw == 1 and ow == w)


@njit(cache=True)
def _inside(n_out, stride, offset, n_in):
    """``(lo, hi)``: the outputs ``k`` in ``[lo, hi)`` are those whose input index
    ``k*stride + offset`` lies inside ``[0, n_in)`` (they are contiguous)."""
    lo = 0
    while lo < n_out and lo * stride + offset < 0:
        lo += 1
    hi = n_out
    while hi > lo and (hi - 1) * stride + offset >= n_in:
        hi -= 1
    return lo, hi


@njit(cache=True)
def _im2colT_one(x, b, xc, ct, q_off, kh, kw, sh, sw, pt, pl, oh, ow):
    """Transposed patches of image ``b`` into columns ``q_off ..`` of ``ct``:
    ``ct[(a*kw + d)*c + ch, q_off + i*ow + j] = xp[b, i*sh+a, j*sw+d, ch]``.

    ``xc (c, h*w)`` is scratch for the image in planar layout. With stride 1 and
    ``ow == w`` a row of ``ct`` is the planar channel shifted by a constant, copied
    as one run, then the columns that fall in the padding are zeroed; otherwise it
    is copied one output row at a time. Indices are unsigned in the copy loops: a
    signed index carries Numba's negative-index wraparound, which keeps LLVM from
    vectorising them.
    """
    h, w, c = x.shape[1], x.shape[2], x.shape[3]
    p = oh * ow
    for r in range(h):
        for s in range(w):
            for ch in range(c):
                xc[ch, r * w + s] = x[b, r, s, ch]
    one_run = sh == 1 and sw == 1 and ow == w
    for a in range(kh):
        ilo, ihi = _inside(oh, sh, a - pt, h)       # output rows inside the image
        for d in range(kw):
            jlo, jhi = _inside(ow, sw, d - pl, w)   # output columns inside the image
            for ch in range(c):
                t = (a * kw + d) * c + ch
                for q in range(ilo * ow):
                    ct[t, q_off + q] = 0
                for q in range(ihi * ow, p):
                    ct[t, q_off + q] = 0
                if one_run:
                    # q -> q + off for every row inside at once; what this reads
                    # across a row end lands in padding columns, zeroed below
                    off = (a - pt) * w + (d - pl)
                    lo = max(ilo * ow, -off)
                    hi = min(ihi * ow, h * w - off)
                    dst = uint64(q_off + lo)
                    src = uint64(lo + off)
                    for u in range(uint64(max(hi - lo, 0))):
                        ct[t, dst + u] = xc[ch, src + u]
                else:
                    for i in range(ilo, ihi):
                        dst = uint64(q_off + i * ow + jlo)
                        src = uint64((i * sh + a - pt) * w + jlo * sw + d - pl)
                        if sw == 1:
                            for u in range(uint64(jhi - jlo)):
                                ct[t, dst + u] = xc[ch, src + u]
                        else:
                            for u in range(uint64(jhi - jlo)):
                                ct[t, dst + u] = xc[ch, src + u * uint64(sw)]
                if jlo > 0 or jhi < ow:                  # padding columns
                    for i in range(ilo, ihi):
                        for j in range(jlo):
                            ct[t, q_off + i * ow + j] = 0
                        for j in range(jhi, ow):
                            ct[t, q_off + i * ow + j] = 0


@njit(cache=True)
def _patch_buffers(x, nt, rows, kk, transposed):
    """Per-thread patch buffers: flat (nt, rows*kk), viewed as (rows, kk) or (kk, rows),
    plus the planar scratch image the transposed layout is copied from."""
    cbuf = np.empty((nt, rows * kk), dtype=x.dtype)
    if transposed:
        xcs = np.empty((nt, x.shape[3], x.shape[1] * x.shape[2]), dtype=x.dtype)
    else:
        xcs = np.empty((nt, 0, 0), dtype=x.dtype)
    return cbuf, xcs


@njit(cache=True)
def _patch_views(cbuf, t, rows, kk):
    """Thread ``t``'s patch buffer viewed as rows ``(rows, kk)`` and transposed ``(kk, rows)``."""
    return cbuf[t].reshape((rows, kk)), cbuf[t].reshape((kk, rows))


@njit(cache=True)
def _patches_times_kernel(cr, ct, transposed, k2, z):
    """``z = patches @ k2``, from whichever layout holds the patches."""
    if transposed:
        np.dot(ct.T, k2, z)
    else:
        np.dot(cr, k2, z)


@njit(cache=True)
def _col2im_one(dcols, dx, b, kh, kw, sh, sw, pt, pl, oh, ow):
    """Adjoint of :func:`_im2col_one`, adding into ``dx[b]`` (zeroed here first)."""
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    dx[b] = 0
    for i in range(oh):
        for j in range(ow):
            row = i * ow + j
            for a in range(kh):
                r = i * sh + a - pt
                if r < 0 or r >= h:
                    continue
                for d in range(kw):
                    s = j * sw + d - pl
                    if s < 0 or s >= w:
                        continue
                    base = (a * kw + d) * c
                    for ch in range(c):
                        dx[b, r, s, ch] += dcols[row, base + ch]


@njit(cache=True)
def _patches_into(x, b, cr, ct, xc, q_off, transposed, kh, kw, sh, sw, pt, pl, oh, ow):
    """Patches of image ``b`` into rows ``q_off ..`` of ``cr`` (row layout) or into
    columns ``q_off ..`` of ``ct`` (transposed layout, see :func:`_transposed_patches`)."""
    if transposed:
        _im2colT_one(x, b, xc, ct, q_off, kh, kw, sh, sw, pt, pl, oh, ow)
    else:
        _im2col_one(x, b, cr[q_off:q_off + oh * ow], kh, kw, sh, sw, pt, pl, oh, ow)


@njit(parallel=True, cache=True)
def conv2d_forward(x, k2, bias, kh, kw, sh, sw, pt, pl, oh, ow, relu, zero, nt, grp):
    """y (n, oh*ow, f) = im2col(x) @ k2 + bias (then max(., 0) if ``relu``).

    Each thread takes a contiguous share of the batch, ``grp`` images per GEMM
    (see :func:`conv2d_backward`); the GEMM writes a thread-local buffer and the
    bias and ReLU are applied on the way out to ``y``.
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, False)
    y = np.empty((n, p, f), dtype=x.dtype)
    cbuf, xcs = _patch_buffers(x, nt, grp * p, kk, transposed)
    zs = np.empty((nt, grp * p, f), dtype=x.dtype)
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        cr, ct = _patch_views(cbuf, t, grp * p, kk)
        z = zs[t]
        hi = min(n, (t + 1) * chunk)
        for b0 in range(t * chunk, hi, grp):
            g = min(grp, hi - b0)
            for i in range(g):
                _patches_into(x, b0 + i, cr, ct, xcs[t], i * p, transposed,
                              kh, kw, sh, sw, pt, pl, oh, ow)
            # rows of a partial last group hold stale patches: computed, never copied out
            _patches_times_kernel(cr, ct, transposed, k2, z)
            for i in range(g):
                for q in range(p):
                    for o in range(f):
                        v = z[i * p + q, o] + bias[o]
                        y[b0 + i, q, o] = zero if (relu and v <= zero) else v   # NaN stays NaN
    return y


@njit(cache=True)
def _backward_buffers(x, nt, p, kk, f, need_dx, transposed):
    """Per-thread work buffers of a conv backward pass (patches, dz, partial gradients)."""
    cbuf, xcs = _patch_buffers(x, nt, p, kk, transposed)
    dzs = np.empty((nt, p, f), dtype=x.dtype)
    dk_part = np.zeros((nt, kk, f), dtype=x.dtype)
    db_part = np.zeros((nt, f), dtype=x.dtype)
    tmp = np.empty((nt, kk, f), dtype=x.dtype)
    if need_dx:
        dx = np.empty(x.shape, dtype=x.dtype)
        dcols = np.empty((nt, p, kk), dtype=x.dtype)
    else:
        dx = np.empty((0, 0, 0, 0), dtype=x.dtype)
        dcols = np.empty((nt, 0, 0), dtype=x.dtype)
    return cbuf, xcs, dzs, dk_part, db_part, tmp, dx, dcols


@njit(cache=True)
def _conv_grads(x, b0, g, k2t, dz, cr, ct, transposed, tmp, dk, dcols, dx,
                kh, kw, sh, sw, pt, pl, oh, ow, need_dx):
    """Weight gradient (added into ``dk``) and dx of images ``b0 .. b0+g-1`` from their
    stacked dz; the patches were written into ``cr`` or ``ct`` by the caller."""
    p = oh * ow
    if transposed:
        np.dot(ct, dz, tmp)
    else:
        np.dot(cr.T, dz, tmp)
    dk += tmp
    if need_dx:
        np.dot(dz, k2t, dcols)
        for i in range(g):
            _col2im_one(dcols[i * p:(i + 1) * p], dx, b0 + i, kh, kw, sh, sw, pt, pl, oh, ow)


@njit(cache=True)
def _sum_partials(dk_part, db_part):
    """Sum the per-thread partial weight and bias gradients, serially, after the prange."""
    dk = dk_part[0].copy()
    db = db_part[0].copy()
    for t in range(1, dk_part.shape[0]):
        dk += dk_part[t]
        db += db_part[t]
    return dk, db


@njit(parallel=True, cache=True)
def conv2d_backward(x, k2, dy, y, kh, kw, sh, sw, pt, pl, oh, ow, need_dx, relu, zero, nt, grp):
    """dx (recomputing im2col), dkernel2d and dbias from dy (n, oh*ow, f).

    With ``relu`` the forward output ``y`` (n, oh*ow, f) masks dy first:
    ``dz = dy * (y > 0)``, computed in a thread-local buffer. Each thread takes a
    contiguous share of the batch, ``grp`` images at a time: their patches stack
    into one ``(grp*oh*ow, kh*kw*c)`` matrix, so small layers (conv3: 64 rows per
    image) make one larger GEMM instead of several thin ones. Rows of a last,
    partial group are zero and add nothing.
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, True)
    cbuf, xcs, dzs, dk_part, db_part, tmp, dx, dcols = _backward_buffers(x, nt, grp * p, kk, f,
                                                                          need_dx, transposed)
    k2t = k2.T
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        dz = dzs[t]
        cr, ct = _patch_views(cbuf, t, grp * p, kk)
        hi = min(n, (t + 1) * chunk)
        for b0 in range(t * chunk, hi, grp):
            g = min(grp, hi - b0)
            # branch-free masking, and the bias gradient in its own loop, so both vectorise
            for i in range(g):
                for q in range(p):
                    for o in range(f):
                        gv = dy[b0 + i, q, o]
                        dz[i * p + q, o] = zero if (relu and not y[b0 + i, q, o] > zero) else gv
            for r in range(g * p):
                for o in range(f):
                    db_part[t, o] += dz[r, o]
            if g < grp:                  # a partial last group: zero patches add nothing
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
                _patches_into(x, b0 + i, cr, ct, xcs[t], i * p, transposed,
                              kh, kw, sh, sw, pt, pl, oh, ow)
            _conv_grads(x, b0, g, k2t, dz, cr, ct, transposed, tmp[t], dk_part[t], dcols[t], dx,
                        kh, kw, sh, sw, pt, pl, oh, ow, need_dx)
    dk, db = _sum_partials(dk_part, db_part)
    return dx, dk, db


@njit(parallel=True, cache=True)
def conv2d_relu_maxpool_forward(x, k2, bias, kh, kw, sh, sw, pt, pl, oh, ow, zero, nt):
    """Conv + bias + ReLU + 2x2/2 max-pool in one pass per image.

    The conv output of one image stays in a thread-local (oh*ow, f) buffer; only
    the pooled ``y (n, oh//2, ow//2, f)`` and the winner ``arg`` (uint8, 0..3 =
    row-major position in the 2x2 window, the first maximum) are written out.
    Bias is added before the max and ReLU after it (max and ReLU commute).
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    ph = oh // 2
    pw = ow // 2
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, False)
    y = np.empty((n, ph, pw, f), dtype=x.dtype)
    arg = np.empty((n, ph, pw, f), dtype=np.uint8)
    cbuf, xcs = _patch_buffers(x, nt, p, kk, transposed)
    zs = np.empty((nt, p, f), dtype=x.dtype)
    for t in prange(nt):
        z = zs[t]
        cr, ct = _patch_views(cbuf, t, p, kk)
        for b in range(t, n, nt):
            _patches_into(x, b, cr, ct, xcs[t], 0, transposed, kh, kw, sh, sw, pt, pl, oh, ow)
            _patches_times_kernel(cr, ct, transposed, k2, z)
            for i in range(ph):
                for j in range(pw):
                    r0 = 2 * i * ow + 2 * j
                    for o in range(f):
                        # selects, not branches (the winner is data-dependent), so this
                        # loop vectorises; a NaN wins and stays (first NaN, like max-pool)
                        bo = bias[o]
                        m = z[r0, o] + bo
                        a = 0
                        v = z[r0 + 1, o] + bo
                        take = (m == m) & ((v > m) | (v != v))
                        m = v if take else m
                        a = 1 if take else a
                        v = z[r0 + ow, o] + bo
                        take = (m == m) & ((v > m) | (v != v))
                        m = v if take else m
                        a = 2 if take else a
                        v = z[r0 + ow + 1, o] + bo
                        take = (m == m) & ((v > m) | (v != v))
                        m = v if take else m
                        a = 3 if take else a
                        y[b, i, j, o] = zero if m <= zero else m
                        arg[b, i, j, o] = a
    return y, arg


@njit(parallel=True, cache=True)
def conv2d_relu_maxpool_backward(x, k2, dy, y, arg, kh, kw, sh, sw, pt, pl, oh, ow, need_dx,
                                 zero, nt):
    """Backward of :func:`conv2d_relu_maxpool_forward`, one image at a time.

    The pooled gradient goes to its one winner if the pooled output is positive
    (the ReLU mask), building dz (oh*ow, f) in a thread-local buffer: every one of
    the four window positions is written (g or 0) with selects rather than
    branches, and the bias gradient is summed in a loop of its own, so both loops
    vectorise. Then the weight gradient and dx follow.
    """
    n = x.shape[0]
    kk, f = k2.shape
    p = oh * ow
    ph = oh // 2
    pw = ow // 2
    transposed = _transposed_patches(x.shape[3], sh, sw, x.shape[2], ow, True)
    cbuf, xcs, dzs, dk_part, db_part, tmp, dx, dcols = _backward_buffers(x, nt, p, kk, f, need_dx,
                                                                          transposed)
    k2t = k2.T
    for t in prange(nt):
        dz = dzs[t]
        cr, ct = _patch_views(cbuf, t, p, kk)
        for b in range(t, n, nt):
            if oh % 2 or ow % 2:         # an odd last row or column is never a winner
                dz[:, :] = zero
            for i in range(ph):
                for j in range(pw):
                    r0 = 2 * i * ow + 2 * j
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
                        db_part[t, o] += dy[b, i, j, o] if y[b, i, j, o] > zero else zero
            _patches_into(x, b, cr, ct, xcs[t], 0, transposed, kh, kw, sh, sw, pt, pl, oh, ow)
            _conv_grads(x, b, 1, k2t, dz, cr, ct, transposed, tmp[t], dk_part[t], dcols[t], dx,
                        kh, kw, sh, sw, pt, pl, oh, ow, need_dx)
    dk, db = _sum_partials(dk_part, db_part)
    return dx, dk, db


# ----------------------------------------------------------------------------- max pooling
@njit(parallel=True, cache=True)
def maxpool2d_forward(x, ph, pw, sh, sw, pt, pl, oh, ow):
    n, h, w, c = x.shape
    y = np.empty((n, oh, ow, c), dtype=x.dtype)
    arg = np.empty((n, oh, ow, c), dtype=np.int32)
    for b in prange(n):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    best = -np.inf
                    best_k = -1
                    for a in range(ph):
                        r = i * sh + a - pt
                        if r < 0 or r >= h:
                            continue
                        for d in range(pw):
                            s = j * sw + d - pl
                            if s < 0 or s >= w:
                                continue
                            v = x[b, r, s, ch]
                            # first maximum wins ties; the first NaN wins over numbers
                            if best_k < 0 or (best == best and (v > best or v != v)):
                                best = v
                                best_k = a * pw + d
                    y[b, i, j, ch] = best
                    arg[b, i, j, ch] = best_k
    return y, arg


@njit(parallel=True, cache=True)
def maxpool2d_backward(dy, arg, h, w, pw, sh, sw, pt, pl):
    n, oh, ow, c = dy.shape
    dx = np.empty((n, h, w, c), dtype=dy.dtype)
    for b in prange(n):
        dx[b] = 0
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    k = arg[b, i, j, ch]
                    a = k // pw
                    d = k - a * pw
                    dx[b, i * sh + a - pt, j * sw + d - pl, ch] += dy[b, i, j, ch]
    return dx


# ----------------------------------------------------------------------------- dense
@njit(parallel=True, cache=True)
def dense_forward(x, kernel, bias, nt):
    n = x.shape[0]
    u = kernel.shape[1]
    y = np.empty((n, u), dtype=x.dtype)
    chunk = (n + nt - 1) // nt
    for t in prange(nt):
        lo = t * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            np.dot(x[lo:hi], kernel, y[lo:hi])
            for b in range(lo, hi):
                for j in range(u):
                    y[b, j] += bias[j]
    return y


@njit(parallel=True, cache=True)
def dense_backward(x, kernel, dy, need_dx, nt):
    """dx = dy @ kernel.T, dkernel = x.T @ dy, dbias = sum(dy) over the batch.

    With dx wanted and two or more threads, the two GEMMs (the same n*k*u
    multiply-adds each) run side by side, one per thread, on the whole batch; no
    partial sums. Splitting the batch instead, each thread running both GEMMs on
    its half, measured 1.5 ms against 0.25 ms for the seed model's 4096 -> 64 layer
    (batch 64, two threads): two concurrent dx GEMMs with a 4096-wide output ran
    no faster than one. Without dx, the batch is split and partial dkernels summed.
    """
    n, k = x.shape
    u = kernel.shape[1]
    if need_dx and nt >= 2:
        dk = np.empty((k, u), dtype=x.dtype)
        db = np.zeros(u, dtype=x.dtype)
        dx = np.empty((n, k), dtype=x.dtype)
        for task in prange(2):
            if task == 0:
                np.dot(x.T, dy, dk)
                for b in range(n):
                    for j in range(u):
                        db[j] += dy[b, j]
            else:
                np.dot(dy, kernel.T, dx)
        return dx, dk, db
    chunk = (n + nt - 1) // nt
    dk_part = np.zeros((nt, k, u), dtype=x.dtype)
    db_part = np.zeros((nt, u), dtype=x.dtype)
    dx = np.empty((n, k) if need_dx else (0, k), dtype=x.dtype)
    kt = kernel.T
    for t in prange(nt):
        lo = t * chunk
        hi = min(n, lo + chunk)
        if lo < hi:
            np.dot(x[lo:hi].T, dy[lo:hi], dk_part[t])
            for b in range(lo, hi):
                for j in range(u):
                    db_part[t, j] += dy[b, j]
            if need_dx:
                np.dot(dy[lo:hi], kt, dx[lo:hi])
    dk, db = _sum_partials(dk_part, db_part)
    return dx, dk, db


# ----------------------------------------------------------------------------- activations (flat)
# Scalars such as 0 and 1 arrive as arguments typed like the array (``zero``,
# ``one``): a Python int mixed with float32 would make Numba compute in float64.
@njit(parallel=True, cache=True)
def relu_forward(x, zero):
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x[i]
        y[i] = zero if v <= zero else v   # NaN stays NaN
    return y


@njit(parallel=True, cache=True)
def relu_backward(x, dy, zero):
    dx = np.empty_like(dy)
    for i in prange(x.size):
        dx[i] = dy[i] if x[i] > zero else zero
    return dx


@njit(parallel=True, cache=True)
def sigmoid_forward(x, one):
    y = np.empty_like(x)
    zero = one - one
    for i in prange(x.size):
        v = x[i]
        if v >= zero:
            y[i] = one / (one + np.exp(-v))
        else:
            e = np.exp(v)
            y[i] = e / (one + e)
    return y


@njit(parallel=True, cache=True)
def sigmoid_backward(y, dy, one):
    dx = np.empty_like(dy)
    for i in prange(y.size):
        dx[i] = dy[i] * y[i] * (one - y[i])
    return dx


@njit(parallel=True, cache=True)
def tanh_forward(x):
    y = np.empty_like(x)
    for i in prange(x.size):
        y[i] = np.tanh(x[i])
    return y


@njit(parallel=True, cache=True)
def tanh_backward(y, dy, one):
    dx = np.empty_like(dy)
    for i in prange(y.size):
        dx[i] = dy[i] * (one - y[i] * y[i])
    return dx


@njit(parallel=True, cache=True)
def softmax_forward(x, zero):
    """Row-wise softmax of a 2-D array; ``zero`` is 0 in x's dtype (accumulator type)."""
    n, k = x.shape
    y = np.empty_like(x)
    for b in prange(n):
        m = x[b, 0]
        for j in range(1, k):
            if x[b, j] > m:
                m = x[b, j]
        s = zero
        for j in range(k):
            e = np.exp(x[b, j] - m)
            y[b, j] = e
            s += e
        for j in range(k):
            y[b, j] = y[b, j] / s
    return y


@njit(parallel=True, cache=True)
def softmax_backward(y, dy, zero):
    n, k = y.shape
    dx = np.empty_like(dy)
    for b in prange(n):
        s = zero
        for j in range(k):
            s += dy[b, j] * y[b, j]
        for j in range(k):
            dx[b, j] = y[b, j] * (dy[b, j] - s)
    return dx


# ----------------------------------------------------------------------------- loss
@njit(cache=True)
def _row_logsumexp(logits, b, zero):
    """Stable ``log sum_j exp(logits[b, j])``: ``m + log sum_j exp(logits[b, j] - m)``."""
    k = logits.shape[1]
    m = logits[b, 0]
    for j in range(1, k):
        if logits[b, j] > m:
            m = logits[b, j]
    s = zero
    for j in range(k):
        s += np.exp(logits[b, j] - m)
    return m + np.log(s)


@njit(parallel=True, cache=True)
def softmax_cross_entropy(logits, target, inv_n):
    """Per-row loss and fused gradient ``(p - t) * inv_n``; ``target`` is (n, k).

    ``inv_n`` is ``1 / n`` in the logits' dtype.
    """
    n, k = logits.shape
    d = np.empty_like(logits)
    row_loss = np.empty(n, dtype=logits.dtype)
    zero = inv_n - inv_n
    for b in prange(n):
        lse = _row_logsumexp(logits, b, zero)
        acc = zero
        for j in range(k):
            logp = logits[b, j] - lse
            acc -= target[b, j] * logp
            d[b, j] = (np.exp(logp) - target[b, j]) * inv_n
        row_loss[b] = acc
    return row_loss, d


@njit(parallel=True, cache=True)
def sparse_softmax_cross_entropy(logits, labels, inv_n, one):
    n, k = logits.shape
    d = np.empty_like(logits)
    row_loss = np.empty(n, dtype=logits.dtype)
    zero = one - one
    for b in prange(n):
        lse = _row_logsumexp(logits, b, zero)
        lab = labels[b]
        row_loss[b] = lse - logits[b, lab]
        for j in range(k):
            p = np.exp(logits[b, j] - lse)
            d[b, j] = ((p - one) if j == lab else p) * inv_n
    return row_loss, d


# ----------------------------------------------------------------------------- dropout
@njit(parallel=True, cache=True)
def dropout_forward(x, mask, scale):
    y = np.empty_like(x)
    zero = scale - scale
    for i in prange(x.size):
        y[i] = x[i] * scale if mask[i] else zero
    return y


# ----------------------------------------------------------------------------- optimizers
@njit(parallel=True, cache=True)
def adam_update(param, grad, m, v, alpha, b1, b2, eps, one):
    """Flat, in place: m, v moments then ``param -= alpha * m / (sqrt(v) + eps)``.

    Every scalar arrives in the parameters' dtype (``one`` is 1 in that dtype).
    """
    for i in prange(param.size):
        g = grad[i]
        mi = b1 * m[i] + (one - b1) * g
        vi = b2 * v[i] + (one - b2) * g * g
        m[i] = mi
        v[i] = vi
        param[i] -= alpha * mi / (np.sqrt(vi) + eps)


@njit(parallel=True, cache=True)
def sgd_update(param, grad, velocity, lr, mu, nesterov):
    for i in prange(param.size):
        vel = mu * velocity[i] - lr * grad[i]
        velocity[i] = vel
        if nesterov:
            param[i] += mu * vel - lr * grad[i]
        else:
            param[i] += vel
