"""Global settings: the active backend, thread counts and the random generator.

The backend decides which implementation of every op runs:

- ``'reference'``: plain loops, the readable text of backprop (slow on purpose);
- ``'numpy'``: vectorised NumPy, convolution as im2col / col2im (:mod:`minicnn.ops.numpy_ops`);
- ``'numba'``: parallel JIT kernels (the default).

It is chosen, in order of precedence, by :func:`use_backend` (a context
manager), :func:`set_backend`, the environment variable ``MINICNN_BACKEND``,
and finally the default ``'numba'``.
"""
from __future__ import annotations

import contextlib
import os

import numpy as np

def _ensure_numba_cache_dir() -> None:
    """Give Numba a writable cache directory (kernels use ``cache=True``).

    Numba caches beside the sources (``minicnn/ops/__pycache__``). When that is not
    writable (a read-only site-packages) and ``NUMBA_CACHE_DIR`` is unset, use
    ``$MINICNN_HOME/numba_cache`` (default ``~/.minicnn/numba_cache``). Runs before
    the kernels module is imported, which is when Numba reads the setting.
    """
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    ops_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops")
    pycache = os.path.join(ops_dir, "__pycache__")
    if os.access(pycache if os.path.isdir(pycache) else ops_dir, os.W_OK):
        return
    home = os.environ.get("MINICNN_HOME") or os.path.join(os.path.expanduser("~"), ".minicnn")
    fallback = os.path.join(home, "numba_cache")
    try:
        os.makedirs(fallback, exist_ok=True)
    except OSError:
        return
    os.environ["NUMBA_CACHE_DIR"] = fallback
    import sys
    if "numba" in sys.modules:  # already imported by the user: set its live config too
        sys.modules["numba"].config.CACHE_DIR = fallback


_ensure_numba_cache_dir()

BACKENDS = ("reference", "numpy", "numba")
DEFAULT_BACKEND = "numba"


def check_backend(name) -> str:
    """A backend name, lower-cased; ValueError naming the choices otherwise."""
    if not isinstance(name, str) or name.lower() not in BACKENDS:
        raise ValueError(
            f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}, received {name!r}")
    return name.lower()


def _initial_backend() -> str:
    env = os.environ.get("MINICNN_BACKEND")
    if env is None or env == "":
        return DEFAULT_BACKEND
    try:
        return check_backend(env)
    except ValueError as exc:
        raise ValueError(f"MINICNN_BACKEND: {exc}") from None


_backend = _initial_backend()


def get_backend() -> str:
    """Return the name of the active backend."""
    return _backend


def set_backend(name: str) -> None:
    """Select the backend for every op: 'reference', 'numpy' or 'numba'."""
    global _backend
    _backend = check_backend(name)
    apply_thread_policy()


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager that switches the backend and restores the previous one."""
    global _backend
    previous = _backend
    set_backend(name)
    try:
        yield _backend
    finally:
        _backend = previous
        apply_thread_policy()


# ----------------------------------------------------------------------------- threads
# Thread policy. On the numba backend Numba's pool owns the parallelism: each
# thread calls single-threaded BLAS on one image at a time, so every BLAS in the
# process (NumPy's and SciPy's, which Numba's np.dot calls) is limited to one
# thread. Leaving OpenBLAS its own threads next to Numba's made a training step
# 3x slower on 2 cores, and BLAS threads inside ``prange`` 40x slower (see
# benchmarks/RESULTS.md). On the numpy and reference backends BLAS gets the
# threads instead. The policy is reapplied whenever the backend or the thread
# count changes.
_num_threads = None          # requested with set_num_threads; None: BLAS's own default
_blas_default = None         # BLAS thread count found before minicnn changed it
_applied_limit = None        # the limit last applied, to skip redundant calls
_threadpool_controller = None
_controller_has_scipy = False


def _controller():
    global _threadpool_controller, _controller_has_scipy, _blas_default
    import sys
    has_scipy = "scipy.linalg.cython_blas" in sys.modules
    if _threadpool_controller is None or (has_scipy and not _controller_has_scipy):
        from threadpoolctl import ThreadpoolController
        _threadpool_controller = ThreadpoolController()
        _controller_has_scipy = has_scipy
        if _blas_default is None:
            counts = [lib.num_threads for lib in _threadpool_controller.lib_controllers
                      if lib.user_api == "blas"]
            _blas_default = max(counts) if counts else 1
    return _threadpool_controller


def apply_thread_policy() -> None:
    """Set every BLAS's thread count for the active backend (see the comment above)."""
    global _applied_limit
    try:
        if _backend == "numba":
            # Numba's np.dot calls SciPy's BLAS: load it first so that the limit reaches it
            import scipy.linalg.cython_blas  # noqa: F401
        ctrl = _controller()
        limit = 1 if _backend == "numba" else (_num_threads or _blas_default)
        if _applied_limit == (limit, id(ctrl)):
            return
        ctrl.limit(limits=limit, user_api="blas")
        _applied_limit = (limit, id(ctrl))
    except ImportError:  # pragma: no cover - threadpoolctl or SciPy missing
        pass


