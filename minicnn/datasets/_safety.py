"""Reading untrusted files without running their code: a restricted unpickler and a safe tar reader.

Pickles
-------
The official CIFAR python batches are pickles, and unpickling an arbitrary pickle can run any code (a
``__reduce__`` may name ``os.system``). :class:`RestrictedUnpickler` resolves only the globals that
NumPy array reconstruction needs, listed in ``ALLOWED_GLOBALS``; any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ...) is refused in ``find_class``, *before* anything is
called. Plain containers (dict, list, tuple), str and numbers are pickle opcodes and need no global.
Object dtypes are refused too, so an array can only hold raw numbers.

What a standard ``pickle.dump`` of arrays needs, by protocol (all admitted, each through a wrapper
that accepts only the arguments the pickler writes):

- every protocol: ``numpy.dtype``, and ``numpy.core.multiarray.scalar`` for NumPy scalars;
- 0-4: ``numpy.core.multiarray._reconstruct`` and ``numpy.ndarray`` (the array, its data as state);
- 0-2: ``_codecs.encode`` - Python 3 writes every ``bytes`` object (an array's data, the CIFAR
  ``b'data'`` keys) as ``_codecs.encode(str, 'latin1')``, and ``builtins.bytes`` (spelled
  ``__builtin__.bytes``) for an empty one, as PyTorch's ``weights_only`` unpickler also admits;
- 5: ``numpy.core.numeric._frombuffer`` (a contiguous array's data travels as a byte buffer).

NumPy 1.x names its private modules ``numpy.core``, NumPy 2.x ``numpy._core``: both are listed.

Tar archives
------------
:func:`safe_extract` writes only regular files and folders, and refuses the whole archive, before
writing anything, if any member has an absolute path, a ``..`` component, is a symbolic or hard link,
a device or a FIFO, or would land outside the target folder. :func:`iter_tar_members` reads selected
regular members into memory in one streaming pass, writing nothing to disk.
"""
from __future__ import annotations

import io
import os
import pickle
import re
import shutil
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ._errors import DatasetError, DatasetFormatError, UnsafeDataError, UnsafePickleError

__all__ = ["RestrictedUnpickler", "ALLOWED_GLOBALS", "safe_loads", "safe_extract",
           "iter_tar_members"]

try:  # NumPy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric


def _reconstruct(subtype, shape, dtype):
    """``numpy.core.multiarray._reconstruct`` restricted to plain ``numpy.ndarray``."""
    if subtype is not np.ndarray:
        raise UnsafePickleError(f"refused to reconstruct an array of type {subtype!r}: "
                                "only numpy.ndarray is allowed")
    if shape != (0,):  # what ndarray.__reduce__ always writes; the data comes with the state
        raise UnsafePickleError(f"refused array reconstruction with shape {shape!r}: expected (0,)")
    return _multiarray._reconstruct(np.ndarray, shape, _dtype(dtype))


def _dtype(obj, align=False, copy=False):
    """``numpy.dtype`` refusing object dtypes (which could hold arbitrary Python objects)."""
    if isinstance(obj, bytes):  # Python 2 pickles name dtypes with byte strings, e.g. b'u1'
        obj = obj.decode("ascii")
    result = np.dtype(obj, align, copy)
    if result.hasobject:
        raise UnsafePickleError(f"refused an object dtype ({result!r}): "
                                "only numeric arrays are allowed")
    return result


def _scalar(dtype, *args):
    """``numpy.core.multiarray.scalar`` for numeric dtypes only."""
    return _multiarray.scalar(_dtype(dtype), *args)


def _frombuffer(buf, dtype, shape, order, axis_order=None):
    """``numpy.core.numeric._frombuffer`` (protocol 5) for an in-band byte buffer of numbers."""
    if not isinstance(buf, (bytes, bytearray)):
        raise UnsafePickleError(f"refused _frombuffer of a {type(buf).__name__}: "
                                "expected the array's bytes")
    if (not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape)
            or order not in ("C", "F", "K")):
        raise UnsafePickleError(f"refused _frombuffer with shape {shape!r} and order {order!r}")
    return _numeric._frombuffer(buf, _dtype(dtype), shape, order, axis_order)


def _codecs_encode(text, encoding):
    """``_codecs.encode`` as Python 3 writes it for ``bytes`` at protocols 0-2: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused _codecs.encode of a {type(text).__name__} with encoding "
                                f"{encoding!r}: only (str, 'latin1') is allowed")
    return text.encode("latin-1")


def _empty_bytes(*args):
    """``bytes()``: how protocols 0-2 write ``b''`` (e.g. the data of an empty array)."""
    if args:  # bytes(10**12) would allocate a terabyte
        raise UnsafePickleError(f"refused bytes{args!r}: only bytes() is allowed")
    return b""


# (module, name) -> object handed to the unpickler. Both spellings of NumPy's private modules are
# listed: files written with NumPy 1.x say numpy.core, with NumPy 2.x numpy._core. Protocols 0-2
# name builtins "__builtin__" (Python 2's name), unless written with fix_imports=False.
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy.core.multiarray", "scalar"): _scalar,
    ("numpy._core.multiarray", "scalar"): _scalar,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
    ("__builtin__", "bytes"): _empty_bytes,
    ("builtins", "bytes"): _empty_bytes,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``ALLOWED_GLOBALS``.

    Use it with ``encoding="bytes"`` for Python 2 pickles such as the CIFAR batches: their ``str``
    objects (dictionary keys, label names) then arrive as ``bytes``.
    """

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to load the global '{module}.{name}': only NumPy array reconstruction "
                "is allowed; nothing from this pickle was run") from None

    def persistent_load(self, pid):
        raise UnsafePickleError(f"refused a persistent id {pid!r}: not allowed")


