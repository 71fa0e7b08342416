"""Which convolution algorithm a Conv2D layer runs: im2col-GEMM or Winograd F(2x2, 3x3).

``Conv2D(..., algorithm="auto" | "im2col" | "winograd")``. Both compute the same
convolution; Winograd (3x3 kernels, stride 1 only) does 2.25x fewer multiplications
and rounds differently (float32: about 1e-6 of the output's scale, see
``tests/test_winograd.py``). ``"auto"`` resolves per layer shape:

- on the reference and numpy backends: im2col, the algorithm the walkthrough teaches;
- on the numba backend, where a layer is eligible (3x3, stride 1): the faster of the
  two *measured on this CPU* (the autotuner: the first time a shape is seen, one
  forward and backward pass of each, then the median of three, about 0.1-0.5 s per
  shape). Choices are cached per CPU, Numba thread count and threading layer in
  ``$MINICNN_HOME/conv-algorithms.json`` (default ``~/.minicnn``), so they hold
  from run to run; ``minicnn bench`` prints them.
- ``MINICNN_AUTOTUNE=0`` skips the measuring and uses a fixed rule instead: Winograd
  when the layer has at least :data:`WINOGRAD_MIN_CHANNELS` input channels (the
  measurements in benchmarks/RESULTS.md: Winograd lost on every 3-channel first layer
  and won on every wider one but one).

:func:`use` overrides ``"auto"`` for a block of code::

    with minicnn.ops.algorithms.use("im2col"):
        model.fit(...)
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import time

import numpy as np

from .. import config

ALGORITHMS = ("auto", "im2col", "winograd")
#: the fixed rule's threshold (``MINICNN_AUTOTUNE=0``): input channels for Winograd
WINOGRAD_MIN_CHANNELS = 16

_override = None            # set by use()
_memory = {}                # key -> choice, this process
_disk = None                # the cache file's entries for this machine, loaded once


def check(value, owner="Conv2D"):
    """``value`` if it names an algorithm, else a ValueError naming the choices."""
    if not isinstance(value, str) or value not in ALGORITHMS:
        raise ValueError(f"{owner}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                         f"received {value!r}")
    return value


def winograd_applies(kernel_shape, strides) -> bool:
    """Winograd F(2x2, 3x3) computes 3x3 kernels at stride 1 (any padding)."""
    return tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)


@contextlib.contextmanager
def use(algorithm):
    """Resolve every ``algorithm="auto"`` layer to ``algorithm`` inside the block."""
    global _override
    check(algorithm, "ops.algorithms.use")
    previous, _override = _override, (None if algorithm == "auto" else algorithm)
    try:
        yield
    finally:
        _override = previous


def resolve(algorithm, x_shape, kernel_shape, strides, pads, dtype, owner="Conv2D"):
    """The algorithm a layer runs for an input of ``x_shape``: ``'im2col'`` or ``'winograd'``.

    ``algorithm`` is the layer's setting; asking for Winograd where it does not apply
    (not 3x3, or strided) is a ValueError naming the layer.
    """
    eligible = winograd_applies(kernel_shape, strides)
    chosen = algorithm if algorithm != "auto" else _override
    if chosen == "winograd" and not eligible:
        raise ValueError(f"{owner}: algorithm='winograd' needs a 3x3 kernel and strides (1, 1), "
                         f"received kernel_size {tuple(kernel_shape[:2])} and strides "
                         f"{tuple(strides)}")
    if chosen is not None:
        return chosen
    if not eligible or config.get_backend() != "numba":
        return "im2col"
    if os.environ.get("MINICNN_AUTOTUNE", "").strip() == "0":
        return "winograd" if kernel_shape[2] >= WINOGRAD_MIN_CHANNELS else "im2col"
    key = _key(x_shape, kernel_shape, pads, dtype)
    choice = _memory.get(key) or _cached().get(key, {}).get("algorithm")
    if choice not in ("im2col", "winograd"):
        entry = measure(x_shape, kernel_shape, pads, dtype)
        choice = entry["algorithm"]
        _store(key, entry)
    _memory[key] = choice
    return choice


def measure(x_shape, kernel_shape, pads, dtype, repeats=3):
    """Time a forward and backward pass of both algorithms on random data of these shapes
    (numba backend; the first call of each, which may compile, is not timed).

    Returns ``{"algorithm": the faster, "im2col_ms": ..., "winograd_ms": ...}`` (medians).
    """
    from . import numba_ops as nb
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = (0.1 * rng.standard_normal(kernel_shape)).astype(dtype)
    bias = np.zeros(kernel_shape[3], dtype=dtype)

    def im2col():
        y = nb.conv2d_forward(x, kernel, bias, (1, 1), pads, relu=True)
        nb.conv2d_backward(x, kernel, y, (1, 1), pads, y=y)

    def winograd():
        y = nb.winograd_conv2d_forward(x, kernel, bias, pads, relu=True)
        nb.winograd_conv2d_backward(x, kernel, y, pads, y=y)

    runs = {"im2col": im2col, "winograd": winograd}
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(repeats):                  # alternate, so drift hits both alike
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"algorithm": min(med, key=med.get),
            "im2col_ms": round(med["im2col"] * 1e3, 3),
            "winograd_ms": round(med["winograd"] * 1e3, 3)}


def choices():
    """This machine's cached choices: ``{shape key: entry}`` (see :func:`measure`)."""
    return dict(_cached())


def cache_path():
    home = os.environ.get("MINICNN_HOME") or os.path.join(os.path.expanduser("~"), ".minicnn")
    return os.path.join(home, "conv-algorithms.json")


def machine_key():
    """The CPU, Numba's thread count and its threading layer: what the timings depend on."""
    import numba
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu} | {numba.get_num_threads()} threads | {config.threading_layer()}"


def _key(x_shape, kernel_shape, pads, dtype):
    n, h, w, c = x_shape
    return (f"x {n}x{h}x{w}x{c} kernel {'x'.join(map(str, kernel_shape))} "
            f"pads {','.join(map(str, pads))} {np.dtype(dtype).name}")


def _read_file():
    try:
        with open(cache_path(), encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):              # absent or damaged: measure again
        return {}


def _cached():
    global _disk
    if _disk is None:
        entries = _read_file().get(machine_key(), {})
        _disk = entries if isinstance(entries, dict) else {}
    return _disk


def _store(key, entry):
    _cached()[key] = entry
    path = cache_path()
    data = _read_file()
    data.setdefault(machine_key(), {})
    if not isinstance(data[machine_key()], dict):
        data[machine_key()] = {}
    data[machine_key()][key] = entry
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:                             # a read-only home: keep it in memory only
        pass
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def clear():
    """Forget the choices made in this process (the file stays)."""
    global _disk
    _memory.clear()
    _disk = None
