"""Winograd F(2x2, 3x3): reference == numpy == numba == direct convolution, gradients,
PyTorch parity, the float32 error bound, and the per-layer algorithm choice.

The float32 bound: Winograd adds and subtracts inputs (and kernel halves) before it
multiplies, so its rounding error scales with the magnitudes involved, not with the
result. Both algorithms are compared with the float64 truth, against
``scale = max over outputs of sum |x| |kernel|`` (the sum of the absolute products of
each output): both stay within ``WINOGRAD_F32_BOUND * scale``. Measured here, Winograd
was the *more* accurate of the two at these shapes (8e-8 of the scale against 3e-7 for
im2col's float32 GEMM, whose dot products run over 9c terms where Winograd's run over c).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import minicnn
from minicnn import gradcheck, layers, models, ops
from minicnn.ops import algorithms, numba_ops, numpy_ops, reference

WINOGRAD_F32_BOUND = 2e-6

_IMPLS = {"reference": reference, "numpy": numpy_ops, "numba": numba_ops}


@st.composite
def conv_case(draw):
    n = draw(st.integers(1, 5))
    c = draw(st.integers(1, 6))
    f = draw(st.integers(1, 6))
    pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    h = draw(st.integers(max(1, 3 - pads[0] - pads[1]), 9))
    w = draw(st.integers(max(1, 3 - pads[2] - pads[3]), 9))
    seed = draw(st.integers(0, 2**16))
    return n, h, w, c, f, pads, seed


def _arrays(n, h, w, c, f, pads, seed, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    oh, ow = h + pads[0] + pads[1] - 2, w + pads[2] + pads[3] - 2
    dy = rng.standard_normal((n, oh, ow, f)).astype(dtype)
    return x, kernel, bias, dy


@settings(max_examples=40, deadline=None)
@given(case=conv_case(), relu=st.booleans(), need_dx=st.booleans())
def test_every_backend_equals_the_direct_convolution(case, relu, need_dx, error_log):
    """Forward and all three gradients of every backend's Winograd against the reference
    direct convolution, float64, odd sizes and asymmetric padding included."""
    x, kernel, bias, dy = _arrays(*case)
    pads = case[5]
    y_ref = reference.conv2d_forward(x, kernel, bias, (1, 1), pads, relu=relu)
    grads_ref = reference.conv2d_backward(x, kernel, dy, (1, 1), pads, need_dx=need_dx,
                                          y=y_ref if relu else None)
    for name, impl in _IMPLS.items():
        y = impl.winograd_conv2d_forward(x, kernel, bias, pads, relu=relu)
        assert y.shape == y_ref.shape and y.dtype == np.float64
        err = np.abs(y - y_ref).max()
        error_log.record(f"winograd {name} vs direct conv, float64", err)
        assert err < 1e-11, name
        grads = impl.winograd_conv2d_backward(x, kernel, dy, pads, need_dx=need_dx,
                                              y=y if relu else None)
        if not need_dx:
            assert grads[0] is None
        for got, want in zip(grads, grads_ref):
            if want is None:
                continue
            assert got.shape == want.shape
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10, err_msg=name)


def test_winograd_does_not_mutate_or_upcast():
    x, kernel, bias, dy = _arrays(3, 6, 5, 4, 3, (1, 1, 1, 1), 7, dtype=np.float32)
    copies = [a.copy() for a in (x, kernel, bias, dy)]
    for impl in _IMPLS.values():
        y = impl.winograd_conv2d_forward(x, kernel, bias, (1, 1, 1, 1), relu=True)
        assert y.dtype == np.float32
        for g in impl.winograd_conv2d_backward(x, kernel, dy, (1, 1, 1, 1), y=y):
            assert g.dtype == np.float32
    for a, b in zip((x, kernel, bias, dy), copies):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("shape", [(8, 16, 16, 32, 64), (4, 8, 8, 64, 64), (2, 9, 7, 3, 8)])
def test_float32_error_is_within_the_stated_bound(shape, error_log):
    n, h, w, c, f = shape
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, h, w, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) * 0.1).astype(np.float32)
    pads = (1, 1, 1, 1)
    truth = reference.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None,
                                     (1, 1), pads) if n * h * w * c * f < 50_000 else \
        numpy_ops.conv2d_forward(x.astype(np.float64), kernel.astype(np.float64), None,
                                 (1, 1), pads)
    scale = numpy_ops.conv2d_forward(np.abs(x).astype(np.float64),
                                     np.abs(kernel).astype(np.float64), None, (1, 1), pads).max()
    im2col = numba_ops.conv2d_forward(x, kernel, None, (1, 1), pads)
    for name, impl in _IMPLS.items():
        if name == "reference" and n * h * w * c * f > 50_000:
            continue
        y = impl.winograd_conv2d_forward(x, kernel, None, pads)
        rel = np.abs(y - truth).max() / scale
        error_log.record("winograd float32 error / scale", rel)
        assert rel < WINOGRAD_F32_BOUND, name
    im2col_rel = np.abs(im2col - truth).max() / scale
    error_log.record("im2col float32 error / scale", im2col_rel)
    assert im2col_rel < WINOGRAD_F32_BOUND


def test_shapes_it_cannot_compute_are_refused():
    x = np.zeros((1, 5, 5, 2))
    with pytest.raises(ValueError, match="3x3 kernel.*\\(5, 5, 2, 1\\)"):
        numba_ops.winograd_conv2d_forward(x, np.zeros((5, 5, 2, 1)), None, (2, 2, 2, 2))
    with pytest.raises(ValueError, match="algorithm must be one of .*received 'fft'"):
        layers.Conv2D(4, 3, algorithm="fft")
    with pytest.raises(ValueError, match="needs kernel_size \\(3, 3\\) and strides \\(1, 1\\)"):
        layers.Conv2D(4, 3, strides=2, algorithm="winograd")
    with pytest.raises(ValueError, match="needs kernel_size"):
        layers.Conv2D(4, 5, algorithm="winograd")


@pytest.mark.parametrize("algorithm", algorithms.WINOGRAD)
@pytest.mark.parametrize("activation", ["relu", "linear", "tanh"])
def test_winograd_conv_layer_gradcheck(activation, algorithm, backend, error_log):
    """Finite differences against the layer's backward, float64, with a random upstream
    gradient; for ``"winograd4"`` the forward is F(4x4, 3x3) and the backward F(2x2, 3x3)'s,
    so the check says the forward computes the function whose gradient the backward claims."""
    layer = layers.Conv2D(3, 3, padding="same", activation=activation, dtype="float64",
                          algorithm=algorithm)
    errors = gradcheck.check_layer(layer, (5, 6, 2), batch_size=2)
    assert layer.algorithm_for((2, 5, 6, 2)) == (algorithm, "winograd")
    assert set(errors) == {"dx", "kernel", "bias"}
    for err in errors.values():
        error_log.record(f"gradcheck {algorithm} conv ({backend})", err)
        assert err < 1e-7


@pytest.mark.parametrize("algorithm", algorithms.WINOGRAD)
def test_winograd_layer_matches_torch(algorithm, backend, error_log):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 7, 6, 4))
    layer = layers.Conv2D(5, 3, padding="same", dtype="float64", algorithm=algorithm)
    y = layer.forward(x)
    upstream = rng.standard_normal(y.shape)
    dx = layer.backward(upstream)
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    kt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, kt, bt, padding=1)
    yt.backward(torch.tensor(upstream.transpose(0, 3, 1, 2)))
    pairs = [(y, yt.detach().numpy().transpose(0, 2, 3, 1)),
             (dx, xt.grad.numpy().transpose(0, 2, 3, 1)),
             (layer.grads["kernel"], kt.grad.numpy().transpose(2, 3, 1, 0)),
             (layer.grads["bias"], bt.grad.numpy())]
    for mine, theirs in pairs:
        err = gradcheck.relative_error(mine, theirs)
        error_log.record(f"torch parity {algorithm} conv", err)
        assert err < 1e-12


def test_auto_resolves_per_backend_and_rule(monkeypatch):
    conv = layers.Conv2D(8, 3, padding="same")
    conv.build((8, 8, 16))
    wide = (4, 8, 8, 16)
    with minicnn.use_backend("numba"):
        monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
        # >= 16 input channels: F(4x4, 3x3) forward; a Winograd backward from 8x8 outputs
        assert conv.algorithm_for(wide) == ("winograd4", "winograd")
        assert conv.algorithm_for((4, 6, 6, 16)) == ("winograd4", "im2col")
        assert conv.algorithm_for((4, 16, 16, 16)) == ("winograd4", "winograd")
        narrow = layers.Conv2D(8, 3, padding="same")
        narrow.build((8, 8, 3))
        assert narrow.algorithm_for((4, 16, 16, 3)) == ("im2col", "im2col")
        strided = layers.Conv2D(8, 3, strides=2, padding="same")
        strided.build((8, 8, 16))
        assert strided.algorithm_for(wide) == ("im2col", "im2col")
        with algorithms.use("im2col"):
            assert conv.algorithm_for(wide) == ("im2col", "im2col")
        forced = layers.Conv2D(8, 3, padding="same", algorithm="im2col")
        forced.build((8, 8, 16))
        with algorithms.use("winograd"):                       # only "auto" follows use()
            assert forced.algorithm_for(wide) == ("im2col", "im2col")
            assert conv.algorithm_for(wide) == ("winograd", "winograd")
        with algorithms.use("winograd4"):                      # its backward: F(2x2, 3x3)
            assert conv.algorithm_for(wide) == ("winograd4", "winograd")
    for name in ("reference", "numpy"):
        with minicnn.use_backend(name):
            assert conv.algorithm_for(wide) == ("im2col", "im2col")


def test_the_autotuner_measures_once_and_caches_per_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("MINICNN_AUTOTUNE", "1")
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path))
    algorithms.clear()
    calls = []
    real = algorithms.measure

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(algorithms, "measure", counting)
    conv = layers.Conv2D(8, 3, padding="same")
    conv.build((8, 8, 16))
    try:
        with minicnn.use_backend("numba"):
            first = conv.algorithm_for((4, 8, 8, 16))
            assert first[0] in algorithms.AUTO_FORWARD and len(calls) == 1
            assert first[1] in algorithms.BACKWARD_ALGORITHMS
            assert conv.algorithm_for((4, 8, 8, 16)) == first and len(calls) == 1
            data = json.loads((tmp_path / "conv-algorithms.json").read_text())
            (entries,) = data.values()
            (entry,) = entries.values()
            for p, chosen, names in zip(("forward", "backward"), first,
                                        (algorithms.AUTO_FORWARD,
                                         algorithms.BACKWARD_ALGORITHMS)):
                assert entry[p] == chosen
                assert entry[f"{p}_{chosen}_ms"] == min(entry[f"{p}_{a}_ms"] for a in names)
            assert algorithms.machine_key() in data
            algorithms.clear()                     # a new process: read from the file
            assert conv.algorithm_for((4, 8, 8, 16)) == first and len(calls) == 1
            algorithms.clear()
            (tmp_path / "conv-algorithms.json").write_text("{ damaged")
            assert conv.algorithm_for((4, 8, 8, 16))[1] in algorithms.BACKWARD_ALGORITHMS
            assert len(calls) == 2                 # damaged file: measured again
    finally:
        algorithms.clear()


def test_a_model_trains_the_same_with_either_algorithm():
    """The seed model's conv2 and conv3 (32 and 64 channels) on Winograd and on im2col:
    the same losses and weights after three Adam steps, to float32 rounding."""
    rng = np.random.default_rng(0)
    x = rng.random((16, 16, 16, 3)).astype(np.float32)
    y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 16)]
    results = {}
    for algo in ("im2col", "winograd"):
        minicnn.set_random_seed(0)
        model = models.Sequential([
            layers.Conv2D(32, 3, activation="relu", padding="same", input_shape=(16, 16, 3)),
            layers.MaxPooling2D(2, 2),
            layers.Conv2D(64, 3, activation="relu", padding="same", algorithm=algo),
            layers.MaxPooling2D(2, 2),
            layers.Conv2D(64, 3, activation="relu", padding="same", algorithm=algo),
            layers.Flatten(), layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        with minicnn.use_backend("numba"):
            losses = [float(model.train_on_batch(x, y)) for _ in range(3)]
        results[algo] = (losses, model.get_weights())
        assert model.layers[2].algorithm_for((16, 8, 8, 32)) == (algo, algo)
    np.testing.assert_allclose(results["im2col"][0], results["winograd"][0], rtol=1e-4)
    for a, b in zip(results["im2col"][1], results["winograd"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_fused_conv_pool_composes_when_the_conv_runs_winograd():
    """The fused conv+ReLU+pool kernel is im2col's: a Winograd conv before a pool runs
    the two layers' own passes, with the same numbers as the unfused model."""
    from minicnn.layers.fused import ConvReluPool
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 8, 8, 16)).astype(np.float32)
    conv = layers.Conv2D(8, 3, padding="same", activation="relu", algorithm="winograd")
    pool = layers.MaxPooling2D(2, 2)
    fused = ConvReluPool(conv, pool)
    with minicnn.use_backend("numba"):
        y = fused.forward(x)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        dx = fused.backward(dy)
        assert fused._composed
        y_ref = pool.forward(conv.forward(x))
        dx_ref = conv.backward(pool.backward(dy))
    assert np.array_equal(y, y_ref) and np.array_equal(dx, dx_ref)
    auto = ConvReluPool(layers.Conv2D(8, 3, padding="same", activation="relu"),
                        layers.MaxPooling2D(2, 2))
    with minicnn.use_backend("numba"):                 # "auto": the fused im2col step
        auto.forward(x)
        assert not auto._composed
        with algorithms.use("winograd"):
            auto.forward(x)
            assert auto._composed


