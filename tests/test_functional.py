"""The Functional API: symbolic tensors, graph models, merge layers, nesting, fusion on graphs."""
from __future__ import annotations

import numpy as np
import pytest

import minicnn
import minicnn as keras
from minicnn import gradcheck, layers, models
from minicnn.utils import set_random_seed, to_categorical

F64 = "float64"


def residual_model(dtype=F64, shape=(6, 6, 2)):
    """x -> conv(relu) -> [conv -> conv] + skip -> relu -> flatten -> dense(softmax)."""
    inputs = keras.Input(shape=shape, dtype=dtype)
    x = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype=dtype)(inputs)
    y = layers.Conv2D(3, 3, padding="same", activation="tanh", dtype=dtype)(x)
    y = layers.Conv2D(3, 1, dtype=dtype)(y)
    x = layers.Add(dtype=dtype)([x, y])                   # x fans out: the skip and the branch
    x = layers.Activation("tanh", dtype=dtype)(x)
    outputs = layers.Dense(4, activation="softmax", dtype=dtype)(layers.Flatten(dtype=dtype)(x))
    return keras.Model(inputs, outputs, name="residual")


# ----------------------------------------------------------------------------- symbolic tensors
def test_input_is_a_symbolic_tensor_and_layers_build_on_it():
    x = keras.Input(shape=(8, 8, 3))
    assert x.shape == (None, 8, 8, 3) and x.dtype == "float32"
    conv = layers.Conv2D(4, 3, padding="same")
    y = conv(x)
    assert conv.built and conv.params["kernel"].shape == (3, 3, 3, 4)
    assert y.shape == (None, 8, 8, 4) and y.node.layer is conv and y.node.inputs == [x]
    with pytest.raises(TypeError, match="symbolic"):
        np.asarray(y)
    with pytest.raises(ValueError, match=r"\(8, 8, 3\).*\(9, 9, 3\)|built for"):
        conv(keras.Input(shape=(9, 9, 3)))


def test_model_runs_forward_in_order_and_summary_shows_connections():
    model = residual_model()
    out = model.forward(np.random.default_rng(0).standard_normal((2, 6, 6, 2)))
    assert out.shape == (2, 4) and np.allclose(out.sum(axis=1), 1)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    assert "Connected to" in text and 'Model: "residual"' in text
    add = next(l for l in model.layers if isinstance(l, layers.Add))
    convs = [l for l in model.layers if isinstance(l, layers.Conv2D)]
    row = next(line for line in lines if line.startswith(add.name))
    assert f"{convs[0].name}[0][0]" in row and f"{convs[2].name}[0][0]" in row
    assert model.get_layer(add.name) is add and model.get_layer(index=0) is model.layers[0]
    assert isinstance(model.layers[0], layers.InputLayer)
    with pytest.raises(ValueError, match="no layer named"):
        model.get_layer("nope")
    assert model.count_params() == sum(l.count_params() for l in model.layers)


def test_disconnected_graph_names_the_tensor():
    a = keras.Input(shape=(4,), name="a")
    b = keras.Input(shape=(4,), name="b")
    out = layers.Add()([layers.Dense(3)(a), layers.Dense(3)(b)])
    with pytest.raises(ValueError, match=r"disconnected.*'b'"):
        keras.Model(a, out)
    keras.Model([a, b], out)          # with both inputs it is fine


def test_cyclic_graph_is_refused_naming_the_tensor():
    x = keras.Input(shape=(4,))
    h = layers.Dense(4, name="first")(x)
    y = layers.Dense(4, name="second")(h)
    h.node.inputs = [y]                # rewire by hand: first now reads second's output
    with pytest.raises(ValueError, match="cycle"):
        keras.Model(x, y)


def test_shape_errors_are_raised_when_the_graph_is_built_and_name_both_shapes():
    a = keras.Input(shape=(8, 8, 4))
    b = keras.Input(shape=(8, 8, 5))
    with pytest.raises(ValueError, match=r"\(8, 8, 4\) and \(8, 8, 5\)"):
        layers.Add()([a, b])
    with pytest.raises(ValueError, match=r"\(8, 8, 4\) and \(8, 9, 5\)"):
        layers.Concatenate()([a, keras.Input(shape=(8, 9, 5))])
    assert layers.Concatenate()([a, b]).shape == (None, 8, 8, 9)
    assert layers.Concatenate(axis=1)([a, keras.Input(shape=(2, 8, 4))]).shape == (None, 10, 8, 4)
    with pytest.raises(ValueError, match="exactly 2"):
        layers.Subtract()([a, a, a])
    with pytest.raises(ValueError, match="list of inputs"):
        layers.Add()(a)
    with pytest.raises(ValueError, match="Flatten"):
        layers.Dense(3)(a)


