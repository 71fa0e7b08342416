"""CIFAR-10 / CIFAR-100: loading from every place, validation of each batch, the offline error."""
from __future__ import annotations

import gzip
import os
import pickle

import numpy as np
import pytest

from minicnn import datasets
from minicnn.datasets import (ChecksumError, DatasetFormatError, DatasetNotFoundError, cifar10,
                              cifar100)

try:
    from . import datasets_helpers as h
except ImportError:
    import datasets_helpers as h


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    return h.isolate(monkeypatch, tmp_path)


@pytest.fixture
def batches():
    return h.cifar10_batches(n_per_batch=4, n_test=3, seed=1)


def assert_matches(result, batches):
    (x_train, y_train), (x_test, y_test) = result
    ex_train, ey_train = h.expected_cifar(batches, h.CIFAR10_TRAIN)
    ex_test, ey_test = h.expected_cifar(batches, ("test_batch",))
    pairs = ((x_train, ex_train), (y_train, ey_train), (x_test, ex_test), (y_test, ey_test))
    for got, want in pairs:
        assert got.dtype == np.uint8
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


# ----------------------------------------------------------------------------------------------
# Where the data is found
def test_shapes_dtypes_and_nhwc_transpose(tmp_path):
    batches = h.cifar10_batches(n_per_batch=2, n_test=1, seed=0)
    row = np.zeros(3072, np.uint8)
    # Channel-major rows: red plane, then green, then blue, each 32x32 row-major.
    row[0 * 1024 + 2 * 32 + 5] = 11    # red at (2, 5)
    row[1 * 1024 + 31 * 32 + 0] = 22   # green at (31, 0)
    row[2 * 1024 + 7 * 32 + 30] = 33   # blue at (7, 30)
    batches["data_batch_1"][b"data"][0] = row
    archive = h.write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(path=archive)
    assert x_train.shape == (10, 32, 32, 3) and y_train.shape == (10, 1)
    assert x_test.shape == (1, 32, 32, 3) and y_test.shape == (1, 1)
    assert x_train[0, 2, 5, 0] == 11 and x_train[0, 31, 0, 1] == 22 and x_train[0, 7, 30, 2] == 33
    assert np.count_nonzero(x_train[0]) == 3
    assert x_train.flags.c_contiguous


def test_archive_path(tmp_path, batches):
    archive = h.write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    assert_matches(cifar10.load_data(path=archive), batches)
    assert_matches(cifar10.load_data(path=str(archive)), batches)


def test_archive_with_any_name_and_filenames_key(tmp_path):
    batches = h.cifar10_batches(seed=3, filenames=True)
    archive = h.write_cifar_archive(tmp_path / "my-copy.tgz", batches)
    assert_matches(cifar10.load_data(archive), batches)


def test_extracted_folder_path(tmp_path, batches):
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
    assert_matches(cifar10.load_data(path=folder), batches)


def test_folder_holding_the_extracted_folder(tmp_path, batches):
    h.write_cifar_folder(tmp_path / "data" / "cifar-10-batches-py", batches)
    assert_matches(cifar10.load_data(path=tmp_path / "data"), batches)


def test_folder_holding_the_archive(tmp_path, batches):
    h.write_cifar_archive(tmp_path / "data" / "cifar-10-python.tar.gz", batches)
    assert_matches(cifar10.load_data(path=tmp_path / "data"), batches)


def test_batch_files_without_meta(tmp_path, batches):
    folder = h.write_cifar_folder(tmp_path / "renamed", batches, meta_name=None)
    assert_matches(cifar10.load_data(path=folder), batches)


def test_path_with_tilde(tmp_path, monkeypatch, batches):
    monkeypatch.setenv("HOME", str(tmp_path))
    h.write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", batches)
    assert_matches(cifar10.load_data(path="~/cifar-10-python.tar.gz"), batches)


