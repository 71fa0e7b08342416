"""Every registered op on the numba backend with the kernels running as plain Python.

Run by ``tests/test_jit_disabled.py`` in a fresh process with ``NUMBA_DISABLE_JIT=1``
(the variable must be set before Numba is imported, hence the subprocess); it can also
be run by hand from the repository root::

    NUMBA_DISABLE_JIT=1 python tests/jit_disabled_run.py

For each op of :data:`minicnn.ops.OPS` the cases in :data:`CASES` run on the numba
backend and on the numpy backend with the same seeded inputs (tiny shapes: the kernels
are Python loops here), and one tiny model takes two training steps on both backends.
``sys.setprofile`` records which functions of ``minicnn/ops/_kernels/`` ran. The last
line printed is JSON::

    {"disable_jit": bool, "dispatchers": [kernels still compiled by Numba],
     "ops": {op: [{"case": str, "error": float | null, "exception": str | null}]},
     "model": {...same fields...}, "ran": [kernel module.function, ...],
     "unknown": [case names that are no registered op]}
"""
from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import numba  # noqa: E402

import minicnn  # noqa: E402
from minicnn import activations, layers, models, ops  # noqa: E402

KERNEL_DIR = os.path.join(REPO, "minicnn", "ops", "_kernels")
F64, F32 = np.float64, np.float32


def rel_err(a, b):
    """``||a - b|| / max(||a||, ||b||)`` in float64 (0 when both are 0); integer arrays
    (pooling's argmax) must be equal, whatever their integer dtype."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} != {b.shape}")
    if a.dtype.kind in "iub" or b.dtype.kind in "iub":
        return 0.0 if np.array_equal(a.astype(np.int64), b.astype(np.int64)) else np.inf
    if a.dtype != b.dtype:
        raise AssertionError(f"dtype {a.dtype} != {b.dtype}")
    a, b = a.astype(np.float64), b.astype(np.float64)
    denom = max(np.linalg.norm(a), np.linalg.norm(b))
    return 0.0 if denom == 0 else float(np.linalg.norm(a - b) / denom)


def outputs(result):
    """The arrays of an op's result (a tuple, one array, or None for in-place ops)."""
    parts = result if isinstance(result, tuple) else (result,)
    return [p for p in parts if p is not None]


# ----------------------------------------------------------------------------- cases
# A case is ``fn(dt) -> list of arrays``: it draws its inputs from its own seeded
# generator, so that it sees the same inputs on both backends, and returns what to
# compare. Setup calls of other ops (a forward pass for the argmax a backward needs)
# run on the backend under test too: each backend's backward consumes its own forward.
def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(rng, dt, *shape):
    return rng.standard_normal(shape).astype(dt)


def _distinct(rng, dt, *shape):
    """Values without ties (so the max-pool winner is the same on every backend)."""
    size = int(np.prod(shape))
    return ((rng.permutation(size) - size / 2) / size).reshape(shape).astype(dt)


#: convolution geometries: (x shape, kernel shape, strides, pads). 5x5 outputs stack two
#: images per GEMM; 17x17 ones (289 patch rows) take one image at a time; few channels
#: take the transposed patch layout, six channels with stride 2 the row layout.
CONV_GEOMETRIES = (
    ((3, 5, 5, 2), (3, 3, 2, 3), (1, 1), (1, 1, 1, 1)),
    ((2, 7, 6, 2), (2, 3, 2, 2), (2, 1), (0, 0, 1, 1)),
    ((2, 17, 17, 1), (3, 3, 1, 2), (1, 1), (1, 1, 1, 1)),
    ((2, 5, 5, 6), (3, 3, 6, 2), (2, 2), (1, 1, 1, 1)),
)


def _conv_inputs(dt, geometry, seed):
    xs, ks, strides, pads = geometry
    rng = _rng(seed)
    return _normal(rng, dt, *xs), _normal(rng, dt, *ks), _normal(rng, dt, ks[3]), strides, pads


