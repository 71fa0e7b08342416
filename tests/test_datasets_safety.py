"""The restricted unpickler and the safe tar extraction refuse what they must, and run nothing."""
from __future__ import annotations

import codecs
import io
import os
import pickle
import re
import struct
import sys
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


PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)  # 0-5


@pytest.mark.parametrize("fix_imports", [True, False])
@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("arr", [
    np.arange(12, dtype=np.int16).reshape(3, 4),
    np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    np.arange(12, dtype=np.uint8).reshape(3, 4)[:, ::2],  # not contiguous
    np.zeros((0, 3072), dtype=np.uint8),                    # empty: protocols 0-2 call bytes()
], ids=["int16", "fortran", "strided", "empty"])
def test_standard_numpy_pickles_load(arr, protocol, fix_imports):
    # What Python 3's pickle writes: protocols 0-2 spell bytes _codecs.encode(str, 'latin1'),
    # protocol 5 sends contiguous arrays through numpy._core.numeric._frombuffer.
    data = pickle.dumps({"a": arr, b"b": [1, 2]}, protocol=protocol, fix_imports=fix_imports)
    out = safe_loads(data, source="test")
    assert out["a"].dtype == arr.dtype and out["a"].shape == arr.shape
    np.testing.assert_array_equal(out["a"], arr)
    assert out[b"b"] == [1, 2]


