"""Train the seed CNN on CIFAR-10 and write checkpoints, history, curves and test plots.

The same program as ``minicnn train`` (see :mod:`minicnn.train` for what it writes)::

    python examples/train_cifar10.py --data ../shared/datasets/cifar-10-python.tar.gz --out run1
    python examples/train_cifar10.py --dataset shapes --epochs 3      # no files, no network
    python examples/train_cifar10.py --resume run1/last.npz --epochs 20

``--help`` lists every option.
"""
from __future__ import annotations

import sys

from minicnn import cli


def main(argv=None):
    return cli.main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