# ----------------------------------------------------------------------------- waiting threads
# Numba's OpenMP threading layer (GNU libgomp) lets a thread that reaches the end of a
# parallel region spin for a while (GOMP_SPINCOUNT: 300,000 turns by default, a few
# milliseconds) before it sleeps; with OMP_WAIT_POLICY=PASSIVE it sleeps at once. Which
# is better depends on whether the trainer adapts its thread count to the load
# (adapt_threads, below). Measured with benchmarks/contention.py (Intel Xeon family 6,
# 2 cores, 2026-12-07, benchmarks/RESULTS.md section 11), ms per step idle / with the
# other core kept busy:
#
#   seed model, adaptation on:    spinning 12.0 / 20.9    passive 14.4 / 21.4
#   residual net, adaptation on:  spinning 103.4 / 189.9  passive 120.1 / 193.1
#   seed model, adaptation off:   spinning 11.9 / 79.1    passive 15.1 / 22.5
#
# Idle, a sleeping thread costs a wake-up at each of the step's parallel regions (16-20%);
# under load the adapting trainer runs one thread, which no other thread waits for, so
# the policy hardly matters; without adaptation a spinning thread takes the time slices
# the descheduled one needs. So Numba's threads keep libgomp's default, and sleep at once
# (PASSIVE) only when MINICNN_ADAPT_THREADS=0. libgomp reads the variable once, when its
# threads start, so minicnn starts them itself before the first call that would (the
# numba backend loading, set_num_threads, get_num_threads, adapt_threads), setting the
# variable for that moment only (torch or TensorFlow loaded later keep their own
# defaults). A value you set yourself is left alone.
_wait_status = None


def _adaptation_off() -> bool:
    return os.environ.get("MINICNN_ADAPT_THREADS", "").strip() == "0"


def apply_wait_policy() -> str:
    """Start Numba's threads with minicnn's wait policy (see above); returns the status.

    Idempotent and cheap after the first call; every minicnn path that would start
    Numba's threads calls it first."""
    global _wait_status
    if _wait_status is not None:
        return _wait_status
    import numba
    if numba.config.DISABLE_JIT:     # the kernels run as Python: no thread pool starts
        _wait_status = "not used (NUMBA_DISABLE_JIT=1: the kernels run as Python)"
        return _wait_status
    user = os.environ.get("OMP_WAIT_POLICY")
    try:
        layer = numba.threading_layer()
    except ValueError:           # no parallel region ran yet: the layer is not loaded
        layer = None
    if layer is not None:
        _wait_status = (f"OMP_WAIT_POLICY={user} (yours)" if user is not None else
                        f"left alone: Numba's {layer} threads started before minicnn")
        return _wait_status
    passive = user is None and _adaptation_off()
    if passive:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        # Numba loads its threading layer (and with it libgomp, which reads the variable)
        # and starts the pool here; no kernel needs to run (3 ms, where running a cached
        # parallel kernel took 0.5 s on a backend that had loaded none)
        numba.get_num_threads()
    finally:
        if passive:
            del os.environ["OMP_WAIT_POLICY"]
    layer = numba.threading_layer()
    if user is not None:
        _wait_status = f"OMP_WAIT_POLICY={user} (yours)"
    elif layer != "omp":
        _wait_status = f"not used by Numba's {layer} layer"
    elif passive:
        _wait_status = "PASSIVE: waiting threads sleep at once (MINICNN_ADAPT_THREADS=0)"
    else:
        _wait_status = ("libgomp's default: waiting threads spin, then sleep (PASSIVE "
                        "when MINICNN_ADAPT_THREADS=0)")
    return _wait_status


