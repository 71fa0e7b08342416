"""MNIST / Fashion-MNIST: the IDX reader's checks and every place the files are found."""
from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

from minicnn.datasets import (ChecksumError, DatasetFormatError, DatasetNotFoundError,
                              fashion_mnist, mnist, read_idx)
from minicnn.datasets._idx import parse_idx_header

try:
    from . import datasets_helpers as h
except ImportError:
    import datasets_helpers as h

MODULES = {"mnist": (mnist, "mnist"), "fashion_mnist": (fashion_mnist, "fashion-mnist")}


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    return h.isolate(monkeypatch, tmp_path)


@pytest.fixture(params=sorted(MODULES))
def module(request):
    """(module, its folder name): every test runs for MNIST and Fashion-MNIST."""
    return MODULES[request.param]


@pytest.fixture
def arrays():
    return h.mnist_arrays(n_train=12, n_test=5, seed=2)


def assert_matches(result, arrays):
    (x_train, y_train), (x_test, y_test) = result
    for got, key in ((x_train, "train_images"), (y_train, "train_labels"),
                     (x_test, "test_images"), (y_test, "test_labels")):
        assert got.dtype == np.uint8 and got.shape == arrays[key].shape
        np.testing.assert_array_equal(got, arrays[key])
    assert x_train.flags.writeable


# ----------------------------------------------------------------------------------------------
# IDX format
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path, dtype, gz):
    arr = (np.arange(2 * 3 * 4) - 5).astype(dtype).reshape(2, 3, 4)
    if np.dtype(dtype) == np.uint8:
        arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    data = h.idx_bytes(arr)
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(data) if gz else data)
    out = read_idx(path)
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.isnative and out.shape == (2, 3, 4)


def test_parse_header():
    head = b"\x00\x00\x08\x03" + bytes([0, 0, 0, 7, 0, 0, 0, 28, 0, 0, 0, 28])
    dtype, dims, size = parse_idx_header(head, "f")
    assert dtype == np.uint8 and dims == (7, 28, 28) and size == 16


@pytest.mark.parametrize("data, message", [
    (b"\x00\x00", "too short for an IDX header"),
    (b"\x01\x02\x08\x01\x00\x00\x00\x01\x00", "not an IDX file"),
    (b"PK\x03\x04 zip file", "not an IDX file"),
    (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "0 dimensions"),
    (b"\x00\x00\x08\x03\x00\x00\x00\x01", "truncated IDX header"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", r"truncated: the header announces \(5,\)"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "bytes after the 2 bytes"),
    (b"\x00\x00\x08\x02\xff\xff\xff\xff\xff\xff\xff\xff", "truncated"),  # huge dims, no data
])
@pytest.mark.parametrize("gz", [True, False])
def test_bad_idx_files_are_named(tmp_path, data, message, gz):
    path = tmp_path / "bad-idx"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_truncated_gzip_stream_is_named(tmp_path):
    path = tmp_path / "t.gz"
    path.write_bytes(gzip.compress(h.idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-30])
    with pytest.raises(DatasetFormatError, match="t.gz"):
        read_idx(path)


def test_corrupt_gzip_stream_is_named(tmp_path):
    path = tmp_path / "c.gz"
    data = bytearray(gzip.compress(h.idx_bytes(np.arange(4000, dtype=np.uint8).reshape(40, 100))))
    data[-6] ^= 0xFF  # break the CRC
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetFormatError, match="c.gz' is truncated or corrupt"):
        read_idx(path)


# ----------------------------------------------------------------------------------------------
# Where the files are found
def test_folder_path(tmp_path, module, arrays):
    mod, _ = module
    folder = h.write_mnist_folder(tmp_path / "files", arrays)
    assert_matches(mod.load_data(path=folder), arrays)
    assert_matches(mod.load_data(path=str(folder)), arrays)


def test_uncompressed_files(tmp_path, module, arrays):
    mod, _ = module
    folder = h.write_mnist_folder(tmp_path / "raw", arrays, gz=False)
    assert_matches(mod.load_data(path=folder), arrays)


def test_folder_holding_the_named_subfolder(tmp_path, module, arrays):
    mod, sub = module
    h.write_mnist_folder(tmp_path / "data" / sub, arrays)
    assert_matches(mod.load_data(path=tmp_path / "data"), arrays)


def test_env_var(tmp_path, monkeypatch, module, arrays):
    mod, sub = module
    h.write_mnist_folder(tmp_path / "mine" / sub, arrays)
    monkeypatch.setenv("MINICNN_DATASETS",
                       os.pathsep.join([str(tmp_path / "x"), str(tmp_path / "mine")]))
    assert_matches(mod.load_data(), arrays)


def test_env_var_does_not_mix_up_mnist_and_fashion(tmp_path, monkeypatch, arrays):
    h.write_mnist_folder(tmp_path / "mine" / "fashion-mnist", arrays)
    monkeypatch.setenv("MINICNN_DATASETS", str(tmp_path / "mine"))
    assert_matches(fashion_mnist.load_data(), arrays)
    with pytest.raises(DatasetNotFoundError, match="no mnist/"):
        mnist.load_data(download=False)


