"""Layer contracts (Keras shapes, names, dtypes, no input modification) and argument errors."""
from __future__ import annotations

import re

import numpy as np
import pytest

import minicnn
from minicnn import config
from minicnn.layers import (Activation, Conv2D, Dense, Dropout, Flatten, MaxPooling2D, RandomFlip,
                            RandomTranslation, ReLU)


def _contains_all(message, *parts):
    return all(str(p) in message for p in parts)


# ============================================================================= bad arguments
@pytest.mark.parametrize("make,words", [
    (lambda: Conv2D(4, 3, padding="bogus"), ["padding", "bogus"]),
    (lambda: Conv2D(-2, 3), ["filters", "-2"]),
    (lambda: Conv2D(0, 3), ["filters", "0"]),
    (lambda: Conv2D(2.5, 3), ["filters", "2.5"]),
    (lambda: Conv2D(4, 0), ["kernel_size", "0"]),
    (lambda: Conv2D(4, (3, -1)), ["kernel_size", "-1"]),
    (lambda: Conv2D(4, (3, 3, 3)), ["kernel_size", "(3, 3, 3)"]),
    (lambda: Conv2D(4, 3, strides=0), ["strides", "0"]),
    (lambda: Conv2D(4, 3, strides=(1, -2)), ["strides", "-2"]),
    (lambda: Conv2D(4, 3, strides="2"), ["strides", "'2'"]),
    (lambda: Conv2D(4, 3, activation="relu6"), ["activation", "relu6"]),
    (lambda: Conv2D(4, 3, kernel_initializer="bogus_init"), ["initializer", "bogus_init"]),
    (lambda: Conv2D(4, 3, dtype="float16"), ["dtype", "float16"]),
    (lambda: Conv2D(4, 3, bogus_argument=1), ["bogus_argument"]),
    (lambda: Dense(0), ["units", "0"]),
    (lambda: Dense(-5), ["units", "-5"]),
    (lambda: Dense(3, activation="mish"), ["activation", "mish"]),
    (lambda: Dense(3, dtype="int32"), ["dtype", "int32"]),
    (lambda: Dense(3, dtype="bogus"), ["dtype", "bogus"]),
    (lambda: MaxPooling2D(padding="x"), ["padding", "'x'"]),
    (lambda: MaxPooling2D(pool_size=0), ["pool_size", "0"]),
    (lambda: MaxPooling2D(strides=(2, 0)), ["strides", "0"]),
    (lambda: Dropout(rate=1.5), ["rate", "1.5"]),
    (lambda: Dropout(rate=-0.1), ["rate", "-0.1"]),
    (lambda: Dropout(rate=1.0), ["rate", "1.0"]),
    (lambda: Activation("bogus"), ["activation", "bogus"]),
    (lambda: RandomFlip("diagonal"), ["mode", "diagonal"]),
    (lambda: RandomTranslation(1.5, 0.1), ["height_factor", "1.5"]),
    (lambda: RandomTranslation(0.1, "x"), ["width_factor", "'x'"]),
    (lambda: RandomTranslation(0.1, 0.1, fill_mode="wrap"), ["fill_mode", "wrap"]),
    (lambda: Flatten(name=""), ["name"]),
    (lambda: Dense(3, input_shape=(0,)), ["input_shape", "(0,)"]),
])
def test_bad_arguments_raise_value_error_naming_argument_and_value(make, words):
    with pytest.raises(ValueError) as info:
        make()
    assert _contains_all(str(info.value), *words), str(info.value)


@pytest.mark.parametrize("make", [lambda: Conv2D(2, 3, activation="bogus"),
                                  lambda: Dense(2, activation="bogus"),
                                  lambda: Activation("bogus")])
def test_unknown_activation_lists_the_known_ones(make):
    with pytest.raises(ValueError) as info:
        make()
    assert _contains_all(str(info.value), "bogus", "relu", "sigmoid", "tanh", "softmax", "linear")


