"""Exceptions raised by the dataset loaders.

Each also derives from the built-in exception a caller would naturally catch: a dataset that cannot
be found is a ``FileNotFoundError``, a malformed file a ``ValueError``, a failed download an
``OSError``.
"""
from __future__ import annotations

import pickle

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetFormatError",
    "ChecksumError",
    "UnsafeDataError",
    "UnsafePickleError",
    "DownloadError",
]


class DatasetError(Exception):
    """Base class of every error raised by ``minicnn.datasets``."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """The data set is nowhere to be found and could not be downloaded.

    Attributes
    ----------
    tried : list of str
        One line per place looked at (or download attempted), with what was found there.
    """

    def __init__(self, message, tried=()):
        super().__init__(message)
        self.tried = list(tried)

    def __str__(self):
        return self.args[0] if self.args else ""


class DatasetFormatError(DatasetError, ValueError):
    """A file was found but is truncated, corrupt, incomplete or not in the expected format."""


class ChecksumError(DatasetFormatError):
    """A file's size or MD5 digest differs from the published one."""


class UnsafeDataError(DatasetFormatError):
    """A file asked for something the safe readers refuse (a pickle global, a tar link, ...)."""


class UnsafePickleError(UnsafeDataError, pickle.UnpicklingError):
    """A pickle referred to a global outside the allow-list; nothing from it was run."""


class DownloadError(DatasetError, OSError):
    """Every URL tried for a file failed.

    Attributes
    ----------
    failures : list of (str, str)
        ``(url, reason)`` for each URL tried, in order.
    """

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)

    def __str__(self):
        return self.args[0] if self.args else ""