def conv2d_forward_cases():
    for g, geometry in enumerate(CONV_GEOMETRIES):
        for relu in (False, True):
            def case(dt, geometry=geometry, relu=relu, g=g):
                x, k, b, strides, pads = _conv_inputs(dt, geometry, g)
                return outputs(ops.conv2d_forward(x, k, None if relu else b, strides, pads,
                                                  relu))
            yield f"geometry {g}, relu={relu}", case
        def case(dt, geometry=geometry, g=g):        # the statistics for a batch norm
            x, k, b, strides, pads = _conv_inputs(dt, geometry, g)
            return outputs(ops.conv2d_forward(x, k, b, strides, pads, moments=True))
        yield f"geometry {g}, moments", case
        def case(dt, geometry=geometry, g=g):        # the end of a residual block
            x, k, b, strides, pads = _conv_inputs(dt, geometry, g)
            r = _normal(_rng(g + 100), dt, *ops.conv2d_forward(x, k, b, strides, pads).shape)
            return outputs(ops.conv2d_forward(x, k, b, strides, pads, True, residual=r))
        yield f"geometry {g}, residual", case


def conv2d_backward_cases():
    for g, geometry in enumerate(CONV_GEOMETRIES):
        for need_dx in (True, False):
            for relu in (False, True):
                def case(dt, geometry=geometry, need_dx=need_dx, relu=relu, g=g):
                    x, k, b, strides, pads = _conv_inputs(dt, geometry, g)
                    y = ops.conv2d_forward(x, k, b, strides, pads, relu) if relu else None
                    shape = ops.conv2d_forward(x, k, b, strides, pads).shape
                    dy = _normal(_rng(10 + g), dt, *shape)
                    return outputs(ops.conv2d_backward(x, k, dy, strides, pads, need_dx, y))
                yield f"geometry {g}, need_dx={need_dx}, y={'relu output' if relu else None}", case
        for relu in (False, True):
            def case(dt, geometry=geometry, relu=relu, g=g):   # a batch norm after it
                x, k, b, strides, pads = _conv_inputs(dt, geometry, g)
                z = ops.conv2d_forward(x, k, b, strides, pads)
                dy = _normal(_rng(10 + g), dt, *z.shape)
                spec = _bn_spec(z, dy, relu)
                # dx and dkernel: batch norm's input gradient sums to 0 over the batch, so
                # dbias is rounding noise about 0 (no relative error to compare)
                return outputs(ops.conv2d_backward(x, k, dy, strides, pads, True, bn=spec))[:2]
            yield f"geometry {g}, bn (relu={relu})", case


def _bn_spec(z, dy, relu):
    """The ``BatchNormGradient`` of a batch norm (+ ReLU) after a convolution's output ``z``."""
    rng = _rng(46)
    gamma, beta = _normal(rng, z.dtype.type, z.shape[-1]), _normal(rng, z.dtype.type, z.shape[-1])
    _, mean, _, inv_std = ops.batchnorm_relu_train_forward(z, gamma, beta, 1e-3, relu)
    _, dgamma, dbeta = ops.batchnorm_relu_backward(dy, z, gamma, beta, mean, inv_std, relu,
                                                   need_dx=False)
    return ops.BatchNormGradient(z, gamma, beta, mean, inv_std, dgamma, dbeta, relu)


#: (x shape, filters, pads) of the Winograd cases: an odd output size, more than 4
#: channels (every transform loop), asymmetric padding, a batch of several slots
WINOGRAD_GEOMETRIES = (((3, 5, 7, 6), 3, (1, 1, 1, 1)), ((5, 6, 6, 2), 4, (0, 1, 2, 0)))


def _winograd_inputs(dt, geometry, g):
    shape, f, pads = geometry
    rng = _rng(20 + g)
    return (_normal(rng, dt, *shape), _normal(rng, dt, 3, 3, shape[3], f),
            _normal(rng, dt, f), pads)


