"""Ops: every forward and backward computation, on the active backend.

Layers call these functions, never a backend module directly. Each function
here is a dispatcher made by :func:`._registry.register`: it carries the
signature and docstring (math and shapes) of the reference implementation and
forwards to the same-named function of the backend chosen with
:func:`minicnn.set_backend` (``reference``: :mod:`.reference`, ``numpy``:
:mod:`.numpy_ops`, ``numba``: :mod:`.numba_ops`). ``OPS`` maps every op name to
its dispatcher.
"""
from __future__ import annotations

from ._registry import OPS, backend_module, register  # noqa: F401
from ._shapes import conv_geometry, conv_out_size, out_hw, out_size_from_pads  # noqa: F401
from .reference import fold_batchnorm  # noqa: F401  (a weight transform, one for every backend)
from .reference import BatchNormGradient  # noqa: F401  (the bn argument of the conv backwards)

# convolution
conv2d_forward = register("conv2d_forward")
conv2d_backward = register("conv2d_backward")
conv2d_relu_maxpool_forward = register("conv2d_relu_maxpool_forward")
conv2d_relu_maxpool_backward = register("conv2d_relu_maxpool_backward")
winograd_conv2d_forward = register("winograd_conv2d_forward")
winograd_conv2d_backward = register("winograd_conv2d_backward")
winograd_conv2d_backward_input = register("winograd_conv2d_backward_input")
winograd_conv2d_relu_maxpool_forward = register("winograd_conv2d_relu_maxpool_forward")
winograd_conv2d_relu_maxpool_backward = register("winograd_conv2d_relu_maxpool_backward")
winograd4_conv2d_forward = register("winograd4_conv2d_forward")
winograd4_conv2d_relu_maxpool_forward = register("winograd4_conv2d_relu_maxpool_forward")
# pooling
maxpool2d_forward = register("maxpool2d_forward")
maxpool2d_backward = register("maxpool2d_backward")
avgpool2d_forward = register("avgpool2d_forward")
avgpool2d_backward = register("avgpool2d_backward")
global_avgpool_forward = register("global_avgpool_forward")
global_avgpool_backward = register("global_avgpool_backward")
global_maxpool_forward = register("global_maxpool_forward")
global_maxpool_backward = register("global_maxpool_backward")
# batch normalisation
batchnorm_train_forward = register("batchnorm_train_forward")
batchnorm_inference_forward = register("batchnorm_inference_forward")
batchnorm_backward = register("batchnorm_backward")
batchnorm_relu_train_forward = register("batchnorm_relu_train_forward")
batchnorm_relu_backward = register("batchnorm_relu_backward")
# dense
dense_forward = register("dense_forward")
dense_backward = register("dense_backward")
# activations
activation_forward = register("activation_forward")
activation_backward = register("activation_backward")
leaky_relu_forward = register("leaky_relu_forward")
leaky_relu_backward = register("leaky_relu_backward")
add_forward = register("add_forward")
add_relu_forward = register("add_relu_forward")
# loss
softmax_cross_entropy = register("softmax_cross_entropy")
# dropout
dropout_forward = register("dropout_forward")
# optimizers (in place)
adam_update = register("adam_update")
sgd_update = register("sgd_update")


def fusions():
    """The fused steps the active backend implements (e.g. ``'conv2d_relu_maxpool'``).

    The model's planner fuses a pattern only when the backend names it here; on the
    other backends the layers run one by one, so a learner steps through each.
    """
    return frozenset(getattr(backend_module(), "FUSIONS", ()))