def test_layer_names_must_be_unique_in_a_model():
    x = keras.Input(shape=(3,))
    y = layers.Dense(2, name="same")(layers.Dense(3, name="same")(x))
    with pytest.raises(ValueError, match="unique"):
        keras.Model(x, y)


# ----------------------------------------------------------------------------- gradients on graphs
def test_fan_out_gradients_are_summed(backend, error_log):
    """The skip tensor gets the sum of both branches' gradients: the whole graph's dx and
    every weight gradient against finite differences."""
    set_random_seed(1)
    model = residual_model()
    model.compute_input_gradient = True
    errors = gradcheck.check_layer(model, (6, 6, 2), batch_size=2)
    for name, err in errors.items():
        error_log.record(f"gradcheck graph ({backend})", err)
        assert err < 1e-7, (name, err)
    assert len(errors) == 1 + len(model.weight_slots())


def test_fan_out_sum_matters():
    """Dropping one of the two gradients of the fanned-out tensor changes dx: the test above
    would see a wrong sum."""
    x = keras.Input(shape=(3,), dtype=F64)
    h = layers.Dense(3, dtype=F64)(x)
    out = layers.Add(dtype=F64)([h, layers.Dense(3, dtype=F64)(h)])
    model = keras.Model(x, out)
    model.compute_input_gradient = True
    xv = np.random.default_rng(2).standard_normal((4, 3))
    model.forward(xv)
    dy = np.ones((4, 3))
    dx = model.backward(dy)
    d1 = model.layers[1].params["kernel"]
    d2 = model.layers[2].params["kernel"]
    expected = dy @ (np.eye(3) + d2.T) @ d1.T
    np.testing.assert_allclose(dx, expected, rtol=1e-12)


def test_shared_layer_keeps_each_call_apart_and_sums_its_gradients(error_log):
    set_random_seed(3)
    shared = layers.Dense(3, activation="tanh", dtype=F64)
    x = keras.Input(shape=(3,), dtype=F64)
    out = shared(layers.Activation("sigmoid", dtype=F64)(shared(x)))   # the same layer twice
    model = keras.Model(x, out)
    model.compute_input_gradient = True
    errors = gradcheck.check_layer(model, (3,), batch_size=3)
    for err in errors.values():
        error_log.record("gradcheck shared layer", err)
        assert err < 1e-7
    assert sum(1 for n in model.nodes if n.layer is shared) == 2


def test_nested_models_are_layers(error_log):
    set_random_seed(4)
    inner_in = keras.Input(shape=(6, 6, 2), dtype=F64)
    inner = keras.Model(inner_in, layers.Conv2D(2, 3, padding="same", activation="tanh",
                                                dtype=F64)(inner_in), name="block")
    head = keras.Sequential([layers.Flatten(dtype=F64), layers.Dense(3, dtype=F64)], name="head")
    x = keras.Input(shape=(6, 6, 2), dtype=F64)
    y = layers.Add(dtype=F64)([inner(x), x])
    model = keras.Model(x, head(y))
    assert [type(l).__name__ for l in model.layers] == ["InputLayer", "Model", "Add",
                                                         "Sequential"]
    model.compute_input_gradient = True
    errors = gradcheck.check_layer(model, (6, 6, 2), batch_size=2)
    for err in errors.values():
        error_log.record("gradcheck nested models", err)
        assert err < 1e-7
    paths = [p for p, _, _ in model.weight_slots()]
    assert paths[0].startswith("block/") and paths[-1].startswith("head/")
    # trains, and freezing the inner model keeps its weights
    model.compile("adam", "categorical_crossentropy")
    inner.trainable = False
    before = inner.get_weights()
    rng = np.random.default_rng(0)
    model.fit(rng.random((8, 6, 6, 2)), to_categorical(rng.integers(0, 3, 8), 3), epochs=1,
              verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, inner.get_weights()))


