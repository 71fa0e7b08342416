"""Optimizers against hand-written Keras formulas, losses, initializers, seeds and utils."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
from minicnn import initializers, losses, optimizers, utils
from minicnn.layers import Conv2D, Dense, Dropout


# ============================================================================= optimizers
def keras_adam(param, grads, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Keras / TensorFlow Adam, written out: returns the parameter after each step."""
    param = param.astype(np.float64).copy()
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    history = []
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        alpha = learning_rate * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        param = param - alpha * m / (np.sqrt(v) + epsilon)
        history.append(param.copy())
    return history


def keras_sgd(param, grads, lr=0.01, momentum=0.0, nesterov=False):
    param = param.astype(np.float64).copy()
    velocity = np.zeros_like(param)
    history = []
    for g in grads:
        velocity = momentum * velocity - lr * g
        if nesterov:
            param = param + momentum * velocity - lr * g
        else:
            param = param + velocity
        history.append(param.copy())
    return history


def run_optimizer(opt, param, grads):
    """Apply ``grads`` one step each to a copy of ``param``; return the copy after each step."""
    param = param.copy()
    history = []
    for g in grads:
        opt.apply_gradients([("layer/kernel", param, g)])
        history.append(param.copy())
    return history


def test_adam_defaults_are_keras():
    opt = optimizers.Adam()
    assert (opt.learning_rate, opt.beta_1, opt.beta_2, opt.epsilon) == (1e-3, 0.9, 0.999, 1e-7)
    assert isinstance(optimizers.get("adam"), optimizers.Adam)


def test_sgd_defaults_are_keras():
    opt = optimizers.SGD()
    assert (opt.learning_rate, opt.momentum, opt.nesterov) == (0.01, 0.0, False)
    assert isinstance(optimizers.get("SGD"), optimizers.SGD)


@pytest.mark.parametrize("kwargs", [{}, dict(learning_rate=0.05, beta_1=0.5, beta_2=0.9, epsilon=1e-3)])
def test_adam_matches_keras_formula(backend, error_log, kwargs):
    rng = np.random.default_rng(0)
    param = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) * s for s in (1.0, 0.1, 3.0, 1e-3, 0.5, 2.0)]
    got = run_optimizer(optimizers.Adam(**kwargs), param, grads)
    expected = keras_adam(param, grads, **kwargs)
    for t, (g, e) in enumerate(zip(got, expected), start=1):
        err = np.abs(g - e).max() / np.abs(e).max()
        error_log.record(f"optimizers vs formula ({backend})", err)
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


def test_adam_epsilon_is_added_to_sqrt_v_after_bias_correction(backend):
    """With gradients near epsilon the two textbook placements differ; Keras's must win."""
    param = np.ones(4)
    grads = [np.full(4, 3e-7)] * 3
    got = run_optimizer(optimizers.Adam(learning_rate=0.1), param, grads)[-1]
    keras = keras_adam(param, grads, learning_rate=0.1)[-1]
    np.testing.assert_allclose(got, keras, rtol=1e-12)
    # the textbook m_hat / (sqrt(v_hat) + eps) moves the parameter by a different amount
    m = v = 0.0
    textbook = param.copy()
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        textbook = textbook - 0.1 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
    assert np.abs((got - param) - (textbook - param)).max() > 1e-3 * np.abs(got - param).max()


@pytest.mark.parametrize("momentum,nesterov", [(0.0, False), (0.9, False), (0.9, True),
                                               (0.5, True)])
def test_sgd_matches_keras_formula(backend, error_log, momentum, nesterov):
    rng = np.random.default_rng(1)
    param = rng.standard_normal((2, 3, 2))
    grads = [rng.standard_normal(param.shape) for _ in range(5)]
    opt = optimizers.SGD(learning_rate=0.1, momentum=momentum, nesterov=nesterov)
    got = run_optimizer(opt, param, grads)
    expected = keras_sgd(param, grads, lr=0.1, momentum=momentum, nesterov=nesterov)
    for g, e in zip(got, expected):
        error_log.record(f"optimizers vs formula ({backend})", np.abs(g - e).max() / np.abs(e).max())
        np.testing.assert_allclose(g, e, rtol=1e-12, atol=1e-14)
    if momentum == 0:
        np.testing.assert_allclose(got[0], param - 0.1 * grads[0], rtol=1e-15)


