"""A convolution's backward that makes batch norm's input gradient itself (``bn=``).

``ConvBatchNorm`` (conv -> batch norm [-> ReLU], training) asks
``batchnorm_relu_backward(..., need_dx=False)`` for dgamma and dbeta only, then gives the
convolution's backward a ``BatchNormGradient``: on numba the kernel computes dz row by row
as it gathers it (``norm._bn_dz_row``, the function batch norm's own second pass runs),
and never writes dz out. Held here, for ``conv2d_backward`` (stride 1 and 2, 1x1 and 3x3,
several images per GEMM) and ``winograd_conv2d_backward``, with and without the ReLU and
dx, in float32 and float64, on every backend:

- ``backward(x, kernel, dy, bn=spec)`` is bit for bit ``backward(x, kernel, dz)`` with
  ``dz = batchnorm_relu_backward(dy, z, ...)[0]`` of the same backend;
- the backends agree with each other within rounding;
- ``need_dx=False`` gives batch norm's sums alone, the same bits;
- a ReLU mask ``y`` and ``bn`` together, a ``bn`` of another type or shape: a ValueError;
- float64 dx and dkernel through conv -> batch norm (-> ReLU) with a random upstream
  gradient match central differences of the loss (every backend) and PyTorch's
  conv2d -> batch_norm (-> relu), with dgamma and dbeta (numba).
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import ops
from minicnn.ops import numba_ops, numpy_ops, reference

_IMPLS = {"reference": reference, "numpy": numpy_ops, "numba": numba_ops}

#: (name, x shape, kernel shape, strides or None for Winograd, pads)
_CONVS = (
    ("im2col 3x3/1", (3, 6, 5, 4), (3, 3, 4, 5), (1, 1), (1, 1, 1, 1)),
    ("im2col 3x3/2", (5, 7, 8, 3), (3, 3, 3, 6), (2, 2), (0, 1, 1, 0)),
    ("im2col 1x1/2", (4, 6, 6, 5), (1, 1, 5, 7), (2, 2), (0, 0, 0, 0)),
    ("im2col 4 images per GEMM", (9, 4, 4, 2), (3, 3, 2, 3), (1, 1), (1, 1, 1, 1)),
    ("winograd", (4, 7, 6, 3), (3, 3, 3, 4), None, (1, 1, 1, 1)),
    ("winograd odd, asymmetric pads", (5, 5, 7, 2), (3, 3, 2, 5), None, (0, 1, 2, 0)),
)


def _backward(impl, x, kernel, dy, strides, pads, need_dx, **kw):
    if strides is None:
        return impl.winograd_conv2d_backward(x, kernel, dy, pads, need_dx, **kw)
    return impl.conv2d_backward(x, kernel, dy, strides, pads, need_dx, **kw)


def _setup(impl, x_shape, k_shape, strides, pads, dtype, relu, seed=0):
    """Inputs, the conv output ``z``, dL/d(batch norm's output) ``dy`` and the spec."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = (0.3 * rng.standard_normal(k_shape)).astype(dtype)
    if strides is None:
        z = impl.winograd_conv2d_forward(x, kernel, None, pads)
    else:
        z = impl.conv2d_forward(x, kernel, None, strides, pads)
    f = k_shape[3]
    gamma = (rng.random(f) + 0.5).astype(dtype)
    beta = rng.standard_normal(f).astype(dtype)
    _, mean, _, inv_std = impl.batchnorm_relu_train_forward(z, gamma, beta, 1e-3, relu=relu)
    dy = rng.standard_normal(z.shape).astype(dtype)
    dx_bn, dgamma, dbeta = impl.batchnorm_relu_backward(dy, z, gamma, beta, mean, inv_std,
                                                        relu=relu)
    spec = ops.BatchNormGradient(z, gamma, beta, mean, inv_std, dgamma, dbeta, relu)
    return x, kernel, dy, dx_bn, spec


def _bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("name, x_shape, k_shape, strides, pads", _CONVS)
def test_the_backward_given_bn_is_the_backward_of_batch_norms_input_gradient(
        backend, dtype, relu, name, x_shape, k_shape, strides, pads):
    impl = _IMPLS[backend]
    x, kernel, dy, dz, spec = _setup(impl, x_shape, k_shape, strides, pads, dtype, relu)
    for need_dx in (True, False):
        want = _backward(impl, x, kernel, dz, strides, pads, need_dx)
        got = _backward(impl, x, kernel, dy, strides, pads, need_dx, bn=spec)
        assert (got[0] is None) == (not need_dx)
        for g, w in zip(got, want):
            if w is not None:
                assert g.dtype == w.dtype and g.shape == w.shape
                np.testing.assert_array_equal(_bits(g), _bits(w))


@pytest.mark.parametrize("name, x_shape, k_shape, strides, pads", _CONVS)
def test_a_changed_batch_norm_sum_changes_the_gradients(name, x_shape, k_shape, strides, pads):
    """The check above can fail: dgamma one ulp off moves the numba kernel's result."""
    x, kernel, dy, dz, spec = _setup(numba_ops, x_shape, k_shape, strides, pads, np.float32,
                                     True)
    off = spec._replace(dgamma=np.nextafter(spec.dgamma, np.float32(np.inf)))
    want = _backward(numba_ops, x, kernel, dz, strides, pads, True)
    got = _backward(numba_ops, x, kernel, dy, strides, pads, True, bn=off)
    assert any(not np.array_equal(_bits(g), _bits(w)) for g, w in zip(got, want))


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("name, x_shape, k_shape, strides, pads", _CONVS)
def test_the_backends_agree_given_bn(relu, name, x_shape, k_shape, strides, pads):
    results = {}
    for backend, impl in _IMPLS.items():
        x, kernel, dy, _, spec = _setup(impl, x_shape, k_shape, strides, pads, np.float64, relu)
        results[backend] = _backward(impl, x, kernel, dy, strides, pads, True, bn=spec)
    for backend in ("numpy", "numba"):
        for g, w in zip(results[backend], results["reference"]):
            np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("relu", [True, False])
def test_batch_norm_backward_without_dx_gives_the_same_sums(backend, relu):
    impl = _IMPLS[backend]
    rng = np.random.default_rng(3)
    z = rng.standard_normal((6, 5, 4, 7)).astype(np.float32)
    gamma, beta = rng.random(7).astype(np.float32) + 0.5, rng.standard_normal(7).astype(np.float32)
    _, mean, _, inv_std = impl.batchnorm_relu_train_forward(z, gamma, beta, 1e-3, relu=relu)
    dy = rng.standard_normal(z.shape).astype(np.float32)
    dx, dgamma, dbeta = impl.batchnorm_relu_backward(dy, z, gamma, beta, mean, inv_std, relu=relu)
    none, dgamma2, dbeta2 = impl.batchnorm_relu_backward(dy, z, gamma, beta, mean, inv_std,
                                                         relu=relu, need_dx=False)
    assert dx.shape == z.shape and none is None
    np.testing.assert_array_equal(_bits(dgamma2), _bits(dgamma))
    np.testing.assert_array_equal(_bits(dbeta2), _bits(dbeta))


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("winograd", [False, True])
def test_bad_bn_arguments_are_named(backend, winograd):
    impl = _IMPLS[backend]
    strides = None if winograd else (1, 1)
    x, kernel, dy, _, spec = _setup(impl, (2, 4, 4, 2), (3, 3, 2, 3), strides, (1, 1, 1, 1),
                                    np.float32, True)
    op = "winograd_conv2d_backward" if winograd else "conv2d_backward"
    with pytest.raises(ValueError, match=f"{op}: y .* and bn .* exclude each other"):
        _backward(impl, x, kernel, dy, strides, (1, 1, 1, 1), True, y=dy, bn=spec)
    with pytest.raises(ValueError, match=f"{op}: bn must be a BatchNormGradient or None, "
                                         "received tuple"):
        _backward(impl, x, kernel, dy, strides, (1, 1, 1, 1), True, bn=tuple(spec))
    with pytest.raises(ValueError, match=rf"{op}: bn.z must have dy's shape \(2, 4, 4, 3\), "
                                         r"received \(2, 4, 4, 2\)"):
        _backward(impl, x, kernel, dy, strides, (1, 1, 1, 1), True, bn=spec._replace(z=x))


def _conv_bn_loss(impl, x, kernel, strides, pads, gamma, beta, g, relu):
    """``sum(g * bn_relu(conv(x)))`` in training mode (batch statistics), and its parts."""
    if strides is None:
        z = impl.winograd_conv2d_forward(x, kernel, None, pads)
    else:
        z = impl.conv2d_forward(x, kernel, None, strides, pads)
    y, mean, _, inv_std = impl.batchnorm_relu_train_forward(z, gamma, beta, 1e-3, relu=relu)
    return float(np.sum(g * y)), z, mean, inv_std


def _bn_backward_case(impl, seed, x_shape, k_shape, strides, pads, relu):
    """A float64 conv -> batch norm (-> ReLU) case on backend module ``impl`` and its
    gradients by the ``bn=`` route for a random upstream gradient ``g``: ``(x, kernel,
    gamma, beta, g, (dx, dkernel, dgamma, dbeta))``."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    kernel = 0.3 * rng.standard_normal(k_shape)
    f = k_shape[3]
    gamma, beta = rng.random(f) + 0.5, 0.3 * rng.standard_normal(f)
    _, z, mean, inv_std = _conv_bn_loss(impl, x, kernel, strides, pads, gamma, beta,
                                        np.zeros(1), relu)
    g = rng.standard_normal(z.shape)
    _, dgamma, dbeta = impl.batchnorm_relu_backward(g, z, gamma, beta, mean, inv_std,
                                                    relu=relu, need_dx=False)
    spec = ops.BatchNormGradient(z, gamma, beta, mean, inv_std, dgamma, dbeta, relu)
    dx, dkernel, _ = _backward(impl, x, kernel, g, strides, pads, True, bn=spec)
    return x, kernel, gamma, beta, g, (dx, dkernel, dgamma, dbeta)


@pytest.mark.parametrize("backend", list(_IMPLS))
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("name, x_shape, k_shape, strides, pads",
                         [_CONVS[1], _CONVS[2], _CONVS[5]])
def test_gradients_given_bn_match_central_differences(backend, relu, name, x_shape, k_shape,
                                                      strides, pads):
    """float64, a random upstream gradient ``g`` of conv -> batch norm (-> ReLU): dx and
    dkernel from ``backward(dy=g, bn=spec)`` against central differences of the loss."""
    from minicnn.gradcheck import numerical_gradient, relative_error
    impl = _IMPLS[backend]
    x, kernel, gamma, beta, g, (dx, dkernel, _, _) = _bn_backward_case(
        impl, 7, x_shape, k_shape, strides, pads, relu)
    num_dx = numerical_gradient(
        lambda v: _conv_bn_loss(impl, v, kernel, strides, pads, gamma, beta, g, relu)[0], x)
    num_dk = numerical_gradient(
        lambda v: _conv_bn_loss(impl, x, v, strides, pads, gamma, beta, g, relu)[0], kernel)
    assert relative_error(dx, num_dx) < 1e-6
    assert relative_error(dkernel, num_dk) < 1e-6


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("name, x_shape, k_shape, strides, pads", _CONVS)
def test_gradients_given_bn_match_pytorch(relu, name, x_shape, k_shape, strides, pads):
    """float64 conv (NHWC -> NCHW) -> BatchNorm2d (training, eps 1e-3) [-> ReLU] in PyTorch,
    the same random upstream gradient: dx, dkernel, dgamma, dbeta of the numba path."""
    torch = pytest.importorskip("torch")
    x, kernel, gamma, beta, g, (dx, dkernel, dgamma, dbeta) = _bn_backward_case(
        numba_ops, 11, x_shape, k_shape, strides, pads, relu)

    tx = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    tk = torch.tensor(kernel.transpose(3, 2, 0, 1), requires_grad=True)
    tg, tb = (torch.tensor(v, requires_grad=True) for v in (gamma, beta))
    pt, pb, pl, pr = pads
    tz = torch.nn.functional.conv2d(torch.nn.functional.pad(tx, (pl, pr, pt, pb)), tk,
                                    stride=strides or (1, 1))
    ty = torch.nn.functional.batch_norm(tz, None, None, tg, tb, training=True, eps=1e-3)
    if relu:
        ty = torch.relu(ty)
    ty.backward(torch.tensor(g.transpose(0, 3, 1, 2)))
    for got, want in ((dx, tx.grad.numpy().transpose(0, 2, 3, 1)),
                      (dkernel, tk.grad.numpy().transpose(2, 3, 1, 0)),
                      (dgamma, tg.grad.numpy()), (dbeta, tb.grad.numpy())):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-10)
