"""Every op of the seed model at the seed model's shapes, on every backend.

Run explicitly (the project's test run never collects ``benchmarks/``)::

    python -m pytest benchmarks/test_bench_kernels.py --benchmark-only \\
        --benchmark-columns=min,median,max,rounds

Shapes (NHWC, float32; ``n`` is the case's batch: 64 on numpy and numba, 1 on the
reference backend):

======  ==========================  =====================================
layer   input (per image)           op
======  ==========================  =====================================
conv1   32x32x3,  3x3x3x32, same    ``conv2d_forward(relu=True)``, fused conv+relu+pool
pool1   32x32x32 -> 16x16x32        ``maxpool2d_forward/backward``
conv2   16x16x32, 3x3x32x64, same   as conv1
pool2   16x16x64 -> 8x8x64          as pool1
conv3   8x8x64,   3x3x64x64, same   ``conv2d_forward(relu=True)``
dense1  4096 -> 64                  ``dense_forward/backward``
dense2  64 -> 10                    as dense1
loss    64x10 (n x 10)              ``softmax_cross_entropy`` (one-hot targets)
adam    319,178 parameters          ``adam_update``: per array (10 calls) and flat (1 call)
======  ==========================  =====================================

FLOPs: conv forward ``2 n oh ow kh kw c f``; the weight gradient costs the same, and
so does the data gradient. The conv backward kernels compute the weight and data
gradients in one pass per image (the data gradient reuses that image's dz, and the
pass recomputes im2col), so there is no separate data-gradient kernel to time: the
suite times ``need_dx=False`` ("weights") and ``need_dx=True`` ("weights+data") and
the summary reports **backward-data as the difference** of the two medians.
Dense: forward ``2 n k u``, backward ``4 n k u`` (dkernel and dx).
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import ops

from _common import CONVS, DENSES, PARAM_SHAPES, POOLS, SEED_PARAMS, dense_flops

F32 = np.float32
POOL = ((2, 2), (2, 2), (0, 0, 0, 0))       # pool_size, strides, pads of MaxPooling2D(2, 2)
BACKWARD_MODES = {"weights": False, "weights+data": True}


def _conv_inputs(s, n):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((n, s.h, s.w, s.c)).astype(F32)
    limit = np.sqrt(6.0 / (s.kh * s.kw * (s.c + s.f)))          # Glorot uniform
    kernel = rng.uniform(-limit, limit, (s.kh, s.kw, s.c, s.f)).astype(F32)
    bias = rng.uniform(-0.1, 0.1, s.f).astype(F32)
    return x, kernel, bias


# ----------------------------------------------------------------------------- convolution
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_conv_forward(bench, case, layer):
    """``ops.conv2d_forward(relu=True)``: im2col + GEMM + bias + ReLU."""
    s, n = CONVS[layer], case.batch
    x, kernel, bias = _conv_inputs(s, n)
    bench(lambda: ops.conv2d_forward(x, kernel, bias, (1, 1), s.pads, relu=True),
          group=f"conv forward {layer}", flops=s.flops(n), layer=layer, op="fwd")


@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_conv_relu_pool_forward(bench, case, layer):
    """``ops.conv2d_relu_maxpool_forward``: conv + bias + ReLU + 2x2 max-pool, fused on numba."""
    s, n = CONVS[layer], case.batch
    x, kernel, bias = _conv_inputs(s, n)
    bench(lambda: ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), s.pads),
          group=f"conv+relu+pool forward {layer}", flops=s.flops(n), layer=layer, op="fwd")


@pytest.mark.parametrize("mode", list(BACKWARD_MODES))
@pytest.mark.parametrize("layer", ["conv1", "conv2", "conv3"])
def test_conv_backward(bench, case, layer, mode):
    """``ops.conv2d_backward`` with the ReLU mask ``y`` (as Conv2D(relu) calls it)."""
    s, n = CONVS[layer], case.batch
    x, kernel, bias = _conv_inputs(s, n)
    y = ops.conv2d_forward(x, kernel, bias, (1, 1), s.pads, relu=True)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(F32)
    need_dx = BACKWARD_MODES[mode]
    bench(lambda: ops.conv2d_backward(x, kernel, dy, (1, 1), s.pads, need_dx=need_dx, y=y),
          group=f"conv backward {layer}", flops=s.flops(n) * (2 if need_dx else 1),
          layer=layer, op=f"bwd-{mode}", need_dx=need_dx)


@pytest.mark.parametrize("mode", list(BACKWARD_MODES))
@pytest.mark.parametrize("layer", ["conv1", "conv2"])
def test_conv_relu_pool_backward(bench, case, layer, mode):
    """``ops.conv2d_relu_maxpool_backward``: unpool + ReLU mask + dbias, then dkernel (and dx)."""
    s, n = CONVS[layer], case.batch
    x, kernel, bias = _conv_inputs(s, n)
    y, argmax = ops.conv2d_relu_maxpool_forward(x, kernel, bias, (1, 1), s.pads)
    dy = np.random.default_rng(2).standard_normal(y.shape).astype(F32)
    need_dx = BACKWARD_MODES[mode]
    bench(lambda: ops.conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, (1, 1), s.pads,
                                                   need_dx=need_dx),
          group=f"conv+relu+pool backward {layer}", flops=s.flops(n) * (2 if need_dx else 1),
          layer=layer, op=f"bwd-{mode}", need_dx=need_dx)


# ----------------------------------------------------------------------------- max pooling
@pytest.mark.parametrize("layer", list(POOLS))
def test_maxpool_forward(bench, case, layer):
    h, w, c = POOLS[layer]
    x = np.random.default_rng(3).standard_normal((case.batch, h, w, c)).astype(F32)
    # reads x, writes y and the int32 argmax (a quarter of x's size each)
    nbytes = x.nbytes + 2 * x.nbytes // 4
    bench(lambda: ops.maxpool2d_forward(x, *POOL), group=f"maxpool forward {layer}",
          nbytes=nbytes, layer=layer, op="fwd")


@pytest.mark.parametrize("layer", list(POOLS))
def test_maxpool_backward(bench, case, layer):
    h, w, c = POOLS[layer]
    x = np.random.default_rng(3).standard_normal((case.batch, h, w, c)).astype(F32)
    y, argmax = ops.maxpool2d_forward(x, *POOL)
    dy = np.random.default_rng(4).standard_normal(y.shape).astype(F32)
    # reads dy and argmax, writes dx
    nbytes = dy.nbytes + argmax.nbytes + x.nbytes
    bench(lambda: ops.maxpool2d_backward(dy, argmax, x.shape, *POOL),
          group=f"maxpool backward {layer}", nbytes=nbytes, layer=layer, op="bwd")


# ----------------------------------------------------------------------------- dense
def _dense_inputs(layer, n):
    k, u = DENSES[layer]
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, k)).astype(F32)
    limit = np.sqrt(6.0 / (k + u))
    kernel = rng.uniform(-limit, limit, (k, u)).astype(F32)
    bias = rng.uniform(-0.1, 0.1, u).astype(F32)
    return x, kernel, bias


@pytest.mark.parametrize("layer", list(DENSES))
def test_dense_forward(bench, case, layer):
    x, kernel, bias = _dense_inputs(layer, case.batch)
    bench(lambda: ops.dense_forward(x, kernel, bias), group=f"dense forward {layer}",
          flops=dense_flops(case.batch, *DENSES[layer]), layer=layer, op="fwd")


@pytest.mark.parametrize("layer", list(DENSES))
def test_dense_backward(bench, case, layer):
    """``ops.dense_backward(need_dx=True)``: both dense layers of the seed model need dx."""
    x, kernel, bias = _dense_inputs(layer, case.batch)
    dy = np.random.default_rng(6).standard_normal((case.batch, kernel.shape[1])).astype(F32)
    bench(lambda: ops.dense_backward(x, kernel, dy, need_dx=True),
          group=f"dense backward {layer}", flops=2 * dense_flops(case.batch, *DENSES[layer]),
          layer=layer, op="bwd")


# ----------------------------------------------------------------------------- loss
def test_softmax_cross_entropy(bench, case):
    """Mean softmax-CE from logits and its fused gradient, ``(n, 10)`` one-hot targets."""
    rng = np.random.default_rng(7)
    n = case.batch
    logits = rng.standard_normal((n, 10)).astype(F32)
    target = np.eye(10, dtype=F32)[rng.integers(0, 10, size=n)]
    bench(lambda: ops.softmax_cross_entropy(logits, target, False), group="softmax-CE",
          op="loss")


# ----------------------------------------------------------------------------- optimizer
def _adam_state(shapes):
    rng = np.random.default_rng(8)
    params = [(rng.standard_normal(s) * 0.05).astype(F32) for s in shapes]
    grads = [(rng.standard_normal(s) * 0.01).astype(F32) for s in shapes]
    ms = [np.zeros(s, F32) for s in shapes]
    vs = [np.zeros(s, F32) for s in shapes]
    return params, grads, ms, vs


ADAM_ARGS = (1e-3, 0.9, 0.999, 1e-7, 10)    # lr, beta_1, beta_2, epsilon, t (Python floats,
#                                             as the optimizer passes them)
# reads param, grad, m, v and writes param, m, v: 7 float32 per parameter
ADAM_BYTES = 7 * 4 * SEED_PARAMS


@pytest.mark.parametrize("layout", ["per-array", "flat"])
def test_adam(bench, case, layout):
    """``ops.adam_update`` over all 319,178 parameters: one call per parameter array (10,
    as :class:`minicnn.optimizers.Adam` does) or one call on a flat buffer."""
    shapes = PARAM_SHAPES if layout == "per-array" else ((SEED_PARAMS,),)
    params, grads, ms, vs = _adam_state(shapes)
    items = list(zip(params, grads, ms, vs))

    def step():
        for p, g, m, v in items:
            ops.adam_update(p, g, m, v, *ADAM_ARGS)

    bench(step, group="adam 319,178 params", nbytes=ADAM_BYTES, op=f"adam-{layout}",
          calls=len(items))