@pytest.mark.parametrize("form", ["folder", "archive"])
def test_env_var_folder(tmp_path, monkeypatch, batches, form):
    shared = tmp_path / "shared"
    if form == "folder":
        h.write_cifar_folder(shared / "cifar-10-batches-py", batches)
    else:
        h.write_cifar_archive(shared / "cifar-10-python.tar.gz", batches)
    monkeypatch.setenv("MINICNN_DATASETS", str(shared))
    assert_matches(cifar10.load_data(), batches)


def test_env_var_with_several_folders(tmp_path, monkeypatch, batches):
    h.write_cifar_archive(tmp_path / "second" / "cifar-10-python.tar.gz", batches)
    monkeypatch.setenv("MINICNN_DATASETS",
                       os.pathsep.join([str(tmp_path / "missing"), str(tmp_path / "second")]))
    assert_matches(cifar10.load_data(), batches)


def test_cache_folder(cache, batches):
    h.write_cifar_folder(cache / "cifar-10-batches-py", batches)
    assert_matches(cifar10.load_data(), batches)


def test_cache_archive_with_the_expected_size(cache, monkeypatch, batches):
    archive = h.write_cifar_archive(cache / "cifar-10-python.tar.gz", batches)
    monkeypatch.setitem(cifar10.FILES, "archive",
                        h.local_spec("cifar-10-python.tar.gz", archive.read_bytes()))
    assert_matches(cifar10.load_data(), batches)


def test_cache_archive_with_a_wrong_size_is_reported(cache, batches):
    # The spec keeps the official size (170,498,071 bytes): a small file there is not the download.
    archive = h.write_cifar_archive(cache / "cifar-10-python.tar.gz", batches)
    with pytest.raises(ChecksumError) as info:
        cifar10.load_data()
    message = str(info.value)
    assert str(archive) in message and "170,498,071" in message and "Delete it" in message


def test_search_order_path_then_env_then_cache(tmp_path, monkeypatch, cache):
    first, second, third = (h.cifar10_batches(seed=s) for s in (10, 20, 30))
    h.write_cifar_folder(tmp_path / "p" / "cifar-10-batches-py", first)
    h.write_cifar_folder(tmp_path / "env" / "cifar-10-batches-py", second)
    h.write_cifar_folder(cache / "cifar-10-batches-py", third)
    monkeypatch.setenv("MINICNN_DATASETS", str(tmp_path / "env"))
    assert_matches(cifar10.load_data(path=tmp_path / "p"), first)
    assert_matches(cifar10.load_data(), second)
    monkeypatch.delenv("MINICNN_DATASETS")
    assert_matches(cifar10.load_data(), third)


def test_folder_preferred_over_archive_in_the_same_place(tmp_path):
    folder_batches, archive_batches = h.cifar10_batches(seed=1), h.cifar10_batches(seed=2)
    h.write_cifar_folder(tmp_path / "cifar-10-batches-py", folder_batches)
    h.write_cifar_archive(tmp_path / "cifar-10-python.tar.gz", archive_batches)
    assert_matches(cifar10.load_data(path=tmp_path), folder_batches)


def test_python3_pickles_with_str_keys_load(tmp_path, batches):
    folder = tmp_path / "py3"
    folder.mkdir()
    for name, batch in batches.items():
        py3 = {key.decode(): value for key, value in batch.items()}
        (folder / name).write_bytes(pickle.dumps(py3, protocol=4))
    assert_matches(cifar10.load_data(path=folder), batches)


# ----------------------------------------------------------------------------------------------
# Explicit paths that hold nothing
def test_missing_path_is_named_and_nothing_else_is_searched(tmp_path, cache, batches):
    h.write_cifar_folder(cache / "cifar-10-batches-py", batches)  # would be found without path=
    missing = tmp_path / "nope.tar.gz"
    with pytest.raises(DatasetNotFoundError, match="nope.tar.gz' does not exist"):
        cifar10.load_data(path=missing)


