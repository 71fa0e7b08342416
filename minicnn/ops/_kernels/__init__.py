"""Private Numba kernels of the numba backend, one module per op family.

Call them through :mod:`minicnn.ops.numba_ops`, which validates and prepares
the arguments (contiguous arrays, scalars already in the array dtype, so no
float64 signature is ever compiled for float32 data).

- :mod:`.patches`: im2col / col2im of one image, in the row and the transposed layout;
- :mod:`.conv`: convolution forward and backward, and conv + ReLU + 2x2 max-pool fused;
- :mod:`.winograd`: the 3x3 stride-1 convolution by Winograd's F(2x2, 3x3), both passes;
- :mod:`.winograd4`: the same convolution by Winograd's F(4x4, 3x3), the forward pass;
- :mod:`.sched`: the shared slot counter the conv kernels' threads take work from;
- :mod:`.pool`: max and average pooling, global pooling, and the 2x2 window max and the
  output allocation the fused conv + pool kernels share;
- :mod:`.dense`: the fully connected layer;
- :mod:`.elementwise`: activations (flat arrays, softmax by rows) and dropout;
- :mod:`.norm`: batch normalisation;
- :mod:`.loss`: softmax cross-entropy;
- :mod:`.optim`: in-place Adam and SGD steps;
- :mod:`.partials`: the sum of per-slot partial gradients, in slot order.

Parallel design: one ``prange`` region per pass. ``prange(nt)`` hands each of
the ``nt`` threads one iteration; in the conv kernels each thread then takes slots
of contiguous images from a shared counter (:mod:`.sched`) and walks them one image
(or a small group) at a time, so the patches of one image stay in its L2 cache and each
thread calls single-threaded BLAS (``np.dot``). Every ``prange`` iteration
writes only its own output rows or its own slot of a per-slot partial
buffer; partial weight gradients are summed serially afterwards, in slot order. The thread
count ``nt`` is an argument (``numba.get_num_threads()`` read inside a kernel
would stop Numba from caching it).

Kernels whose bodies also hold whole-array NumPy expressions (``np.zeros`` of the
partial buffers, ``part / m`` over the channels) take ``parallel=PRANGE_ONLY``:
``parallel=True`` would turn each such expression into a parallel loop of its own,
one more gufunc to compile (``batchnorm_train_forward`` had 6), for arrays too small to
gain from threads. With it the ``prange`` loops are the only parallel regions, as
designed. ``dense_backward`` had 5 gufuncs (two ``prange`` loops and 3 ``np.zeros``);
it is now one ``prange`` loop over either its two GEMMs or its row blocks, prange-only
(a cold compile of the dense kernels 4.7 -> 3.7 s, benchmarks/RESULTS.md 14).

Scalars such as 0 and 1 arrive as arguments typed like the arrays (``zero``,
``one``): a Python int or float mixed with float32 would make Numba compute
in float64.
"""
from __future__ import annotations


#: ``parallel=`` for kernels whose only parallel regions are their ``prange`` loops
PRANGE_ONLY = {"prange": True, "comprehension": False, "reduction": False,
               "inplace_binop": False, "setitem": False, "numpy": False, "stencil": False,
               "fusion": False}
