"""PyTorch export: to_torch's module computes what minicnn computes, its state_dict is
torch_state_dict (which needs no torch), and compare_with_torch checks a model's backprop
against autograd."""
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import minicnn as keras  # noqa: E402
from minicnn import export, gradcheck, layers, models, regularizers  # noqa: E402

from export_cases import all_cases, batch, build, randomize, trained  # noqa: E402

TOL = 1e-5


def run_torch(module, *xs):
    with torch.no_grad():
        out = module(*(torch.from_numpy(x) for x in xs))
    return out.numpy() if not isinstance(out, tuple) else [o.numpy() for o in out]


def max_error(got, expected):
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_zoo_models_in_torch_as_predict(name, error_log):
    model, x, _ = trained(name)
    module = export.to_torch(model)
    assert not module.training                       # eval mode: predict's semantics
    got = run_torch(module, x)
    err = error_log.record(f"to_torch vs predict ({name})",
                           np.abs(got - model.predict(x, verbose=0)).max())
    assert err < TOL


@pytest.mark.parametrize("key", sorted(all_cases()))
def test_each_layer_in_torch_as_predict(key, error_log):
    model = build(key)
    x = batch(model)
    got = run_torch(export.to_torch(model), x)
    expected = model.predict(x, verbose=0)
    assert got.shape == expected.shape
    assert error_log.record("to_torch vs predict (layers)", max_error(got, expected)) < TOL


def test_state_dict_is_torch_state_dict():
    model = build("nested-and-shared")
    state = export.torch_state_dict(model)
    module = export.to_torch(model)
    theirs = module.state_dict()
    assert list(state) == list(theirs)
    for key, value in state.items():
        np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=key)
    kernel = model.get_layer("stem").params["kernel"]
    np.testing.assert_array_equal(state["layers.stem.weight"], kernel.transpose(3, 2, 0, 1))
    assert state["layers.stem.weight"].dtype == np.float32
    nested = model.get_layer("inner")
    assert "layers.inner.layers." + nested.layers[2].name + ".running_var" in state


def test_torch_state_dict_needs_no_torch():
    script = ("import sys; sys.modules['torch'] = None\n"     # any import of torch fails
              "import numpy as np\n"
              "from minicnn import models, export\n"
              "m = models.zoo.resnet_cifar()\n"
              "s = export.torch_state_dict(m)\n"
              "dense = m.layers[-1]\n"
              "assert np.array_equal(s[f'layers.{dense.name}.weight'], dense.params['kernel'].T)\n"
              "print(len(s))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == [str(len(export.to_torch(models.zoo.resnet_cifar())
                                          .state_dict()))]


def test_train_mode_is_batch_statistics_with_keras_momentum():
    model = randomize(keras.Sequential([keras.Input(shape=(5, 6, 3)),
                                        layers.BatchNormalization(momentum=0.9, epsilon=0.01)]))
    x = batch(model, n=4)
    module = export.to_torch(model).train()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    expected = model.forward(x, training=True)           # updates the moving statistics
    assert max_error(got, expected) < TOL
    bn = model.layers[0]
    state = module.state_dict()
    # Keras's momentum 0.9 is torch's 0.1: the running means agree after one step
    np.testing.assert_allclose(state[f"layers.{bn.name}.running_mean"].numpy(),
                               bn.params["moving_mean"], rtol=0, atol=1e-6)
    # torch updates running_var with the unbiased batch variance (m / (m - 1)), minicnn
    # and Keras with the biased one: the documented difference
    m = x.shape[0] * x.shape[1] * x.shape[2]
    var = x.astype(np.float64).reshape(-1, 3).var(axis=0)
    np.testing.assert_allclose(state[f"layers.{bn.name}.running_var"].numpy(),
                               bn.params["moving_variance"] + 0.1 * var / (m - 1), rtol=1e-5)


@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_compare_with_torch_on_the_zoo_models(name, error_log):
    model, x, y = trained(name)
    before = model.get_weights()
    lines = []
    errors = gradcheck.compare_with_torch(model, x, y, print_fn=lines.append)
    assert set(errors) == {"loss"} | {p for p, _, _ in model.trainable_slots()}
    for path, err in errors.items():
        error_log.record(f"compare_with_torch ({name})", err)
        assert err < 1e-10, (path, err)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert any(line.startswith("worst:") for line in lines)
    if name == "resnet":
        random = [layer.name for layer in model.layers
                  if isinstance(layer, (layers.Dropout, layers.RandomFlip,
                                        layers.RandomTranslation))]
        assert len(random) == 3 and f"as the identity: {', '.join(random)}" in lines[0]