def winograd_conv2d_forward_cases():
    for g, geometry in enumerate(WINOGRAD_GEOMETRIES):
        for relu in (False, True):
            def case(dt, geometry=geometry, relu=relu, g=g):
                x, k, b, pads = _winograd_inputs(dt, geometry, g)
                return outputs(ops.winograd_conv2d_forward(x, k, b, pads, relu))
            yield f"geometry {g}, relu={relu}", case
        def case(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            return outputs(ops.winograd_conv2d_forward(x, k, b, pads, moments=True))
        yield f"geometry {g}, moments", case


def winograd_conv2d_relu_maxpool_forward_cases():
    for g, geometry in enumerate(WINOGRAD_GEOMETRIES):
        def case(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            y, arg = ops.winograd_conv2d_relu_maxpool_forward(x, k, b, pads)
            return [y, np.where(y > 0, arg, 0)]      # no gradient where the ReLU stops it
        yield f"geometry {g}", case


#: F(4x4, 3x3): also an output size that is not a multiple of 4 and a pool window cut by
#: a tile's edge (7 outputs across: the last tile holds one incomplete window)
WINOGRAD4_GEOMETRIES = WINOGRAD_GEOMETRIES + (((2, 9, 7, 5), 3, (1, 1, 1, 1)),)


def winograd4_conv2d_forward_cases():
    for g, geometry in enumerate(WINOGRAD4_GEOMETRIES):
        for relu in (False, True):
            def case(dt, geometry=geometry, relu=relu, g=g):
                x, k, b, pads = _winograd_inputs(dt, geometry, g)
                return outputs(ops.winograd4_conv2d_forward(x, k, b, pads, relu))
            yield f"geometry {g}, relu={relu}", case
        def case(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            return outputs(ops.winograd4_conv2d_forward(x, k, b, pads, moments=True))
        yield f"geometry {g}, moments", case
        def case(dt, geometry=geometry, g=g):        # the end of a residual block
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            r = _normal(_rng(g + 100), dt, *ops.winograd4_conv2d_forward(x, k, b, pads).shape)
            return outputs(ops.winograd4_conv2d_forward(x, k, b, pads, True, residual=r))
        yield f"geometry {g}, residual", case


def winograd4_conv2d_relu_maxpool_forward_cases():
    for g, geometry in enumerate(WINOGRAD4_GEOMETRIES):
        def case(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            y, arg = ops.winograd4_conv2d_relu_maxpool_forward(x, k, b, pads)
            return [y, np.where(y > 0, arg, 0)]      # no gradient where the ReLU stops it
        yield f"geometry {g}", case

        def no_argmax(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            y, arg = ops.winograd4_conv2d_relu_maxpool_forward(x, k, b, pads, need_argmax=False)
            assert arg is None
            return [y]
        yield f"geometry {g}, need_argmax=False", no_argmax


def winograd_conv2d_backward_cases():
    for g, geometry in enumerate(WINOGRAD_GEOMETRIES):
        for need_dx in (True, False):
            for relu in (False, True):
                def case(dt, geometry=geometry, need_dx=need_dx, relu=relu, g=g):
                    x, k, b, pads = _winograd_inputs(dt, geometry, g)
                    y = ops.winograd_conv2d_forward(x, k, b, pads, relu) if relu else None
                    shape = ops.winograd_conv2d_forward(x, k, b, pads).shape
                    dy = _normal(_rng(30 + g), dt, *shape)
                    return outputs(ops.winograd_conv2d_backward(x, k, dy, pads, need_dx, y))
                yield f"geometry {g}, need_dx={need_dx}, y={'relu output' if relu else None}", case
        for relu in (False, True):
            def case(dt, geometry=geometry, relu=relu, g=g):   # a batch norm after it
                x, k, b, pads = _winograd_inputs(dt, geometry, g)
                z = ops.winograd_conv2d_forward(x, k, b, pads)
                dy = _normal(_rng(30 + g), dt, *z.shape)
                return outputs(ops.winograd_conv2d_backward(x, k, dy, pads, True,
                                                            bn=_bn_spec(z, dy, relu)))[:2]
            yield f"geometry {g}, bn (relu={relu})", case


def winograd_conv2d_relu_maxpool_backward_cases():
    for g, geometry in enumerate(WINOGRAD_GEOMETRIES):
        for need_dx in (True, False):
            def case(dt, geometry=geometry, need_dx=need_dx, g=g):
                x, k, b, pads = _winograd_inputs(dt, geometry, g)
                y, arg = ops.winograd_conv2d_relu_maxpool_forward(x, k, b, pads)
                dy = _normal(_rng(50 + g), dt, *y.shape)
                return outputs(ops.winograd_conv2d_relu_maxpool_backward(x, k, dy, y, arg, pads,
                                                                         need_dx))
            yield f"geometry {g}, need_dx={need_dx}", case


def winograd_conv2d_backward_input_cases():
    for g, geometry in enumerate(WINOGRAD_GEOMETRIES):
        def case(dt, geometry=geometry, g=g):
            x, k, b, pads = _winograd_inputs(dt, geometry, g)
            shape = ops.winograd_conv2d_forward(x, k, b, pads).shape
            dz = _normal(_rng(40 + g), dt, *shape)
            return outputs(ops.winograd_conv2d_backward_input(dz, k, pads))
        yield f"geometry {g}", case


FUSED_GEOMETRIES = (((2, 6, 6, 2), (3, 3, 2, 3), (1, 1), (1, 1, 1, 1)),
                    ((2, 9, 8, 1), (2, 2, 1, 2), (1, 1), (0, 0, 0, 0)),
                    ((2, 5, 6, 6), (3, 3, 6, 2), (1, 1), (1, 1, 1, 1)))


def _fused_inputs(dt, geometry, seed):
    x, k, b, strides, pads = _conv_inputs(dt, geometry, seed)
    return x, k, b + dt(0.3), strides, pads      # mostly positive: ReLU lets most through


def conv2d_relu_maxpool_forward_cases():
    for g, geometry in enumerate(FUSED_GEOMETRIES):
        def case(dt, geometry=geometry, g=g):
            y, argmax = ops.conv2d_relu_maxpool_forward(*_fused_inputs(dt, geometry, g))
            # where ReLU zeroed a whole window the winner is unspecified (no gradient flows)
            return [y, np.where(y > 0, argmax, -1)]
        yield f"geometry {g}", case

        def no_argmax(dt, geometry=geometry, g=g):
            y, argmax = ops.conv2d_relu_maxpool_forward(*_fused_inputs(dt, geometry, g),
                                                        need_argmax=False)
            assert argmax is None
            return [y]
        yield f"geometry {g}, need_argmax=False", no_argmax


def conv2d_relu_maxpool_backward_cases():
    for g, geometry in enumerate(FUSED_GEOMETRIES):
        for need_dx in (True, False):
            for dx_algorithm in ("im2col", "winograd"):
                if dx_algorithm == "winograd" and geometry[1][:2] != (3, 3):
                    continue
                def case(dt, geometry=geometry, need_dx=need_dx, g=g, dx_algorithm=dx_algorithm):
                    x, k, b, strides, pads = _fused_inputs(dt, geometry, g)
                    y, argmax = ops.conv2d_relu_maxpool_forward(x, k, b, strides, pads)
                    dy = _normal(_rng(20 + g), dt, *y.shape)
                    return outputs(ops.conv2d_relu_maxpool_backward(x, k, dy, y, argmax, strides,
                                                                    pads, need_dx, dx_algorithm))
                yield f"geometry {g}, need_dx={need_dx}, dx by {dx_algorithm}", case


POOL_GEOMETRIES = (((2, 2), (2, 2), (0, 0, 0, 0)), ((3, 3), (2, 2), (1, 1, 1, 1)),
                   ((3, 2), (1, 2), (1, 1, 0, 0)))


def _pool_cases(op, distinct):
    for g, (pool, strides, pads) in enumerate(POOL_GEOMETRIES):
        def case(dt, pool=pool, strides=strides, pads=pads):
            draw = _distinct if distinct else _normal
            x = draw(_rng(30), dt, 2, 5, 6, 3)
            return outputs(getattr(ops, op)(x, pool, strides, pads))
        yield f"pool {pool}, strides {strides}, pads {pads}", case


def maxpool2d_forward_cases():
    return _pool_cases("maxpool2d_forward", distinct=True)


def avgpool2d_forward_cases():
    return _pool_cases("avgpool2d_forward", distinct=False)


def maxpool2d_backward_cases():
    for g, (pool, strides, pads) in enumerate(POOL_GEOMETRIES):
        def case(dt, pool=pool, strides=strides, pads=pads):
            x = _distinct(_rng(31), dt, 2, 5, 6, 3)
            y, argmax = ops.maxpool2d_forward(x, pool, strides, pads)
            dy = _normal(_rng(32), dt, *y.shape)
            return outputs(ops.maxpool2d_backward(dy, argmax, x.shape, pool, strides, pads))
        yield f"pool {pool}, strides {strides}, pads {pads}", case


def avgpool2d_backward_cases():
    for g, (pool, strides, pads) in enumerate(POOL_GEOMETRIES):
        def case(dt, pool=pool, strides=strides, pads=pads):
            shape = (2, 5, 6, 3)
            y = ops.avgpool2d_forward(np.zeros(shape, dt), pool, strides, pads)
            dy = _normal(_rng(33), dt, *y.shape)
            return outputs(ops.avgpool2d_backward(dy, shape, pool, strides, pads))
        yield f"pool {pool}, strides {strides}, pads {pads}", case


def global_avgpool_forward_cases():
    yield "2x4x3x5", lambda dt: outputs(ops.global_avgpool_forward(_normal(_rng(34), dt, 2, 4, 3, 5)))


def global_avgpool_backward_cases():
    yield "2x4x3x5", lambda dt: outputs(ops.global_avgpool_backward(
        _normal(_rng(35), dt, 2, 5), (2, 4, 3, 5)))


def global_maxpool_forward_cases():
    yield "2x4x3x5", lambda dt: outputs(ops.global_maxpool_forward(
        _distinct(_rng(36), dt, 2, 4, 3, 5)))


def global_maxpool_backward_cases():
    def case(dt):
        x = _distinct(_rng(37), dt, 2, 4, 3, 5)
        _, argmax = ops.global_maxpool_forward(x)
        return outputs(ops.global_maxpool_backward(_normal(_rng(38), dt, 2, 5), argmax, x.shape))
    yield "2x4x3x5", case


BN_SHAPES = ((3, 4, 5, 3), (6, 4))


def batchnorm_train_forward_cases():
    for shape in BN_SHAPES:
        for affine in (True, False):
            def case(dt, shape=shape, affine=affine):
                rng = _rng(40)
                x = _normal(rng, dt, *shape) * dt(2) + dt(1)
                gamma = _normal(rng, dt, shape[-1]) if affine else None
                beta = _normal(rng, dt, shape[-1]) if affine else None
                return outputs(ops.batchnorm_train_forward(x, gamma, beta, 1e-3))
            yield f"{shape}, gamma/beta {'given' if affine else 'None'}", case


def batchnorm_inference_forward_cases():
    for shape in BN_SHAPES:
        def case(dt, shape=shape):
            rng = _rng(41)
            c = shape[-1]
            x, gamma, beta, mean = (_normal(rng, dt, *shape), _normal(rng, dt, c),
                                    _normal(rng, dt, c), _normal(rng, dt, c))
            var = (rng.random(c) + 0.5).astype(dt)
            return outputs(ops.batchnorm_inference_forward(x, gamma, beta, mean, var, 1e-3))
        yield f"{shape}", case


def batchnorm_backward_cases():
    for shape in BN_SHAPES:
        def case(dt, shape=shape):
            rng = _rng(42)
            x, gamma = _normal(rng, dt, *shape), _normal(rng, dt, shape[-1])
            _, _, _, xhat, inv_std = ops.batchnorm_train_forward(x, gamma, None, 1e-3)
            return outputs(ops.batchnorm_backward(_normal(rng, dt, *shape), xhat, gamma, inv_std))
        yield f"{shape}", case


def batchnorm_relu_train_forward_cases():
    for shape in BN_SHAPES:
        for relu in (True, False):
            def case(dt, shape=shape, relu=relu):
                rng = _rng(43)
                x = _normal(rng, dt, *shape) * dt(2) + dt(1)
                gamma, beta = _normal(rng, dt, shape[-1]), _normal(rng, dt, shape[-1])
                return outputs(ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu))
            yield f"{shape}, relu={relu}", case

            def given(dt, shape=shape, relu=relu):   # statistics a convolution gathered
                rng = _rng(44)
                x = _normal(rng, dt, *shape) * dt(2) + dt(1)
                gamma, beta = _normal(rng, dt, shape[-1]), _normal(rng, dt, shape[-1])
                moments = (x.reshape(-1, shape[-1]).mean(axis=0), x.reshape(-1, shape[-1]).var(axis=0))
                return outputs(ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3, relu,
                                                                moments=moments))
            yield f"{shape}, relu={relu}, moments given", given

            def residual(dt, shape=shape, relu=relu):   # the end of a residual block
                rng = _rng(45)
                x = _normal(rng, dt, *shape) * dt(2) + dt(1)
                gamma, beta = _normal(rng, dt, shape[-1]), _normal(rng, dt, shape[-1])
                return outputs(ops.batchnorm_relu_train_forward(
                    x, gamma, beta, 1e-3, relu, residual=_normal(rng, dt, *shape)))
            yield f"{shape}, relu={relu}, residual", residual


def batchnorm_relu_backward_cases():
    for shape in BN_SHAPES:
        for relu in (True, False):
            for need_dx in (True, False):       # without dx: the sums a conv's bn= takes
                def case(dt, shape=shape, relu=relu, need_dx=need_dx):
                    rng = _rng(44)
                    x = _normal(rng, dt, *shape)
                    gamma, beta = _normal(rng, dt, shape[-1]), _normal(rng, dt, shape[-1])
                    _, mean, _, inv_std = ops.batchnorm_relu_train_forward(x, gamma, beta, 1e-3,
                                                                           relu)
                    return outputs(ops.batchnorm_relu_backward(
                        _normal(rng, dt, *shape), x, gamma, beta, mean, inv_std, relu,
                        need_dx=need_dx))
                yield f"{shape}, relu={relu}" + ("" if need_dx else ", sums only"), case


def dense_forward_cases():
    for bias in (True, False):
        def case(dt, bias=bias):
            rng = _rng(50)
            x, k, b = _normal(rng, dt, 3, 5), _normal(rng, dt, 5, 4), _normal(rng, dt, 4)
            return outputs(ops.dense_forward(x, k, b if bias else None))
        yield f"bias={bias}", case


def dense_backward_cases():
    for need_dx in (True, False):
        def case(dt, need_dx=need_dx):
            rng = _rng(51)
            x, k, dy = _normal(rng, dt, 3, 5), _normal(rng, dt, 5, 4), _normal(rng, dt, 3, 4)
            return outputs(ops.dense_backward(x, k, dy, need_dx))
        yield f"need_dx={need_dx}", case


def activation_forward_cases():
    for name in activations.ACTIVATIONS:
        yield name, (lambda dt, name=name: outputs(ops.activation_forward(
            name, _normal(_rng(60), dt, 3, 2, 4) * dt(3))))


def activation_backward_cases():
    for name in activations.ACTIVATIONS:
        def case(dt, name=name):
            rng = _rng(61)
            x = _normal(rng, dt, 3, 2, 4) * dt(3)
            y = ops.activation_forward(name, x)
            return outputs(ops.activation_backward(name, x, y, _normal(rng, dt, 3, 2, 4)))
        yield name, case


def leaky_relu_forward_cases():
    yield "slope 0.2", lambda dt: outputs(ops.leaky_relu_forward(_normal(_rng(62), dt, 4, 3), 0.2))


def leaky_relu_backward_cases():
    def case(dt):
        rng = _rng(63)
        return outputs(ops.leaky_relu_backward(_normal(rng, dt, 4, 3), _normal(rng, dt, 4, 3),
                                               0.2))
    yield "slope 0.2", case


def add_forward_cases():
    def case(dt):
        rng = _rng(64)
        return outputs(ops.add_forward(_normal(rng, dt, 2, 3, 4), _normal(rng, dt, 2, 3, 4)))
    yield "(2, 3, 4)", case


def add_relu_forward_cases():
    def case(dt):
        rng = _rng(65)
        return outputs(ops.add_relu_forward(_normal(rng, dt, 2, 3, 4), _normal(rng, dt, 2, 3, 4)))
    yield "(2, 3, 4)", case


def softmax_cross_entropy_cases():
    for sparse in (False, True):
        for weighted in (False, True):
            def case(dt, sparse=sparse, weighted=weighted):
                rng = _rng(70)
                logits = _normal(rng, dt, 4, 5) * dt(2)
                labels = rng.integers(0, 5, 4)
                target = labels if sparse else np.eye(5, dtype=dt)[labels]
                w = (rng.random(4) * 2).astype(dt) if weighted else None
                return outputs(ops.softmax_cross_entropy(logits, target, sparse, w))
            yield f"sparse={sparse}, weights={'given' if weighted else None}", case


def dropout_forward_cases():
    def case(dt):
        rng = _rng(71)
        return outputs(ops.dropout_forward(_normal(rng, dt, 3, 4), rng.random((3, 4)) > 0.4,
                                           1 / 0.6))
    yield "rate 0.4", case


def adam_update_cases():
    for t in (1, 5):
        def case(dt, t=t):
            rng = _rng(80)
            param, grad = _normal(rng, dt, 3, 4), _normal(rng, dt, 3, 4)
            m, v = _normal(rng, dt, 3, 4) * dt(0.1), (rng.random((3, 4)) * 0.01).astype(dt)
            ops.adam_update(param, grad, m, v, 1e-2, 0.9, 0.999, 1e-7, t)
            return [param, m, v]                 # updated in place
        yield f"t={t}", case


def sgd_update_cases():
    for momentum, nesterov in ((0.0, False), (0.9, False), (0.9, True)):
        def case(dt, momentum=momentum, nesterov=nesterov):
            rng = _rng(81)
            param, grad, vel = (_normal(rng, dt, 3, 4), _normal(rng, dt, 3, 4),
                                _normal(rng, dt, 3, 4) * dt(0.1))
            ops.sgd_update(param, grad, vel, 0.05, momentum, nesterov)
            return [param, vel]                  # updated in place
        yield f"momentum={momentum}, nesterov={nesterov}", case


#: ``{op name: generator of (label, case)}``; an op of ``ops.OPS`` missing here is reported
CASES = {name[:-len("_cases")]: fn for name, fn in dict(globals()).items()
         if name.endswith("_cases") and not name.startswith("_") and callable(fn)}

TOLERANCE = {np.dtype(F32): 2e-5, np.dtype(F64): 1e-10}


def compare_on_backends(case, dt):
    """``max rel_err`` of the numba backend's outputs against the numpy backend's."""
    with minicnn.use_backend("numpy"):
        expected = case(dt)
    with minicnn.use_backend("numba"):
        got = case(dt)
    if len(got) != len(expected):
        raise AssertionError(f"{len(got)} outputs, numpy gives {len(expected)}")
    return max([rel_err(g, e) for g, e in zip(got, expected)], default=0.0)


def run_case(case, dt):
    try:
        return {"error": compare_on_backends(case, dt), "exception": None}
    except Exception as exc:        # reported per case, the test names it
        frames = traceback.extract_tb(exc.__traceback__)
        where = next((f"{os.path.relpath(f.filename, REPO)}:{f.lineno}" for f in reversed(frames)
                      if f.filename.startswith(os.path.join(REPO, "minicnn"))), "?")
        return {"error": None, "exception": f"{type(exc).__name__}: {exc} (at {where})"}


# ----------------------------------------------------------------------------- the model
def tiny_model():
    """Conv2D(relu) + MaxPooling2D (the fused step on numba), BatchNormalization, Dense;
    float64 and SGD, so that rounding differences between the backends stay at rounding
    size (Adam's first steps turn a gradient's rounding noise into a whole step)."""
    minicnn.config.set_random_seed(3)
    f64 = {"dtype": "float64"}
    model = models.Sequential([
        layers.Input((6, 6, 2), dtype="float64"),
        layers.Conv2D(3, 3, padding="same", activation="relu", **f64),
        layers.MaxPooling2D(2, **f64),
        layers.BatchNormalization(**f64),
        layers.Flatten(**f64),
        layers.Dense(4, activation="gelu", **f64),
        layers.Dense(3, activation="softmax", **f64),
    ])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return model


def model_case(dt):
    """Two ``train_on_batch`` steps of :func:`tiny_model`: losses and every weight after."""
    del dt                                       # the model says its dtype
    rng = _rng(90)
    x = rng.random((4, 6, 6, 2))
    y = rng.integers(0, 3, (4, 1))
    model = tiny_model()
    losses = [float(model.train_on_batch(x, y)) for _ in range(2)]
    return [np.array(losses)] + [np.asarray(w) for w in model.get_weights()]


# ----------------------------------------------------------------------------- main
def kernel_dispatchers():
    """Names of the Numba dispatchers in ``minicnn/ops/_kernels/`` (none with the JIT off)."""
    import importlib
    import pkgutil

    from minicnn.ops import _kernels
    found = []
    for info in pkgutil.iter_modules(_kernels.__path__):
        module = importlib.import_module(f"{_kernels.__name__}.{info.name}")
        found += [f"{info.name}.{name}" for name in dir(module)
                  if isinstance(getattr(module, name), numba.core.dispatcher.Dispatcher)]
    return found


def main():
    ran = set()
    kernel_prefix = KERNEL_DIR + os.sep

    def profile(frame, event, arg):
        if event == "call" and frame.f_code.co_filename.startswith(kernel_prefix):
            module = os.path.splitext(os.path.basename(frame.f_code.co_filename))[0]
            ran.add(f"{module}.{frame.f_code.co_name}")

    report = {
        "disable_jit": bool(numba.config.DISABLE_JIT),
        # with the JIT off, @njit hands back the Python function itself
        "dispatchers": kernel_dispatchers(),
        "ops": {}, "model": None, "ran": [],
        "unknown": sorted(set(CASES) - set(ops.OPS))}
    sys.setprofile(profile)
    try:
        for name in ops.OPS:
            make = CASES.get(name)
            if make is None:
                report["ops"][name] = []
                continue
            rows = report["ops"][name] = []
            for label, case in make():
                for dt in (F32, F64):
                    row = run_case(case, dt)
                    row["case"] = f"{label}, {np.dtype(dt).name}"
                    row["tolerance"] = TOLERANCE[np.dtype(dt)]
                    rows.append(row)
        report["model"] = dict(run_case(model_case, F64), case="tiny model, 2 train_on_batch",
                               tolerance=TOLERANCE[np.dtype(F64)])
    finally:
        sys.setprofile(None)
    report["ran"] = sorted(ran)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