@pytest.mark.parametrize("make", [lambda: optimizers.Adam(), lambda: optimizers.SGD(momentum=0.9),
                                  lambda: optimizers.SGD(momentum=0.9, nesterov=True)])
def test_float32_params_stay_float32(backend, make):
    rng = np.random.default_rng(2)
    param = rng.standard_normal((5, 3)).astype(np.float32)
    grads = [rng.standard_normal((5, 3)).astype(np.float32) for _ in range(4)]
    opt = make()
    got = run_optimizer(opt, param, grads)
    for p in got:
        assert p.dtype == np.float32
    for slots in opt.state.values():
        for arr in slots.values():
            assert arr.dtype == np.float32
    # and the float32 run follows the float64 one to float32 accuracy
    ref = run_optimizer(make(), param.astype(np.float64), [g.astype(np.float64) for g in grads])
    np.testing.assert_allclose(got[-1], ref[-1], rtol=1e-5, atol=1e-6)


def test_optimizer_updates_in_place_and_keeps_state_per_key(backend):
    opt = optimizers.Adam(learning_rate=0.1)
    a, b = np.ones(3), np.ones(2)
    a_id = id(a)
    opt.apply_gradients([("l/a", a, np.ones(3)), ("l/b", b, -np.ones(2))])
    assert id(a) == a_id and np.all(a < 1) and np.all(b > 1)
    assert set(opt.state) == {"l/a", "l/b"} and opt.iterations == 1
    # first step of Adam moves every weight by lr (sign of the gradient)
    np.testing.assert_allclose(a, 1 - 0.1, rtol=1e-5)


def test_optimizer_state_round_trip(backend):
    rng = np.random.default_rng(3)
    param = rng.standard_normal(6)
    grads = [rng.standard_normal(6) for _ in range(6)]
    straight = run_optimizer(optimizers.Adam(learning_rate=0.01), param, grads)[-1]
    first = optimizers.Adam(learning_rate=0.01)
    p = param.copy()
    for g in grads[:3]:
        first.apply_gradients([("k", p, g)])
    iterations, arrays = first.get_state()
    second = optimizers.from_config(first.get_config())
    second.set_state(iterations, arrays)
    for g in grads[3:]:
        second.apply_gradients([("k", p, g)])
    np.testing.assert_allclose(p, straight, rtol=1e-14)


def test_optimizers_accept_numpy_scalars():
    """Hyper-parameters computed with NumPy (np.float32, np.int64) are numbers too."""
    opt = optimizers.Adam(learning_rate=np.float32(2e-3), beta_1=np.float32(0.8),
                          beta_2=np.float64(0.99), epsilon=np.float32(1e-6))
    assert opt.learning_rate == pytest.approx(2e-3) and opt.beta_1 == pytest.approx(0.8)
    sgd = optimizers.SGD(learning_rate=np.float32(0.1), momentum=np.float32(0.9))
    assert sgd.momentum == pytest.approx(0.9)


@pytest.mark.parametrize("make,words", [
    (lambda: optimizers.Adam(learning_rate=0), ["learning_rate", "0"]),
    (lambda: optimizers.Adam(learning_rate=-1e-3), ["learning_rate", "-0.001"]),
    (lambda: optimizers.Adam(beta_1=1.0), ["beta_1", "1.0"]),
    (lambda: optimizers.Adam(beta_2=-0.5), ["beta_2", "-0.5"]),
    (lambda: optimizers.Adam(epsilon=0), ["epsilon", "0"]),
    (lambda: optimizers.SGD(momentum=1.5), ["momentum", "1.5"]),
    (lambda: optimizers.SGD(learning_rate="fast"), ["learning_rate", "fast"]),
    (lambda: optimizers.get("rmsprop"), ["rmsprop", "adam", "sgd"]),
])
def test_optimizer_bad_arguments(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert all(w in str(info.value) for w in words), str(info.value)


# ============================================================================= losses
def _onehot(labels, k):
    return np.eye(k)[labels]


def test_categorical_crossentropy_value_and_gradient(backend):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 4)) * 2
    labels = rng.integers(0, 4, 6)
    y = _onehot(labels, 4)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = -np.mean(np.log(p[np.arange(6), labels]))
    loss = losses.CategoricalCrossentropy()
    value, dlogits = loss.from_logits_forward(logits, y)
    np.testing.assert_allclose(value, expected, rtol=1e-13)
    np.testing.assert_allclose(dlogits, (p - y) / 6, rtol=1e-12, atol=1e-16)
    # Keras's call convention: loss(y_true, y_pred) on probabilities
    np.testing.assert_allclose(loss(y, p), expected, rtol=1e-12)
    np.testing.assert_allclose(losses.CategoricalCrossentropy(from_logits=True)(y, logits),
                               expected, rtol=1e-13)


