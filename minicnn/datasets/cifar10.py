"""CIFAR-10: 60,000 32x32 colour images in 10 classes (50,000 for training, 10,000 for testing).

``load_data()`` returns what ``keras.datasets.cifar10.load_data()`` returns, and finds the data in
this order: ``path=``; the folders of ``$MINICNN_DATASETS``; the cache ``$MINICNN_HOME/datasets``
(default ``~/.minicnn/datasets``); else it downloads the official archive into the cache (once: the
next call finds it there). The download is verified (size and MD5) before it is renamed into place.
The python batches are pickles: they are read with an unpickler that refuses anything but NumPy
array reconstruction, so a tampered file cannot run code.

Examples
--------
>>> from minicnn.datasets import cifar10
>>> (x_train, y_train), (x_test, y_test) = cifar10.load_data()  # doctest: +SKIP
>>> x_train.shape, y_train.shape, cifar10.CLASS_NAMES[y_train[0, 0]]  # doctest: +SKIP
((50000, 32, 32, 3), (50000, 1), 'frog')
"""
from __future__ import annotations

from . import _cifar
from ._download import FileSpec

__all__ = ["CLASS_NAMES", "FILES", "load_data"]

CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer",
               "dog", "frog", "horse", "ship", "truck")

# The official archive. Tests replace this entry (monkeypatch.setitem) with a small local archive.
FILES = {
    "archive": FileSpec(
        name="cifar-10-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        size=170_498_071,
    ),
}

LAYOUT = _cifar.Layout(
    label="cifar10.load_data",
    title="CIFAR-10",
    folder="cifar-10-batches-py",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test=("test_batch",),
    meta="batches.meta",
    url_env="MINICNN_CIFAR10_URL",
)


def load_data(path=None, *, mirror=None, download=True):
    """Load CIFAR-10 as uint8 NHWC images and (n, 1) labels.

    Parameters
    ----------
    path : str or path-like, optional
        The ``cifar-10-python.tar.gz`` archive, an extracted ``cifar-10-batches-py`` folder, or a
        folder holding either. Not checked against the official checksum (subsets are fine), but
        every batch is validated. When given, no other place is searched.
    mirror : str or list of str, optional
        Base URL(s) to download from before the official address (the file name is appended unless
        the URL already ends with it). ``$MINICNN_CIFAR10_URL`` and ``$MINICNN_DATASETS_MIRROR``
        are tried next.
    download : bool
        Set to False to never download (as does ``$MINICNN_OFFLINE=1``).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x_train``: uint8, shape (50000, 32, 32, 3); ``y_train``: uint8, shape (50000, 1), values
        0..9 indexing :data:`CLASS_NAMES`; ``x_test``, ``y_test``: the same with 10000 rows. Each
        batch row (1024 red, 1024 green, 1024 blue values) is reshaped to (3, 32, 32) and
        transposed to (32, 32, 3).

    Raises
    ------
    DatasetNotFoundError
        (a ``FileNotFoundError``) If the data is nowhere and cannot be downloaded; the message lists
        each place tried and how to provide the file.
    DatasetFormatError
        (a ``ValueError``) If a batch is missing, truncated, corrupt or malformed; names the file.
    UnsafePickleError
        If a batch file refers to anything but NumPy array reconstruction (nothing is run).
    ChecksumError
        If the cached archive does not have the official size.
    """
    return _cifar.load(LAYOUT, FILES["archive"], path, mirror=mirror, download=download,
                       label_key="labels", num_classes=len(CLASS_NAMES))
