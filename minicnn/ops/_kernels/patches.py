"""Patches of one image for the convolution kernels (im2col and its adjoint col2im).

``x`` is an NHWC batch ``(n, h, w, c)``; ``b`` the image; ``kh, kw`` the kernel
size, ``sh, sw`` the strides, ``pt, pl`` the top and left zero padding and
``oh, ow`` the output size. Pixel ``(r, s)`` of the padded image ``xp`` is
``x[b, r - pt, s - pl]``, or 0 outside the image.
"""
from __future__ import annotations

import numpy as np
from numba import njit, uint64


@njit(cache=True)
def _im2col_one(x, b, cols, kh, kw, sh, sw, pt, pl, oh, ow):
    """Patches of image ``b``: ``cols[i*ow + j, (a*kw + d)*c + ch] = xp[b, i*sh+a, j*sw+d, ch]``.

    ``x (n, h, w, c)``; writes every element of ``cols (oh*ow, kh*kw*c)`` (x's dtype).
    """
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


@njit(cache=True, inline="always")     # called with a literal True or False: one copy each
def _transposed_patches(c, sh, sw, w, ow, backward):
    """True where the transposed patch layout is the faster one (see above).

    ``c`` input channels, ``sh, sw`` strides, ``w`` input and ``ow`` output width;
    ``backward`` for the weight-gradient pass.
    """
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
    plus the planar scratch image ``xcs (nt, c, h*w)`` the transposed layout is copied
    from (empty when not ``transposed``); both in x's dtype, uninitialised."""
    cbuf = np.empty((nt, rows * kk), dtype=x.dtype)
    if transposed:
        xcs = np.empty((nt, x.shape[3], x.shape[1] * x.shape[2]), dtype=x.dtype)
    else:
        xcs = np.empty((nt, 0, 0), dtype=x.dtype)
    return cbuf, xcs


@njit(cache=True, inline="always")     # called with the prange index: int64 and uint64
def _patch_views(cbuf, t, rows, kk):
    """Thread ``t``'s patch buffer viewed as rows ``(rows, kk)`` and transposed ``(kk, rows)``."""
    return cbuf[t].reshape((rows, kk)), cbuf[t].reshape((kk, rows))


@njit(cache=True)
def _patches_times_kernel(cr, ct, transposed, k2, z):
    """``z = patches @ k2``, from whichever layout holds the patches.

    ``cr (rows, kk)`` or ``ct (kk, rows)`` (the one named by ``transposed``), ``k2 (kk, f)``;
    writes ``z (rows, f)``.
    """
    if transposed:
        np.dot(ct.T, k2, z)
    else:
        np.dot(cr, k2, z)


@njit(cache=True)
def _col2im_one(dcols, dx, b, kh, kw, sh, sw, pt, pl, oh, ow):
    """Adjoint of :func:`_im2col_one`, adding into ``dx[b]`` (zeroed here first).

    ``dcols (oh*ow, kh*kw*c)``; writes only ``dx[b]`` of ``dx (n, h, w, c)``: every tap
    that read a pixel inside the image adds its gradient back onto that pixel.
    """
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
    columns ``q_off ..`` of ``ct`` (transposed layout, see :func:`_transposed_patches`).

    ``q_off`` is made an int64 first: a caller passing the constant 0 would otherwise
    compile a second copy of :func:`_im2colT_one` for the literal."""
    q0 = np.int64(q_off)
    if transposed:
        _im2colT_one(x, b, xc, ct, q0, kh, kw, sh, sw, pt, pl, oh, ow)
    else:
        _im2col_one(x, b, cr[q0:q0 + oh * ow], kh, kw, sh, sw, pt, pl, oh, ow)

