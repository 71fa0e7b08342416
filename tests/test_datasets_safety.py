"""The restricted unpickler and the safe tar extraction refuse what they must, and run nothing."""
from __future__ import annotations

import io
import os
import pickle
import tarfile

import numpy as np
import pytest

from minicnn import datasets
from minicnn.datasets import UnsafeDataError, UnsafePickleError, cifar10
from minicnn.datasets._safety import ALLOWED_GLOBALS, iter_tar_members, safe_extract, safe_loads

try:
    from . import datasets_helpers as h
except ImportError:
    import datasets_helpers as h


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    h.isolate(monkeypatch, tmp_path)


# ----------------------------------------------------------------------------------------------
# Restricted unpickler
def test_python2_batch_round_trips():
    batch = h.cifar10_batches(3, 2)["data_batch_1"]
    out = safe_loads(h.py2_dumps(batch), source="test")
    assert set(out) == {b"data", b"labels"}
    np.testing.assert_array_equal(out[b"data"], batch[b"data"])
    assert out[b"data"].dtype == np.uint8
    assert out[b"labels"] == batch[b"labels"]


@pytest.mark.parametrize("protocol", [3, 4])
def test_python3_numpy_pickles_load(protocol):
    # Written by NumPy 2 (numpy._core...) rather than Python 2 (numpy.core...): also allowed.
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    out = safe_loads(pickle.dumps({"a": arr, "b": [1, 2]}, protocol=protocol), source="test")
    np.testing.assert_array_equal(out["a"], arr)


def test_globals_beyond_the_official_files_needs_are_refused():
    # Python 3 protocol 2 pickles bytes via _codecs.encode, protocol 5 arrays via _frombuffer:
    # neither appears in the official (Python 2) files, so neither is admitted.
    arr = np.arange(3, dtype=np.uint8)
    with pytest.raises(UnsafePickleError, match="_codecs.encode"):
        safe_loads(pickle.dumps(arr, protocol=2), source="t")
    with pytest.raises(UnsafePickleError, match="_frombuffer"):
        safe_loads(pickle.dumps(arr, protocol=5), source="t")


def test_numpy_scalar_allowed():
    value = np.float32(1.5)
    assert safe_loads(h.py2_dumps(value), source="t") == value
    assert safe_loads(pickle.dumps(value, protocol=4), source="t") == value


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    payload = h.evil_pickle(f"touch {marker}", protocol=protocol)
    # Sanity: the payload really would run the command if unpickled normally (not done here).
    assert b"system" in payload
    with pytest.raises(UnsafePickleError, match=r"system"):
        safe_loads(payload, source="'evil'")
    assert not marker.exists()


def test_malicious_batch_file_in_folder_is_refused_by_load_data(tmp_path):
    marker = tmp_path / "pwned"
    batches = h.cifar10_batches()
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", batches,
                                  raw={"data_batch_2": h.evil_pickle(f"touch {marker}")})
    with pytest.raises(UnsafePickleError) as info:
        cifar10.load_data(path=folder)
    assert "data_batch_2" in str(info.value)
    assert "os.system" in str(info.value) or "posix.system" in str(info.value)
    assert not marker.exists()


def test_malicious_batch_member_in_archive_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    archive = h.write_cifar_archive(tmp_path / "evil.tar.gz", h.cifar10_batches(),
                                    raw={"test_batch": h.evil_pickle(f"touch {marker}")})
    with pytest.raises(UnsafePickleError, match="test_batch"):
        cifar10.load_data(path=archive)
    assert not marker.exists()


@pytest.mark.parametrize("target", [eval, print, os.getcwd, io.BytesIO, pickle.loads])
def test_other_globals_refused(target):
    class Reduce:
        def __reduce__(self):
            return (target, ("1",)) if target is not os.getcwd else (target, ())

    with pytest.raises(UnsafePickleError, match="refused to load the global"):
        safe_loads(pickle.dumps(Reduce(), protocol=2), source="t")


def test_object_arrays_refused():
    # An object array could carry arbitrary objects: refused even though only numpy is named.
    arr = np.array([1, "a"], dtype=object)
    with pytest.raises(UnsafePickleError):
        safe_loads(h.py2_dumps(arr), source="t")


def test_allow_list_is_only_numpy_reconstruction():
    assert {module for module, _ in ALLOWED_GLOBALS} <= {
        "numpy", "numpy.core.multiarray", "numpy._core.multiarray"}
    assert {name for _, name in ALLOWED_GLOBALS} == {"_reconstruct", "scalar", "ndarray", "dtype"}


def test_restricted_unpickler_exported():
    with pytest.raises(pickle.UnpicklingError):
        datasets.RestrictedUnpickler(io.BytesIO(pickle.dumps(os.system)), encoding="bytes").load()


