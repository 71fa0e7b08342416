"""Winograd F(4x4, 3x3) convolution kernels (3x3, stride 1), the forward pass.

The math and the B, G, A matrices are in :func:`minicnn.ops.reference.winograd4_conv2d_forward`;
here the transforms are written out as the additions and small multiples they are.
Each 6x6 input tile gives a 4x4 block of outputs from 36 multiplications per (input,
output) channel pair, where F(2x2, 3x3) needs 4 x 16 = 64 for the same block and
im2col's GEMM 16 x 9 = 144: 4x fewer than direct, against F(2x2, 3x3)'s 2.25x.
Neighbouring tiles overlap by two pixels (F(2x2, 3x3)'s by two of four), so the input
transform also writes 2.25 values per input pixel and channel instead of 4.

Shapes: ``x (n, h, w, c)`` NHWC; ``u (36, c, f)`` the transformed kernel ``G g G^T``
(position ``a*6 + e`` of the 6x6 tile first), from :func:`kernel_transform`; ``pt, pl`` the
top and left padding; ``oh, ow`` the output size; ``th, tw = ceil(oh/4), ceil(ow/4)`` the
tiles. Per group of ``grp`` images a thread builds ``v (36, grp*tiles, c)`` and runs 36
GEMMs ``v[k] @ u[k]`` into ``m (36, grp*tiles, f)``. The batch is cut into slots taken
from a shared counter (:mod:`.sched`); ``counter`` is a zeroed one-element int64 array,
``nt`` the thread count, ``zero`` 0 in x's dtype.

The backward pass of a layer that runs this forward is F(2x2, 3x3)'s or im2col's
(:mod:`.winograd`, :mod:`.conv`): both need only x, the kernel, dy and the output.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .norm import _image_moments
from .pool import _conv_outputs, _max4, _window_max4
from .scratch import TILE_CHANNELS, _read_tile, _tile_scratch
from .sched import _fetch_add, _slot_count, _slot_range
from .winograd import _plane_rows


@njit(cache=True)
def _g(g0, g1, g2, q, s, t, w):
    """``G (g0, g1, g2)^T``, six values; G's rows are ``(1/4, 0, 0)``, ``-(1, 1, 1)/6``,
    ``-(1, -1, 1)/6``, ``(1/24, 1/12, 1/6)``, ``(1/24, -1/12, 1/6)``, ``(0, 0, 1)``.
    ``q, s, t, w`` are 1/4, 1/6, 1/12 and 1/24 in the kernel's dtype."""
    even = w * g0 + s * g2
    return (q * g0, -s * (g0 + g1 + g2), -s * (g0 - g1 + g2), even + t * g1, even - t * g1,
            g2)


@njit(cache=True)
def kernel_transform(k):
    """``U = G g G^T`` of every channel pair, written out: ``k (3, 3, c, f)`` -> ``u (36, c,
    f)`` (position ``a*6 + e`` first; G as in :func:`_g`), in k's dtype: ``G g`` down the
    kernel's columns into scratch, then ``(G g) G^T`` along its rows. Filters innermost,
    so the loops over them vectorise."""
    c, f = k.shape[2], k.shape[3]
    dt = k.dtype.type
    q, s, t, w = dt(0.25), dt(1.0 / 6.0), dt(1.0 / 12.0), dt(1.0 / 24.0)
    gk = np.empty((6, 3, c, f), dtype=k.dtype)
    for j in range(3):                               # G g: the kernel's columns
        for ch in range(c):
            for o in range(f):
                r0, r1, r2, r3, r4, r5 = _g(k[0, j, ch, o], k[1, j, ch, o], k[2, j, ch, o],
                                            q, s, t, w)
                gk[0, j, ch, o] = r0
                gk[1, j, ch, o] = r1
                gk[2, j, ch, o] = r2
                gk[3, j, ch, o] = r3
                gk[4, j, ch, o] = r4
                gk[5, j, ch, o] = r5
    u = np.empty((36, c, f), dtype=k.dtype)
    for a in range(6):                               # (G g) G^T: its rows
        b = a * 6
        for ch in range(c):
            for o in range(f):
                r0, r1, r2, r3, r4, r5 = _g(gk[a, 0, ch, o], gk[a, 1, ch, o], gk[a, 2, ch, o],
                                            q, s, t, w)
                u[b, ch, o] = r0
                u[b + 1, ch, o] = r1
                u[b + 2, ch, o] = r2
                u[b + 3, ch, o] = r3
                u[b + 4, ch, o] = r4
                u[b + 5, ch, o] = r5
    return u


