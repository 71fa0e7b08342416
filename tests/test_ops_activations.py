"""The activations added for issue 11: gelu (exact erf form), swish / silu, elu, leaky_relu.

Backends agree on hypothesis-drawn shapes and scales (tolerances of
``test_ops_backends.py``), known values hold, layers accept the names, and every
derivative matches float64 finite differences. PyTorch parity is in
``test_ops_torch_parity.py``.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_ops_backends import DTYPE_NAMES, SEEDS, compare, run_backends

import minicnn
from minicnn import activations, gradcheck, ops
from minicnn.layers import Conv2D, Dense
from minicnn.ops import reference

NEW = ("gelu", "swish", "silu", "elu", "leaky_relu")
GRAD_TOL = 1e-6


@settings(max_examples=60, deadline=None, database=None)
@given(name=st.sampled_from(NEW),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       scale=st.sampled_from([1.0, 30.0]), fortran=st.booleans(), dtype=DTYPE_NAMES, seed=SEEDS)
@example(name="gelu", shape=(2, 3), scale=30.0, fortran=False, dtype="float32", seed=0)
@example(name="swish", shape=(4,), scale=30.0, fortran=False, dtype="float32", seed=1)
def test_new_activations_backends_agree(name, shape, scale, fortran, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * scale
    x.reshape(-1)[::3] = 0.0                  # exact zeros: the kinks and branch points
    x = x.astype(dt)
    if fortran:
        x = np.asfortranarray(x)
    dy = rng.standard_normal(shape).astype(dt)
    fwd = run_backends("activation_forward", name, x)
    compare(fwd, dt, f"activation_forward[{name}]", error_log)
    y = fwd["reference"]
    assert np.all(np.isfinite(y))
    compare(run_backends("activation_backward", name, x, y, dy), dt,
            f"activation_backward[{name}]", error_log)


@settings(max_examples=30, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple),
       slope=st.sampled_from([0.0, 0.01, 0.3, 1.5]), dtype=DTYPE_NAMES, seed=SEEDS)
def test_leaky_relu_with_a_slope_backends_agree(shape, slope, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dt)
    x.reshape(-1)[::4] = 0
    dy = rng.standard_normal(shape).astype(dt)
    fwd = run_backends("leaky_relu_forward", x, slope)
    compare(fwd, dt, "leaky_relu_forward", error_log)
    np.testing.assert_array_equal(fwd["reference"], np.where(x > 0, x, x * dt.type(slope)))
    bwd = run_backends("leaky_relu_backward", x, dy, slope)
    compare(bwd, dt, "leaky_relu_backward", error_log)
    np.testing.assert_array_equal(bwd["reference"], np.where(x > 0, dy, dy * dt.type(slope)))


def test_new_activations_known_values(backend):
    x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
    phi = np.array([0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    np.testing.assert_allclose(ops.activation_forward("gelu", x), x * phi, rtol=1e-14)
    # the exact form, not the tanh approximation: they differ by about 1e-4 here
    tanh_form = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    assert np.abs(ops.activation_forward("gelu", x) - tanh_form).max() > 1e-5
    sig = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(ops.activation_forward("swish", x), x * sig, rtol=1e-14)
    np.testing.assert_array_equal(ops.activation_forward("silu", x),
                                  ops.activation_forward("swish", x))
    np.testing.assert_allclose(ops.activation_forward("elu", x),
                               np.where(x > 0, x, np.exp(x) - 1), rtol=1e-14)
    # Keras 3: keras.activations.leaky_relu(x) uses negative_slope=0.2
    np.testing.assert_allclose(ops.activation_forward("leaky_relu", x),
                               np.where(x > 0, x, 0.2 * x), rtol=1e-15)
    assert reference.LEAKY_RELU_SLOPE == 0.2
    np.testing.assert_allclose(ops.leaky_relu_forward(x, 0.3), np.where(x > 0, x, 0.3 * x),
                               rtol=1e-15)
    # derivatives at 0: leaky_relu takes the slope (x > 0 is false), elu and swish are smooth
    zero, one = np.zeros(1), np.ones(1)
    assert ops.leaky_relu_backward(zero, one, 0.3)[0] == 0.3
    assert ops.activation_backward("elu", zero, zero, one)[0] == 1.0
    assert ops.activation_backward("swish", zero, zero, one)[0] == 0.5
    assert ops.activation_backward("gelu", zero, zero, one)[0] == 0.5
    # no overflow for large |x| in float32, NaN propagates
    big = np.array([-1000.0, 1000.0], dtype=np.float32)
    with np.errstate(over="raise"):
        for name in ("gelu", "swish", "silu", "elu"):
            y = ops.activation_forward(name, big)
            assert y.dtype == np.float32 and np.all(np.isfinite(y)), name
    for name in NEW:
        assert np.isnan(ops.activation_forward(name, np.array([np.nan]))[0]), name


@pytest.mark.parametrize("name", NEW)
def test_layers_accept_the_new_names(backend, error_log, name):
    """The names pass validation, and Dense and Conv2D (unchanged) differentiate through
    them: their gradients match finite differences."""
    assert activations.get(name.upper()) == name
    assert name in activations.ACTIVATIONS
    rng = np.random.default_rng(14)
    for layer, shape in ((Dense(3, activation=name, dtype="float64"), (4,)),
                         (Conv2D(2, 3, padding="same", activation=name, dtype="float64"),
                          (4, 5, 2))):
        layer.build(shape)
        for p in layer.params.values():
            p[...] = rng.standard_normal(p.shape) * 0.5
        x = rng.standard_normal((2,) + shape)
        for key, err in gradcheck.check_layer(layer, shape, x=x).items():
            error_log.record(f"gradcheck layers ({backend})", err)
            assert err < GRAD_TOL, f"{layer.name}({name}) d{key}: {err:.3e}"


@pytest.mark.parametrize("name", NEW)
def test_new_activation_gradients_match_finite_differences(backend, error_log, name):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 4)) * 2
    x[np.abs(x) < 1e-2] = 0.5                 # away from leaky_relu's kink
    r = rng.standard_normal(x.shape)
    y = ops.activation_forward(name, x)
    dx = ops.activation_backward(name, x, y, r)
    numeric = gradcheck.numerical_gradient(
        lambda xv: np.sum(ops.activation_forward(name, xv) * r), x)
    err = gradcheck.relative_error(dx, numeric)
    error_log.record(f"gradcheck ops ({backend})", err)
    assert err < GRAD_TOL, f"{name} on {backend}: relative error {err:.3e}"


def test_gelu_keeps_its_negative_tail_in_float32():
    """x/2 (1 + erf(x/sqrt 2)) cancels to 0 in float32 below about -5.5; the erfc form keeps
    the tiny negative values (found by hypothesis: numpy and numba gave -0, not -1e-8)."""
    x = np.array([-5.0, -5.6, -6.5, -8.0], dtype=np.float32)
    exact = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x.astype(np.float64)])
    for backend in ("reference", "numpy", "numba"):
        with minicnn.use_backend(backend):
            y = ops.activation_forward("gelu", x)
            dx = ops.activation_backward("gelu", x, y, np.ones_like(x))
        assert np.all(y < 0), (backend, y)
        np.testing.assert_allclose(y, exact, rtol=1e-5, err_msg=backend)
        assert np.all(np.isfinite(dx))
