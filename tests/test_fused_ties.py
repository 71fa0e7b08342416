"""Ties in the fused conv + ReLU + 2x2 max-pool op go to the first maximum, as in the unfused ops.

Random float inputs almost never tie, so the backends-agree test cannot see the tie rule. Here the
images, kernel and bias are small integers: every product and sum is exact in float32 and float64
whatever the summation order, so equal window values are equal on every backend. An all-zeros image
(the conv output is the bias, which is positive, everywhere) makes every 2x2 window a four-way tie;
a constant block makes the windows inside it tie; the random integer pixels around it give ties
between positions whose patches differ, which is what makes ``dkernel`` depend on the rule.
"""
from __future__ import annotations

import numpy as np
import pytest

from minicnn import ops

POOL = ((2, 2), (2, 2), (0, 0, 0, 0))  # the fused op's pool: 2x2, stride 2, 'valid'


def windows(z):
    """(n, oh, ow, f) -> (n, oh // 2, ow // 2, 4, f): each 2x2 window in row-major order."""
    n, oh, ow, f = z.shape
    ph, pw = oh // 2, ow // 2
    win = z[:, :2 * ph, :2 * pw].reshape(n, ph, 2, pw, 2, f)
    return win.transpose(0, 1, 3, 2, 4, 5).reshape(n, ph, pw, 4, f)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kh, kw, strides, padding", [
    (3, 3, (1, 1), "valid"), (3, 3, (1, 1), "same"), (2, 2, (1, 1), "valid"),
    (3, 2, (2, 1), "same")])
def test_fused_ties_go_to_the_first_max_and_grads_match_unfused(backend, kh, kw, strides,
                                                                  padding, dtype):
    rng = np.random.default_rng(7)
    n, h, w, c, f = 3, 11, 12, 2, 4
    x = rng.integers(0, 3, size=(n, h, w, c)).astype(dtype)
    x[0] = 0                        # conv output = bias everywhere: every window ties
    x[1, 1:10, 2:11, :] = 1         # a constant block: the windows inside it tie
    kernel = rng.integers(-1, 3, size=(kh, kw, c, f)).astype(dtype)
    bias = np.arange(1, f + 1).astype(dtype)  # positive: the tied value survives the ReLU
    _, _, pads = ops.conv_geometry(h, w, kh, kw, *strides, padding)

    y, argmax = ops.conv2d_relu_maxpool_forward(x, kernel, bias, strides, pads)
    z = ops.conv2d_forward(x, kernel, bias, strides, pads, relu=True)
    y_sep, arg_sep = ops.maxpool2d_forward(z, *POOL)
    np.testing.assert_array_equal(y, y_sep)

    win = windows(z)
    top = win.max(axis=3)
    is_max = win == top[:, :, :, None, :]
    positive = y > 0                # where the ReLU passes, the winner receives the gradient
    first = np.argmax(is_max, axis=3)
    last = 3 - np.argmax(is_max[:, :, :, ::-1, :], axis=3)
    tied = positive & (first != last)
    # The inputs do what they are for: the zeros image is one four-way tie per window, and the
    # ties are many.
    assert is_max[0].all() and positive[0].all()
    assert tied.sum() > tied.size // 3

    assert argmax.dtype == np.uint8
    np.testing.assert_array_equal(argmax[0], 0)  # four-way ties: the first, row-major
    np.testing.assert_array_equal(argmax[tied], first[tied])
    np.testing.assert_array_equal(argmax[positive], arg_sep[positive])

    dy = rng.integers(1, 4, size=y.shape).astype(dtype)
    fused = ops.conv2d_relu_maxpool_backward(x, kernel, dy, y, argmax, strides, pads, True)
    dz = ops.maxpool2d_backward(dy, arg_sep, z.shape, *POOL)
    unfused = ops.conv2d_backward(x, kernel, dz, strides, pads, True, y=z)
    for name, got, want in zip(("dx", "dkernel", "dbias"), fused, unfused):
        np.testing.assert_array_equal(got, want, err_msg=f"fused {name} != unfused ({backend})")

    # Sensitivity: had the ties gone to the last maximum, dx and dkernel would differ.
    arg_last = np.where(positive, last, arg_sep).astype(np.int32)
    dz_last = ops.maxpool2d_backward(dy, arg_last, z.shape, *POOL)
    dx_last, dk_last, _ = ops.conv2d_backward(x, kernel, dz_last, strides, pads, True, y=z)
    assert not np.array_equal(dx_last, unfused[0])
    assert not np.array_equal(dk_last, unfused[1])