# ----------------------------------------------------------------------------- threads under load
# Every parallel region ends when all its threads are done. When another process keeps a
# core busy, the thread that shares that core waits for a time slice at every region, and
# a seed-model step took 110 ms instead of 19.5 (5.5x; Keras 1.7x, PyTorch 5.6x: Intel
# Xeon, 2 cores, 2026-12-02, benchmarks/RESULTS.md), with the passive wait policy and the
# dynamic scheduling above in place. One thread is then faster: it runs on the free core
# at the one-thread speed. So once per training or inference step the trainer calls
# :func:`adapt_threads`, which at most every ADAPT_INTERVAL seconds reads how many CPUs
# other processes kept busy (``/proc/stat`` minus this process, minicnn.machine) and runs
# Numba on the CPUs left free, never more than the threads you set. MINICNN_ADAPT_THREADS=0
# switches it off (the thread count changes how partial sums round: a run that must be
# bitwise reproducible on a shared machine sets it, or set_num_threads(1)); ``minicnn info``
# shows what it did.
ADAPT_INTERVAL = 0.5
_adapt = {"sample": None, "status": "not started", "others": None}
_clock = None                # time.perf_counter; replaceable by the tests


def free_threads(base: int, cpus: int, others: float) -> int:
    """Threads to run when other processes keep ``others`` of ``cpus`` CPUs busy: the CPUs
    left, rounded to the nearest, at least 1 and at most ``base`` (e.g. 2 CPUs, another
    process at 0.9: 1 thread; at 0.3: 2)."""
    return max(1, min(int(base), int(cpus - others + 0.5)))


def adapt_threads() -> int:
    """Fit Numba's thread count to the CPUs other processes leave free (see above).

    Cheap: a clock read per call, two counter reads every ADAPT_INTERVAL seconds. Only on
    the numba backend, and only when more than one thread is allowed. Returns the thread
    count in effect.
    """
    import time

    import numba
    apply_wait_policy()
    clock = _clock or time.perf_counter
    base = _num_threads or numba.config.NUMBA_NUM_THREADS
    if _backend != "numba" or base <= 1 or _adaptation_off():
        return numba.get_num_threads()
    from . import machine
    now = clock()
    last = _adapt["sample"]
    if last is not None and now - last[2] < ADAPT_INTERVAL:
        return numba.get_num_threads()
    sample = (machine.machine_busy_seconds(), machine.own_cpu_seconds(), now)
    _adapt["sample"] = sample
    if last is None:
        return numba.get_num_threads()
    others = machine.others_cpus(last[0], sample[0], last[1], sample[1], now - last[2])
    if others is None:                                   # no /proc/stat: leave it
        return numba.get_num_threads()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    target = free_threads(base, cpus, others)
    if target != numba.get_num_threads():
        numba.set_num_threads(target)
    _adapt["others"] = others
    _adapt["status"] = (f"{target} of {base} threads (other processes kept {others:.2f} of "
                        f"{cpus} CPUs busy)")
    return target


def adapt_status() -> str:
    """What :func:`adapt_threads` last did (for ``minicnn info``)."""
    if _adaptation_off():
        return "off (MINICNN_ADAPT_THREADS=0)"
    return _adapt["status"]