def test_kernel_larger_than_valid_input_raises_at_build():
    layer = Conv2D(4, (5, 3))           # constructing is fine: the input size is not known yet
    with pytest.raises(ValueError) as info:
        layer.build((4, 6, 1))
    assert _contains_all(str(info.value), "kernel_size", "(5, 3)", "(4, 6)", "valid")
    Conv2D(4, (5, 3), padding="same").build((4, 6, 1))   # 'same' pads: fine
    with pytest.raises(ValueError, match="pool_size"):
        MaxPooling2D((3, 3)).build((2, 5, 1))


def test_forward_with_wrong_input_shape_raises():
    conv = Conv2D(2, 3, input_shape=(6, 6, 3))
    conv.build((6, 6, 3))
    with pytest.raises(ValueError) as info:
        conv.forward(np.zeros((2, 6, 6, 2), np.float32))
    assert _contains_all(str(info.value), conv.name, "(2, 6, 6, 2)")
    with pytest.raises(ValueError):
        conv.forward(np.zeros((6, 6, 3), np.float32))            # missing batch dimension
    dense = Dense(3)
    dense.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        dense.forward(np.zeros((2, 5), np.float32))
    with pytest.raises(ValueError, match="Flatten"):
        Dense(3).build((4, 4, 3))                              # images need a Flatten first
    with pytest.raises(ValueError, match="input_shape"):
        Conv2D(2, 3, input_shape=(6, 6, 3)).build((7, 7, 3))
    with pytest.raises(ValueError):
        Conv2D(2, 3).build((6, 6))                             # not an image