def test_compare_with_torch_loss_options_and_regularizers():
    keras.set_random_seed(1)
    inputs = keras.Input(shape=(6, 6, 2))
    x = layers.Conv2D(3, 3, padding="same", activation="tanh",
                      kernel_regularizer=regularizers.L2(0.1))(inputs)
    x = layers.BatchNormalization(gamma_regularizer=regularizers.L1(0.05))(x)
    x = layers.Concatenate()([x, layers.AveragePooling2D(3, strides=1, padding="same")(x)])
    x = layers.Dense(4, kernel_regularizer=regularizers.L1L2(0.01, 0.02))(layers.Flatten()(x))
    model = keras.Model(inputs, x)
    xb = np.random.default_rng(0).standard_normal((5, 6, 6, 2)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 1])
    onehot = np.eye(4, dtype=np.float32)[labels]
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0])
    cases = [(keras.losses.SparseCategoricalCrossentropy(from_logits=True), labels, None),
             (keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1),
              onehot, weights)]
    for loss, y, w in cases:
        errors = gradcheck.compare_with_torch(model, xb, y, loss=loss, sample_weight=w,
                                              print_fn=None)
        assert max(errors.values()) < 1e-10, errors
    probs = keras.Model(inputs, layers.Softmax()(x))          # loss on probabilities
    errors = gradcheck.compare_with_torch(probs, xb, onehot, loss="categorical_crossentropy",
                                          print_fn=None)
    assert max(errors.values()) < 1e-10, errors


def test_compare_with_torch_finds_a_wrong_backward(monkeypatch):
    model, x, y = trained("seed")
    right = layers.Dense.backward_preactivation

    def off_by_one_percent(self, dz):
        dx = right(self, dz)
        self.grads["kernel"] = self.grads["kernel"] * 1.01
        return dx
    monkeypatch.setattr(layers.Dense, "backward_preactivation", off_by_one_percent)
    errors = gradcheck.compare_with_torch(model, x, y, print_fn=None)
    last = model.layers[-1].name
    assert 1e-3 < errors[f"{last}/kernel"] < 1e-2          # ||0.01 g|| / ||2.01 g||
    assert errors[f"{last}/bias"] < 1e-10 and errors["loss"] < 1e-10


def test_compare_with_torch_needs_a_loss():
    model = build("dense-softmax")
    with pytest.raises(ValueError, match="not compiled.*loss="):
        gradcheck.compare_with_torch(model, batch(model), np.array([0, 1, 2]))


def test_torch_program_file_loads_without_minicnn(tmp_path):
    model, x, _ = trained("resnet")
    path = tmp_path / "m.pt2"
    model.export(path, format="torch")
    np.save(tmp_path / "x.npy", x)
    script = ("import sys; sys.modules['minicnn'] = None\n"
              "import numpy as np, torch\n"
              "p = torch.export.load(sys.argv[1]).module()\n"
              "x = torch.from_numpy(np.load(sys.argv[2]))\n"
              "np.save(sys.argv[3], p(x).detach().numpy())\n"
              "print(tuple(p(x[:1]).shape))\n")
    run = subprocess.run([sys.executable, "-c", script, str(path), str(tmp_path / "x.npy"),
                          str(tmp_path / "out.npy")], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().splitlines()[-1] == "(1, 10)"
    got = np.load(tmp_path / "out.npy")
    assert np.abs(got - model.predict(x, verbose=0)).max() < TOL


def test_a_layer_without_torch_form_is_named():
    class Scale(layers.Layer):
        def call(self, x, training=False):
            return x * 2

        def backward(self, dy):
            return dy * 2

    model = keras.Sequential([keras.Input(shape=(4,)), Scale(name="doubler")])
    with pytest.raises(ValueError, match=r"'doubler' \(Scale\).*Conv2D"):
        export.to_torch(model)


def test_readme_snippet_prints_what_the_readme_says(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    section = readme[readme.index("### ONNX and PyTorch"):]
    code = section[section.index("```python\n") + 10:section.index("\n```\n")]
    monkeypatch.chdir(tmp_path)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.splitlines() == ["onnxruntime: True", "torch: True", "gradients: True"]
    assert "`onnxruntime: True`, `torch: True`, `gradients: True`" in section


def test_several_inputs_in_torch_and_compare_with_torch():
    a, b = keras.Input(shape=(4, 4, 2), name="a"), keras.Input(shape=(3,), name="b")
    img = layers.Conv2D(2, 3, padding="same")(a)
    vec = layers.Add()([layers.Dense(3)(layers.Flatten()(img)), b])
    model = keras.Model([a, b], layers.Dense(4, activation="softmax")(vec))
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    xb = rng.standard_normal((2, 3)).astype(np.float32)
    got = run_torch(export.to_torch(model), xa, xb)
    assert max_error(got, model.predict([xa, xb], verbose=0)) < TOL
    errors = gradcheck.compare_with_torch(model, [xa, xb], np.array([1, 3]),
                                          loss="sparse_categorical_crossentropy", print_fn=None)
    assert max(errors.values()) < 1e-10


def test_names_that_torch_would_merge_are_refused():
    model = keras.Sequential([keras.Input(shape=(3,)), layers.Dense(2, name="a.b"),
                              layers.Dense(2, name="a_b")])
    with pytest.raises(ValueError, match="'a.b' and 'a_b'"):
        export.to_torch(model)
    with pytest.raises(ValueError, match="'a.b' and 'a_b'"):
        export.torch_state_dict(model)
