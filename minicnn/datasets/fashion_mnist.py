"""Fashion-MNIST: 70,000 28x28 grayscale images of clothing in 10 classes (60,000 / 10,000).

A drop-in replacement for MNIST by Zalando Research, in the same IDX gz files. Besides the usual
places (see :mod:`minicnn.datasets._idx`) it finds the system copy installed by Debian's
``dataset-fashion-mnist`` package in ``/usr/share/datasets/fashion-mnist``.
"""
from __future__ import annotations

from . import _idx
from ._download import FileSpec

__all__ = ["CLASS_NAMES", "FILES", "SYSTEM_DIRS", "load_data"]

CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

_BASE = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_KERAS = ("https://storage.googleapis.com/tensorflow/tf-keras-datasets/",)

# The official files (MD5s as published by Zalando Research). Debian's copies differ byte-wise
# (their gzip headers lack the file name) but decompress to the same data: system copies and files
# you provide are validated, not checksummed. Tests replace these entries with small local files.
FILES = {
    "train_images": FileSpec("train-images-idx3-ubyte.gz", _BASE + "train-images-idx3-ubyte.gz",
                             "8d4fb7e6c68d591d4c3dfef9ec88bf0d", 26_421_880, _KERAS),
    "train_labels": FileSpec("train-labels-idx1-ubyte.gz", _BASE + "train-labels-idx1-ubyte.gz",
                             "25c81989df183df01b3e8a0aad5dffbe", 29_515, _KERAS),
    "test_images": FileSpec("t10k-images-idx3-ubyte.gz", _BASE + "t10k-images-idx3-ubyte.gz",
                            "bef4ecab320f06d8554ea6380940ec79", 4_422_102, _KERAS),
    "test_labels": FileSpec("t10k-labels-idx1-ubyte.gz", _BASE + "t10k-labels-idx1-ubyte.gz",
                            "bb300cfdad3c16e7a12a480ee83cd310", 5_148, _KERAS),
}

# Searched after the cache, before any download.
SYSTEM_DIRS = ("/usr/share/datasets/fashion-mnist",)

DATASET = _idx.IdxDataset(label="fashion_mnist.load_data", title="Fashion-MNIST",
                          folders=("fashion-mnist", "fashion_mnist"),
                          url_env="MINICNN_FASHION_MNIST_URL")


def load_data(path=None, *, mirror=None, download=True):
    """Load Fashion-MNIST as uint8 arrays.

    Parameters
    ----------
    path : str or path-like, optional
        A folder holding the four IDX files (``train-images-idx3-ubyte.gz``,
        ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``,
        ``t10k-labels-idx1-ubyte.gz``, or uncompressed), or holding a ``fashion-mnist/`` folder that
        does. When given, nothing else is searched.
    mirror : str or list of str, optional
        Base URL(s) tried before the official ones; then ``$MINICNN_FASHION_MNIST_URL`` and
        ``$MINICNN_DATASETS_MIRROR``.
    download : bool
        Set to False to never download (as does ``$MINICNN_OFFLINE=1``).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x_train``: uint8, shape (60000, 28, 28); ``y_train``: uint8, shape (60000,), values 0..9
        indexing :data:`CLASS_NAMES`; ``x_test``, ``y_test``: the same with 10000 rows.

    Raises
    ------
    DatasetNotFoundError, DatasetFormatError, ChecksumError
        As in :func:`minicnn.datasets.mnist.load_data`.
    """
    return _idx.load(DATASET, FILES, SYSTEM_DIRS, path, mirror=mirror, download=download)
