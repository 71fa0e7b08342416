"""The IDX format of MNIST and Fashion-MNIST, and the loader both data sets share.

An IDX file is a header and raw big-endian data::

    bytes 0-1   0x00 0x00                      magic
    byte  2     type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64
    byte  3     number of dimensions d
    4*d bytes   each dimension, uint32 big-endian
    the data    prod(dims) items, row-major

The official files are gzip-compressed (``*.gz``); uncompressed copies (same name without ``.gz``)
are read too. Every header is checked: magic, type code, number of dimensions, and that the data has
exactly the announced size (a truncated file or trailing bytes are errors naming the file).

Search order of :func:`load` (the first folder holding all four files wins):

1. ``path=``: a folder holding the four files, or holding a subfolder (e.g. ``fashion-mnist/``) that
   does. An explicit path never falls back to other places.
2. The matching subfolder of each ``$MINICNN_DATASETS`` folder.
3. The cache ``$MINICNN_HOME/datasets/<name>/``; files missing there are downloaded into it.
4. System copies, e.g. ``/usr/share/datasets/fashion-mnist`` (Debian's ``dataset-fashion-mnist``).
5. A download of the four official files into the cache, each checked (size and MD5) before it is
   renamed into place. Files in the cache must keep the official size.
"""
from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _paths
from ._download import candidate_urls, fetch
from ._errors import ChecksumError, DatasetFormatError, DatasetNotFoundError, DownloadError

__all__ = ["read_idx", "parse_idx_header", "load"]

IDX_TYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_MAX_DIMS = 8
_GZIP_MAGIC = b"\x1f\x8b"


def parse_idx_header(head, where):
    """Decode an IDX header.

    Parameters
    ----------
    head : bytes
        At least the first 4 bytes of the file, plus the 4*d dimension bytes.
    where : str
        Names the file in error messages.

    Returns
    -------
    dtype : numpy.dtype
        The item type (big-endian for multi-byte types).
    dims : tuple of int
    header_size : int
        4 + 4*d.
    """
    if len(head) < 4:
        raise DatasetFormatError(f"{where}: too short for an IDX header ({len(head)} bytes)")
    if head[0:2] != b"\x00\x00":
        raise DatasetFormatError(f"{where}: not an IDX file (magic {head[:4].hex()}, expected "
                                 "0000 followed by a type code and a dimension count)")
    code, ndim = head[2], head[3]
    if code not in IDX_TYPES:
        raise DatasetFormatError(f"{where}: unknown IDX type code 0x{code:02x} "
                                 f"(expected one of {', '.join(f'0x{c:02x}' for c in IDX_TYPES)})")
    if not 1 <= ndim <= _MAX_DIMS:
        raise DatasetFormatError(f"{where}: IDX header announces {ndim} dimensions, "
                                 f"expected 1 to {_MAX_DIMS}")
    header_size = 4 + 4 * ndim
    if len(head) < header_size:
        raise DatasetFormatError(f"{where}: truncated IDX header "
                                 f"({len(head)} of {header_size} bytes)")
    dims = tuple(int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return IDX_TYPES[code], dims, header_size


def read_idx(path, *, label="read_idx"):
    """Read an IDX file (gzip-compressed or not) into a native-endian NumPy array.

    Parameters
    ----------
    path : str or path-like
    label : str
        Prefix of error messages.

    Returns
    -------
    numpy.ndarray
        Shape ``dims`` from the header; uint8 for MNIST files. Writable, native byte order.

    Raises
    ------
    DatasetFormatError
        Naming the file, if it is not IDX, its gzip stream is corrupt or truncated, or its data is
        shorter or longer than the header announces.
    """
    path = Path(path)
    where = f"{label}: '{path}'"
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if compressed else raw
            head = stream.read(4)
            if len(head) == 4 and head[:2] == b"\x00\x00":
                head += stream.read(4 * head[3])
            dtype, dims, _ = parse_idx_header(head, where)
            count = int(np.prod(dims, dtype=object))
            expected = count * dtype.itemsize
            body = _read_exactly(stream, expected)
            if len(body) < expected:
                raise DatasetFormatError(f"{where}: truncated: the header announces {dims} = "
                                         f"{expected:,} bytes of data, the file has {len(body):,}")
            extra = stream.read(1 << 16)
            if extra:
                raise DatasetFormatError(f"{where}: {len(extra):,}+ bytes after the {expected:,} "
                                         f"bytes of data the header announces {dims}")
    except DatasetFormatError:
        raise
    except (OSError, EOFError, zlib.error) as exc:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream raises EOFError.
        raise DatasetFormatError(f"{where} is truncated or corrupt "
                                 f"({type(exc).__name__}: {exc})") from exc
    array = np.frombuffer(body, dtype=dtype).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=True)


def _read_exactly(stream, n, chunk=1 << 24):
    """Read up to ``n`` bytes in chunks, so a header announcing a huge size allocates nothing."""
    parts = []
    while n > 0:
        part = stream.read(min(chunk, n))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


@dataclass(frozen=True)
class IdxDataset:
    """One MNIST-like data set: its files, folders and shape."""

    label: str              # "mnist.load_data"
    title: str              # "MNIST"
    folders: tuple          # subfolder names searched in $MINICNN_DATASETS, e.g. ("fashion-mnist",)
    url_env: str            # e.g. "MINICNN_MNIST_URL"
    image_shape: tuple = (28, 28)
    num_classes: int = 10


KEYS = ("train_images", "train_labels", "test_images", "test_labels")


