"""The three backends ('reference', 'numpy', 'numba') compute the same ops.

Every op is run on random shapes drawn by hypothesis (odd and even sizes,
non-square images and kernels, 1x1 to 5x5 kernels, strides 1 to 3, both
paddings, batch 1) on every backend and compared with the reference backend:
relative error below 1e-9 in float64 and 1e-5 in float32. Each run also checks
that outputs keep the input dtype and that no op modifies its input arrays.

The relative error is that of whole arrays, ``||a - b|| / ||b||``, except that a
sum which cancels to nearly zero is measured against the size of its terms
(:func:`rel_err`, :func:`term_sizes`): different summation orders legitimately
differ by rounding of the terms, not of the (tiny) result.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import gradcheck, ops

BACKENDS = ("reference", "numpy", "numba")
TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}
DTYPE_NAMES = st.sampled_from(["float32", "float64"])
SEEDS = st.integers(0, 2**32 - 1)
ACTIVATIONS = ("relu", "sigmoid", "tanh", "linear", "softmax", "gelu", "swish", "elu",
               "leaky_relu")


def norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64)))


def rel_err(a, b, floor=0.0) -> float:
    """``||a - b|| / max(||a||, ||b||, floor)`` of whole arrays (0 when all are 0).

    ``floor`` is the size of the terms that were summed: a sum that cancels to
    nearly zero is only known to rounding error *of its terms*, so the error is
    measured against them (the usual bound ``|fl(sum) - sum| <= n eps sum|terms|``).
    """
    denom = max(norm(a), norm(b), floor)
    return 0.0 if denom == 0 else norm(np.asarray(a, np.float64) - np.asarray(b, np.float64)) / denom


def term_sizes(op_name, *args):
    """``||op(|args|)||`` per output: the size of the terms behind each sum of a bilinear op."""
    absargs = [np.abs(a) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a
               for a in args]
    with minicnn.use_backend("numpy"):
        out = getattr(ops, op_name)(*absargs)
    return [None if o is None else norm(o) for o in (out if isinstance(out, tuple) else (out,))]


def snapshot(args):
    return [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in args]


def assert_unchanged(before, after, where):
    for i, (b, a) in enumerate(zip(before, after)):
        if isinstance(b, np.ndarray):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: argument {i} changed type"
            assert np.array_equal(a, b, equal_nan=True), f"{where}: argument {i} was modified"


def run_backends(op_name, *args):
    """``{backend: ops.<op_name>(*args)}``, checking that no argument is modified."""
    out = {}
    for name in BACKENDS:
        before = snapshot(args)
        with minicnn.use_backend(name):
            out[name] = getattr(ops, op_name)(*args)
        assert_unchanged(before, args, f"{op_name} on {name}")
    return out


def compare(results, dtype, label, error_log, parts=None, floors=None):
    """Every backend's outputs against the reference's: same shape, dtype and values.

    ``floors``: per output, the size of the summed terms (see :func:`rel_err`).
    """
    dtype = np.dtype(dtype)
    ref = results["reference"]
    ref_parts = ref if isinstance(ref, tuple) else (ref,)
    names = parts or [f"out{i}" for i in range(len(ref_parts))]
    for name in BACKENDS:
        got = results[name]
        got_parts = got if isinstance(got, tuple) else (got,)
        assert len(got_parts) == len(ref_parts)
        part_floors = floors or [0.0] * len(ref_parts)
        for part, g, r, floor in zip(names, got_parts, ref_parts, part_floors):
            if r is None:
                assert g is None, f"{label}.{part} on {name}: expected None"
                continue
            g, r = np.asarray(g), np.asarray(r)
            assert g.dtype == dtype, f"{label}.{part} on {name}: dtype {g.dtype}, expected {dtype}"
            assert g.shape == r.shape, f"{label}.{part} on {name}: shape {g.shape} != {r.shape}"
            err = rel_err(g, r, floor or 0.0)
            if name != "reference":
                error_log.record(f"backends {name} vs reference, {dtype.name}", err)
            assert err < TOL[dtype], f"{label}.{part} on {name}: relative error {err:.3e}"


#: float64 finite differences against an op's analytic gradient
GRAD_TOL = 1e-6


def check_grad(label, analytic, loss_of, at, error_log, backend):
    """Finite differences of the scalar ``loss_of(at)`` against ``analytic``."""
    numeric = gradcheck.numerical_gradient(loss_of, at)
    err = gradcheck.relative_error(analytic, numeric)
    error_log.record(f"gradcheck ops ({backend})", err)
    assert err < GRAD_TOL, f"{label} on {backend}: relative error {err:.3e}"


def layout(a, fortran):
    """The same values, optionally as a non-C-contiguous (Fortran-ordered) array."""
    return np.asfortranarray(a) if fortran else a


# ----------------------------------------------------------------------------- convolution
@st.composite
def conv_cases(draw):
    padding = draw(st.sampled_from(["same", "valid"]))
    kh = draw(st.sampled_from([1, 2, 3, 5]))
    kw = draw(st.sampled_from([1, 2, 3, 5]))
    lo_h = kh if padding == "valid" else 1
    lo_w = kw if padding == "valid" else 1
    return dict(
        # c <= 4 takes the numba kernels' transposed-patch path, c >= 5 the row one;
        # n up to 5 leaves partial groups of images per GEMM
        n=draw(st.integers(1, 5)), h=draw(st.integers(lo_h, lo_h + 6)),
        w=draw(st.integers(lo_w, lo_w + 6)), c=draw(st.sampled_from([1, 2, 3, 4, 5, 6])),
        f=draw(st.integers(1, 3)), kh=kh, kw=kw, sh=draw(st.integers(1, 3)),
        sw=draw(st.integers(1, 3)), padding=padding, use_bias=draw(st.booleans()),
        fortran=draw(st.booleans()), dtype=draw(DTYPE_NAMES), seed=draw(SEEDS))


def _conv_case(n, h, w, c, f, kh, kw, sh, sw, padding, use_bias=True, fortran=False,
               dtype="float64", seed=0):
    return dict(n=n, h=h, w=w, c=c, f=f, kh=kh, kw=kw, sh=sh, sw=sw, padding=padding,
                use_bias=use_bias, fortran=fortran, dtype=dtype, seed=seed)


@settings(max_examples=40, deadline=None, database=None)
@given(case=conv_cases())
@example(case=_conv_case(1, 7, 7, 2, 3, 3, 3, 2, 2, "same"))               # odd size, stride 2
@example(case=_conv_case(1, 6, 9, 3, 2, 1, 1, 1, 1, "valid", dtype="float32"))   # 1x1
@example(case=_conv_case(1, 9, 8, 2, 2, 5, 5, 3, 1, "same", dtype="float32"))    # 5x5
@example(case=_conv_case(2, 8, 5, 1, 2, 5, 2, 2, 3, "valid", use_bias=False))    # non-square
@example(case=_conv_case(5, 4, 4, 3, 3, 3, 3, 1, 1, "same", dtype="float32"))    # groups, few c
@example(case=_conv_case(5, 4, 4, 6, 3, 3, 3, 1, 1, "same", dtype="float32"))    # groups, rows
def test_conv2d_backends_agree(case, error_log):
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, f = (case[k] for k in "nhwcf")
    kh, kw, sh, sw = case["kh"], case["kw"], case["sh"], case["sw"]
    oh, ow, pads = ops.conv_geometry(h, w, kh, kw, sh, sw, case["padding"])
    x = layout(rng.standard_normal((n, h, w, c)).astype(dt), case["fortran"])
    kernel = rng.standard_normal((kh, kw, c, f)).astype(dt)
    bias = rng.standard_normal(f).astype(dt) if case["use_bias"] else None
    dy = layout(rng.standard_normal((n, oh, ow, f)).astype(dt), case["fortran"])

    fwd = run_backends("conv2d_forward", x, kernel, bias, (sh, sw), pads)
    assert fwd["reference"].shape == (n, oh, ow, f)
    compare(fwd, dt, "conv2d_forward", error_log,
            floors=term_sizes("conv2d_forward", x, kernel, bias, (sh, sw), pads))

    bwd = run_backends("conv2d_backward", x, kernel, dy, (sh, sw), pads, True)
    bwd_floors = term_sizes("conv2d_backward", x, kernel, dy, (sh, sw), pads, True)
    compare(bwd, dt, "conv2d_backward", error_log, ["dx", "dkernel", "dbias"], bwd_floors)
    assert bwd["reference"][0].shape == x.shape

    no_dx = run_backends("conv2d_backward", x, kernel, dy, (sh, sw), pads, False)
    compare(no_dx, dt, "conv2d_backward(need_dx=False)", error_log, ["dx", "dkernel", "dbias"],
            bwd_floors)
    for name in BACKENDS:
        assert no_dx[name][0] is None
        np.testing.assert_array_equal(no_dx[name][1], bwd[name][1])
        np.testing.assert_array_equal(no_dx[name][2], bwd[name][2])

    # bias and ReLU fused into the convolution; backward masks dy with the output y > 0
    fwd_relu = run_backends("conv2d_forward", x, kernel, bias, (sh, sw), pads, True)
    compare(fwd_relu, dt, "conv2d_forward(relu=True)", error_log,
            floors=term_sizes("conv2d_forward", x, kernel, bias, (sh, sw), pads))
    y_relu = fwd_relu["reference"]
    np.testing.assert_array_equal(y_relu, np.maximum(fwd["reference"], 0))
    bwd_relu = run_backends("conv2d_backward", x, kernel, dy, (sh, sw), pads, True, y_relu)
    masked_dy = np.where(y_relu > 0, dy, 0).astype(dt)
    compare(bwd_relu, dt, "conv2d_backward(y=...)", error_log, ["dx", "dkernel", "dbias"],
            bwd_floors)
    unfused = run_backends("conv2d_backward", x, kernel, masked_dy, (sh, sw), pads, True)
    for name in BACKENDS:
        for part, a, b in zip(("dx", "dkernel", "dbias"), bwd_relu[name], unfused[name]):
            err = rel_err(a, b, bwd_floors[("dx", "dkernel", "dbias").index(part)])
            assert err < TOL[dt], f"conv2d_backward(y=...).{part} on {name} != masked dy: {err:.3e}"


# ----------------------------------------------------------------------------- fused conv + relu + pool
@st.composite
def fused_cases(draw):
    padding = draw(st.sampled_from(["same", "valid"]))
    kh, kw = draw(st.sampled_from([1, 2, 3, 5])), draw(st.sampled_from([1, 2, 3, 5]))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # the conv output must hold at least one 2x2 window
    lo_h = (kh if padding == "valid" else 1) + sh
    lo_w = (kw if padding == "valid" else 1) + sw
    return dict(n=draw(st.integers(1, 3)), h=draw(st.integers(lo_h, lo_h + 6)),
                w=draw(st.integers(lo_w, lo_w + 6)), c=draw(st.sampled_from([1, 2, 3, 4, 5, 6])),
                f=draw(st.integers(1, 3)), kh=kh, kw=kw, sh=sh, sw=sw, padding=padding,
                use_bias=draw(st.booleans()), need_dx=draw(st.booleans()),
                dtype=draw(DTYPE_NAMES), seed=draw(SEEDS))


@settings(max_examples=30, deadline=None, database=None)
@given(case=fused_cases())
@example(case=dict(n=1, h=7, w=9, c=2, f=3, kh=3, kw=3, sh=1, sw=1, padding="valid",
                   use_bias=True, need_dx=True, dtype="float32", seed=0))   # odd conv output
@example(case=dict(n=3, h=6, w=6, c=6, f=3, kh=3, kw=3, sh=1, sw=1, padding="same",
                   use_bias=True, need_dx=True, dtype="float32", seed=1))   # row-layout patches
def test_conv2d_relu_maxpool_backends_agree(case, error_log):
    """maxpool_2x2(relu(conv(x) + bias)) as one op: the composition of the separate ops."""
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    n, h, w, c, f = (case[k] for k in "nhwcf")
    kh, kw, strides = case["kh"], case["kw"], (case["sh"], case["sw"])
    oh, ow, pads = ops.conv_geometry(h, w, kh, kw, *strides, case["padding"])
    assert oh >= 2 and ow >= 2
    x = rng.standard_normal((n, h, w, c)).astype(dt)
    kernel = rng.standard_normal((kh, kw, c, f)).astype(dt)
    bias = rng.standard_normal(f).astype(dt) if case["use_bias"] else None

    fwd = run_backends("conv2d_relu_maxpool_forward", x, kernel, bias, strides, pads)
    z_floor = term_sizes("conv2d_forward", x, kernel, bias, strides, pads)
    compare({k: v[0] for k, v in fwd.items()}, dt, "conv2d_relu_maxpool_forward", error_log,
            floors=z_floor)
    y, argmax = fwd["reference"]
    assert y.shape == (n, oh // 2, ow // 2, f)
    # the composition of the separate ops, on the same backend
    z = ops.conv2d_forward(x, kernel, bias, strides, pads, relu=True)
    y_sep, arg_sep = ops.maxpool2d_forward(z, (2, 2), (2, 2), (0, 0, 0, 0))
    assert rel_err(y, y_sep, z_floor[0]) < TOL[dt]
    positive = y > 0               # where the ReLU passes, the winner is defined and shared
    for name in BACKENDS:
        arg = fwd[name][1]
        assert arg.dtype == np.uint8, f"fused argmax dtype {arg.dtype} on {name}"
        assert arg.shape == y.shape and arg.max(initial=0) <= 3
        np.testing.assert_array_equal(arg[positive], argmax[positive], err_msg=name)
        np.testing.assert_array_equal(arg[positive], arg_sep[positive], err_msg=name)

    dy = rng.standard_normal(y.shape).astype(dt)
    need_dx = case["need_dx"]
    bwd = run_backends("conv2d_relu_maxpool_backward", x, kernel, dy, y, argmax, strides, pads,
                       need_dx)
    # unfused: dy through the ReLU mask and the pool, then the convolution
    dz = ops.maxpool2d_backward(np.where(y > 0, dy, 0).astype(dt), argmax.astype(np.int32),
                                (n, oh, ow, f), (2, 2), (2, 2), (0, 0, 0, 0))
    floors = term_sizes("conv2d_backward", x, kernel, dz, strides, pads, True)
    compare(bwd, dt, "conv2d_relu_maxpool_backward", error_log, ["dx", "dkernel", "dbias"],
            floors)
    expected = ops.conv2d_backward(x, kernel, dz, strides, pads, need_dx)
    for part, got, exp, floor in zip(("dx", "dkernel", "dbias"), bwd["reference"], expected,
                                     floors):
        if exp is None:
            assert got is None
        else:
            assert rel_err(got, exp, floor) < TOL[dt], f"fused backward {part} != unfused"


# ----------------------------------------------------------------------------- max pooling
@st.composite
def pool_cases(draw):
    padding = draw(st.sampled_from(["same", "valid"]))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lo_h = ph if padding == "valid" else 1
    lo_w = pw if padding == "valid" else 1
    return dict(n=draw(st.integers(1, 3)), h=draw(st.integers(lo_h, lo_h + 6)),
                w=draw(st.integers(lo_w, lo_w + 6)), c=draw(st.integers(1, 3)), ph=ph, pw=pw,
                sh=draw(st.integers(1, 3)), sw=draw(st.integers(1, 3)), padding=padding,
                fortran=draw(st.booleans()), dtype=draw(DTYPE_NAMES), seed=draw(SEEDS))


def distinct_values(rng, shape, dtype):
    """Values without ties (a shuffled range), some negative, exactly representable."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size // 2) / 4).reshape(shape).astype(dtype)


