"""What the machine is, and whether it was quiet while something was timed.

A benchmark number means little without the CPU it ran on, the GEMM roof of that CPU and
the load other processes put on it. This module gives ``minicnn bench``, ``minicnn info``
and the scripts in ``benchmarks/`` one way to say so:

- :func:`cpu_info` / :func:`describe_cpu`: model name, vendor, family and model number,
  the SIMD extensions that decide which OpenBLAS kernels load (``/proc/cpuinfo``);
- :func:`openblas_isa` / :func:`describe_openblas`: what an OpenBLAS kernel name
  (threadpoolctl's ``architecture``) means, against the CPU's own extensions;
- :class:`LoadMeter`: how many CPUs *other* processes kept busy over an interval, from
  ``/proc/stat`` (the whole machine, steal time included) minus this process's own CPU
  time; :func:`others_cpus` is its arithmetic;
- :func:`load_warnings`: the warnings a benchmark prints from that load and from the
  one- and n-thread GEMM roofs (a roof that does not scale means a core was taken);
- :func:`spread` / :func:`format_spread`: median, min-max and quartiles of repeats.

The parsing and the warning rules are pure functions of their inputs (tested on
synthetic ``/proc`` text and numbers); only :class:`LoadMeter` and the ``read_*``
helpers touch the system.
"""
from __future__ import annotations

import os
import platform
import resource
import time

import numpy as np

#: SIMD extensions reported, in this order (what OpenBLAS's kernel choice depends on)
SIMD_FLAGS = ("avx2", "fma", "avx512f")

#: other processes may keep this many CPUs busy before a timing is called unreliable
BUSY_CPUS_THRESHOLD = 0.25

#: an n-thread GEMM roof below this multiple of the one-thread roof is suspicious
MIN_ROOF_SCALING = 1.3

#: seconds a :class:`LoadMeter` needs: /proc/stat counts in ticks of 10 ms (on every CPU),
#: so over 0.05 s one tick alone would read as 0.2 CPUs
MIN_WALL = 0.25

#: OpenBLAS kernel families (threadpoolctl's ``architecture``, lower case) by instruction set
OPENBLAS_ISA = {
    "AVX-512": ("skylakex", "cooperlake", "sapphirerapids"),
    "AVX2": ("haswell", "zen", "skylake", "alderlake"),
    "AVX": ("sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"),
    "SSE": ("prescott", "core2", "penryn", "dunnington", "nehalem", "opteron", "barcelona",
            "atom", "nano", "katmai", "coppermine", "northwood", "banias"),
}


# ----------------------------------------------------------------------------- the CPU
def read_text(path):
    """The text of ``path``, or None when it cannot be read (not Linux, no /proc)."""
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def cpu_info(cpuinfo_text=None):
    """``{'model_name', 'vendor', 'family', 'model', 'simd', 'cpus'}`` of this machine.

    Parameters
    ----------
    cpuinfo_text : str or None
        the text of ``/proc/cpuinfo`` (read when None); only its first processor block is
        used. Off Linux the model name falls back to :func:`platform.processor`.

    ``family`` and ``model`` are ints or None; ``simd`` is the list of :data:`SIMD_FLAGS`
    the CPU has, in that order; ``cpus`` is ``os.cpu_count()``.
    """
    text = read_text("/proc/cpuinfo") if cpuinfo_text is None else cpuinfo_text
    fields = {}
    for line in (text or "").splitlines():
        if not line.strip():
            if fields:
                break                      # the first processor block is enough
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())

    def number(key):
        try:
            return int(fields[key])
        except (KeyError, ValueError):
            return None

    flags = set(fields.get("flags", "").split())
    return {
        "model_name": fields.get("model name") or platform.processor() or platform.machine(),
        "vendor": fields.get("vendor_id"),
        "family": number("cpu family"),
        "model": number("model"),
        "simd": [f for f in SIMD_FLAGS if f in flags],
        "cpus": os.cpu_count(),
    }


def describe_cpu(info=None):
    """One line: ``Intel(R) Xeon(R) Processor (GenuineIntel family 6 model 167; avx2 fma
    avx512f; 2 CPUs)`` from :func:`cpu_info`'s dict (read when None)."""
    info = cpu_info() if info is None else info
    ident = " ".join(p for p in (info.get("vendor"),
                                 None if info.get("family") is None else f"family {info['family']}",
                                 None if info.get("model") is None else f"model {info['model']}")
                     if p)
    simd = " ".join(info.get("simd") or []) or "no AVX2/AVX-512"
    parts = [p for p in (ident, simd, f"{info.get('cpus')} CPUs") if p]
    return f"{info.get('model_name')} ({'; '.join(parts)})"


