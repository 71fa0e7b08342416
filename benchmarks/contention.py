"""Training under contention: ``train_on_batch`` idle and with one core kept busy by another
process, for minicnn (numba backend), Keras/TensorFlow and PyTorch.

Issue 12's target: with one of the two cores kept busy, minicnn's step at most 2.3x slower
than idle (Keras measured 2.0x, PyTorch 2.8x, minicnn 2.9-3.5x on AMD Zen 4). For every
framework and round the script runs the framework's worker (``_minicnn_seed.py``,
``_keras_seed.py``, ``_torch_seed.py``; ``_resnet_train.py`` with ``--model resnet``) twice,
each in its own process:

- **idle**: nothing else started by this script;
- **busy**: a busy loop (``python -c "while True: pass"``) started first and pinned with
  ``os.sched_setaffinity`` to ``--busy-cpu`` (default CPU 1), killed when the worker ends.

Frameworks alternate within a round, their order rotates from round to round, and the
order of idle and busy flips every round, so that a slow patch of the machine hits all
alike. Per framework the report gives the idle and the busy step time (median of the
per-round medians, with their min-max), and the slowdown busy / idle: the median of the
per-round ratios with their min-max. Each run records how many CPUs *other* processes
(neither the worker nor the busy loop) kept busy (``/proc/stat``, :mod:`minicnn.machine`),
and how much CPU the busy loop really got; the report warns when the idle runs were not
idle. The CPU, its GEMM roof on 1 and on ``--threads`` threads, and the OpenBLAS kernels
head the report, which is markdown to paste into ``benchmarks/RESULTS.md``.

Usage (the real measurement, on a quiet machine; about 10 minutes)::

    python benchmarks/contention.py --rounds 5 --steps 30 --warmup 5 --threads 2 \\
        --python-keras ../tfvenv/bin/python --wait-quiet 120 --json /tmp/contention.json
    python benchmarks/contention.py --model resnet --rounds 3 --steps 15 \\
        --python-keras ../tfvenv/bin/python

``--quick`` (1 round, 3 steps, 1 warm-up) only checks that everything runs; its numbers
mean nothing. Progress goes to stderr, the report to stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from minicnn import machine  # noqa: E402

if HERE not in sys.path:
    sys.path.insert(0, HERE)
from compare_frameworks import worker_record  # noqa: E402

LABELS = {"minicnn": "minicnn (numba)", "keras": "Keras/TF", "torch": "PyTorch"}
SEED_WORKERS = {"minicnn": "_minicnn_seed.py", "keras": "_keras_seed.py",
                "torch": "_torch_seed.py"}
MODELS = ("seed", "resnet")
BUSY_LOOP = "while True: pass"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=MODELS, default="seed",
                   help="seed: the Keras tutorial CNN (all three frameworks); resnet: "
                        "models.zoo.resnet_cifar (minicnn and Keras; PyTorch: its twin, "
                        "_torch_resnet.py)")
    p.add_argument("--frameworks", default="minicnn,keras,torch",
                   help="comma list of minicnn, keras, torch (default: all three)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per run, first")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--busy-cpu", type=int, default=1, metavar="CPU",
                   help="the CPU the busy loop is pinned to (default 1; -1: not pinned)")
    p.add_argument("--settle", type=float, default=0.5, metavar="SECONDS",
                   help="wait after starting the busy loop, before the worker (default 0.5)")
    p.add_argument("--python-minicnn", default=sys.executable, metavar="PATH")
    p.add_argument("--python-keras", default=sys.executable, metavar="PATH")
    p.add_argument("--python-torch", default=sys.executable, metavar="PATH")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS until other processes keep fewer "
                        "than --quiet-cpus busy (1 s probes); 0: don't wait")
    p.add_argument("--quiet-cpus", type=float, default=0.15, metavar="CPUS")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 1 round, 3 steps, 1 warm-up (the numbers mean nothing)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write every run here")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 1, 3, 1
    for name in ("rounds", "steps", "batch", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, received {getattr(args, name)}")
    if args.warmup < 0:
        p.error(f"--warmup must be >= 0, received {args.warmup}")
    cpus = os.cpu_count() or 1
    if args.busy_cpu >= cpus or args.busy_cpu < -1:
        p.error(f"--busy-cpu must be -1 or a CPU between 0 and {cpus - 1}, received "
                f"{args.busy_cpu}")
    fws = []
    for name in args.frameworks.split(","):
        name = name.strip().lower()
        if not name:
            continue
        if name not in LABELS:
            p.error(f"--frameworks: unknown framework {name!r}; choose from "
                    f"{', '.join(LABELS)}")
        if name not in fws:
            fws.append(name)
    if not fws:
        p.error("--frameworks: give at least one of minicnn, keras, torch, received "
                f"{args.frameworks!r}")
    args.frameworks = fws
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- one run
def worker_command(args, fw):
    python = getattr(args, f"python_{fw}")
    common = ["--steps", str(args.steps), "--warmup", str(args.warmup), "--batch",
              str(args.batch), "--threads", str(args.threads)]
    if args.model == "seed":
        return [python, os.path.join(HERE, SEED_WORKERS[fw]), "--mode", "train", *common]
    return [python, os.path.join(HERE, "_resnet_train.py"), "--framework", fw, *common]


def start_busy_loop(cpu):
    """Start the busy loop (pinned to ``cpu`` unless it is -1); returns the process."""
    hog = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(hog.pid, {cpu})
    return hog


def process_cpu_seconds(pid):
    """user + system CPU seconds of a running process (``/proc/<pid>/stat``), or None."""
    text = machine.read_text(f"/proc/{pid}/stat")
    if not text:
        return None
    fields = text.rsplit(")", 1)[1].split()       # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def wait_quiet(max_wait, threshold):
    """Probe the load of other processes for 1 s at a time until it falls below
    ``threshold`` CPUs or ``max_wait`` seconds have passed; returns the last reading."""
    t0 = time.perf_counter()
    while True:
        with machine.LoadMeter() as meter:
            time.sleep(1.0)
        if meter.others_cpus is None or meter.others_cpus < threshold \
                or time.perf_counter() - t0 >= max_wait:
            return meter.others_cpus


def run_once(args, fw, busy):
    """One worker run; returns ``(record or None, message)``.

    The record is the worker's JSON plus ``wall_s``, ``busy_loop_cpus`` (CPUs the busy loop
    got while the worker ran; None when idle) and ``others_cpus`` (CPUs every other process
    kept busy: the machine's busy time minus the worker's and the busy loop's).
    """
    hog = start_busy_loop(args.busy_cpu) if busy else None
    try:
        if hog is not None:
            time.sleep(args.settle)
        hog0 = process_cpu_seconds(hog.pid) if hog is not None else None
        busy0, kids0, t0 = machine.machine_busy_seconds(), children_cpu_seconds(), \
            time.perf_counter()
        try:
            proc = subprocess.run(worker_command(args, fw), capture_output=True, text=True,
                                  timeout=args.timeout)
        except (FileNotFoundError, PermissionError) as exc:
            return None, f"unavailable: {exc}"
        except subprocess.TimeoutExpired:
            return None, f"timed out after {args.timeout:g} s"
        wall = time.perf_counter() - t0
        busy1, kids1 = machine.machine_busy_seconds(), children_cpu_seconds()
        hog1 = process_cpu_seconds(hog.pid) if hog is not None else None
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    record = worker_record(proc.stdout)
    if record is not None and "unavailable" in record:
        return None, f"unavailable: {record['unavailable']}"
    if proc.returncode != 0 or record is None or not record.get("step_times"):
        tail = [ln for ln in (proc.stderr or proc.stdout or "").splitlines() if ln.strip()]
        return None, f"failed: {tail[-1] if tail else f'exit code {proc.returncode}'}"
    hog_cpus = None if hog0 is None or hog1 is None else (hog1 - hog0) / wall
    record["wall_s"] = wall
    record["busy_loop_cpus"] = hog_cpus
    record["others_cpus"] = None
    if busy0 is not None and busy1 is not None:
        hog_s = 0.0 if hog_cpus is None else hog_cpus * wall
        record["others_cpus"] = max(0.0, (busy1 - busy0 - (kids1 - kids0) - hog_s) / wall)
    return record, ""


# ----------------------------------------------------------------------------- summary
def median(values):
    return statistics.median(values)


def summarise(results):
    """Per framework: idle and busy per-round medians (s), per-round slowdowns, loads."""
    out = {}
    for fw, rounds in results.items():
        pairs = [(r["idle"], r["busy"]) for r in rounds if r.get("idle") and r.get("busy")]
        if not pairs:
            continue
        idle = [median(i["step_times"]) for i, _ in pairs]
        busy = [median(b["step_times"]) for _, b in pairs]
        out[fw] = {
            "version": pairs[-1][0].get("version"),
            "idle_s": idle, "busy_s": busy,
            "slowdown": [b / i for i, b in zip(idle, busy)],
            "idle_others_cpus": [i.get("others_cpus") for i, _ in pairs],
            "busy_others_cpus": [b.get("others_cpus") for _, b in pairs],
            "busy_loop_cpus": [b.get("busy_loop_cpus") for _, b in pairs],
        }
    return out


def span(values, fmt, unit=""):
    """``'12.3 (11.9-13.1)'``: the median, and the min-max when there are several."""
    med = format(median(values), fmt) + unit
    if len(values) < 2:
        return med
    return f"{med} ({format(min(values), fmt)}-{format(max(values), fmt)}{unit})"


def known(values):
    return [v for v in values if v is not None]


def markdown(args, summary, failures, header):
    batch = args.batch
    model = ("seed model (319,178 parameters)" if args.model == "seed"
             else "residual BatchNorm CNN (models.zoo.resnet_cifar, augmentation off)")
    pin = f"pinned to CPU {args.busy_cpu}" if args.busy_cpu >= 0 else "not pinned"
    lines = [f"## Contention: {model}, `train_on_batch`, batch {batch}, {args.threads} threads, "
             f"idle and with one core kept busy", ""]
    lines += header
    lines += [f"- busy process: `python -c \"{BUSY_LOOP}\"`, {pin}, started {args.settle:g} s "
              f"before each busy run",
              f"- {args.rounds} round(s) x {args.steps} timed steps after {args.warmup} warm-up "
              f"steps per run, each run in its own process; frameworks alternate, idle/busy "
              f"order flips every round", ""]
    if args.quick:
        lines += ["**`--quick` smoke run: 3 steps, the numbers below mean nothing.**", ""]
    lines += ["| framework | idle ms/step | one core busy ms/step | slowdown busy/idle | "
              "images/s idle | images/s busy |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for fw, s in summary.items():
        version = s["version"] or ""
        label = version if version.startswith("keras") else f"{LABELS[fw]} {version}".strip()
        lines.append(
            f"| {label} | {span([1000 * t for t in s['idle_s']], '.1f')} | "
            f"{span([1000 * t for t in s['busy_s']], '.1f')} | "
            f"{span(s['slowdown'], '.2f', 'x')} | {batch / median(s['idle_s']):.0f} | "
            f"{batch / median(s['busy_s']):.0f} |")
    lines += ["", "Step times: median over rounds of each run's median, (min-max over rounds); "
                  "slowdown: median of the per-round ratios (min-max).", ""]
    notes, warnings = [], []
    for fw, s in summary.items():
        idle_o, busy_o = known(s["idle_others_cpus"]), known(s["busy_others_cpus"])
        hog = known(s["busy_loop_cpus"])
        parts = []
        if idle_o:
            parts.append(f"other processes {max(idle_o):.2f} CPUs at most in the idle runs")
        if busy_o:
            parts.append(f"{max(busy_o):.2f} in the busy runs")
        if hog:
            parts.append(f"the busy loop got {min(hog):.2f}-{max(hog):.2f} CPUs")
        if parts:
            notes.append(f"- {LABELS[fw]}: " + ", ".join(parts))
        for o in idle_o + busy_o:
            found = machine.load_warnings(o, os.cpu_count() or 1, args.threads)
            if found:
                warnings.append(f"- **Warning ({LABELS[fw]}):** {found[0]}")
                break
        if hog and min(hog) < 0.8:
            warnings.append(f"- **Warning ({LABELS[fw]}):** the busy loop got only "
                            f"{min(hog):.2f} CPUs in a run: the core was not kept busy")
    for fw, msg in failures.items():
        notes.append(f"- {LABELS[fw]}: {msg}")
    if notes:
        lines += ["Load and notes:", ""] + notes + [""]
    if warnings:
        lines += warnings + [""]
    return "\n".join(lines)


def machine_header(args):
    """The CPU, the GEMM roofs and the BLAS kernels, as markdown bullets."""
    import _common
    from minicnn import config, ops
    with config.use_backend("numba"):
        ops.backend_module()                      # loads SciPy's OpenBLAS, as the worker does
    with machine.LoadMeter() as load:
        roof_1 = _common.numpy_gemm_gflops(1)
        roof_n = _common.numpy_gemm_gflops(args.threads)
    cpus = os.cpu_count() or 1
    lines = [f"Command: `python {' '.join(shlex.quote(a) for a in sys.argv)}`", "",
             f"- CPU: {machine.describe_cpu()}",
             f"- GEMM roof (NumPy float32 2048x2048, median): {roof_1:.1f} GFLOP/s on 1 thread, "
             f"{roof_n:.1f} GFLOP/s on {args.threads} threads ({roof_n / roof_1:.2f}x); "
             + load.describe("meanwhile"),
             f"- OpenBLAS kernels: {config.openblas_kernels()}; OPENBLAS_CORETYPE "
             f"{os.environ.get('OPENBLAS_CORETYPE') or 'unset'}"]
    lines += [f"- **Warning:** {w}" for w in machine.load_warnings(
        load.others_cpus, cpus, args.threads, roof_1, roof_n)]
    return lines


def main(argv=None):
    args = parse_args(argv)
    frameworks = list(args.frameworks)
    failures = {}
    header = machine_header(args)
    results = {fw: [] for fw in frameworks}
    for rnd in range(args.rounds):
        order = frameworks[rnd % len(frameworks):] + frameworks[:rnd % len(frameworks)] \
            if frameworks else []
        conditions = ("idle", "busy") if rnd % 2 == 0 else ("busy", "idle")
        pairs = {fw: {} for fw in frameworks}
        for condition in conditions:
            for fw in order:
                if fw in failures:
                    continue
                if args.wait_quiet > 0:
                    load = wait_quiet(args.wait_quiet, args.quiet_cpus)
                    if load is not None and load >= args.quiet_cpus:
                        log(f"  still {load:.2f} CPUs busy after {args.wait_quiet:g} s; "
                            f"running {fw} {condition} anyway")
                record, msg = run_once(args, fw, condition == "busy")
                if record is None:
                    failures[fw] = msg
                    log(f"[round {rnd + 1}/{args.rounds}] {fw} {condition}: {msg}")
                    continue
                pairs[fw][condition] = record
                load = record["others_cpus"]
                log(f"[round {rnd + 1}/{args.rounds}] {fw:8s} {condition:4s} "
                    f"{1000 * median(record['step_times']):8.1f} ms/step"
                    + (f"  (busy loop {record['busy_loop_cpus']:.2f} CPUs)"
                       if record["busy_loop_cpus"] is not None else "")
                    + ("" if load is None else f"  (other processes {load:.2f} CPUs)"))
        for fw in frameworks:
            results[fw].append(pairs[fw])
    summary = summarise(results)
    report = markdown(args, summary, failures, header)
    print(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "summary": summary, "runs": results,
                       "failures": failures, "markdown": report}, fh, indent=1)
        log(f"wrote {args.json}")
    return 0 if summary else 1


if __name__ == "__main__":
    sys.exit(main())
