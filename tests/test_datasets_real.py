"""The real data in ../shared/datasets (skipped when absent): a CIFAR-10 subset and Fashion-MNIST.

The CIFAR archive holds real CIFAR-10 images, 5 x 813 for training and 1020 for testing, without the
``filenames`` key and with an md5 other than the official one: loading it by ``path=`` or through
``$MINICNN_DATASETS`` must not require the official checksum.
"""
from __future__ import annotations

import io
import tarfile

import numpy as np
import pytest

from minicnn.datasets import cifar10, fashion_mnist, safe_extract
from minicnn.datasets._safety import RestrictedUnpickler

try:
    from . import datasets_helpers as h
except ImportError:
    import datasets_helpers as h

CIFAR = h.REAL_DATA / "cifar-10-python.tar.gz"
FASHION = h.REAL_DATA / "fashion-mnist"

needs_cifar = pytest.mark.skipif(not CIFAR.is_file(), reason=f"{CIFAR} not present")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason=f"{FASHION} not present")


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path):
    return h.isolate(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def cifar_from_archive():
    if not CIFAR.is_file():
        pytest.skip(f"{CIFAR} not present")
    return cifar10.load_data(path=CIFAR)


def _first_raw_row(member):
    """Row 0 and label 0 of a batch, read independently of the loader (restricted unpickler)."""
    with tarfile.open(CIFAR, "r:gz") as tar:
        data = tar.extractfile(f"cifar-10-batches-py/{member}").read()
    batch = RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    return batch[b"data"][0], batch[b"labels"][0], set(batch)


@needs_cifar
def test_cifar_subset_from_archive(cifar_from_archive):
    (x_train, y_train), (x_test, y_test) = cifar_from_archive
    assert x_train.shape == (5 * 813, 32, 32, 3) and x_train.dtype == np.uint8
    assert y_train.shape == (5 * 813, 1) and y_train.dtype == np.uint8
    assert x_test.shape == (1020, 32, 32, 3) and y_test.shape == (1020, 1)
    assert set(np.unique(y_train)) == set(range(10)) and set(np.unique(y_test)) <= set(range(10))
    # Real photographs: a full range of pixel values and no constant images.
    assert x_train.min() == 0 and x_train.max() == 255
    assert x_train.reshape(len(x_train), -1).std(axis=1).min() > 0


@needs_cifar
def test_cifar_nhwc_transpose_puts_known_pixels_in_place(cifar_from_archive):
    (x_train, y_train), (x_test, y_test) = cifar_from_archive
    row, label, keys = _first_raw_row("data_batch_1")
    assert b"filenames" not in keys
    assert y_train[0, 0] == label
    for i, j in [(0, 0), (0, 31), (5, 17), (31, 0), (31, 31), (16, 8)]:
        for c in range(3):
            assert x_train[0, i, j, c] == row[c * 1024 + i * 32 + j]
    np.testing.assert_array_equal(x_train[0], row.reshape(3, 32, 32).transpose(1, 2, 0))
    row, label, _ = _first_raw_row("data_batch_2")
    np.testing.assert_array_equal(x_train[813], row.reshape(3, 32, 32).transpose(1, 2, 0))
    row, label, _ = _first_raw_row("test_batch")
    np.testing.assert_array_equal(x_test[0], row.reshape(3, 32, 32).transpose(1, 2, 0))
    assert y_test[0, 0] == label


@needs_cifar
def test_cifar_extracted_folder_matches_archive(tmp_path, cifar_from_archive):
    safe_extract(CIFAR, tmp_path / "extracted")
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    assert (folder / "data_batch_5").is_file() and (folder / "batches.meta").is_file()
    for path in (folder, tmp_path / "extracted"):
        (x_train, y_train), (x_test, y_test) = cifar10.load_data(path=path)
        np.testing.assert_array_equal(x_train, cifar_from_archive[0][0])
        np.testing.assert_array_equal(y_train, cifar_from_archive[0][1])
        np.testing.assert_array_equal(x_test, cifar_from_archive[1][0])
        np.testing.assert_array_equal(y_test, cifar_from_archive[1][1])


@needs_cifar
def test_cifar_through_env_var_needs_no_official_checksum(monkeypatch, cache, cifar_from_archive):
    monkeypatch.setenv("MINICNN_DATASETS", str(h.REAL_DATA))
    (x_train, _), _ = cifar10.load_data()
    np.testing.assert_array_equal(x_train, cifar_from_archive[0][0])
    assert h.listing(cache) == []  # read in place: nothing copied or extracted into the cache


@needs_fashion
def test_full_fashion_mnist():
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data(path=FASHION)
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and y_test.shape == (10000,)
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)
    assert x_train.max() == 255 and x_train.min() == 0


@needs_fashion
def test_fashion_mnist_as_a_system_copy_and_via_env(monkeypatch):
    # Debian's package puts the same files in /usr/share/datasets/fashion-mnist.
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", (str(FASHION),))
    (_, y_train), (_, y_test) = fashion_mnist.load_data(download=False)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