def test_algorithm_is_saved_with_the_model(tmp_path):
    model = models.Sequential([layers.Conv2D(4, 3, input_shape=(6, 6, 2), algorithm="im2col"),
                               layers.Flatten(), layers.Dense(2)])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.save(tmp_path / "m.npz")
    assert models.load_model(tmp_path / "m.npz").layers[0].algorithm == "im2col"
    model.save(tmp_path / "m.keras")         # Keras's Conv2D has no such argument
    config = json.loads(__import__("zipfile").ZipFile(tmp_path / "m.keras").read("config.json"))
    assert "algorithm" not in json.dumps(config)
    assert models.load_model(tmp_path / "m.keras").layers[0].algorithm == "auto"
    assert ops.winograd_conv2d_forward.__doc__ == reference.winograd_conv2d_forward.__doc__


def test_winograd_forward_with_im2col_backward_gives_the_same_gradients(monkeypatch):
    """The fixed rule runs a 6x6, 16-channel layer Winograd (F(4x4, 3x3)) forward and im2col
    backward:
    its output and gradients equal those of a plain im2col layer with the same weights."""
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 6, 16))
    mixed = layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    plain = layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64",
                          algorithm="im2col")
    with minicnn.use_backend("numba"):
        y = mixed.forward(x)
        plain.build((6, 6, 16))
        plain.set_weights(mixed.get_weights())
        assert mixed.algorithm_for(x.shape) == ("winograd4", "im2col")
        dy = rng.standard_normal(y.shape)
        dx = mixed.backward(dy)
        np.testing.assert_allclose(y, plain.forward(x), atol=1e-12)
        np.testing.assert_allclose(dx, plain.backward(dy), atol=1e-12)
    for key in ("kernel", "bias"):
        np.testing.assert_allclose(mixed.grads[key], plain.grads[key], atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(case=conv_case())
def test_fused_winograd_relu_pool_forward_equals_the_composition(case):
    """Every backend's fused Winograd + ReLU + 2x2 pool equals maxpool(relu(direct conv)),
    argmax included wherever the ReLU passes (elsewhere no gradient flows)."""
    x, kernel, bias, _ = _arrays(*case)
    pads = case[5]
    y_ref, arg_ref = reference.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    for name, impl in _IMPLS.items():
        y, arg = impl.winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
        assert y.shape == y_ref.shape and arg.dtype == np.uint8, name
        np.testing.assert_allclose(y, y_ref, rtol=1e-11, atol=1e-11, err_msg=name)
        assert np.array_equal(arg[y_ref > 0], arg_ref[y_ref > 0]), name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_winograd_ties_go_to_the_first_maximum(dtype):
    """Integer images and kernel, a positive bias: Winograd's transforms stay exact (sums
    of integers and quarters), so tied windows tie exactly and the winner must be the
    first, as in the im2col fused kernel (black MNIST backgrounds are such ties)."""
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, size=(3, 10, 12, 2)).astype(dtype)
    x[0] = 0
    x[1, 1:9, 2:11, :] = 1
    kernel = rng.integers(-1, 3, size=(3, 3, 2, 4)).astype(dtype)
    bias = np.arange(1, 5).astype(dtype)
    pads = (1, 1, 1, 1)
    y_im2col, arg_im2col = numba_ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    y, arg = numba_ops.winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
    assert np.array_equal(y, y_im2col)
    assert np.array_equal(arg, arg_im2col)
    assert (arg[0] == 0).all()                       # the all-zeros image: four-way ties


