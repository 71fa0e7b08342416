"""Forward values, input gradients and parameter gradients match PyTorch autograd (float64).

Layouts: minicnn is NHWC with Keras kernels ``(kh, kw, c, f)``; torch is NCHW with
``(f, c, kh, kw)``. TensorFlow's 'same' padding puts the odd extra row/column at the
bottom/right, which torch's symmetric ``padding=`` cannot express, so the torch twin
pads explicitly with ``F.pad`` (zeros for convolution, ``-inf`` for max-pooling)
before a 'valid' op. The padding is recomputed here from TensorFlow's formula, not
taken from minicnn.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from minicnn import losses  # noqa: E402
from minicnn.layers import Activation, Conv2D, Dense, Flatten, MaxPooling2D  # noqa: E402

TOL = 1e-6


def tf_pads(size, k, s, padding):
    """TensorFlow's (before, after) padding of one dimension."""
    if padding == "valid":
        return 0, 0
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def nchw(a):
    return torch.tensor(np.ascontiguousarray(a.transpose(0, 3, 1, 2)), dtype=torch.float64,
                        requires_grad=True)


def to_nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def torch_activation(name, z, dim):
    if name in (None, "linear"):
        return z
    if name == "softmax":
        return torch.softmax(z, dim=dim)
    return getattr(torch, name)(z)


def assert_close(label, got, expected, error_log):
    """Max-norm relative error: ``max|got - expected| / max|expected|`` below TOL."""
    got = np.asarray(got, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert got.shape == expected.shape, f"{label}: shape {got.shape} != {expected.shape}"
    scale = np.abs(expected).max()
    err = 0.0 if scale == 0 else float(np.abs(got - expected).max() / scale)
    error_log.record("torch parity (max-norm relative)", err)
    assert err < TOL, f"{label}: relative error {err:.3e} against torch"


def set_params(layer, input_shape, rng):
    layer.build(input_shape)
    for name, p in layer.params.items():
        p[...] = rng.standard_normal(p.shape) * (0.4 if name == "kernel" else 0.3)
    return layer


# ============================================================================= Conv2D
CONV_CONFIGS = [
    # filters, kernel_size, strides, padding, activation, input (h, w, c)
    (3, (3, 3), (2, 2), "same", "relu", (7, 7, 2)),        # odd size, stride 2: pads (1, 1)
    (2, (2, 2), (2, 2), "same", "tanh", (7, 5, 3)),        # pads (0, 1): extra at the end
    (4, (3, 2), (2, 1), "same", None, (6, 5, 2)),          # non-square kernel, even size
    (2, (5, 5), (3, 3), "same", "sigmoid", (8, 7, 1)),     # 5x5, stride 3
    (3, (1, 1), (1, 1), "valid", "linear", (4, 5, 3)),     # 1x1
    (2, (3, 3), (1, 2), "valid", "softmax", (6, 7, 2)),    # softmax over channels
    (3, (4, 3), (3, 2), "valid", "relu", (9, 8, 2)),       # stride skips the last rows
]


@pytest.mark.parametrize("filters,kernel_size,strides,padding,activation,shape", CONV_CONFIGS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_conv2d_matches_torch(backend, error_log, filters, kernel_size, strides, padding,
                              activation, shape, use_bias):
    rng = np.random.default_rng(0)
    layer = set_params(Conv2D(filters, kernel_size, strides=strides, padding=padding,
                              activation=activation, use_bias=use_bias, dtype="float64"),
                       shape, rng)
    x = rng.standard_normal((2,) + shape)
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)

    kh, kw = kernel_size
    pt, pb = tf_pads(shape[0], kh, strides[0], padding)
    pl, pr = tf_pads(shape[1], kw, strides[1], padding)
    xt = nchw(x)
    wt = torch.tensor(layer.params["kernel"].transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True) if use_bias else None
    z = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, bt, stride=strides)
    yt = torch_activation(activation, z, dim=1)
    (yt * torch.tensor(r.transpose(0, 3, 1, 2))).sum().backward()

    assert_close("y", y, to_nhwc(yt), error_log)
    assert_close("dx", dx, to_nhwc(xt.grad), error_log)
    assert_close("dkernel", layer.grads["kernel"], wt.grad.permute(2, 3, 1, 0).numpy(), error_log)
    if use_bias:
        assert_close("dbias", layer.grads["bias"], bt.grad.numpy(), error_log)