def test_path_folder_without_cifar(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data(path=tmp_path / "empty")
    assert "holds neither cifar-10-python.tar.gz" in str(info.value)
    assert isinstance(info.value, FileNotFoundError)


def test_path_of_wrong_type():
    with pytest.raises(TypeError, match=r"cifar10.load_data: path must be a str or path-like.*42"):
        cifar10.load_data(path=42)


# ----------------------------------------------------------------------------------------------
# Validation: every problem names its file
@pytest.mark.parametrize("form", ["folder", "archive"])
def test_missing_batch_is_named(tmp_path, batches, form):
    if form == "folder":
        folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
        (folder / "data_batch_3").unlink()
        path = folder
    else:
        path = h.write_cifar_archive(tmp_path / "c.tar.gz", batches, omit=("data_batch_3",))
    with pytest.raises(DatasetFormatError, match="lacks data_batch_3"):
        cifar10.load_data(path=path)


@pytest.mark.parametrize("cut", [0.5, 0.99])
def test_truncated_batch_file_is_named(tmp_path, batches, cut):
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
    data = (folder / "data_batch_4").read_bytes()
    (folder / "data_batch_4").write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(DatasetFormatError, match=r"data_batch_4' is truncated or corrupt"):
        cifar10.load_data(path=folder)


def test_truncated_batch_member_in_archive_is_named(tmp_path, batches):
    good = h.py2_dumps(batches["test_batch"])
    archive = h.write_cifar_archive(tmp_path / "c.tar.gz", batches, raw={"test_batch": good[:-40]})
    with pytest.raises(DatasetFormatError, match=r"member 'cifar-10-batches-py/test_batch'"):
        cifar10.load_data(path=archive)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_truncated_archive_is_named(tmp_path, batches, keep):
    archive = h.write_cifar_archive(tmp_path / "c.tar.gz", batches)
    data = archive.read_bytes()
    archive.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DatasetFormatError) as info:
        cifar10.load_data(path=archive)
    assert str(archive) in str(info.value)


def test_corrupt_archive_is_named(tmp_path):
    archive = tmp_path / "garbage.tar.gz"
    archive.write_bytes(gzip.compress(os.urandom(5000)))
    with pytest.raises(DatasetFormatError, match="garbage.tar.gz"):
        cifar10.load_data(path=archive)
    archive.write_bytes(b"not an archive at all")
    with pytest.raises(DatasetFormatError, match="garbage.tar.gz"):
        cifar10.load_data(path=archive)


@pytest.mark.parametrize("mutate, message", [
    (lambda b: b.update({b"data": b[b"data"][:, :3000]}), "rows of 3072 bytes"),
    (lambda b: b.update({b"data": b[b"data"].reshape(-1)}), "rows of 3072 bytes"),
    (lambda b: b.update({b"data": b[b"data"].astype(np.int16)}), "uint8 array"),
    (lambda b: b.update({b"data": b[b"data"].tolist()}), "uint8 array"),
    (lambda b: b.update({b"labels": b[b"labels"][:-1]}), "4 rows of data but 3 labels"),
    (lambda b: b.update({b"labels": [10] * 4}), r"must lie in \[0, 10\)"),
    (lambda b: b.update({b"labels": [-1] * 4}), r"must lie in \[0, 10\)"),
    (lambda b: b.update({b"labels": [[1]] * 4}), "flat list of integers"),
    (lambda b: b.pop(b"labels"), "no 'labels' entry"),
    (lambda b: b.pop(b"data"), "no 'data' entry"),
])
def test_malformed_batch_is_named(tmp_path, batches, mutate, message):
    mutate(batches["data_batch_2"])
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches)
    with pytest.raises(DatasetFormatError, match=message) as info:
        cifar10.load_data(path=folder)
    assert "data_batch_2" in str(info.value)


def test_batch_that_is_not_a_dict(tmp_path, batches):
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches,
                                  raw={"data_batch_5": h.py2_dumps([1, 2, 3])})
    with pytest.raises(DatasetFormatError, match="data_batch_5': expected a dict, found list"):
        cifar10.load_data(path=folder)