@settings(max_examples=40, deadline=None, database=None)
@given(case=pool_cases())
@example(case=dict(n=1, h=7, w=7, c=2, ph=2, pw=2, sh=2, sw=2, padding="same", fortran=False,
                   dtype="float32", seed=1))
@example(case=dict(n=1, h=9, w=6, c=1, ph=3, pw=2, sh=1, sw=3, padding="valid", fortran=False,
                   dtype="float64", seed=2))
def test_maxpool2d_backends_agree(case, error_log):
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    n, h, w, c = (case[k] for k in "nhwc")
    pool, strides = (case["ph"], case["pw"]), (case["sh"], case["sw"])
    oh, ow, pads = ops.conv_geometry(h, w, *pool, *strides, case["padding"])
    x = layout(distinct_values(rng, (n, h, w, c), dt), case["fortran"])
    dy = layout(rng.standard_normal((n, oh, ow, c)).astype(dt), case["fortran"])

    fwd = run_backends("maxpool2d_forward", x, pool, strides, pads)
    ys = {name: r[0] for name, r in fwd.items()}
    compare(ys, dt, "maxpool2d_forward", error_log)
    ref_arg = fwd["reference"][1]
    assert ref_arg.shape == (n, oh, ow, c)
    for name in BACKENDS:
        arg = fwd[name][1]
        assert arg.dtype == np.int32, f"argmax dtype {arg.dtype} on {name}"
        np.testing.assert_array_equal(arg, ref_arg, err_msg=f"argmax on {name}")
    # the forward values are elements of x (max is exact)
    assert np.all(np.isin(fwd["reference"][0], x))

    bwd = run_backends("maxpool2d_backward", dy, ref_arg, x.shape, pool, strides, pads)
    compare(bwd, dt, "maxpool2d_backward", error_log,
            floors=term_sizes("maxpool2d_backward", dy, ref_arg, x.shape, pool, strides, pads))
    assert bwd["reference"].shape == x.shape