def test_graph_fit_learns_and_fused_plan_equals_layer_by_layer(backend):
    set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    x = layers.MaxPooling2D(2)(x)
    y = layers.Conv2D(4, 3, padding="same", activation="relu")(x)
    x = layers.Concatenate()([x, y])
    outputs = layers.Dense(3, activation="softmax")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    steps = [type(s[0]).__name__ for s in model.steps()]
    assert ("ConvReluPool" in steps) == (backend == "numba")
    rng = np.random.default_rng(0)
    xv = rng.random((16, 8, 8, 3)).astype(np.float32)
    np.testing.assert_allclose(model.predict(xv), model.forward(xv), rtol=1e-5, atol=1e-6)
    model.compile("adam", "sparse_categorical_crossentropy", ["accuracy"])
    labels = (xv[:, :4, :4, 0].mean(axis=(1, 2)) > 0.5).astype(int)
    h = model.fit(xv, labels, epochs=15, batch_size=8, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]


def test_a_conv_whose_output_feeds_two_nodes_is_not_fused():
    inputs = keras.Input(shape=(8, 8, 3))
    c = layers.Conv2D(4, 3, padding="same", activation="relu")(inputs)
    p = layers.MaxPooling2D(2)(c)
    other = layers.MaxPooling2D(2)(layers.Activation("relu")(c))
    model = keras.Model(inputs, layers.Add()([p, other]))
    with minicnn.use_backend("numba"):
        assert "ConvReluPool" not in [type(s[0]).__name__ for s in model.steps()]


# ----------------------------------------------------------------------------- merge layers
MERGES = [
    ("Add", lambda t: t[0] + t[1] + t[2], 3),
    ("Subtract", lambda t: t[0] - t[1], 2),
    ("Multiply", lambda t: t[0] * t[1] * t[2], 3),
    ("Average", lambda t: (t[0] + t[1]) / 2, 2),
    ("Maximum", lambda t: __import__("torch").maximum(__import__("torch").maximum(t[0], t[1]),
                                                      t[2]), 3),
    ("Minimum", lambda t: __import__("torch").minimum(t[0], t[1]), 2),
]


@pytest.mark.parametrize("name,torch_fn,k", MERGES, ids=[m[0] for m in MERGES])
def test_merge_layers_match_torch(name, torch_fn, k, error_log):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    xs = [rng.standard_normal((3, 4, 5, 2)) for _ in range(k)]
    dy = rng.standard_normal((3, 4, 5, 2))
    layer = getattr(layers, name)(dtype=F64)
    y = layer.forward(xs)
    dxs = layer.backward(dy)
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = torch_fn(ts)
    yt.backward(torch.tensor(dy))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-14)
    for d, t in zip(dxs, ts):
        err = gradcheck.relative_error(d, t.grad.numpy())
        error_log.record("torch parity merge layers", err)
        assert err < 1e-14


@pytest.mark.parametrize("axis", [-1, 1, 2])
def test_concatenate_matches_torch(axis, error_log):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    shapes = [(2, 3, 4, 2), (2, 3, 4, 5)] if axis == -1 else \
        ([(2, 3, 4, 2), (2, 1, 4, 2)] if axis == 1 else [(2, 3, 4, 2), (2, 3, 2, 2)])
    xs = [rng.standard_normal(s) for s in shapes]
    layer = layers.Concatenate(axis=axis, dtype=F64)
    y = layer.forward(xs)
    dy = rng.standard_normal(y.shape)
    dxs = layer.backward(dy)
    ts = [torch.tensor(x, requires_grad=True) for x in xs]
    yt = torch.cat(ts, dim=axis)
    yt.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y, yt.detach().numpy())
    for d, t in zip(dxs, ts):
        assert gradcheck.relative_error(d, t.grad.numpy()) == 0


def test_maximum_sends_a_tied_gradient_to_the_first_input_only():
    layer = layers.Maximum(dtype=F64)
    a = np.ones((1, 3))
    layer.forward([a, a.copy()])
    d0, d1 = layer.backward(np.full((1, 3), 2.0))
    np.testing.assert_array_equal(d0, 2.0)
    np.testing.assert_array_equal(d1, 0.0)


