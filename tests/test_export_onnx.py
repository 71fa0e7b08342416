"""ONNX export: onnxruntime (and onnx.reference) compute what minicnn's predict computes."""
import os
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import minicnn as keras  # noqa: E402
from minicnn import export, layers  # noqa: E402

from export_cases import all_cases, batch, build, trained  # noqa: E402

TOL = 1e-5


def run_onnx(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def max_error(got, expected):
    """max |got - expected| / max(1, max |expected|)."""
    return float(np.abs(got - expected).max() / max(1.0, np.abs(expected).max()))


@pytest.mark.parametrize("name", ["seed", "resnet"])
def test_zoo_models_run_in_onnxruntime_as_predict(tmp_path, name, error_log):
    model, x, _ = trained(name)
    path = tmp_path / f"{name}.onnx"
    assert model.export(path, format="onnx") == str(path)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8 and proto.opset_import[0].version == 17
    (inp,) = proto.graph.input
    assert inp.name == model.inputs[0].name
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [32, 32, 3]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, len(x)):                                    # any batch size
        got = session.run(None, {inp.name: x[:n]})[0]
        err = error_log.record(f"onnx vs predict ({name})",
                               np.abs(got - model.predict(x[:n], verbose=0)).max())
        assert err < TOL


@pytest.mark.parametrize("key", sorted(all_cases()))
def test_each_layer_runs_in_onnxruntime_as_predict(key, error_log):
    model = build(key)
    x = batch(model)
    got = run_onnx(export.to_onnx(model), x)[0]
    expected = model.predict(x, verbose=0)
    assert got.shape == expected.shape
    assert error_log.record("onnx vs predict (layers)", max_error(got, expected)) < TOL


def test_gelu_op_of_opset_20_and_the_erf_form_agree():
    model = build("image-gelu")
    x = batch(model) * 3
    expected = model.predict(x, verbose=0)
    for opset in (17, 20):
        proto = export.to_onnx(model, opset_version=opset)
        ops = {n.op_type for n in proto.graph.node}
        assert ("Gelu" in ops) == (opset >= 20) and ("Erf" in ops) == (opset < 20)
        assert max_error(run_onnx(proto, x)[0], expected) < TOL


def test_reference_evaluator_in_float64():
    from onnx.reference import ReferenceEvaluator
    keras.set_random_seed(3)
    inputs = keras.Input(shape=(5, 7, 2), dtype="float64")
    x = layers.Conv2D(3, 3, strides=2, padding="same", activation="relu", dtype="float64")(inputs)
    y = layers.AveragePooling2D(2, strides=1, padding="same", dtype="float64")(x)
    y = layers.BatchNormalization(dtype="float64")(layers.Concatenate(dtype="float64")([x, y]))
    out = layers.Dense(4, activation="softmax", dtype="float64")(
        layers.Flatten(dtype="float64")(y))
    model = keras.Model(inputs, out)
    model.set_weights([np.random.default_rng(0).uniform(0.1, 1.0, w.shape)
                       for w in model.get_weights()])
    xb = np.random.default_rng(1).standard_normal((2, 5, 7, 2))
    ref = ReferenceEvaluator(export.to_onnx(model))
    (got,) = ref.run(None, {model.inputs[0].name: xb})
    assert got.dtype == np.float64
    # not 1e-15: ONNX attributes are float32, and BatchNormalization's epsilon is one
    np.testing.assert_allclose(got, model.predict(xb, verbose=0), rtol=0, atol=1e-9)


def test_shared_weights_are_stored_once():
    proto = export.to_onnx(build("nested-and-shared"))
    names = [t.name for t in proto.graph.initializer]
    assert len(names) == len(set(names))
    assert sum(n.startswith("shared/") for n in names) == 2        # kernel and bias


def test_several_inputs_and_outputs():
    a, b = keras.Input(shape=(4, 4, 2), name="a"), keras.Input(shape=(3,), name="b")
    img = layers.Conv2D(2, 3, padding="same")(a)
    vec = layers.Add()([layers.Dense(3)(layers.Flatten()(img)), b])
    model = keras.Model([a, b], [img, vec])
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((2, 4, 4, 2)).astype(np.float32)
    xb = rng.standard_normal((2, 3)).astype(np.float32)
    session = ort.InferenceSession(export.to_onnx(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["a", "b"]
    got = session.run(None, {"a": xa, "b": xb})
    for g, e in zip(got, model.predict([xa, xb], verbose=0)):
        assert max_error(g, e) < TOL


def test_a_layer_without_onnx_form_is_named():
    class Scale(layers.Layer):
        def call(self, x, training=False):
            return x * 2

        def backward(self, dy):
            return dy * 2

    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(3), Scale(name="doubler")])
    with pytest.raises(ValueError, match=r"'doubler' \(Scale\).*Conv2D"):
        export.to_onnx(model)


def test_wrong_format_and_arguments_are_refused(tmp_path):
    model = build("dense-relu")
    with pytest.raises(ValueError, match=r"format must be one of 'onnx', 'torch', received "
                                         r"format='bogus'"):
        model.export(tmp_path / "m.x", format="bogus")
    with pytest.raises(ValueError, match="format='tf_saved_model'.*TensorFlow"):
        model.export(tmp_path / "m")                     # Keras's default format
    with pytest.raises(ValueError, match="opset_version .* received 12"):
        model.export(tmp_path / "m.onnx", format="onnx", opset_version=12)
    with pytest.raises(ValueError, match="unexpected argument.*dynamic"):
        model.export(tmp_path / "m.onnx", format="onnx", dynamic=True)
    with pytest.raises(ValueError, match="input_signature"):
        model.export(tmp_path / "m.onnx", format="onnx", input_signature=[(None, 6)])
    assert not list(tmp_path.iterdir())


def test_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="not built"):
        keras.Sequential([layers.Dense(3)]).export("m.onnx", format="onnx")


def test_without_onnx_the_error_names_the_extra(tmp_path):
    script = ("import sys; sys.modules['onnx'] = None\n"
              "import minicnn as keras\n"
              "from minicnn import layers\n"
              "m = keras.Sequential([keras.Input(shape=(3,)), layers.Dense(2)])\n"
              "try:\n"
              "    m.export(sys.argv[1], format='onnx')\n"
              "except ImportError as e:\n"
              "    print(e)\n")
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path / "m.onnx")],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'pip install "minicnn[interop]"' in run.stdout


def test_export_leaves_the_model_alone():
    model = build("bn-images")
    before = model.get_weights()
    export.to_onnx(model)
    assert all(np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