# ----------------------------------------------------------------------------- malloc
# Every kernel call allocates its outputs and per-thread work buffers (0.1-2 MB each
# at batch 64). glibc serves the big ones with fresh mmap'd pages, or trims the heap
# after they are freed, so the next step faults the pages in again: 450 page faults
# and about 0.9 ms of system time per seed-model training step here, 7% of the step.
# Raising glibc's mmap and trim thresholds keeps those pages in the process: 5 faults
# per step. Applied once, when the numba backend loads; MINICNN_MALLOPT=0 leaves malloc
# alone. Freed memory below the trim threshold stays with the process instead of
# going back to the system.
MALLOC_MMAP_THRESHOLD = 32 * 2**20     # glibc's largest allowed value on 64-bit
MALLOC_TRIM_THRESHOLD = 64 * 2**20
_malloc_status = "not applied"


def tune_malloc() -> str:
    """Raise glibc's mmap and trim thresholds (see the comment above); returns the status."""
    global _malloc_status
    import platform
    if _malloc_status != "not applied":
        return _malloc_status
    if os.environ.get("MINICNN_MALLOPT", "").strip() == "0":
        _malloc_status = "left alone (MINICNN_MALLOPT=0)"
    elif platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        _malloc_status = "left alone (not glibc)"
    else:
        import ctypes
        try:
            mallopt = ctypes.CDLL(None).mallopt
            ok = (mallopt(-3, MALLOC_MMAP_THRESHOLD) == 1       # M_MMAP_THRESHOLD
                  and mallopt(-1, MALLOC_TRIM_THRESHOLD) == 1)  # M_TRIM_THRESHOLD
        except (OSError, AttributeError):
            ok = False
        _malloc_status = (f"glibc mmap threshold {MALLOC_MMAP_THRESHOLD >> 20} MiB, trim "
                          f"threshold {MALLOC_TRIM_THRESHOLD >> 20} MiB (MINICNN_MALLOPT=0 "
                          "to leave malloc alone)" if ok else "mallopt failed")
    return _malloc_status


def malloc_status() -> str:
    return _malloc_status


# ----------------------------------------------------------------------------- huge pages
# A batch's activations are 2-8 MB each (the residual network's first stage at batch 64),
# and every step writes and reads a few of them. In 4 KiB pages an 8 MB tensor is 2,048
# pages, as many as the CPU's second-level TLB holds: the kernels' walks over whole
# tensors miss it. Linux backs memory with 2 MiB transparent huge pages where a process
# asks (``madvise``, most distributions' default) and, with MADV_COLLAPSE (Linux 6.1),
# turns pages already in place into huge ones at once. So between steps, once the heap
# (where the tuned malloc above keeps these buffers) has stopped growing, settle_heap asks
# for huge pages under the part not asked for yet: a one-time copy of its pages (0.6 s
# for the residual network's 220 MB here), then no more. Measured on Intel Xeon family 6
# (2 cores, 2026-12-07, benchmarks/RESULTS.md 14), residual network, alternating:
# train_on_batch 99.1-103.2 -> 96.2-101.6 ms, predict_on_batch 26.0-26.8 -> 24.7-26.4 ms.
# MINICNN_HUGEPAGES=0 leaves the pages alone.
HUGE_PAGE = 2 * 2**20
HEAP_STEP = 32 * 2**20       # growth of the heap worth a collapse
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25
_heap = {"seen": None, "done": None, "checked": None, "status": "not applied"}


def _heap_range():
    """``(start, end)`` of the process's heap (from /proc/self/maps), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                if line.rstrip().endswith("[heap]"):
                    start, end = line.split()[0].split("-")
                    return int(start, 16), int(end, 16)
    except OSError:
        pass
    return None


def _madvise(addr: int, size: int, advice: int) -> int:
    """``madvise(addr, size, advice)``: 0, or the errno it failed with."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return 0 if libc.madvise(addr, size, advice) == 0 else ctypes.get_errno() or -1


