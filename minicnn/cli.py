"""The ``minicnn`` command: train, info, gradcheck, bench, export.

::

    minicnn train --data cifar-10-python.tar.gz --out run1   # the CIFAR-10 trainer
    minicnn train --dataset shapes --epochs 3                # no files, no network
    minicnn export run1/best.npz --format onnx               # -> run1/best.onnx
    minicnn info                                             # versions, backend, threads, BLAS
    minicnn gradcheck                                        # every layer and loss vs finite differences
    minicnn bench --backend numba,numpy                      # per-layer times of the seed model

``main(argv)`` returns the exit code, so the commands also run in-process:
``minicnn.cli.main(["gradcheck"])``. ``minicnn train`` is :mod:`minicnn.train`.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np

from . import __version__, config

GRADCHECK_TOLERANCE = 1e-6


def build_parser():
    from . import train
    p = argparse.ArgumentParser(
        prog="minicnn", description="minicnn: a CNN library in NumPy and Numba. Commands: "
                                    "train, info, gradcheck, bench, export.")
    p.add_argument("--version", action="version", version=f"minicnn {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train", help="train the seed model (CIFAR-10 by default)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train the seed CNN with the seed recipe (Adam, batch 64, 15 epochs, 20% "
                    "held out for validation)\nand write into --out: best.npz (best "
                    "val_accuracy), last.npz + last.json (for --resume),\nhistory.json, "
                    "curves.png, confusion_matrix.png and misclassified.png (test set).",
        epilog="examples:\n"
               "  minicnn train --data cifar-10-python.tar.gz --out run1\n"
               "  minicnn train --dataset shapes --epochs 3        # no files, no network\n"
               "  minicnn train --resume run1/last.npz --epochs 20  # continue run1")
    train.add_arguments(t)

    sub.add_parser("compile", help="compile every kernel the shipped models use, ahead of "
                                   "the first run (numba backend)")
    sub.add_parser("info", help="versions, backend, threads and BLAS libraries",
                   description="Print the versions of minicnn, NumPy, Numba and Python, the "
                               "backend, the thread settings and the BLAS libraries loaded.")

    g = sub.add_parser("gradcheck", help="check every layer's and loss's gradients",
                       description="Compare every layer type's and the losses' hand-written "
                                   "gradients with central finite differences, in float64. "
                                   "Exit code 1 if any relative error exceeds the tolerance.")
    g.add_argument("--backend", default=None, metavar="NAMES",
                   help=f"backend or comma list (default: {config.get_backend()})")
    g.add_argument("--tolerance", type=float, default=GRADCHECK_TOLERANCE,
                   help=f"largest relative error that passes (default {GRADCHECK_TOLERANCE:g})")

    b = sub.add_parser("bench", help="per-layer forward/backward times of the seed model",
                       description="Time the forward and backward pass of each step of the "
                                   "seed model's training step, with GFLOP/s per step against "
                                   "the machine's NumPy float32 GEMM, and whole-step images/s. "
                                   "Prints the CPU, the spread of the repeats, the CPUs other "
                                   "processes kept busy meanwhile (/proc/stat), and a WARNING "
                                   "when the machine was not quiet.")
    b.add_argument("--batch-size", type=int, default=64, help="default 64")
    b.add_argument("--backend", default=None, metavar="NAMES",
                   help=f"backend or comma list, e.g. numba,numpy (default: "
                        f"{config.get_backend()})")
    b.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    b.add_argument("--repeats", type=int, default=10,
                   help="timed repetitions; the median and the spread are reported "
                        "(default 10)")
    b.add_argument("--warmup", type=int, default=2,
                   help="untimed training steps first: JIT compilation is never timed "
                        "(default 2)")

    e = sub.add_parser(
        "export", help="write a model file as ONNX, Keras 3 (.keras) or a torch.export program",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Read a model file minicnn loads (its own .npz, or a Keras 3 .keras file; "
                    "nothing in it is executed)\nand write it as --format: onnx (.onnx, for "
                    "onnxruntime), keras (.keras, for Keras 3) or torch\n(.pt2, a torch.export "
                    "program: torch.export.load(path).module()(x), NHWC input).\nThe output "
                    "goes next to MODEL unless -o is given.",
        epilog="examples:\n"
               "  minicnn export run1/best.npz --format onnx     # run1/best.onnx\n"
               "  minicnn export run1/best.keras --format torch  # run1/best.pt2")
    e.add_argument("model", metavar="MODEL", help="a minicnn .npz or a Keras 3 .keras file")
    e.add_argument("--format", required=True, choices=EXPORT_EXTENSIONS,
                   help="onnx, keras or torch")
    e.add_argument("-o", "--output", default=None, metavar="OUT",
                   help="where to write (default: MODEL with .onnx, .keras or .pt2)")
    e.add_argument("--opset", type=int, default=None,
                   help="ONNX opset version (default 17)")
    e.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


#: ``minicnn export --format`` -> the extension of the file written
EXPORT_EXTENSIONS = {"onnx": ".onnx", "keras": ".keras", "torch": ".pt2"}


def main(argv=None):
    """Run the command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "train":
            from . import train
            return train.run(args)
        if args.command == "info":
            return cmd_info()
        if args.command == "compile":
            return cmd_compile()
        if args.command == "gradcheck":
            return cmd_gradcheck(_backends(args.backend), args.tolerance)
        if args.command == "bench":
            return cmd_bench(args)
        if args.command == "export":
            return cmd_export(args)
    except _UsageError as exc:
        sys.stderr.write(f"minicnn {args.command}: {exc}\n")
        return 2
    raise AssertionError(args.command)      # pragma: no cover - argparse refuses others


