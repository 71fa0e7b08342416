"""Shared helpers of the benchmark suites and scripts in ``benchmarks/``.

- the seed model (the Keras CIFAR-10 tutorial CNN, 319,178 parameters) and a random
  batch for it;
- the shapes of each of its layers and the FLOP counts derived from them;
- what the machine is (CPU, cores, versions, Numba threading layer, BLAS threads),
  printed at the top of every script so its output can be pasted into RESULTS.md;
- :func:`numpy_gemm_gflops`, the float32 GEMM rate NumPy's BLAS reaches here (the
  roof the conv kernels are compared with);
- :func:`time_calls`, medians of repeated calls after an untimed warm-up.

Imported as ``_common`` by the scripts (``python benchmarks/NAME.py`` puts this
folder first on ``sys.path``) and by the pytest suites (pytest's default
``prepend`` import mode does the same for a folder without ``__init__.py``).
"""
from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass

import numpy as np

SEED_PARAMS = 319_178
NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)

#: batch per backend: the reference backend is plain Python loops, so it runs one image
BATCH = {"reference": 1, "numpy": 64, "numba": 64}


# ----------------------------------------------------------------------------- seed model
def seed_model(dtype="float32", optimizer="adam"):
    """The seed CNN, built and compiled as in the seed program (Adam, categorical CE).

    Conv2D(32, 3x3, relu, same) -> MaxPool 2x2 -> Conv2D(64, 3x3, relu, same) -> MaxPool
    -> Conv2D(64, 3x3, relu, same) -> Flatten (4096) -> Dense(64, relu) -> Dense(10, softmax)
    """
    from minicnn import layers, models
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", padding="same", input_shape=IMAGE_SHAPE,
                      dtype=dtype),
        layers.MaxPooling2D((2, 2), dtype=dtype),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same", dtype=dtype),
        layers.MaxPooling2D((2, 2), dtype=dtype),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same", dtype=dtype),
        layers.Flatten(dtype=dtype),
        layers.Dense(64, activation="relu", dtype=dtype),
        layers.Dense(NUM_CLASSES, activation="softmax", dtype=dtype),
    ])
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")
    n_params = model.count_params()
    if n_params != SEED_PARAMS:
        raise RuntimeError(f"seed model: expected {SEED_PARAMS:,} parameters, built {n_params:,}")
    return model


def seed_batch(batch, dtype=np.float32, seed=0):
    """A random batch for the seed model: images in [0, 1) and one-hot labels (float32)."""
    rng = np.random.default_rng(seed)
    x = rng.random((batch,) + IMAGE_SHAPE, dtype=np.float64).astype(dtype)
    y = np.eye(NUM_CLASSES, dtype=np.float32)[rng.integers(0, NUM_CLASSES, size=batch)]
    return x, y


