"""``minicnn export MODEL --format onnx|keras|torch``: any model file load_model reads."""
import numpy as np
import pytest

from minicnn import cli, models

from export_cases import trained


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    model, x, _ = trained("seed")
    run = tmp_path_factory.mktemp("run")
    model.save(run / "best.npz")
    return run, model, x


def test_export_onnx_next_to_the_model(seed_run, capsys):
    ort = pytest.importorskip("onnxruntime")
    run, model, x = seed_run
    assert cli.main(["export", str(run / "best.npz"), "--format", "onnx"]) == 0
    assert "best.onnx" in capsys.readouterr().out
    session = ort.InferenceSession(str(run / "best.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.abs(got - model.predict(x, verbose=0)).max() < 1e-5


def test_export_keras_then_torch_from_the_keras_file(seed_run, tmp_path):
    pytest.importorskip("h5py")
    torch = pytest.importorskip("torch")
    run, model, x = seed_run
    out = tmp_path / "m.keras"
    assert cli.main(["export", str(run / "best.npz"), "--format", "keras", "-o", str(out)]) == 0
    again = models.load_model(out)
    assert again.compiled                    # the compile settings travel into .keras
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0),
                               rtol=0, atol=1e-6)
    assert cli.main(["export", str(out), "--format", "torch"]) == 0
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    got = program(torch.from_numpy(x)).detach().numpy()
    assert np.abs(got - model.predict(x, verbose=0)).max() < 1e-5


def test_export_refuses_to_overwrite_and_bad_arguments(seed_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    run, _, _ = seed_run
    out = tmp_path / "m.onnx"
    out.write_bytes(b"keep me")
    assert cli.main(["export", str(run / "best.npz"), "--format", "onnx", "-o", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert cli.main(["export", str(run / "best.npz"), "--format", "onnx", "-o", str(out),
                     "--overwrite", "--opset", "18"]) == 0
    assert out.stat().st_size > 1000
    assert cli.main(["export", str(run / "nope.npz"), "--format", "onnx"]) == 2
    assert "nope.npz" in capsys.readouterr().err
    assert cli.main(["export", str(run / "best.npz"), "--format", "onnx", "--opset", "3",
                     "-o", str(tmp_path / "o.onnx")]) == 2
    assert "opset_version" in capsys.readouterr().err
    assert cli.main(["export", str(run / "best.npz"), "--format", "torch", "--opset", "18"]) == 2
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    assert cli.main(["export", str(bad), "--format", "onnx"]) == 2
    assert "bad.npz" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export", str(run / "best.npz"), "--format", "tflite"])
