"""The model file format: one ``.npz`` holding a JSON header and plain arrays, never a pickle.

``Sequential.save`` / ``save_weights`` write it and ``load_model`` / ``load_weights``
read it (:mod:`minicnn.models`). The header ``__minicnn__.json`` is UTF-8 JSON stored
as a uint8 array: the architecture (each layer's class name and config), the input
shape, the compile settings, the optimizer's iteration count and the random
generators' states. The arrays are ``weights/<layer>/<param>`` and
``optimizer/<layer>/<param>/<slot>``. Reading uses ``np.load(allow_pickle=False)``
after checking the file is a zip archive at all.
"""
from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np

FORMAT = "minicnn-model"
FORMAT_VERSION = 1


def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def layer_from_config(cls, cfg):
    cfg = dict(cfg)
    for key in ("kernel_size", "strides", "pool_size", "input_shape", "height_factor",
                "width_factor"):
        if isinstance(cfg.get(key), list):
            cfg[key] = tuple(cfg[key])
    return cls(**cfg)


def jsonable_rng(rng):
    if rng is None:
        return None
    state = rng.bit_generator.state
    return json.loads(json.dumps(state, default=int))


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def rng_from_json(state):
    name = state["bit_generator"]
    if name not in _BIT_GENERATORS:       # never call whatever a file names
        raise ValueError(f"unknown bit generator {name!r}")
    bitgen = getattr(np.random, name)()
    bitgen.state = state
    return np.random.Generator(bitgen)


def _json_default(value):
    """NumPy scalars in layer configs (``Dropout(np.float32(0.5))``) as plain numbers."""
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot save {value!r} ({type(value).__name__}) in a model file")


def write_file(path, meta, arrays):
    path = os.fspath(path)
    buf = io.BytesIO()
    text = json.dumps(meta, default=_json_default)
    payload = {"__minicnn__.json": np.frombuffer(text.encode("utf-8"), dtype=np.uint8)}
    payload.update({k: np.ascontiguousarray(v) for k, v in arrays.items()})
    np.savez(buf, **payload)
    # write then rename, so that a crash never leaves a half-written model behind
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_file(path, what):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: no such file {path!r}")
    not_ours = (f"{what}: {path!r} is not a minicnn model file "
                f"(written by Sequential.save or save_weights)")
    if not zipfile.is_zipfile(path):    # a .npy, a pickle, random bytes: never handed to np.load
        raise ValueError(f"{not_ours}: not an .npz archive")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "__minicnn__.json" not in data.files:
                raise ValueError("no minicnn header")
            meta = json.loads(data["__minicnn__.json"].tobytes().decode("utf-8"))
            # object arrays raise here: allow_pickle=False refuses to unpickle them
            arrays = {k: data[k] for k in data.files if k != "__minicnn__.json"}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError, UnicodeDecodeError,
            RuntimeError) as exc:
        raise ValueError(f"{not_ours}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{what}: {path!r} is not a minicnn model file (wrong header)")
    if not _is_int(meta.get("version", 0)) or meta.get("version", 0) > FORMAT_VERSION:
        raise ValueError(f"{what}: {path!r} was written by a newer minicnn "
                         f"(format version {meta.get('version')})")
    return meta, arrays