@dataclass(frozen=True)
class ConvShape:
    """One 3x3, stride-1, 'same' convolution of the seed model (per image: h x w x c -> f)."""
    name: str
    h: int
    w: int
    c: int
    f: int
    kh: int = 3
    kw: int = 3

    @property
    def pads(self):
        return (self.kh // 2, self.kh // 2, self.kw // 2, self.kw // 2)

    @property
    def gemm(self):
        """The per-image GEMM ``(oh*ow, kh*kw*c) @ (kh*kw*c, f)`` as ``(m, k, n)``."""
        return (self.h * self.w, self.kh * self.kw * self.c, self.f)

    def flops(self, n):
        """FLOPs of the forward pass over ``n`` images: ``2 n oh ow kh kw c f``.

        The weight gradient and the data gradient each cost the same amount.
        """
        return 2 * n * self.h * self.w * self.kh * self.kw * self.c * self.f


CONVS = {
    "conv1": ConvShape("conv1", 32, 32, 3, 32),
    "conv2": ConvShape("conv2", 16, 16, 32, 64),
    "conv3": ConvShape("conv3", 8, 8, 64, 64),
}
#: the max-pools follow conv1 and conv2: (h, w, c) of their input
POOLS = {"pool1": (32, 32, 32), "pool2": (16, 16, 64)}
#: the dense layers: (in_features, units)
DENSES = {"dense1": (4096, 64), "dense2": (64, NUM_CLASSES)}
#: every parameter array of the seed model, in the optimizer's order
PARAM_SHAPES = (
    (3, 3, 3, 32), (32,), (3, 3, 32, 64), (64,), (3, 3, 64, 64), (64,),
    (4096, 64), (64,), (64, NUM_CLASSES), (NUM_CLASSES,),
)
assert sum(int(np.prod(s)) for s in PARAM_SHAPES) == SEED_PARAMS


def dense_flops(n, k, u):
    """FLOPs of ``(n, k) @ (k, u)``: ``2 n k u`` (each of dkernel and dx costs the same)."""
    return 2 * n * k * u


# ----------------------------------------------------------------------------- timing
def time_calls(fn, steps, warmup=1):
    """Run ``fn`` ``warmup`` times untimed, then ``steps`` times; return the times in seconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(values):
    return statistics.median(values)


# ----------------------------------------------------------------------------- GEMM roof
def numpy_gemm_gflops(threads, n=2048, shape=None, dtype=np.float32, repeats=None,
                      min_time=0.3):
    """Median GFLOP/s of NumPy's float32 ``a @ b`` with BLAS limited to ``threads`` threads.

    Parameters
    ----------
    threads : int, the BLAS thread limit (threadpoolctl) for the measurement
    n : int, the size of a square GEMM ``(n, n) @ (n, n)`` (ignored when ``shape`` is given)
    shape : (m, k, p) or None, a rectangular GEMM ``(m, k) @ (k, p)``, e.g. a per-image conv
    repeats : int or None; timed calls, by default as many as fit in about ``min_time`` s
        (at least 5). Each call writes into a preallocated output (``np.matmul(out=...)``).

    Returns
    -------
    float : ``2 m k p / median(seconds)`` / 1e9. The previous BLAS limits are restored.
    """
    from threadpoolctl import threadpool_limits
    m, k, p = (n, n, n) if shape is None else shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k)).astype(dtype)
    b = rng.standard_normal((k, p)).astype(dtype)
    out = np.empty((m, p), dtype=dtype)
    with threadpool_limits(limits=int(threads), user_api="blas"):
        np.matmul(a, b, out=out)                  # warm-up: BLAS threads started, pages touched
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        once = max(time.perf_counter() - t0, 1e-7)
        if repeats is None:
            repeats = int(min(max(5, min_time / once), 2000))
        times = time_calls(lambda: np.matmul(a, b, out=out), repeats, warmup=0)
    return 2.0 * m * k * p / median(times) / 1e9


# ----------------------------------------------------------------------------- machine
def cpu_model():
    """The CPU's model name with its family and model number (minicnn.machine reads them)."""
    from minicnn import machine
    info = machine.cpu_info()
    ident = (f", family {info['family']} model {info['model']}"
             if info["family"] is not None else "")
    return f"{info['model_name']}{ident}"


def cpu_flags():
    """The SIMD extensions of interest listed in /proc/cpuinfo (avx2, avx512f, fma)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f") if f in flags]
    except OSError:
        pass
    return []


def blas_threads():
    """``{library: num_threads}`` of every BLAS threadpoolctl sees in the process."""
    from threadpoolctl import threadpool_info
    out = {}
    for info in threadpool_info():
        if info.get("user_api") == "blas":
            name = f"{info.get('internal_api')}:{os.path.basename(info.get('filepath', ''))}"
            out[name] = info.get("num_threads")
    return out


def machine_info():
    """What the numbers were measured on, as a dict of short strings and numbers."""
    import numba
    import minicnn
    from minicnn import config, ops
    ops.backend_module()        # load the active backend: the numba one sets the BLAS limit
    try:
        layer = config.threading_layer()
    except Exception as exc:  # report, don't fail over metadata
        layer = f"unknown ({type(exc).__name__})"
    try:
        import scipy
        scipy_version = scipy.__version__
    except ImportError:  # pragma: no cover
        scipy_version = "missing"
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu": cpu_model(),
        "simd": ",".join(cpu_flags()) or "?",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "scipy": scipy_version,
        "minicnn": minicnn.__version__,
        "backend": config.get_backend(),
        "threads": minicnn.get_num_threads(),
        "threading_layer": layer,
        "blas_threads": blas_threads(),
        "blas_kernels": config.openblas_kernels(),
        "loadavg": tuple(round(v, 2) for v in load),
    }


def command_line():
    """The command that ran this process, quoted so it can be pasted into a shell."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def print_header(title, info=None, command=None, file=None):
    """Print the title, the exact command and the machine as markdown."""
    info = machine_info() if info is None else info
    out = file or sys.stdout
    print(f"## {title}\n", file=out)
    print(f"Command: `{command or command_line()}`\n", file=out)
    print(f"- CPU: {info['cpu']} ({info['cores']} cores, {info['simd']})", file=out)
    print(f"- Python {info['python']}, NumPy {info['numpy']}, Numba {info['numba']}, "
          f"SciPy {info['scipy']}, minicnn {info['minicnn']}", file=out)
    print(f"- Numba threading layer: {info['threading_layer']}, minicnn threads: "
          f"{info['threads']}, BLAS threads: {info['blas_threads']}", file=out)
    print(f"- BLAS kernels: {info['blas_kernels']}", file=out)
    print(f"- load average (1, 5, 15 min) at start: {info['loadavg']}\n", file=out)
    out.flush()


def markdown_table(header, rows):
    """A markdown table as a string; cells are converted with ``str``."""
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
