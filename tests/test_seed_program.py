"""The seed program (Keras's CIFAR-10 tutorial) on minicnn, with only its imports changed.

Default runs use the generated ``shapes`` data set in CIFAR-10's format (no files, a few
hundred images); the test on the real CIFAR-10 subset is marked slow and runs only when
selected (``pytest -m slow``) or with ``MINICNN_RUN_SLOW=1``, and when the shared data exists.
"""
from __future__ import annotations

import ast
import importlib.util
import os
import types
from pathlib import Path

import numpy as np
import pytest

from minicnn import datasets, layers, models
from minicnn.utils import set_random_seed, to_categorical

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "seed_tutorial.py"
CIFAR = ROOT.parent / "shared" / "datasets" / "cifar-10-python.tar.gz"
SEED_PARAMS = [("Conv2D", "(None, 32, 32, 32)", "896"),
               ("MaxPooling2D", "(None, 16, 16, 32)", "0"),
               ("Conv2D", "(None, 16, 16, 64)", "18,496"),
               ("MaxPooling2D", "(None, 8, 8, 64)", "0"),
               ("Conv2D", "(None, 8, 8, 64)", "36,928"),
               ("Flatten", "(None, 4096)", "0"),
               ("Dense", "(None, 64)", "262,208"),
               ("Dense", "(None, 10)", "650")]


def load_example():
    spec = importlib.util.spec_from_file_location("seed_tutorial", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def seed_model():
    """The seed's model, verbatim."""
    return models.Sequential([
        layers.Conv2D(32, (3, 3), activation='relu', padding='same', input_shape=(32, 32, 3)),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
        layers.Flatten(),
        layers.Dense(64, activation='relu'),
        layers.Dense(10, activation='softmax')])


def test_seed_model_summary_shows_319178_parameters():
    model = seed_model()
    lines = []
    model.summary(print_fn=lines.append)
    rows = [l for l in lines if "(None," in l]
    assert len(rows) == len(SEED_PARAMS)
    for row, (kind, shape, params) in zip(rows, SEED_PARAMS):
        assert f"({kind})" in row and shape in row and row.split()[-1] == params, row
    assert "Total params: 319,178" in lines
    assert "Trainable params: 319,178" in lines and "Non-trainable params: 0" in lines
    assert model.count_params() == 319_178


def test_seed_model_trains_a_few_steps():
    set_random_seed(0)
    model = seed_model()
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    (x, y), _ = datasets.shapes.load_data(n_train=32, n_test=0, seed=1)
    x, y = x / 255.0, to_categorical(y, 10)
    losses = [model.train_on_batch(x, y)[0] for _ in range(4)]
    assert losses[-1] < losses[0]
    loss, acc = model.evaluate(x, y, verbose=0)
    assert np.isfinite(loss) and 0 <= acc <= 1


def test_example_keeps_the_seed_program_with_only_its_imports_changed():
    text = EXAMPLE.read_text()
    assert "from minicnn import datasets, layers, models" in text
    tree = ast.parse(text)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not any(m.split(".")[0] in ("tensorflow", "keras") for m in imported), imported
    utils = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
             and n.module == "minicnn.utils" for a in n.names}
    assert "to_categorical" in utils
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert "plt.show" not in calls and "plt.savefig" in calls
    assert 'matplotlib.use("Agg")' in text
    for line in ("x_train, x_test = x_train / 255.0, x_test / 255.0",
                 "model.compile(optimizer='adam', loss='categorical_crossentropy', "
                 "metrics=['accuracy'])",
                 "test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)",
                 "history.history['accuracy']", "history.history['val_accuracy']"):
        assert line in text, line
    example = load_example()
    args = example.parse_args([])
    assert (args.epochs, args.data, args.seed) == (15, None, None) and args.out.endswith(".png")


def test_seed_program_runs_end_to_end_on_shapes(tmp_path, monkeypatch, capsys):
    """The example's main(): data -> summary -> fit(verbose=2) -> evaluate -> PNG."""
    example = load_example()
    calls = []

    def load_data(path=None):
        calls.append(path)
        return datasets.shapes.load_data(n_train=160, n_test=48, seed=2)
    fake = types.SimpleNamespace(cifar10=types.SimpleNamespace(load_data=load_data))
    monkeypatch.setattr(example, "datasets", fake)
    out = tmp_path / "acc.png"
    set_random_seed(0)
    test_loss, test_acc = example.main(["--data", "somewhere.tar.gz", "--epochs", "2",
                                        "--out", str(out)])
    assert calls == ["somewhere.tar.gz"]
    assert np.isfinite(test_loss) and 0 <= test_acc <= 1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = capsys.readouterr().out
    assert "Total params: 319,178" in text
    assert text.count("ms/step") == 2 and "Epoch 2/2" in text and "val_accuracy" in text
    # validation_split=0.2 of 160 images: 128 train -> 2 steps of 64
    assert text.count("2/2 - ") == 2
    assert f"test accuracy: {test_acc:.4f}" in text


def _slow_selected(config):
    return os.environ.get("MINICNN_RUN_SLOW") == "1" or "slow" in (config.getoption("-m") or "")


@pytest.mark.slow
def test_seed_program_one_epoch_on_the_real_cifar10_subset(tmp_path, request):
    if not _slow_selected(request.config):
        pytest.skip("slow: run with -m slow or MINICNN_RUN_SLOW=1")
    if not CIFAR.exists():
        pytest.skip(f"no shared CIFAR-10 subset at {CIFAR}")
    example = load_example()
    set_random_seed(0)
    test_loss, test_acc = example.main(["--data", str(CIFAR), "--epochs", "1",
                                        "--out", str(tmp_path / "acc.png")])
    assert np.isfinite(test_loss)
    assert test_acc > 0.18            # chance is 0.10; one epoch of Keras gives ~0.25-0.30