def test_reconstruct_with_odd_shape_refused():
    # Hand-written: _reconstruct(ndarray, (10**9,), 'b') would allocate a gigabyte before BUILD.
    payload = (b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
               b"J\x00\xca\x9a;\x85U\x01b\x87R.")
    with pytest.raises(UnsafePickleError, match="shape"):
        safe_loads(payload, source="t")


@pytest.mark.parametrize("cut", [1, 10, 100, -1])
def test_truncated_pickle_is_a_format_error(cut):
    data = h.py2_dumps(h.cifar10_batches(3, 2)["data_batch_1"])
    with pytest.raises(datasets.DatasetFormatError, match="'f' is truncated or corrupt"):
        safe_loads(data[:cut], source="'f'")


# ----------------------------------------------------------------------------------------------
# Tar archives
def _tar_with(tmp_path, *members):
    """Build an uncompressed tar from (TarInfo, bytes or None) pairs and return its path."""
    path = tmp_path / "t.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return path


def _info(name, kind=tarfile.REGTYPE, linkname=""):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644
    return info


def test_safe_extract_writes_regular_files_and_folders(tmp_path):
    path = _tar_with(tmp_path, (_info("d", tarfile.DIRTYPE), None), (_info("d/a.txt"), b"hello"),
                     (_info("b.bin"), b"\x00\x01"))
    dest = tmp_path / "out"
    written = safe_extract(path, dest)
    assert (dest / "d" / "a.txt").read_bytes() == b"hello"
    assert (dest / "b.bin").read_bytes() == b"\x00\x01"
    assert len(written) == 3
    with tarfile.open(path) as tar:  # also accepts an open TarFile
        safe_extract(tar, tmp_path / "out2")
    assert (tmp_path / "out2" / "d" / "a.txt").read_bytes() == b"hello"


@pytest.mark.parametrize("name, kind, linkname, reason", [
    ("../x", tarfile.REGTYPE, "", "'..'"),
    ("ok/../../x", tarfile.REGTYPE, "", "'..'"),
    ("/tmp/abs-x", tarfile.REGTYPE, "", "absolute"),
    ("link", tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
    ("rel-link", tarfile.SYMTYPE, "../x", "symbolic link"),
    ("hard", tarfile.LNKTYPE, "good.txt", "hard link"),
    ("dev-c", tarfile.CHRTYPE, "", "device"),
    ("dev-b", tarfile.BLKTYPE, "", "device"),
    ("fifo", tarfile.FIFOTYPE, "", "FIFO"),
])
def test_safe_extract_refuses_unsafe_members_and_writes_nothing(tmp_path, name, kind, linkname,
                                                                 reason):
    payload = b"x" if kind == tarfile.REGTYPE else None
    # A harmless member first: it must not be written either, since checks come before writing.
    path = _tar_with(tmp_path, (_info("good.txt"), b"fine"), (_info(name, kind, linkname), payload))
    dest = tmp_path / "a" / "b" / "out"
    with pytest.raises(UnsafeDataError, match=reason):
        safe_extract(path, dest)
    assert h.listing(dest) == []
    assert not (tmp_path / "a" / "b" / "x").exists()
    assert not (tmp_path / "a" / "x").exists()
    assert not (tmp_path / "x").exists()


def test_dotdot_member_writes_nothing_outside(tmp_path):
    path = _tar_with(tmp_path, (_info("../x"), b"escaped"))
    dest = tmp_path / "target"
    before = h.listing(tmp_path)
    with pytest.raises(UnsafeDataError):
        safe_extract(path, dest)
    assert h.listing(tmp_path) == sorted(before + ["target"])  # only the (empty) target folder


def test_existing_symlink_in_target_is_not_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "target"
    dest.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    path = _tar_with(tmp_path, (_info("sub/x"), b"escaped"))
    with pytest.raises(UnsafeDataError, match="outside"):
        safe_extract(path, dest)
    assert list(outside.iterdir()) == []


def test_extracted_file_modes_are_sanitised(tmp_path):
    info = _info("setuid")
    info.mode = 0o4755
    path = _tar_with(tmp_path, (info, b"#!/bin/sh\n"))
    safe_extract(path, tmp_path / "out")
    assert (tmp_path / "out" / "setuid").stat().st_mode & 0o7777 == 0o755


def test_safe_extract_of_corrupt_archive(tmp_path):
    path = tmp_path / "bad.tar.gz"
    path.write_bytes(b"\x1f\x8b" + os.urandom(200))
    with pytest.raises(datasets.DatasetFormatError, match="bad.tar.gz"):
        safe_extract(path, tmp_path / "out")


def test_cifar_archive_with_symlinked_batch_is_refused(tmp_path):
    path = tmp_path / "links.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(_info("cifar-10-batches-py/data_batch_1", tarfile.SYMTYPE, "/etc/passwd"))
    with pytest.raises(UnsafeDataError, match="not a regular file"):
        list(iter_tar_members(path, {"data_batch_1"}, label="t"))
    with pytest.raises(UnsafeDataError):
        cifar10.load_data(path=path)