class _UsageError(Exception):
    pass


def _backends(text):
    if text is None:
        return [config.get_backend()]
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise _UsageError("--backend: give a backend name or a comma list, e.g. numba,numpy")
    for name in names:
        if name.lower() not in config.BACKENDS:
            raise _UsageError(f"--backend: unknown backend {name!r}; choose among "
                              f"{', '.join(config.BACKENDS)}")
    return [n.lower() for n in names]


# ----------------------------------------------------------------------------- export
def cmd_export(args, stream=None):
    """``minicnn export MODEL --format onnx|keras|torch [-o OUT] [--opset N] [--overwrite]``."""
    import os

    from . import models
    out = stream or sys.stdout
    src = args.model
    if not os.path.isfile(src):
        raise _UsageError(f"no such model file {src!r}")
    if args.opset is not None and args.format != "onnx":
        raise _UsageError(f"--opset is for --format onnx, received --format {args.format}")
    dest = args.output
    if dest is None:
        low = src.lower()
        stem = src[:-len(".keras")] if low.endswith(".keras") else os.path.splitext(src)[0]
        dest = stem + EXPORT_EXTENSIONS[args.format]
    if os.path.abspath(dest) == os.path.abspath(src):
        raise _UsageError(f"the output {dest!r} is the model file itself; give -o OUT")
    if os.path.exists(dest) and not args.overwrite:
        raise _UsageError(f"{dest!r} exists; pass --overwrite to replace it or -o for "
                          f"another name")
    try:
        # the optimizer state travels only into a .keras file (which holds one)
        model = models.load_model(src, compile=args.format == "keras")
        if args.format == "keras":
            model.save(dest)
        elif args.format == "onnx":
            model.export(dest, format="onnx", opset_version=args.opset)
        else:
            model.export(dest, format="torch")
    except (ValueError, ImportError, OSError) as exc:
        raise _UsageError(str(exc)) from None
    out.write(f"wrote {dest} ({args.format}, {model.count_params():,} parameters, "
              f"input {('batch',) + tuple(model.input_shape)} NHWC)\n")
    return 0


