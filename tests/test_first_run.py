"""The first run: the compile notice on a cold Numba cache, an ETA without the compile, and
``minicnn compile``."""
from __future__ import annotations

import io

import pytest

import minicnn
from minicnn import cli, config, progress, train


def test_a_cold_cache_is_detected_in_an_empty_numba_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path))
    assert not config.kernels_cached()
    with minicnn.use_backend("numba"):
        notice = config.compile_notice()
    assert notice.startswith("compiling kernels for this CPU (first run only, ~")
    assert f"~{config.COLD_COMPILE_SECONDS} s" in notice
    with minicnn.use_backend("numpy"):
        assert config.compile_notice() is None          # nothing to compile there
    (tmp_path / "x" / "y").mkdir(parents=True)
    (tmp_path / "x" / "y" / "conv.conv2d_forward-19.py311.nbi").write_bytes(b"")
    assert config.kernels_cached()
    with minicnn.use_backend("numba"):
        assert config.compile_notice() is None


def test_minicnn_train_prints_the_notice_before_compiling(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "kernels_cached", lambda: False)
    out = io.StringIO()
    with minicnn.use_backend("numba"):
        train.train(dataset="shapes", epochs=1, n_train=64, n_test=32, out=str(tmp_path / "r"),
                    stream=out)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("compiling kernels for this CPU (first run only")
    monkeypatch.setattr(config, "kernels_cached", lambda: True)
    out = io.StringIO()
    train.train(dataset="shapes", epochs=1, n_train=64, n_test=32, out=str(tmp_path / "s"),
                stream=out)
    assert "compiling kernels" not in out.getvalue()


def test_the_eta_leaves_the_first_step_out():
    bar = progress.Progbar(11, verbose=0)
    bar.update(1, {})
    start = bar._after_first
    assert bar.eta(1, start + 100) is None              # nothing measured yet: no guess
    # the first step took 100 s (a compile); later ones 1 s each: 5 steps left, 5 s
    assert bar.eta(6, start + 5) == pytest.approx(5.0)


def test_minicnn_compile_warms_the_shipped_models(capsys):
    assert cli.main(["compile"]) == 0
    out = capsys.readouterr().out
    assert "seed:" in out and "resnet:" in out and "done in" in out
    assert config.kernels_cached() or "NUMBA_DISABLE_JIT" in str(config.os.environ)