def test_backward_errors():
    layer = Dense(3)
    with pytest.raises(RuntimeError, match="before forward"):
        layer.backward(np.zeros((2, 3), np.float32))
    layer.forward(np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(2, 4\)"):
        layer.backward(np.zeros((2, 4), np.float32))
    with pytest.raises(RuntimeError):
        Dropout(0.5).backward(np.zeros((2, 3)))


def test_complex_input_rejected():
    with pytest.raises(ValueError, match="dtype"):
        Dense(2).forward(np.zeros((1, 3), dtype=np.complex128))


def test_bad_backend_names():
    before = minicnn.get_backend()
    with pytest.raises(ValueError) as info:
        minicnn.set_backend("bogus")
    assert _contains_all(str(info.value), "backend", "bogus", "reference", "numpy", "numba")
    with pytest.raises(ValueError, match="bogus"):
        with minicnn.use_backend("bogus"):
            pass
    assert minicnn.get_backend() == before
    with pytest.raises(ValueError, match="None"):
        minicnn.set_backend(None)


def test_use_backend_restores_the_previous_backend_even_on_error():
    before = minicnn.get_backend()
    with pytest.raises(KeyError):
        with minicnn.use_backend("reference"):
            assert minicnn.get_backend() == "reference"
            raise KeyError
    assert minicnn.get_backend() == before


def test_minicnn_backend_environment_variable(monkeypatch):
    monkeypatch.setenv("MINICNN_BACKEND", "bogus")
    with pytest.raises(ValueError) as info:
        config._initial_backend()
    assert _contains_all(str(info.value), "MINICNN_BACKEND", "bogus")
    monkeypatch.setenv("MINICNN_BACKEND", "NumPy")
    assert config._initial_backend() == "numpy"
    monkeypatch.setenv("MINICNN_BACKEND", "")
    assert config._initial_backend() == "numba"
    monkeypatch.delenv("MINICNN_BACKEND")
    assert config._initial_backend() == config.DEFAULT_BACKEND == "numba"


# ============================================================================= contracts
def test_conv2d_build_creates_keras_shaped_params():
    layer = Conv2D(4, (3, 2), dtype="float64")
    layer.build((7, 6, 3))
    assert set(layer.params) == {"kernel", "bias"} == set(layer.grads)
    assert layer.params["kernel"].shape == (3, 2, 3, 4)
    assert layer.params["bias"].shape == (4,)
    for key, p in layer.params.items():
        assert p.dtype == np.float64 and layer.grads[key].dtype == np.float64
        assert layer.grads[key].shape == p.shape
    assert layer.count_params() == 3 * 2 * 3 * 4 + 4
    assert layer.output_shape == (5, 5, 4)
    assert layer.built
    no_bias = Conv2D(4, 3, use_bias=False).build((5, 5, 2))
    assert set(no_bias.params) == {"kernel"} and no_bias.count_params() == 3 * 3 * 2 * 4


def test_dense_build_creates_keras_shaped_params():
    layer = Dense(5)
    layer.build((7,))
    assert layer.params["kernel"].shape == (7, 5) and layer.params["bias"].shape == (5,)
    assert layer.params["kernel"].dtype == np.float32
    assert layer.count_params() == 40
    assert layer.output_shape == (5,)


@pytest.mark.parametrize("layer,input_shape,output_shape", [
    (lambda: MaxPooling2D(), (7, 6, 3), (3, 3, 3)),
    (lambda: MaxPooling2D(3, strides=1), (7, 6, 3), (5, 4, 3)),
    (lambda: MaxPooling2D(2, padding="same"), (7, 7, 2), (4, 4, 2)),
    (lambda: Flatten(), (4, 3, 2), (24,)),
    (lambda: Dropout(0.3), (5,), (5,)),
    (lambda: Activation("relu"), (2, 3), (2, 3)),
    (lambda: RandomFlip(), (4, 4, 3), (4, 4, 3)),
    (lambda: Conv2D(3, 5, strides=3, padding="same"), (8, 7, 1), (3, 3, 3)),
])
def test_weightless_and_other_output_shapes(layer, input_shape, output_shape):
    layer = layer()
    layer.build(input_shape)
    assert layer.output_shape == output_shape
    x = np.random.default_rng(0).standard_normal((2,) + input_shape).astype(np.float32)
    assert layer.forward(x).shape == (2,) + output_shape
    if not isinstance(layer, Conv2D):
        assert layer.count_params() == 0 and layer.params == {}


@pytest.mark.parametrize("size,k,s,out,pads", [
    (7, 3, 2, 4, (1, 1)), (7, 2, 2, 4, (0, 1)), (8, 3, 2, 4, (0, 1)), (6, 2, 2, 3, (0, 0)),
    (7, 5, 3, 3, (2, 2)), (5, 4, 1, 5, (1, 2))])
def test_same_padding_matches_tensorflow(size, k, s, out, pads):
    # TensorFlow: out = ceil(size / s); total = max((out - 1) * s + k - size, 0), extra at the end
    assert out == -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    assert pads == (total // 2, total - total // 2)
    conv = Conv2D(1, k, strides=s, padding="same").build((size, size, 1))
    pool = MaxPooling2D(k, strides=s, padding="same").build((size, size, 1))
    for layer in (conv, pool):
        assert layer.output_shape[:2] == (out, out)
        assert tuple(layer.pads) == pads + pads
    rect = Conv2D(1, (k, 1), strides=(s, 1), padding="same").build((size, 3, 1))
    assert rect.output_shape == (out, 3, 1) and tuple(rect.pads) == pads + (0, 0)


def test_names_are_auto_numbered_and_unique():
    classes = {Conv2D: ("conv2d", (2, 3)), Dense: ("dense", (2,)), MaxPooling2D: ("max_pooling2d", ()),
               Flatten: ("flatten", ()), Dropout: ("dropout", (0.5,)),
               Activation: ("activation", ("relu",)), ReLU: ("re_lu", ()),
               RandomFlip: ("random_flip", ()), RandomTranslation: ("random_translation", (0.1, 0.1))}
    seen = set()
    for cls, (base, args) in classes.items():
        names = [cls(*args).name for _ in range(3)]
        for name in names:
            assert re.fullmatch(rf"{base}(_\d+)?", name), name
        suffix = [0 if n == base else int(n.rsplit("_", 1)[1]) for n in names]
        assert suffix[1] == suffix[0] + 1 and suffix[2] == suffix[1] + 1
        assert not seen & set(names)
        seen |= set(names)
    assert Dense(2, name="my_dense").name == "my_dense"


def test_glorot_uniform_default_and_zero_bias():
    minicnn.utils.set_random_seed(0)
    conv = Conv2D(16, (3, 5)).build((8, 8, 6))
    fan_in, fan_out = 3 * 5 * 6, 3 * 5 * 16
    limit = np.sqrt(6 / (fan_in + fan_out))
    k = conv.params["kernel"]
    assert np.abs(k).max() <= limit
    assert np.abs(k).max() > 0.95 * limit                      # it fills the interval
    np.testing.assert_allclose(k.std(), limit / np.sqrt(3), rtol=0.05)
    assert np.all(conv.params["bias"] == 0)
    dense = Dense(30).build((50,))
    limit = np.sqrt(6 / 80)
    assert np.abs(dense.params["kernel"]).max() <= limit
    np.testing.assert_allclose(dense.params["kernel"].std(), limit / np.sqrt(3), rtol=0.05)
    assert np.all(dense.params["bias"] == 0)


def _layers_and_shapes(dtype):
    return [
        (Conv2D(3, 3, padding="same", activation="relu", dtype=dtype), (5, 6, 2)),
        (Conv2D(2, (2, 3), strides=2, activation="sigmoid", dtype=dtype), (6, 7, 2)),
        (MaxPooling2D(dtype=dtype), (6, 5, 2)),
        (MaxPooling2D(3, strides=2, padding="same", dtype=dtype), (5, 5, 1)),
        (Flatten(dtype=dtype), (3, 2, 2)),
        (Dense(4, activation="softmax", dtype=dtype), (6,)),
        (Dense(4, activation="tanh", dtype=dtype), (6,)),
        (Activation("sigmoid", dtype=dtype), (3, 4)),
        (ReLU(dtype=dtype), (3, 4)),
        (Dropout(0.5, seed=1, dtype=dtype), (3, 4)),
        (RandomFlip(seed=1, dtype=dtype), (4, 4, 2)),
        (RandomTranslation(0.3, 0.3, seed=1, dtype=dtype), (4, 4, 2)),
    ]


@pytest.mark.parametrize("index", range(12))
def test_dtype_is_kept_and_inputs_are_not_modified(backend, dtype, index):
    layer, shape = _layers_and_shapes(np.dtype(dtype).name)[index]
    rng = np.random.default_rng(index)
    x = rng.standard_normal((3,) + shape).astype(dtype)
    x_before = x.copy()
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(x, x_before)
    assert y.dtype == dtype
    for p in layer.params.values():
        assert p.dtype == dtype
    dy = rng.standard_normal(y.shape).astype(dtype)
    dy_before = dy.copy()
    dx = layer.backward(dy)
    np.testing.assert_array_equal(dy, dy_before)
    np.testing.assert_array_equal(x, x_before)
    assert dx.dtype == dtype and dx.shape == x.shape
    for k, g in layer.grads.items():
        assert g.dtype == dtype and g.shape == layer.params[k].shape
    # an input of another dtype is cast, never changing the layer's dtype
    other = np.float64 if np.dtype(dtype) == np.float32 else np.float32
    x_other = x.astype(other)
    assert layer.forward(x_other, training=False).dtype == dtype
    assert x_other.dtype == other


def _grads_after(layer_factory, x, dys):
    layer = layer_factory()
    layer.build(x.shape[1:])
    rng = np.random.default_rng(11)
    for p in layer.params.values():
        p[...] = rng.standard_normal(p.shape)
    layer.forward(x, training=True)
    dx = None
    for dy in dys:
        dx = layer.backward(dy)
    return dx, {k: g.copy() for k, g in layer.grads.items()}


@pytest.mark.parametrize("factory,shape", [
    (lambda: Conv2D(3, 3, padding="same", activation="tanh", dtype="float64"), (5, 5, 2)),
    (lambda: Dense(4, activation="relu", dtype="float64"), (6,)),
])
def test_backward_overwrites_grads(backend, factory, shape):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2,) + shape)
    out_shape = factory().build(shape).output_shape
    dy1 = rng.standard_normal((2,) + out_shape)
    dy2 = rng.standard_normal((2,) + out_shape)
    dx_twice, grads_twice = _grads_after(factory, x, [dy1, dy2])
    dx_fresh, grads_fresh = _grads_after(factory, x, [dy2])
    np.testing.assert_array_equal(dx_twice, dx_fresh)
    for key in grads_fresh:
        np.testing.assert_array_equal(grads_twice[key], grads_fresh[key])