# ----------------------------------------------------------------------------------------------
# Nothing anywhere: the offline error
def test_offline_error_lists_every_place_and_how_to_provide(tmp_path, monkeypatch, cache):
    monkeypatch.setenv("MINICNN_DATASETS", str(tmp_path / "mine"))
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data(download=False)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert message.startswith("cifar10.load_data: could not find CIFAR-10")
    assert str(tmp_path / "mine") in message and "does not exist" in message
    assert str(cache) in message
    assert "download=False" in message
    for hint in ("path=", "$MINICNN_DATASETS", "shapes.load_data()"):
        assert hint in message
    assert len(info.value.tried) == 3


def test_offline_env_var_blocks_download(monkeypatch):
    monkeypatch.setenv("MINICNN_OFFLINE", "1")
    with pytest.raises(DatasetNotFoundError, match=r"MINICNN_OFFLINE is set"):
        cifar10.load_data()


def test_failed_download_is_in_the_error(cache):
    # The official URL points at a closed port on 127.0.0.1 (see isolate): the download fails.
    with pytest.raises(DatasetNotFoundError) as info:
        cifar10.load_data()
    message = str(info.value)
    assert "$MINICNN_DATASETS: not set" in message
    assert "download http://127.0.0.1:9/cifar-10-python.tar.gz" in message
    assert "Connection" in message or "refused" in message
    assert h.listing(cache) == []  # no partial file left behind
    assert isinstance(info.value.__cause__, datasets.DownloadError)


# ----------------------------------------------------------------------------------------------
# CIFAR-100
@pytest.fixture
def c100():
    return h.cifar100_batches(n_train=6, n_test=4, seed=5)


@pytest.mark.parametrize("mode", ["fine", "coarse"])
def test_cifar100_archive(tmp_path, c100, mode):
    archive = h.write_cifar_archive(tmp_path / "cifar-100-python.tar.gz", c100,
                                    folder="cifar-100-python", meta_name="meta", meta=h.META100)
    (x_train, y_train), (x_test, y_test) = cifar100.load_data(label_mode=mode, path=archive)
    key = f"{mode}_labels".encode()
    ex, ey = h.expected_cifar(c100, ("train",), key)
    np.testing.assert_array_equal(x_train, ex)
    np.testing.assert_array_equal(y_train, ey)
    ex, ey = h.expected_cifar(c100, ("test",), key)
    np.testing.assert_array_equal(x_test, ex)
    np.testing.assert_array_equal(y_test, ey)
    assert y_train.dtype == np.uint8 and y_train.shape == (6, 1)


def test_cifar100_folder_via_env(tmp_path, monkeypatch, c100):
    h.write_cifar_folder(tmp_path / "env" / "cifar-100-python", c100, meta_name="meta",
                         meta=h.META100)
    monkeypatch.setenv("MINICNN_DATASETS", str(tmp_path / "env"))
    (x_train, y_train), _ = cifar100.load_data("coarse")
    assert x_train.shape == (6, 32, 32, 3) and int(y_train.max()) < 20


def test_cifar100_label_mode_is_checked(tmp_path):
    expected = r"label_mode must be 'fine' or 'coarse', received 'medium'"
    with pytest.raises(ValueError, match=expected):
        cifar100.load_data(label_mode="medium")


def test_cifar100_fine_labels_range_checked(tmp_path, c100):
    c100["test"][b"fine_labels"][0] = 100
    folder = h.write_cifar_folder(tmp_path / "cifar-100-python", c100, meta_name="meta",
                                  meta=h.META100)
    with pytest.raises(DatasetFormatError, match=r"test'.*must lie in \[0, 100\)"):
        cifar100.load_data(path=folder)


def test_class_names():
    assert len(cifar10.CLASS_NAMES) == 10 and cifar10.CLASS_NAMES[0] == "airplane"
    assert len(cifar100.FINE_LABEL_NAMES) == 100 and len(set(cifar100.FINE_LABEL_NAMES)) == 100
    assert len(cifar100.COARSE_LABEL_NAMES) == 20
    assert cifar100.CLASS_NAMES["fine"] is cifar100.FINE_LABEL_NAMES


def test_official_specs():
    spec = h.OFFICIAL_FILES["minicnn.datasets.cifar10"]["archive"]
    assert spec.url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert spec.md5 == "c58f30108f718f92721af3b95e74349a" and spec.size == 170_498_071
