"""What CIFAR-10 and CIFAR-100 share: finding the data, reading the python batches, checking them.

Search order (the first hit wins):

1. ``path=``: the ``.tar.gz`` archive, the extracted folder, a folder holding the batch files, or a
   folder holding the archive or the extracted folder. A ``path`` that holds none of these is an
   error: an explicit path never falls back to other places.
2. Each folder of ``$MINICNN_DATASETS``: the extracted folder, else the archive.
3. The cache ``$MINICNN_HOME/datasets``: the extracted folder, else the archive.
4. A download of the archive into the cache (unless ``download=False`` or ``$MINICNN_OFFLINE``).

Checksums: a download is checked against the official size and MD5 before it is renamed into the
cache, and an archive in the cache must still have the official size (a cheap check, done at each
load, that catches a truncated copy). Archives and folders you provide (1 and 2) are not checked
against the official checksums - subsets and repacks are legitimate - but every batch is validated
as it is read: the restricted unpickler, 3072-byte rows, one label per row, labels in range.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import _paths
from ._download import candidate_urls, fetch
from ._errors import ChecksumError, DatasetFormatError, DatasetNotFoundError, DownloadError
from ._safety import iter_tar_members, safe_loads

ROW_BYTES = 32 * 32 * 3


@dataclass(frozen=True)
class Layout:
    """How one CIFAR variant is laid out on disk."""

    label: str          # prefix of messages: "cifar10.load_data"
    title: str          # "CIFAR-10"
    folder: str         # name of the extracted folder: "cifar-10-batches-py"
    train: tuple        # batch files of the training set, in order
    test: tuple         # batch files of the test set
    meta: str           # the metadata file
    url_env: str        # environment variable naming a mirror: "MINICNN_CIFAR10_URL"


@dataclass(frozen=True)
class Source:
    """Where the batches will be read from: an archive or a folder, and how it was found."""

    kind: str           # "archive" or "folder"
    path: Path
    found_by: str       # "path=", "$MINICNN_DATASETS", "cache" or "download"


def load(layout, spec, path, *, mirror, download, label_key, num_classes):
    """Locate and read a CIFAR variant; return ``(x_train, y_train), (x_test, y_test)``.

    Parameters
    ----------
    layout : Layout
    spec : FileSpec
        The official archive (name, URL, MD5, size).
    path : str, path-like or None
        See the module docstring.
    mirror : str, list of str or None
        Base URL(s) tried before the official one.
    download : bool
        Whether a download may be attempted.
    label_key : str
        Batch entry holding the labels: ``"labels"``, ``"fine_labels"`` or ``"coarse_labels"``.
    num_classes : int
        Labels must lie in ``[0, num_classes)``.

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x``: uint8, shape (n, 32, 32, 3). ``y``: uint8, shape (n, 1).
    """
    source = locate(layout, spec, path, mirror=mirror, download=download)
    batches = read_batches(source, layout, label_key, num_classes)
    train = _assemble([batches[name] for name in layout.train])
    test = _assemble([batches[name] for name in layout.test])
    return train, test


def locate(layout, spec, path, *, mirror=None, download=True):
    """Find the archive or folder to read, downloading the archive if needed (see module docstring).

    Raises
    ------
    DatasetNotFoundError
        If nothing is found and the download is disabled or fails; the message lists every place
        tried. Also if an explicit ``path`` does not exist or holds no CIFAR data.
    ChecksumError
        If the cached archive does not have the official size.
    """
    if path is not None:
        return _from_path(layout, spec, path)
    tried = []
    user_dirs = _paths.user_dirs()
    if not user_dirs:
        tried.append(f"${_paths.ENV_DATASETS}: not set")
    for folder in user_dirs:
        found = _in_folder(layout, spec, folder, "$" + _paths.ENV_DATASETS)
        if found:
            return found
        found_there = f"no {layout.folder}/ or {spec.name}" if folder.is_dir() else "does not exist"
        tried.append(f"${_paths.ENV_DATASETS} folder '{folder}': {found_there}")
    cache = _paths.cache_dir()
    if (cache / layout.folder).is_dir():
        return Source("folder", cache / layout.folder, "cache")
    archive = cache / spec.name
    if archive.is_file():
        _check_cached(layout, spec, archive)
        return Source("archive", archive, "cache")
    tried.append(f"cache '{cache}': no {layout.folder}/ or {spec.name}")
    return _download(layout, spec, archive, tried, mirror=mirror, download=download)


def _from_path(layout, spec, path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{layout.label}: path must be a str or path-like object, "
                        f"received {path!r} of type {type(path).__name__}")
    p = Path(path).expanduser()
    if p.is_file():
        return Source("archive", p, "path=")
    if p.is_dir():
        if any((p / name).is_file() for name in (*layout.train, *layout.test, layout.meta)):
            return Source("folder", p, "path=")
        found = _in_folder(layout, spec, p, "path=")
        if found:
            return found
        raise DatasetNotFoundError(
            f"{layout.label}: path '{p}' holds neither {spec.name}, a {layout.folder} folder, "
            f"nor the batch files ({', '.join((*layout.train, *layout.test))})", [f"path '{p}'"])
    raise DatasetNotFoundError(f"{layout.label}: path '{p}' does not exist", [f"path '{p}'"])


def _in_folder(layout, spec, folder, found_by):
    if (folder / layout.folder).is_dir():
        return Source("folder", folder / layout.folder, found_by)
    if (folder / spec.name).is_file():
        return Source("archive", folder / spec.name, found_by)
    return None


def _check_cached(layout, spec, archive):
    size = archive.stat().st_size
    if spec.size is not None and size != spec.size:
        raise ChecksumError(
            f"{layout.label}: the cached archive '{archive}' has {size:,} bytes, expected "
            f"{spec.size:,} (the official file). Delete it to download it again; to use a copy of "
            f"your own, pass it with path= or put it in ${_paths.ENV_DATASETS} instead.")


def _download(layout, spec, archive, tried, *, mirror, download):
    urls = candidate_urls(spec, mirror, layout.url_env)

    def not_found():
        return _paths.not_found(layout.label, layout.title, tried,
                                f"the {spec.name} archive or an extracted {layout.folder} folder",
                                f"{spec.name} or {layout.folder}/", archive.parent)

    if _paths.download_refused(download, tried):
        raise not_found()
    try:
        fetch(urls[0], archive, md5=spec.md5, size=spec.size, mirrors=urls[1:])
    except DownloadError as exc:
        tried += [f"download {url}: {reason}" for url, reason in exc.failures]
        raise not_found() from exc
    return Source("archive", archive, "download")


def read_batches(source, layout, label_key, num_classes):
    """Read and validate every batch of ``layout`` from ``source``.

    Returns
    -------
    dict
        Batch name -> ``(data, labels)``: uint8 ``(n, 3072)`` and uint8 ``(n,)``.

    Raises
    ------
    DatasetFormatError
        Naming the file (or archive member) that is missing, truncated, corrupt or malformed.
    UnsafePickleError
        If a batch pickle refers to anything but NumPy array reconstruction.
    """
    names = (*layout.train, *layout.test)
    batches = {}
    if source.kind == "folder":
        missing = [name for name in names if not (source.path / name).is_file()]
        if missing:
            raise DatasetFormatError(
                f"{layout.label}: the {layout.title} folder '{source.path}' lacks "
                f"{', '.join(missing)} (expected {', '.join(names)})")
        for name in names:
            file = source.path / name
            try:
                data = file.read_bytes()
            except OSError as exc:
                raise DatasetFormatError(f"{layout.label}: cannot read '{file}' ({exc})") from exc
            batches[name] = parse_batch(data, f"{layout.label}: '{file}'", label_key, num_classes)
    else:
        for name, member, data in iter_tar_members(source.path, names, label=layout.label):
            where = f"{layout.label}: archive '{source.path}', member '{member}'"
            batches[name] = parse_batch(data, where, label_key, num_classes)
        missing = [name for name in names if name not in batches]
        if missing:
            raise DatasetFormatError(
                f"{layout.label}: the archive '{source.path}' lacks {', '.join(missing)} "
                f"(expected {', '.join(layout.folder + '/' + n for n in names)})")
    return batches


def parse_batch(data, where, label_key, num_classes):
    """Unpickle one batch safely and validate it.

    Parameters
    ----------
    data : bytes
        The pickled batch: a dict with ``data``, a uint8 ``(n, 3072)`` array (each row 1024 red, 1024
        green, then 1024 blue values, row-major), and ``label_key``, a list of n ints.
    where : str
        Names the file in error messages.

    Returns
    -------
    data : uint8 array, shape (n, 3072)
    labels : uint8 array, shape (n,)
    """
    batch = safe_loads(data, source=where)
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{where}: expected a dict, found {type(batch).__name__}")
    images = _entry(batch, "data", where)
    labels = _entry(batch, label_key, where)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        kind = f"{images.dtype} array" if isinstance(images, np.ndarray) else type(images).__name__
        raise DatasetFormatError(f"{where}: 'data' must be a uint8 array, found {kind}")
    if images.ndim != 2 or images.shape[1] != ROW_BYTES:
        raise DatasetFormatError(f"{where}: 'data' must have rows of {ROW_BYTES} bytes "
                                 f"(32x32x3), found shape {images.shape}")
    try:
        labels = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DatasetFormatError(f"{where}: '{label_key}' is not a list of integers "
                                 f"({exc})") from None
    if labels.size == 0:
        labels = labels.astype(np.int64)
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DatasetFormatError(f"{where}: '{label_key}' must be a flat list of integers, "
                                 f"found {labels.dtype} values of shape {labels.shape}")
    if len(labels) != len(images):
        raise DatasetFormatError(f"{where}: {len(images)} rows of data but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetFormatError(f"{where}: '{label_key}' must lie in [0, {num_classes}), "
                                 f"found values from {labels.min()} to {labels.max()}")
    return images, labels.astype(np.uint8)


def _entry(batch, key, where):
    for candidate in (key.encode("ascii"), key):  # bytes keys (Python 2 pickles) or str keys
        if candidate in batch:
            return batch[candidate]
    keys = ", ".join(repr(k) for k in list(batch)[:10])
    raise DatasetFormatError(f"{where}: no '{key}' entry (found keys: {keys})")


def _assemble(parts):
    """Join batches into NHWC images and (n, 1) labels."""
    data = np.concatenate([images for images, _ in parts])
    labels = np.concatenate([lab for _, lab in parts])
    # Each row is channel-major (1024 R, 1024 G, 1024 B): reshape to NCHW, then transpose to NHWC.
    x = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return x, labels.reshape(-1, 1)
