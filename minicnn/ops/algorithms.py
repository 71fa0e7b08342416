"""Which convolution algorithm a Conv2D layer runs: im2col-GEMM or Winograd.

``Conv2D(..., algorithm="auto" | "im2col" | "winograd" | "winograd4")``. All compute the
same convolution. Winograd (3x3 kernels, stride 1 only) multiplies less and rounds
differently: ``"winograd"`` is F(2x2, 3x3), 2.25x fewer multiplications, both passes
(float32: within 2e-6 of the output's scale, ``tests/test_winograd.py``);
``"winograd4"`` is F(4x4, 3x3) for the forward pass, 4x fewer (within 5e-6,
``tests/test_winograd4.py``), with F(2x2, 3x3)'s backward, since the backward of any of
them needs only x, the kernel, dy and y. ``"auto"`` resolves per layer shape:

- on the reference and numpy backends: im2col, the algorithm the walkthrough teaches;
- on the numba backend, where a layer is eligible (3x3, stride 1): the faster of the
  algorithms *measured on this CPU*, for the forward pass (im2col or F(4x4, 3x3),
  :data:`AUTO_FORWARD`) and for the backward pass (im2col or F(2x2, 3x3)) separately,
  so a layer can run Winograd forward and im2col backward. F(2x2, 3x3)'s forward is not
  a candidate: at batch 64 F(4x4, 3x3) beat it on every shape measured (RESULTS.md 10),
  and leaving it out keeps its kernel out of ``minicnn compile`` (it compiles on first
  use, for a layer that asks for ``"winograd"`` by name). The autotuner times one pass of each
  the first time it sees a shape, then keeps the fastest of five (about 0.1-0.5 s per
  shape). Choices are cached per CPU, Numba thread count, threading layer and
  kernel revision in ``$MINICNN_HOME/conv-algorithms.json`` (default ``~/.minicnn``),
  so they hold from run to run; one timed while other processes kept the machine busy
  (:data:`BUSY_CPUS`) is kept for the process only.
- ``MINICNN_AUTOTUNE=0`` skips the measuring and uses a fixed rule instead (from the
  measurements in benchmarks/RESULTS.md): Winograd forward when the layer has at least
  :data:`WINOGRAD_MIN_CHANNELS` input channels (it lost on every 3-channel first layer
  and won on every wider one), by F(4x4, 3x3); Winograd backward when the output has
  at least :data:`WINOGRAD_MIN_BACKWARD_PIXELS` pixels too
  (RESULTS.md 9c: it won every backward from 8x8 up with 32 or more channels,
  1.06-1.93x; smaller outputs are untested).

:func:`use` overrides ``"auto"`` for a block of code, and the environment variable
``MINICNN_CONV_ALGORITHM=im2col|winograd|winograd4`` for a whole process (a benchmark's switch)::

    with minicnn.ops.algorithms.use("im2col"):
        model.fit(...)
"""
from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np

from .. import config

ALGORITHMS = ("auto", "im2col", "winograd", "winograd4")
#: the algorithms of each pass: a backward pass runs im2col or F(2x2, 3x3)
FORWARD_ALGORITHMS = ("im2col", "winograd", "winograd4")
BACKWARD_ALGORITHMS = ("im2col", "winograd")
#: the forward candidates of "auto" (the autotuner's and the fixed rule's)
AUTO_FORWARD = ("im2col", "winograd4")
#: the Winograd algorithms (3x3 kernels at stride 1 only)
WINOGRAD = ("winograd", "winograd4")
#: the fixed rule's threshold (``MINICNN_AUTOTUNE=0``): input channels for Winograd
WINOGRAD_MIN_CHANNELS = 16
#: and output pixels (oh * ow) for a Winograd backward pass
WINOGRAD_MIN_BACKWARD_PIXELS = 64

_override = None            # set by use()
_memory = {}                # (shapes, dtype) -> choice, this process
_disk = None                # the cache file's entries for this machine, loaded once


def check(value, owner="Conv2D"):
    """``value`` if it names an algorithm, else a ValueError naming the choices."""
    if not isinstance(value, str) or value not in ALGORITHMS:
        raise ValueError(f"{owner}: algorithm must be one of {', '.join(map(repr, ALGORITHMS))}, "
                         f"received {value!r}")
    return value


