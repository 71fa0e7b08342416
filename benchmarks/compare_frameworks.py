"""Compare minicnn with Keras/TensorFlow and PyTorch on the seed CNN.

The seed CNN is the Keras model minicnn was built to match (319,178 parameters)::

    Conv2D(32, 3x3, relu, same) -> MaxPooling2D(2) -> Conv2D(64, 3x3, relu, same)
    -> MaxPooling2D(2) -> Conv2D(64, 3x3, relu, same) -> Flatten
    -> Dense(64, relu) -> Dense(10, softmax)
    compiled with optimizer='adam', loss='categorical_crossentropy'

For each framework a worker script (``_minicnn_seed.py``, ``_keras_seed.py``,
``_torch_seed.py`` beside this file) builds that model, makes one random
float32 batch of shape (batch, 32, 32, 3) with one-hot labels of 10 classes
(outside the timed region), runs ``--warmup`` untimed steps and then
``--steps`` timed ones, each timed with ``time.perf_counter``, and prints the
step times as one JSON line. Two modes are measured:

- ``train``: one training step, forward + backward + Adam update
  (``train_on_batch`` in minicnn and Keras; zero_grad/forward/
  CrossEntropyLoss on logits/backward/Adam.step in PyTorch, lr 1e-3, eps 1e-7);
- ``infer``: one forward pass on a batch (``model.predict(x, batch_size=64)``
  in minicnn, ``predict_on_batch`` in Keras, ``model.eval()`` under
  ``torch.inference_mode()`` in PyTorch).

The Keras worker's default is ``train_on_batch`` / ``predict_on_batch`` without
XLA: on this 2-core CPU it was the fastest of the options it offers (a
hand-written ``tf.function`` step is within a few percent; ``jit_compile=True``
is ~2.3x slower, and so is turning oneDNN off with TF_ENABLE_ONEDNN_OPTS=0).
The seed program itself trains with ``model.fit``, which in Keras 3 runs a
different compiled function (measured 16-28 ms/step here): ``compare_fit.py``
times that path.
PyTorch's worker can use the channels_last memory format with
``--torch-args=--channels-last`` (a little faster than NCHW here).

Every worker runs in its own process, and the runs alternate: in each round
every framework runs once per mode (minicnn, Keras, PyTorch, minicnn, ...), so
that a slow patch of the machine hits all of them alike. The report gives, per
framework and mode, the median step time over all timed steps of all rounds,
images/s = batch / median step time, the spread of the per-round medians, and
the ratios minicnn/Keras and minicnn/PyTorch of images/s (above 1: minicnn is
faster). PyTorch runs in NCHW, its native layout; minicnn and Keras in NHWC.
Thread counts: ``--threads`` goes to ``minicnn.set_num_threads``, to
TensorFlow's intra-op and inter-op pools, and to ``torch.set_num_threads`` /
``set_num_interop_threads`` (and OMP/MKL/OpenBLAS_NUM_THREADS in the workers).

Usage::

    python benchmarks/compare_frameworks.py --rounds 3 --steps 30 --warmup 5 \\
        --frameworks minicnn,torch,keras --threads 2 \\
        --python-keras /work/venvs/tf/bin/python --json /tmp/compare.json

TensorFlow may need a different NumPy than the main environment, so it is best
kept in its own virtualenv, given with ``--python-keras``::

    python -m venv /work/venvs/tf && /work/venvs/tf/bin/pip install tensorflow-cpu

and PyTorch is a plain ``pip install torch``. ``--python-torch`` and
``--python-minicnn`` do the same for the other workers; the default for all
three is the python running this script. A framework whose import fails (or
whose python does not exist) is reported as unavailable, with the error line,
and skipped; a worker that crashes is reported as failed and not run again.

Timings are only meaningful on an otherwise idle machine: OpenMP-based
runtimes (PyTorch, Numba's omp layer) slow down many-fold when another process
takes a core. Each run therefore records how many CPUs *other* processes kept
busy meanwhile (from /proc/stat), the report warns when that is above 0.25, and
``--wait-quiet SECONDS`` makes the driver wait (up to SECONDS before each run)
for the machine to go idle; ``--drop-busy CPUS`` leaves the runs during which
other processes kept more than CPUS busy out of the medians.

The markdown table goes to stdout (progress goes to stderr), and ``--json
PATH`` writes everything, raw step times included. The numbers measured on the
project's machine, with the exact command, are kept in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

FRAMEWORKS = {
    # name: (worker script, label in the report)
    "minicnn": ("_minicnn_seed.py", "minicnn"),
    "keras": ("_keras_seed.py", "Keras/TF"),
    "torch": ("_torch_seed.py", "PyTorch"),
}
ALIASES = {"tf": "keras", "tensorflow": "keras", "pytorch": "torch"}
MODES = ("train", "infer")
SEED_PARAMS = 319_178


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Compare minicnn, Keras/TensorFlow and PyTorch on the seed CNN "
                    "(see the module docstring).")
    p.add_argument("--rounds", type=int, default=3, help="runs of each framework and mode")
    p.add_argument("--steps", type=int, default=30, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per run, first")
    p.add_argument("--batch", type=int, default=64, help="training batch size")
    p.add_argument("--infer-batch", type=int, default=None,
                   help="inference batch size (default: --batch)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--frameworks", default="minicnn,torch,keras",
                   help="comma-separated, in the order they run: minicnn, torch, keras")
    p.add_argument("--modes", default="train,infer", help="comma-separated: train, infer")
    p.add_argument("--python-minicnn", default=sys.executable, metavar="PATH")
    p.add_argument("--python-torch", default=sys.executable, metavar="PATH")
    p.add_argument("--python-keras", default=sys.executable, metavar="PATH")
    p.add_argument("--minicnn-args", default="", metavar="ARGS",
                   help="extra arguments for the minicnn worker, e.g. --minicnn-args='--backend numba' (note the =)")
    p.add_argument("--torch-args", default="", metavar="ARGS",
                   help="extra arguments for the PyTorch worker, e.g. --torch-args=--channels-last (note the =)")
    p.add_argument("--keras-args", default="", metavar="ARGS",
                   help="extra arguments for the Keras worker, e.g. --keras-args='--jit on' (note the =)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds before one worker run is given up")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="before each run, wait up to SECONDS for the machine to be idle "
                        "(other processes below --quiet-cpus); 0: don't wait")
    p.add_argument("--quiet-cpus", type=float, default=0.15, metavar="CPUS",
                   help="CPUs other processes may keep busy for the machine to count as idle")
    p.add_argument("--drop-busy", type=float, default=None, metavar="CPUS",
                   help="leave out of the medians the runs during which other processes kept "
                        "more than CPUS busy (they stay in --json); default: keep every run")
    p.add_argument("--json", default=None, metavar="PATH", help="also write all results here")
    args = p.parse_args(argv)

    fws = []
    for name in args.frameworks.split(","):
        name = ALIASES.get(name.strip().lower(), name.strip().lower())
        if not name:
            continue
        if name not in FRAMEWORKS:
            p.error(f"unknown framework {name!r}; choose from {', '.join(FRAMEWORKS)}")
        if name not in fws:
            fws.append(name)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            p.error(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    if not fws or not modes:
        p.error("nothing to run")
    for opt in ("rounds", "steps", "batch", "threads"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    args.frameworks = fws
    args.modes = modes
    if args.infer_batch is None:
        args.infer_batch = args.batch
    return args


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def machine_info():
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "platform": platform.platform(),
            "driver_python": platform.python_version(),
            # inherited by every worker; OpenBLAS reads it when it loads (see README FAQ)
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE") or "unset"}


def worker_record(stdout):
    """The last JSON object line a worker printed on ``stdout``, or None."""
    for line in reversed((stdout or "").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def _last_line(text):
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _busy_cpu_seconds():
    """CPU seconds the whole machine has spent busy since boot (None off Linux)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted in user time
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait, threshold, probe=2.0):
    """Wait until the machine's busy CPUs over ``probe`` seconds fall below ``threshold``.

    Returns (waited seconds, last measured busy CPUs or None)."""
    t0 = time.perf_counter()
    load = None
    while True:
        b0 = _busy_cpu_seconds()
        if b0 is None:
            return 0.0, None
        time.sleep(probe)
        load = (_busy_cpu_seconds() - b0) / probe
        waited = time.perf_counter() - t0
        if load < threshold or waited >= max_wait:
            return waited, load