def _huge_pages_off() -> str | None:
    """Why huge pages are left alone, or None."""
    import platform
    if os.environ.get("MINICNN_HUGEPAGES", "").strip() == "0":
        return "left alone (MINICNN_HUGEPAGES=0)"
    if platform.system() != "Linux":
        return "left alone (not Linux)"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return "left alone (transparent huge pages are off: [never])"
    except OSError:
        return "left alone (no transparent huge pages)"
    return None


def settle_heap() -> str:
    """Ask for 2 MiB pages under the heap's settled part (see above); returns the status.

    Cheap: a clock read per call; every ADAPT_INTERVAL seconds, one read of
    /proc/self/maps. Acts only when the heap has grown by HEAP_STEP or more since the
    last time and did not grow since the last look."""
    import time
    if _heap["status"].startswith("left alone"):
        return _heap["status"]
    now = (_clock or time.perf_counter)()
    if _heap["checked"] is not None and now - _heap["checked"] < ADAPT_INTERVAL:
        return _heap["status"]
    _heap["checked"] = now
    off = _huge_pages_off()
    heap = None if off else _heap_range()
    if heap is None:
        _heap["status"] = off or "left alone (no heap found)"
        return _heap["status"]
    start, end = heap
    first = -(-start // HUGE_PAGE) * HUGE_PAGE      # the heap's first whole 2 MiB page
    if _heap["done"] is None:
        _heap["done"] = first
    grown, _heap["seen"] = end != _heap["seen"], end
    top = end // HUGE_PAGE * HUGE_PAGE
    # a heap that malloc trimmed and grew again has new pages where it shrank
    _heap["done"] = min(_heap["done"], top)
    if grown or top - _heap["done"] < HEAP_STEP:
        return _heap["status"]
    lo, size = _heap["done"], top - _heap["done"]
    error = _madvise(lo, size, _MADV_HUGEPAGE)
    if error:
        _heap["status"] = f"left alone (madvise refused: errno {error})"
        return _heap["status"]
    collapsed = _madvise(lo, size, _MADV_COLLAPSE) == 0
    _heap["done"] = top
    _heap["status"] = (f"2 MiB pages asked for under {(top - first) >> 20} MiB of the heap"
                       + ("" if collapsed else " (for new pages only: MADV_COLLAPSE needs "
                          "Linux 6.1)") + " (MINICNN_HUGEPAGES=0 to leave them alone)")
    return _heap["status"]


def heap_status() -> str:
    """What :func:`settle_heap` last did (for ``minicnn info``)."""
    if _heap["status"] == "not applied":
        return _huge_pages_off() or ("none yet: asked for between training or inference "
                                     "steps once the heap stops growing (MINICNN_HUGEPAGES=0 "
                                     "to leave the pages alone)")
    return _heap["status"]


def between_steps() -> None:
    """The trainer's call before each training or inference step: :func:`adapt_threads`
    and :func:`settle_heap`."""
    adapt_threads()
    settle_heap()


def openblas_kernels() -> str:
    """The kernels each loaded OpenBLAS picked (threadpoolctl's architecture), and
    OPENBLAS_CORETYPE when it pins them; every benchmark should say which ran."""
    from threadpoolctl import threadpool_info
    archs = sorted({f"{lib.get('architecture') or '?'} (OpenBLAS {lib.get('version')})"
                    for lib in threadpool_info() if lib.get("internal_api") == "openblas"})
    pin = os.environ.get("OPENBLAS_CORETYPE")
    return (", ".join(archs) or "none loaded") + (f"; pinned by OPENBLAS_CORETYPE={pin}"
                                                  if pin else "")


def set_num_threads(n: int) -> None:
    """Set the number of threads minicnn uses.

    Numba's pool gets ``n`` threads. BLAS stays at one thread while the numba
    backend is active (Numba owns the parallelism); on the numpy and reference
    backends BLAS gets the ``n`` threads instead.
    """
    import numba
    global _num_threads, _applied_limit
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, received {n!r}")
    n = int(n)
    n_max = numba.config.NUMBA_NUM_THREADS
    if n > n_max:
        raise ValueError(
            f"set_num_threads: n must be at most {n_max} (NUMBA_NUM_THREADS), received {n}")
    apply_wait_policy()
    numba.set_num_threads(n)
    _num_threads = n
    _adapt["sample"] = None              # the next look starts from the new setting
    _applied_limit = None
    apply_thread_policy()


def get_num_threads() -> int:
    import numba
    apply_wait_policy()
    return numba.get_num_threads()


def threading_layer() -> str:
    """Name of Numba's threading layer (runs a tiny parallel kernel if none was chosen yet)."""
    import numba
    if numba.config.DISABLE_JIT:     # Python loops: Numba never loads a threading layer
        return "none (NUMBA_DISABLE_JIT=1: the kernels run as Python)"
    try:
        return numba.threading_layer()
    except ValueError:           # not started yet: start it as the numba backend does
        apply_wait_policy()
        return numba.threading_layer()


# ----------------------------------------------------------------------------- compile cache
#: seconds a cold compile of every kernel the shipped models use took (``minicnn compile``
#: with an empty NUMBA_CACHE_DIR, AMD Zen 4, 2 cores, 2026-12-01: 38 s for the seed model,
#: 51 s with the residual network; a warm start then took 0.8 s; 2026-12-02, Intel Xeon,
#: with each function compiled once per dtype: 41-45 s; then with the Winograd kernels and
#: the autotuner's measurements as well: 50-51 s, once 71 s; later that day, the seed model's
#: first run without ``minicnn compile`` (benchmarks/startup.py --runs 1 --no-other-ops,
#: one process): 55 s, then 46 s with fewer kernels and no shape-error formatting compiled;
#: ``minicnn compile`` in two processes 29 s)
COLD_COMPILE_SECONDS = 46


def kernels_cached() -> bool:
    """True when Numba's cache holds compiled convolution kernels for this installation
    (so the next run starts at once); False on a first run, which compiles for a while."""
    import glob
    cache_dir = os.environ.get("NUMBA_CACHE_DIR")
    root = cache_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops",
                                     "_kernels", "__pycache__")
    return bool(glob.glob(os.path.join(root, "**", "conv.*.nbi"), recursive=True))