# ----------------------------------------------------------------------------- info
def _warm_in_parallel(out):
    """Compile :data:`minicnn.ops.warmup.GROUPS` in one process each (at most one per core);
    on one core, in this process. Returns the seconds taken."""
    from .ops import warmup
    t0 = time.perf_counter()
    groups = list(warmup.GROUPS)
    if (os.cpu_count() or 1) < 2 or os.environ.get("NUMBA_DISABLE_JIT") == "1":
        for group in groups:
            warmup.run(group)
        return time.perf_counter() - t0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
    procs = [subprocess.Popen([sys.executable, "-c", "import sys; from minicnn.ops import "
                               "warmup; warmup.run(sys.argv[1])", group], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for group in groups]
    for group, proc in zip(groups, procs):
        _, err = proc.communicate()
        if proc.returncode != 0:            # the models below compile what it did not
            out.write(f"  warning: compiling the {group} kernels failed (exit "
                      f"{proc.returncode}): {err.strip().splitlines()[-1:]}\n")
    return time.perf_counter() - t0


def cmd_compile(stream=None):
    """Warm Numba's cache: the kernels of :mod:`minicnn.ops.warmup` in parallel processes,
    then one training step, one prediction and evaluate of each model of
    :mod:`minicnn.models.zoo`, float32, on the numba backend (which load them, and compile
    anything the warm-up missed)."""
    from .models import zoo
    out = stream or sys.stdout
    with config.use_backend("numba"):
        cold = config.compile_notice() is not None
    out.write(("compiling kernels for this CPU" if cold else "the kernel cache is warm; "
               "checking every kernel loads") + "...\n")
    out.flush()
    t0 = time.perf_counter()
    with config.use_backend("numba"):
        if cold:
            out.write(f"  kernels, in parallel: {_warm_in_parallel(out):.1f} s\n")
            out.flush()
        rng = np.random.default_rng(0)
        for name, build in zoo.MODELS.items():
            model = build()
            model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            x = rng.random((2,) + tuple(model.input_shape), dtype=np.float32)
            y = np.array([[0], [1]])
            model.train_on_batch(x, y)
            model.predict_on_batch(x)
            model.evaluate(x, y, verbose=0)
            out.write(f"  {name}: {time.perf_counter() - t0:.1f} s\n")
            out.flush()
    out.write(f"done in {time.perf_counter() - t0:.1f} s; later runs start at once\n")
    return 0


def cmd_info(stream=None):
    import numba
    from threadpoolctl import threadpool_info

    from . import machine, ops
    out = stream or sys.stdout
    ops.backend_module()          # load the active backend: on numba it limits BLAS to 1 thread
    env = os.environ.get("MINICNN_BACKEND")
    cpu = machine.cpu_info()
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    rows = [
        ("minicnn", __version__),
        ("python", (f"{platform.python_version()} ({platform.python_implementation()}, "
                    f"{platform.system()} {platform.machine()})")),
        ("numpy", np.__version__),
        ("numba", numba.__version__),
        ("cpu", machine.describe_cpu(cpu)),
        ("backend", config.get_backend() + (f" (MINICNN_BACKEND={env})" if env else "")),
        ("threads", (f"{config.get_num_threads()} (Numba pool of "
                     f"{numba.config.NUMBA_NUM_THREADS}; {os.cpu_count()} CPUs)")),
        ("numba threading layer", config.threading_layer()),
        ("waiting threads", config.apply_wait_policy()),
        ("threads under load", config.adapt_status()),
        ("malloc", config.malloc_status()),
        ("huge pages", config.heap_status()),
        ("OPENBLAS_CORETYPE", f"{coretype} (pins OpenBLAS's kernels; see README FAQ)" if coretype
         else "unset (each OpenBLAS picks its kernels for this CPU when it loads)"),
    ]
    width = max(len(k) for k, _ in rows) + 1
    for key, value in rows:
        out.write(f"{key + ':':<{width}} {value}\n")
    libs = threadpool_info()
    note = (": BLAS held at 1 thread, Numba owns the parallelism"
            if config.get_backend() == "numba" else "")
    out.write(f"BLAS and OpenMP libraries (threadpoolctl, {len(libs)} loaded{note}):\n")
    kernels = []
    for lib in libs:
        n = lib.get("num_threads")
        arch = lib.get("architecture")
        path = lib.get("filepath") or ""
        # Numba's np.dot calls SciPy's BLAS; NumPy's serves the numpy backend's matmuls
        role = ("; SciPy's: every numba-backend GEMM" if "scipy" in os.path.basename(
                    os.path.dirname(path)) else
                "; NumPy's: the numpy backend's GEMMs" if "numpy" in os.path.basename(
                    os.path.dirname(path)) else "")
        out.write(f"  {lib.get('internal_api')} {lib.get('version') or '(version unknown)'}: "
                  f"{n} thread{'' if n == 1 else 's'}{f', {arch} kernels' if arch else ''} "
                  f"({lib.get('user_api')}{role}, {path})\n")
        if lib.get("internal_api") == "openblas" and arch and arch not in kernels:
            kernels.append(arch)
    for arch in kernels:
        out.write(f"OpenBLAS kernels: {machine.describe_openblas(arch, cpu['simd'], coretype)}\n")
    out.flush()
    return 0


# ----------------------------------------------------------------------------- gradcheck
_KINK = 1e-3        # keep every ReLU pre-activation this far from 0, where it has no gradient


def _gradcheck_cases():
    """``(description, layer, input_shape, batch, x or None, training)`` for each layer type."""
    from .layers import (Activation, AveragePooling2D, BatchNormalization, Conv2D, Dense,
                         Dropout, Flatten, GlobalAveragePooling2D, GlobalMaxPooling2D, LeakyReLU,
                         MaxPooling2D, RandomFlip, RandomTranslation, ReLU, Rescaling, Softmax,
                         ZeroPadding2D)
    f64 = {"dtype": "float64"}
    rng = np.random.default_rng(1)

    def distinct(shape, batch=2):
        size = batch * int(np.prod(shape))      # no ties in a pooling window
        return (rng.permutation(size) * 0.01 - size * 0.005).reshape((batch,) + shape)

    def off_kink(shape, batch=2):
        x = rng.standard_normal((batch,) + shape)
        x[np.abs(x) < _KINK] += 2 * _KINK
        return x

    return [
        ("Conv2D 3x3 same relu", Conv2D(3, 3, padding="same", activation="relu", **f64),
         (6, 6, 2), 2, None, False),
        ("Conv2D 3x3/2 valid tanh, no bias",
         Conv2D(2, 3, strides=2, padding="valid", activation="tanh", use_bias=False, **f64),
         (7, 7, 2), 2, None, False),
        ("Conv2D 2x3/(1,2) same softmax", Conv2D(3, (2, 3), strides=(1, 2), padding="same",
                                                 activation="softmax", **f64),
         (4, 7, 2), 2, None, False),
        ("MaxPooling2D 2x2", MaxPooling2D(2, **f64), (4, 6, 2), 2, distinct((4, 6, 2)), False),
        ("MaxPooling2D 3x3/2 same", MaxPooling2D(3, strides=2, padding="same", **f64),
         (7, 6, 1), 2, distinct((7, 6, 1)), False),
        ("Flatten", Flatten(**f64), (3, 2, 4), 2, None, False),
        ("Dense relu", Dense(4, activation="relu", **f64), (5,), 3, None, False),
        ("Dense softmax", Dense(4, activation="softmax", **f64), (5,), 3, None, False),
        ("Activation sigmoid", Activation("sigmoid", **f64), (3, 4), 2, None, False),
        ("Activation tanh", Activation("tanh", **f64), (3, 4), 2, None, False),
        ("Activation softmax", Activation("softmax", **f64), (3, 4), 2, None, False),
        ("ReLU", ReLU(**f64), (4, 3, 2), 2, off_kink((4, 3, 2)), False),
        ("Dropout 0.4 (training)", Dropout(0.4, seed=7, **f64), (6, 5), 2, None, True),
        ("RandomFlip (training)", RandomFlip("horizontal_and_vertical", seed=4, **f64),
         (4, 5, 2), 4, None, True),
        ("RandomTranslation (training)", RandomTranslation(0.4, 0.3, seed=5, **f64),
         (5, 6, 2), 4, None, True),
        ("MaxPooling2D 3x3/1 same", MaxPooling2D(3, strides=1, padding="same", **f64),
         (4, 5, 2), 2, distinct((4, 5, 2)), False),
        ("AveragePooling2D 2x2", AveragePooling2D(2, **f64), (4, 6, 2), 2, None, False),
        ("AveragePooling2D 3x3/2 same", AveragePooling2D(3, strides=2, padding="same", **f64),
         (5, 6, 2), 2, None, False),
        ("GlobalAveragePooling2D", GlobalAveragePooling2D(**f64), (3, 4, 2), 2, None, False),
        ("GlobalMaxPooling2D", GlobalMaxPooling2D(**f64), (3, 4, 2), 2, distinct((3, 4, 2)),
         False),
        ("BatchNormalization (training, NHWC)", BatchNormalization(**f64), (3, 3, 2), 4, None,
         True),
        ("BatchNormalization (inference, Dense)", BatchNormalization(**f64), (5,), 3, None,
         False),
        ("LeakyReLU", LeakyReLU(**f64), (4, 3), 2, off_kink((4, 3)), False),
        ("Activation gelu", Activation("gelu", **f64), (3, 4), 2, None, False),
        ("Activation swish", Activation("swish", **f64), (3, 4), 2, None, False),
        ("Activation elu", Activation("elu", **f64), (3, 4), 2, off_kink((3, 4)), False),
        ("Rescaling", Rescaling(0.5, offset=-1.0, **f64), (3, 4), 2, None, False),
        ("ZeroPadding2D", ZeroPadding2D(((1, 0), (2, 1)), **f64), (3, 3, 2), 2, None, False),
        ("Softmax", Softmax(**f64), (3, 5), 2, None, False),
        ("graph: Conv2D + Add + Concatenate", _small_graph(), (5, 5, 2), 2, None, False),
    ]


def _small_graph():
    """A graph model whose input fans out into two branches joined by Add and Concatenate."""
    from . import Input, Model
    from .layers import Add, Concatenate, Conv2D, Dense, Flatten
    f64 = {"dtype": "float64"}
    x = Input((5, 5, 2), dtype="float64")
    a = Conv2D(2, 3, padding="same", activation="tanh", **f64)(x)
    b = Add(**f64)([a, x])
    c = Concatenate(**f64)([b, Conv2D(1, 1, **f64)(x)])
    model = Model(x, Dense(3, **f64)(Flatten(**f64)(c)))
    return model


def _fused_conv_pool():
    """Conv2D(relu) + MaxPooling2D(2, 2) as the fused step of the numba backend."""
    from .layers import Conv2D, MaxPooling2D, fused
    return fused.ConvReluPool(Conv2D(3, 3, padding="same", activation="relu",
                                        dtype="float64"), MaxPooling2D(2, dtype="float64"))


def _prepare(layer, input_shape, batch, rng):
    """Seeded parameters, and an input whose ReLU pre-activations stay off the kink."""
    from . import ops
    if not layer.built:
        layer.build(input_shape)
    for name, p in layer.params.items():
        p[...] = rng.standard_normal(p.shape) * (0.5 if name.endswith("kernel") else 0.2)
        if name.endswith("moving_variance") or name.endswith("gamma"):
            p[...] = 0.5 + np.abs(p)            # a variance, and a scale away from 0
    conv = getattr(layer, "conv", layer)
    for _ in range(100):
        x = rng.standard_normal((batch,) + tuple(input_shape))
        if getattr(conv, "activation", None) != "relu" or "kernel" not in conv.params:
            return x
        if len(input_shape) == 3:
            z = ops.conv2d_forward(x, conv.params["kernel"], conv.params.get("bias"),
                                   conv.strides, conv.pads)
        else:
            z = ops.dense_forward(x, conv.params["kernel"], conv.params.get("bias"))
        if np.abs(z).min() > _KINK:
            return x
    raise RuntimeError(f"gradcheck: no input away from ReLU's kink for {layer!r}")


def gradcheck_rows(backend):
    """``[(case, gradient, relative error)]`` for every layer type and loss on ``backend``."""
    from . import gradcheck, losses
    rows = []
    with config.use_backend(backend):
        cases = _gradcheck_cases()
        if backend == "numba":
            cases.append(("Conv2D relu + MaxPooling2D (fused step)", _fused_conv_pool(),
                          (6, 6, 2), 2, None, False))
        for i, (desc, layer, shape, batch, x, training) in enumerate(cases):
            rng = np.random.default_rng(100 + i)
            x0 = _prepare(layer, shape, batch, rng)
            x = x0 if x is None else x
            errors = gradcheck.check_layer(layer, shape, batch_size=batch, x=x,
                                           training=training)
            rows += [(desc, f"d{key}" if key != "dx" else "dx", err)
                     for key, err in errors.items()]
        rng = np.random.default_rng(7)
        logits = rng.standard_normal((4, 5)) * 1.5
        labels = rng.integers(0, 5, size=4)
        for desc, loss, y in (("CategoricalCrossentropy", losses.CategoricalCrossentropy(),
                               np.eye(5)[labels]),
                              ("SparseCategoricalCrossentropy",
                               losses.SparseCategoricalCrossentropy(), labels)):
            for key, err in gradcheck.check_loss(loss, logits, y).items():
                what = "d/dlogits (fused softmax)" if key == "fused_logits" else "d/dprobabilities"
                rows.append((desc, what, err))
        rows += _model_rows(gradcheck, rng)
    return rows


def _model_rows(gradcheck, rng):
    """Whole training losses: label smoothing, sample weights, from_logits, L2 and L1L2."""
    from . import Input, Model, losses, regularizers
    from .layers import BatchNormalization, Dense
    f64 = {"dtype": "float64"}
    x = Input((4,), dtype="float64")
    h = Dense(5, activation="tanh", kernel_regularizer=regularizers.L2(0.05), **f64)(x)
    h = BatchNormalization(**f64)(h)
    out = Dense(3, kernel_regularizer=regularizers.L1L2(0.01, 0.02), **f64)(h)
    rows = []
    xv = rng.standard_normal((6, 4))
    labels = rng.integers(0, 3, 6)
    for desc, loss, act, y, w in (
            ("model: L2/L1L2 + label_smoothing 0.1", losses.CategoricalCrossentropy(
                label_smoothing=0.1), "softmax", np.eye(3)[labels], None),
            ("model: sparse CE from_logits, sample_weight",
             losses.SparseCategoricalCrossentropy(from_logits=True), "linear", labels,
             rng.random(6) * 2)):
        model = Model(x, Dense(3, activation=act, **f64)(out) if act == "softmax" else out)
        model.compile("sgd", loss)
        for path, err in gradcheck.check_model(model, xv, y, sample_weight=w).items():
            rows.append((desc, f"d{path}", err))
    return rows


def cmd_gradcheck(backends, tolerance=GRADCHECK_TOLERANCE, stream=None):
    out = stream or sys.stdout
    failed = 0
    for backend in backends:
        t0 = time.perf_counter()
        rows = gradcheck_rows(backend)
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        out.write(f"gradcheck, backend {backend}, float64, central differences (eps 1e-6), "
                  f"relative error ||a - n|| / (||a|| + ||n||), pass below {tolerance:g}\n")
        out.write(f"{'layer / loss':<{w0}}  {'gradient':<{w1}}  {'rel. error':>10}  result\n")
        out.write("-" * (w0 + w1 + 22) + "\n")
        for desc, grad, err in rows:
            ok = err < tolerance
            failed += not ok
            out.write(f"{desc:<{w0}}  {grad:<{w1}}  {err:>10.2e}  {'pass' if ok else 'FAIL'}\n")
        bad = sum(err >= tolerance for _, _, err in rows)
        out.write(f"{len(rows) - bad}/{len(rows)} gradients pass on {backend} "
                  f"({time.perf_counter() - t0:.1f}s)\n\n")
    out.flush()
    return 1 if failed else 0


# ----------------------------------------------------------------------------- bench
def _gemm_times(threads, size=1024, repeats=5, min_time=0.15):
    """Seconds of each float32 ``size x size`` NumPy matmul, BLAS at ``threads`` threads,
    after one untimed call: at least ``repeats`` calls, more until ``min_time`` s have
    passed (at most 200), so that the load of other processes can be measured meanwhile."""
    from threadpoolctl import threadpool_limits
    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    times = []
    with threadpool_limits(limits=threads, user_api="blas"):
        a @ b
        while len(times) < repeats or (sum(times) < min_time and len(times) < 200):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
    return times


def _step_flops(step, n):
    """Multiply-adds x 2 of a step's forward and backward (0 for steps without weights)."""
    conv = getattr(step, "conv", step)
    kernel = getattr(conv, "params", {}).get("kernel")
    if kernel is None:
        return 0.0, 0.0
    if kernel.ndim == 4:
        oh, ow, _ = conv.output_shape
        fwd = 2.0 * n * oh * ow * kernel.size
    else:
        fwd = 2.0 * n * kernel.size
    # backward: the kernel gradient always, the input gradient unless it is the first layer
    return fwd, fwd * (2 if conv.compute_input_gradient else 1)


def bench_backend(backend, batch_size, repeats, warmup):
    """Per-step forward/backward times of the seed model's training step, in seconds.

    Returns ``(rows, whole, infer)``: ``rows`` is ``[(name, output shape or None, forward
    times, forward FLOPs, backward times, backward FLOPs)]`` (empty time lists where a step
    has no such pass), ``whole`` the times of ``train_on_batch`` and ``infer`` those of
    ``predict_on_batch``, ``repeats`` of each.
    """
    from .train import build_model
    rows = []
    with config.use_backend(backend):
        config.set_random_seed(0)
        rng = np.random.default_rng(0)
        x = rng.random((batch_size, 32, 32, 3), dtype=np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, size=batch_size)]
        model = build_model((32, 32, 3), 10)
        model.compile(optimizer="adam", loss="categorical_crossentropy")
        for _ in range(max(warmup, 1)):          # pays for the JIT: never timed
            model.train_on_batch(x, y)
        # the plan fit runs (fused steps on numba); the seed model is a chain of steps
        steps = [layer for layer, _, _ in model.steps()]
        fwd = [[] for _ in steps]
        bwd = [[] for _ in steps]
        loss_t, update_t, whole, infer = [], [], [], []
        for _ in range(repeats):
            h = x
            for i, step in enumerate(steps):
                t = time.perf_counter()
                h = step.forward(h, training=True)
                fwd[i].append(time.perf_counter() - t)
            t = time.perf_counter()
            _, dy, dz = model.compute_loss(h, y)
            loss_t.append(time.perf_counter() - t)
            for i in reversed(range(len(steps))):
                t = time.perf_counter()
                if i == len(steps) - 1 and dz is not None:
                    dy = steps[i].backward_preactivation(dz)
                else:
                    dy = steps[i].backward(dy)
                bwd[i].append(time.perf_counter() - t)
                if dy is None:
                    break
            t = time.perf_counter()
            model.apply_gradients()
            update_t.append(time.perf_counter() - t)
        for _ in range(repeats):
            t = time.perf_counter()
            model.train_on_batch(x, y)
            whole.append(time.perf_counter() - t)
        model.predict_on_batch(x)
        for _ in range(repeats):
            t = time.perf_counter()
            model.predict_on_batch(x)
            infer.append(time.perf_counter() - t)
        for i, step in enumerate(steps):
            f_flops, b_flops = _step_flops(step, batch_size)
            rows.append((step.name + _conv_algorithm_note(step, batch_size), step.output_shape,
                         fwd[i], f_flops, bwd[i], b_flops if bwd[i] else 0.0))
        rows.append(("loss (softmax cross-entropy)", None, loss_t, 0.0, [], 0.0))
        update = f"{type(model.optimizer).__name__} update ({model.count_params():,} parameters)"
        rows.append((update, None, [], 0.0, update_t, 0.0))
    return rows, whole, infer