def first_argmax_dx(x, dy, pool, strides, pads):
    """Brute force: each dy goes to the first maximum (row-major) of its window."""
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    pt, _, pl, _ = pads
    dx = np.zeros_like(x)
    for b in range(n):
        for i in range(dy.shape[1]):
            for j in range(dy.shape[2]):
                for ch in range(c):
                    cells = [(i * sh + a - pt, j * sw + d - pl) for a in range(ph) for d in range(pw)]
                    cells = [(r, s) for r, s in cells if 0 <= r < h and 0 <= s < w]
                    vals = [x[b, r, s, ch] for r, s in cells]
                    r, s = cells[int(np.argmax(vals))]
                    dx[b, r, s, ch] += dy[b, i, j, ch]
    return dx


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("pool,strides,padding", [
    ((2, 2), (2, 2), "valid"), ((3, 3), (1, 1), "valid"), ((3, 2), (2, 1), "same"),
    ((2, 2), (2, 2), "same"), ((3, 3), (2, 2), "same")])
def test_maxpool2d_ties_route_to_first_max(backend, pool, strides, padding, dtype):
    rng = np.random.default_rng(3)
    # few distinct values: many ties; all negative, so a zero-padded border would win
    x = rng.integers(-3, -1, size=(2, 7, 6, 2)).astype(dtype)
    x[0, :, :, 0] = -1.0            # one channel constant: every window is one big tie
    oh, ow, pads = ops.conv_geometry(7, 6, *pool, *strides, padding)
    y, argmax = ops.maxpool2d_forward(x, pool, strides, pads)
    assert np.all(y < 0), "a padded position won a window"
    dy = rng.integers(1, 5, size=y.shape).astype(dtype)
    dx = ops.maxpool2d_backward(dy, argmax, x.shape, pool, strides, pads)
    np.testing.assert_array_equal(dx, first_argmax_dx(x, dy, pool, strides, pads))
    # the total gradient is conserved: each dy reached exactly one position
    assert dx.sum() == dy.sum()
    if padding == "valid" and pool == strides:
        # non-overlapping windows of a constant channel: only each window's top-left cell
        expected = np.zeros((7, 6))
        expected[0:oh * 2:2, 0:ow * 2:2] = 1
        np.testing.assert_array_equal(dx[0, :, :, 0] != 0, expected != 0)