def compile_notice() -> str | None:
    """The line to print before a first run's compile, or None when the cache is warm or
    the backend compiles nothing."""
    if get_backend() != "numba" or os.environ.get("NUMBA_DISABLE_JIT") == "1" \
            or kernels_cached():
        return None
    return (f"compiling kernels for this CPU (first run only, ~{COLD_COMPILE_SECONDS} s; "
            f"`minicnn compile` does it ahead of time)...")


# ----------------------------------------------------------------------------- randomness
_rng = np.random.default_rng()


def get_rng() -> np.random.Generator:
    """The generator behind every random choice minicnn makes (init, shuffling, dropout)."""
    return _rng


def set_rng(generator: np.random.Generator) -> None:
    """Make ``generator`` minicnn's generator (a resumed run continues its random draws)."""
    global _rng
    if not isinstance(generator, np.random.Generator):
        raise ValueError(f"set_rng: expected a numpy Generator, received {generator!r}")
    _rng = generator


def set_random_seed(seed: int) -> None:
    """Reseed minicnn's generator so that init, shuffling and dropout repeat exactly."""
    global _rng
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"set_random_seed: seed must be a non-negative integer, received {seed!r}")
    _rng = np.random.default_rng(int(seed))


# ----------------------------------------------------------------------------- dtypes
DTYPES = {"float32": np.float32, "float64": np.float64}


def check_dtype(dtype, owner: str = "dtype") -> np.dtype:
    """Normalise a dtype argument to np.float32 or np.float64 (``None`` means float32)."""
    if dtype is None:
        dtype = "float32"
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.name not in DTYPES:
        raise ValueError(f"{owner}: dtype must be 'float32' or 'float64', received {dtype!r}")
    return dt
