"""Batch normalisation, average pooling, global pooling and max pooling with any window.

The three backends agree on hypothesis-drawn shapes (relative error below 1e-9 in
float64 and 1e-5 in float32, as in ``test_ops_backends.py``, whose helpers this file
uses), no op modifies its inputs, and every backward matches float64 finite
differences of ``L = sum(forward(...) * r)`` for a random ``r`` (relative error below
1e-6). PyTorch parity is in ``test_ops_torch_parity.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_ops_backends import (BACKENDS, DTYPE_NAMES, SEEDS, TOL, check_grad, compare,
                               distinct_values, first_argmax_dx, layout, norm, rel_err,
                               run_backends)

import minicnn
from minicnn import ops
from minicnn.ops import reference


# ============================================================================= batch normalisation
@st.composite
def bn_cases(draw):
    # (n, c) after Dense or (n, h, w, c) after Conv2D; at least 2 values per channel
    rank = draw(st.sampled_from([2, 4]))
    c = draw(st.integers(1, 5))
    lead = (draw(st.integers(2, 6)),) if rank == 2 else (draw(st.integers(1, 3)),
                                                         draw(st.integers(1, 4)),
                                                         draw(st.integers(1, 4)))
    if int(np.prod(lead)) < 2:
        lead = (2,) + lead[1:]
    return dict(shape=lead + (c,),
                affine=draw(st.sampled_from(["both", "none", "gamma", "beta"])),
                epsilon=draw(st.sampled_from([1e-3, 1e-5])),
                shift=draw(st.sampled_from([0.0, 5.0])),
                fortran=draw(st.booleans()), dtype=draw(DTYPE_NAMES), seed=draw(SEEDS))


def bn_params(rng, c, affine, dt):
    gamma = rng.standard_normal(c).astype(dt) if affine in ("both", "gamma") else None
    beta = rng.standard_normal(c).astype(dt) if affine in ("both", "beta") else None
    return gamma, beta


@settings(max_examples=40, deadline=None, database=None)
@given(case=bn_cases())
@example(case=dict(shape=(2, 1), affine="both", epsilon=1e-3, shift=0.0, fortran=False,
                   dtype="float32", seed=0))
@example(case=dict(shape=(3, 5, 4, 6), affine="none", epsilon=1e-5, shift=5.0, fortran=True,
                   dtype="float32", seed=1))
def test_batchnorm_backends_agree(case, error_log):
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    shape, c = case["shape"], case["shape"][-1]
    x = layout((rng.standard_normal(shape) * 2 + case["shift"]).astype(dt), case["fortran"])
    gamma, beta = bn_params(rng, c, case["affine"], dt)
    eps = case["epsilon"]

    fwd = run_backends("batchnorm_train_forward", x, gamma, beta, eps)
    compare(fwd, dt, "batchnorm_train_forward", error_log,
            ["y", "mean", "var", "xhat", "inv_std"])
    y, mean, var, xhat, inv_std = fwd["reference"]
    assert y.shape == x.shape and xhat.shape == x.shape
    assert mean.shape == var.shape == inv_std.shape == (c,)
    axes = tuple(range(x.ndim - 1))
    x64 = x.astype(np.float64)
    assert rel_err(mean, x64.mean(axis=axes), norm(x64) / np.sqrt(x64.size / c)) < TOL[dt]
    # the biased variance, against float64 NumPy: in float32 the two passes round the
    # mean and then m squared deviations, a few ulps more than one rounded sum
    assert rel_err(var, x64.var(axis=axes)) < 10 * TOL[dt]

    inf = run_backends("batchnorm_inference_forward", x, gamma, beta, mean, var, eps)
    compare(inf, dt, "batchnorm_inference_forward", error_log)
    # the batch's own statistics give back the training output (up to the rounding of
    # inv_std and of the two evaluation orders)
    assert rel_err(inf["reference"], y) < 10 * TOL[dt]

    dy = layout(rng.standard_normal(shape).astype(dt), case["fortran"])
    bwd = run_backends("batchnorm_backward", dy, xhat, gamma, inv_std)
    # dx is a difference of terms of size inv_std * |dxhat|: measure against them
    g = np.ones(c) if gamma is None else gamma.astype(np.float64)
    floor = norm(np.abs(dy.astype(np.float64) * g) * inv_std.astype(np.float64)) * 3
    compare(bwd, dt, "batchnorm_backward", error_log, ["dx", "dgamma", "dbeta"],
            [floor, norm(dy) * np.sqrt(c), norm(dy) * np.sqrt(c)])


@pytest.mark.parametrize("shape", [(5, 3), (2, 3, 4, 2), (1, 1, 3, 1)])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_batchnorm_staged_graph_backward_equals_closed_form(shape, with_gamma):
    rng = np.random.default_rng(7)
    x = rng.standard_normal(shape) * 3 + 1
    gamma = rng.standard_normal(shape[-1]) if with_gamma else None
    dy = rng.standard_normal(shape)
    _, _, _, xhat, inv_std = reference.batchnorm_train_forward(x, gamma, None, 1e-3)
    closed = reference.batchnorm_backward(dy, xhat, gamma, inv_std)
    staged = reference.batchnorm_backward_graph(dy, x, gamma, 1e-3)
    for part, a, b in zip(("dx", "dgamma", "dbeta"), closed, staged):
        assert rel_err(a, b) < 1e-12, part


def test_batchnorm_output_is_normalised_and_missing_gamma_beta_mean_one_and_zero(backend):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 3, 3, 2)) * 5 + 3
    y, mean, var, xhat, inv_std = ops.batchnorm_train_forward(x, None, None, 1e-8)
    np.testing.assert_allclose(y, xhat, rtol=0, atol=0)
    np.testing.assert_allclose(y.reshape(-1, 2).mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.reshape(-1, 2).var(axis=0), 1, rtol=1e-6)
    gamma, beta = np.array([2.0, -1.0]), np.array([0.5, 3.0])
    y2 = ops.batchnorm_train_forward(x, gamma, beta, 1e-8)[0]
    np.testing.assert_allclose(y2, gamma * xhat + beta, rtol=1e-14)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(var + 1e-8), rtol=1e-14)
    # a constant channel: var 0, xhat 0, no NaN
    z = np.ones((3, 2))
    yz, _, vz, _, _ = ops.batchnorm_train_forward(z, None, None, 1e-3)
    assert np.all(vz == 0) and np.all(yz == 0)


@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
@pytest.mark.parametrize("with_gamma", [True, False])
def test_batchnorm_gradients_match_finite_differences(backend, error_log, shape, with_gamma):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape) * 2 + 0.5
    c = shape[-1]
    gamma = rng.standard_normal(c) if with_gamma else None
    beta = rng.standard_normal(c)
    r = rng.standard_normal(shape)
    eps = 1e-3
    _, _, _, xhat, inv_std = ops.batchnorm_train_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = ops.batchnorm_backward(r, xhat, gamma, inv_std)

    def loss(xv, g=gamma, b=beta):
        return np.sum(ops.batchnorm_train_forward(xv, g, b, eps)[0] * r)

    check_grad("batchnorm dx", dx, loss, x, error_log, backend)
    g0 = np.ones(c) if gamma is None else gamma
    check_grad("batchnorm dgamma", dgamma, lambda gv: loss(x, g=gv), g0, error_log, backend)
    check_grad("batchnorm dbeta", dbeta, lambda bv: loss(x, b=bv), beta, error_log, backend)


def test_batchnorm_inference_uses_the_given_statistics(backend):
    x = np.array([[1.0, 2.0], [3.0, 6.0]])
    y = ops.batchnorm_inference_forward(x, np.array([2.0, 1.0]), np.array([0.0, 1.0]),
                                        np.array([1.0, 2.0]), np.array([4.0, 16.0]), 0.0)
    np.testing.assert_allclose(y, [[0.0, 1.0], [2.0, 2.0]], rtol=1e-15)


# ============================================================================= pooling cases
@st.composite
def window_cases(draw):
    padding = draw(st.sampled_from(["same", "valid"]))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lo_h = ph if padding == "valid" else 1
    lo_w = pw if padding == "valid" else 1
    return dict(n=draw(st.integers(1, 3)), h=draw(st.integers(lo_h, lo_h + 6)),
                w=draw(st.integers(lo_w, lo_w + 6)), c=draw(st.integers(1, 4)), ph=ph, pw=pw,
                sh=draw(st.integers(1, 3)), sw=draw(st.integers(1, 3)), padding=padding,
                fortran=draw(st.booleans()), dtype=draw(DTYPE_NAMES), seed=draw(SEEDS))


def window_case(n, h, w, c, ph, pw, sh, sw, padding, dtype="float64", seed=0):
    return dict(n=n, h=h, w=w, c=c, ph=ph, pw=pw, sh=sh, sw=sw, padding=padding, fortran=False,
                dtype=dtype, seed=seed)


def geometry(case):
    pool, strides = (case["ph"], case["pw"]), (case["sh"], case["sw"])
    oh, ow, pads = ops.conv_geometry(case["h"], case["w"], *pool, *strides, case["padding"])
    return pool, strides, pads, oh, ow


# ============================================================================= average pooling
@settings(max_examples=40, deadline=None, database=None)
@given(case=window_cases())
@example(case=window_case(1, 7, 7, 2, 3, 3, 1, 1, "same", "float32"))     # 3x3/1 'same'
@example(case=window_case(2, 7, 6, 1, 3, 3, 2, 2, "valid"))               # overlapping 'valid'
@example(case=window_case(1, 6, 5, 3, 2, 2, 2, 2, "same"))                # pads (0, 1) at the end
def test_avgpool2d_backends_agree(case, error_log):
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    n, h, w, c = (case[k] for k in "nhwc")
    pool, strides, pads, oh, ow = geometry(case)
    x = layout(rng.standard_normal((n, h, w, c)).astype(dt), case["fortran"])
    dy = layout(rng.standard_normal((n, oh, ow, c)).astype(dt), case["fortran"])
    fwd = run_backends("avgpool2d_forward", x, pool, strides, pads)
    compare(fwd, dt, "avgpool2d_forward", error_log)
    assert fwd["reference"].shape == (n, oh, ow, c)
    bwd = run_backends("avgpool2d_backward", dy, x.shape, pool, strides, pads)
    compare(bwd, dt, "avgpool2d_backward", error_log)
    assert bwd["reference"].shape == x.shape
    # every dy is shared out whole among positions inside the image
    assert rel_err(bwd["reference"].sum(), dy.astype(np.float64).sum(),
                   norm(dy) * np.sqrt(dy.size)) < TOL[dt]


def test_avgpool2d_same_excludes_padding_from_the_count(backend):
    """3x3 stride 1 'same' on a 3x3 image of ones: every output is 1 (a zero-padded count
    would give 4/9 at the corners and 6/9 at the edges)."""
    x = np.arange(9.0).reshape(1, 3, 3, 1)
    oh, ow, pads = ops.conv_geometry(3, 3, 3, 3, 1, 1, "same")
    assert pads == (1, 1, 1, 1)
    np.testing.assert_array_equal(ops.avgpool2d_forward(np.ones_like(x), (3, 3), (1, 1), pads),
                                  np.ones((1, 3, 3, 1)))
    y = ops.avgpool2d_forward(x, (3, 3), (1, 1), pads)[0, :, :, 0]
    np.testing.assert_allclose(y[0, 0], (0 + 1 + 3 + 4) / 4, rtol=1e-15)
    np.testing.assert_allclose(y[0, 1], (0 + 1 + 2 + 3 + 4 + 5) / 6, rtol=1e-15)
    np.testing.assert_allclose(y[1, 1], 4.0, rtol=1e-15)
    # 2x2 stride 2 'same' on 3x3: the padding is one row and column at the end
    _, _, pads2 = ops.conv_geometry(3, 3, 2, 2, 2, 2, "same")
    assert pads2 == (0, 1, 0, 1)
    y2 = ops.avgpool2d_forward(x, (2, 2), (2, 2), pads2)[0, :, :, 0]
    np.testing.assert_allclose(y2, [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2], [(6 + 7) / 2, 8]],
                               rtol=1e-15)
    dx = ops.avgpool2d_backward(np.ones((1, 2, 2, 1)), x.shape, (2, 2), (2, 2), pads2)
    np.testing.assert_allclose(dx[0, :, :, 0], [[0.25, 0.25, 0.5], [0.25, 0.25, 0.5],
                                                [0.5, 0.5, 1.0]], rtol=1e-15)


@pytest.mark.parametrize("pool,strides,padding", [
    ((3, 3), (1, 1), "same"), ((3, 3), (2, 2), "valid"), ((2, 3), (2, 1), "same"),
    ((2, 2), (3, 3), "valid")])
def test_avgpool2d_gradients_match_finite_differences(backend, error_log, pool, strides, padding):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, 5, 6, 2))
    oh, ow, pads = ops.conv_geometry(5, 6, *pool, *strides, padding)
    r = rng.standard_normal((2, oh, ow, 2))
    dx = ops.avgpool2d_backward(r, x.shape, pool, strides, pads)
    check_grad("avgpool2d dx", dx,
               lambda xv: np.sum(ops.avgpool2d_forward(xv, pool, strides, pads) * r), x,
               error_log, backend)


# ============================================================================= global pooling
@settings(max_examples=30, deadline=None, database=None)
@given(n=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), c=st.integers(1, 5),
       fortran=st.booleans(), dtype=DTYPE_NAMES, seed=SEEDS)
@example(n=1, h=1, w=1, c=1, fortran=False, dtype="float32", seed=0)
def test_global_pooling_backends_agree(n, h, w, c, fortran, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = layout(distinct_values(rng, (n, h, w, c), dt), fortran)
    dy = rng.standard_normal((n, c)).astype(dt)
    avg = run_backends("global_avgpool_forward", x)
    compare(avg, dt, "global_avgpool_forward", error_log,
            floors=[norm(np.abs(x)) / np.sqrt(h * w)])
    assert avg["reference"].shape == (n, c)
    compare(run_backends("global_avgpool_backward", dy, x.shape), dt, "global_avgpool_backward",
            error_log)

    mx = run_backends("global_maxpool_forward", x)
    compare({k: v[0] for k, v in mx.items()}, dt, "global_maxpool_forward", error_log)
    y, arg = mx["reference"]
    np.testing.assert_array_equal(y, x.max(axis=(1, 2)))
    for name in BACKENDS:
        assert mx[name][1].dtype == np.int32
        np.testing.assert_array_equal(mx[name][1], arg, err_msg=name)
    np.testing.assert_array_equal(arg, x.reshape(n, h * w, c).argmax(axis=1))
    bwd = run_backends("global_maxpool_backward", dy, arg, x.shape)
    compare(bwd, dt, "global_maxpool_backward", error_log)
    assert bwd["reference"].shape == x.shape


def test_global_maxpool_ties_go_to_the_first_maximum_and_nan_wins(backend):
    x = np.zeros((1, 2, 3, 3))
    x[0, 0, 1, 0] = x[0, 1, 2, 0] = 5.0        # a tie: (0, 1) comes first
    x[0, :, :, 1] = -1.0                       # all tied: the first position
    x[0, 1, 0, 2] = np.nan
    x[0, 1, 1, 2] = 7.0                        # after the NaN: the NaN still wins
    y, arg = ops.global_maxpool_forward(x)
    np.testing.assert_array_equal(arg, [[1, 0, 3]])
    np.testing.assert_array_equal(y, [[5.0, -1.0, np.nan]])
    dx = ops.global_maxpool_backward(np.array([[1.0, 2.0, 3.0]]), arg, x.shape)
    expected = np.zeros_like(x)
    expected[0, 0, 1, 0], expected[0, 0, 0, 1], expected[0, 1, 0, 2] = 1.0, 2.0, 3.0
    np.testing.assert_array_equal(dx, expected)


def test_global_pooling_gradients_match_finite_differences(backend, error_log):
    rng = np.random.default_rng(11)
    x = distinct_values(rng, (2, 3, 4, 3), np.float64) + 0.01 * rng.standard_normal((2, 3, 4, 3))
    r = rng.standard_normal((2, 3))
    check_grad("global_avgpool dx", ops.global_avgpool_backward(r, x.shape),
               lambda xv: np.sum(ops.global_avgpool_forward(xv) * r), x, error_log, backend)
    _, arg = ops.global_maxpool_forward(x)
    check_grad("global_maxpool dx", ops.global_maxpool_backward(r, arg, x.shape),
               lambda xv: np.sum(ops.global_maxpool_forward(xv)[0] * r), x, error_log, backend)


# ============================================================================= max pooling, any
@settings(max_examples=50, deadline=None, database=None)
@given(case=window_cases(), ties=st.booleans())
@example(case=window_case(1, 7, 7, 2, 3, 3, 1, 1, "same"), ties=True)     # 3x3/1 'same'
@example(case=window_case(2, 7, 8, 1, 3, 3, 2, 2, "valid"), ties=True)    # 3x3/2 'valid'
@example(case=window_case(1, 5, 5, 2, 3, 2, 1, 3, "same", "float32"), ties=False)
def test_maxpool2d_any_window_routes_to_the_first_maximum(case, ties):
    """Pools 1-3, strides 1-3 (overlapping windows when the stride is below the pool),
    both paddings, with and without ties: every backend's dx is the brute-force routing
    of each dy to the first maximum of its window inside the image, added up where windows
    overlap."""
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    n, h, w, c = (case[k] for k in "nhwc")
    pool, strides, pads, oh, ow = geometry(case)
    if ties:   # few distinct values, all negative: a zero-padded border would win
        x = rng.integers(-3, -1, size=(n, h, w, c)).astype(dt)
    else:
        x = distinct_values(rng, (n, h, w, c), dt)
    x = layout(x, case["fortran"])
    dy = rng.integers(1, 5, size=(n, oh, ow, c)).astype(dt)
    expected = first_argmax_dx(x, dy, pool, strides, pads)
    for name in BACKENDS:
        with minicnn.use_backend(name):
            y, arg = ops.maxpool2d_forward(x, pool, strides, pads)
            dx = ops.maxpool2d_backward(dy, arg, x.shape, pool, strides, pads)
        assert y.dtype == dt and dx.dtype == dt
        assert np.all((arg >= 0) & (arg < pool[0] * pool[1])), name
        np.testing.assert_array_equal(dx, expected, err_msg=name)   # integers: exact
        assert dx.sum() == dy.sum()


@pytest.mark.parametrize("padding", ["same", "valid"])
def test_maxpool2d_padding_never_wins_against_minus_infinity(backend, padding):
    """A window whose numbers inside the image are all -inf: its -inf padding ties with
    them, and the first -inf inside the image must win (a padded winner would send the
    gradient into the padding, where it is lost)."""
    x = np.full((1, 3, 3, 1), -np.inf)
    x[0, 2, 2, 0] = 1.0
    _, _, pads = ops.conv_geometry(3, 3, 3, 3, 1, 1, padding)
    y, arg = ops.maxpool2d_forward(x, (3, 3), (1, 1), pads)
    dy = np.ones_like(y)
    dx = ops.maxpool2d_backward(dy, arg, x.shape, (3, 3), (1, 1), pads)
    np.testing.assert_array_equal(dx, first_argmax_dx(x, dy, (3, 3), (1, 1), pads))
    assert dx.sum() == dy.sum()
    if padding == "same":
        assert y[0, 0, 0, 0] == -np.inf and arg[0, 0, 0, 0] == 4     # (1, 1): x[0, 0]


@pytest.mark.parametrize("pool,strides,padding", [
    ((3, 3), (1, 1), "same"), ((3, 3), (2, 2), "valid"), ((2, 3), (1, 2), "same"),
    ((1, 1), (2, 2), "valid")])
def test_maxpool2d_gradients_match_finite_differences(backend, error_log, pool, strides, padding):
    rng = np.random.default_rng(12)
    x = distinct_values(rng, (2, 5, 6, 2), np.float64)     # spaced 0.25: no winner changes
    oh, ow, pads = ops.conv_geometry(5, 6, *pool, *strides, padding)
    r = rng.standard_normal((2, oh, ow, 2))
    _, arg = ops.maxpool2d_forward(x, pool, strides, pads)
    dx = ops.maxpool2d_backward(r, arg, x.shape, pool, strides, pads)
    check_grad("maxpool2d dx", dx,
               lambda xv: np.sum(ops.maxpool2d_forward(xv, pool, strides, pads)[0] * r), x,
               error_log, backend)