def test_maxpool2d_nan_propagates_and_argmax_stays_in_the_window(backend):
    """A NaN in a window makes its maximum NaN (as np.max and torch's max-pool do), the
    argmax is the first NaN (np.argmax's rule), and never -1: an argmax of -1 would send
    the gradient to a pixel of a neighbouring window."""
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    x[0, 0, 1, 0] = np.nan                   # window (0, 0): a NaN after a number
    x[0, 2:4, 0:2, 0] = np.nan               # window (1, 0): all NaN
    y, argmax = ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
    assert np.all((argmax >= 0) & (argmax < 4)), argmax.ravel()
    np.testing.assert_array_equal(y.ravel(), [np.nan, 7, np.nan, 15])
    np.testing.assert_array_equal(argmax.ravel(), [1, 3, 0, 3])
    dx = ops.maxpool2d_backward(np.ones_like(y), argmax, x.shape, (2, 2), (2, 2), (0, 0, 0, 0))
    expected = np.zeros((4, 4))
    expected[0, 1] = expected[1, 3] = expected[2, 0] = expected[3, 3] = 1
    np.testing.assert_array_equal(dx[0, :, :, 0], expected)


# ----------------------------------------------------------------------------- dense
@settings(max_examples=30, deadline=None, database=None)
@given(n=st.integers(1, 5), k=st.integers(1, 8), u=st.integers(1, 6), use_bias=st.booleans(),
       fortran=st.booleans(), dtype=DTYPE_NAMES, seed=SEEDS)
