"""How close minicnn's numba conv kernels come to this machine's float32 GEMM rate.

1. The roof: NumPy's float32 ``a @ b`` with BLAS limited to 1 and to 2 threads
   (threadpoolctl), on a big square GEMM and on the per-image GEMMs of the seed model's
   convolutions. The numba kernels run exactly these per-image GEMMs, one image per
   thread with single-threaded BLAS, so their ideal rate with ``T`` threads is about
   ``T x`` the single-thread roof at that shape:

   ======  ===========================  ======================  ======================
   layer   forward ``cols @ kernel``    dkernel ``cols.T @ dz``  dcols ``dz @ kernel.T``
   ======  ===========================  ======================  ======================
   conv1   1024 x 27 @ 27 x 32          27 x 1024 @ 1024 x 32    1024 x 32 @ 32 x 27
   conv2   256 x 288 @ 288 x 64         288 x 256 @ 256 x 64     256 x 64 @ 64 x 288
   conv3   64 x 576 @ 576 x 64          576 x 64 @ 64 x 64       64 x 64 @ 64 x 576
   ======  ===========================  ======================  ======================

2. minicnn's numba kernels at batch 64 (median of ``--repeats`` calls after a warm-up):
   conv forward (``relu=True``), the fused conv+relu+pool forward, backward for the
   weights only (``need_dx=False``) and weights + data (``need_dx=True``), and
   backward-data derived as the difference (the kernels compute both gradients in one
   pass that recomputes im2col). GFLOP/s from ``2 n oh ow kh kw c f`` per pass; "% of
   roof" divides by ``threads x`` the single-thread roof of that pass's GEMM shape(s).

Usage::

    python benchmarks/gemm_roof.py
    python benchmarks/gemm_roof.py --n 4096 --batch 64 --repeats 30 --threads 2

Default runtime: about 20 s on the quiet 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import sys

import numba
import numpy as np

import minicnn

from _common import (CONVS, markdown_table, median, numpy_gemm_gflops, print_header,
                     time_calls)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048, help="size of the square GEMM (default 2048)")
    p.add_argument("--batch", type=int, default=64, help="batch of the kernel timings (64)")
    p.add_argument("--repeats", type=int, default=20,
                   help="timed calls per kernel (default 20, after 2 warm-up calls)")
    p.add_argument("--threads", type=int, default=None,
                   help="Numba threads for the kernels (default NUMBA_NUM_THREADS)")
    p.add_argument("--blas-threads", default="1,2",
                   help="BLAS thread counts for the roof (default 1,2)")
    return p.parse_args(argv)


def gemm_shapes(s):
    """The three per-image GEMMs of conv ``s`` as ``{pass: (m, k, n)}``."""
    p, kk, f = s.gemm
    return {"forward": (p, kk, f), "dkernel": (kk, p, f), "dcols": (p, f, kk)}


def measure_roofs(blas_threads, n):
    """``{(label, threads): GFLOP/s}`` for the square GEMM and every per-image conv GEMM."""
    shapes = {f"square {n}": None}
    for name, s in CONVS.items():
        for pas, shape in gemm_shapes(s).items():
            shapes[f"{name} {pas} {shape[0]}x{shape[1]} @ {shape[1]}x{shape[2]}"] = shape
    roofs = {}
    for label, shape in shapes.items():
        for t in blas_threads:
            roofs[label, t] = numpy_gemm_gflops(t, n=n, shape=shape)
            print(f"roof {label}, {t} BLAS thread(s): {roofs[label, t]:.1f} GFLOP/s",
                  file=sys.stderr, flush=True)
    return roofs


def measure_kernels(batch, repeats):
    """Median seconds of each numba conv kernel at ``batch``: ``{(layer, op): seconds}``."""
    from minicnn import ops
    rng = np.random.default_rng(0)
    out = {}
    for name, s in CONVS.items():
        x = rng.standard_normal((batch, s.h, s.w, s.c)).astype(np.float32)
        kernel = (rng.standard_normal((s.kh, s.kw, s.c, s.f)) * 0.1).astype(np.float32)
        bias = np.zeros(s.f, np.float32)
        y = ops.conv2d_forward(x, kernel, bias, (1, 1), s.pads, relu=True)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        calls = {
            "forward": lambda: ops.conv2d_forward(x, kernel, bias, (1, 1), s.pads, relu=True),
            "backward weights": lambda: ops.conv2d_backward(x, kernel, dy, (1, 1), s.pads,
                                                            need_dx=False, y=y),
            "backward weights+data": lambda: ops.conv2d_backward(x, kernel, dy, (1, 1), s.pads,
                                                                 need_dx=True, y=y),
        }
        if name != "conv3":
            yp, arg = ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), s.pads)
            dyp = rng.standard_normal(yp.shape).astype(np.float32)
            calls["fused conv+relu+pool forward"] = lambda: ops.conv2d_relu_maxpool_forward(
                x, kernel, bias, (1, 1), s.pads)
            calls["fused backward weights"] = lambda: ops.conv2d_relu_maxpool_backward(
                x, kernel, dyp, yp, arg, (1, 1), s.pads, need_dx=False)
            calls["fused backward weights+data"] = lambda: ops.conv2d_relu_maxpool_backward(
                x, kernel, dyp, yp, arg, (1, 1), s.pads, need_dx=True)
        for op, fn in calls.items():
            out[name, op] = median(time_calls(fn, repeats, warmup=2))
            print(f"{name} {op}: {out[name, op] * 1e3:.2f} ms", file=sys.stderr, flush=True)
    return out


def main(argv=None):
    args = parse_args(argv)
    blas_threads = [int(t) for t in args.blas_threads.split(",") if t.strip()]
    minicnn.set_backend("numba")
    if args.threads:
        minicnn.set_num_threads(args.threads)
    threads = minicnn.get_num_threads()
    print_header("Conv kernels against the float32 GEMM roof")

    # the roofs first, before the conv kernels keep Numba's pool busy (only a trivial
    # parallel region has run, to name the threading layer)
    roofs = measure_roofs(blas_threads, args.n)
    rows = [[label, t, f"{g:.1f}"] for (label, t), g in roofs.items()]
    print("### NumPy float32 GEMM (`np.matmul(a, b, out=c)`, BLAS threads set with "
          "threadpoolctl)\n")
    print(markdown_table(["GEMM (m x k @ k x n)", "BLAS threads", "GFLOP/s"], rows))

    minicnn.set_num_threads(threads)          # back to 1-thread BLAS under Numba's pool
    times = measure_kernels(args.batch, args.repeats)
    one = blas_threads[0]

    def roof_of(layer, passes):
        """Single-thread rate of the pass mix: total flops / sum of per-pass times."""
        s = CONVS[layer]
        shapes = gemm_shapes(s)
        labels = {pas: f"{layer} {pas} {m}x{k} @ {k}x{n}" for pas, (m, k, n) in shapes.items()}
        per_pass = s.flops(1)
        return len(passes) * per_pass / sum(per_pass / roofs[labels[p], one] for p in passes)

    rows = []
    for layer, s in CONVS.items():
        flops = s.flops(args.batch)
        for op, passes in (("forward", ["forward"]),
                           ("fused conv+relu+pool forward", ["forward"]),
                           ("backward weights", ["dkernel"]),
                           ("backward weights+data", ["dkernel", "dcols"]),
                           ("fused backward weights", ["dkernel"]),
                           ("fused backward weights+data", ["dkernel", "dcols"])):
            if (layer, op) not in times:
                continue
            sec = times[layer, op]
            gf = len(passes) * flops / sec / 1e9
            roof = threads * roof_of(layer, passes)
            rows.append([layer, op, f"{sec * 1e3:.2f}", f"{gf:.1f}", f"{roof:.0f}",
                         f"{100 * gf / roof:.0f}%"])
        for prefix in ("", "fused "):
            wd, w = times.get((layer, f"{prefix}backward weights+data")), \
                times.get((layer, f"{prefix}backward weights"))
            if wd is None or w is None:
                continue
            diff = wd - w
            roof = threads * roof_of(layer, ["dcols"])
            if diff > 0:
                gf = flops / diff / 1e9
                rows.append([layer, f"{prefix}backward data (derived: difference)",
                             f"{diff * 1e3:.2f}", f"{gf:.1f}", f"{roof:.0f}",
                             f"{100 * gf / roof:.0f}%"])
            else:
                rows.append([layer, f"{prefix}backward data (derived: difference)",
                             f"{diff * 1e3:.2f}", "noise", f"{roof:.0f}", ""])
    print(f"\n### minicnn numba conv kernels, batch {args.batch}, {threads} Numba thread(s), "
          f"median of {args.repeats} calls\n")
    print(markdown_table(["layer", "kernel", "median ms", "GFLOP/s",
                          f"roof GFLOP/s ({threads} x 1-thread GEMM)", "% of roof"], rows))
    print("\nThe roof of a pass mix is the single-thread rate of its per-image GEMMs "
          "(total FLOPs / total GEMM time), times the Numba threads. The kernels also do "
          "im2col (and col2im), bias, ReLU and pooling, which the roof leaves out.")
    print(f"\nload average at the end: {tuple(round(v, 2) for v in os.getloadavg())}; "
          f"Numba threads {numba.get_num_threads()}")


if __name__ == "__main__":
    main()
