"""Batch statistics gathered by the convolution that feeds a batch norm.

``conv2d_forward``, ``winograd_conv2d_forward`` and ``winograd4_conv2d_forward`` with
``moments=True`` also return the per-channel mean and biased variance of their output,
the statistics ``batchnorm_relu_train_forward(..., moments=...)`` then normalises with
(``ConvBatchNorm`` in training). Held here:

- the output is the same array as without ``moments``, on every backend;
- the statistics equal NumPy's float64 mean and variance of the output, on every backend;
- on numba, the statistics from a kernel's epilogue are bit for bit batch norm's own
  (one summation order everywhere), whatever the algorithm, the images per GEMM or the
  thread count, so the fused residual step stays the layer-by-layer step's bits;
- a batch norm given its input's statistics gives what it gives without them.
"""
from __future__ import annotations

import numpy as np
import pytest
from test_fused_residual import assert_same_bits, fused_and_layer_by_layer

import minicnn
from minicnn import ops
from minicnn.ops import numba_ops, numpy_ops, reference

_IMPLS = {"reference": reference, "numpy": numpy_ops, "numba": numba_ops}

#: (op name, x shape, kernel shape, extra positional arguments after the bias)
_CONVS = (
    ("conv2d_forward", (5, 7, 6, 3), (3, 3, 3, 4), ((1, 1), (1, 1, 1, 1))),
    ("conv2d_forward", (3, 8, 8, 4), (3, 3, 4, 5), ((2, 2), (0, 1, 0, 1))),
    ("conv2d_forward", (9, 4, 4, 2), (1, 1, 2, 3), ((1, 1), (0, 0, 0, 0))),   # 4 images/GEMM
    ("winograd_conv2d_forward", (4, 6, 7, 3), (3, 3, 3, 2), ((1, 1, 1, 1),)),
    ("winograd4_conv2d_forward", (4, 9, 7, 5), (3, 3, 5, 3), ((1, 1, 1, 1),)),
    ("winograd4_conv2d_forward", (7, 8, 8, 2), (3, 3, 2, 6), ((0, 1, 2, 0),)),
)


def _inputs(x_shape, k_shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(x_shape) + 0.5).astype(dtype)
    kernel = rng.standard_normal(k_shape).astype(dtype)
    bias = rng.standard_normal(k_shape[3]).astype(dtype)
    return x, kernel, bias


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, x_shape, k_shape, args", _CONVS)
def test_a_convolution_returns_its_output_and_its_batch_statistics(backend, dtype, op, x_shape,
                                                                   k_shape, args):
    impl = getattr(_IMPLS[backend], op)
    x, kernel, bias = _inputs(x_shape, k_shape, dtype)
    plain = impl(x, kernel, bias, *args)
    y, mean, var = impl(x, kernel, bias, *args, moments=True)
    np.testing.assert_array_equal(y, plain)
    assert mean.dtype == var.dtype == y.dtype and mean.shape == var.shape == (k_shape[3],)
    rows = y.reshape(-1, k_shape[3]).astype(np.float64)
    tol = 1e-6 if dtype == np.float32 else 1e-12        # float32: the final cast only
    np.testing.assert_allclose(mean, rows.mean(axis=0), rtol=tol, atol=tol)
    np.testing.assert_allclose(var, rows.var(axis=0), rtol=tol, atol=tol)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op, x_shape, k_shape, args", _CONVS)