@pytest.mark.parametrize("side, forward, backward", [(6, "winograd4", "im2col+winograd"),
                                                     (16, "winograd4", "winograd")])
def test_an_auto_conv_before_a_pool_runs_the_fused_winograd_step(monkeypatch, error_log, side,
                                                                  forward, backward):
    """The fixed rule gives a 16-channel conv the F(4x4, 3x3) forward (fused with the pool),
    and a Winograd backward from 8x8 outputs: at 6x6 the im2col weight gradient with a
    Winograd dx, at 16x16 the fused F(2x2, 3x3) backward. Either way: the numbers of the
    layers unfused, float64 finite differences, and float32 without an upcast."""
    from minicnn.layers.fused import ConvReluPool
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")
    rng = np.random.default_rng(side)
    shape = (side, side, 16)
    x = rng.standard_normal((3,) + shape)
    conv = layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64")
    fused = ConvReluPool(conv, layers.MaxPooling2D(2, 2, dtype="float64"))
    plain_conv = layers.Conv2D(4, 3, padding="same", activation="relu", dtype="float64",
                               algorithm="im2col")
    plain_pool = layers.MaxPooling2D(2, 2, dtype="float64")
    with minicnn.use_backend("numba"):
        y = fused.forward(x)
        assert (fused.fused_forward, fused.fused_backward) == (forward, backward)
        plain_conv.build(shape)
        plain_conv.set_weights(conv.get_weights())
        dy = rng.standard_normal(y.shape)
        dx = fused.backward(dy)
        y_ref = plain_pool.forward(plain_conv.forward(x))
        dx_ref = plain_conv.backward(plain_pool.backward(dy))
        np.testing.assert_allclose(y, y_ref, atol=1e-12)
        np.testing.assert_allclose(dx, dx_ref, atol=1e-12)
        for key in ("kernel", "bias"):
            np.testing.assert_allclose(conv.grads[key], plain_conv.grads[key], atol=1e-12)
        errors = gradcheck.check_layer(fused, shape, batch_size=2, x=x[:2])
        assert (fused.fused_forward, fused.fused_backward) == (forward, backward)
        for err in errors.values():
            error_log.record(f"gradcheck fused {forward} step, {backward} backward (numba)", err)
            assert err < 1e-7
        conv32 = layers.Conv2D(4, 3, padding="same", activation="relu")
        fused32 = ConvReluPool(conv32, layers.MaxPooling2D(2, 2))
        y32 = fused32.forward(x.astype(np.float32))
        dx32 = fused32.backward(np.ones_like(y32))
        assert (fused32.fused_forward, fused32.fused_backward) == (forward, backward)
        assert y32.dtype == dx32.dtype == conv32.grads["kernel"].dtype == np.float32


