"""The residual network's fused ops and steps: batch norm + ReLU, Add + ReLU, batch norm
folded into a convolution at inference, the parallel add.

- the three backends agree (hypothesis-drawn shapes, float32 and float64, Fortran layouts)
  and no op modifies its inputs;
- each fused op is the composition of the unfused ops (the numba kernels bit for bit where
  they run the same sums);
- every backward matches float64 finite differences of ``sum(forward * r)`` for a random
  ``r``, and PyTorch autograd (skipped without torch);
- in a model the fused plan gives the layer-by-layer numbers: the same loss, gradients and
  moving statistics in training, predictions within rounding at inference; the planner
  fuses only where the intermediate tensor feeds nothing else and is not an output.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_ops_backends import (DTYPE_NAMES, SEEDS, TOL, check_grad, compare, layout, norm, rel_err,
                               run_backends)
from test_ops_norm_pool import bn_cases, bn_params

import minicnn
from minicnn import gradcheck, layers, ops
from minicnn.layers import fused


# ============================================================================= batch norm + ReLU
@st.composite
def bn_relu_cases(draw):
    """A batch-norm case of test_ops_norm_pool (its epsilon unused: 1e-3 here), and relu."""
    case = draw(bn_cases())
    case["relu"] = draw(st.booleans())
    return case


@settings(max_examples=40, deadline=None, database=None)
@given(case=bn_relu_cases())
@example(case=dict(shape=(3, 5, 4, 6), affine="both", relu=True, shift=5.0, fortran=True,
                   dtype="float32", seed=1))
def test_batchnorm_relu_backends_agree(case, error_log):
    dt = np.dtype(case["dtype"])
    rng = np.random.default_rng(case["seed"])
    shape, c = case["shape"], case["shape"][-1]
    x = layout((rng.standard_normal(shape) * 2 + case["shift"]).astype(dt), case["fortran"])
    gamma, beta = bn_params(rng, c, case["affine"], dt)
    fwd = run_backends("batchnorm_relu_train_forward", x, gamma, beta, 1e-3, case["relu"])
    compare(fwd, dt, "batchnorm_relu_train_forward", error_log, ["y", "mean", "var", "inv_std"])
    y, mean, _, inv_std = fwd["reference"]
    if case["relu"]:
        assert np.all(y >= 0)
    dy = layout(rng.standard_normal(shape).astype(dt), case["fortran"])
    bwd = run_backends("batchnorm_relu_backward", dy, x, gamma, beta, mean, inv_std,
                       case["relu"])
    g = np.ones(c) if gamma is None else gamma.astype(np.float64)
    floor = norm(np.abs(dy.astype(np.float64) * g) * inv_std.astype(np.float64)) * 3
    compare(bwd, dt, "batchnorm_relu_backward", error_log, ["dx", "dgamma", "dbeta"],
            [floor, norm(dy) * np.sqrt(c), norm(dy) * np.sqrt(c)])


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_relu_is_the_composition_of_batchnorm_and_relu(backend, relu, dtype):
    rng = np.random.default_rng(3)
    dt = np.dtype(dtype)
    x = (rng.standard_normal((4, 5, 3, 6)) * 2 + 1).astype(dt)
    gamma, beta = rng.standard_normal(6).astype(dt), rng.standard_normal(6).astype(dt)
    dy = rng.standard_normal(x.shape).astype(dt)
    y, mean, var, inv_std = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu)
    t, mean2, var2, xhat, inv_std2 = ops.batchnorm_train_forward(x, gamma, beta, 1e-3)
    y2 = ops.activation_forward("relu", t) if relu else t
    dt_ = ops.activation_backward("relu", t, y2, dy) if relu else dy
    dx2, dgamma2, dbeta2 = ops.batchnorm_backward(dt_, xhat, gamma, inv_std2)
    dx, dgamma, dbeta = ops.batchnorm_relu_backward(dy, x, gamma, beta, mean, inv_std, relu)
    # the same expressions in the same order: equal (NumPy's pairwise sums may differ by ulps)
    tol = 0 if backend != "numpy" else 10 * np.finfo(dt).eps
    for name, a, b in (("y", y, y2), ("mean", mean, mean2), ("var", var, var2),
                       ("inv_std", inv_std, inv_std2), ("dx", dx, dx2),
                       ("dgamma", dgamma, dgamma2), ("dbeta", dbeta, dbeta2)):
        assert a.dtype == dt, name
        assert rel_err(a, b) <= tol, name


@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("shape", [(4, 3), (2, 3, 2, 2)])
def test_batchnorm_relu_gradients_match_finite_differences(backend, error_log, relu, shape):
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape) * 2 + 0.5
    c = shape[-1]
    gamma, beta = rng.standard_normal(c), rng.standard_normal(c) * 0.5
    r = rng.standard_normal(shape)
    _, mean, _, inv_std = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu)
    dx, dgamma, dbeta = ops.batchnorm_relu_backward(r, x, gamma, beta, mean, inv_std, relu)

    def loss(xv, g=gamma, b=beta):
        return np.sum(ops.batchnorm_relu_train_forward(xv, g, b, 1e-3, relu)[0] * r)

    check_grad("batchnorm_relu dx", dx, loss, x, error_log, backend)
    check_grad("batchnorm_relu dgamma", dgamma, lambda gv: loss(x, g=gv), gamma, error_log,
               backend)
    check_grad("batchnorm_relu dbeta", dbeta, lambda bv: loss(x, b=bv), beta, error_log, backend)


def test_batchnorm_relu_matches_torch(backend, error_log):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(20)
    x = rng.standard_normal((3, 5, 4, 3)) * 3 + 2
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    r = rng.standard_normal(x.shape)
    y, mean, var, inv_std = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3)
    dx, dgamma, dbeta = ops.batchnorm_relu_backward(r, x, gamma, beta, mean, inv_std)
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = F.relu(F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3))
    (yt * torch.tensor(np.ascontiguousarray(r.transpose(0, 3, 1, 2)))).sum().backward()
    to_nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()  # noqa: E731
    for name, got, want in (("y", y, to_nhwc(yt)), ("dx", dx, to_nhwc(xt.grad)),
                            ("dgamma", dgamma, gt.grad.numpy()),
                            ("dbeta", dbeta, bt.grad.numpy())):
        err = float(np.abs(got - want).max() / np.abs(want).max())
        error_log.record("torch parity (max-norm relative)", err)
        assert err < 1e-6, f"{name}: {err:.3e} against torch"


@pytest.mark.parametrize("moments", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_residual_is_the_sum_then_relu_on_every_backend(relu, moments, dtype,
                                                                  error_log):
    """``batchnorm_relu_train_forward(..., residual=r)``: ``max(bn(x) + r, 0)`` (the end of
    a residual block in training), the reference's by its definition on every backend,
    the numba kernel bit for bit batch norm then the numba add (+ ReLU) the layers ran;
    the statistics those of batch norm alone; r and x untouched."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((3, 4, 5, 6)) * 2 + 1).astype(dt)
    gamma, beta = rng.standard_normal(6).astype(dt), rng.standard_normal(6).astype(dt)
    r = rng.standard_normal(x.shape).astype(dt)
    stats = None
    if moments:
        rows = x.reshape(-1, 6).astype(np.float64)
        stats = (rows.mean(axis=0), rows.var(axis=0))
    results = {}
    for name in ("reference", "numpy", "numba"):
        before = (x.copy(), r.copy())
        with minicnn.use_backend(name):
            t, *plain_stats = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, False,
                                                               moments=stats)
            out = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu, moments=stats,
                                                   residual=r)
            composed = ops.add_relu_forward(r, t) if relu else ops.add_forward(r, t)
        np.testing.assert_array_equal(x, before[0])
        np.testing.assert_array_equal(r, before[1])
        assert out[0].dtype == dt and out[0].shape == x.shape
        for got, want in zip(out[1:], plain_stats):
            np.testing.assert_array_equal(got, want)
        if name == "reference":
            want = t + r
            np.testing.assert_array_equal(out[0], np.maximum(want, 0) if relu else want)
        if name == "numba":
            np.testing.assert_array_equal(out[0], composed)
        results[name] = out[0]
    compare(results, dt, "batchnorm_relu_train_forward(residual=)", error_log, ["y"],
            [norm(np.abs(results["reference"])) + norm(r)])


