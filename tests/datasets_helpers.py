"""Builders and fixtures shared by the tests/test_datasets*.py files.

- Official-format files built in a temporary folder: CIFAR python batches written as Python 2 wrote
  them (protocol-2 pickles, byte-string keys, ``GLOBAL numpy.core.multiarray _reconstruct``), the
  ``.tar.gz`` archives, and IDX (gz) files.
- ``isolated`` : an autouse-style fixture body that points ``$MINICNN_HOME`` at a temporary folder,
  clears the other ``MINICNN_*`` variables, sends every official URL to a closed port on 127.0.0.1
  (so no test can reach the internet even by mistake) and makes retries instant.
- ``FileServer`` : a local HTTP server on 127.0.0.1 that can serve a file, a wrong one, cut the
  connection midway, honour Range requests or stall.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import pickle
import socket
import struct
import tarfile
import threading
import time
from pathlib import Path

import numpy as np

from minicnn.datasets import _download, cifar10, cifar100, fashion_mnist, mnist
from minicnn.datasets._download import FileSpec

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Kept before any test patches them, for tests that check the published values.
OFFICIAL_FILES = {mod.__name__: dict(mod.FILES) for mod in (cifar10, cifar100, mnist, fashion_mnist)}
OFFICIAL_SYSTEM_DIRS = {"mnist": mnist.SYSTEM_DIRS, "fashion_mnist": fashion_mnist.SYSTEM_DIRS}
DEAD_URL = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused


# --------------------------------------------------------------------------------------------------
# Python 2 style pickles
class Py2Pickler(pickle._Pickler):
    """Write pickles the way Python 2 did for the CIFAR batches.

    ``bytes`` and ``str`` become ``SHORT_BINSTRING``/``BINSTRING`` (Python 2 ``str``), and NumPy's
    ``_reconstruct`` is named ``numpy.core.multiarray`` as in the official files, whatever NumPy
    version writes the test file.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_ascii_str(self, obj):
        # Python 2 wrote the dtype's 'u1' and '|' as byte strings too.
        self.save_py2_str(obj.encode("latin-1"))

    dispatch[str] = save_ascii_str

    def save_global(self, obj, name=None):
        module = getattr(obj, "__module__", None)
        name = name or obj.__qualname__
        if module in ("numpy._core.multiarray", "numpy.core.multiarray"):
            module = "numpy.core.multiarray"
        self.write(pickle.GLOBAL + f"{module}\n{name}\n".encode("ascii"))
        self.memoize(obj)


def py2_dumps(obj):
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


class _Evil:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        import os
        return (os.system, (self.command,))


def evil_pickle(command, protocol=2):
    return pickle.dumps(_Evil(command), protocol=protocol)


# --------------------------------------------------------------------------------------------------
# CIFAR files
CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def cifar_rows(n, rng):
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def cifar10_batches(n_per_batch=4, n_test=3, seed=0, filenames=False):
    """Return {batch name: dict with bytes keys} for a tiny CIFAR-10, deterministic for ``seed``."""
    rng = np.random.default_rng(seed)
    batches = {}
    for name in (*CIFAR10_TRAIN, "test_batch"):
        n = n_test if name == "test_batch" else n_per_batch
        batch = {b"data": cifar_rows(n, rng), b"labels": [int(v) for v in rng.integers(0, 10, n)]}
        if filenames:
            batch[b"batch_label"] = name.encode()
            batch[b"filenames"] = [f"img_{i}.png".encode() for i in range(n)]
        batches[name] = batch
    return batches


def expected_cifar(batches, names, label_key=b"labels"):
    """The arrays a correct loader returns for ``names``: NHWC images and (n, 1) labels."""
    data = np.concatenate([batches[n][b"data"] for n in names])
    labels = np.concatenate([np.asarray(batches[n][label_key]) for n in names])
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, labels.astype(np.uint8).reshape(-1, 1)


META10 = {b"num_cases_per_batch": 10000, b"num_vis": 3072,
          b"label_names": [n.encode() for n in cifar10.CLASS_NAMES]}


def write_cifar_folder(folder, batches, meta_name="batches.meta", meta=META10, raw=None):
    """Write each batch as a Python 2 pickle into ``folder``; ``raw`` overrides files' bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, batch in batches.items():
        (folder / name).write_bytes(py2_dumps(batch))
    if meta_name:
        (folder / meta_name).write_bytes(py2_dumps(meta))
    for name, data in (raw or {}).items():
        (folder / name).write_bytes(data)
    return folder


def write_cifar_archive(path, batches, folder="cifar-10-batches-py", meta_name="batches.meta",
                        meta=META10, raw=None, omit=()):
    """Write a .tar.gz like the official one: ``folder/<batch>`` members, minus ``omit``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    members = {name: py2_dumps(batch) for name, batch in batches.items()}
    if meta_name:
        members[meta_name] = py2_dumps(meta)
    members.update(raw or {})
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo(folder)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name, data in members.items():
            if name in omit:
                continue
            add_bytes(tar, f"{folder}/{name}", data)
    return path