def _conv_algorithm_note(step, batch_size):
    """`` [forward/backward algorithm]`` of a conv step (``fused im2col`` for the fused
    conv+ReLU+pool kernel), '' for any other step."""
    from .layers import Conv2D
    conv = getattr(step, "conv", step)
    if not isinstance(conv, Conv2D) or not conv.built:
        return ""
    fwd, bwd = conv.algorithm_for((batch_size,) + tuple(conv.input_shape))
    fused = getattr(step, "fused_forward", None) if conv is not step else None
    if fused is not None:
        back = step.fused_backward
        return f" [fused {fused}]" if fused == back else f" [fused {fused}/{back}]"
    return f" [{fwd}]" if fwd == bwd else f" [{fwd}/{bwd}]"


def _warn(out, lines):
    for line in lines:
        out.write(f"WARNING: {line}\n")


def cmd_bench(args, stream=None):
    from . import machine
    out = stream or sys.stdout
    for key in ("batch_size", "repeats"):
        if getattr(args, key) < 1:
            raise _UsageError(f"--{key.replace('_', '-')} must be >= 1, "
                              f"received {getattr(args, key)}")
    if args.warmup < 0:
        raise _UsageError(f"--warmup must be >= 0, received {args.warmup}")
    backends = _backends(args.backend)
    if args.threads is not None:
        try:
            config.set_num_threads(args.threads)
        except ValueError as exc:
            raise _UsageError(str(exc)) from None
    threads = config.get_num_threads()
    cpu = machine.cpu_info()
    cpus = cpu["cpus"] or threads
    cpu_name = f"{cpu['model_name']}" + (f" (family {cpu['family']})"
                                        if cpu["family"] is not None else "")
    whole_run = machine.LoadMeter().start()
    with machine.LoadMeter() as roof_load:
        t1 = _gemm_times(1)
        tn = _gemm_times(threads)
    gflop = 2.0 * 1024 ** 3 / 1e9
    roof1, roof_n = gflop / min(t1), gflop / min(tn)
    out.write(f"CPU: {machine.describe_cpu(cpu)}\n")
    out.write(f"Roof: NumPy float32 GEMM 1024x1024, best of {len(t1)}/{len(tn)}: {roof1:.1f} "
              f"GFLOP/s on 1 thread (median {gflop / np.median(t1):.1f}), {roof_n:.1f} GFLOP/s "
              f"on {threads} threads (median {gflop / np.median(tn):.1f}; "
              f"{roof_n / roof1:.2f}x the 1-thread roof)\n")
    out.write(f"OpenBLAS kernels: {config.openblas_kernels()}\n")
    out.write(f"Load: {roof_load.describe('while the roof was measured')}\n")
    warnings = machine.load_warnings(roof_load.others_cpus, cpus, threads, roof1, roof_n)
    _warn(out, warnings)
    out.write("\n")
    summary = []
    for backend in backends:
        with machine.LoadMeter() as load:
            rows, whole, infer = bench_backend(backend, args.batch_size, args.repeats,
                                               args.warmup)
        out.write(f"Seed model, backend {backend}, batch {args.batch_size}, {threads} threads, "
                  f"float32, on {cpu_name}: medians of {args.repeats} repeats, +-: half the "
                  f"interquartile range; GFLOP/s counts 2 x multiply-adds, % of the "
                  f"{threads}-thread roof ({roof_n:.1f} GFLOP/s)\n")
        w = max(len(r[0]) for r in rows)
        head = (f"{'step':<{w}}  {'output':<13} {'fwd ms':>8} {'+-':>6} {'GFLOP/s':>8} "
                f"{'roof':>5}  {'bwd ms':>8} {'+-':>6} {'GFLOP/s':>8} {'roof':>5}")
        out.write(head + "\n" + "-" * len(head) + "\n")

        def cells(times, flops):
            if not times:
                return f"{'':>8} {'':>6} {'-':>8} {'':>5}"
            s = machine.spread(times)
            ms, half = 1000.0 * s["median"], 500.0 * (s["q3"] - s["q1"])
            if not flops:
                rate = f"{'-':>8} {'':>5}"
            else:
                g = flops / s["median"] / 1e9
                rate = f"{g:>8.1f} {100.0 * g / roof_n:>4.0f}%"
            return f"{ms:>8.2f} {half:>6.2f} {rate}"

        for name, shape, f_t, f_fl, b_t, b_fl in rows:
            shape_s = "" if shape is None else "x".join(map(str, shape))
            out.write(f"{name:<{w}}  {shape_s:<13} {cells(f_t, f_fl)}  {cells(b_t, b_fl)}\n")
        total_f = sum(1000.0 * machine.spread(r[2])["median"] for r in rows if r[2])
        total_b = sum(1000.0 * machine.spread(r[4])["median"] for r in rows if r[4])
        flops = sum(r[3] + r[5] for r in rows)
        out.write("-" * len(head) + "\n")
        out.write(f"{'sum of the medians':<{w}}  {'':<13} {total_f:>8.2f} {'':>21} "
                  f"{total_b:>8.2f}\n")
        step = machine.spread(whole)
        ips = args.batch_size / step["median"]
        out.write(f"whole training step (train_on_batch): "
                  f"{machine.format_spread(whole, scale=1000.0)}; {ips:.0f} images/s, "
                  f"{flops / step['median'] / 1e9:.1f} GFLOP/s "
                  f"({100.0 * flops / step['median'] / 1e9 / roof_n:.0f}% of the roof)\n")
        out.write(f"inference (predict_on_batch): {machine.format_spread(infer, scale=1000.0)}; "
                  f"{args.batch_size / machine.spread(infer)['median']:.0f} images/s\n")
        out.write("Load: " + load.describe("during this backend's measurement") + "\n")
        found = machine.load_warnings(load.others_cpus, cpus, threads)
        _warn(out, found)
        warnings += found
        out.write("\n")
        summary.append((backend, step, ips))
    if len(summary) > 1:
        base = summary[0][1]["median"]
        out.write(f"backend   ms/step   min-max ms      images/s   vs first   ({cpu_name}, "
                  f"roof {roof_n:.1f} GFLOP/s on {threads} threads)\n")
        for backend, s, ips in summary:
            span = f"{1000 * s['min']:.2f}-{1000 * s['max']:.2f}"
            out.write(f"{backend:<9} {1000 * s['median']:>7.2f}   {span:<15} {ips:>8.0f}   "
                      f"{base / s['median']:>7.2f}x\n")
    whole_run.stop()
    out.write(f"\nLoad: {whole_run.describe('over the whole run')}\n")
    found = machine.load_warnings(whole_run.others_cpus, cpus, threads)
    _warn(out, found)
    warnings += found
    if warnings:
        out.write(f"{len(warnings)} warning(s): the machine was not quiet, do not quote these "
                  f"numbers\n")
    out.flush()
    return 0


if __name__ == "__main__":      # python -m minicnn.cli
    sys.exit(main())
