"""The ``minicnn`` command line: train (files, resume, errors), info, gradcheck, bench.

Everything runs in-process through :func:`minicnn.cli.main` on the generated shapes
dataset at a tiny size, except one subprocess smoke test of the installed console
script. Nothing touches the network: the missing-CIFAR test points the download at a
``file://`` URL that does not exist.
"""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import runpy
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

from minicnn import cli, models, plot
from minicnn.datasets import cifar10, shapes
from minicnn.layers import Dense

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("best.npz", "last.npz", "last.json", "history.json", "curves.png",
           "confusion_matrix.png", "misclassified.png")
EPOCH_LINE = re.compile(r"^Epoch (\d+)/(\d+) - [\d.]+s - \d+ images/s - loss: [\d.]+ - "
                        r"accuracy: [\d.]+ - val_loss: [\d.]+ - val_accuracy: [\d.]+( \*)?$",
                        re.M)
TINY = ["--dataset", "shapes", "--n-train", "160", "--n-test", "40", "--batch-size", "32"]


def train(capsys, out, *extra):
    code = cli.main(["train", *TINY, "--out", str(out), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_png_size(path):
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def load_history(out):
    with open(os.path.join(out, "history.json")) as fh:
        return json.load(fh)


# ----------------------------------------------------------------------------- train
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One 2-epoch training run on tiny shapes, shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("run")
    capture = _Capture()
    with capture:
        code = cli.main(["train", *TINY, "--epochs", "2", "--out", str(out)])
    assert code == 0, capture.err
    return out, capture.out


class _Capture:
    """Capture stdout/stderr in a module-scoped fixture (capsys is function-scoped)."""

    def __enter__(self):
        import io
        self._old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self._out, self._err = io.StringIO(), io.StringIO()
        return self

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self._old
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


def test_train_writes_every_file(run_dir):
    out, _ = run_dir
    for name in OUTPUTS:
        assert os.path.isfile(os.path.join(out, name)), name
    for name in ("curves.png", "confusion_matrix.png", "misclassified.png"):
        w, h = read_png_size(os.path.join(out, name))
        assert w > 200 and h > 100, (name, w, h)


def test_train_prints_epoch_lines_and_test_accuracy(run_dir):
    out, text = run_dir
    epochs = [(int(a), int(b)) for a, b, _ in EPOCH_LINE.findall(text)]
    assert epochs == [(1, 2), (2, 2)], text
    assert "319,178" in text                        # the model summary of the seed model
    last = text.strip().splitlines()[-1]
    match = re.fullmatch(r"Test accuracy: (\d\.\d{4}) \(loss [\d.]+, 40 images, best checkpoint, "
                         r"epoch \d of 2\)", last)
    assert match, last
    assert float(match.group(1)) == pytest.approx(load_history(out)["test_accuracy"], abs=5e-5)


def test_history_json_keys_and_lengths(run_dir):
    out, _ = run_dir
    history = load_history(out)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "images_per_second"):
        assert len(history[key]) == 2, key
        assert all(np.isfinite(history[key])), key
    assert 0 <= history["test_accuracy"] <= 1 and history["test_loss"] > 0
    best = int(np.argmax(history["val_accuracy"])) + 1      # first maximum, as the checkpoint
    assert history["best_epoch"] == best
    with open(os.path.join(out, "last.json")) as fh:
        state = json.load(fh)
    assert state["epochs_done"] == 2 and state["settings"]["dataset"] == "shapes"


def test_test_accuracy_is_the_best_checkpoints(run_dir):
    out, _ = run_dir
    (_, _), (x_test, y_test) = shapes.load_data(n_train=160, n_test=40)
    model = models.load_model(os.path.join(out, "best.npz"))
    y_prob = model.predict(x_test.astype(np.float32) / np.float32(255))
    accuracy = float(np.mean(np.argmax(y_prob, axis=1) == y_test[:, 0]))
    assert accuracy == pytest.approx(load_history(out)["test_accuracy"])


def test_resume_gives_the_same_weights_and_history(tmp_path, capsys):
    # augmentation and dropout draw from the global generator too: all of it must resume
    opts = ("--augment", "--dropout", "0.25", "--seed", "3")
    code, _, err = train(capsys, tmp_path / "whole", "--epochs", "2", *opts)
    assert code == 0, err
    code, _, err = train(capsys, tmp_path / "split", "--epochs", "1", *opts)
    assert code == 0, err
    code = cli.main(["train", "--resume", str(tmp_path / "split" / "last.npz"), "--epochs", "2"])
    text = capsys.readouterr().out
    assert code == 0
    assert "Resuming from" in text and "after epoch 1" in text
    assert [int(a) for a, _, _ in EPOCH_LINE.findall(text)] == [2]

    whole = models.load_model(tmp_path / "whole" / "last.npz").get_weights()
    split = models.load_model(tmp_path / "split" / "last.npz").get_weights()
    assert len(whole) == len(split) == 10
    for a, b in zip(whole, split):
        assert np.array_equal(a, b)
    h_whole, h_split = load_history(tmp_path / "whole"), load_history(tmp_path / "split")
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "best_epoch", "test_accuracy",
                "test_loss"):
        assert h_whole[key] == h_split[key], key