@example(n=1, k=1, u=1, use_bias=True, fortran=False, dtype="float32", seed=0)
def test_dense_backends_agree(n, k, u, use_bias, fortran, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = layout(rng.standard_normal((n, k)).astype(dt), fortran)
    kernel = layout(rng.standard_normal((k, u)).astype(dt), fortran)
    bias = rng.standard_normal(u).astype(dt) if use_bias else None
    dy = layout(rng.standard_normal((n, u)).astype(dt), fortran)
    compare(run_backends("dense_forward", x, kernel, bias), dt, "dense_forward", error_log,
            floors=term_sizes("dense_forward", x, kernel, bias))
    bwd_floors = term_sizes("dense_backward", x, kernel, dy, True)
    bwd = run_backends("dense_backward", x, kernel, dy, True)
    compare(bwd, dt, "dense_backward", error_log, ["dx", "dkernel", "dbias"], bwd_floors)
    no_dx = run_backends("dense_backward", x, kernel, dy, False)
    compare(no_dx, dt, "dense_backward(need_dx=False)", error_log, ["dx", "dkernel", "dbias"],
            bwd_floors)
    for name in BACKENDS:
        assert no_dx[name][0] is None


@pytest.mark.parametrize("need_dx", [True, False])
@pytest.mark.parametrize("nt", [1, 2, 3, 5])
def test_numba_dense_backward_any_thread_count(nt, need_dx):
    """The dense backward kernel's one prange loop, over its two GEMMs (dx wanted, two or
    more threads) or over row blocks, some of them empty (5 threads, 4 rows): the same
    numbers as float64 NumPy, for every thread count."""
    from minicnn.ops._kernels import dense as dense_k
    rng = np.random.default_rng(nt)
    x, kernel, dy = (rng.standard_normal(s).astype(np.float32) for s in ((4, 64), (64, 32),
                                                                         (4, 32)))
    for _ in range(3):
        # freed memory of the size of the partial sums, full of junk: a partial the kernel
        # forgot to write would likely get it back
        junk = np.full(nt * 64 * 32 + 64, 3e38, np.float32)
        del junk
        dx, dk, db = dense_k.dense_backward(x, kernel, dy, need_dx, nt)
    x64, k64, dy64 = (a.astype(np.float64) for a in (x, kernel, dy))
    np.testing.assert_allclose(dk, x64.T @ dy64, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, dy64.sum(axis=0), rtol=1e-5, atol=1e-6)
    if need_dx:
        np.testing.assert_allclose(dx, dy64 @ k64.T, rtol=1e-5, atol=1e-6)
    else:
        assert dx.shape == (0, 64)


# ----------------------------------------------------------------------------- activations
@settings(max_examples=60, deadline=None, database=None)
@given(name=st.sampled_from(ACTIVATIONS),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       scale=st.sampled_from([1.0, 30.0]), dtype=DTYPE_NAMES, seed=SEEDS)
@example(name="sigmoid", shape=(2, 3), scale=30.0, dtype="float32", seed=0)
@example(name="softmax", shape=(1, 1), scale=1.0, dtype="float64", seed=0)
def test_activations_backends_agree(name, shape, scale, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    x.reshape(-1)[::3] = 0.0                 # exact zeros: relu's kink, sigmoid's branch point
    x = x.astype(dt)
    dy = rng.standard_normal(shape).astype(dt)
    fwd = run_backends("activation_forward", name, x)
    compare(fwd, dt, f"activation_forward[{name}]", error_log)
    y = fwd["reference"]
    assert np.all(np.isfinite(y))
    # every backend differentiates at the same y (a saturated softmax makes dx
    # ill-conditioned in y, so backends' last-bit differences in y must not enter)
    bwd = run_backends("activation_backward", name, x, y, dy)
    floor = 0.0
    if name == "softmax":      # dx = y * (dy - sum(dy * y)): the terms are y|dy| and y sum|dy| y
        y64, ady = y.astype(np.float64), np.abs(dy.astype(np.float64))
        floor = norm(y64 * (ady + np.sum(ady * y64, axis=-1, keepdims=True)))
    compare(bwd, dt, f"activation_backward[{name}]", error_log, floors=[floor])


def test_activations_reference_values(backend):
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_allclose(ops.activation_forward("relu", x), [[0, 0, 3]])
    np.testing.assert_allclose(ops.activation_forward("sigmoid", x), 1 / (1 + np.exp(-x)),
                               rtol=1e-14)
    np.testing.assert_allclose(ops.activation_forward("tanh", x), np.tanh(x), rtol=1e-14)
    e = np.exp(x - 3)
    np.testing.assert_allclose(ops.activation_forward("softmax", x), e / e.sum(), rtol=1e-14)
    # relu's derivative at 0 is 0 (TensorFlow's choice)
    dx = ops.activation_backward("relu", x, ops.activation_forward("relu", x), np.ones_like(x))
    np.testing.assert_array_equal(dx, [[0, 0, 1]])
    # sigmoid must not overflow for large |x|
    big = np.array([-1000.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise"):
        np.testing.assert_array_equal(ops.activation_forward("sigmoid", big), [0, 1])
    with pytest.raises(ValueError, match="bogus"):
        ops.activation_forward("bogus", x)


# ----------------------------------------------------------------------------- loss
@settings(max_examples=40, deadline=None, database=None)
@given(n=st.integers(1, 5), k=st.integers(1, 7), sparse=st.booleans(), soft=st.booleans(),
       scale=st.sampled_from([1.0, 50.0]), dtype=DTYPE_NAMES, seed=SEEDS)
@example(n=1, k=3, sparse=True, soft=False, scale=1.0, dtype="float32", seed=0)
def test_softmax_cross_entropy_backends_agree(n, k, sparse, soft, scale, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, k)) * scale).astype(dt)
    labels = rng.integers(0, k, size=n)
    if sparse:
        target = labels                      # ops take (n,) labels; the loss classes reshape (n, 1)
    elif soft:
        t = rng.random((n, k)) + 0.1
        target = (t / t.sum(axis=1, keepdims=True)).astype(dt)
    else:
        target = np.eye(k, dtype=dt)[labels]
    out = run_backends("softmax_cross_entropy", logits, target, sparse)
    for name in BACKENDS:
        loss = out[name][0]
        assert np.ndim(loss) == 0
        assert np.asarray(loss).dtype == dt, f"loss dtype {np.asarray(loss).dtype} on {name}"
    # the loss is lse - z: a difference of numbers as large as the logits; dlogits = (p - t) / n
    t = np.eye(k)[labels] if sparse else np.asarray(target, np.float64)
    floors = [1.0 + np.abs(logits).max(), (norm(t) + np.sqrt(n)) / n]
    compare(out, dt, f"softmax_cross_entropy[sparse={sparse}]", error_log, ["loss", "dlogits"],
            floors)
    assert np.isfinite(out["reference"][0])


# ----------------------------------------------------------------------------- dropout
@settings(max_examples=30, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 6), min_size=1, max_size=4).map(tuple),
       rate=st.sampled_from([0.1, 0.5, 0.9]), dtype=DTYPE_NAMES, seed=SEEDS)
