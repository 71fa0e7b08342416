"""``minicnn train`` never overwrites an earlier run by accident, and explains its epoch lines.

Without ``--out`` a run goes to ``runs/<dataset>``, or to the first of ``runs/<dataset>-2``, ``-3``,
... that holds no run; an ``--out`` that holds a run is refused unless ``--overwrite``; ``--resume``
writes into the checkpoint's folder. Runs are tiny (generated shapes, 1 epoch); the earlier runs
the rule must protect are mostly planted files, so only the runs under test train.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re

import pytest

from minicnn import cli
from minicnn import train as trainer

TINY = ["--dataset", "shapes", "--n-train", "60", "--n-test", "20", "--batch-size", "32",
        "--epochs", "1"]
EARLIER = b"an earlier run's file\n"


def run(capsys, *extra):
    code = cli.main(["train", *TINY, *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plant_run(folder, names=("last.npz", "history.json")):
    """Files standing for an earlier run; returns {path: bytes} to check they survive."""
    folder.mkdir(parents=True, exist_ok=True)
    planted = {}
    for name in names:
        (folder / name).write_bytes(EARLIER)
        planted[folder / name] = EARLIER
    return planted


def assert_untouched(planted):
    for path, data in planted.items():
        assert path.read_bytes() == data, f"{path} was overwritten"


def holds_new_run(folder):
    history = json.loads((folder / "history.json").read_text())
    return len(history["loss"]) == 1 and all((folder / n).is_file() for n in trainer.RUN_FILES)


# ----------------------------------------------------------------------------- default folder
def test_default_out_takes_the_first_free_number(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    code, out, err = run(capsys)
    assert code == 0, err
    assert holds_new_run(runs / "shapes") and "holds an earlier run" not in out
    first = (runs / "shapes" / "last.npz").read_bytes()

    planted = plant_run(runs / "shapes-3")     # a run in -3: -2 is the first free number
    (runs / "shapes-4").mkdir()                # an empty folder holds no run: it is free
    code, out, err = run(capsys)
    assert code == 0, err
    assert holds_new_run(runs / "shapes-2")
    assert f"{os.path.join('runs', 'shapes')} holds an earlier run: writing to " \
           f"{os.path.join('runs', 'shapes-2')}" in out
    assert (runs / "shapes" / "last.npz").read_bytes() == first
    assert_untouched(planted)

    second = (runs / "shapes-2" / "last.npz").read_bytes()
    code, out, err = run(capsys)
    assert code == 0, err
    assert holds_new_run(runs / "shapes-4")
    assert f"writing to {os.path.join('runs', 'shapes-4')}" in out
    assert (runs / "shapes" / "last.npz").read_bytes() == first
    assert (runs / "shapes-2" / "last.npz").read_bytes() == second
    assert_untouched(planted)
    assert sorted(p.name for p in runs.iterdir()) == ["shapes", "shapes-2", "shapes-3", "shapes-4"]


@pytest.mark.parametrize("name", trainer.RUN_FILES)
def test_any_file_of_a_run_makes_the_default_folder_taken(tmp_path, name):
    base = tmp_path / "runs" / "shapes"
    assert trainer.free_run_folder(str(base)) == str(base)
    plant_run(base, (name,))
    assert trainer.free_run_folder(str(base)) == f"{base}-2"


# ----------------------------------------------------------------------------- --out DIR
def test_out_holding_a_run_is_refused_and_left_alone(tmp_path, capsys):
    folder = tmp_path / "my run"
    planted = plant_run(folder, ("best.npz", "last.npz", "history.json"))
    code, out, err = run(capsys, "--out", str(folder))
    assert code == 2
    assert str(folder) in err and "already holds a run" in err and "--overwrite" in err
    assert "best.npz, last.npz, history.json" in err
    assert "--resume" in err                    # it has a last.npz: continuing is an option
    assert "Epoch" not in out
    assert_untouched(planted)
    assert sorted(p.name for p in folder.iterdir()) == ["best.npz", "history.json", "last.npz"]


def test_out_holding_a_real_run_is_refused_a_second_time(tmp_path, capsys):
    folder = tmp_path / "run"
    code, _, err = run(capsys, "--out", str(folder))
    assert code == 0, err
    before = {p: p.read_bytes() for p in folder.iterdir()}
    code, out, err = run(capsys, "--out", str(folder))
    assert code == 2 and str(folder) in err and "Epoch" not in out
    assert_untouched(before)


def test_an_empty_or_missing_out_is_used(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a run file")
    code, _, err = run(capsys, "--out", str(tmp_path / "empty"))
    assert code == 0, err
    assert holds_new_run(tmp_path / "empty")
    assert (tmp_path / "empty" / "notes.txt").read_text() == "not a run file"


def test_overwrite_replaces_the_run_in_out(tmp_path, capsys):
    folder = tmp_path / "run"
    plant_run(folder, trainer.RUN_FILES)
    (folder / "notes.txt").write_text("mine")
    code, out, err = run(capsys, "--out", str(folder), "--overwrite")
    assert code == 0, err
    assert holds_new_run(folder)
    assert all((folder / n).read_bytes() != EARLIER for n in trainer.RUN_FILES)
    assert (folder / "notes.txt").read_text() == "mine"   # only the run's own files go


def test_overwrite_deletes_the_earlier_files_only_once_the_run_starts(tmp_path, capsys,
                                                                      monkeypatch):
    folder = tmp_path / "run"
    planted = plant_run(folder, trainer.RUN_FILES)
    # A bad setting is found before anything is deleted.
    code, _, err = run(capsys, "--out", str(folder), "--overwrite", "--data", str(tmp_path))
    assert code == 2 and "--data does not apply" in err
    assert_untouched(planted)

    # Once the data is loaded and the run begins, no file of the earlier run is left over (one
    # the new run would not rewrite, were it to stop early, would pass for the new run's).
    def stop(*args, **kwargs):
        raise RuntimeError("stopped before training")

    monkeypatch.setattr(trainer, "build_model", stop)
    with pytest.raises(RuntimeError, match="stopped before training"):
        trainer.train(dataset="shapes", n_train=60, n_test=20, epochs=1, out=str(folder),
                      overwrite=True, stream=io.StringIO())
    assert list(folder.iterdir()) == []


# ----------------------------------------------------------------------------- --resume
def test_resume_writes_into_the_checkpoint_folder_and_refuses_another_run(tmp_path, capsys):
    folder = tmp_path / "run"
    code, _, err = run(capsys, "--out", str(folder))
    assert code == 0, err
    code = cli.main(["train", "--resume", str(folder / "last.npz"), "--epochs", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads((folder / "last.json").read_text())["epochs_done"] == 2
    assert not (tmp_path / "runs").exists()

    other = tmp_path / "other"
    planted = plant_run(other)
    code = cli.main(["train", "--resume", str(folder / "last.npz"), "--epochs", "3",
                     "--out", str(other)])
    captured = capsys.readouterr()
    assert code == 2 and str(other) in captured.err and "--overwrite" in captured.err
    assert_untouched(planted)
    assert json.loads((folder / "last.json").read_text())["epochs_done"] == 2


def test_overwrite_option_is_documented():
    parser = trainer.add_arguments(argparse.ArgumentParser())
    assert "--overwrite" in parser.format_help()
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md")).read()
    section = readme.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert "--overwrite" in section and re.search(r"runs/<dataset>-2", section)


# ----------------------------------------------------------------------------- the '*' legend
EPOCH = re.compile(r"^Epoch (\d+)/\d+ - .* - val_accuracy: ([\d.]+)( \*)?$")
LEGEND = "* = new best val_accuracy, saved to best.npz"


def test_epoch_lines_star_is_explained_once_before_the_first_epoch(tmp_path, capsys):
    folder = tmp_path / "run"
    code, out, err = run(capsys, "--out", str(folder), "--epochs", "3")
    assert code == 0, err
    lines = out.splitlines()
    epochs = [i for i, line in enumerate(lines) if EPOCH.match(line)]
    assert len(epochs) == 3
    assert lines.count(LEGEND) == 1
    assert lines.index(LEGEND) < epochs[0]
    # The legend tells the truth: '*' marks the epochs whose val_accuracy beat every earlier one.
    history = json.loads((folder / "history.json").read_text())
    starred = [EPOCH.match(lines[i]).group(3) is not None for i in epochs]
    val = history["val_accuracy"]
    assert starred == [k == 0 or val[k] > max(val[:k]) for k in range(3)]
    assert history["best_epoch"] == max(k + 1 for k in range(3) if starred[k])

    # A resumed run prints its own epoch lines, so it explains them again, once.
    code = cli.main(["train", "--resume", str(folder / "last.npz"), "--epochs", "4"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines.count(LEGEND) == 1
    assert lines.index(LEGEND) < next(i for i, line in enumerate(lines) if EPOCH.match(line))


# ----------------------------------------------------------------------------- runs started at once
def test_runs_claiming_at_once_get_distinct_folders(tmp_path):
    """Many runs looking for a folder at the same moment: each gets its own, none shares one."""
    import threading

    base = tmp_path / "runs" / "shapes"
    plant_run(tmp_path / "runs" / "shapes-2")             # a finished run: never handed out
    (tmp_path / "runs" / "shapes-3").mkdir()              # an empty folder: free, once
    n = 12
    start = threading.Barrier(n)
    got = [None] * n

    def claim(i):
        start.wait()
        got[i] = trainer.claim_run_folder(str(base))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == n, sorted(got)
    expected = {str(base)} | {f"{base}-{k}" for k in range(3, n + 2)}
    assert set(got) == expected
    for folder in got:             # each holds its claim until its run has written its files
        assert os.listdir(folder) == [trainer.CLAIM_FILE]
    assert trainer.free_run_folder(str(base)) == f"{base}-{n + 2}"


def test_a_claimed_folder_is_released_when_the_run_ends(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    taken = tmp_path / "runs" / "shapes"
    taken.mkdir(parents=True)
    (taken / trainer.CLAIM_FILE).write_bytes(b"")        # a run that has just started there
    code, out, err = run(capsys)
    assert code == 0, err
    assert holds_new_run(tmp_path / "runs" / "shapes-2")
    assert not (tmp_path / "runs" / "shapes-2" / trainer.CLAIM_FILE).exists()
    assert os.listdir(taken) == [trainer.CLAIM_FILE]      # the other run's folder is left alone


# ----------------------------------------------------------------------------- --epochs 0
def test_epochs_0_tests_the_untrained_model_without_curves(tmp_path, capsys):
    folder = tmp_path / "run0"
    code, out, err = run(capsys, "--out", str(folder), "--epochs", "0")
    assert code == 0, err
    assert "No epoch was trained (--epochs 0): no curves.png" in out
    assert re.search(r"Test accuracy: [\d.]+ .*final model", out)
    assert sorted(os.listdir(folder)) == ["confusion_matrix.png", "history.json",
                                          "misclassified.png"]
    assert re.search(r"^Wrote history.json, confusion_matrix.png, misclassified.png to ", out,
                     flags=re.M)
    history = json.loads((folder / "history.json").read_text())
    assert history["best_epoch"] is None and "loss" not in history