@njit(cache=True)
def _bt(d0, d1, d2, d3, d4, d5, two, four, five):
    """``B^T (d0 .. d5)``: B^T's rows are ``(4, 0, -5, 0, 1, 0)``, ``(0, -4, -4, 1, 1, 0)``,
    ``(0, 4, -4, -1, 1, 0)``, ``(0, -2, -1, 2, 1, 0)``, ``(0, 2, -1, -2, 1, 0)``,
    ``(0, 4, 0, -5, 0, 1)``."""
    return (four * d0 - five * d2 + d4,
            (d3 + d4) - four * (d1 + d2),
            (d4 - d3) + four * (d1 - d2),
            (d4 - d2) + two * (d3 - d1),
            (d4 - d2) - two * (d3 - d1),
            four * d1 - five * d3 + d5)


@njit(cache=True)
def _input_transform(x, b, v, row0, th, tw, pt, pl):
    """``v[a*6 + e, row0 + tile, :] = (B^T d B)[a, e, :]`` for every tile of image ``b``.

    Per tile and per block of up to :data:`.scratch.TILE_CHANNELS` channels, in two
    scratch arrays on this call's stack (:mod:`.scratch`): ``d`` the tile (zeros outside
    the image), ``g = B^T d``, then ``g B`` into ``v``; channels innermost (NHWC), so the
    loops vectorise, and with the scratch on the stack they need no run-time test of
    whether ``d``, ``g``, ``x`` and ``v`` overlap.
    """
    c = x.shape[3]
    two, four, five = x.dtype.type(2), x.dtype.type(4), x.dtype.type(5)
    d = _tile_scratch(x)
    g = _tile_scratch(x)
    for ti in range(th):
        for tj in range(tw):
            r0 = 4 * ti - pt
            s0 = 4 * tj - pl
            row = row0 + ti * tw + tj
            for c0 in range(0, c, TILE_CHANNELS):
                cw = min(TILE_CHANNELS, c - c0)
                _read_tile(x, b, r0, s0, c0, cw, 6, d)
                for e in range(6):                       # rows: g = B^T d
                    for ch in range(cw):
                        t0, t1, t2, t3, t4, t5 = _bt(d[0, e, ch], d[1, e, ch], d[2, e, ch],
                                                     d[3, e, ch], d[4, e, ch], d[5, e, ch],
                                                     two, four, five)
                        g[0, e, ch] = t0
                        g[1, e, ch] = t1
                        g[2, e, ch] = t2
                        g[3, e, ch] = t3
                        g[4, e, ch] = t4
                        g[5, e, ch] = t5
                for a in range(6):                       # columns: g B, into v
                    k = a * 6
                    v0, v1 = v[k, row, c0:c0 + cw], v[k + 1, row, c0:c0 + cw]
                    v2, v3 = v[k + 2, row, c0:c0 + cw], v[k + 3, row, c0:c0 + cw]
                    v4, v5 = v[k + 4, row, c0:c0 + cw], v[k + 5, row, c0:c0 + cw]
                    for ch in range(cw):
                        t0, t1, t2, t3, t4, t5 = _bt(g[a, 0, ch], g[a, 1, ch], g[a, 2, ch],
                                                     g[a, 3, ch], g[a, 4, ch], g[a, 5, ch],
                                                     two, four, five)
                        v0[ch] = t0
                        v1[ch] = t1
                        v2[ch] = t2
                        v3[ch] = t3
                        v4[ch] = t4
                        v5[ch] = t5


@njit(cache=True)
def _at(m0, m1, m2, m3, m4, m5, two, four, eight):
    """``A^T (m0 .. m5)``: A^T's rows are ``(1, 1, 1, 1, 1, 0)``, ``(0, 1, -1, 2, -2, 0)``,
    ``(0, 1, 1, 4, 4, 0)``, ``(0, 1, -1, 8, -8, 1)``."""
    s12 = m1 + m2
    d12 = m1 - m2
    s34 = m3 + m4
    d34 = m3 - m4
    return m0 + s12 + s34, d12 + two * d34, s12 + four * s34, d12 + eight * d34 + m5