@pytest.mark.parametrize("form", ["folder", "archive"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cifar_batches_written_by_pickle_dump_load(tmp_path, protocol, form):
    # The batches as anyone would write them today: pickle.dump of a dict with bytes keys, a uint8
    # b'data' array and a b'labels' list. Through load_data, the same arrays as the Python 2 files.
    batches = h.cifar10_batches(4, 3)
    raw = {}
    for name, batch in batches.items():
        buf = io.BytesIO()
        pickle.dump(batch, buf, protocol=protocol)
        raw[name] = buf.getvalue()
    raw["batches.meta"] = pickle.dumps(h.META10, protocol=protocol)
    if form == "folder":
        path = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", {}, meta_name=None, raw=raw)
    else:
        path = h.write_cifar_archive(tmp_path / "c.tar.gz", {}, meta_name=None, raw=raw)
    (x_train, y_train), (x_test, y_test) = cifar10.load_data(path=path)
    want_x, want_y = h.expected_cifar(batches, h.CIFAR10_TRAIN)
    np.testing.assert_array_equal(x_train, want_x)
    np.testing.assert_array_equal(y_train, want_y)
    want_x, want_y = h.expected_cifar(batches, ["test_batch"])
    np.testing.assert_array_equal(x_test, want_x)
    np.testing.assert_array_equal(y_test, want_y)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_truncated_standard_batch_file_is_named(tmp_path, protocol):
    batches = h.cifar10_batches(4, 3)
    raw = {name: pickle.dumps(batch, protocol=protocol) for name, batch in batches.items()}
    raw["data_batch_2"] = raw["data_batch_2"][: len(raw["data_batch_2"]) // 2]
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", {}, meta_name=None, raw=raw)
    with pytest.raises(datasets.DatasetFormatError,
                       match=r"data_batch_2' is truncated or corrupt"):
        cifar10.load_data(path=folder)


def test_numpy_scalar_allowed():
    value = np.float32(1.5)
    assert safe_loads(h.py2_dumps(value), source="t") == value
    for protocol in PROTOCOLS:
        assert safe_loads(pickle.dumps(value, protocol=protocol), source="t") == value


@pytest.mark.parametrize("protocol", PROTOCOLS)
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


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("target", [eval, exec, print, getattr, os.getcwd, io.BytesIO,
                                    pickle.loads])
def test_other_globals_refused(target, protocol):
    # Protocols 0-2 name builtins "__builtin__", 3-5 "builtins": both must be refused.
    class Reduce:
        def __reduce__(self):
            return (target, ("1",)) if target is not os.getcwd else (target, ())

    with pytest.raises(UnsafePickleError, match=rf"refused to load the global '.*{target.__name__}'"):
        safe_loads(pickle.dumps(Reduce(), protocol=protocol), source="t")


# Hand-written pickles: the opcodes an attacker would write, naming the global directly rather than
# through whatever name pickle.dumps would choose. Each would create ``marker`` if it ran.
def _global(module, name, style):
    """Push a global: protocol 0's GLOBAL, or protocol 4's STACK_GLOBAL."""
    if style == "GLOBAL":
        return pickle.GLOBAL + f"{module}\n{name}\n".encode()
    return _text(module, style) + _text(name, style) + pickle.STACK_GLOBAL


def _text(value, style):
    data = value.encode()
    if style == "GLOBAL":  # protocol 0 UNICODE: raw-unicode-escape up to a newline
        assert "\n" not in value and "\\" not in value
        return pickle.UNICODE + data + b"\n"
    return pickle.BINUNICODE + struct.pack("<I", len(data)) + data


def hand_written(module, name, args, style):
    """``module.name(*args)`` as opcodes: the global, MARK, the str args, TUPLE, REDUCE, STOP.

    An arg that is a tuple of str is written as a nested tuple (for Popen's argv).
    """
    head = b"" if style == "GLOBAL" else pickle.PROTO + b"\x04"
    body = b""
    for arg in args:
        if isinstance(arg, tuple):
            body += pickle.MARK + b"".join(_text(a, style) for a in arg) + pickle.TUPLE
        else:
            body += _text(arg, style)
    return head + _global(module, name, style) + pickle.MARK + body + pickle.TUPLE + \
        pickle.REDUCE + pickle.STOP


def _attacks(marker):
    make = f"open({str(marker)!r}, 'w').close()"
    return {
        "builtins.eval": ("builtins", "eval", (make,)),
        "builtins.exec": ("builtins", "exec", (make,)),
        "os.system": ("os", "system", (f"touch '{marker}'",)),
        "posix.system": ("posix", "system", (f"touch '{marker}'",)),
        "subprocess.Popen": ("subprocess", "Popen", ((sys.executable, "-c", make),)),
    }


ATTACKS = list(_attacks("m"))


@pytest.mark.skipif(os.name != "posix", reason="the payloads use posix.system and touch")
@pytest.mark.parametrize("style", ["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_hand_written_payloads_are_live(tmp_path, attack, style):
    # Sanity for the refusal test below: the standard unpickler really runs each payload.
    marker = tmp_path / "ran"
    module, name, args = _attacks(marker)[attack]
    result = pickle.loads(hand_written(module, name, args, style))
    if attack == "subprocess.Popen":
        assert result.wait() == 0
    assert marker.exists()


@pytest.mark.parametrize("style", ["GLOBAL", "STACK_GLOBAL"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_hand_written_attacks_are_refused_and_run_nothing(tmp_path, attack, style):
    marker = tmp_path / "ran"
    module, name, args = _attacks(marker)[attack]
    payload = hand_written(module, name, args, style)
    with pytest.raises(UnsafePickleError, match=re.escape(f"global '{attack}'")):
        safe_loads(payload, source="'evil'")
    assert not marker.exists()
    # The same payload as a batch file: refused by load_data, naming the file and the global.
    folder = h.write_cifar_folder(tmp_path / "cifar-10-batches-py", h.cifar10_batches(),
                                  raw={"data_batch_3": payload})
    with pytest.raises(UnsafePickleError, match=re.escape(f"global '{attack}'")) as info:
        cifar10.load_data(path=folder)
    assert "data_batch_3" in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("payload, message", [
    # The admitted helpers accept only what a pickler writes, not what they could be abused for.
    (b"c_codecs\nencode\n(Vx\nVzlib_codec\ntR.", "encoding 'zlib_codec'"),
    (b"c_codecs\nencode\n(C\x01xVlatin1\ntR.", "_codecs.encode of a bytes"),
    (b"c__builtin__\nbytes\n(J\x00\xca\x9a;tR.", "bytes(1000000000,)"),
    (b"cbuiltins\nbytes\n(Vabc\nVascii\ntR.", "bytes('abc', 'ascii')"),
    (b"cnumpy._core.numeric\n_frombuffer\n(C\x04abcdVO\n(K\x01tVC\ntR.", "object dtype"),
    (b"cnumpy.core.numeric\n_frombuffer\n(C\x04abcdVu1\n(J\xff\xff\xff\xfftVC\ntR.",
     "shape"),
])
def test_admitted_helpers_refuse_other_arguments(payload, message):
    with pytest.raises(UnsafePickleError, match=re.escape(message)):
        safe_loads(payload, source="t")


def test_object_arrays_refused():
    # An object array could carry arbitrary objects: refused even though only numpy is named.
    arr = np.array([1, "a"], dtype=object)
    with pytest.raises(UnsafePickleError):
        safe_loads(h.py2_dumps(arr), source="t")


def test_allow_list_is_only_numpy_reconstruction():
    assert set(ALLOWED_GLOBALS) == {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"), ("__builtin__", "bytes"), ("builtins", "bytes")}
    # None of the callables handed out is the real builtin or codec function.
    assert ALLOWED_GLOBALS[("_codecs", "encode")] is not codecs.encode
    assert ALLOWED_GLOBALS[("builtins", "bytes")] is not bytes


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