@settings(max_examples=30, deadline=None)
@given(case=conv_case())
def test_the_input_gradient_by_winograd_equals_the_convolution_backward(case, error_log):
    """``winograd_conv2d_backward_input`` (dz convolved with the rotated kernel) gives the
    dx of ``conv2d_backward`` on every backend, float64, odd sizes and every padding."""
    x, kernel, bias, dz = _arrays(*case)
    pads = case[5]
    want = reference.conv2d_backward(x, kernel, dz, (1, 1), pads)[0]
    for name, impl in _IMPLS.items():
        dx = impl.winograd_conv2d_backward_input(dz, kernel, pads)
        assert dx.shape == x.shape and dx.dtype == np.float64, name
        err = np.abs(dx - want).max()
        error_log.record(f"winograd input gradient {name} vs direct, float64", err)
        assert err < 1e-11, name


def _fused_case(seed, n, h, w, c, f, pads, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c)).astype(dtype)
    kernel = rng.standard_normal((3, 3, c, f)).astype(dtype)
    bias = rng.standard_normal(f).astype(dtype)
    return x, kernel, bias, rng


@pytest.mark.parametrize("geometry", [(3, 8, 8, 5, 4, (1, 1, 1, 1)),
                                      (2, 7, 9, 3, 6, (1, 1, 1, 1)),   # odd: a dropped row
                                      (2, 9, 6, 4, 3, (0, 1, 2, 0))])
