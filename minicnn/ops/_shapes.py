"""Output sizes and padding, shared by every backend and by the layers.

TensorFlow's rules, which Keras follows:

- ``'valid'``: ``out = floor((size - k) / s) + 1``, no padding;
- ``'same'``:  ``out = ceil(size / s)``; the total padding is
  ``max((out - 1) * s + k - size, 0)``, split with the smaller half at the
  top/left and the extra row or column at the bottom/right.
"""
from __future__ import annotations


def conv_out_size(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    """Return ``(out, pad_before, pad_after)`` for one spatial dimension."""
    if padding == "valid":
        if size < k:
            return 0, 0, 0
        return (size - k) // s + 1, 0, 0
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def conv_geometry(h: int, w: int, kh: int, kw: int, sh: int, sw: int, padding: str):
    """Return ``(oh, ow, pads)`` with ``pads = (top, bottom, left, right)``."""
    oh, pt, pb = conv_out_size(h, kh, sh, padding)
    ow, pl, pr = conv_out_size(w, kw, sw, padding)
    return oh, ow, (pt, pb, pl, pr)


def out_size_from_pads(size: int, k: int, s: int, before: int, after: int) -> int:
    return (size + before + after - k) // s + 1


def out_hw(h: int, w: int, kh: int, kw: int, strides, pads) -> tuple[int, int]:
    """``(oh, ow)`` of a ``kh x kw`` window with ``strides = (sh, sw)`` over an ``h x w``
    image padded by ``pads = (top, bottom, left, right)``."""
    return (out_size_from_pads(h, kh, strides[0], pads[0], pads[1]),
            out_size_from_pads(w, kw, strides[1], pads[2], pads[3]))