def test_sparse_matches_categorical(backend):
    rng = np.random.default_rng(5)
    logits = rng.standard_normal((5, 3))
    labels = rng.integers(0, 3, 5)
    dense_value, dense_grad = losses.CategoricalCrossentropy().from_logits_forward(
        logits, _onehot(labels, 3))
    sparse = losses.SparseCategoricalCrossentropy()
    for y in (labels, labels.reshape(-1, 1), labels.astype(np.float32)):
        value, grad = sparse.from_logits_forward(logits, y)
        np.testing.assert_allclose(value, dense_value, rtol=1e-14)
        np.testing.assert_allclose(grad, dense_grad, rtol=1e-14, atol=1e-17)
        np.testing.assert_allclose(sparse(y, ops_softmax(logits)), dense_value, rtol=1e-12)


def ops_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(backend, dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [-500.0, 500.0, 499.0]], dtype=dtype)
    y = np.array([[0, 0, 1], [0, 1, 0]], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):   # underflow to 0 is fine
        value, grad = losses.CategoricalCrossentropy().from_logits_forward(logits, y)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, (2000.0 + np.log1p(np.exp(-1.0))) / 2, rtol=1e-6)
    assert np.asarray(value).dtype == dtype and grad.dtype == dtype


def test_probability_loss_is_clipped():
    p = np.array([[1.0, 0.0], [0.5, 0.5]])
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    value, grad = losses.CategoricalCrossentropy().forward(p, y)
    np.testing.assert_allclose(value, (-np.log(1e-7) - np.log(0.5)) / 2, rtol=1e-6)
    assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("loss,y,words", [
    (losses.CategoricalCrossentropy(), np.zeros((4,)), ["(4,)", "to_categorical"]),
    (losses.CategoricalCrossentropy(), np.zeros((4, 2)), ["(4, 2)", "3"]),
    (losses.SparseCategoricalCrossentropy(), np.array([0, 1, 3, 1]), ["3", "[0, 3)"]),
    (losses.SparseCategoricalCrossentropy(), np.array([0, -1, 2, 1]), ["-1"]),
    (losses.SparseCategoricalCrossentropy(), np.array([0, 0.5, 2, 1]), ["integer"]),
    (losses.SparseCategoricalCrossentropy(), np.zeros((4, 3)), ["(4, 3)"]),
])
def test_loss_target_checks(loss, y, words):
    with pytest.raises(ValueError) as info:
        loss.check_targets(y, 3)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize("loss_cls,y_true,words", [
    (losses.SparseCategoricalCrossentropy, np.array([5, 0]), ["5"]),          # label >= k
    (losses.SparseCategoricalCrossentropy, np.array([-1, 0]), ["-1"]),        # would wrap around
    (losses.SparseCategoricalCrossentropy, np.array([0, 1, 2]), ["3"]),       # batch mismatch
    (losses.CategoricalCrossentropy, np.eye(4)[[0, 1]], ["(2, 4)"]),          # 4 classes for 3
], ids=["label_too_large", "negative_label", "batch_mismatch", "onehot_too_wide"])
def test_losses_reject_targets_that_do_not_fit_the_predictions(loss_cls, y_true, words):
    """Calling a loss directly (not through fit) must not read past the logits (the numba
    kernels do not bounds-check) or wrap a negative label around: on every backend, with
    and without from_logits, it raises ValueError quoting what it received."""
    y_pred = np.full((2, 3), 1 / 3)
    for backend in ("reference", "numpy", "numba"):
        for from_logits in (True, False):
            with minicnn.use_backend(backend):
                with pytest.raises(ValueError) as info:
                    value = loss_cls(from_logits=from_logits)(y_true, y_pred)
                    print(f"{backend}, from_logits={from_logits}: returned {value}")
            assert all(w in str(info.value) for w in words), \
                f"{backend}, from_logits={from_logits}: {info.value}"