@njit(cache=True)
def _output_block(m, row, bias, t4):
    """``t4 (4, 6, f)``: its ``[:, :4, :]`` becomes ``A^T m_tile A + bias``, the 4x4 output
    block of tile ``row`` (``[:, 4:, :]`` is scratch).

    Each loop over the filters reads and writes 1-d rows taken out before it. Indexed
    ``m[e, row, o]`` inside the loop, LLVM vectorised it only from 64 filters up: the
    first pass of a 32-filter layer ran scalar, 1.75 ns per (row, filter) against 0.52
    now; at 64 and 128 filters both forms run alike (benchmarks/RESULTS.md 12)."""
    f = m.shape[2]
    two, four, eight = m.dtype.type(2), m.dtype.type(4), m.dtype.type(8)
    for e in range(6):                               # rows: A^T m
        m0, m1, m2 = m[e, row], m[6 + e, row], m[12 + e, row]
        m3, m4, m5 = m[18 + e, row], m[24 + e, row], m[30 + e, row]
        t0, t1, t2, t3 = t4[0, e], t4[1, e], t4[2, e], t4[3, e]
        for o in range(f):
            r0, r1, r2, r3 = _at(m0[o], m1[o], m2[o], m3[o], m4[o], m5[o], two, four, eight)
            t0[o] = r0
            t1[o] = r1
            t2[o] = r2
            t3[o] = r3
    for a in range(4):                               # columns: (A^T m) A, + bias
        c0, c1, c2, c3, c4, c5 = t4[a, 0], t4[a, 1], t4[a, 2], t4[a, 3], t4[a, 4], t4[a, 5]
        for o in range(f):
            bo = bias[o]
            r0, r1, r2, r3 = _at(c0[o], c1[o], c2[o], c3[o], c4[o], c5[o], two, four, eight)
            c0[o] = r0 + bo
            c1[o] = r1 + bo
            c2[o] = r2 + bo
            c3[o] = r3 + bo


@njit(cache=True)
def _output_transform(m, y, arg, b, row0, th, tw, oh, ow, bias, relu, pool, need_arg, zero, t4,
                      res):
    """The 4x4 output block of every tile of image ``b`` into ``y[b]``: ``res[b]`` added
    (when ``res`` has images), ReLU'd when ``relu``, outputs past ``oh, ow`` dropped.
    With ``pool`` the block is four 2x2 pool windows: ``y[b]`` gets their ReLU'd maxima
    (ReLU after the max: they commute) and ``arg[b]`` (uint8, 0..3) the row-major position
    of the first maximum (a NaN wins and stays), as in the im2col fused kernel; only the
    complete windows are kept. Without ``need_arg`` only the maxima (``arg`` untouched).

    The two ways out are functions of their own: written inline in the tile loop, they
    made LLVM copy the whole loop, once per value of ``pool`` and ``relu``, in each of the
    four modules a ``prange`` kernel links; the F(4x4, 3x3) kernel compiled in 15.4 s
    instead of 7.4 (benchmarks/RESULTS.md 10)."""
    for ti in range(th):
        for tj in range(tw):
            _output_block(m, row0 + ti * tw + tj, bias, t4)
            if pool and need_arg:
                _pool_block(t4, y, arg, b, 2 * ti, 2 * tj, zero)
            elif pool:
                _pool_block_max(t4, y, b, 2 * ti, 2 * tj, zero)
            else:
                _store_block(t4, y, b, 4 * ti, 4 * tj, min(4, oh - 4 * ti), min(4, ow - 4 * tj),
                             relu, zero, res)


@njit(cache=True)
def _pool_block(t4, y, arg, b, i0, j0, zero):
    """The four 2x2 pool windows of a 4x4 block ``t4[:, :4]`` into ``y[b, i0:i0+2,
    j0:j0+2]`` and ``arg`` (the complete windows only; see :func:`_output_transform`)."""
    f = y.shape[3]
    for pi in range(min(2, y.shape[1] - i0)):
        for pj in range(min(2, y.shape[2] - j0)):
            a, q = 2 * pi, 2 * pj
            for o in range(f):
                best, w = _window_max4(t4[a, q, o], t4[a, q + 1, o], t4[a + 1, q, o],
                                       t4[a + 1, q + 1, o])
                y[b, i0 + pi, j0 + pj, o] = zero if best <= zero else best
                arg[b, i0 + pi, j0 + pj, o] = w