# ============================================================================= MaxPooling2D
@pytest.mark.parametrize("pool,strides,padding,shape", [
    ((2, 2), None, "valid", (6, 7, 2)),
    ((3, 3), (2, 2), "valid", (7, 7, 2)),        # overlapping windows
    ((2, 3), (1, 2), "valid", (5, 8, 1)),
    ((2, 2), None, "same", (7, 5, 2)),           # odd sizes: extra -inf row/column at the end
    ((3, 3), (2, 2), "same", (6, 7, 3)),
    ((3, 2), (3, 1), "same", (8, 5, 1)),
])
def test_maxpool2d_matches_torch(backend, error_log, pool, strides, padding, shape):
    rng = np.random.default_rng(1)
    size = 2 * int(np.prod(shape))
    x = ((rng.permutation(size) - size / 2) / 7.0).reshape((2,) + shape)   # no ties
    layer = MaxPooling2D(pool, strides=strides, padding=padding, dtype="float64")
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)

    strides = strides or pool
    pt, pb = tf_pads(shape[0], pool[0], strides[0], padding)
    pl, pr = tf_pads(shape[1], pool[1], strides[1], padding)
    xt = nchw(x)
    xp = F.pad(xt, (pl, pr, pt, pb), value=-np.inf) if padding == "same" else xt
    yt = F.max_pool2d(xp, pool, strides)
    (yt * torch.tensor(r.transpose(0, 3, 1, 2))).sum().backward()
    assert_close("y", y, to_nhwc(yt), error_log)
    assert_close("dx", dx, to_nhwc(xt.grad), error_log)


# ============================================================================= Dense, activations
@pytest.mark.parametrize("activation", [None, "relu", "sigmoid", "tanh", "softmax"])
def test_dense_matches_torch(backend, error_log, activation):
    rng = np.random.default_rng(2)
    layer = set_params(Dense(5, activation=activation, dtype="float64"), (7,), rng)
    x = rng.standard_normal((4, 7))
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)

    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(layer.params["kernel"], requires_grad=True)
    bt = torch.tensor(layer.params["bias"], requires_grad=True)
    yt = torch_activation(activation, xt @ wt + bt, dim=-1)
    (yt * torch.tensor(r)).sum().backward()
    assert_close("y", y, yt.detach().numpy(), error_log)
    assert_close("dx", dx, xt.grad.numpy(), error_log)
    assert_close("dkernel", layer.grads["kernel"], wt.grad.numpy(), error_log)
    assert_close("dbias", layer.grads["bias"], bt.grad.numpy(), error_log)


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh", "softmax", "linear"])
def test_activation_matches_torch(backend, error_log, name):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 4, 5)) * 3
    layer = Activation(name, dtype="float64")
    y = layer.forward(x)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch_activation(name, xt, dim=-1)
    (yt * torch.tensor(r)).sum().backward()
    assert_close("y", y, yt.detach().numpy(), error_log)
    assert_close("dx", dx, xt.grad.numpy(), error_log)


# ============================================================================= cross-entropy
@pytest.mark.parametrize("target_kind", ["onehot", "soft", "sparse", "sparse_column"])
def test_cross_entropy_matches_torch(backend, error_log, target_kind):
    """A softmax Dense head: minicnn's fused gradient on the logits, then through the layer,
    against torch autograd of F.cross_entropy on the same logits; and the unfused path
    (loss on probabilities, then the softmax Jacobian) against the same numbers."""
    rng = np.random.default_rng(4)
    n, d, k = 6, 5, 4
    x = rng.standard_normal((n, d))
    labels = rng.integers(0, k, n)
    if target_kind == "onehot":
        y, t_torch = np.eye(k)[labels], torch.tensor(np.eye(k)[labels])
    elif target_kind == "soft":
        s = rng.random((n, k)) + 0.1
        y = s / s.sum(axis=1, keepdims=True)
        t_torch = torch.tensor(y)
    else:
        y = labels.reshape(-1, 1) if target_kind == "sparse_column" else labels
        t_torch = torch.tensor(labels)
    loss = (losses.SparseCategoricalCrossentropy() if target_kind.startswith("sparse")
            else losses.CategoricalCrossentropy())

    head = set_params(Dense(k, activation="softmax", dtype="float64"), (d,), rng)
    xt = torch.tensor(x, requires_grad=True)
    wt = torch.tensor(head.params["kernel"], requires_grad=True)
    bt = torch.tensor(head.params["bias"], requires_grad=True)
    zt = xt @ wt + bt
    zt.retain_grad()
    lt = F.cross_entropy(zt, t_torch)
    lt.backward()

    # fused: the loss from the logits, dL/dz = (softmax(z) - y) / n, then the layer below it
    p = head.forward(x, training=True)
    z = x @ head.params["kernel"] + head.params["bias"]
    value, dz = loss.from_logits_forward(z, y)
    dx = head.backward_preactivation(dz)
    assert_close("loss", value, lt.item(), error_log)
    assert_close("dlogits", dz, zt.grad.numpy(), error_log)
    assert_close("dx", dx, xt.grad.numpy(), error_log)
    assert_close("dkernel", head.grads["kernel"], wt.grad.numpy(), error_log)
    assert_close("dbias", head.grads["bias"], bt.grad.numpy(), error_log)

    # unfused: the loss on probabilities, back through the softmax Jacobian
    value_p, dp = loss.forward(p, y)
    dx_p = head.backward(dp)
    assert_close("loss (probabilities)", value_p, lt.item(), error_log)
    assert_close("dx (probabilities)", dx_p, xt.grad.numpy(), error_log)
    assert_close("dkernel (probabilities)", head.grads["kernel"], wt.grad.numpy(), error_log)