def test_resume_refuses_other_settings(tmp_path, capsys):
    code, _, err = train(capsys, tmp_path, "--epochs", "1")
    assert code == 0, err
    code = cli.main(["train", "--resume", str(tmp_path / "last.npz"), "--epochs", "2",
                     "--batch-size", "16"])
    err = capsys.readouterr().err
    assert code == 2
    assert "batch_size=32" in err and "16" in err

    state_path = tmp_path / "last.json"           # a state that does not match the checkpoint
    state = json.loads(state_path.read_text())
    state["epochs_done"] = 2
    state_path.write_text(json.dumps(state))
    assert cli.main(["train", "--resume", str(tmp_path / "last.npz"), "--epochs", "3"]) == 2
    assert "do not belong together" in capsys.readouterr().err


def test_resume_of_a_missing_checkpoint(tmp_path, capsys):
    assert cli.main(["train", "--resume", str(tmp_path / "nope.npz")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_missing_cifar10_fails_with_what_was_tried(tmp_path, monkeypatch, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("MINICNN_HOME", str(empty))
    monkeypatch.setenv("MINICNN_DATASETS", str(empty))
    for var in ("MINICNN_CIFAR10_URL", "MINICNN_DATASETS_MIRROR", "MINICNN_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    url = (tmp_path / "no-server" / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setitem(cifar10.FILES, "archive",
                        dataclasses.replace(cifar10.FILES["archive"], url=url, mirrors=()))
    out = tmp_path / "run"
    code = cli.main(["train", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert "Tried" in captured.err and url in captured.err and str(empty) in captured.err
    assert "--data PATH" in captured.err and "--dataset shapes" in captured.err
    assert "Epoch" not in captured.out and not out.exists()     # never trained on anything else


def test_augment_refused_for_grey_digits(capsys):
    assert cli.main(["train", "--dataset", "mnist", "--augment"]) == 2
    assert "--augment is for the colour datasets" in capsys.readouterr().err


def test_example_script_runs_the_same_trainer(tmp_path, capsys):
    example = runpy.run_path(os.path.join(REPO, "examples", "train_cifar10.py"))
    code = example["main"]([*TINY, "--n-train", "60", "--n-test", "20", "--epochs", "1",
                            "--out", str(tmp_path)])
    assert code == 0
    assert "Test accuracy:" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "misclassified.png")


# ----------------------------------------------------------------------------- plots
def test_plots_of_a_run_show_what_they_claim(run_dir):
    out, _ = run_dir
    history = load_history(out)
    fig = plot.history(history, monitor="val_accuracy")     # what the run's checkpoint watched
    acc, loss = fig.axes
    best = history["best_epoch"]
    for ax, name in ((acc, "Accuracy"), (loss, "Loss")):
        assert ax.get_xlabel() == "Epoch" and ax.get_ylabel() == name
        assert [t.get_text() for t in ax.get_legend().get_texts()] == [
            "train", "validation",
            f"best epoch {best} (val_accuracy {history['val_accuracy'][best - 1]:.4g})"]
        # the marker stands at the epoch whose weights best.npz holds
        assert list(ax.lines[2].get_xdata()) == [best, best]
    np.testing.assert_allclose(acc.lines[1].get_ydata(), history["val_accuracy"])

    (_, _), (x_test, y_test) = shapes.load_data(n_train=160, n_test=40)
    model = models.load_model(os.path.join(out, "best.npz"))
    y_prob = model.predict(x_test.astype(np.float32) / np.float32(255))
    fig = plot.confusion_matrix(y_test, y_prob, shapes.CLASS_NAMES)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == list(shapes.CLASS_NAMES)
    assert all(re.fullmatch(r".+ \((\d+%|n/a)\)", t.get_text())
               for t in fig.axes[0].get_yticklabels())

    fig = plot.misclassified(x_test, y_test, y_prob, shapes.CLASS_NAMES)
    wrong = int(np.sum(np.argmax(y_prob, axis=1) != y_test[:, 0]))
    assert len(fig.axes) == min(wrong, 25) or (wrong == 0 and len(fig.axes) == 1)
    if wrong:
        first = fig.axes[0]
        assert re.fullmatch(r"pred: \w+ \d+%\ntrue: \w+", first.get_title())
        worst = plot.worst_errors(y_test, y_prob)[0]
        assert f"{y_prob[worst].max():.0%}" in first.get_title()
        assert y_prob[worst].max() == max(y_prob[i].max() for i in range(len(y_test))
                                          if np.argmax(y_prob[i]) != y_test[i, 0])
        shown = first.get_images()[0].get_array()
        assert shown.shape == (32, 32, 3) and np.ptp(np.asarray(shown)) > 0.1   # a real image


# ----------------------------------------------------------------------------- info
def test_info_in_process(capsys):
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    for key in ("minicnn:", "numpy:", "numba:", "python:", "backend:", "threads:",
                "numba threading layer:", "threadpoolctl", "OPENBLAS_CORETYPE:", "malloc:",
                "huge pages:"):
        assert key in text, key
    # the CPU, as minicnn.machine reads it: what the FAQ tells the reader to look at
    from minicnn import machine
    assert re.search(rf"^cpu: +{re.escape(machine.describe_cpu())}$", text, re.M), text
    assert re.search(r"^  \S+ .*: \d+ threads?(, \S+ kernels)? \(", text, re.M), text


def test_info_names_the_openblas_kernels_and_a_pinned_coretype(monkeypatch, capsys):
    pytest.importorskip("scipy.linalg.cython_blas")
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^OPENBLAS_CORETYPE: +Haswell \(pins", text, re.M), text
    # threadpoolctl reports the architecture OpenBLAS chose when it loaded
    assert re.search(r"^  openblas .*: 1 thread, \w+ kernels \(blas", text, re.M), text
    # the OpenBLAS Numba's np.dot calls is named as such
    assert re.search(r"^  openblas .*\(blas; SciPy's: every numba-backend GEMM, .*scipy",
                     text, re.M), text
    # this process loaded OpenBLAS before the variable was set: the line must not claim
    # that the variable chose the kernels unless they are the ones it names
    line = re.search(r"^OpenBLAS kernels: (\w+) kernels .*$", text, re.M)
    assert line, text
    if line.group(1).lower() == "haswell":
        assert "pinned by OPENBLAS_CORETYPE=Haswell" in line.group(0)
    else:
        assert "not the OPENBLAS_CORETYPE=Haswell set now" in line.group(0)
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert cli.main(["info"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^OPENBLAS_CORETYPE: +unset \(each OpenBLAS picks its kernels", text,
                     re.M), text
    assert re.search(r"^OpenBLAS kernels: \w+ kernels .*, OpenBLAS's own choice, on an ", text,
                     re.M), text


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason="OpenBLAS's Haswell kernels exist on x86-64 only")
def test_info_in_a_process_pinned_to_haswell():
    """What the FAQ describes: a pin set before OpenBLAS loads chooses its kernels, and
    `minicnn info` says so next to the CPU's own width."""
    env = dict(os.environ, OPENBLAS_CORETYPE="Haswell", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "minicnn.cli", "info"], capture_output=True,
                          text=True, timeout=120, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"^  openblas .*: 1 thread, Haswell kernels \(blas; SciPy's", proc.stdout,
                     re.M), proc.stdout
    assert re.search(r"^OpenBLAS kernels: Haswell kernels \(AVX2\), pinned by "
                     r"OPENBLAS_CORETYPE=Haswell, on an ", proc.stdout, re.M), proc.stdout


def test_info_console_script():
    exe = shutil.which("minicnn")
    if exe is None:
        pytest.skip("the minicnn console script is not installed (pip install -e .)")
    proc = subprocess.run([exe, "info"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "minicnn:" in proc.stdout and "numba threading layer:" in proc.stdout


# ----------------------------------------------------------------------------- gradcheck
LAYER_TYPES = ("Conv2D", "MaxPooling2D", "Flatten", "Dense", "Activation", "ReLU", "Dropout",
               "RandomFlip", "RandomTranslation", "CategoricalCrossentropy",
               "SparseCategoricalCrossentropy")


def test_gradcheck_command_passes(capsys):
    assert cli.main(["gradcheck"]) == 0
    text = capsys.readouterr().out
    assert "rel. error" in text and "FAIL" not in text
    for name in LAYER_TYPES:
        assert re.search(rf"^{name}\b.*\d\.\d\de-\d\d  pass$", text, re.M), name


def test_gradcheck_command_fails_on_a_wrong_gradient(monkeypatch, capsys):
    right = Dense.backward_preactivation

    def doubled(self, dz):
        dx = right(self, dz)
        self.grads["kernel"] = 2 * self.grads["kernel"]
        return dx

    monkeypatch.setattr(Dense, "backward_preactivation", doubled)
    assert cli.main(["gradcheck", "--backend", "numpy"]) == 1
    text = capsys.readouterr().out
    assert re.search(r"^Dense relu\s+dkernel\s+\S+\s+FAIL$", text, re.M), text


# ----------------------------------------------------------------------------- bench
SPREAD = r"[\d.]+ ms \(min-max [\d.]+-[\d.]+, IQR [\d.]+-[\d.]+, n=2\)"


def test_bench_two_backends(capsys):
    assert cli.main(["bench", "--batch-size", "4", "--repeats", "2", "--warmup", "1",
                     "--backend", "numba,numpy"]) == 0
    text = capsys.readouterr().out
    # the CPU and the roof come first, and each backend's header names both again
    assert re.search(r"^CPU: .+ \(.*\d+ CPUs\)$", text, re.M), text
    assert re.search(r"^Roof: NumPy float32 GEMM 1024x1024, best of \d+/\d+: [\d.]+ GFLOP/s on 1 "
                     r"thread \(median [\d.]+\), [\d.]+ GFLOP/s on \d+ threads? \(median "
                     r"[\d.]+; [\d.]+x the 1-thread roof\)$", text, re.M), text
    assert re.search(r"^OpenBLAS kernels: \w+ \(OpenBLAS [\d.]+\)", text, re.M), text
    assert re.search(r"^Load: other processes kept [\d.]+ CPUs busy while the roof was "
                     r"measured \(/proc/stat\)$", text, re.M), text
    for backend in ("numba", "numpy"):
        assert re.search(rf"^Seed model, backend {backend}, batch 4, \d+ threads?, float32, on "
                         rf".+: medians of 2 repeats, .*roof \([\d.]+ GFLOP/s\)$", text, re.M)
        assert re.search(rf"^{backend}\s+[\d.]+\s+[\d.]+-[\d.]+\s+\d+\s+[\d.]+x$", text,
                         re.M), backend
    # which algorithm each conv step ran: the numba backend fuses the first two with their
    # pools (conv1, 3 channels: im2col; conv2, 32 channels at 16x16: the fused F(4x4, 3x3)
    # forward and the fused F(2x2, 3x3) backward), the numpy backend runs im2col
    # everywhere (conftest: the fixed rule, under which the third conv, 64 channels at
    # 8x8, runs F(4x4, 3x3) forward and F(2x2, 3x3) backward)
    assert len(re.findall(r"^conv2d\S*\+max_pooling2d\S* \[fused im2col\]", text, re.M)) == 1
    assert len(re.findall(r"^conv2d\S*\+max_pooling2d\S* \[fused winograd4/winograd\]", text,
                          re.M)) == 1
    assert len(re.findall(r"^conv2d_\d+ \[winograd4/winograd\] ", text, re.M)) == 1, text
    assert len(re.findall(r"^conv2d_\d+ \[im2col\] ", text, re.M)) == 3, text
    # the spread of the repeats, not one number
    assert len(re.findall(rf"^whole training step \(train_on_batch\): {SPREAD}; \d+ images/s",
                          text, re.M)) == 2, text
    assert len(re.findall(rf"^inference \(predict_on_batch\): {SPREAD}; \d+ images/s$", text,
                          re.M)) == 2, text
    # a backend's own window may be too short for /proc/stat's ticks on a fast machine
    assert len(re.findall(r"^Load: (other processes kept [\d.]+ CPUs busy|unknown) during "
                          r"this backend's measurement", text, re.M)) == 2, text
    assert re.search(r"^Load: other processes kept [\d.]+ CPUs busy over the whole run "
                     r"\(/proc/stat\)$", text, re.M), text
    # per-layer rows: median, half the IQR, GFLOP/s and % of the roof
    assert re.search(r"^conv2d\S*( \[\S+\])?\s+32x32x32\s+[\d.]+\s+[\d.]+\s+[\d.]+\s+\d+%",
                     text, re.M)                                            # numpy: layer by layer
    assert re.search(r"^conv2d\S*\+max_pooling2d\S*( \[.+?\])?\s+16x16x32\s", text,
                     re.M)                                                  # numba: fused
    assert text.count("images/s") >= 2


def test_bench_warns_when_other_processes_were_busy(monkeypatch, capsys):
    """The machine's busy counter advances 5 CPU-s more than this process at every read
    (made up, so the outcome does not depend on the machine the test runs on)."""
    from minicnn import machine
    own = machine.own_cpu_seconds
    reads = iter(range(1, 1000))
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: own() + 5.0 * next(reads))
    assert cli.main(["bench", "--batch-size", "2", "--repeats", "1", "--warmup", "1",
                     "--backend", "numpy"]) == 0
    text = capsys.readouterr().out
    warning = (r"^WARNING: other processes kept [\d.]+ of the \d+ CPUs busy during the "
               r"measurement \(/proc/stat\): these times are not reliable")
    roof, rest = text.split("Seed model, backend numpy")
    assert re.search(r"^Load: other processes kept [\d.]+ CPUs busy while the roof", roof, re.M)
    assert re.search(warning, roof, re.M), text                  # under the roof's line
    whole = rest.split("over the whole run")[1]
    assert re.search(warning, whole, re.M), text                 # and at the end
    assert re.search(r"^\d+ warning\(s\): the machine was not quiet, do not quote these "
                     r"numbers$", whole, re.M), text


def test_bench_quiet_machine_prints_no_warning(monkeypatch, capsys):
    from minicnn import machine
    own = machine.own_cpu_seconds
    monkeypatch.setattr(machine, "machine_busy_seconds", lambda: own())   # nobody else ran
    def gemm_times(threads, *args):               # a roof that doubles with two threads
        time.sleep(0.3)                            # long enough for /proc/stat's ticks
        return [0.01 / threads] * 5

    monkeypatch.setattr(cli, "_gemm_times", gemm_times)
    assert cli.main(["bench", "--batch-size", "2", "--repeats", "1", "--warmup", "1",
                     "--backend", "numpy", "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert "WARNING" not in text and "warning(s)" not in text, text
    assert re.search(r"^Load: other processes kept 0.00 CPUs busy while the roof", text, re.M)


def test_bench_rejects_unknown_backend(capsys):
    assert cli.main(["bench", "--backend", "numba,cuda"]) == 2
    assert "unknown backend 'cuda'" in capsys.readouterr().err


def test_train_resnet_model_recipe_and_resume(tmp_path, capsys):
    out = tmp_path / "resnet"
    args = ["--model", "resnet", "--dataset", "shapes", "--n-train", "120", "--n-test", "24",
            "--batch-size", "32", "--label-smoothing", "0.1"]
    assert cli.main(["train", *args, "--epochs", "1", "--out", str(out)]) == 0
    model = models.load_model(out / "last.npz")
    assert model.name == "resnet_cifar" and model.count_params() == 309_994
    assert type(model.optimizer).__name__ == "AdamW" and model.optimizer.schedule is not None
    assert model.loss.label_smoothing == 0.1
    assert cli.main(["train", "--resume", str(out / "last.npz"), "--epochs", "2"]) == 0
    assert len(load_history(out)["loss"]) == 2
    code = cli.main(["train", "--resume", str(out / "last.npz"), "--model", "seed",
                     "--epochs", "3"])
    assert code == 2 and "model" in capsys.readouterr().err
