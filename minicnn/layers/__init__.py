"""Layers with hand-written forward and backward passes (Keras names and signatures)."""
from .augment import RandomFlip, RandomTranslation
from .base import Layer
from .conv import Conv2D
from .core import Activation, Dense, Dropout, Flatten, ReLU
from .pooling import MaxPooling2D

#: every layer class by name, for saving and loading models
LAYER_CLASSES = {cls.__name__: cls for cls in (
    Conv2D, MaxPooling2D, Dense, Flatten, Activation, ReLU, Dropout, RandomFlip,
    RandomTranslation)}

__all__ = ["Layer", "LAYER_CLASSES"] + sorted(LAYER_CLASSES)