def test_fused_conv_pool_backward_takes_dx_from_winograd_with_the_same_gradients(geometry):
    """``conv2d_relu_maxpool_backward(..., dx_algorithm='winograd')`` equals the im2col
    dx and leaves the weight gradients as they are, on every backend (float64); without
    dx wanted it computes none."""
    x, kernel, bias, rng = _fused_case(11, *geometry)
    pads = geometry[-1]
    y, arg = reference.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    dy = rng.standard_normal(y.shape)
    want = reference.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads)
    for name, impl in _IMPLS.items():
        got = impl.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads,
                                                dx_algorithm="winograd")
        for g, w_ in zip(got, want):
            assert g.shape == w_.shape
            np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-10, err_msg=name)
        dx, dk, db = impl.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads,
                                                       need_dx=False, dx_algorithm="winograd")
        assert dx is None
        np.testing.assert_allclose(dk, want[1], rtol=1e-10, atol=1e-10, err_msg=name)


def test_winograd_dx_float32_stays_within_the_bound():
    """float32, the seed model's conv2 shape: the im2col dx within WINOGRAD_F32_BOUND of the
    scale sum |dz| |kernel| of the float64 truth, the Winograd dx within F(4x4, 3x3)'s bound
    (``tests/test_winograd4.py``; the numba backend computes it by F(4x4, 3x3)); measured
    here 2.1e-6 of the scale, against 2e-7 for im2col."""
    from test_winograd4 import WINOGRAD4_F32_BOUND
    x, kernel, bias, rng = _fused_case(12, 4, 16, 16, 32, 64, (1, 1, 1, 1), np.float32)
    pads = (1, 1, 1, 1)
    y, arg = numba_ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), pads)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    truth = reference.conv2d_relu_maxpool_backward(
        x.astype(np.float64), kernel.astype(np.float64), dy.astype(np.float64),
        y.astype(np.float64), arg, (1, 1), pads)[0]
    dz = numpy_ops.maxpool2d_backward(np.where(y > 0, dy, 0).astype(np.float64), arg,
                                      (4, 16, 16, 64), (2, 2), (2, 2), (0, 0, 0, 0))
    scale = reference.conv2d_backward(x.astype(np.float64), np.abs(kernel).astype(np.float64),
                                      np.abs(dz), (1, 1), pads)[0].max()
    for algorithm, bound in (("im2col", WINOGRAD_F32_BOUND), ("winograd", WINOGRAD4_F32_BOUND)):
        dx = numba_ops.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads,
                                                    dx_algorithm=algorithm)[0]
        assert dx.dtype == np.float32
        assert np.abs(dx - truth).max() < bound * scale, algorithm