def _children_cpu_seconds():
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_worker(args, fw, mode):
    """Run one worker; return (status, record_or_None, message).

    The record gets ``wall_s``, ``worker_cpu_s`` and ``others_cpus``: the
    average number of CPUs that *other* processes kept busy while the worker
    ran (machine busy time minus the worker's own CPU time, over the wall
    time). Anything well above 0 means the machine was shared and the
    numbers of that run are suspect.
    """
    busy0, child0, t0 = _busy_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    status, record, msg = _run_worker(args, fw, mode)
    wall = time.perf_counter() - t0
    if record is not None:
        worker_cpu = _children_cpu_seconds() - child0
        record["wall_s"] = wall
        record["worker_cpu_s"] = worker_cpu
        busy1 = _busy_cpu_seconds()
        if busy0 is not None and busy1 is not None and wall > 0:
            record["others_cpus"] = max(0.0, (busy1 - busy0 - worker_cpu) / wall)
    return status, record, msg


def _run_worker(args, fw, mode):
    script, _ = FRAMEWORKS[fw]
    python = getattr(args, f"python_{fw}")
    batch = args.batch if mode == "train" else args.infer_batch
    cmd = [python, os.path.join(HERE, script), "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch", str(batch),
           "--threads", str(args.threads), "--mode", mode, "--seed", str(args.seed)]
    cmd += shlex.split(getattr(args, f"{fw}_args"))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    except FileNotFoundError as exc:
        return "unavailable", None, f"{python}: {exc.strerror or exc}"
    except PermissionError as exc:
        return "unavailable", None, f"{python}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return "failed", None, f"timed out after {args.timeout:g} s"
    record = worker_record(proc.stdout)
    if record is not None and "unavailable" in record:
        return "unavailable", record, record["unavailable"]
    if proc.returncode != 0 or record is None or not record.get("step_times"):
        msg = _last_line(proc.stderr) or _last_line(proc.stdout) or f"exit code {proc.returncode}"
        return "failed", record, msg
    return "ok", record, ""