def test_backward_returns_none_or_array_without_input_gradient(backend):
    layer = Conv2D(2, 3, dtype="float64")
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 1))
    y = layer.forward(x)
    layer.compute_input_gradient = False
    dx = layer.backward(np.ones_like(y))
    assert dx is None
    assert np.all(np.isfinite(layer.grads["kernel"])) and np.any(layer.grads["kernel"] != 0)
    np.testing.assert_allclose(layer.grads["bias"], np.full(2, y[..., 0].size))


def test_forward_accepts_new_batch_sizes(backend, rng):
    layer = Conv2D(2, 3, padding="same", dtype="float64")
    for n in (1, 3, 2):
        x = rng.standard_normal((n, 4, 5, 2))
        y = layer.forward(x, training=True)
        assert y.shape == (n, 4, 5, 2)
        assert layer.backward(np.ones_like(y)).shape == x.shape


def test_conv_forward_matches_direct_formula(backend):
    rng = np.random.default_rng(8)
    layer = Conv2D(2, (2, 3), strides=(2, 1), padding="valid", dtype="float64").build((5, 5, 2))
    x = rng.standard_normal((1, 5, 5, 2))
    y = layer.forward(x)
    k, b = layer.params["kernel"], layer.params["bias"]
    for i in range(y.shape[1]):
        for j in range(y.shape[2]):
            expected = np.einsum("hwc,hwcf->f", x[0, 2 * i:2 * i + 2, j:j + 3, :], k) + b
            np.testing.assert_allclose(y[0, i, j], expected, rtol=1e-12)