@pytest.mark.parametrize("backend", ["reference", "numpy", "numba"])
def test_batchnorm_residual_names_a_wrong_shape_or_dtype(backend):
    x = np.ones((2, 3, 3, 4), np.float32)
    with minicnn.use_backend(backend):
        for bad in (np.ones((2, 3, 3, 5), np.float32), np.ones(x.shape, np.float64)):
            with pytest.raises(ValueError) as info:
                ops.batchnorm_relu_train_forward(x, None, None, 1e-3, residual=bad)
            assert str(info.value) == (
                f"batchnorm_relu_train_forward: residual must be None or an array of the "
                f"output's shape {x.shape} and dtype float32, received an array of shape "
                f"{bad.shape} and dtype {bad.dtype}")


def test_batchnorm_residual_matches_torch(backend, error_log):
    """batch norm (training) + r then ReLU against PyTorch, float64; the gradient of the
    step is the ReLU's on the output, then batch norm's without a ReLU."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 5, 4, 3)) * 3 + 2
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    res, dy = rng.standard_normal(x.shape), rng.standard_normal(x.shape)
    y, mean, var, inv_std = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, True,
                                                             residual=res)
    d_sum = ops.activation_backward("relu", y, y, dy)
    dx, dgamma, dbeta = ops.batchnorm_relu_backward(d_sum, x, gamma, beta, mean, inv_std,
                                                    relu=False)
    nchw = lambda a: torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
    xt, rt = nchw(x).requires_grad_(), nchw(res).requires_grad_()
    gt = torch.tensor(gamma, requires_grad=True)
    bt = torch.tensor(beta, requires_grad=True)
    yt = F.relu(F.batch_norm(xt, None, None, gt, bt, training=True, eps=1e-3) + rt)
    (yt * nchw(dy)).sum().backward()
    to_nhwc = lambda t: t.detach().permute(0, 2, 3, 1).numpy()  # noqa: E731
    for name, got, want in (("y", y, to_nhwc(yt)), ("dx", dx, to_nhwc(xt.grad)),
                            ("dresidual", d_sum, to_nhwc(rt.grad)),
                            ("dgamma", dgamma, gt.grad.numpy()),
                            ("dbeta", dbeta, bt.grad.numpy())):
        err = float(np.abs(got - want).max() / np.abs(want).max())
        error_log.record("torch parity (max-norm relative)", err)
        assert err < 1e-12, f"{name}: {err:.3e} against torch"


def test_batchnorm_relu_backward_names_a_wrong_shape():
    with minicnn.use_backend("numba"):
        with pytest.raises(ValueError, match=r"batchnorm_relu_backward: x must have dy's shape"):
            ops.batchnorm_relu_backward(np.zeros((2, 3), np.float32), np.zeros((3, 3), np.float32),
                                        None, None, np.zeros(3, np.float32),
                                        np.ones(3, np.float32))


# ============================================================================= add, add + ReLU
@settings(max_examples=30, deadline=None, database=None)
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), fortran=st.booleans(),
       dtype=DTYPE_NAMES, seed=SEEDS)
def test_add_and_add_relu_backends_agree(shape, fortran, dtype, seed, error_log):
    dt = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    a = layout(rng.standard_normal(shape).astype(dt), fortran and len(shape) == 4)
    b = rng.standard_normal(shape).astype(dt)
    compare(run_backends("add_forward", a, b), dt, "add_forward", error_log)
    out = run_backends("add_relu_forward", a, b)
    compare(out, dt, "add_relu_forward", error_log)
    np.testing.assert_array_equal(out["numba"], np.maximum(a + b, 0))


def test_add_relu_keeps_nan_and_its_backward_is_the_relu_of_the_sum(backend):
    a = np.array([1.0, -2.0, np.nan, 0.5, -0.5])
    b = np.array([1.0, 1.0, 0.0, -0.5, 0.25])
    y = ops.add_relu_forward(a, b)
    np.testing.assert_array_equal(y, [2.0, 0.0, np.nan, 0.0, 0.0])
    dy = np.arange(1.0, 6.0)
    # the mask read from y (what AddRelu's backward does) is the mask of the sum
    np.testing.assert_array_equal(ops.activation_backward("relu", y, y, dy),
                                  ops.activation_backward("relu", a + b, None, dy))


def test_add_ops_name_a_mismatch():
    with minicnn.use_backend("numba"):
        for op in (ops.add_forward, ops.add_relu_forward):
            with pytest.raises(ValueError, match=r"b must have a's shape \(2, 3\)"):
                op(np.zeros((2, 3), np.float32), np.zeros((3, 2), np.float32))
            with pytest.raises(ValueError, match="float32"):
                op(np.zeros(3, np.float32), np.zeros(3, np.float64))


# ============================================================================= folding
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_fold_batchnorm_is_conv_then_inference_batchnorm(backend, use_bias, dtype, tol):
    rng = np.random.default_rng(5)
    dt = np.dtype(dtype)
    x = rng.standard_normal((2, 5, 5, 3)).astype(dt)
    kernel = rng.standard_normal((3, 3, 3, 4)).astype(dt)
    bias = rng.standard_normal(4).astype(dt) if use_bias else None
    gamma, beta, mean = (rng.standard_normal(4).astype(dt) for _ in range(3))
    var = (rng.random(4) + 0.2).astype(dt)
    pads = (1, 1, 1, 1)
    before = [a.copy() for a in (kernel, gamma, beta, mean, var)]
    k2, b2 = ops.fold_batchnorm(kernel, bias, gamma, beta, mean, var, 1e-3)
    for a, b in zip(before, (kernel, gamma, beta, mean, var)):
        np.testing.assert_array_equal(a, b)
    assert k2.dtype == dt and b2.dtype == dt and k2.shape == kernel.shape
    z = ops.conv2d_forward(x, kernel, bias, (1, 1), pads)
    want = ops.batchnorm_inference_forward(z, gamma, beta, mean, var, 1e-3)
    got = ops.conv2d_forward(x, k2, b2, (1, 1), pads)
    assert rel_err(got, want) < tol


# ============================================================================= in a model
def _residual_model(dtype="float32"):
    """A stem and two residual blocks (the second strided, with a 1x1 conv + BN shortcut)."""
    minicnn.utils.set_random_seed(0)
    kw = dict(dtype=dtype)

    def conv_bn(x, filters, strides=1, size=3):
        x = layers.Conv2D(filters, size, strides=strides, padding="same", use_bias=False,
                          **kw)(x)
        return layers.BatchNormalization(**kw)(x)

    def block(x, filters, strides):
        y = layers.Activation("relu", **kw)(conv_bn(x, filters, strides))
        y = conv_bn(y, filters)
        shortcut = conv_bn(x, filters, strides, 1) if strides != 1 else x
        return layers.ReLU(**kw)(layers.Add(**kw)([shortcut, y]))

    inputs = minicnn.Input(shape=(8, 8, 3), dtype=dtype)
    x = layers.Activation("relu", **kw)(conv_bn(inputs, 4))
    x = block(block(x, 4, 1), 6, 2)
    outputs = layers.Dense(10, activation="softmax", **kw)(layers.GlobalAveragePooling2D(**kw)(x))
    return minicnn.Model(inputs, outputs)


def _randomise_batchnorm(model, rng):
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.params["gamma"].shape[0]
            layer.params["gamma"][:] = rng.standard_normal(c)
            layer.params["beta"][:] = rng.standard_normal(c) * 0.3
            layer.params["moving_mean"][:] = rng.standard_normal(c) * 0.1
            layer.params["moving_variance"][:] = rng.random(c) + 0.5


def test_the_residual_plan_fuses_every_block_on_numba():
    with minicnn.use_backend("numba"):
        model = _residual_model()
        steps = model.steps()
        kinds = [type(layer).__name__ for layer, _, _ in steps]
    # each block ends in one step: its last conv + BN, the shortcut added, the ReLU
    assert kinds.count("ConvBatchNorm") == 4 and kinds.count("ConvBatchNormAddRelu") == 2, kinds
    assert not {"BatchNormalization", "Add", "AddRelu", "ReLU"} & set(kinds), kinds
    for layer, inputs, _ in steps:
        if isinstance(layer, fused.ConvBatchNormAddRelu):
            assert len(inputs) == 2                  # [the conv's input, the shortcut]
    # the steps run in an order where every input is made before it is read
    made = {t.id for t in model.inputs}
    for _, inputs, outputs in steps:
        assert set(inputs) <= made
        made.update(outputs)
    with minicnn.use_backend("numpy"):              # no fusions declared: every layer
        assert not any(isinstance(s, fused._Chain) for s, _, _ in model.steps())


def fused_and_layer_by_layer(model, x, y):
    """One ``backprop`` of a compiled numba ``model`` from its current weights, fused and
    layer by layer: ``{fuse: (loss, grads, weights after)}`` (weights reset between, the
    moving statistics moved by each)."""
    start = model.get_weights()
    out = {}
    for fuse in (True, False):
        model.set_weights(start)
        model.fuse = fuse
        loss = model.backprop(x, y)
        out[fuse] = (loss, {k: g.copy() for k, g in model.grads.items()},
                     [w.copy() for w in model.get_weights()])
    return out


def assert_same_bits(out):
    """The fused and the layer-by-layer pass of :func:`fused_and_layer_by_layer` gave the
    same loss, gradients and moving statistics, bit for bit."""
    assert out[True][0] == out[False][0]
    for key, g in out[False][1].items():
        np.testing.assert_array_equal(out[True][1][key], g, err_msg=key)
    for a, b in zip(out[True][2], out[False][2]):    # the moving statistics moved alike
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_fused_residual_training_gives_the_layer_by_layer_numbers(dtype):
    rng = np.random.default_rng(1)
    with minicnn.use_backend("numba"):
        model = _residual_model(dtype)
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        _randomise_batchnorm(model, rng)
        x = rng.standard_normal((4, 8, 8, 3)).astype(model.dtype)
        y = rng.integers(0, 10, (4, 1))
        start = model.get_weights()
        out = fused_and_layer_by_layer(model, x, y)
        assert_same_bits(out)
        assert any(not np.array_equal(a, b) for a, b in zip(start, out[True][2]))
        # inference: batch norm folded into the convolutions
        model.set_weights(start)
        model.fuse = True
        folded = model.predict_on_batch(x)
        model.fuse = False
        plain = model.predict_on_batch(x)
        assert rel_err(folded, plain) < TOL[np.dtype(model.dtype)]


def test_a_backward_after_a_folded_inference_pass_is_the_layers_backward():
    rng = np.random.default_rng(2)
    with minicnn.use_backend("numba"):
        conv = layers.Conv2D(3, 3, padding="same", use_bias=False, dtype="float64")
        bn = layers.BatchNormalization(dtype="float64")
        relu = layers.ReLU(dtype="float64")
        inputs = minicnn.Input(shape=(5, 5, 2), dtype="float64")
        model = minicnn.Model(inputs, layers.GlobalAveragePooling2D(dtype="float64")(
            relu(bn(conv(inputs)))))
        model.compute_input_gradient = True
        _randomise_batchnorm(model, rng)
        x = rng.standard_normal((2, 5, 5, 2))
        r = rng.standard_normal((2, 3))
        grads = {}
        for fuse in (True, False):
            model.fuse = fuse
            model.call(x, training=False)
            dx = model.backward(r)
            grads[fuse] = (dx, conv.grads["kernel"].copy(), bn.grads["gamma"].copy())
        for a, b in zip(grads[True], grads[False]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_no_fusion_where_the_intermediate_tensor_is_read_elsewhere_or_an_output():
    with minicnn.use_backend("numba"):
        inputs = minicnn.Input(shape=(6, 6, 2))
        z = layers.Conv2D(3, 3, padding="same", use_bias=False)(inputs)
        t = layers.BatchNormalization()(z)
        y = layers.ReLU()(t)
        side = layers.GlobalAveragePooling2D()(t)        # t feeds a second layer
        out = layers.GlobalAveragePooling2D()(y)
        kinds = [type(s).__name__ for s, _, _ in minicnn.Model(inputs, [out, side]).steps()]
        assert "ConvBatchNorm" in kinds and "ReLU" in kinds    # conv+BN yes, +ReLU no
        step = next(s for s, _, _ in minicnn.Model(inputs, [out, side]).steps()
                    if type(s).__name__ == "ConvBatchNorm")
        assert step.relu is None
        # the BN output is a model output: conv+BN only
        kinds = [type(s).__name__ for s, _, _ in minicnn.Model(inputs, [t, y]).steps()]
        assert kinds == ["ConvBatchNorm", "ReLU"]
        # the conv output is a model output: nothing fuses
        kinds = [type(s).__name__ for s, _, _ in minicnn.Model(inputs, [z, y]).steps()]
        assert kinds == ["Conv2D", "BatchNormalization", "ReLU"]


# ============================================================================= residual epilogue
RESIDUAL_CONVS = [  # (op, kernel size, strides, pads): the three conv forwards
    ("conv2d_forward", 3, (1, 1), (1, 1, 1, 1)),
    ("conv2d_forward", 1, (2, 2), (0, 0, 0, 0)),         # a strided 1x1 shortcut
    ("conv2d_forward", 3, (2, 2), (0, 1, 0, 1)),
    ("winograd_conv2d_forward", 3, None, (1, 1, 1, 1)),
    ("winograd4_conv2d_forward", 3, None, (1, 0, 1, 2)),
]


def _conv_call(op, x, kernel, bias, strides, pads, **kw):
    args = (x, kernel, bias) + ((strides,) if strides else ()) + (pads,)
    return getattr(ops, op)(*args, **kw)


@pytest.mark.parametrize("op,size,strides,pads", RESIDUAL_CONVS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv_residual_is_the_sum_then_relu_on_every_backend(op, size, strides, pads, relu,
                                                             dtype, error_log):
    """``residual=r``: ``max(conv + bias + r, 0)`` on every backend, the reference's by its
    definition, and the numba kernels' epilogue bit for bit the conv then the numba
    add (+ ReLU) that the layers would run."""
    dt = np.dtype(dtype)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((3, 9, 10, 5)).astype(dt)
    kernel = rng.standard_normal((size, size, 5, 6)).astype(dt)
    bias = rng.standard_normal(6).astype(dt)
    with minicnn.use_backend("reference"):
        plain = _conv_call(op, x, kernel, bias, strides, pads)
    r = rng.standard_normal(plain.shape).astype(dt)
    want = np.maximum(plain + r, 0) if relu else plain + r
    results = {}
    for name in ("reference", "numpy", "numba"):
        before = r.copy()
        with minicnn.use_backend(name):
            results[name] = _conv_call(op, x, kernel, bias, strides, pads, relu=relu,
                                       residual=r)
        np.testing.assert_array_equal(r, before)             # the residual is not touched
        assert results[name].dtype == dt and results[name].shape == plain.shape
    np.testing.assert_array_equal(results["reference"], want)
    compare(results, dt, op, error_log, ["y"], [norm(np.abs(plain)) + norm(r)])
    with minicnn.use_backend("numba"):
        y = _conv_call(op, x, kernel, bias, strides, pads)
        composed = ops.add_relu_forward(r, y) if relu else ops.add_forward(r, y)
    np.testing.assert_array_equal(results["numba"], composed)


@pytest.mark.parametrize("backend", ["reference", "numpy", "numba"])
@pytest.mark.parametrize("op,size,strides,pads", RESIDUAL_CONVS[:1] + RESIDUAL_CONVS[3:])
def test_conv_residual_names_a_wrong_shape_or_dtype(backend, op, size, strides, pads):
    x = np.ones((2, 6, 6, 3), np.float32)
    kernel = np.ones((size, size, 3, 4), np.float32)
    with minicnn.use_backend(backend):
        y = _conv_call(op, x, kernel, None, strides, pads)
        for bad in (np.ones((2, 6, 6, 5), np.float32), np.ones(y.shape, np.float64)):
            with pytest.raises(ValueError) as info:
                _conv_call(op, x, kernel, None, strides, pads, residual=bad)
            assert str(info.value) == (
                f"{op}: residual must be None or an array of the output's shape {y.shape} "
                f"and dtype float32, received an array of shape {bad.shape} and dtype "
                f"{bad.dtype}")


def _without_residual_fusion(monkeypatch):
    from minicnn.ops import numba_ops
    monkeypatch.setattr(numba_ops, "FUSIONS", tuple(f for f in numba_ops.FUSIONS
                                                    if f != "conv2d_batchnorm_add_relu"))


@pytest.mark.parametrize("algorithm", ["im2col", "winograd", "winograd4"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_residual_epilogue_gives_the_bits_of_conv_batchnorm_then_add_relu(
        monkeypatch, algorithm, dtype):
    """At inference the block's last step (folded conv, shortcut and ReLU in the conv's
    epilogue) gives the numbers of the plan without that fusion (the folded conv, then
    Add + ReLU) bit for bit, and in training the same loss, gradients and moving
    statistics; each model has its own plan, made on its first pass."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 8, 8, 3)).astype(dtype)
    y = rng.integers(0, 10, (4, 1))
    runs = {}
    with minicnn.use_backend("numba"), ops.algorithms.use(algorithm):
        for fusion in (True, False):
            if not fusion:
                _without_residual_fusion(monkeypatch)
            model = _residual_model(dtype)
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            _randomise_batchnorm(model, np.random.default_rng(4))
            kinds = [type(s).__name__ for s, _, _ in model.steps()]
            assert ("ConvBatchNormAddRelu" in kinds) == fusion, kinds
            pred = model.predict_on_batch(x)
            loss = model.backprop(x, y)
            # (the two models' layers have different names: their gradients in order)
            runs[fusion] = (pred, loss, [g.copy() for g in model.grads.values()],
                            model.get_weights())
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    assert runs[True][1] == runs[False][1]
    assert len(runs[True][2]) == len(runs[False][2])
    for a, b in zip(runs[True][2], runs[False][2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs[True][3], runs[False][3]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("training", [True, False])
def test_the_residual_step_gradients_match_finite_differences(training):
    """float64 dL/dx, dL/dshortcut and dL/dkernel of the fused block end (conv -> BN ->
    Add -> ReLU) against central differences of ``sum(step(x, s) * r)`` for a random
    ``r``; in training batch norm runs on the batch's statistics (so through them), at
    inference on the moving ones (a backward after the folded pass runs the layers')."""
    rng = np.random.default_rng(5)
    with minicnn.use_backend("numba"):
        conv = layers.Conv2D(3, 3, padding="same", use_bias=False, dtype="float64")
        bn = layers.BatchNormalization(dtype="float64")
        x_in = minicnn.Input(shape=(5, 5, 2), dtype="float64")
        s_in = minicnn.Input(shape=(5, 5, 3), dtype="float64")
        out = layers.ReLU(dtype="float64")(layers.Add(dtype="float64")([s_in, bn(conv(x_in))]))
        model = minicnn.Model([x_in, s_in], out)
        model.compute_input_gradient = True
        step = model.steps()[0][0]
        assert isinstance(step, fused.ConvBatchNormAddRelu)
        _randomise_batchnorm(model, rng)
        x = rng.standard_normal((3, 5, 5, 2))
        s = rng.standard_normal((3, 5, 5, 3))
        r = rng.standard_normal((3, 5, 5, 3))
        moving = [bn.params[k].copy() for k in ("moving_mean", "moving_variance")]

        def loss(x_, s_, k_=None):
            if k_ is not None:
                conv.params["kernel"][...] = k_
            for k, v in zip(("moving_mean", "moving_variance"), moving):
                bn.params[k][...] = v
            return float(np.sum(model.call([x_, s_], training=training) * r))

        kernel = conv.params["kernel"].copy()
        loss(x, s)
        dx, ds = model.backward(r)
        dk = conv.grads["kernel"].copy()
        numeric = (gradcheck.numerical_gradient(lambda a: loss(a, s), x),
                   gradcheck.numerical_gradient(lambda a: loss(x, a), s),
                   gradcheck.numerical_gradient(lambda a: loss(x, s, a), kernel))
        loss(x, s, kernel)
    for got, want in zip((dx, ds, dk), numeric):
        assert gradcheck.relative_error(got, want) < 1e-7


@pytest.mark.parametrize("op,size,strides,pads", RESIDUAL_CONVS)
def test_conv_residual_matches_torch(op, size, strides, pads, error_log):
    """float64: the numba op's ``relu(conv + bias + residual)`` against torch's conv2d
    (NHWC <-> NCHW, the pads given explicitly) + the residual, then relu."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3, 9, 10, 5))
    kernel = rng.standard_normal((size, size, 5, 6))
    bias = rng.standard_normal(6)
    with minicnn.use_backend("numba"):
        shape = _conv_call(op, x, kernel, bias, strides, pads).shape
        r = rng.standard_normal(shape)
        got = _conv_call(op, x, kernel, bias, strides, pads, relu=True, residual=r)
    pt, pb, pl, pr = pads
    tx = torch.nn.functional.pad(torch.tensor(x.transpose(0, 3, 1, 2)), (pl, pr, pt, pb))
    tz = torch.nn.functional.conv2d(tx, torch.tensor(kernel.transpose(3, 2, 0, 1)),
                                    torch.tensor(bias), stride=strides or (1, 1))
    want = torch.relu(tz + torch.tensor(r.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    err = rel_err(got, want)
    error_log.record("torch parity (max-norm relative)", err)
    assert err < 1e-12