@njit(cache=True)
def _pool_block_max(t4, y, b, i0, j0, zero):
    """:func:`_pool_block` without the winners (inference)."""
    f = y.shape[3]
    for pi in range(min(2, y.shape[1] - i0)):
        for pj in range(min(2, y.shape[2] - j0)):
            a, q = 2 * pi, 2 * pj
            for o in range(f):
                best = _max4(t4[a, q, o], t4[a, q + 1, o], t4[a + 1, q, o], t4[a + 1, q + 1, o])
                y[b, i0 + pi, j0 + pj, o] = zero if best <= zero else best


@njit(cache=True)
def _store_block(t4, y, b, i0, j0, ni, nj, relu, zero, res):
    """The top-left ``ni x nj`` outputs of a 4x4 block ``t4[:, :4]`` into ``y[b, i0:i0+ni,
    j0:j0+nj]``, plus ``res[b, i0:i0+ni, j0:j0+nj]`` when ``res`` has images (bias added
    first, then the residual: the order of the Add after the convolution), ReLU'd when
    ``relu`` (a NaN stays)."""
    f = y.shape[3]
    for a in range(ni):
        for q in range(nj):
            if res.shape[0]:
                tr, rr, yr = t4[a, q], res[b, i0 + a, j0 + q], y[b, i0 + a, j0 + q]
                for o in range(f):
                    val = tr[o] + rr[o]
                    yr[o] = zero if (relu and val <= zero) else val
            else:
                for o in range(f):
                    val = t4[a, q, o]
                    y[b, i0 + a, j0 + q, o] = zero if (relu and val <= zero) else val


@njit(parallel=True, cache=True)
def winograd4_forward(x, u, bias, pt, pl, oh, ow, relu, pool, need_arg, zero, nt, grp, counter,
                      moments, res):
    """y (n, oh, ow, f) = the 3x3 stride-1 convolution of x (+ bias, ReLU'd if ``relu``).

    ``x (n, h, w, c)``, ``u (36, c, f)``, ``bias (f,)`` (zeros for none). Returns new
    ``(y, arg)``; ``arg`` is empty unless ``pool``. With ``pool`` (conv + bias + ReLU +
    2x2/2 max-pool in one pass, ``relu`` ignored): ``y (n, oh//2, ow//2, f)`` and ``arg``
    (uint8) are those of :func:`.conv.conv2d_forward` with ``pool``, whose backward they
    feed; the conv output never leaves the thread-local ``m``. ``moments`` as in
    :func:`.conv.conv2d_forward`: each finished image's per-channel sums of ``y`` and
    ``y**2`` (without ``pool``); ``res`` too (a residual added before the ReLU).
    """
    n, c = x.shape[0], x.shape[3]
    f = u.shape[2]
    th = (oh + 3) // 4
    tw = (ow + 3) // 4
    tiles = th * tw
    y, arg = _conv_outputs(n, oh, ow, f, pool, x)
    y3 = y.reshape((n, y.shape[1] * y.shape[2], f))
    rows = grp * tiles
    vs = np.empty((nt, 36, _plane_rows(rows), c), dtype=x.dtype)    # see _plane_rows
    ms = np.empty((nt, 36, _plane_rows(rows), f), dtype=x.dtype)
    t4s = np.empty((nt, 4, 6, f), dtype=x.dtype)
    slots = _slot_count(n, nt)
    for t in prange(nt):
        v = vs[t]
        m = ms[t]
        s = _fetch_add(counter, 0, 1)
        while s < slots:
            lo, hi = _slot_range(s, slots, n)
            for b0 in range(lo, hi, grp):
                g = min(grp, hi - b0)
                for i in range(g):
                    _input_transform(x, b0 + i, v, i * tiles, th, tw, pt, pl)
                # rows of a partial group hold stale tiles: computed, never written out
                for k in range(36):
                    np.dot(v[k, :rows], u[k], m[k, :rows])
                for i in range(g):
                    _output_transform(m, y, arg, b0 + i, i * tiles, th, tw, oh, ow, bias,
                                      relu, pool, need_arg, zero, t4s[t], res)
                if moments.shape[0]:
                    for i in range(g):
                        _image_moments(y3[b0 + i], moments[b0 + i])
            s = _fetch_add(counter, 0, 1)
    return y, arg
