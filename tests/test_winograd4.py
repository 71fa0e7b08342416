"""Winograd F(4x4, 3x3), the forward pass: reference == numpy == numba == direct
convolution, the fused ReLU + pool variant, the float32 error bound and the autotuner's
choice of it. The float64 gradient check and PyTorch parity of a layer that runs it (its
backward is F(2x2, 3x3)'s) are ``tests/test_winograd.py``'s, run for both algorithms.

The float32 bound, measured as in ``tests/test_winograd.py`` (against ``scale = max over
outputs of sum |x| |kernel|``): F(4x4, 3x3) stayed within 1.1-1.6e-6 of the scale at
every shape below (F(2x2, 3x3): 8e-8, im2col: 0.6-2.5e-7). Its transforms multiply by up
to 8 and 5 and by fractions (1/6, 1/24) that float32 rounds, so it is the least accurate
of the three; ``WINOGRAD4_F32_BOUND`` is 5e-6 of the scale.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import layers, ops
from minicnn.ops import algorithms, numba_ops, numpy_ops, reference
from test_winograd import _IMPLS, conv_case
from test_winograd import _arrays as _conv_arrays

WINOGRAD4_F32_BOUND = 5e-6


def _arrays(*case, dtype=np.float64):
    """x, kernel and bias of a :func:`test_winograd.conv_case` (its dy left out)."""
    return _conv_arrays(*case, dtype=dtype)[:3]


@settings(max_examples=40, deadline=None)
@given(case=conv_case(), relu=st.booleans(), bias=st.booleans())
def test_every_backend_equals_the_direct_convolution(case, relu, bias, error_log):
    """Every backend's F(4x4, 3x3) against the reference direct convolution, float64: odd
    sizes, sizes that are not multiples of 4, asymmetric padding, with and without bias."""
    x, kernel, b = _arrays(*case)
    b = b if bias else None
    pads = case[5]
    y_ref = reference.conv2d_forward(x, kernel, b, (1, 1), pads, relu=relu)
    for name, impl in _IMPLS.items():
        y = impl.winograd4_conv2d_forward(x, kernel, b, pads, relu=relu)
        assert y.shape == y_ref.shape and y.dtype == np.float64, name
        err = np.abs(y - y_ref).max() / max(1.0, np.abs(y_ref).max())
        error_log.record(f"winograd4 {name} vs direct conv, float64", err)
        assert err < 1e-11, name


@pytest.mark.parametrize("c", [63, 64, 65, 130])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_channel_blocks_of_the_input_transform(c, dtype):
    """The numba input transform goes through the channels in blocks of
    ``scratch.TILE_CHANNELS`` (64) in its stack scratch: one block short of it, exactly
    one, one and one more channel, two and a remainder; against the direct convolution."""
    from minicnn.ops._kernels.scratch import TILE_CHANNELS
    assert TILE_CHANNELS == 64
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 9, 7, c)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c, 5)).astype(dtype)
    pads = (1, 1, 1, 1)
    y = numba_ops.winograd4_conv2d_forward(x, kernel, None, pads)
    y_ref = reference.conv2d_forward(x, kernel, None, (1, 1), pads)
    scale = (np.abs(x).max() * np.abs(kernel).sum(axis=(0, 1, 2)).max())
    err = np.abs(y - y_ref).max() / scale
    assert err < (1e-13 if dtype == np.float64 else WINOGRAD4_F32_BOUND), err


@settings(max_examples=30, deadline=None)
@given(case=conv_case())
def test_the_fused_relu_pool_forward_equals_the_composition(case):
    """``winograd4_conv2d_relu_maxpool_forward``: the pooled output of the reference
    composition on every backend, float64, and the argmax wherever the ReLU passes
    (elsewhere no gradient flows); the numba kernel's argmax is the fused im2col
    kernel's everywhere (both take the max before the ReLU)."""
    x, kernel, bias = _arrays(*case)
    pads = case[5]
    oh, ow = x.shape[1] + pads[0] + pads[1] - 2, x.shape[2] + pads[2] + pads[3] - 2
    if oh < 2 or ow < 2:
        return
    y_ref, arg_ref = reference.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    for name, impl in _IMPLS.items():
        y, arg = impl.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
        assert y.shape == y_ref.shape and arg.dtype == np.uint8, name
        np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-11, err_msg=name)
        assert np.array_equal(arg[y_ref > 0], arg_ref[y_ref > 0]), name
    _, arg_im2col = numba_ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    _, arg = numba_ops.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
    assert np.array_equal(arg, arg_im2col)