def add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def cifar100_batches(n_train=6, n_test=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, n in (("train", n_train), ("test", n_test)):
        fine = rng.integers(0, 100, n)
        out[name] = {b"data": cifar_rows(n, rng), b"fine_labels": [int(v) for v in fine],
                     b"coarse_labels": [int(v) // 5 for v in fine]}
    return out


META100 = {b"fine_label_names": [n.encode() for n in cifar100.FINE_LABEL_NAMES],
           b"coarse_label_names": [n.encode() for n in cifar100.COARSE_LABEL_NAMES]}


# --------------------------------------------------------------------------------------------------
# IDX files
IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B,
             np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}


def idx_bytes(array):
    """Serialise ``array`` as IDX: magic, type code, dims (big-endian uint32), big-endian data."""
    array = np.asarray(array)
    big = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    head = bytes([0, 0, IDX_CODES[np.dtype(big)], array.ndim])
    head += b"".join(struct.pack(">I", d) for d in array.shape)
    return head + array.astype(big).tobytes()


MNIST_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def mnist_arrays(n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test).astype(np.uint8),
    }


def mnist_file_bytes(arrays):
    """{official file name: gz bytes} for the four arrays (gzip with a fixed mtime: reproducible)."""
    return {MNIST_NAMES[key]: gzip.compress(idx_bytes(arr), mtime=0) for key, arr in arrays.items()}


def write_mnist_folder(folder, arrays, gz=True, skip=()):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for key, arr in arrays.items():
        if key in skip:
            continue
        name = MNIST_NAMES[key]
        if gz:
            (folder / name).write_bytes(gzip.compress(idx_bytes(arr), mtime=0))
        else:
            (folder / name[:-3]).write_bytes(idx_bytes(arr))
    return folder


def md5(data):
    return hashlib.md5(data).hexdigest()


def local_spec(name, data, base_url=DEAD_URL, **overrides):
    """A FileSpec for ``data`` served at ``base_url + name``."""
    fields = dict(name=name, url=base_url.rstrip("/") + "/" + name, md5=md5(data), size=len(data))
    fields.update(overrides)
    return FileSpec(**fields)


# --------------------------------------------------------------------------------------------------
# Isolation
URL_VARS = ("MINICNN_CIFAR10_URL", "MINICNN_CIFAR100_URL", "MINICNN_MNIST_URL",
            "MINICNN_FASHION_MNIST_URL", "MINICNN_DATASETS_MIRROR")


def isolate(monkeypatch, tmp_path):
    """Make the dataset code hermetic for one test; return the cache folder it will use."""
    home = tmp_path / "minicnn-home"
    monkeypatch.setenv("MINICNN_HOME", str(home))
    for var in ("MINICNN_DATASETS", "MINICNN_OFFLINE", *URL_VARS):
        monkeypatch.delenv(var, raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    # No official URL and no official mirror stays reachable from a test.
    for mod in (cifar10, cifar100, mnist, fashion_mnist):
        for key, spec in list(mod.FILES.items()):
            monkeypatch.setitem(mod.FILES, key, FileSpec(spec.name, DEAD_URL + spec.name, spec.md5,
                                                         spec.size, ()))
    monkeypatch.setattr(mnist, "SYSTEM_DIRS", ())
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DIRS", ())
    monkeypatch.setattr(_download, "DEFAULT_BACKOFF", 0.0)
    monkeypatch.setattr(_download, "DEFAULT_TIMEOUT", 5.0)
    monkeypatch.setattr(_download, "DEFAULT_RETRIES", 2)
    return home / "datasets"


def listing(folder):
    """All paths under ``folder`` (relative, sorted), hidden ones included."""
    folder = Path(folder)
    if not folder.exists():
        return []
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------------------
# Local HTTP server
class FileServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 serving in-memory files.

    Attributes set by tests:

    - ``files``: URL path (without the leading ``/``) -> bytes.
    - ``cut``: how many of the next responses to cut after half their body (connection closed).
    - ``ranges``: honour ``Range: bytes=N-`` with a 206 answer.
    - ``stall``: seconds to wait before sending anything (bounded; ended at shutdown).
    - ``requests``: ``(path, range header)`` of each request received, in order.
    """

    def __init__(self):
        self.files = {}
        self.cut = 0
        self.ranges = False
        self.stall = 0.0
        self.requests = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path = self.path.lstrip("/")
                with server._lock:
                    server.requests.append((path, self.headers.get("Range")))
                    cut = server.cut > 0
                    if cut:
                        server.cut -= 1
                if server.stall:
                    server._stop.wait(server.stall)
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                wanted = self.headers.get("Range", "")
                if server.ranges and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[6:-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Content-Type", "application/octet-stream")
                self.end_headers()
                if cut:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.port}/"

    def url(self, name):
        return self.base + name

    def paths_requested(self):
        with self._lock:
            return [path for path, _ in self.requests]

    def close(self):
        self._stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def wait_until(predicate, timeout=2.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()