def winograd_applies(kernel_shape, strides) -> bool:
    """Winograd F(2x2, 3x3) and F(4x4, 3x3) compute 3x3 kernels at stride 1 (any padding)."""
    return tuple(kernel_shape[:2]) == (3, 3) and tuple(strides) == (1, 1)


def check_applies(algorithm, kernel_shape, strides, owner="Conv2D"):
    """A ValueError naming ``owner`` when ``algorithm`` is a Winograd one and the layer is
    not a 3x3, stride-1 convolution."""
    if algorithm in WINOGRAD and not winograd_applies(kernel_shape, strides):
        raise ValueError(f"{owner}: algorithm={algorithm!r} needs kernel_size (3, 3) and strides "
                         f"(1, 1), received kernel_size {tuple(kernel_shape[:2])} and strides "
                         f"{tuple(strides)}")


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
    """The algorithms a layer runs for an input of ``x_shape``: ``(forward, backward)``,
    the forward one of :data:`FORWARD_ALGORITHMS`, the backward one of
    :data:`BACKWARD_ALGORITHMS` (``'winograd4'`` asked for runs F(2x2, 3x3) backward).

    ``algorithm`` is the layer's setting; asking for Winograd where it does not apply
    (not 3x3, or strided) is a ValueError naming the layer.
    """
    eligible = winograd_applies(kernel_shape, strides)
    chosen = algorithm if algorithm != "auto" else forced()
    if chosen in WINOGRAD and not eligible and algorithm == "auto":
        chosen = None                           # a process-wide choice: where it applies
    check_applies(chosen, kernel_shape, strides, owner)
    if chosen is not None:
        return chosen, ("winograd" if chosen == "winograd4" else chosen)
    if not eligible or config.get_backend() != "numba":
        return "im2col", "im2col"
    if os.environ.get("MINICNN_AUTOTUNE", "").strip() == "0":
        _, h, w, c = x_shape
        wide = kernel_shape[2] >= WINOGRAD_MIN_CHANNELS
        pixels = (h + pads[0] + pads[1] - 2) * (w + pads[2] + pads[3] - 2)
        return ("winograd4" if wide else "im2col",
                "winograd" if wide and pixels >= WINOGRAD_MIN_BACKWARD_PIXELS else "im2col")
    shapes = (tuple(x_shape), tuple(kernel_shape), tuple(pads), np.dtype(dtype).name)
    choice = _memory.get(shapes)              # the hot path: one dict lookup per pass
    if choice is None:
        key = _key(*shapes)
        entry = _cached()[1].get(key)
        if not _valid(entry):
            entry = measure(x_shape, kernel_shape, pads, dtype)
            busy = entry.get("others_cpus")
            if busy is None or busy <= BUSY_CPUS:
                _store(key, entry)              # else: this process only; measured again
        choice = (entry["forward"], entry["backward"])
        _memory[shapes] = choice
    return choice


def forced():
    """The algorithm ``use()`` or ``MINICNN_CONV_ALGORITHM`` sets for ``"auto"`` layers, or
    None when neither does (then ``"auto"`` layers follow the autotuner or the rule)."""
    return _override or _from_environment()


def _from_environment():
    value = os.environ.get("MINICNN_CONV_ALGORITHM", "").strip()
    if not value or value == "auto":
        return None
    return check(value, "MINICNN_CONV_ALGORITHM")


def _valid(entry):
    return (isinstance(entry, dict) and entry.get("forward") in FORWARD_ALGORITHMS
            and entry.get("backward") in BACKWARD_ALGORITHMS)


#: other processes' CPUs (``/proc/stat``) above which a measurement is not written to the
#: cache file: a choice timed while the machine was busy is used for this process only
BUSY_CPUS = 0.25