@settings(max_examples=25, deadline=None)
@given(case=conv_case(), nan=st.booleans())
def test_without_the_argmax_the_pooled_output_is_the_same(case, nan):
    """``need_argmax=False`` (inference): the same pooled output from both fused forwards
    on every backend, bit for bit, and no argmax; a NaN input wins its windows there too."""
    x, kernel, bias = _arrays(*case)
    pads = case[5]
    oh, ow = x.shape[1] + pads[0] + pads[1] - 2, x.shape[2] + pads[2] + pads[3] - 2
    if oh < 2 or ow < 2:
        return
    if nan:
        x[0, x.shape[1] // 2, x.shape[2] // 2, 0] = np.nan
    for name, impl in _IMPLS.items():
        for fused in (lambda **k: impl.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias,
                                                                             pads, **k),
                      lambda **k: impl.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1),
                                                                   pads, **k)):
            y, arg = fused()
            y_only, none = fused(need_argmax=False)
            assert none is None and arg is not None, name
            np.testing.assert_array_equal(y_only, y, err_msg=name)


def test_a_fused_step_in_inference_mode_skips_the_argmax_and_still_backpropagates(
        monkeypatch):
    """``ConvReluPool`` run with ``training=False`` asks for no argmax; a backward pass after
    it all the same (a gradient check does this) gets the gradients of a training forward."""
    from minicnn.layers.fused import ConvReluPool
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 8, 8, 16))
    asked = []
    real = numba_ops.winograd4_conv2d_relu_maxpool_forward
    monkeypatch.setattr(numba_ops, "winograd4_conv2d_relu_maxpool_forward",
                        lambda *a, need_argmax=True: asked.append(need_argmax)
                        or real(*a, need_argmax=need_argmax))
    with minicnn.use_backend("numba"):
        fused = ConvReluPool(layers.Conv2D(4, 3, padding="same", activation="relu",
                                           dtype="float64"),
                             layers.MaxPooling2D(2, 2, dtype="float64"))
        y_train = fused.forward(x, training=True)
        dy = rng.standard_normal(y_train.shape)
        dx_train = fused.backward(dy)
        grads_train = {k: v.copy() for k, v in fused.conv.grads.items()}
        y_infer = fused.forward(x, training=False)
        assert fused.fused_forward == "winograd4" and asked == [True, False]
        dx_infer = fused.backward(dy)
    np.testing.assert_array_equal(y_infer, y_train)
    np.testing.assert_array_equal(dx_infer, dx_train)
    for key, value in grads_train.items():
        np.testing.assert_array_equal(fused.conv.grads[key], value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ties_go_to_the_first_maximum(dtype):
    """An image of zeros (four-way ties in every window, ReLU'd to 0) and a NaN: the
    numba F(4x4, 3x3) fused kernel picks the winners the fused im2col kernel picks. A NaN
    input reaches every output of each 6x6 tile that reads it (0 * NaN is NaN in the
    transforms), more outputs than the 3x3 window's: NaN at least wherever im2col's is,
    the ties' winners identical wherever neither is NaN."""
    x = np.zeros((2, 8, 8, 3), dtype=dtype)
    x[1, 3, 4, 1] = np.nan
    kernel = np.ones((3, 3, 3, 2), dtype=dtype)
    bias = np.zeros(2, dtype=dtype)
    y_im2col, arg_im2col = numba_ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1),
                                                                 (1, 1, 1, 1))
    y, arg = numba_ops.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1, 1, 1))
    assert np.isnan(y_im2col).any() and np.isnan(y[np.isnan(y_im2col)]).all()
    finite = ~np.isnan(y)
    assert finite[1].any()
    assert np.array_equal(arg[finite], arg_im2col[finite])
    assert (arg[0] == 0).all()
    nan_im2col = np.isnan(y_im2col)
    assert np.array_equal(arg[nan_im2col], arg_im2col[nan_im2col])   # the NaN's position wins