def safe_loads(data, *, source):
    """Unpickle ``data`` (bytes) with :class:`RestrictedUnpickler`.

    Parameters
    ----------
    data : bytes
        The pickle.
    source : str
        Names the file in error messages, e.g. ``"'/data/cifar-10-batches-py/data_batch_1'"``.

    Raises
    ------
    UnsafePickleError
        If the pickle refers to a global outside the allow-list (nothing is run).
    DatasetFormatError
        If the pickle is truncated or corrupt.
    """
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(f"{source}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - corrupt pickles raise almost anything
        raise DatasetFormatError(f"{source} is truncated or corrupt "
                                 f"({type(exc).__name__}: {exc})") from exc


_DRIVE = re.compile(r"^[A-Za-z]:")


def check_member(member, root):
    """Return where ``member`` would be written under ``root``, or raise :class:`UnsafeDataError`.

    Parameters
    ----------
    member : tarfile.TarInfo
    root : pathlib.Path
        The fully resolved target folder.
    """
    name = member.name
    if not name or "\x00" in name:
        raise UnsafeDataError(f"safe_extract: refused member {name!r}: empty or NUL in the name")
    if name.startswith(("/", "\\")) or _DRIVE.match(name) or os.path.isabs(name):
        raise UnsafeDataError(f"safe_extract: refused member '{name}': absolute path")
    if ".." in re.split(r"[\\/]+", name):
        raise UnsafeDataError(f"safe_extract: refused member '{name}': '..' in the path")
    if member.issym() or member.islnk():
        kind = "symbolic" if member.issym() else "hard"
        raise UnsafeDataError(f"safe_extract: refused member '{name}': a {kind} link "
                              f"(to '{member.linkname}')")
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeDataError(f"safe_extract: refused member '{name}': a device or FIFO")
    if not (member.isreg() or member.isdir()):
        raise UnsafeDataError(f"safe_extract: refused member '{name}': not a regular file or folder")
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafeDataError(f"safe_extract: refused member '{name}': it would be written to "
                              f"'{target}', outside '{root}'")
    return target


def safe_extract(tar, dest):
    """Extract a tar archive into ``dest``, refusing anything unsafe before writing a byte.

    Parameters
    ----------
    tar : tarfile.TarFile or str or path-like
        An open archive (random access, i.e. not a ``"r|"`` stream) or the path of one.
    dest : str or path-like
        Target folder, created if missing.

    Returns
    -------
    list of pathlib.Path
        The files and folders written, in archive order.

    Raises
    ------
    UnsafeDataError
        If any member has an absolute path or a ``..`` component, is a symbolic or hard link, a
        device or a FIFO, or resolves outside ``dest`` (e.g. through an existing symlink). Nothing is
        written in that case.
    DatasetFormatError
        If the archive is truncated or corrupt.

    Notes
    -----
    Files are written with mode 0o644 (0o755 when executable in the archive); owners, times and
    special bits are not restored.
    """
    if isinstance(tar, (str, os.PathLike)):
        path = Path(tar)
        try:
            with tarfile.open(path, "r:*") as opened:
                return safe_extract(opened, dest)
        except DatasetError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise DatasetFormatError(f"safe_extract: '{path}' is not a readable tar archive "
                                     f"({type(exc).__name__}: {exc})") from exc
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    plan = [(member, check_member(member, root)) for member in tar.getmembers()]
    written = []
    for member, target in plan:
        if member.isdir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            os.chmod(target, 0o755 if member.mode & 0o111 else 0o644)
        written.append(target)
    return written


def iter_tar_members(path, basenames, *, label):
    """Yield ``(basename, member_name, data)`` for the regular members whose base name is wanted.

    Reads the archive in one streaming pass and stops as soon as every wanted name was seen; nothing
    is written to disk. Only the first member with a given base name is used.

    Parameters
    ----------
    path : pathlib.Path
        The archive (tar, optionally gzip/bz2/xz compressed).
    basenames : collection of str
        Base names to read, e.g. ``{"data_batch_1", "test_batch"}``.
    label : str
        Prefix of error messages, e.g. ``"cifar10.load_data"``.

    Raises
    ------
    DatasetFormatError
        If the archive is not a tar archive, is truncated or corrupt (naming it), or a wanted member
        is not a regular file (a link or a device). Missing members are the caller's to report.
    """
    wanted = set(basenames)
    seen = set()
    try:
        with tarfile.open(path, mode="r|*") as tar:
            for member in tar:
                base = member.name.rstrip("/").rsplit("/", 1)[-1]
                if base not in wanted or base in seen:
                    continue
                if not member.isreg():
                    raise UnsafeDataError(f"{label}: archive '{path}': member '{member.name}' "
                                          "is not a regular file (a link or a device); refused")
                data = tar.extractfile(member).read()
                if len(data) != member.size:
                    raise DatasetFormatError(
                        f"{label}: archive '{path}' is truncated: member '{member.name}' has "
                        f"{len(data):,} of {member.size:,} bytes")
                seen.add(base)
                yield base, member.name, data
                if seen == wanted:
                    return
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DatasetFormatError(f"{label}: archive '{path}' is truncated, corrupt or not a tar "
                                 f"archive ({type(exc).__name__}: {exc})") from exc