def test_cache_with_official_sizes_checked(cache, monkeypatch, module, arrays):
    mod, sub = module
    folder = h.write_mnist_folder(cache / sub, arrays)
    with pytest.raises(ChecksumError, match="expected .* \\(the official file\\)"):
        mod.load_data()
    for key, name in h.MNIST_NAMES.items():
        monkeypatch.setitem(mod.FILES, key, h.local_spec(name, (folder / name).read_bytes()))
    assert_matches(mod.load_data(), arrays)


def test_system_copy(tmp_path, monkeypatch, module, arrays):
    mod, _ = module
    system = h.write_mnist_folder(tmp_path / "usr-share" / "datasets" / "x", arrays)
    monkeypatch.setattr(mod, "SYSTEM_DIRS", (str(tmp_path / "nothing"), str(system)))
    assert_matches(mod.load_data(), arrays)


def test_search_order(tmp_path, monkeypatch, cache, module):
    mod, sub = module
    first, second, third, fourth = (h.mnist_arrays(seed=s) for s in (1, 2, 3, 4))
    h.write_mnist_folder(tmp_path / "p", first)
    h.write_mnist_folder(tmp_path / "env" / sub, second)
    cached = h.write_mnist_folder(cache / sub, third)
    for key, name in h.MNIST_NAMES.items():
        monkeypatch.setitem(mod.FILES, key, h.local_spec(name, (cached / name).read_bytes()))
    system = h.write_mnist_folder(tmp_path / "system", fourth)
    monkeypatch.setattr(mod, "SYSTEM_DIRS", (str(system),))
    monkeypatch.setenv("MINICNN_DATASETS", str(tmp_path / "env"))
    assert_matches(mod.load_data(path=tmp_path / "p"), first)
    assert_matches(mod.load_data(), second)
    monkeypatch.delenv("MINICNN_DATASETS")
    assert_matches(mod.load_data(), third)
    for file in cached.iterdir():
        file.unlink()
    assert_matches(mod.load_data(), fourth)


# ----------------------------------------------------------------------------------------------
# Errors
def test_missing_file_in_path_is_named(tmp_path, module, arrays):
    mod, _ = module
    folder = h.write_mnist_folder(tmp_path / "f", arrays, skip=("test_labels",))
    with pytest.raises(DatasetFormatError, match="lacks t10k-labels-idx1-ubyte.gz"):
        mod.load_data(path=folder)


def test_path_errors(tmp_path, module):
    mod, _ = module
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        mod.load_data(path=tmp_path / "missing")
    file = tmp_path / "file.gz"
    file.write_bytes(b"x")
    with pytest.raises(DatasetNotFoundError, match="path must be a folder"):
        mod.load_data(path=file)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds none of"):
        mod.load_data(path=tmp_path / "empty")
    with pytest.raises(TypeError, match="path must be a str or path-like"):
        mod.load_data(path=3.5)


@pytest.mark.parametrize("key, bad, message", [
    ("train_images", np.zeros((12, 28, 27), np.uint8), r"shape \(n, 28, 28\)"),
    ("train_images", np.zeros((12, 784), np.uint8), r"shape \(n, 28, 28\)"),
    ("test_images", np.zeros((5, 28, 28), ">i2"), "must hold uint8 images"),
    ("train_labels", np.zeros((11,), np.uint8), "12 images but .* 11 labels"),
    ("test_labels", np.full((5,), 10, np.uint8), "has label 10"),
    ("test_labels", np.zeros((5, 1), np.uint8), r"labels of shape \(n,\)"),
])
def test_inconsistent_files_are_named(tmp_path, module, arrays, key, bad, message):
    mod, _ = module
    arrays[key] = bad
    folder = h.write_mnist_folder(tmp_path / "f", arrays)
    with pytest.raises(DatasetFormatError, match=message) as info:
        mod.load_data(path=folder)
    assert h.MNIST_NAMES[key] in str(info.value)


def test_truncated_file_in_folder_is_named(tmp_path, module, arrays):
    mod, _ = module
    folder = h.write_mnist_folder(tmp_path / "f", arrays)
    target = folder / "train-images-idx3-ubyte.gz"
    target.write_bytes(target.read_bytes()[:100])
    with pytest.raises(DatasetFormatError, match="train-images-idx3-ubyte.gz"):
        mod.load_data(path=folder)


def test_not_found_lists_places(tmp_path, monkeypatch, cache, module):
    mod, sub = module
    monkeypatch.setattr(mod, "SYSTEM_DIRS", (str(tmp_path / "sys"),))
    with pytest.raises(DatasetNotFoundError) as info:
        mod.load_data(download=False)
    message = str(info.value)
    assert str(cache / sub) in message and str(tmp_path / "sys") in message
    assert "download=False" in message and "shapes.load_data()" in message
    assert f"a {sub}/ folder" in message


def test_class_names_and_official_specs():
    assert fashion_mnist.CLASS_NAMES[9] == "Ankle boot" and len(fashion_mnist.CLASS_NAMES) == 10
    assert mnist.CLASS_NAMES == tuple("0123456789")
    official = h.OFFICIAL_FILES["minicnn.datasets.fashion_mnist"]
    assert official["train_images"].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert official["test_labels"].md5 == "bb300cfdad3c16e7a12a480ee83cd310"
    official = h.OFFICIAL_FILES["minicnn.datasets.mnist"]
    assert official["train_images"].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert official["train_images"].size == 9_912_422
    assert "/usr/share/datasets/fashion-mnist" in h.OFFICIAL_SYSTEM_DIRS["fashion_mnist"]
