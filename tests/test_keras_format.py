"""Keras 3 .keras files: Keras's fixtures load and predict alike, minicnn's files open in Keras,
hostile and broken files are refused without running anything."""
import json
import os
import shutil
import subprocess
import zipfile

import numpy as np
import pytest

pytest.importorskip("h5py")

from minicnn import models  # noqa: E402

HERE = os.path.join(os.path.dirname(__file__), "fixtures", "keras")
NAMES = ("seed_cnn", "residual", "resnet_bn")
KERAS_PYTHON = os.environ.get("MINICNN_KERAS_PYTHON", "/work/tfvenv/bin/python")


def fixture(name):
    return (os.path.join(HERE, f"{name}.keras"), np.load(os.path.join(HERE, f"{name}.x.npy")),
            np.load(os.path.join(HERE, f"{name}.pred.npy")))


def train_batch(model, x):
    y = np.arange(len(x)) % 10
    return y if model.loss.sparse else np.eye(10, dtype=np.float32)[y]


@pytest.mark.parametrize("name", NAMES)
def test_keras_fixture_predicts_as_keras_did_and_trains(name):
    path, x, expected = fixture(name)
    model = models.load_model(path)
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4, rtol=0)
    assert model.compiled and model.metrics == ["accuracy"]
    before = model.get_weights()
    logs = model.train_on_batch(x, train_batch(model, x), return_dict=True)
    assert np.isfinite(logs["loss"])
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))


@pytest.mark.skipif(not os.path.exists(KERAS_PYTHON), reason="no Keras 3 Python")
@pytest.mark.parametrize("name", NAMES)
def test_minicnn_keras_file_opens_in_keras(tmp_path, name):
    path, x, _ = fixture(name)
    model = models.load_model(path)
    model.train_on_batch(x, train_batch(model, x))
    out = tmp_path / f"{name}.keras"
    model.save(out)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "mine.npy", model.predict(x, verbose=0))
    script = ("import sys, numpy as np, keras\n"
              "m = keras.models.load_model(sys.argv[1])\n"
              "p = m.predict(np.load(sys.argv[2]), verbose=0)\n"
              "print(float(np.abs(p - np.load(sys.argv[3])).max()))\n")
    run = subprocess.run([KERAS_PYTHON, "-c", script, str(out), str(tmp_path / "x.npy"),
                          str(tmp_path / "mine.npy")], capture_output=True, text=True,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert float(run.stdout.strip().splitlines()[-1]) < 1e-4


def rewrite(tmp_path, change, name="residual"):
    """A copy of a fixture whose config.json went through ``change``."""
    src, _, _ = fixture(name)
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    cfg = json.loads(members["config.json"])
    change(cfg)
    members["config.json"] = json.dumps(cfg).encode()
    out = tmp_path / "changed.keras"
    with zipfile.ZipFile(out, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return out


def test_hostile_config_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"

    def hostile(cfg):
        cfg["config"]["layers"][1] = {"module": "os", "class_name": "system",
                                      "config": {"command": f"touch {marker}"}}
    with pytest.raises(ValueError, match="'os'.*system|system.*'os'"):
        models.load_model(rewrite(tmp_path, hostile))
    assert not marker.exists()

    def evil_activation(cfg):
        cfg["config"]["layers"][1]["config"]["activation"] = {
            "module": "builtins", "class_name": "eval", "config": f"open('{marker}', 'w')"}
    with pytest.raises(ValueError, match="activation"):
        models.load_model(rewrite(tmp_path, evil_activation))
    assert not marker.exists()


def test_unsupported_layer_names_its_class_and_the_supported_ones(tmp_path):
    def lambda_layer(cfg):
        cfg["config"]["layers"][4]["class_name"] = "Lambda"
    with pytest.raises(ValueError, match="'Lambda'.*supported: .*Conv2D"):
        models.load_model(rewrite(tmp_path, lambda_layer))


def test_truncated_file_names_the_file(tmp_path):
    src, _, _ = fixture("residual")
    cut = tmp_path / "cut.keras"
    cut.write_bytes(open(src, "rb").read()[:5000])
    with pytest.raises(ValueError, match="cut.keras"):
        models.load_model(cut)


def test_member_leaving_the_archive_is_refused_and_not_written(tmp_path):
    src, _, _ = fixture("residual")
    bad = tmp_path / "sub" / "bad.keras"
    bad.parent.mkdir()
    shutil.copy(src, bad)
    with zipfile.ZipFile(bad, "a") as zf:
        zf.writestr("../escaped.txt", "x")
    with pytest.raises(ValueError, match="escaped"):
        models.load_model(bad)
    assert not (tmp_path / "escaped.txt").exists()


def test_unknown_extensions_are_refused(tmp_path):
    model = models.load_model(fixture("residual")[0])
    for name in ("m.h5", "m.pkl"):
        with pytest.raises(ValueError, match=r"\.keras.*\.npz"):
            model.save(tmp_path / name)
        assert not (tmp_path / name).exists()


def test_weights_h5_round_trip(tmp_path):
    path, x, expected = fixture("seed_cnn")
    model = models.load_model(path)
    model.save_weights(tmp_path / "w.weights.h5")
    other = models.load_model(path, compile=False)
    other.set_weights([np.zeros_like(w) for w in other.get_weights()])
    assert np.abs(other.predict(x, verbose=0) - expected).max() > 1e-3
    other.load_weights(tmp_path / "w.weights.h5")
    np.testing.assert_allclose(other.predict(x, verbose=0), expected, atol=1e-4, rtol=0)


def test_model_checkpoint_writes_keras_files(tmp_path):
    from minicnn.callbacks import ModelCheckpoint
    path, x, _ = fixture("residual")
    model = models.load_model(path)
    y = train_batch(model, x)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0, validation_data=(x, y),
              callbacks=[ModelCheckpoint(tmp_path / "best.keras", monitor="val_loss",
                                         save_best_only=True)])
    again = models.load_model(tmp_path / "best.keras")
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize("part, value, named", [
    ("optimizer", {"module": "keras.optimizers", "class_name": "RMSprop",
                   "config": {"name": "rmsprop", "learning_rate": 0.001, "rho": 0.9},
                   "registered_name": None}, "'RMSprop'"),
    ("loss", {"module": "keras.losses", "class_name": "MeanSquaredError",
              "config": {"name": "mean_squared_error", "reduction": "sum_over_batch_size"},
              "registered_name": None}, "'MeanSquaredError'"),
    ("loss", "binary_focal_crossentropy", "'binary_focal_crossentropy'"),
])
def test_compile_config_minicnn_lacks_is_skipped_with_a_warning(tmp_path, part, value, named):
    path, x, expected = fixture("residual")

    def change(cfg):
        cfg["compile_config"][part] = value
    with pytest.warns(UserWarning, match=f"compile_config skipped.*{named}.*uncompiled"):
        model = models.load_model(rewrite(tmp_path, change))
    assert not model.compiled
    np.testing.assert_allclose(model.predict(x, verbose=0), expected, atol=1e-4, rtol=0)


def test_unknown_metric_is_skipped_with_a_warning_and_the_rest_compiles(tmp_path):
    def change(cfg):
        cfg["compile_config"]["metrics"] = ["accuracy", "auc"]
    with pytest.warns(UserWarning, match="entries skipped.*auc"):
        model = models.load_model(rewrite(tmp_path, change))
    assert model.compiled and model.metrics == ["accuracy"]
