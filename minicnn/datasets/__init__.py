"""Data sets: CIFAR-10, CIFAR-100, MNIST, Fashion-MNIST, and a generated ``shapes`` set (offline).

Every loader returns ``(x_train, y_train), (x_test, y_test)`` as Keras does::

    from minicnn import datasets
    (x_train, y_train), (x_test, y_test) = datasets.cifar10.load_data()
    (x_train, y_train), (x_test, y_test) = datasets.shapes.load_data()   # no network, no files

Where the files are looked for, in order: ``path=``; the folders of ``$MINICNN_DATASETS``; the cache
``$MINICNN_HOME/datasets`` (default ``~/.minicnn/datasets``); system copies (Fashion-MNIST); then a
download into the cache, verified against the official size and MD5 before it is renamed into place,
so it happens once and an interrupted download leaves nothing that looks valid. ``download=False`` or
``$MINICNN_OFFLINE=1`` forbid downloads; ``mirror=`` or ``$MINICNN_<NAME>_URL`` add a mirror.

Files are read safely: CIFAR's pickled batches by an unpickler that refuses anything but NumPy array
reconstruction, tar archives without extracting links, devices or paths leaving the target, IDX files
with their headers checked. Errors name the file at fault; when a data set is nowhere,
:class:`DatasetNotFoundError` (a ``FileNotFoundError``) lists every place tried and how to provide
it.
"""
from . import cifar10, cifar100, fashion_mnist, mnist, shapes
from ._errors import (
    ChecksumError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
    DownloadError,
    UnsafeDataError,
    UnsafePickleError,
)
from ._idx import read_idx
from ._paths import cache_dir
from ._safety import RestrictedUnpickler, safe_extract

__all__ = [
    "cifar10", "cifar100", "mnist", "fashion_mnist", "shapes",
    "DatasetError", "DatasetNotFoundError", "DatasetFormatError", "ChecksumError",
    "UnsafeDataError", "UnsafePickleError", "DownloadError",
    "cache_dir", "read_idx", "safe_extract", "RestrictedUnpickler",
]


from .._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