def test_loss_lookup():
    assert isinstance(losses.get("categorical_crossentropy"), losses.CategoricalCrossentropy)
    assert isinstance(losses.get("sparse_categorical_crossentropy"),
                      losses.SparseCategoricalCrossentropy)
    with pytest.raises(ValueError, match="mse"):
        losses.get("mse")


# ============================================================================= seeds and initializers
def test_set_random_seed_repeats_initialization_and_dropout():
    x = np.ones((4, 50), np.float32)

    def draw():
        utils.set_random_seed(123)
        conv = Conv2D(4, 3).build((6, 6, 2))
        dense = Dense(5, kernel_initializer="he_normal").build((7,))
        mask = Dropout(0.5).forward(x, training=True) == 0
        return conv.params["kernel"], dense.params["kernel"], mask

    first, second = draw(), draw()
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    utils.set_random_seed(124)
    assert not np.array_equal(Conv2D(4, 3).build((6, 6, 2)).params["kernel"], first[0])
    assert utils.set_random_seed is minicnn.config.set_random_seed
    with pytest.raises(ValueError, match="-1"):
        utils.set_random_seed(-1)
    with pytest.raises(ValueError, match="1.5"):
        utils.set_random_seed(1.5)


SHAPE = (3, 3, 64, 96)                      # fan_in 576, fan_out 864
FAN_IN, FAN_OUT = 3 * 3 * 64, 3 * 3 * 96


@pytest.mark.parametrize("name,std,bound", [
    ("glorot_uniform", np.sqrt(2 / (FAN_IN + FAN_OUT)), np.sqrt(6 / (FAN_IN + FAN_OUT))),
    ("glorot_normal", np.sqrt(2 / (FAN_IN + FAN_OUT)), None),
    ("he_normal", np.sqrt(2 / FAN_IN), None),
    ("he_uniform", np.sqrt(2 / FAN_IN), np.sqrt(6 / FAN_IN)),
])
def test_random_initializer_statistics(name, std, bound):
    w = initializers.initialize(name, SHAPE, np.float64, rng=np.random.default_rng(0))
    assert w.shape == SHAPE and w.dtype == np.float64
    assert abs(w.mean()) < 0.02 * std * 10
    np.testing.assert_allclose(w.std(), std, rtol=0.02)
    if bound is not None:                       # uniform on [-bound, bound]
        assert np.abs(w).max() <= bound and np.abs(w).max() > 0.99 * bound
    else:                                       # truncated at 2 standard deviations of the draw
        limit = 2 * std / 0.87962566103423978
        assert np.abs(w).max() <= limit and np.abs(w).max() > 0.95 * limit
    dense = initializers.initialize(name, (400, 300), np.float32, rng=np.random.default_rng(1))
    assert dense.dtype == np.float32
    expected = std * (np.sqrt(FAN_IN) / np.sqrt(400) if name.startswith("he")
                      else np.sqrt(FAN_IN + FAN_OUT) / np.sqrt(700))
    np.testing.assert_allclose(dense.std(), expected, rtol=0.02)


def test_constant_initializers():
    assert np.all(initializers.initialize("zeros", (3, 4)) == 0)
    ones = initializers.initialize("ones", (3, 4), np.float64)
    assert np.all(ones == 1) and ones.dtype == np.float64
    assert initializers.fans((3, 3, 8, 16)) == (72, 144)
    assert initializers.fans((10, 5)) == (10, 5)
    layer = Dense(3, kernel_initializer="ones", bias_initializer="ones").build((2,))
    assert np.all(layer.params["kernel"] == 1) and np.all(layer.params["bias"] == 1)
    with pytest.raises(ValueError, match="orthogonal"):
        initializers.get("orthogonal")


# ============================================================================= utils
def test_to_categorical():
    y = np.array([2, 0, 1, 2])
    expected = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=np.float32)
    out = utils.to_categorical(y)
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(utils.to_categorical(y.reshape(-1, 1), 3), expected)
    wide = utils.to_categorical(y, num_classes=5, dtype="float64")
    assert wide.shape == (4, 5) and wide.dtype == np.float64
    np.testing.assert_array_equal(wide.argmax(axis=1), y)
    with pytest.raises(ValueError, match=r"\[0, 2\), received 2"):
        utils.to_categorical(y, num_classes=2)
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        utils.to_categorical(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="integer"):
        utils.to_categorical(np.array([0.5, 1.0]))