# ============================================================================= a small network
@pytest.mark.parametrize("fused", [False, True], ids=["layers", "fused_conv_relu_pool"])
def test_small_cnn_matches_torch(backend, error_log, fused):
    """Conv(relu) -> MaxPool -> Conv('same', stride 2) -> Flatten -> Dense(softmax) + CE.

    Flatten is NHWC-ordered in minicnn (Keras): the torch twin permutes to NHWC first.
    With ``fused`` the first two layers run as one ConvReluPool step, as Sequential does.
    """
    rng = np.random.default_rng(5)
    net = [Conv2D(4, 3, padding="same", activation="relu", dtype="float64"),
           MaxPooling2D(2, dtype="float64"),
           Conv2D(3, (3, 2), strides=2, padding="same", activation="tanh", dtype="float64"),
           Flatten(dtype="float64"),
           Dense(5, activation="softmax", dtype="float64")]
    shape = (9, 8, 2)
    for layer in net:
        set_params(layer, shape, rng)
        shape = layer.output_shape
    x = rng.standard_normal((3, 9, 8, 2))
    labels = rng.integers(0, 5, 3)
    loss = losses.SparseCategoricalCrossentropy()

    steps = net[:-1]
    if fused:
        from minicnn.layers.fused import ConvReluPool
        steps = [ConvReluPool(net[0], net[1])] + net[2:-1]
    h = x
    for step in steps:
        h = step.forward(h, training=True)
    head = net[-1]
    head.forward(h, training=True)
    z = h @ head.params["kernel"] + head.params["bias"]
    value, dz = loss.from_logits_forward(z, labels)
    g = head.backward_preactivation(dz)
    for step in reversed(steps):
        g = step.backward(g)

    xt = nchw(x)
    tw = {}
    for i, layer in enumerate(net):
        for name, p in layer.params.items():
            arr = p.transpose(3, 2, 0, 1) if (name == "kernel" and p.ndim == 4) else p
            tw[i, name] = torch.tensor(arr.copy(), requires_grad=True)
    c1 = torch.relu(F.conv2d(F.pad(xt, (1, 1, 1, 1)), tw[0, "kernel"], tw[0, "bias"]))
    p1 = F.max_pool2d(c1, 2)                                     # (3, 4, 4, 4) NCHW
    # 4x4 input, kernel (3, 2), stride 2, 'same': rows pad (0, 1), columns pad (0, 0)
    assert tf_pads(4, 3, 2, "same") == (0, 1) and tf_pads(4, 2, 2, "same") == (0, 0)
    c2 = torch.tanh(F.conv2d(F.pad(p1, (0, 0, 0, 1)), tw[2, "kernel"], tw[2, "bias"], stride=2))
    flat = c2.permute(0, 2, 3, 1).reshape(3, -1)
    zt = flat @ tw[4, "kernel"] + tw[4, "bias"]
    lt = F.cross_entropy(zt, torch.tensor(labels))
    lt.backward()

    assert_close("loss", value, lt.item(), error_log)
    assert_close("dx", g, to_nhwc(xt.grad), error_log)
    for (i, name), t in tw.items():
        expected = t.grad.numpy()
        if name == "kernel" and expected.ndim == 4:
            expected = expected.transpose(2, 3, 1, 0)
        assert_close(f"layer {i} d{name}", net[i].grads[name], expected, error_log)