def median(xs):
    return statistics.median(xs) if xs else None


def main(argv=None):
    args = parse_args(argv)
    results = {fw: {m: {"status": "not run", "runs": []} for m in args.modes}
               for fw in args.frameworks}
    dead = {}  # fw -> reason (unavailable); (fw, mode) -> reason (failed)
    t_start = time.perf_counter()

    for rnd in range(1, args.rounds + 1):
        for mode in args.modes:
            for fw in args.frameworks:
                if fw in dead or (fw, mode) in dead:
                    continue
                if args.wait_quiet > 0:
                    waited, load = wait_quiet(args.wait_quiet, args.quiet_cpus)
                    if load is not None and load >= args.quiet_cpus:
                        log(f"  machine still busy ({load:.2f} CPUs) after {waited:.0f} s; "
                            f"running {mode} {fw} anyway")
                    elif waited > 2.5:
                        log(f"  waited {waited:.0f} s for an idle machine")
                status, record, msg = run_worker(args, fw, mode)
                entry = results[fw][mode]
                if status == "unavailable":
                    dead[fw] = msg
                    for m in args.modes:
                        results[fw][m]["status"] = "unavailable"
                        results[fw][m]["error"] = msg
                    log(f"[round {rnd}/{args.rounds}] {fw}: unavailable - {msg}")
                    continue
                if status == "failed":
                    dead[(fw, mode)] = msg
                    entry["status"] = "failed"
                    entry["error"] = msg
                    log(f"[round {rnd}/{args.rounds}] {mode} {fw}: FAILED - {msg}")
                    continue
                entry["status"] = "ok"
                entry["runs"].append(record)
                med = median(record["step_times"])
                log(f"[round {rnd}/{args.rounds}] {mode:5s} {fw:8s} "
                    f"median {med * 1e3:8.2f} ms/step  {record['batch'] / med:8.0f} images/s  "
                    f"(warm-up {record.get('warmup_s', 0):.1f} s"
                    + (f", other processes {record['others_cpus']:.2f} CPUs)"
                       if "others_cpus" in record else ")"))

    summary = summarise(args, results)
    report = markdown(args, summary, machine_info())
    print(report)
    if args.json:
        out = {
            "config": {k: getattr(args, k) for k in (
                "rounds", "steps", "warmup", "batch", "infer_batch", "threads", "frameworks",
                "modes", "python_minicnn", "python_torch", "python_keras", "minicnn_args",
                "torch_args", "keras_args", "seed", "wait_quiet", "quiet_cpus", "drop_busy")},
            "machine": machine_info(),
            "wall_s": time.perf_counter() - t_start,
            "summary": summary,
            "runs": results,
            "markdown": report,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
        log(f"wrote {args.json}")
    ok = any(s["status"] == "ok" for fw in summary["frameworks"].values()
             for s in fw["modes"].values())
    return 0 if ok else 1


def summarise(args, results):
    summary = {"frameworks": {}, "ratios": {}}
    for fw in args.frameworks:
        fsum = {"label": FRAMEWORKS[fw][1], "modes": {}}
        for mode in args.modes:
            entry = results[fw][mode]
            runs = entry["runs"]
            dropped = []
            if args.drop_busy is not None:
                kept = [r for r in runs if (r.get("others_cpus") or 0.0) <= args.drop_busy]
                dropped = [r for r in runs if r not in kept]
                runs = kept
            s = {"status": entry["status"] if runs or entry["status"] != "ok" else "not run"}
            if entry.get("error"):
                s["error"] = entry["error"]
            if runs:
                times = [t for r in runs for t in r["step_times"]]
                med = median(times)
                batch = runs[0]["batch"]
                per_round = [median(r["step_times"]) for r in runs]
                last = runs[-1]
                s.update({
                    "status": "ok" if entry["status"] == "ok" else entry["status"],
                    "batch": batch,
                    "median_step_s": med,
                    "images_per_s": batch / med,
                    "per_round_median_s": per_round,
                    "n_steps": len(times),
                    "n_runs": len(runs),
                    "warmup_s": [r.get("warmup_s") for r in runs],
                    "others_cpus": [r.get("others_cpus") for r in runs],
                    "n_dropped_busy": len(dropped),
                })
                for key in ("version", "layout", "method", "params", "python", "numpy",
                            "threading_layer", "backend", "numba", "openblas", "torch_threads",
                            "torch_interop_threads", "tf_intra_op_threads",
                            "tf_inter_op_threads", "tf_enable_onednn_opts"):
                    if key in last:
                        s[key] = last[key]
            if dropped and not runs:
                s["status"] = "all runs busy"
                s["n_dropped_busy"] = len(dropped)
                for key in ("version", "layout"):
                    if key in dropped[-1]:
                        s[key] = dropped[-1][key]
            fsum["modes"][mode] = s
            if "version" in s:
                fsum.setdefault("version", s["version"])
                fsum.setdefault("layout", s.get("layout"))
        summary["frameworks"][fw] = fsum

    mc = summary["frameworks"].get("minicnn")
    if mc:
        for other in ("keras", "torch"):
            o = summary["frameworks"].get(other)
            if not o:
                continue
            for mode in args.modes:
                a, b = mc["modes"][mode], o["modes"][mode]
                if "images_per_s" in a and "images_per_s" in b:
                    summary["ratios"][f"minicnn/{other}/{mode}"] = a["images_per_s"] / b["images_per_s"]
    return summary


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def markdown(args, summary, machine):
    L = []
    L.append("## Seed CNN: minicnn vs Keras/TensorFlow vs PyTorch")
    L.append("")
    batches = (f"batch {args.batch}" if args.infer_batch == args.batch
               else f"train batch {args.batch}, inference batch {args.infer_batch}")
    L.append(f"Machine: {machine['cpu']}, {machine['cpus']} CPUs, {machine['platform']}. "
             f"Threads: {args.threads}. float32, {batches}, input (N, 32, 32, 3), "
             f"10 one-hot classes. {args.rounds} round(s) x {args.steps} timed steps "
             f"(after {args.warmup} warm-up steps) per framework and mode, each run in its "
             f"own process, frameworks alternating within each round. "
             f"OPENBLAS_CORETYPE for every worker: {machine['openblas_coretype']}.")
    L.append("")
    head = ["framework", "version", "layout"]
    align = ["---", "---", "---"]
    for mode in args.modes:
        word = "step" if mode == "train" else "batch"
        head += [f"{mode} ms/{word}", f"{mode} images/s", f"{mode} per-round medians (ms)"]
        align += ["---:", "---:", "---:"]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "|".join(align) + "|")
    for fw, fsum in summary["frameworks"].items():
        layout = fsum.get("layout") or "-"
        if fw == "torch" and layout == "NCHW":
            layout = "NCHW (native)"
        row = [fsum["label"], fsum.get("version", "-"), layout]
        for mode in args.modes:
            s = fsum["modes"][mode]
            if s.get("status") == "ok" and "median_step_s" in s:
                rounds = ", ".join(f"{t * 1e3:.1f}" for t in s["per_round_median_s"])
                row += [_fmt(s["median_step_s"] * 1e3, ".2f"), _fmt(s["images_per_s"], ".0f"),
                        rounds]
            else:
                row += [s.get("status", "not run"), "-", "-"]
        L.append("| " + " | ".join(row) + " |")
    L.append("")

    if summary["ratios"]:
        L.append("Ratios of images/s (above 1: minicnn is faster):")
        L.append("")
        L.append("| ratio | " + " | ".join(args.modes) + " |")
        L.append("|---|" + "|".join("---:" for _ in args.modes) + "|")
        for other, label in (("keras", "minicnn / Keras"), ("torch", "minicnn / PyTorch")):
            cells = [summary["ratios"].get(f"minicnn/{other}/{m}") for m in args.modes]
            if any(c is not None for c in cells):
                L.append(f"| {label} | " + " | ".join(_fmt(c, ".2f") for c in cells) + " |")
        L.append("")

    notes = []
    for fw, fsum in summary["frameworks"].items():
        for mode in args.modes:
            s = fsum["modes"][mode]
            if s.get("status") == "unavailable":
                notes.append(f"- {fsum['label']}: not installed/unavailable: {s.get('error')}")
                break
            if s.get("status") == "all runs busy":
                notes.append(f"- {fsum['label']} {mode}: all {s['n_dropped_busy']} run(s) left "
                             f"out: other processes kept more than {args.drop_busy} CPUs busy")
            elif s.get("status") == "failed":
                notes.append(f"- {fsum['label']} {mode}: failed: {s.get('error')}")
            elif s.get("status") == "ok":
                bits = [f"{s.get('method')}"]
                if s.get("params") not in (None, SEED_PARAMS):
                    bits.append(f"**{s['params']} parameters, not {SEED_PARAMS}**")
                for key in ("backend", "threading_layer", "numba", "openblas", "torch_threads",
                            "torch_interop_threads", "tf_intra_op_threads",
                            "tf_inter_op_threads", "tf_enable_onednn_opts"):
                    if key in s:
                        bits.append(f"{key}={s[key]}")
                if s.get("n_dropped_busy"):
                    bits.append(f"{s['n_dropped_busy']} busy run(s) left out")
                warm = [w for w in s.get("warmup_s", []) if w is not None]
                if warm:
                    bits.append(f"warm-up {max(warm):.1f} s at most")
                bits.append(f"python {s.get('python')}, numpy {s.get('numpy')}")
                notes.append(f"- {fsum['label']} {mode}: " + "; ".join(bits))
    if notes:
        L.append("Notes:")
        L.append("")
        L.extend(notes)
        L.append("")
    others = [o for fsum in summary["frameworks"].values() for s in fsum["modes"].values()
              for o in s.get("others_cpus", []) if o is not None]
    if others:
        worst = max(others)
        line = (f"Other processes kept on average {statistics.mean(others):.2f} CPUs busy "
                f"during the runs (at most {worst:.2f} in one run).")
        if worst > 0.25:
            line = ("**Warning: the machine was shared; these numbers are not reliable** "
                    "(try --wait-quiet 600). " + line)
        L.append(line)
        L.append("")
    L.append("Medians over all timed steps of all rounds; images/s = batch / median step time. "
             "PyTorch uses NCHW, its native layout; minicnn and Keras use NHWC.")
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(main())
