"""A whole training step and an inference batch of the seed model, per backend.

Run explicitly::

    python -m pytest benchmarks/test_bench_training.py --benchmark-only

- ``train_on_batch``: forward (training mode), softmax-CE, backward and the Adam update
  on one batch (64 images on numpy and numba, 1 on the reference backend);
- ``predict``: ``model.predict(x, batch_size=64)`` on the same batch (inference mode);
- on numba, the training step also without fusion (``model.fuse = False``: Conv2D(relu)
  and MaxPooling2D run one by one), to show what the fused conv+relu+pool step saves.

The summary prints images/s = batch / median step time.
"""
from __future__ import annotations

import pytest

from _common import seed_batch, seed_model


def test_train_on_batch(bench, case):
    model = seed_model()
    x, y = seed_batch(case.batch)
    bench(lambda: model.train_on_batch(x, y), group="train_on_batch", images=case.batch,
          op="train", fused=model.fuse)


@pytest.mark.only_backends("numba")     # fusion applies to the numba backend only
def test_train_on_batch_unfused(bench, case):
    model = seed_model()
    model.fuse = False
    x, y = seed_batch(case.batch)
    bench(lambda: model.train_on_batch(x, y), group="train_on_batch", images=case.batch,
          op="train", fused=False)


def test_predict(bench, case):
    model = seed_model()
    x, _ = seed_batch(case.batch)
    bench(lambda: model.predict(x, batch_size=64), group="predict", images=case.batch,
          op="predict")