def measure(x_shape, kernel_shape, pads, dtype, repeats=5):
    """Time the forward pass of each of :data:`AUTO_FORWARD` and the backward pass of
    each of :data:`BACKWARD_ALGORITHMS` on random data of these shapes (numba backend;
    the first call of each, which may compile, is not timed).

    Returns ``{"forward": the faster, "backward": the faster, "forward_im2col_ms": ...,
    "forward_winograd4_ms": ..., "backward_im2col_ms": ..., "backward_winograd_ms": ...,
    "others_cpus": ...}``: the fastest of ``repeats`` alternating calls of each (noise
    only ever adds time: one slow call, another process taking the core for a moment,
    cannot flip the choice as it could a median of three), and the CPUs other processes
    kept busy meanwhile (:class:`minicnn.machine.LoadMeter`; None when unknown).
    """
    from .. import machine
    from . import numba_ops as nb
    rng = np.random.default_rng(0)
    dtype = np.dtype(dtype)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = (0.1 * rng.standard_normal(kernel_shape)).astype(dtype)
    bias = np.zeros(kernel_shape[3], dtype=dtype)

    passes = {
        ("forward", "im2col"): lambda: nb.conv2d_forward(x, kernel, bias, (1, 1), pads,
                                                         relu=True),
        ("forward", "winograd4"): lambda: nb.winograd4_conv2d_forward(x, kernel, bias, pads,
                                                                      relu=True),
    }
    y = passes["forward", "im2col"]()
    passes["backward", "im2col"] = lambda: nb.conv2d_backward(x, kernel, y, (1, 1), pads, y=y)
    passes["backward", "winograd"] = lambda: nb.winograd_conv2d_backward(x, kernel, y, pads, y=y)
    times = {key: [] for key in passes}
    for fn in passes.values():
        fn()
    with machine.LoadMeter(min_wall=0.1) as meter:
        for _ in range(repeats):              # alternate, so drift hits both alike
            for key, fn in passes.items():
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
    best = {key: min(t) for key, t in times.items()}
    entry = {}
    for p, names in (("forward", AUTO_FORWARD), ("backward", BACKWARD_ALGORITHMS)):
        entry[p] = min(names, key=lambda a: best[p, a])
        for a in names:
            entry[f"{p}_{a}_ms"] = round(best[p, a] * 1e3, 3)
    entry["others_cpus"] = (None if meter.others_cpus is None
                            else round(meter.others_cpus, 3))
    return entry


def choices():
    """This machine's cached choices: ``{shape key: entry}`` (see :func:`measure`)."""
    return dict(_cached()[1])


def cache_path():
    home = os.environ.get("MINICNN_HOME") or os.path.join(os.path.expanduser("~"), ".minicnn")
    return os.path.join(home, "conv-algorithms.json")


#: the revision of the conv kernels the cached timings were taken with: raised when a change
#: moves their speed (2: the Winograd kernel transform as a kernel, Winograd dx after the
#: fused pool; 3: Winograd GEMMs of about 128 tiles; 4: F(4x4, 3x3) forward instead of
#: F(2x2, 3x3)'s; 5: F(4x4, 3x3)'s output transform vectorised for 32 filters), so that
#: choices measured on the old kernels are measured again
KERNELS_REVISION = 5


def machine_key():
    """The CPU, Numba's thread count, its threading layer and :data:`KERNELS_REVISION`:
    what the timings depend on."""
    from .. import machine
    cpu = machine.cpu_info()["model_name"]
    return (f"{cpu} | {config.get_num_threads()} threads | {config.threading_layer()} | "
            f"kernels r{KERNELS_REVISION}")


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
    """This process's view of the cache file: ``(machine key, {shape key: entry})``, read
    once. The machine key is taken at that first look, so the thread governor dropping a
    thread for a while does not send later choices to another machine's entries."""
    global _disk
    if _disk is None:
        key = machine_key()
        entries = _read_file().get(key, {})
        _disk = (key, entries if isinstance(entries, dict) else {})
    return _disk


def _store(key, entry):
    from ..saving import write_atomically
    machine, entries = _cached()
    entries[key] = entry
    path = cache_path()
    data = _read_file()                         # another process may have added entries
    if not isinstance(data.get(machine), dict):
        data[machine] = {}
    data[machine][key] = entry
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_atomically(path, json.dumps(data, indent=1, sort_keys=True).encode("utf-8"))
    except OSError:                             # a read-only home: keep it in memory only
        pass


def clear():
    """Forget the choices made in this process (the file stays)."""
    global _disk
    _memory.clear()
    _disk = None