def cpu_isa(simd):
    """The widest of AVX-512 / AVX2 / older that a CPU with ``simd`` flags runs."""
    if "avx512f" in simd:
        return "AVX-512"
    return "AVX2" if "avx2" in simd else "SSE/AVX"


def openblas_isa(architecture):
    """The instruction set of an OpenBLAS kernel family (``'SkylakeX'`` -> ``'AVX-512'``),
    or None for a name not in :data:`OPENBLAS_ISA`."""
    name = (architecture or "").lower()
    return next((isa for isa, names in OPENBLAS_ISA.items() if name in names), None)


def describe_openblas(architecture, simd, coretype=None):
    """How to read one OpenBLAS's kernel choice on this CPU, as one short sentence.

    Parameters
    ----------
    architecture : str or None, threadpoolctl's ``architecture`` (e.g. ``'SkylakeX'``)
    simd : list of str, the CPU's :data:`SIMD_FLAGS` (:func:`cpu_info`'s ``simd``)
    coretype : str or None, the ``OPENBLAS_CORETYPE`` environment variable

    The sentence says which instruction set the kernels use, whether ``OPENBLAS_CORETYPE``
    chose them, and whether they are narrower than what the CPU runs.
    """
    isa = openblas_isa(architecture)
    kernels = f"{architecture} kernels ({isa or 'instruction set unknown'})"
    if not coretype:
        who = "OpenBLAS's own choice"
    elif coretype.strip().lower() == (architecture or "").lower():
        who = f"pinned by OPENBLAS_CORETYPE={coretype}"
    else:
        who = (f"not the OPENBLAS_CORETYPE={coretype} set now (set after OpenBLAS loaded, or "
               f"a name this build ignores)")
    cpu = cpu_isa(simd)
    order = ("SSE", "AVX", "AVX2", "AVX-512")
    if isa and cpu in order and order.index(isa) < order.index(cpu):
        return (f"{kernels}, {who}, on an {cpu} CPU: narrower than the CPU runs, float32 GEMM "
                f"can be up to 2x slower (README FAQ)")
    return f"{kernels}, {who}, on an {cpu} CPU"


