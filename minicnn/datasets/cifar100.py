"""CIFAR-100: 60,000 32x32 colour images in 100 fine classes grouped into 20 coarse ones.

Same search order, download rules and safe reading as :mod:`minicnn.datasets.cifar10`; the archive
is ``cifar-100-python.tar.gz`` holding ``cifar-100-python/`` with ``train``, ``test`` and ``meta``.
"""
from __future__ import annotations

from . import _cifar
from ._download import FileSpec

__all__ = ["FINE_LABEL_NAMES", "COARSE_LABEL_NAMES", "CLASS_NAMES", "FILES", "load_data"]

FINE_LABEL_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)
COARSE_LABEL_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)
CLASS_NAMES = {"fine": FINE_LABEL_NAMES, "coarse": COARSE_LABEL_NAMES}

# The official archive. Tests replace this entry (monkeypatch.setitem) with a small local archive.
FILES = {
    "archive": FileSpec(
        name="cifar-100-python.tar.gz",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        size=169_001_437,
    ),
}

LAYOUT = _cifar.Layout(
    label="cifar100.load_data",
    title="CIFAR-100",
    folder="cifar-100-python",
    train=("train",),
    test=("test",),
    meta="meta",
    url_env="MINICNN_CIFAR100_URL",
)


def load_data(label_mode="fine", path=None, *, mirror=None, download=True):
    """Load CIFAR-100 as uint8 NHWC images and (n, 1) labels.

    Parameters
    ----------
    label_mode : {'fine', 'coarse'}
        ``'fine'``: 100 classes (:data:`FINE_LABEL_NAMES`); ``'coarse'``: 20 superclasses
        (:data:`COARSE_LABEL_NAMES`).
    path, mirror, download
        As in :func:`minicnn.datasets.cifar10.load_data` (the archive is
        ``cifar-100-python.tar.gz``, the folder ``cifar-100-python``, the mirror variable
        ``$MINICNN_CIFAR100_URL``).

    Returns
    -------
    (x_train, y_train), (x_test, y_test)
        ``x``: uint8, shape (n, 32, 32, 3) with n = 50000 and 10000; ``y``: uint8, shape (n, 1).

    Raises
    ------
    ValueError
        If ``label_mode`` is not ``'fine'`` or ``'coarse'``.
    DatasetNotFoundError, DatasetFormatError, UnsafePickleError, ChecksumError
        As in :func:`minicnn.datasets.cifar10.load_data`.
    """
    if label_mode not in CLASS_NAMES:
        raise ValueError(f"cifar100.load_data: label_mode must be 'fine' or 'coarse', "
                         f"received {label_mode!r}")
    return _cifar.load(LAYOUT, FILES["archive"], path, mirror=mirror, download=download,
                       label_key=f"{label_mode}_labels", num_classes=len(CLASS_NAMES[label_mode]))