def load(ds, files, system_dirs, path, *, mirror=None, download=True):
    """Locate, read and check an MNIST-like data set: ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    ds : IdxDataset
    files : dict
        ``KEYS`` -> :class:`FileSpec` of each official file.
    system_dirs : sequence of path-like
        System folders searched after the cache.
    path, mirror, download
        See :func:`minicnn.datasets.mnist.load_data`.
    """
    found = _locate(ds, files, system_dirs, path, mirror=mirror, download=download)
    arrays = {key: read_idx(found[key], label=ds.label) for key in KEYS}
    train = _check_pair(ds, found, arrays, "train")
    test = _check_pair(ds, found, arrays, "test")
    return train, test


def _candidates(folder, spec):
    """The file for ``spec`` in ``folder``: the .gz name, else the same name uncompressed."""
    for name in (spec.name, spec.name[:-3] if spec.name.endswith(".gz") else None):
        if name and (folder / name).is_file():
            return folder / name
    return None


def _scan(folder, files):
    """Return (found: key -> path, missing: list of file names) for one folder."""
    found, missing = {}, []
    for key in KEYS:
        hit = _candidates(folder, files[key])
        if hit is None:
            missing.append(files[key].name)
        else:
            found[key] = hit
    return found, missing


def _locate(ds, files, system_dirs, path, *, mirror, download):
    names = ", ".join(files[key].name for key in KEYS)
    if path is not None:
        return _from_path(ds, files, path, names)
    tried = []
    user_dirs = _paths.user_dirs()
    if not user_dirs:
        tried.append(f"${_paths.ENV_DATASETS}: not set")
    for base in user_dirs:
        for sub in ds.folders:
            found, missing = _scan(base / sub, files)
            if not missing:
                return found
        subfolders = " or ".join(f + "/" for f in ds.folders)
        tried.append(f"${_paths.ENV_DATASETS} folder '{base}': "
                     f"no {subfolders} holding the four files")
    cache = _paths.cache_dir() / ds.folders[0]
    found, missing = _scan(cache, files)
    for key, file in found.items():
        _check_cached(ds, files[key], file)
    if not missing:
        return found
    # A partial cache (a download interrupted between files) is completed by the download below.
    tried.append(f"cache '{cache}': " + (f"lacks {', '.join(missing)}" if found else "not there"))
    for folder in system_dirs:
        folder = Path(folder)
        sys_found, sys_missing = _scan(folder, files)
        if not sys_missing:
            return sys_found
        state = "incomplete" if folder.is_dir() else "not there"
        tried.append(f"system copy '{folder}': {state}")
    return _download(ds, files, cache, found, tried, mirror=mirror, download=download)


def _from_path(ds, files, path, names):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{ds.label}: path must be a str or path-like object, "
                        f"received {path!r} of type {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetNotFoundError(f"{ds.label}: path '{p}' does not exist", [f"path '{p}'"])
    if not p.is_dir():
        raise DatasetNotFoundError(f"{ds.label}: path must be a folder holding {names}; "
                                   f"received the file '{p}'", [f"path '{p}'"])
    found, missing = _scan(p, files)
    if not missing:
        return found
    for sub in ds.folders:
        sub_found, sub_missing = _scan(p / sub, files)
        if not sub_missing:
            return sub_found
    if found:
        raise DatasetFormatError(f"{ds.label}: the folder '{p}' lacks {', '.join(missing)} "
                                 f"(a {ds.title} folder holds {names})")
    raise DatasetNotFoundError(f"{ds.label}: path '{p}' holds none of {names} (nor a "
                               f"{' or '.join(ds.folders)} subfolder with them)", [f"path '{p}'"])


def _check_cached(ds, spec, file):
    if file.name != spec.name or spec.size is None:
        return  # an uncompressed copy someone put there: only its contents are validated
    size = file.stat().st_size
    if size != spec.size:
        raise ChecksumError(
            f"{ds.label}: the cached file '{file}' has {size:,} bytes, expected {spec.size:,} "
            f"(the official file). Delete it to download it again; to use a copy of your own, "
            f"pass its folder with path= or put it in ${_paths.ENV_DATASETS} instead.")


def _download(ds, files, cache, found, tried, *, mirror, download):

    def not_found():
        return _paths.not_found(ds.label, ds.title, tried,
                                f"a folder holding {', '.join(files[key].name for key in KEYS)}",
                                f"a {ds.folders[0]}/ folder with them", cache)

    if _paths.download_refused(download, tried):
        raise not_found()
    found = dict(found)
    for key in KEYS:
        if key in found:
            continue
        spec = files[key]
        urls = candidate_urls(spec, mirror, ds.url_env)
        try:
            found[key] = fetch(urls[0], cache / spec.name, md5=spec.md5, size=spec.size,
                               mirrors=urls[1:])
        except DownloadError as exc:
            tried += [f"download {url}: {reason}" for url, reason in exc.failures]
            raise not_found() from exc
    return found


def _check_pair(ds, found, arrays, split):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    img_file, lab_file = found[f"{split}_images"], found[f"{split}_labels"]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != ds.image_shape:
        raise DatasetFormatError(f"{ds.label}: '{img_file}' must hold uint8 images of shape "
                                 f"(n, {ds.image_shape[0]}, {ds.image_shape[1]}), found "
                                 f"{images.dtype} of shape {images.shape}")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DatasetFormatError(f"{ds.label}: '{lab_file}' must hold uint8 labels of shape (n,), "
                                 f"found {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise DatasetFormatError(f"{ds.label}: '{img_file}' holds {len(images)} images but "
                                 f"'{lab_file}' {len(labels)} labels")
    if labels.size and labels.max() >= ds.num_classes:
        raise DatasetFormatError(f"{ds.label}: '{lab_file}' has label {labels.max()}, "
                                 f"expected 0 to {ds.num_classes - 1}")
    return images, labels