# ----------------------------------------------------------------------------- the load
def machine_busy_seconds(stat_text=None):
    """CPU seconds all CPUs of the machine spent busy since boot, from ``/proc/stat``.

    ``stat_text``: the text of ``/proc/stat`` (read when None). Busy is user + nice +
    system + irq + softirq + steal (steal: time the hypervisor gave to another guest);
    idle and iowait are not busy, guest time is already inside user time. None off Linux.
    """
    text = read_text("/proc/stat") if stat_text is None else stat_text
    if not text:
        return None
    head = text.splitlines()[0].split()
    if not head or head[0] != "cpu":
        return None
    try:
        ticks = [int(v) for v in head[1:9]]
    except ValueError:
        return None
    ticks += [0] * (8 - len(ticks))
    user, nice, system, _idle, _iowait, irq, softirq, steal = ticks
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds():
    """CPU seconds used by this process (every thread) and by its waited-for children."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def others_cpus(busy_start, busy_end, own_start, own_end, wall):
    """Average CPUs other processes kept busy over ``wall`` seconds.

    ``busy_*``: the machine's busy CPU seconds (:func:`machine_busy_seconds`) at the start
    and the end; ``own_*``: this process's CPU seconds (:func:`own_cpu_seconds`). Returns
    ``max(0, (busy_end - busy_start - (own_end - own_start)) / wall)``, or None when the
    machine's counter is unavailable. ``wall`` must be positive.
    """
    if busy_start is None or busy_end is None:
        return None
    if not wall > 0:
        raise ValueError(f"others_cpus: wall must be a positive number of seconds, "
                         f"received {wall!r}")
    return max(0.0, ((busy_end - busy_start) - (own_end - own_start)) / wall)


class LoadMeter:
    """Measure what other processes did while a block ran::

        with LoadMeter() as meter:
            ...                              # the timed work
        meter.others_cpus                    # e.g. 0.02 on a quiet machine

    Counts every CPU of the machine (``/proc/stat``) minus this process and its waited-for
    children. A child still running when the block ends (a load generator) counts as
    another process. ``others_cpus`` stays None off Linux and when the block took less
    than ``min_wall`` seconds (``too_short`` is then True): the counter's 10 ms ticks
    cannot tell a short block's load.
    """

    def __init__(self, min_wall=MIN_WALL):
        self.min_wall = min_wall
        self.others_cpus = None
        self.wall = None
        self.too_short = False

    def start(self):
        """Read the counters at the start (``with`` does it); returns the meter."""
        self._start = (machine_busy_seconds(), own_cpu_seconds(), time.perf_counter())
        return self

    def stop(self):
        """Read them at the end and set ``wall``, ``too_short`` and ``others_cpus``."""
        busy0, own0, t0 = self._start
        busy1, own1, t1 = machine_busy_seconds(), own_cpu_seconds(), time.perf_counter()
        self.wall = t1 - t0
        self.too_short = self.wall < self.min_wall
        if not self.too_short and self.wall > 0:
            self.others_cpus = others_cpus(busy0, busy1, own0, own1, self.wall)
        return self

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def describe(self, when):
        """``'other processes kept 0.02 CPUs busy <when> (/proc/stat)'``, or why not known."""
        if self.too_short:
            return (f"unknown {when}: {self.wall:.2f} s is too short to tell from /proc/stat's "
                    f"10 ms ticks")
        if self.others_cpus is None:
            return f"unknown {when} (no /proc/stat)"
        return f"other processes kept {self.others_cpus:.2f} CPUs busy {when} (/proc/stat)"


def load_warnings(others, cpus, threads=1, roof_1=None, roof_n=None,
                  busy_threshold=BUSY_CPUS_THRESHOLD, min_scaling=MIN_ROOF_SCALING):
    """The warnings a benchmark should print about the load it ran under (maybe none).

    Parameters
    ----------
    others : float or None, CPUs other processes kept busy (:class:`LoadMeter`); None: unknown
    cpus : int, the machine's CPUs
    threads : int, the threads the benchmark used
    roof_1, roof_n : float or None, GFLOP/s of the GEMM roof on 1 and on ``threads`` threads
    busy_threshold : float, ``others`` above this is a busy machine
    min_scaling : float, ``roof_n / roof_1`` below this (with ``threads > 1``) is suspicious

    Returns
    -------
    list of str, each a full sentence; empty when nothing looked wrong.
    """
    out = []
    if others is not None and others > busy_threshold:
        line = (f"other processes kept {others:.2f} of the {cpus} CPUs busy during the "
                f"measurement (/proc/stat): these times are not reliable; rerun on a quiet "
                f"machine")
        if cpus and threads + others > cpus:
            line += (f" ({threads} threads on {cpus} CPUs: a descheduled thread holds up "
                     f"every parallel region)")
        out.append(line)
    if threads > 1 and roof_1 and roof_n is not None:
        ratio = roof_n / roof_1
        if ratio < 1.0:
            out.append(f"the {threads}-thread GEMM roof ({roof_n:.1f} GFLOP/s) is below the "
                       f"1-thread roof ({roof_1:.1f}): another process took a core while it "
                       f"was measured")
        elif ratio < min_scaling:
            out.append(f"the GEMM roof scales only {ratio:.2f}x from 1 to {threads} threads "
                       f"({roof_1:.1f} -> {roof_n:.1f} GFLOP/s): another process may have "
                       f"been busy, or the threads share a physical core")
    return out


# ----------------------------------------------------------------------------- repeats
def spread(times):
    """``{'n', 'median', 'min', 'max', 'q1', 'q3'}`` of a non-empty sequence of numbers."""
    a = np.asarray(list(times), dtype=np.float64)
    if a.size == 0:
        raise ValueError("spread: times must hold at least one value, received none")
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return {"n": int(a.size), "median": float(med), "min": float(a.min()),
            "max": float(a.max()), "q1": float(q1), "q3": float(q3)}


def format_spread(times, unit="ms", scale=1.0, digits=2):
    """``'12.34 ms (min-max 11.90-13.10, IQR 12.10-12.60, n=10)'``: the median first.

    ``scale`` multiplies every value (1000 turns seconds into ms).
    """
    s = spread(times)
    f = {k: v * scale for k, v in s.items() if k != "n"}
    return (f"{f['median']:.{digits}f} {unit} (min-max {f['min']:.{digits}f}-"
            f"{f['max']:.{digits}f}, IQR {f['q1']:.{digits}f}-{f['q3']:.{digits}f}, "
            f"n={s['n']})")