def test_numba_epilogue_statistics_are_batch_norms_own_bits(op, x_shape, k_shape, args,
                                                           dtype, threads):
    """The kernel adds each image's share as the image leaves the epilogue; batch norm's
    own pass adds the same float64 sums in the same order: equal bits, so the fused
    Conv2D + BatchNormalization step moves the moving statistics exactly as the layers."""
    x, kernel, bias = _inputs(x_shape, k_shape, dtype, seed=1)
    with minicnn.use_backend("numba"):
        before = minicnn.get_num_threads()
        minicnn.set_num_threads(threads)
        try:
            y, mean, var = getattr(ops, op)(x, kernel, bias, *args, moments=True)
            gamma = np.ones(k_shape[3], dtype)
            _, own_mean, own_var, _ = ops.batchnorm_relu_train_forward(y, gamma, 0 * gamma,
                                                                       1e-3, relu=False)
        finally:
            minicnn.set_num_threads(before)
    np.testing.assert_array_equal(mean, own_mean)
    np.testing.assert_array_equal(var, own_var)


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("relu", [True, False])
def test_batchnorm_given_its_inputs_statistics_gives_the_same_output(backend, relu):
    impl = _IMPLS[backend]
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((4, 5, 3, 6)) * 2 + 1).astype(np.float32)
    gamma, beta = rng.standard_normal(6).astype(np.float32), rng.standard_normal(6).astype(
        np.float32)
    y, mean, var, inv_std = impl.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu)
    given = impl.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu, moments=(mean, var))
    if backend == "numba":               # the same statistics, the same normalising pass
        for a, b in zip((y, mean, var, inv_std), given):
            np.testing.assert_array_equal(a, b)
    else:                                # rounds its own statistics differently
        for a, b in zip((y, mean, var, inv_std), given):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", list(_IMPLS))
def test_moments_of_the_wrong_shape_are_refused(backend):
    impl = _IMPLS[backend]
    x = np.ones((2, 3, 3, 4), np.float32)
    gamma = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"moments: mean and var must have shape \(4,\), "
                                         r"received \(3,\)"):
        impl.batchnorm_relu_train_forward(x, gamma, gamma, 1e-3,
                                          moments=(np.zeros(3), np.ones(3)))
    with pytest.raises(ValueError, match="moments must be a pair"):
        impl.batchnorm_relu_train_forward(x, gamma, gamma, 1e-3, moments=np.zeros(4))


def test_the_one_pass_variance_holds_a_large_mean():
    """Mean 1e3 standard deviations: the float64 one-pass variance (``S2/m - mean**2``)
    stays within float32's rounding of the truth, on every backend (the statistics of
    x itself: a 1x1 convolution by the identity)."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 16, 16, 3)) + 1e3).astype(np.float32)
    truth = x.reshape(-1, 3).astype(np.float64).var(axis=0)
    identity = np.eye(3, dtype=np.float32).reshape(1, 1, 3, 3)
    for backend, impl in _IMPLS.items():
        y, _, var = impl.conv2d_forward(x, identity, None, (1, 1), (0, 0, 0, 0), moments=True)
        np.testing.assert_array_equal(y, x)
        np.testing.assert_allclose(var, truth, rtol=2e-7, err_msg=backend)
    with minicnn.use_backend("numba"):
        _, _, var, _ = ops.batchnorm_relu_train_forward(x, None, None, 1e-3, relu=False)
    np.testing.assert_allclose(var, truth, rtol=2e-7)


@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "winograd4"])
def test_the_fused_conv_batchnorm_step_keeps_the_layer_by_layer_bits(algorithm):
    """Conv2D (bias, each algorithm) -> BatchNormalization -> ReLU trained one step fused
    (statistics from the convolution's epilogue) and layer by layer (batch norm's own
    pass): the same loss, gradients and moving statistics, bit for bit."""
    from minicnn import layers, models
    rng = np.random.default_rng(5)
    with minicnn.use_backend("numba"):
        inputs = minicnn.Input((8, 8, 3))
        h = layers.Conv2D(4, 3, padding="same", algorithm=algorithm)(inputs)
        h = layers.ReLU()(layers.BatchNormalization()(h))
        outputs = layers.Dense(3, activation="softmax")(layers.GlobalAveragePooling2D()(h))
        model = models.Model(inputs, outputs)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        for fuse in (True, False):
            model.fuse = fuse
            kinds = [type(step).__name__ for step, _, _ in model.steps()]
            assert ("ConvBatchNorm" in kinds) == fuse, kinds
        x = rng.standard_normal((5, 8, 8, 3)).astype(np.float32)
        out = fused_and_layer_by_layer(model, x, rng.integers(0, 3, (5, 1)))
    assert_same_bits(out)