def test_dropout_backends_agree(shape, rate, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dt)
    mask = rng.random(shape) >= rate
    scale = 1.0 / (1.0 - rate)
    out = run_backends("dropout_forward", x, mask, scale)
    compare(out, dt, "dropout_forward", error_log)
    y = out["reference"]
    assert np.all(y[~mask] == 0)
    np.testing.assert_allclose(y[mask], x[mask] * scale, rtol=TOL[dt])


# ----------------------------------------------------------------------------- optimizers
@settings(max_examples=30, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       lr=st.sampled_from([1e-3, 0.1]), beta_1=st.sampled_from([0.9, 0.5]),
       beta_2=st.sampled_from([0.999, 0.9]), epsilon=st.sampled_from([1e-7, 1e-3]),
       dtype=DTYPE_NAMES, seed=SEEDS)
def test_adam_update_backends_agree(shape, lr, beta_1, beta_2, epsilon, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    param0 = rng.standard_normal(shape).astype(dt)
    state = {}
    for name in BACKENDS:
        state[name] = (param0.copy(), np.zeros_like(param0), np.zeros_like(param0))
    results = {}
    for t in (1, 2, 3):
        grad = rng.standard_normal(shape).astype(dt)
        for name in BACKENDS:
            param, m, v = state[name]
            before = grad.copy()
            with minicnn.use_backend(name):
                assert ops.adam_update(param, grad, m, v, lr, beta_1, beta_2, epsilon, t) is None
            np.testing.assert_array_equal(grad, before, err_msg=f"adam_update modified grad on {name}")
            results[name] = tuple(a.copy() for a in state[name])
        ref_param = results["reference"][0]
        floors = [norm(ref_param) + lr * np.sqrt(ref_param.size), norm(grad), norm(grad * grad)]
        compare(results, dt, f"adam_update(t={t})", error_log, ["param", "m", "v"], floors)


@settings(max_examples=30, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       lr=st.sampled_from([1e-2, 0.3]), momentum=st.sampled_from([0.0, 0.5, 0.9]),
       nesterov=st.booleans(), dtype=DTYPE_NAMES, seed=SEEDS)
def test_sgd_update_backends_agree(shape, lr, momentum, nesterov, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    param0 = rng.standard_normal(shape).astype(dt)
    vel0 = rng.standard_normal(shape).astype(dt)
    state = {name: (param0.copy(), vel0.copy()) for name in BACKENDS}
    results = {}
    for _ in range(3):
        grad = rng.standard_normal(shape).astype(dt)
        for name in BACKENDS:
            param, vel = state[name]
            before = grad.copy()
            with minicnn.use_backend(name):
                assert ops.sgd_update(param, grad, vel, lr, momentum, nesterov) is None
            np.testing.assert_array_equal(grad, before, err_msg=f"sgd_update modified grad on {name}")
            results[name] = (param.copy(), vel.copy())
        ref_param, ref_vel = results["reference"]
        floors = [norm(ref_param) + 2 * norm(ref_vel) + lr * norm(grad),
                  norm(ref_vel) + lr * norm(grad)]
        compare(results, dt, f"sgd_update(nesterov={nesterov})", error_log, ["param", "velocity"],
                floors)


# ----------------------------------------------------------------------------- memory layout
@pytest.mark.parametrize("op", ["relu", "sigmoid", "tanh", "linear", "softmax", "dropout"])
def test_elementwise_ops_accept_non_contiguous_inputs(backend, op, dtype):
    """A Fortran-ordered (or otherwise strided) input gives the same values as a C-ordered one."""
    rng = np.random.default_rng(5)
    x_c = rng.standard_normal((3, 4, 5)).astype(dtype)
    dy_c = rng.standard_normal((3, 4, 5)).astype(dtype)
    x_f, dy_f = np.asfortranarray(x_c), np.asfortranarray(dy_c)
    if op == "dropout":
        mask = rng.random(x_c.shape) >= 0.5
        expected = ops.dropout_forward(x_c, mask, 2.0)
        got = ops.dropout_forward(x_f, np.asfortranarray(mask), 2.0)
        np.testing.assert_array_equal(got, expected)
        return
    y_c = ops.activation_forward(op, x_c)
    np.testing.assert_array_equal(ops.activation_forward(op, x_f), y_c)
    strided = x_c[:, :, ::2]
    np.testing.assert_array_equal(ops.activation_forward(op, strided),
                                  ops.activation_forward(op, strided.copy()))
    np.testing.assert_array_equal(ops.activation_backward(op, x_f, np.asfortranarray(y_c), dy_f),
                                  ops.activation_backward(op, x_c, y_c, dy_c))


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "sgd_nesterov"])
def test_optimizer_ops_never_silently_skip_non_contiguous_params(backend, optimizer, dtype):
    """In-place updates of a non-C-contiguous parameter either work or raise ValueError."""
    rng = np.random.default_rng(6)
    param_c = rng.standard_normal((4, 3)).astype(dtype)
    grad = rng.standard_normal((4, 3)).astype(dtype)
    slots_c = [np.zeros_like(param_c), np.zeros_like(param_c)]
    param_f = np.asfortranarray(param_c)
    slots_f = [np.asfortranarray(s) for s in slots_c]

    def step(param, slots):
        if optimizer == "adam":
            ops.adam_update(param, grad, slots[0], slots[1], 0.1, 0.9, 0.999, 1e-7, 1)
        else:
            ops.sgd_update(param, grad, slots[0], 0.1, 0.9, optimizer == "sgd_nesterov")

    step(param_c, slots_c)
    try:
        step(param_f, slots_f)
    except ValueError:
        return                                    # refusing loudly is fine
    np.testing.assert_allclose(param_f, param_c, rtol=TOL[np.dtype(dtype)],
                               err_msg=f"{optimizer} on {backend} did not update a Fortran-ordered param")
    np.testing.assert_allclose(slots_f[0], slots_c[0], rtol=TOL[np.dtype(dtype)])


