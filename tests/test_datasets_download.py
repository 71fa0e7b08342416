"""Downloads against a local HTTP server on 127.0.0.1: good file, wrong checksum, cut connections.

No test reaches the internet: ``isolate`` points every official URL at a closed local port, and each
test serves its files from :class:`datasets_helpers.FileServer`.
"""
from __future__ import annotations

import errno
import io
import socket
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from minicnn.datasets import (DatasetNotFoundError, DownloadError, _download, cifar10, cifar100,
                              fashion_mnist, mnist)
from minicnn.datasets._download import FileSpec, candidate_urls, fetch, join_url, verify_file

try:
    from . import datasets_helpers as h
except ImportError:
    import datasets_helpers as h

NAME = "cifar-10-python.tar.gz"


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    return h.isolate(monkeypatch, tmp_path)


@pytest.fixture
def server():
    srv = h.FileServer()
    yield srv
    srv.close()


@pytest.fixture
def batches():
    return h.cifar10_batches(n_per_batch=3, n_test=2, seed=7)


@pytest.fixture
def archive(tmp_path, batches):
    """Bytes of a small official-format CIFAR-10 archive."""
    return h.write_cifar_archive(tmp_path / "src" / NAME, batches).read_bytes()


def serve_cifar(server, monkeypatch, data, *, url_base=None, **overrides):
    """Serve ``data`` as the CIFAR-10 archive and make the spec expect it (md5 and size)."""
    server.files[NAME] = data
    spec = h.local_spec(NAME, data, url_base or server.base, **overrides)
    monkeypatch.setitem(cifar10.FILES, "archive", spec)
    return spec


def assert_loaded(result, batches):
    (x_train, y_train), (x_test, y_test) = result
    ex, ey = h.expected_cifar(batches, h.CIFAR10_TRAIN)
    np.testing.assert_array_equal(x_train, ex)
    np.testing.assert_array_equal(y_train, ey)
    ex, ey = h.expected_cifar(batches, ("test_batch",))
    np.testing.assert_array_equal(x_test, ex)


# ----------------------------------------------------------------------------------------------
# CIFAR-10 end to end
def test_download_good_file_then_never_again(server, monkeypatch, cache, archive, batches, capsys):
    serve_cifar(server, monkeypatch, archive)
    assert_loaded(cifar10.load_data(), batches)
    assert server.paths_requested() == [NAME]
    assert h.listing(cache) == [NAME]                    # the archive, and no temporary file
    assert (cache / NAME).read_bytes() == archive
    err = capsys.readouterr().err
    assert "downloading http://127.0.0.1" in err and "done" in err
    assert len(err.splitlines()) <= 6                     # not a tty: a few lines at most
    # The second call finds the cached, verified archive: no new request, no output.
    assert_loaded(cifar10.load_data(), batches)
    assert server.paths_requested() == [NAME]
    assert capsys.readouterr().err == ""


def test_wrong_checksum_leaves_nothing(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive, md5="0" * 32)
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data()
    message = str(info.value)
    assert "checksum mismatch" in message and "expected 00000000" in message
    assert h.listing(cache) == []
    assert server.paths_requested() == [NAME]             # a bad checksum is not retried