def test_a_dx_algorithm_it_cannot_run_is_refused():
    x, kernel, bias, rng = _fused_case(13, 2, 6, 6, 2, 3, (1, 1, 1, 1))
    y, arg = reference.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), (1, 1, 1, 1))
    for impl in _IMPLS.values():
        with pytest.raises(ValueError, match="dx_algorithm must be 'im2col' or 'winograd', "
                                             "received 'fft'"):
            impl.conv2d_relu_maxpool_backward(x, kernel, y, y, arg, (1, 1), (1, 1, 1, 1),
                                              dx_algorithm="fft")
        y2, arg2 = reference.conv2d_relu_maxpool_forward(x, kernel, bias, (2, 2), (1, 1, 1, 1))
        with pytest.raises(ValueError, match=r"needs a 3x3 kernel at strides \(1, 1\), received "
                                             r"kernel shape \(3, 3, 2, 3\) and strides \(2, 2\)"):
            impl.conv2d_relu_maxpool_backward(x, kernel, y2, y2, arg2, (2, 2), (1, 1, 1, 1),
                                              dx_algorithm="winograd")
        with pytest.raises(ValueError, match=r"each pad must be 0, 1 or 2.*\(3, 0, 0, 0\)"):
            impl.winograd_conv2d_backward_input(np.zeros((1, 4, 4, 3)), kernel, (3, 0, 0, 0))


def test_the_fused_winograd_step_gradchecks_and_matches_torch(monkeypatch, error_log):
    """The fused conv + ReLU + pool step on the numba backend with a Winograd forward (and
    so a Winograd dx): float64 finite differences with a random upstream gradient, and
    PyTorch's conv2d + relu + max_pool2d gradients."""
    from minicnn.layers.fused import ConvReluPool
    monkeypatch.setenv("MINICNN_AUTOTUNE", "0")       # the fixed rule: 16 channels, Winograd
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 6, 6, 16))
    with minicnn.use_backend("numba"):
        conv = layers.Conv2D(3, 3, padding="same", activation="relu", dtype="float64")
        fused = ConvReluPool(conv, layers.MaxPooling2D(2, 2, dtype="float64"))
        errors = gradcheck.check_layer(fused, (6, 6, 16), batch_size=2, x=x)
        assert fused.fused_forward == "winograd4"
        y = fused.forward(x)
        upstream = rng.standard_normal(y.shape)
        dx = fused.backward(upstream)
    assert set(errors) == {"dx", "kernel", "bias"}
    for err in errors.values():
        error_log.record("gradcheck fused winograd conv+relu+pool (numba)", err)
        assert err < 1e-7
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    kt = torch.tensor(conv.params["kernel"].transpose(3, 2, 0, 1), requires_grad=True)
    bt = torch.tensor(conv.params["bias"], requires_grad=True)
    yt = torch.nn.functional.max_pool2d(torch.relu(torch.nn.functional.conv2d(xt, kt, bt,
                                                                              padding=1)), 2)
    yt.backward(torch.tensor(upstream.transpose(0, 3, 1, 2)))
    pairs = [(y, yt.detach().numpy().transpose(0, 2, 3, 1)),
             (dx, xt.grad.numpy().transpose(0, 2, 3, 1)),
             (conv.grads["kernel"], kt.grad.numpy().transpose(2, 3, 1, 0)),
             (conv.grads["bias"], bt.grad.numpy())]
    for mine, theirs in pairs:
        err = gradcheck.relative_error(mine, theirs)
        error_log.record("torch parity fused winograd conv+relu+pool", err)
        assert err < 1e-12


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_numba_kernel_transforms_equal_the_reference_matrices(dtype):
    """The numba backend's written-out ``G g G^T`` and its transpose ``G^T dU G`` against
    the reference's matrix products, with the dtype kept."""
    from minicnn.ops._kernels import winograd as winograd_k
    rng = np.random.default_rng(15)
    kernel = rng.standard_normal((3, 3, 5, 7)).astype(dtype)
    u = winograd_k.kernel_transform(kernel, dtype(0.5))
    assert u.dtype == dtype and u.shape == (16, 5, 7)
    tol = 1e-14 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(u, reference.winograd_kernel_transform(kernel).reshape(16, 5, 7),
                               atol=tol)
    du = rng.standard_normal((16, 5, 7)).astype(dtype)
    g = reference.WINOGRAD_G
    want = np.einsum("ai,abcf,bj->ijcf", g, du.reshape(4, 4, 5, 7).astype(np.float64), g)
    dk = winograd_k.kernel_gradient(du, dtype(0.5))
    assert dk.dtype == dtype and dk.shape == (3, 3, 5, 7)
    np.testing.assert_allclose(dk, want, atol=tol)


