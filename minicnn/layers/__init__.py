"""Layers with hand-written forward and backward passes (Keras names and signatures).

To write your own, subclass :class:`Layer` (see :mod:`minicnn.layers.base`).
"""
from .augment import RandomFlip, RandomTranslation
from .base import Layer
from .conv import Conv2D
from .core import Activation, Dense, Dropout, Flatten, LeakyReLU, ReLU
from .input_layer import Input, InputLayer, KerasTensor
from .merging import Add, Average, Concatenate, Maximum, Minimum, Multiply, Subtract
from .normalization import BatchNormalization
from .pooling import (AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D,
                      MaxPooling2D)
from .preprocessing import Rescaling, Softmax, ZeroPadding2D

#: every layer class by name, for saving and loading models
LAYER_CLASSES = {cls.__name__: cls for cls in (
    Conv2D, MaxPooling2D, Dense, Flatten, Activation, ReLU, Dropout, RandomFlip,
    RandomTranslation, InputLayer, Add, Subtract, Multiply, Average, Maximum, Minimum,
    Concatenate, Rescaling, ZeroPadding2D, Softmax, BatchNormalization, AveragePooling2D,
    GlobalAveragePooling2D, GlobalMaxPooling2D, LeakyReLU)}

__all__ = ["Layer", "LAYER_CLASSES", "Input", "KerasTensor"] + sorted(LAYER_CLASSES)


from .._missing import missing as _missing  # noqa: E402

__getattr__ = _missing(__name__)