def test_corrupted_bytes_of_the_right_size_are_caught(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive)
    corrupted = bytearray(archive)
    corrupted[len(corrupted) // 2] ^= 0x01
    server.files[NAME] = bytes(corrupted)
    with pytest.raises(DatasetNotFoundError, match="checksum mismatch"):
        cifar10.load_data()
    assert h.listing(cache) == []


def test_wrong_size_announced_by_the_server(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive, size=len(archive) + 10)
    with pytest.raises(DatasetNotFoundError, match="announces"):
        cifar10.load_data()
    assert h.listing(cache) == []


def test_connection_cut_every_time(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive)
    server.cut = 100
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data()
    message = str(info.value)
    assert f"connection closed after {len(archive) // 2:,} of {len(archive):,} bytes" in message
    assert "gave up after 3 attempts" in message          # DEFAULT_RETRIES = 2 in these tests
    assert len(server.requests) == 3
    assert h.listing(cache) == []                         # no partial file that looks valid


def test_connection_cut_once_then_restart(server, monkeypatch, cache, archive, batches):
    serve_cifar(server, monkeypatch, archive)
    server.cut = 1                                         # this server ignores Range
    assert_loaded(cifar10.load_data(), batches)
    assert [r for _, r in server.requests] == [None, f"bytes={len(archive) // 2}-"]
    assert h.listing(cache) == [NAME] and (cache / NAME).read_bytes() == archive


def test_connection_cut_once_then_resume_with_range(server, monkeypatch, cache, archive, batches):
    serve_cifar(server, monkeypatch, archive)
    server.cut = 1
    server.ranges = True
    assert_loaded(cifar10.load_data(), batches)
    assert [r for _, r in server.requests] == [None, f"bytes={len(archive) // 2}-"]
    assert (cache / NAME).read_bytes() == archive


def test_interrupted_download_leaves_nothing(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive)

    def interrupt(self, done):
        raise KeyboardInterrupt

    monkeypatch.setattr(_download.Progress, "update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cifar10.load_data()
    assert h.listing(cache) == []


def test_mirror_argument_is_tried_first(server, monkeypatch, archive, batches):
    serve_cifar(server, monkeypatch, archive, url_base=h.DEAD_URL)  # official URL unreachable
    assert_loaded(cifar10.load_data(mirror=server.base), batches)
    assert server.paths_requested() == [NAME]


def test_full_url_as_mirror(server, monkeypatch, archive, batches):
    serve_cifar(server, monkeypatch, archive, url_base=h.DEAD_URL)
    assert_loaded(cifar10.load_data(mirror=[server.url(NAME)]), batches)


@pytest.mark.parametrize("var", ["MINICNN_CIFAR10_URL", "MINICNN_DATASETS_MIRROR"])
def test_mirror_environment_variables(server, monkeypatch, archive, batches, var):
    serve_cifar(server, monkeypatch, archive, url_base=h.DEAD_URL)
    monkeypatch.setenv(var, server.base)
    assert_loaded(cifar10.load_data(), batches)


def test_broken_mirror_falls_back_to_the_official_url(server, monkeypatch, archive, batches):
    serve_cifar(server, monkeypatch, archive)
    assert_loaded(cifar10.load_data(mirror=server.base + "missing/"), batches)
    assert server.paths_requested() == ["missing/" + NAME, NAME]   # the 404 is not retried


def test_every_url_failing_is_reported(server, monkeypatch, cache, archive):
    serve_cifar(server, monkeypatch, archive, url_base=server.base + "gone/")
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data(mirror=server.base + "also-gone/")
    message = str(info.value)
    assert f"download {server.base}also-gone/{NAME}: HTTP 404" in message
    assert f"download {server.base}gone/{NAME}: HTTP 404" in message
    assert h.listing(cache) == []


def test_file_url_mirror(tmp_path, monkeypatch, archive, batches):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(archive)
    monkeypatch.setitem(cifar10.FILES, "archive", h.local_spec(NAME, archive))
    assert_loaded(cifar10.load_data(mirror=(tmp_path / "mirror").as_uri()), batches)


def test_download_disabled(server, monkeypatch, archive):
    serve_cifar(server, monkeypatch, archive)
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        cifar10.load_data(download=False)
    monkeypatch.setenv("MINICNN_OFFLINE", "yes")
    with pytest.raises(DatasetNotFoundError, match="MINICNN_OFFLINE"):
        cifar10.load_data()
    assert server.requests == []


def test_cifar100_download(server, monkeypatch, tmp_path, cache):
    c100 = h.cifar100_batches(seed=9)
    data = h.write_cifar_archive(tmp_path / "c100.tar.gz", c100, folder="cifar-100-python",
                                 meta_name="meta", meta=h.META100).read_bytes()
    server.files["cifar-100-python.tar.gz"] = data
    monkeypatch.setitem(cifar100.FILES, "archive",
                        h.local_spec("cifar-100-python.tar.gz", data, server.base))
    (x_train, y_train), _ = cifar100.load_data("coarse")
    np.testing.assert_array_equal(y_train[:, 0], c100["train"][b"coarse_labels"])
    assert h.listing(cache) == ["cifar-100-python.tar.gz"]


# ----------------------------------------------------------------------------------------------
# MNIST family
def serve_mnist(server, monkeypatch, mod, arrays, base=None):
    files = h.mnist_file_bytes(arrays)
    server.files.update(files)
    for key, name in h.MNIST_NAMES.items():
        monkeypatch.setitem(mod.FILES, key, h.local_spec(name, files[name], base or server.base))
    return files


@pytest.mark.parametrize("mod, sub", [(mnist, "mnist"), (fashion_mnist, "fashion-mnist")])
def test_mnist_download_then_cached(server, monkeypatch, cache, mod, sub):
    arrays = h.mnist_arrays(seed=4)
    serve_mnist(server, monkeypatch, mod, arrays)
    (x_train, y_train), (x_test, y_test) = mod.load_data()
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    np.testing.assert_array_equal(y_test, arrays["test_labels"])
    assert sorted(server.paths_requested()) == sorted(h.MNIST_NAMES.values())
    assert h.listing(cache) == [sub] + sorted(f"{sub}/{n}" for n in h.MNIST_NAMES.values())
    mod.load_data()
    assert len(server.requests) == 4


def test_mnist_partial_cache_downloads_only_the_missing_files(server, monkeypatch, cache):
    arrays = h.mnist_arrays(seed=5)
    files = serve_mnist(server, monkeypatch, mnist, arrays)
    (cache / "mnist").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (cache / "mnist" / name).write_bytes(files[name])
    (x_train, _), _ = mnist.load_data()
    np.testing.assert_array_equal(x_train, arrays["train_images"])
    assert sorted(server.paths_requested()) == ["t10k-images-idx3-ubyte.gz",
                                                "train-labels-idx1-ubyte.gz"]


def test_mnist_wrong_checksum_on_one_file(server, monkeypatch, cache):
    files = serve_mnist(server, monkeypatch, fashion_mnist, h.mnist_arrays(seed=6))
    name = "train-labels-idx1-ubyte.gz"
    monkeypatch.setitem(fashion_mnist.FILES, "train_labels",
                        h.local_spec(name, files[name], server.base, md5="f" * 32))
    with pytest.raises(DatasetNotFoundError, match=f"{name}: checksum mismatch"):
        fashion_mnist.load_data()
    assert name not in h.listing(cache / "fashion-mnist")
    assert not any(".part" in p for p in h.listing(cache))


def test_fashion_mirror_env_var(server, monkeypatch):
    arrays = h.mnist_arrays(seed=8)
    serve_mnist(server, monkeypatch, fashion_mnist, arrays, base=h.DEAD_URL)
    monkeypatch.setenv("MINICNN_FASHION_MNIST_URL", server.base)
    (_, y_train), _ = fashion_mnist.load_data()
    np.testing.assert_array_equal(y_train, arrays["train_labels"])


# ----------------------------------------------------------------------------------------------
# fetch() itself
def test_fetch_returns_dest_and_verify_file(server, tmp_path):
    data = b"payload" * 1000
    server.files["f.bin"] = data
    dest = tmp_path / "deep" / "dir" / "f.bin"
    assert fetch(server.url("f.bin"), dest, md5=h.md5(data), size=len(data), progress=False) == dest
    assert dest.read_bytes() == data
    verify_file(dest, md5=h.md5(data), size=len(data))
    with pytest.raises(_download.ChecksumError, match="md5"):
        verify_file(dest, md5="1" * 32)
    with pytest.raises(_download.ChecksumError, match="bytes, expected"):
        verify_file(dest, size=3)


def test_failed_fetch_keeps_an_existing_destination(server, tmp_path):
    server.files["f.bin"] = b"new contents"
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"old contents")
    with pytest.raises(DownloadError) as info:
        fetch(server.url("f.bin"), dest, md5="0" * 32, progress=False)
    assert dest.read_bytes() == b"old contents"
    assert h.listing(tmp_path) == ["f.bin"]
    assert info.value.failures[0][0] == server.url("f.bin")


def test_fetch_timeout(server, tmp_path):
    server.files["slow"] = b"x"
    server.stall = 3.0
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        fetch(server.url("slow"), tmp_path / "slow", timeout=0.3, retries=1, backoff=0,
              progress=False)
    assert time.monotonic() - start < 2.5
    assert len(server.requests) == 2
    assert h.listing(tmp_path) == []


def test_fetch_argument_checks(tmp_path):
    with pytest.raises(ValueError, match="retries must be >= 0, received -1"):
        fetch(h.DEAD_URL, tmp_path / "x", retries=-1)
    with pytest.raises(ValueError, match="timeout must be > 0, received 0"):
        fetch(h.DEAD_URL, tmp_path / "x", timeout=0)
    with pytest.raises(DownloadError, match="invalid URL|unknown url type"):
        fetch("not a url", tmp_path / "x", progress=False)


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_in_place_on_a_tty(server, tmp_path, monkeypatch):
    data = bytes(3_000_000)
    server.files["big"] = data
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    fetch(server.url("big"), tmp_path / "big", size=len(data))
    out = tty.getvalue()
    assert "\r" in out and "100.0%" in out and "3.0 MB" in out
    assert out.count("\n") <= 2


def test_progress_bar_in_a_log_is_a_few_lines(server, tmp_path, capsys):
    data = bytes(5_000_000)
    server.files["big"] = data
    fetch(server.url("big"), tmp_path / "big", size=len(data))
    err = capsys.readouterr().err
    assert "\r" not in err
    assert 2 <= len(err.splitlines()) <= 6


def test_progress_can_be_silenced(server, tmp_path, capsys):
    server.files["f"] = b"abc"
    fetch(server.url("f"), tmp_path / "f", progress=False)
    assert capsys.readouterr().err == ""


def test_candidate_urls_order(monkeypatch):
    spec = FileSpec("f.gz", "https://official.example/data/f.gz", mirrors=("https://m2.example/",))
    monkeypatch.setenv("MINICNN_X_URL", "https://env.example/x")
    monkeypatch.setenv("MINICNN_DATASETS_MIRROR", "https://all.example/base/")
    assert candidate_urls(spec, "https://arg.example", "MINICNN_X_URL") == [
        "https://arg.example/f.gz", "https://env.example/x/f.gz", "https://all.example/base/f.gz",
        "https://official.example/data/f.gz", "https://m2.example/f.gz"]
    assert candidate_urls(spec, ["https://official.example/data/f.gz"]) == [
        "https://official.example/data/f.gz", "https://all.example/base/f.gz",
        "https://m2.example/f.gz"]
    assert join_url("http://h/a/f.gz", "f.gz") == "http://h/a/f.gz"
    assert join_url("http://h/a", "f.gz") == "http://h/a/f.gz"


def test_path_object_as_mirror(tmp_path, monkeypatch, archive, batches):
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / NAME).write_bytes(archive)
    monkeypatch.setitem(cifar10.FILES, "archive", h.local_spec(NAME, archive))
    assert_loaded(cifar10.load_data(mirror=tmp_path / "mirror"), batches)


