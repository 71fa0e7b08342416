"""im2col-GEMM against Winograd F(2x2, 3x3) and F(4x4, 3x3), per conv layer of the seed and
residual models.

For each 3x3 stride-1 convolution of the seed model and of the residual network
(``minicnn.models.zoo.resnet_cifar``), batch 64, float32, on the numba backend: the
median time of the forward pass, of the backward pass with the data gradient (dx,
dkernel, dbias) and without it (the first layer), for each algorithm, alternating them,
``--repeats`` calls each after a warm-up (compile time is never counted). F(4x4, 3x3) has
a forward pass only (its layers run F(2x2, 3x3)'s or im2col's backward).

Effective GFLOP/s = direct-convolution FLOPs (``2 n oh ow 9 c f`` per pass; the
backward with dx is two passes) / time, the same yardstick for both algorithms, so
Winograd can exceed the GEMM roof; "% of roof" divides it by ``threads x`` the
single-thread SGEMM rate measured here (``--roof-n`` square GEMM).

Usage::

    python benchmarks/conv_algorithms.py
    python benchmarks/conv_algorithms.py --repeats 20 --threads 2

Default runtime: about 30 s on a quiet 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import markdown_table, numpy_gemm_gflops, print_header, time_calls  # noqa: E402

#: (layer, h, w, c, f) of every 3x3 stride-1 'same' convolution shape in the two models
SHAPES = (
    ("seed conv1", 32, 32, 3, 32),
    ("seed conv2", 16, 16, 32, 64),
    ("seed conv3", 8, 8, 64, 64),
    ("resnet stem", 32, 32, 3, 32),
    ("resnet stage 1", 32, 32, 32, 32),
    ("resnet stage 2", 16, 16, 64, 64),
    ("resnet stage 3", 8, 8, 128, 128),
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=15, help="timed calls per kernel (15)")
    p.add_argument("--threads", type=int, default=None,
                   help="Numba threads (default: NUMBA_NUM_THREADS)")
    p.add_argument("--roof-n", type=int, default=1024, help="square GEMM of the roof (1024)")
    return p.parse_args(argv)


def passes(x, kernel, dy, pads):
    from minicnn.ops import numba_ops as nb
    return {
        "im2col": {
            "forward": lambda: nb.conv2d_forward(x, kernel, None, (1, 1), pads, relu=True),
            "backward": lambda: nb.conv2d_backward(x, kernel, dy, (1, 1), pads),
            "backward, no dx": lambda: nb.conv2d_backward(x, kernel, dy, (1, 1), pads,
                                                          need_dx=False),
        },
        "winograd": {
            "forward": lambda: nb.winograd_conv2d_forward(x, kernel, None, pads, relu=True),
            "backward": lambda: nb.winograd_conv2d_backward(x, kernel, dy, pads),
            "backward, no dx": lambda: nb.winograd_conv2d_backward(x, kernel, dy, pads,
                                                                   need_dx=False),
        },
        "winograd4": {
            "forward": lambda: nb.winograd4_conv2d_forward(x, kernel, None, pads, relu=True),
        },
    }


ALGOS = ("im2col", "winograd", "winograd4")


def main(argv=None):
    args = parse_args(argv)
    # the numba backend first: it holds BLAS at one thread (inside the kernels' prange),
    # and the roof's threadpool_limits then restores that limit, not BLAS's default
    # (restored to 2 threads, the Winograd backward ran 15x slower)
    from minicnn.ops import numba_ops  # noqa: F401
    if args.threads:
        numba.set_num_threads(args.threads)
    threads = numba.get_num_threads()
    roof1 = numpy_gemm_gflops(1, n=args.roof_n)
    print_header("conv algorithms: im2col-GEMM vs Winograd F(2x2, 3x3) and F(4x4, 3x3)")
    print(f"single-thread SGEMM roof ({args.roof_n}^3): {roof1:.0f} GFLOP/s; "
          f"Numba threads {threads}; roof used: {threads} x {roof1:.0f} = "
          f"{threads * roof1:.0f} GFLOP/s\n")
    rng = np.random.default_rng(0)
    rows = []
    for name, h, w, c, f in SHAPES:
        n = args.batch
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        kernel = (rng.standard_normal((3, 3, c, f)) * 0.1).astype(np.float32)
        dy = rng.standard_normal((n, h, w, f)).astype(np.float32)
        fns = passes(x, kernel, dy, (1, 1, 1, 1))
        flops = 2.0 * n * h * w * 9 * c * f
        for pass_name, mult in (("forward", 1), ("backward", 2), ("backward, no dx", 1)):
            times = {a: [] for a in ALGOS if pass_name in fns[a]}
            for algo in times:
                time_calls(fns[algo][pass_name], 0, warmup=2)
            for _ in range(args.repeats):          # alternate, so drift hits both alike
                for algo in times:
                    times[algo] += time_calls(fns[algo][pass_name], 1, warmup=0)
            med = {a: statistics.median(t) for a, t in times.items()}
            cells = []
            for algo in ALGOS:
                if algo not in med:
                    cells += ["-", "-", "-"]
                    continue
                gf = mult * flops / med[algo] / 1e9
                lo, hi = min(times[algo]), max(times[algo])
                cells += [f"{med[algo] * 1e3:.2f} ({lo * 1e3:.2f}-{hi * 1e3:.2f})", f"{gf:.0f}",
                          f"{100 * gf / (threads * roof1):.0f}%"]
            speedups = [f"{med['im2col'] / med[a]:.2f}x" if a in med else "-"
                        for a in ALGOS[1:]]
            rows.append([name, f"{h}x{w}x{c}->{f}", pass_name] + cells + speedups)
    header = ["layer", "shape", "pass"]
    for algo in ALGOS:
        header += [f"{algo} ms (min-max)", "GFLOP/s", "% roof"]
    print(markdown_table(header + ["winograd speed-up", "winograd4 speed-up"], rows))
    print(f"\nload average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