# ============================================================================= dropout and augmentation
def test_dropout_training_and_inference(backend, rng):
    x = rng.standard_normal((50, 40)) + 3.0
    layer = Dropout(0.3, dtype="float64")
    y_inf = layer.forward(x, training=False)
    np.testing.assert_array_equal(y_inf, x)
    assert not np.shares_memory(y_inf, x)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), np.ones_like(x))
    y = layer.forward(x, training=True)
    dropped = y == 0
    assert abs(dropped.mean() - 0.3) < 0.03
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.7, rtol=1e-14)
    dx = layer.backward(np.ones_like(x))
    np.testing.assert_array_equal(dx == 0, dropped)           # the same mask forward and back
    np.testing.assert_allclose(dx[~dropped], 1 / 0.7, rtol=1e-14)
    assert Dropout(0.0).forward(x, training=True) is not x


def test_dropout_with_seed_repeats():
    x = np.ones((4, 30))
    a = Dropout(0.5, seed=42).forward(x, training=True)
    b = Dropout(0.5, seed=42).forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    c = Dropout(0.5, seed=43).forward(x, training=True)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("mode", ["horizontal", "vertical", "horizontal_and_vertical"])
def test_random_flip(mode):
    x = np.random.default_rng(0).standard_normal((16, 3, 4, 2)).astype(np.float32)
    layer = RandomFlip(mode, seed=0)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)
    y = layer.forward(x, training=True)
    flips = []
    for b in range(16):
        options = {(False, False): x[b], (True, False): x[b, :, ::-1], (False, True): x[b, ::-1],
                   (True, True): x[b, ::-1, ::-1]}
        match = [k for k, v in options.items() if np.array_equal(v, y[b])]
        assert match, f"image {b} is not a flip of its input"
        flips.append(match[0])
    if mode == "horizontal":
        assert all(not v for _, v in flips)
    if mode == "vertical":
        assert all(not h for h, _ in flips)
    assert len(set(flips)) > 1                                  # random: not all the same
    # backward is the adjoint: <y, dy> == <x, dx>
    dy = np.random.default_rng(1).standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy)
    np.testing.assert_allclose(np.sum(y * dy), np.sum(x * dx), rtol=1e-5)