def test_unwritable_cache_is_reported(server, monkeypatch, tmp_path, archive):
    serve_cifar(server, monkeypatch, archive)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MINICNN_HOME", str(blocker))
    with pytest.raises(DatasetNotFoundError, match="cannot create the folder"):
        cifar10.load_data()
    assert server.requests == []


def test_mnist_partial_cache_completed_even_with_a_system_copy(server, monkeypatch, cache, tmp_path):
    # Files already in the cache are kept; the system copy is complete, so it is used instead of
    # downloading, and nothing is fetched.
    arrays = h.mnist_arrays(seed=12)
    files = serve_mnist(server, monkeypatch, mnist, arrays)
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "train-images-idx3-ubyte.gz").write_bytes(files["train-images-idx3-ubyte.gz"])
    system = h.write_mnist_folder(tmp_path / "system", arrays)
    monkeypatch.setattr(mnist, "SYSTEM_DIRS", (str(system),))
    (_, y_train), _ = mnist.load_data()
    np.testing.assert_array_equal(y_train, arrays["train_labels"])
    assert server.requests == []


@pytest.mark.parametrize("reason, expected", [
    (TimeoutError("timed out"), "no connection within 5 s"),
    (socket.gaierror(-3, "Temporary failure in name resolution"), "cannot resolve the host"),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), "network unreachable"),
])
def test_offline_failures_are_not_retried(monkeypatch, tmp_path, reason, expected):
    # What an offline or firewalled machine sees: fail at once instead of retrying for minutes.
    calls = []

    def fake_urlopen(request, timeout):
        calls.append(request.full_url)
        raise urllib.error.URLError(reason)

    monkeypatch.setattr(urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DownloadError, match=expected):
        fetch("https://example.invalid/f", tmp_path / "f", mirrors=["https://mirror.invalid/f"],
              progress=False)
    assert calls == ["https://example.invalid/f", "https://mirror.invalid/f"]
    assert h.listing(tmp_path) == []