@pytest.mark.parametrize("geometry", [(3, 8, 8, 5, 4, (1, 1, 1, 1)),
                                      (2, 7, 9, 3, 6, (1, 1, 1, 1)),   # odd: a dropped row
                                      (2, 9, 6, 4, 3, (0, 1, 2, 0)),
                                      (5, 6, 6, 2, 3, (1, 1, 1, 1))])   # several slots
def test_the_fused_winograd_backward_equals_the_composition(geometry):
    """``winograd_conv2d_relu_maxpool_backward`` (the numba kernel builds each tile's dz
    from its pool window) against the reference's pool backward + direct conv backward,
    every backend, float64, with and without dx."""
    x, kernel, bias, rng = _fused_case(16, *geometry)
    pads = geometry[-1]
    y, arg = reference.winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
    dy = rng.standard_normal(y.shape)
    want = reference.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads)
    for name, impl in _IMPLS.items():
        for need_dx in (True, False):
            got = impl.winograd_conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, pads,
                                                             need_dx)
            assert (got[0] is None) == (not need_dx), name
            for g, w_ in zip(got, want):
                if g is None:
                    continue
                assert g.shape == w_.shape and g.dtype == np.float64
                np.testing.assert_allclose(g, w_, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("chunk", [1, 2, 3])
def test_the_fused_winograd_backward_in_chunks_of_tile_rows(chunk):
    """The fused pool backward kernel with one image cut into chunks of 1, 2 or 3 of its 5
    tile rows (an odd last pooled row dropped) against the reference's pool backward +
    direct conv backward, float64."""
    from minicnn.ops._kernels import winograd as winograd_k
    geometry = (3, 9, 8, 3, 4, (1, 1, 1, 1))
    x, kernel, bias, rng = _fused_case(17, *geometry)
    pads = geometry[-1]
    y, arg = reference.winograd_conv2d_relu_maxpool_forward(x, kernel, bias, pads)
    dy = rng.standard_normal(y.shape)
    want = reference.conv2d_relu_maxpool_backward(x, kernel, dy, y, arg, (1, 1), pads)
    u_t = np.ascontiguousarray(winograd_k.kernel_transform(kernel, 0.5).transpose(0, 2, 1))
    dx, du, db = winograd_k.winograd_backward(
        x, u_t, dy, y, arg.astype(np.uint8), 1, 1, 9, 8, True, False, True, 0.0, 2, 1, chunk,
        numba_ops._counter(), np.empty((0, 4)), 0.0)
    for got, expected in zip((dx, winograd_k.kernel_gradient(du, 0.5), db), want):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_a_choice_timed_on_a_busy_machine_is_not_cached(monkeypatch, tmp_path):
    """A measurement during which other processes kept the CPUs busy holds for this process
    only: nothing is written, and a new process measures again."""
    monkeypatch.setenv("MINICNN_AUTOTUNE", "1")
    monkeypatch.setenv("MINICNN_HOME", str(tmp_path))
    algorithms.clear()
    calls = []

    def busy(*args, **kwargs):
        calls.append(args)
        return {"forward": "winograd", "backward": "im2col", "forward_im2col_ms": 2.0,
                "forward_winograd_ms": 1.0, "backward_im2col_ms": 1.0,
                "backward_winograd_ms": 2.0, "others_cpus": algorithms.BUSY_CPUS + 0.5}

    monkeypatch.setattr(algorithms, "measure", busy)
    conv = layers.Conv2D(8, 3, padding="same")
    conv.build((8, 8, 16))
    try:
        with minicnn.use_backend("numba"):
            assert conv.algorithm_for((4, 8, 8, 16)) == ("winograd", "im2col")
            assert conv.algorithm_for((4, 8, 8, 16)) == ("winograd", "im2col")
            assert len(calls) == 1
            assert not (tmp_path / "conv-algorithms.json").exists()
            algorithms.clear()                     # a new process
            conv.algorithm_for((4, 8, 8, 16))
            assert len(calls) == 2
    finally:
        algorithms.clear()


def test_the_autotuner_keeps_the_fastest_call_and_reports_the_load():
    entry = algorithms.measure((2, 6, 6, 16), (3, 3, 16, 4), (1, 1, 1, 1), np.float32,
                               repeats=2)
    assert set(entry) == {"forward", "backward", "forward_im2col_ms", "forward_winograd4_ms",
                          "backward_im2col_ms", "backward_winograd_ms", "others_cpus"}
    for p, names in (("forward", algorithms.AUTO_FORWARD),
                     ("backward", algorithms.BACKWARD_ALGORITHMS)):
        # the choice is the fastest (the ms are rounded: a tie there is a tie)
        assert entry[f"{p}_{entry[p]}_ms"] == min(entry[f"{p}_{a}_ms"] for a in names)
    assert entry["others_cpus"] is None or entry["others_cpus"] >= 0


def test_the_backward_group_keeps_the_transformed_tiles_in_cache():
    """Images (or one image's tile rows) per GEMM in the F(2x2, 3x3) backward: the forward's
    rule, cut where a thread's transformed tiles would outgrow the budget (benchmarks/
    RESULTS.md 11), a large image into even chunks of tile rows."""
    rule = numba_ops._winograd_backward_group
    for (hw, c, f), want in {(8, 128, 128): (2, 4), (8, 64, 64): (5, 4), (16, 32, 64): (2, 8),
                             (16, 64, 64): (1, 8), (32, 32, 32): (1, 8),
                             (64, 32, 32): (1, 5)}.items():
        th = (hw + 1) // 2
        base = numba_ops._group(64, 2, 2 * th * th)
        assert rule(base, th, th, c, f, 4) == want, (hw, c, f)
    assert rule(8, 4, 4, 128, 128, 8) == (1, 4)   # float64: twice the bytes
    assert rule(8, 4, 4, 4096, 4096, 4) == (1, 1)  # never less than one tile row
    assert rule(3, 2, 2, 4, 4, 4) == (3, 2)        # small layers keep the forward's rule


@pytest.mark.parametrize("grp, chunk", [(1, 4), (2, 4), (3, 4), (5, 4), (1, 1), (1, 3)])
def test_the_backward_gives_the_same_gradients_at_every_group_size(grp, chunk):
    """The numba F(2x2, 3x3) backward kernel with 1, 2, 3 or 5 images per GEMM, or one
    image in chunks of 1 or 3 of its 4 tile rows, against the numpy twin, float64: 22
    images in 8 slots of 2 or 3, so 2 leaves partial groups, 3 and 5 groups cut short by
    the slot, and chunks of 3 a shorter last chunk."""
    from minicnn.ops._kernels import winograd as winograd_k
    rng = np.random.default_rng(10 * grp + chunk)
    n, h, w, c, f = 22, 7, 6, 5, 3
    x = rng.standard_normal((n, h, w, c))
    kernel = rng.standard_normal((3, 3, c, f))
    dy = rng.standard_normal((n, h, w, f))
    u_t = np.ascontiguousarray(winograd_k.kernel_transform(kernel, 0.5).transpose(0, 2, 1))
    dx, du, db = winograd_k.winograd_backward(
        x, u_t, dy, dy, numba_ops._NO_ARGMAX, 1, 1, h, w, True, False, False, 0.0, 2, grp,
        chunk, numba_ops._counter(), np.empty((0, f)), 0.0)
    dkernel = winograd_k.kernel_gradient(du, 0.5)
    want = numpy_ops.conv2d_backward(x, kernel, dy, (1, 1), (1, 1, 1, 1))
    for got, expected in zip((dx, dkernel, db), want):
        np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("c", [63, 64, 65, 130])
def test_channel_blocks_of_the_transforms(c):
    """The numba F(2x2, 3x3) input transform and its adjoint (the forward's and the
    backward's dx) go through the channels in blocks of ``scratch.TILE_CHANNELS`` (64)
    in stack scratch: one block short of it, exactly one, one more channel, two and a
    remainder; the forward, dx, dkernel and dbias against the reference, float64."""
    from minicnn.ops._kernels.scratch import TILE_CHANNELS
    assert TILE_CHANNELS == 64
    rng = np.random.default_rng(c)
    x = rng.standard_normal((2, 7, 9, c))
    kernel = rng.standard_normal((3, 3, c, 5))
    pads = (1, 1, 1, 1)
    dy = rng.standard_normal((2, 7, 9, 5))
    y = numba_ops.winograd_conv2d_forward(x, kernel, None, pads)
    np.testing.assert_allclose(y, reference.conv2d_forward(x, kernel, None, (1, 1), pads),
                               rtol=1e-11, atol=1e-11)
    got = numba_ops.winograd_conv2d_backward(x, kernel, dy, pads, True)
    want = reference.conv2d_backward(x, kernel, dy, (1, 1), pads, True)
    for name, g, wv in zip(("dx", "dkernel", "dbias"), got, want):
        np.testing.assert_allclose(g, wv, rtol=1e-10, atol=1e-10, err_msg=name)
