"""The ops added for issue 11 against PyTorch autograd, float64, on every backend.

Forward values and every gradient, each from a random upstream gradient ``r`` (the
backward of ``sum(y * r)``), compared by the max-norm relative error
``max|got - expected| / max|expected|`` below 1e-6 (as ``test_torch_parity.py``).
Layouts: minicnn is NHWC, torch NCHW (permuted here). TensorFlow's 'same' padding may
put one more row or column at the bottom/right than at the top/left; the torch twins
pad explicitly with ``F.pad`` (-inf for max-pooling; for average pooling the padded sum
is divided by the pooled count of ones, which excludes the padding), so every
geometry is covered, and ``count_include_pad=False`` is checked where the padding is
symmetric.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
F = torch.nn.functional

from test_ops_backends import SEEDS, distinct_values  # noqa: E402

import minicnn  # noqa: E402
from minicnn import ops  # noqa: E402

TOL = 1e-6
BACKENDS = ("reference", "numpy", "numba")


def assert_close(label, got, expected, error_log):
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{label}: shape {got.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    err = 0.0 if scale == 0 else float(np.abs(got - expected).max() / scale)
    error_log.record("torch parity (max-norm relative)", err)
    assert err < TOL, f"{label}: relative error {err:.3e} against torch"


def nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), dtype=torch.float64,
                        requires_grad=True)


def to_nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def upstream(yt, r_nhwc):
    """Backpropagate ``sum(yt * r)`` with ``r`` given NHWC (or 2-D)."""
    r = r_nhwc.transpose(0, 3, 1, 2) if r_nhwc.ndim == 4 else r_nhwc
    (yt * torch.tensor(np.ascontiguousarray(r))).sum().backward()


# ============================================================================= batch normalisation
@pytest.mark.parametrize("shape", [(6, 4), (3, 5, 4, 3), (2, 1, 1, 2), (1, 3, 5, 1)])
@pytest.mark.parametrize("affine", [True, False])
def test_batchnorm_matches_torch(backend, error_log, shape, affine):
    rng = np.random.default_rng(20)
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + 2
    gamma = rng.standard_normal(c) if affine else None
    beta = rng.standard_normal(c) if affine else None
    eps = 1e-3
    y, mean, var, xhat, inv_std = ops.batchnorm_train_forward(x, gamma, beta, eps)
    r = rng.standard_normal(shape)
    dx, dgamma, dbeta = ops.batchnorm_backward(r, xhat, gamma, inv_std)

    xt = nchw(x) if x.ndim == 4 else torch.tensor(x, requires_grad=True)
    gt = torch.tensor(gamma if affine else np.ones(c), requires_grad=True)
    bt = torch.tensor(beta if affine else np.zeros(c), requires_grad=True)
    yt = F.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    upstream(yt, r)
    dims = (0, 2, 3) if x.ndim == 4 else (0,)
    var_t, mean_t = torch.var_mean(xt.detach(), dim=dims, unbiased=False)
    to_np = to_nhwc if x.ndim == 4 else (lambda t: t.detach().numpy())
    assert_close("y", y, to_np(yt), error_log)
    assert_close("mean", mean, mean_t.numpy(), error_log)
    assert_close("var (biased)", var, var_t.numpy(), error_log)
    assert_close("dx", dx, to_np(xt.grad), error_log)
    assert_close("dgamma", dgamma, gt.grad.numpy(), error_log)
    assert_close("dbeta", dbeta, bt.grad.numpy(), error_log)

    # inference with the batch statistics: torch's eval mode with them as running stats
    y_inf = ops.batchnorm_inference_forward(x, gamma, beta, mean, var, eps)
    yt_inf = F.batch_norm(xt.detach(), torch.tensor(mean), torch.tensor(var), gt.detach(),
                          bt.detach(), training=False, eps=eps)
    assert_close("y (inference)", y_inf, to_np(yt_inf), error_log)


# ============================================================================= pooling geometry
@st.composite
def window_cases(draw):
    padding = draw(st.sampled_from(["same", "valid"]))
    ph, pw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lo_h = ph if padding == "valid" else 1
    lo_w = pw if padding == "valid" else 1
    return dict(n=draw(st.integers(1, 2)), h=draw(st.integers(lo_h, lo_h + 5)),
                w=draw(st.integers(lo_w, lo_w + 5)), c=draw(st.integers(1, 3)), pool=(ph, pw),
                strides=(draw(st.integers(1, 3)), draw(st.integers(1, 3))), padding=padding,
                seed=draw(SEEDS))


def case_of(n, h, w, c, pool, strides, padding, seed=0):
    return dict(n=n, h=h, w=w, c=c, pool=pool, strides=strides, padding=padding, seed=seed)


def geometry(case):
    oh, ow, pads = ops.conv_geometry(case["h"], case["w"], *case["pool"], *case["strides"],
                                     case["padding"])
    return oh, ow, pads


def torch_pad(pads):
    pt, pb, pl, pr = pads
    return (pl, pr, pt, pb)


# ============================================================================= max pooling
@settings(max_examples=30, deadline=None, database=None)
@given(case=window_cases())
@example(case=case_of(2, 7, 7, 2, (3, 3), (1, 1), "same"))
@example(case=case_of(1, 8, 7, 2, (3, 3), (2, 2), "valid"))
@example(case=case_of(1, 6, 5, 1, (2, 2), (1, 1), "same"))     # pads (0, 1): asymmetric
def test_maxpool2d_any_window_matches_torch(error_log, case):
    rng = np.random.default_rng(case["seed"])
    x = distinct_values(rng, (case["n"], case["h"], case["w"], case["c"]), np.float64)
    oh, ow, pads = geometry(case)
    r = rng.standard_normal((case["n"], oh, ow, case["c"]))
    xt = nchw(x)
    yt = F.max_pool2d(F.pad(xt, torch_pad(pads), value=-np.inf), case["pool"], case["strides"])
    upstream(yt, r)
    for name in BACKENDS:
        with minicnn.use_backend(name):
            y, arg = ops.maxpool2d_forward(x, case["pool"], case["strides"], pads)
            dx = ops.maxpool2d_backward(r, arg, x.shape, case["pool"], case["strides"], pads)
        assert_close(f"y on {name}", y, to_nhwc(yt), error_log)
        assert_close(f"dx on {name}", dx, to_nhwc(xt.grad), error_log)


# ============================================================================= average pooling
@settings(max_examples=30, deadline=None, database=None)
@given(case=window_cases())
@example(case=case_of(2, 7, 7, 2, (3, 3), (1, 1), "same"))
@example(case=case_of(1, 7, 6, 2, (2, 2), (2, 2), "same"))     # pads (0, 1, 0, 0)
@example(case=case_of(1, 8, 7, 2, (3, 3), (2, 2), "valid"))
def test_avgpool2d_matches_torch(error_log, case):
    """'valid' against ``avg_pool2d``; any padding against the zero-padded window sum
    divided by the same sum over an image of ones (the count inside the image)."""
    rng = np.random.default_rng(case["seed"])
    x = rng.standard_normal((case["n"], case["h"], case["w"], case["c"]))
    oh, ow, pads = geometry(case)
    pool, strides = case["pool"], case["strides"]
    r = rng.standard_normal((case["n"], oh, ow, case["c"]))
    xt = nchw(x)
    if case["padding"] == "valid":
        yt = F.avg_pool2d(xt, pool, strides)
    else:
        padded = F.pad(xt, torch_pad(pads))
        counts = F.avg_pool2d(F.pad(torch.ones_like(xt), torch_pad(pads)), pool, strides)
        yt = F.avg_pool2d(padded, pool, strides) / counts
    upstream(yt, r)
    for name in BACKENDS:
        with minicnn.use_backend(name):
            y = ops.avgpool2d_forward(x, pool, strides, pads)
            dx = ops.avgpool2d_backward(r, x.shape, pool, strides, pads)
        assert_close(f"y on {name}", y, to_nhwc(yt), error_log)
        assert_close(f"dx on {name}", dx, to_nhwc(xt.grad), error_log)


@pytest.mark.parametrize("pool,strides,shape", [
    ((3, 3), (1, 1), (7, 6)), ((3, 3), (2, 2), (7, 7)), ((3, 1), (1, 1), (5, 4))])
def test_avgpool2d_same_matches_torch_count_include_pad_false(backend, error_log, pool, strides,
                                                              shape):
    h, w = shape
    oh, ow, pads = ops.conv_geometry(h, w, *pool, *strides, "same")
    assert pads[0] == pads[1] and pads[2] == pads[3], "this check needs symmetric padding"
    rng = np.random.default_rng(21)
    x = rng.standard_normal((2, h, w, 3))
    r = rng.standard_normal((2, oh, ow, 3))
    y = ops.avgpool2d_forward(x, pool, strides, pads)
    dx = ops.avgpool2d_backward(r, x.shape, pool, strides, pads)
    xt = nchw(x)
    yt = F.avg_pool2d(xt, pool, strides, padding=(pads[0], pads[2]), count_include_pad=False)
    upstream(yt, r)
    assert_close("y", y, to_nhwc(yt), error_log)
    assert_close("dx", dx, to_nhwc(xt.grad), error_log)


# ============================================================================= global pooling
@pytest.mark.parametrize("shape", [(2, 5, 4, 3), (1, 1, 1, 2), (3, 2, 6, 1)])
def test_global_pooling_matches_torch(backend, error_log, shape):
    rng = np.random.default_rng(22)
    x = distinct_values(rng, shape, np.float64)
    r = rng.standard_normal((shape[0], shape[3]))

    xt = nchw(x)
    yt = xt.mean(dim=(2, 3))
    upstream(yt, r)
    assert_close("global avg y", ops.global_avgpool_forward(x), yt.detach().numpy(), error_log)
    assert_close("global avg dx", ops.global_avgpool_backward(r, x.shape), to_nhwc(xt.grad),
                 error_log)

    xt = nchw(x)
    yt = xt.flatten(2).max(dim=2).values
    upstream(yt, r)
    y, arg = ops.global_maxpool_forward(x)
    assert_close("global max y", y, yt.detach().numpy(), error_log)
    assert_close("global max dx", ops.global_maxpool_backward(r, arg, x.shape),
                 to_nhwc(xt.grad), error_log)


# ============================================================================= activations
TORCH_ACTIVATIONS = {
    "gelu": lambda t: F.gelu(t, approximate="none"),
    "swish": F.silu,
    "silu": F.silu,
    "elu": lambda t: F.elu(t, alpha=1.0),
    "leaky_relu": lambda t: F.leaky_relu(t, negative_slope=0.2),
}


@pytest.mark.parametrize("name", sorted(TORCH_ACTIVATIONS))
def test_new_activations_match_torch(backend, error_log, name):
    rng = np.random.default_rng(23)
    x = rng.standard_normal((3, 4, 5)) * 3
    r = rng.standard_normal(x.shape)
    y = ops.activation_forward(name, x)
    dx = ops.activation_backward(name, x, y, r)
    xt = torch.tensor(x, requires_grad=True)
    yt = TORCH_ACTIVATIONS[name](xt)
    (yt * torch.tensor(r)).sum().backward()
    assert_close(f"{name} y", y, yt.detach().numpy(), error_log)
    assert_close(f"{name} dx", dx, xt.grad.numpy(), error_log)


@pytest.mark.parametrize("slope", [0.3, 0.01, 2.0])
def test_leaky_relu_with_a_slope_matches_torch(backend, error_log, slope):
    rng = np.random.default_rng(24)
    x = rng.standard_normal((4, 6))
    r = rng.standard_normal(x.shape)
    xt = torch.tensor(x, requires_grad=True)
    yt = F.leaky_relu(xt, negative_slope=slope)
    (yt * torch.tensor(r)).sum().backward()
    assert_close("y", ops.leaky_relu_forward(x, slope), yt.detach().numpy(), error_log)
    assert_close("dx", ops.leaky_relu_backward(x, r, slope), xt.grad.numpy(), error_log)
