"""MNIST: 70,000 28x28 grayscale images of handwritten digits (60,000 training, 10,000 test).

``load_data()`` reads the four official IDX gz files; see :mod:`minicnn.datasets._idx` for the
format checks and the search order (``path=``, ``$MINICNN_DATASETS/mnist``, the cache
``$MINICNN_HOME/datasets/mnist``, then a verified download into the cache).
"""
from __future__ import annotations

from . import _idx
from ._download import FileSpec

__all__ = ["CLASS_NAMES", "FILES", "SYSTEM_DIRS", "load_data"]

CLASS_NAMES = tuple(str(d) for d in range(10))

_BASE = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_LECUN = ("https://yann.lecun.com/exdb/mnist/",)

# The official files (as on Yann LeCun's page, where the sizes and these MD5s come from).
# Tests replace these entries (monkeypatch.setitem) with small local files.
FILES = {
    "train_images": FileSpec("train-images-idx3-ubyte.gz", _BASE + "train-images-idx3-ubyte.gz",
                             "f68b3c2dcbeaaa9fbdd348bbdeb94873", 9_912_422, _LECUN),
    "train_labels": FileSpec("train-labels-idx1-ubyte.gz", _BASE + "train-labels-idx1-ubyte.gz",
                             "d53e105ee54ea40749a09fcbcd1e9432", 28_881, _LECUN),
    "test_images": FileSpec("t10k-images-idx3-ubyte.gz", _BASE + "t10k-images-idx3-ubyte.gz",
                            "9fb629c4189551a2d022fa330f9573f3", 1_648_877, _LECUN),
    "test_labels": FileSpec("t10k-labels-idx1-ubyte.gz", _BASE + "t10k-labels-idx1-ubyte.gz",
                            "ec29112dd5afa0611ce80d1b7f02629c", 4_542, _LECUN),
}

# Folders where an operating system package may have installed the files (none is known for MNIST;
# listed so that one can be added, and so that tests can point it elsewhere).
SYSTEM_DIRS = ()

DATASET = _idx.IdxDataset(label="mnist.load_data", title="MNIST", folders=("mnist",),
                          url_env="MINICNN_MNIST_URL")


def load_data(path=None, *, mirror=None, download=True):
    """Load MNIST as uint8 arrays.

    Parameters
    ----------
    path : str or path-like, optional
        A folder holding ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
        ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (or the same files
        uncompressed), or holding an ``mnist/`` folder that does. When given, nothing else is
        searched, and the files are not checked against the official checksums (only validated).
    mirror : str or list of str, optional
        Base URL(s) tried before the official ones; then ``$MINICNN_MNIST_URL`` and
        ``$MINICNN_DATASETS_MIRROR``.
    download : bool
        Set to False to never download (as does ``$MINICNN_OFFLINE=1``).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x_train``: uint8, shape (60000, 28, 28); ``y_train``: uint8, shape (60000,), values 0..9;
        ``x_test``, ``y_test``: the same with 10000 rows.

    Raises
    ------
    DatasetNotFoundError
        (a ``FileNotFoundError``) If the files are nowhere and cannot be downloaded; the message
        lists each place tried and how to provide them.
    DatasetFormatError
        (a ``ValueError``) If a file is missing from a folder, truncated, corrupt, has a bad IDX
        header, or images and labels disagree; names the file.
    ChecksumError
        If a cached file does not have the official size.
    """
    return _idx.load(DATASET, FILES, SYSTEM_DIRS, path, mirror=mirror, download=download)
