"""Winograd F(2x2, 3x3) convolution kernels (3x3, stride 1), forward and backward.

The math and the B, G, A matrices are in :func:`minicnn.ops.reference.winograd_conv2d_forward`;
here the transforms are written out as the additions they are. Shapes: ``x (n, h, w, c)``
NHWC; ``u (16, c, f)`` the transformed kernel ``G g G^T`` (position ``a*4 + e`` of the 4x4
tile first), made by the wrapper; ``pt, pl`` the top and left padding; ``oh, ow`` the
output size; ``th, tw = ceil(oh/2), ceil(ow/2)`` the tiles, ``tiles = th*tw`` per image.
Per group of ``grp`` images a thread builds ``v (16, grp*tiles, c)`` (the transformed
input tiles) and runs 16 GEMMs ``v[k] @ u[k]`` into ``m (16, grp*tiles, f)``: for a 2x2
block of outputs and one (input, output) channel pair, 16 multiplications where im2col's
GEMM does 4 x 9 = 36. The batch is cut into slots taken from a shared
counter (:mod:`.sched`); ``counter`` is a zeroed one-element int64 array, ``nt`` the
thread count, ``zero`` 0 in x's dtype.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from . import PRANGE_ONLY
from .norm import _bn_dz_row
from .partials import _slot_partials, _sum_partials
from .pool import _conv_outputs, _window_max4
from .scratch import TILE_CHANNELS, _read_tile, _tile_scratch
from .sched import _fetch_add, _slot_count, _slot_range


@njit(cache=True, inline="always")
def _plane_rows(rows):
    """Rows to allocate per position plane of a thread's transform buffers (``v``, ``m``,
    ``dm``, ``dv``) that use ``rows``: one more. The transforms write (and read) the same
    tile row of 4 to 36 planes in one loop; planes ``rows * c`` values apart, a multiple of
    4 KiB at most of these layers' sizes (256 tiles x 32 channels x 4 bytes = 32 KiB),
    start in the same sets of the L1 cache and evict each other. One spare row moves
    each plane to other sets: the F(2x2, 3x3) input transform of the 32x32x32 layer 3.4
    -> 2.1 ms per batch on one thread, at 16x16x64 2.2 -> 1.1 (benchmarks/RESULTS.md 11).
    The GEMMs take the first ``rows`` rows, a contiguous view."""
    return rows + 1


@njit(cache=True, inline="always")
def _g_row(a, g0, g1, g2, half):
    """Row ``a`` of ``G (g0, g1, g2)^T``: G's rows are ``(1, 0, 0)``, ``(1/2, 1/2, 1/2)``,
    ``(1/2, -1/2, 1/2)``, ``(0, 0, 1)``."""
    if a == 0:
        return g0
    if a == 1:
        return half * (g0 + g1 + g2)
    if a == 2:
        return half * (g0 - g1 + g2)
    return g2


@njit(cache=True)
def kernel_transform(k, half):
    """``U = G g G^T`` of every channel pair, written out: ``k (3, 3, c, f)`` -> ``u (16, c, f)``
    (position ``a*4 + e`` first; G as in :func:`_g_row`). ``half`` is 1/2 in k's dtype.
    Filters innermost, so the loop over them vectorises.
    """
    c, f = k.shape[2], k.shape[3]
    u = np.empty((16, c, f), dtype=k.dtype)
    for a in range(4):
        for e in range(4):
            for ch in range(c):
                for o in range(f):
                    t0 = _g_row(a, k[0, 0, ch, o], k[1, 0, ch, o], k[2, 0, ch, o], half)
                    t1 = _g_row(a, k[0, 1, ch, o], k[1, 1, ch, o], k[2, 1, ch, o], half)
                    t2 = _g_row(a, k[0, 2, ch, o], k[1, 2, ch, o], k[2, 2, ch, o], half)
                    u[a * 4 + e, ch, o] = _g_row(e, t0, t1, t2, half)
    return u


@njit(cache=True)
def kernel_gradient(du, half):
    """``dkernel = G^T dU G`` of every channel pair (the transpose of
    :func:`kernel_transform`): ``du (16, c, f)`` -> ``dk (3, 3, c, f)``."""
    c, f = du.shape[1], du.shape[2]
    dk = np.empty((3, 3, c, f), dtype=du.dtype)
    s = np.empty((3, 4), dtype=du.dtype)
    for ch in range(c):
        for o in range(f):
            for e in range(4):                       # rows: G^T dU
                d0 = du[e, ch, o]
                d1 = du[4 + e, ch, o]
                d2 = du[8 + e, ch, o]
                d3 = du[12 + e, ch, o]
                s[0, e] = d0 + half * (d1 + d2)
                s[1, e] = half * (d1 - d2)
                s[2, e] = half * (d1 + d2) + d3
            for i in range(3):                       # columns: (G^T dU) G
                d0 = s[i, 0]
                d1 = s[i, 1]
                d2 = s[i, 2]
                d3 = s[i, 3]
                dk[i, 0, ch, o] = d0 + half * (d1 + d2)
                dk[i, 1, ch, o] = half * (d1 - d2)
                dk[i, 2, ch, o] = half * (d1 + d2) + d3
    return dk


@njit(cache=True)
def _input_transform(x, b, v, row0, ti0, ti1, tw, pt, pl):
    """``v[a*4 + e, row0 + tile, :] = (B^T d B)[a, e, :]`` for the tiles of image ``b`` in
    tile rows ``ti0 .. ti1-1`` (``tile`` counts from the first of them).

    ``B^T d`` then ``(.) B``, each a set of four additions per channel, per tile and per
    block of up to :data:`.scratch.TILE_CHANNELS` channels in two scratch arrays on this
    call's stack (``d`` the tile, ``g = B^T d``; see :mod:`.scratch`); channels innermost
    (NHWC), so the loops vectorise.
    """
    c = x.shape[3]
    d = _tile_scratch(x)
    g = _tile_scratch(x)
    for ti in range(ti0, ti1):
        for tj in range(tw):
            r0 = 2 * ti - pt
            s0 = 2 * tj - pl
            row = row0 + (ti - ti0) * tw + tj
            for c0 in range(0, c, TILE_CHANNELS):
                cw = min(TILE_CHANNELS, c - c0)
                _read_tile(x, b, r0, s0, c0, cw, 4, d)
                for e in range(4):                       # rows: g = B^T d
                    for ch in range(cw):
                        d0 = d[0, e, ch]
                        d1 = d[1, e, ch]
                        d2 = d[2, e, ch]
                        d3 = d[3, e, ch]
                        g[0, e, ch] = d0 - d2
                        g[1, e, ch] = d1 + d2
                        g[2, e, ch] = d2 - d1
                        g[3, e, ch] = d1 - d3
                for a in range(4):                       # columns: g B, into v
                    v0, v1 = v[a * 4, row, c0:c0 + cw], v[a * 4 + 1, row, c0:c0 + cw]
                    v2, v3 = v[a * 4 + 2, row, c0:c0 + cw], v[a * 4 + 3, row, c0:c0 + cw]
                    for ch in range(cw):
                        d0 = g[a, 0, ch]
                        d1 = g[a, 1, ch]
                        d2 = g[a, 2, ch]
                        d3 = g[a, 3, ch]
                        v0[ch] = d0 - d2
                        v1[ch] = d1 + d2
                        v2[ch] = d2 - d1
                        v3[ch] = d1 - d3


@njit(cache=True, inline="always")
def _output_rows(m, row, f, t2):
    """``t2[:, e, :] = (A^T m_tile)[:, e, :]`` of tile ``row``: the first half of the output
    transform (``A^T`` has the rows ``(1, 1, 1, 0)`` and ``(0, 1, -1, -1)``)."""
    for e in range(4):
        for o in range(f):
            m0 = m[e, row, o]
            m1 = m[4 + e, row, o]
            m2 = m[8 + e, row, o]
            m3 = m[12 + e, row, o]
            t2[0, e, o] = m0 + m1 + m2
            t2[1, e, o] = m1 - m2 - m3


@njit(cache=True)
def _output_transform(m, y, b, row0, th, tw, oh, ow, bias, relu, zero, t2):
    """``y[b, 2ti:2ti+2, 2tj:2tj+2, :] = A^T m_tile A + bias`` (ReLU'd when ``relu``);
    outputs past ``oh, ow`` (an odd size) are dropped. ``t2 (2, 4, f)`` is scratch."""
    f = m.shape[2]
    for ti in range(th):
        for tj in range(tw):
            row = row0 + ti * tw + tj
            _output_rows(m, row, f, t2)
            for a in range(2):
                i = 2 * ti + a
                if i < oh:
                    for q in range(2):
                        j = 2 * tj + q
                        if j < ow:
                            for o in range(f):
                                if q == 0:
                                    val = t2[a, 0, o] + t2[a, 1, o] + t2[a, 2, o] + bias[o]
                                else:
                                    val = t2[a, 1, o] - t2[a, 2, o] - t2[a, 3, o] + bias[o]
                                y[b, i, j, o] = zero if (relu and val <= zero) else val


@njit(cache=True)
def _output_transform_pool(m, y, arg, b, row0, th, tw, bias, zero, t2):
    """The 2x2 output block of every tile of image ``b`` (``A^T m_tile A + bias``), max-
    pooled where it lands: the block *is* the 2x2 pool window. Writes ``y[b, ti, tj, :]``
    (ReLU after the max: they commute) and ``arg`` (uint8, 0..3, the row-major position
    of the first maximum; a NaN wins and stays, as in the im2col fused kernel). Only the
    ``ph x pw`` complete windows: an odd last row or column of outputs is dropped."""
    f = m.shape[2]
    ph, pw = y.shape[1], y.shape[2]
    for ti in range(ph):
        for tj in range(pw):
            row = row0 + ti * tw + tj
            _output_rows(m, row, f, t2)
            for o in range(f):
                bo = bias[o]
                best, a = _window_max4(t2[0, 0, o] + t2[0, 1, o] + t2[0, 2, o] + bo,
                                       t2[0, 1, o] - t2[0, 2, o] - t2[0, 3, o] + bo,
                                       t2[1, 0, o] + t2[1, 1, o] + t2[1, 2, o] + bo,
                                       t2[1, 1, o] - t2[1, 2, o] - t2[1, 3, o] + bo)
                y[b, ti, tj, o] = zero if best <= zero else best
                arg[b, ti, tj, o] = a


@njit(parallel=True, cache=True)
def winograd_forward(x, u, bias, pt, pl, oh, ow, relu, pool, zero, nt, grp, counter):
    """y (n, oh, ow, f) = the 3x3 stride-1 convolution of x (+ bias, ReLU'd if ``relu``).

    ``x (n, h, w, c)``, ``u (16, c, f)``, ``bias (f,)`` (zeros for none). Returns new
    ``(y, arg)``; ``arg`` is empty unless ``pool``. With ``pool`` (conv + bias + ReLU +
    2x2/2 max-pool in one pass, ``relu`` ignored): each tile's 2x2 output block is
    pooled as it leaves the output transform, so the conv output never leaves the
    thread-local ``m``; ``y (n, oh//2, ow//2, f)`` and ``arg`` (uint8) are those of
    :func:`.conv.conv2d_forward` with ``pool``, whose backward they feed.
    """
    n, c = x.shape[0], x.shape[3]
    f = u.shape[2]
    th = (oh + 1) // 2
    tw = (ow + 1) // 2
    tiles = th * tw
    y, arg = _conv_outputs(n, oh, ow, f, pool, x)
    rows = grp * tiles
    vs = np.empty((nt, 16, _plane_rows(rows), c), dtype=x.dtype)
    ms = np.empty((nt, 16, _plane_rows(rows), f), dtype=x.dtype)
    t2s = np.empty((nt, 2, 4, f), dtype=x.dtype)
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
                    _input_transform(x, b0 + i, v, i * tiles, 0, th, tw, pt, pl)
                # rows of a partial group hold stale tiles: computed, never written out
                for k in range(16):
                    np.dot(v[k, :rows], u[k], m[k, :rows])
                for i in range(g):
                    if pool:
                        _output_transform_pool(m, y, arg, b0 + i, i * tiles, th, tw, bias,
                                               zero, t2s[t])
                    else:
                        _output_transform(m, y, b0 + i, i * tiles, th, tw, oh, ow, bias,
                                          relu, zero, t2s[t])
            s = _fetch_add(counter, 0, 1)
    return y, arg


@njit(cache=True)
def _pooled_block_grad(dy, y, arg, b, ti, tj, oh, ow, zero, g4):
    """``g4 (4, f)``: dz of tile ``(ti, tj)``'s 2x2 block under the fused ReLU + pool (the
    pooled gradient at the window's winner where the pooled output is positive, else 0;
    0 for a window the pool dropped). A function of its own, as :func:`_block_grad`:
    inline in the tile loop of :func:`_grad_transform`, LLVM copied that loop per branch
    in every module the parallel kernel links (benchmarks/RESULTS.md 10)."""
    f = dy.shape[3]
    if ti < oh // 2 and tj < ow // 2:
        for p in range(4):
            for o in range(f):
                gv = dy[b, ti, tj, o] if y[b, ti, tj, o] > zero else zero
                g4[p, o] = gv if arg[b, ti, tj, o] == p else zero
    else:
        for p in range(4):
            for o in range(f):
                g4[p, o] = zero


@njit(cache=True)
def _block_grad(dy, y, b, ti, tj, oh, ow, relu, zero, g4, bn, m):
    """``g4 (4, f)``: dz of tile ``(ti, tj)``'s 2x2 block, ``dy * (y > 0)`` with ``relu``
    (else dy), or with ``bn`` rows a batch norm's input gradient (:func:`.norm._bn_dz_row`,
    ``y`` its input); outputs past ``oh, ow`` count as 0."""
    f = dy.shape[3]
    for p in range(4):
        i = 2 * ti + p // 2
        j = 2 * tj + p % 2
        if i >= oh or j >= ow:
            for o in range(f):
                g4[p, o] = zero
        elif bn.shape[0]:
            _bn_dz_row(dy[b, i, j], y[b, i, j], g4[p], bn, m, zero, relu)
        else:
            for o in range(f):
                gv = dy[b, i, j, o]
                g4[p, o] = zero if (relu and not y[b, i, j, o] > zero) else gv


@njit(cache=True)
def _grad_transform(dy, y, arg, b, dm, row0, ti0, ti1, tw, oh, ow, relu, pool, zero, db, g4,
                    bn, m):
    """``dm[a*4 + e, row0 + tile, :] = (A dz_tile A^T)[a, e, :]``, the gradient of the
    output transform, from ``dz = dy * (y > 0)`` (or dy) of image ``b``, tile rows ``ti0 ..
    ti1-1`` (as :func:`_input_transform`); outputs past
    ``oh, ow`` count as 0. Adds the bias gradient into ``db``. ``g4 (4, f)`` is scratch:
    the tile's 2x2 block of dz, gathered first so that every loop over the filters is
    branch-free and vectorises.

    With ``pool``, ``dy``, ``y`` and ``arg`` are those of the fused ReLU + 2x2 pool
    (``(n, oh//2, ow//2, f)``, see :func:`winograd_forward`): a tile's 2x2 block is its
    pool window, so dz is the pooled gradient at the window's winner ``arg`` when the
    pooled output is positive, 0 elsewhere (and 0 on an odd last row or column, which
    the pool drops)."""
    f = dy.shape[3]
    for ti in range(ti0, ti1):
        for tj in range(tw):
            row = row0 + (ti - ti0) * tw + tj
            if pool:
                _pooled_block_grad(dy, y, arg, b, ti, tj, oh, ow, zero, g4)
            else:
                _block_grad(dy, y, b, ti, tj, oh, ow, relu, zero, g4, bn, m)
            # A g A^T, where A g has the rows (g0, g0 + g1, g0 - g1, -g1), then the same
            # over the columns: one row a of the 4x4 result per loop, four output planes
            # each (sixteen planes written in one loop, 64 KB apart, thrashed the L1
            # cache's sets: 13 ms instead of 1 for the seed model's conv2)
            for o in range(f):
                g0 = g4[0, o]
                g1 = g4[1, o]
                db[o] += (g0 + g1) + (g4[2, o] + g4[3, o])
                dm[0, row, o] = g0
                dm[1, row, o] = g0 + g1
                dm[2, row, o] = g0 - g1
                dm[3, row, o] = -g1
            for o in range(f):
                g0 = g4[0, o] + g4[2, o]
                g1 = g4[1, o] + g4[3, o]
                dm[4, row, o] = g0
                dm[5, row, o] = g0 + g1
                dm[6, row, o] = g0 - g1
                dm[7, row, o] = -g1
            for o in range(f):
                g0 = g4[0, o] - g4[2, o]
                g1 = g4[1, o] - g4[3, o]
                dm[8, row, o] = g0
                dm[9, row, o] = g0 + g1
                dm[10, row, o] = g0 - g1
                dm[11, row, o] = -g1
            for o in range(f):
                g0 = -g4[2, o]
                g1 = -g4[3, o]
                dm[12, row, o] = g0
                dm[13, row, o] = g0 + g1
                dm[14, row, o] = g0 - g1
                dm[15, row, o] = -g1


@njit(cache=True)
def _input_transform_adjoint(dv, dx, b, row0, ti0, ti1, tw, pt, pl):
    """``dx[b, tile] += B dv_tile B^T`` for the tiles of image ``b`` in tile rows ``ti0 ..
    ti1-1`` (tiles overlap by two rows and columns; padding rows are dropped). ``dv B^T``
    goes to scratch on this call's stack (see :mod:`.scratch`), per block of up to
    :data:`.scratch.TILE_CHANNELS` channels."""
    h, w, c = dx.shape[1], dx.shape[2], dx.shape[3]
    q = _tile_scratch(dv)
    for ti in range(ti0, ti1):
        for tj in range(tw):
            row = row0 + (ti - ti0) * tw + tj
            r0 = 2 * ti - pt
            s0 = 2 * tj - pl
            for c0 in range(0, c, TILE_CHANNELS):
                cw = min(TILE_CHANNELS, c - c0)
                for a in range(4):                   # columns: dv B^T
                    w0, w1 = dv[a * 4 + 0, row, c0:c0 + cw], dv[a * 4 + 1, row, c0:c0 + cw]
                    w2, w3 = dv[a * 4 + 2, row, c0:c0 + cw], dv[a * 4 + 3, row, c0:c0 + cw]
                    for ch in range(cw):
                        v0 = w0[ch]
                        v1 = w1[ch]
                        v2 = w2[ch]
                        v3 = w3[ch]
                        q[a, 0, ch] = v0
                        q[a, 1, ch] = v1 - v2 + v3
                        q[a, 2, ch] = v1 + v2 - v0
                        q[a, 3, ch] = -v3
                for e in range(4):                   # rows: B (.), added into dx
                    s = s0 + e
                    if s < 0 or s >= w:
                        continue
                    for k in range(4):
                        r = r0 + k
                        if r < 0 or r >= h:
                            continue
                        out = dx[b, r, s, c0:c0 + cw]
                        if k == 0:
                            for ch in range(cw):
                                out[ch] += q[0, e, ch]
                        elif k == 1:
                            for ch in range(cw):
                                out[ch] += q[1, e, ch] - q[2, e, ch] + q[3, e, ch]
                        elif k == 2:
                            for ch in range(cw):
                                out[ch] += q[1, e, ch] + q[2, e, ch] - q[0, e, ch]
                        else:
                            for ch in range(cw):
                                out[ch] -= q[3, e, ch]


@njit(parallel=PRANGE_ONLY, cache=True)
def winograd_backward(x, u_t, dy, y, arg, pt, pl, oh, ow, need_dx, relu, pool, zero, nt, grp,
                      chunk, counter, bn, m):
    """dx, dU (the gradient of the transformed kernel) and dbias of :func:`winograd_forward`.

    ``u_t (16, f, c)``: the transformed kernel with each position transposed; ``dy`` and
    ``y (n, oh, ow, f)`` (``y`` read only when ``relu``: dz = dy * (y > 0)); with ``pool``
    the pooled ``dy``, ``y`` and the uint8 ``arg (n, oh//2, ow//2, f)`` of the fused
    ReLU + pool forward instead (``arg`` is not read otherwise); ``bn (7, f)`` with rows
    (not ``(0, f)``): ``dy`` is a batch norm's output gradient, ``y`` its input, dz its
    input gradient (as :func:`.conv.conv2d_backward`, ``relu`` the batch norm's ReLU,
    ``m`` its row count). Returns new
    ``dx (n, h, w, c)`` (empty when not ``need_dx``), ``du (16, c, f)`` (the wrapper turns
    it into dkernel = G^T dU G) and ``db (f,)``. Per slot, the partial dU and db are
    summed in slot order afterwards, so the result does not depend on the scheduling.

    A GEMM stacks the tiles of ``grp`` images, or with ``grp`` 1 those of ``chunk`` tile
    rows of one image (``chunk`` below ``ceil(oh/2)`` splits a large image, so that its
    transformed tiles stay in the core's cache; ``chunk`` is ``ceil(oh/2)`` otherwise).
    """
    n, h, w, c = x.shape
    f = u_t.shape[1]
    th = (oh + 1) // 2
    tw = (ow + 1) // 2
    rows = grp * min(chunk, th) * tw
    slots = _slot_count(n, nt)
    vs = np.empty((nt, 16, _plane_rows(rows), c), dtype=x.dtype)
    dms = np.empty((nt, 16, _plane_rows(rows), f), dtype=x.dtype)
    tmps = np.empty((nt, c, f), dtype=x.dtype)
    g4s = np.empty((nt, 4, f), dtype=x.dtype)
    parts, db_part = _slot_partials(slots, 16 * c, f, x)
    du_part = parts.reshape((parts.shape[0], 16, c, f))
    if need_dx:
        dx = np.empty((n, h, w, c), dtype=x.dtype)      # each slot zeroes its own images
        dvs = np.empty((nt, 16, _plane_rows(rows), c), dtype=x.dtype)
    else:
        dx = np.zeros((0, 0, 0, 0), dtype=x.dtype)
        dvs = np.empty((nt, 16, 0, 0), dtype=x.dtype)
    for t in prange(nt):
        # the slots' work is written here, not in a function of its own: called from the
        # prange loop, a function is optimised and compiled once more (RESULTS.md 13)
        v, dm, dv, g4, tmp = vs[t], dms[t], dvs[t], g4s[t], tmps[t]
        s = _fetch_add(counter, 0, 1)
        while s < slots:
            # images lo .. hi-1 (slot s), grp images or chunk tile rows of one image per
            # GEMM: writes, then adds into, du_part[s], adds into db_part[s], zeroes then
            # accumulates their images of dx (here, by the thread that fills them, not by a
            # parallel np.zeros: one prange region, see PRANGE_ONLY). The GEMMs take only
            # the rows the transforms wrote (a partial group or a last, shorter chunk leaves
            # stale rows out); the buffers hold a spare row per plane (_plane_rows)
            lo, hi = _slot_range(s, slots, n)
            du = du_part[s]
            db = db_part[s]
            if need_dx:
                for b in range(lo, hi):
                    dx[b] = zero
            first = True
            for b0 in range(lo, hi, grp):
                g = min(grp, hi - b0)
                for ti0 in range(0, th, chunk):
                    ti1 = min(th, ti0 + chunk)
                    per = (ti1 - ti0) * tw       # tile rows of each image in this GEMM
                    r = g * per
                    for i in range(g):
                        _input_transform(x, b0 + i, v, i * per, ti0, ti1, tw, pt, pl)
                        _grad_transform(dy, y, arg, b0 + i, dm, i * per, ti0, ti1, tw, oh, ow,
                                        relu, pool, zero, db, g4, bn, m)
                    for k in range(16):
                        if first:                # the slot's first GEMM writes du
                            np.dot(v[k, :r].T, dm[k, :r], du[k])
                            continue
                        np.dot(v[k, :r].T, dm[k, :r], tmp)
                        for ch in range(tmp.shape[0]):   # loops, not du[k] += tmp:
                            for o in range(tmp.shape[1]):  # see .partials
                                du[k, ch, o] += tmp[ch, o]
                    first = False
                    if need_dx:
                        for k in range(16):
                            np.dot(dm[k, :r], u_t[k], dv[k, :r])
                        for i in range(g):
                            _input_transform_adjoint(dv, dx, b0 + i, i * per, ti0, ti1, tw, pt,
                                                     pl)
            s = _fetch_add(counter, 0, 1)
    du, db = _sum_partials(parts, db_part)
    return dx, du.reshape((16, c, f)), db