# ----------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("size,k,s,padding,expected", [
    (7, 3, 2, "same", (4, 1, 1)), (7, 2, 2, "same", (4, 0, 1)), (8, 3, 2, "same", (4, 0, 1)),
    (5, 1, 3, "same", (2, 0, 0)), (5, 5, 1, "same", (5, 2, 2)), (6, 4, 1, "same", (6, 1, 2)),
    (7, 3, 2, "valid", (3, 0, 0)), (5, 5, 1, "valid", (1, 0, 0)), (9, 2, 3, "valid", (3, 0, 0))])
def test_conv_out_size_tensorflow_rules(size, k, s, padding, expected):
    assert ops.conv_out_size(size, k, s, padding) == expected
    oh, ow, pads = ops.conv_geometry(size, size + 1, k, 1, s, 1, padding)
    assert (oh, pads[0], pads[1]) == expected


# ----------------------------------------------------------------------------- numba signatures
_FLOAT32_RUN = r"""
import importlib
import json
import pkgutil
import numba
import numpy as np
import minicnn
from minicnn import ops
from minicnn.ops import _kernels

rng = np.random.default_rng(0)
f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)
minicnn.set_backend("numba")
x, k, b = f32(2, 6, 6, 3), f32(3, 3, 3, 4), f32(4)
for relu in (False, True):
    y = ops.conv2d_forward(x, k, b, (1, 1), (0, 0, 0, 0), relu)
    for need_dx in (True, False):
        ops.conv2d_backward(x, k, f32(*y.shape), (1, 1), (0, 0, 0, 0), need_dx,
                            y if relu else None)
for relu in (False, True):
    y = ops.winograd_conv2d_forward(x, k, b, (1, 1, 1, 1), relu)
    for need_dx in (True, False):
        ops.winograd_conv2d_backward(x, k, f32(*y.shape), (1, 1, 1, 1), need_dx,
                                     y if relu else None)
for winograd in (False, True):   # a batch norm after the convolution (ConvBatchNorm)
    z = (ops.winograd_conv2d_forward(x, k, None, (1, 1, 1, 1)) if winograd
         else ops.conv2d_forward(x, k, None, (1, 1), (0, 0, 0, 0)))
    g, bt, dz = f32(4), f32(4), f32(*z.shape)
    _, mean, _, inv_std = ops.batchnorm_relu_train_forward(z, g, bt, 1e-3)
    _, dg, dbt = ops.batchnorm_relu_backward(dz, z, g, bt, mean, inv_std, need_dx=False)
    spec = ops.BatchNormGradient(z, g, bt, mean, inv_std, dg, dbt, True)
    if winograd:
        ops.winograd_conv2d_backward(x, k, dz, (1, 1, 1, 1), True, bn=spec)
    else:
        ops.conv2d_backward(x, k, dz, (1, 1), (0, 0, 0, 0), True, bn=spec)
ops.winograd_conv2d_relu_maxpool_forward(x, k, b, (1, 1, 1, 1))
for relu in (False, True):
    ops.winograd4_conv2d_forward(x, k, b, (1, 1, 1, 1), relu)
ops.winograd4_conv2d_relu_maxpool_forward(x, k, b, (1, 1, 1, 1))
ops.winograd4_conv2d_relu_maxpool_forward(x, k, b, (1, 1, 1, 1), need_argmax=False)
ops.conv2d_relu_maxpool_forward(x, k, b, (1, 1), (0, 0, 0, 0), need_argmax=False)
yp, arg = ops.conv2d_relu_maxpool_forward(x, k, b, (1, 1), (0, 0, 0, 0))
for need_dx in (True, False):
    ops.conv2d_relu_maxpool_backward(x, k, f32(*yp.shape), yp, arg, (1, 1), (0, 0, 0, 0), need_dx)
yp, arg = ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0, 0, 0))
ops.maxpool2d_backward(f32(*yp.shape), arg, x.shape, (2, 2), (2, 2), (0, 0, 0, 0))
xd, kd = f32(3, 5), f32(5, 4)
ops.dense_forward(xd, kd, f32(4))
for need_dx in (True, False):
    ops.dense_backward(xd, kd, f32(3, 4), need_dx)
for name in ("relu", "sigmoid", "tanh", "linear", "softmax", "gelu", "swish", "elu",
             "leaky_relu"):
    ya = ops.activation_forward(name, xd)
    ops.activation_backward(name, xd, ya, f32(3, 5))
ops.leaky_relu_backward(xd, f32(3, 5), 0.3)
ops.leaky_relu_forward(xd, 0.3)
for pool, strides, pads in (((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (1, 1), (1, 1, 1, 1))):
    ya = ops.avgpool2d_forward(x, pool, strides, pads)
    ops.avgpool2d_backward(f32(*ya.shape), x.shape, pool, strides, pads)
ops.global_avgpool_backward(ops.global_avgpool_forward(x), x.shape)
yg, argg = ops.global_maxpool_forward(x)
ops.global_maxpool_backward(yg, argg, x.shape)
for xb in (xd, x):
    gamma, beta = f32(xb.shape[-1]), f32(xb.shape[-1])
    yb, mean, var, xhat, inv_std = ops.batchnorm_train_forward(xb, gamma, beta, 1e-3)
    ops.batchnorm_train_forward(xb, None, None, 1e-3)
    ops.batchnorm_inference_forward(xb, gamma, beta, mean, var, 1e-3)
    ops.batchnorm_backward(f32(*xb.shape), xhat, gamma, inv_std)
    for relu in (True, False):
        _, mean, _, inv_std = ops.batchnorm_relu_train_forward(xb, gamma, beta, 1e-3, relu)
        ops.batchnorm_relu_backward(f32(*xb.shape), xb, gamma, beta, mean, inv_std, relu)
for conv in (lambda: ops.conv2d_forward(x, f32(3, 3, x.shape[3], 2), None, (1, 1),
                                        (1, 1, 1, 1), moments=True),
             lambda: ops.winograd4_conv2d_forward(x, f32(3, 3, x.shape[3], 2), None,
                                                  (1, 1, 1, 1), moments=True)):
    yc, *moments = conv()           # the statistics of a batch norm after the convolution
    ops.batchnorm_relu_train_forward(yc, None, None, 1e-3, moments=moments)
ops.add_forward(x, x)
ops.add_relu_forward(x, x)
ops.softmax_cross_entropy(xd, np.eye(5, dtype=np.float32)[[0, 1, 2]], False)
ops.softmax_cross_entropy(xd, np.array([0, 1, 2]), True)
ops.dropout_forward(xd, rng.random((3, 5)) > 0.5, 2.0)
p, g = f32(7), f32(7)
ops.adam_update(p, g, np.zeros_like(p), np.zeros_like(p), 1e-3, 0.9, 0.999, 1e-7, 1)
for nesterov in (False, True):
    ops.sgd_update(p, g, np.zeros_like(p), 0.01, 0.9, nesterov)
out = {}
modules = [importlib.import_module(f"{_kernels.__name__}.{m.name}")
           for m in pkgutil.iter_modules(_kernels.__path__)]
for module in modules:
    family = module.__name__.rsplit(".", 1)[1]
    for name in dir(module):
        obj = getattr(module, name)
        # a kernel imported from a sibling module is listed once, under its own module
        if (isinstance(obj, numba.core.dispatcher.Dispatcher)
                and obj.py_func.__module__ == module.__name__):
            out[f"{family}.{name}"] = [[str(t) for t in sig] for sig in obj.signatures]
print(json.dumps(out))
"""