@pytest.mark.parametrize("fill_mode,expected", [
    ("constant", [0, 0, 1, 2]), ("reflect", [2, 1, 1, 2]), ("nearest", [1, 1, 1, 2])])
def test_random_translation_fill_modes(fill_mode, expected):
    # a shift of exactly +2 rows on a 4-row image: output row i reads input row i - 2
    x = np.arange(1, 5, dtype=np.float64).reshape(1, 4, 1, 1) * np.ones((1, 4, 3, 1))
    layer = RandomTranslation((0.5, 0.5), (0.0, 0.0), fill_mode=fill_mode, dtype="float64")
    y = layer.forward(x, training=True)
    np.testing.assert_array_equal(y[0, :, 0, 0], expected)
    np.testing.assert_array_equal(y[0, :, 1, 0], expected)
    np.testing.assert_array_equal(layer.forward(x, training=False), x)


def test_random_translation_with_seed_repeats():
    x = np.random.default_rng(0).standard_normal((8, 6, 6, 1))
    a = RandomTranslation(0.3, 0.3, seed=9, dtype="float64").forward(x, training=True)
    b = RandomTranslation(0.3, 0.3, seed=9, dtype="float64").forward(x, training=True)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, x)


def test_dtype_none_is_not_silently_float64():
    # Keras reads dtype=None as the default float type (float32); minicnn must do the
    # same or refuse, never switch a model to float64 behind the user's back.
    try:
        layer = Dense(3, dtype=None)
    except ValueError as exc:
        assert "dtype" in str(exc)
        return
    assert layer.dtype == np.float32, f"Dense(dtype=None) gave {layer.dtype}"


# ============================================================================= fused conv + relu + pool
def test_fused_conv_relu_pool_step_equals_the_two_layers(backend, dtype):
    from minicnn.layers.fused import ConvReluPool
    rng = np.random.default_rng(12)
    name = np.dtype(dtype).name
    conv = Conv2D(3, 3, padding="same", activation="relu", dtype=name).build((7, 6, 2))
    pool = MaxPooling2D(dtype=name).build(conv.output_shape)
    x = rng.standard_normal((3, 7, 6, 2)).astype(dtype)
    dy = rng.standard_normal((3,) + pool.output_shape).astype(dtype)
    x_before, dy_before = x.copy(), dy.copy()

    y_sep = pool.forward(conv.forward(x, training=True), training=True)
    dx_sep = conv.backward(pool.backward(dy))
    grads_sep = {k: g.copy() for k, g in conv.grads.items()}

    step = ConvReluPool(conv, pool)
    y = step.forward(x, training=True)
    dx = step.backward(dy)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(dy, dy_before)
    assert y.dtype == dtype and dx.dtype == dtype
    rtol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-12
    np.testing.assert_allclose(y, y_sep, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(dx, dx_sep, rtol=rtol, atol=rtol)
    for k in grads_sep:
        assert conv.grads[k].dtype == dtype
        np.testing.assert_allclose(conv.grads[k], grads_sep[k], rtol=rtol, atol=rtol * 10)
    conv.compute_input_gradient = False
    step.forward(x, training=True)
    assert step.backward(dy) is None


def test_fusion_plan_only_fuses_relu_conv_with_2x2_valid_pool():
    from minicnn.layers.fused import ConvReluPool, plan
    relu_conv = Conv2D(2, 3, activation="relu")
    assert ConvReluPool.applies(relu_conv, MaxPooling2D())
    assert not ConvReluPool.applies(Conv2D(2, 3, activation="tanh"), MaxPooling2D())
    assert not ConvReluPool.applies(relu_conv, MaxPooling2D(2, padding="same"))
    assert not ConvReluPool.applies(relu_conv, MaxPooling2D(3))
    assert not ConvReluPool.applies(relu_conv, MaxPooling2D(2, strides=1))
    flat = Flatten()
    steps = plan([relu_conv, MaxPooling2D(), flat, Dense(2)])
    assert isinstance(steps[0], ConvReluPool) and steps[1] is flat and len(steps) == 3