def test_it_does_not_mutate_or_upcast():
    x, kernel, bias = _arrays(3, 6, 9, 4, 3, (1, 1, 1, 1), 7, dtype=np.float32)
    copies = [a.copy() for a in (x, kernel, bias)]
    for impl in _IMPLS.values():
        assert impl.winograd4_conv2d_forward(x, kernel, bias, (1, 1, 1, 1)).dtype == np.float32
        y, arg = impl.winograd4_conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1, 1, 1))
        assert y.dtype == np.float32 and arg.dtype == np.uint8
    for a, b in zip((x, kernel, bias), copies):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", [(8, 16, 16, 32, 64), (4, 8, 8, 64, 64), (2, 9, 7, 3, 8),
                                   (2, 8, 8, 256, 16)])
def test_float32_error_is_within_the_stated_bound(shape, error_log):
    n, h, w, c, f = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) * 0.1).astype(np.float32)
    pads = (1, 1, 1, 1)
    truth = numpy_ops.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None,
                                     (1, 1), pads)
    scale = numpy_ops.conv2d_forward(np.abs(x).astype(np.float64),
                                     np.abs(kernel).astype(np.float64), None, (1, 1), pads).max()
    for name, impl in _IMPLS.items():
        if name == "reference" and n * h * w * c * f > 50_000:
            continue
        y = impl.winograd4_conv2d_forward(x, kernel, None, pads)
        rel = np.abs(y - truth).max() / scale
        error_log.record("winograd4 float32 error / scale", rel)
        assert rel < WINOGRAD4_F32_BOUND, name


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_numba_kernel_transform_equals_the_reference_matrices(dtype):
    from minicnn.ops._kernels import winograd4 as winograd4_k
    rng = np.random.default_rng(3)
    kernel = rng.standard_normal((3, 3, 5, 7)).astype(dtype)
    u = winograd4_k.kernel_transform(kernel)
    want = reference.winograd4_kernel_transform(kernel.astype(np.float64)).reshape(36, 5, 7)
    assert u.dtype == dtype
    np.testing.assert_allclose(u, want, rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=1e-6 if dtype == np.float32 else 1e-14)


def test_shapes_it_cannot_compute_are_refused():
    x = np.zeros((1, 5, 5, 2))
    for impl in _IMPLS.values():
        with pytest.raises(ValueError, match="winograd4_conv2d_forward: .*3x3 kernel.*\\(5, 5"):
            impl.winograd4_conv2d_forward(x, np.zeros((5, 5, 2, 1)), None, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="algorithm='winograd4' needs kernel_size \\(3, 3\\)"):
        layers.Conv2D(4, 3, strides=2, algorithm="winograd4")


def test_the_autotuner_can_choose_it_and_the_model_runs_it(monkeypatch):
    """A cached choice of F(4x4, 3x3) reaches the layers: a plain conv runs
    ``winograd4_conv2d_forward``, a conv before a pool the fused F(4x4, 3x3) kernel, each
    with the numbers of im2col."""
    from minicnn.layers.fused import ConvReluPool
    calls = []
    for name in ("winograd4_conv2d_forward", "winograd4_conv2d_relu_maxpool_forward"):
        real = getattr(numba_ops, name)
        monkeypatch.setattr(numba_ops, name,
                            lambda *a, _real=real, _name=name, **k: calls.append(_name)
                            or _real(*a, **k))
    monkeypatch.setattr(algorithms, "measure", lambda *a, **k: {
        "forward": "winograd4", "backward": "winograd", "others_cpus": 1.0})
    algorithms.clear()
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 8, 8, 16))
    try:
        with minicnn.use_backend("numba"):
            conv = layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
            y = conv.forward(x)
            fused = ConvReluPool(layers.Conv2D(4, 3, padding="same", activation="relu",
                                               dtype="float64"),
                                 layers.MaxPooling2D(2, 2, dtype="float64"))
            p = fused.forward(x)
            assert fused.fused_forward == "winograd4"
        assert calls == ["winograd4_conv2d_forward", "winograd4_conv2d_relu_maxpool_forward"]
        with minicnn.use_backend("numba"), algorithms.use("im2col"):
            ref = numba_ops.conv2d_forward(x, conv.params["kernel"], conv.params["bias"],
                                           (1, 1), (1, 1, 1, 1), relu=True)
            pref, _ = ops.conv2d_relu_maxpool_forward(x, fused.conv.params["kernel"],
                                                      fused.conv.params["bias"], (1, 1),
                                                      (1, 1, 1, 1))
        np.testing.assert_allclose(y, ref, atol=1e-12)
        np.testing.assert_allclose(p, pref, atol=1e-12)
    finally:
        algorithms.clear()