#: float64 by design for float32 data: the batch-statistics accumulators (float64 sums of
#: the float32 values, minicnn/ops/_kernels/norm.py), at these argument positions only
FLOAT64_ACCUMULATORS = {"norm._image_moments": {1}, "norm.merge_moments": {0, 1},
                        "norm.batchnorm_relu_train_forward": {3, 4},
                        "conv.conv2d_forward": {18}, "winograd4.winograd4_forward": {14}}


def float64_outside_accumulators(name, sig):
    """Argument positions of ``sig`` (type strings) holding float64 where
    :data:`FLOAT64_ACCUMULATORS` allows none."""
    return {i for i, t in enumerate(sig) if "float64" in t} - FLOAT64_ACCUMULATORS.get(name,
                                                                                      set())


def test_numba_kernels_compile_only_float32_signatures_for_float32_data():
    """Run float32 data through every numba wrapper in a fresh process (other tests here
    compile float64 versions too) and read back the signatures each kernel compiled: a
    Python float reaching a kernel next to float32 arrays would show up as float64."""
    proc = subprocess.run([sys.executable, "-c", _FLOAT32_RUN], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    signatures = json.loads(proc.stdout.strip().splitlines()[-1])
    public = [name for name in signatures if not name.split(".")[1].startswith("_")]
    assert len(public) >= 20, sorted(signatures)
    not_run = [name for name in public if not signatures[name]]
    assert not not_run, f"kernels the float32 run did not reach: {not_run}"
    with_float64 = {name: sigs for name, sigs in signatures.items()
                    if any(float64_outside_accumulators(name, sig) for sig in sigs)}
    assert not with_float64, f"float64 signatures compiled for float32 data: {with_float64}"
    data = [[t for i, t in enumerate(sig) if i not in FLOAT64_ACCUMULATORS.get(name, set())]
            for name, sigs in signatures.items() for sig in sigs]
    float_sigs = [" ".join(d) for d in data if "array(float" in " ".join(d).lower()]
    assert float_sigs and all("float32" in sig for sig in float_sigs)