@pytest.mark.parametrize("name", [m[0] for m in MERGES] + ["Concatenate"])
def test_merge_layers_gradcheck(name, error_log):
    layer = getattr(layers, name)(dtype=F64)
    k = 2
    rng = np.random.default_rng(11)
    xs = [rng.standard_normal((2, 3, 3, 2)) for _ in range(k)]
    layer.forward(xs)
    r = rng.standard_normal(layer.forward(xs).shape)
    analytic = layer.backward(r)
    for i in range(k):
        def f(v, i=i):
            ins = list(xs)
            ins[i] = v
            return float(np.sum(layer.forward(ins) * r))
        err = gradcheck.relative_error(analytic[i], gradcheck.numerical_gradient(f, xs[i]))
        error_log.record("gradcheck merge layers", err)
        assert err < 1e-8


# ----------------------------------------------------------------------------- Keras's top level
def test_keras_top_level_names():
    assert keras.Input is layers.Input and keras.Model is models.Model
    assert keras.Sequential is models.Sequential
    for mod in ("layers", "models", "optimizers", "losses", "callbacks", "datasets", "utils"):
        assert getattr(keras, mod).__name__ == f"minicnn.{mod}"
    assert keras.utils.to_categorical([1], 2).tolist() == [[0.0, 1.0]]
    keras.utils.set_random_seed(0)


def test_sequential_with_an_input_first():
    model = keras.Sequential([keras.Input(shape=(6, 6, 1)), layers.Conv2D(2, 3),
                              layers.Flatten(), layers.Dense(3)])
    assert model.built and model.input_shape == (6, 6, 1)
    assert [type(l).__name__ for l in model.layers] == ["Conv2D", "Flatten", "Dense"]
    assert model.layers[0].compute_input_gradient is False


def test_count_params_of_an_unbuilt_model_raises_as_keras():
    with pytest.raises(ValueError, match="isn't built"):
        keras.Sequential([layers.Dense(3)]).count_params()
    with pytest.raises(ValueError, match="isn't built"):
        layers.Dense(3).count_params()


def test_layer_get_and_set_weights_in_keras_order():
    layer = layers.Dense(3)
    layer.build((4,))
    kernel, bias = layer.get_weights()
    assert kernel.shape == (4, 3) and bias.shape == (3,)
    layer.set_weights([np.ones((4, 3)), np.zeros(3)])
    assert np.all(layer.params["kernel"] == 1)
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        layer.set_weights([np.ones((3, 3)), np.zeros(3)])


def test_graph_model_save_and_load_round_trip(tmp_path):
    set_random_seed(5)
    model = residual_model(dtype="float32")
    model.compile("adam", "categorical_crossentropy", ["accuracy"])
    rng = np.random.default_rng(1)
    x, y = rng.random((8, 6, 6, 2)), to_categorical(rng.integers(0, 4, 8), 4)
    model.fit(x, y, epochs=1, verbose=0)
    model.save(tmp_path / "g.npz")
    back = models.load_model(tmp_path / "g.npz")
    assert isinstance(back, keras.Model) and not isinstance(back, keras.Sequential)
    assert [l.name for l in back.layers] == [l.name for l in model.layers]
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    # training continues exactly
    model.train_on_batch(x, y)
    back.train_on_batch(x, y)
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), back.get_weights()))


def test_residual_network_example_trains(capsys):
    import runpy
    from pathlib import Path
    example = Path(__file__).resolve().parents[1] / "examples" / "residual_network.py"
    main = runpy.run_path(str(example))["main"]
    acc = main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert "Connected to" in out and "block2_add (Add)" in out and "Test accuracy" in out
    assert acc > 0.15                                 # 10 classes: chance is 0.1


def test_zoo_models_have_keras_parameter_counts():
    from minicnn.models import zoo
    # Keras 3.15 builds the same two networks with these counts (its summary says so)
    assert zoo.seed_cnn().count_params() == 319_178
    resnet = zoo.resnet_cifar()
    assert resnet.count_params() == 309_994
    trainable = sum(o.params[k].size for _, o, k in resnet.trainable_slots())
    assert resnet.count_params() - trainable == 1_344


@pytest.mark.parametrize("module,name", [("layers", "LSTM"), ("optimizers", "RMSprop"),
                                         ("callbacks", "TensorBoard"), ("losses", "Huber"),
                                         ("models", "clone_model"), ("utils", "plot_model")])
def test_a_missing_keras_name_says_minicnn_does_not_have_it_yet(module, name):
    mod = getattr(keras, module)
    with pytest.raises(AttributeError, match=f"minicnn does not have {name} yet"):
        getattr(mod, name)
    assert not hasattr(mod, name)
    with pytest.raises(AttributeError, match="minicnn does not have Nothing yet"):
        keras.Nothing
