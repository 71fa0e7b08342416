"""The PyTorch twin of the residual network (benchmarks/_torch_resnet.py) is the same network
as ``models.zoo.resnet_cifar``: the benchmarks compare the frameworks on it, so its layers,
weight shapes, parameter count and output must match minicnn's model."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from minicnn import layers
from minicnn.models import zoo

TWIN = Path(__file__).resolve().parents[1] / "benchmarks" / "_torch_resnet.py"


def _twin():
    spec = importlib.util.spec_from_file_location("_torch_resnet", TWIN)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("widths", [(32, 64, 128), (8, 16, 16)])
def test_twin_has_the_zoo_models_weights_and_parameter_count(torch, widths):
    net = _twin().resnet_cifar(widths=widths)
    model = zoo.resnet_cifar(augment=False, widths=widths)
    assert _twin().count_params(net) == model.count_params()
    # conv kernels (kh, kw, cin, cout) -> torch (cout, cin, kh, kw), in graph order
    ours = [tuple(np.transpose(l.get_weights()[0], (3, 2, 0, 1)).shape)
            for l in model.layers if isinstance(l, layers.Conv2D)]
    theirs = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert sorted(ours) == sorted(theirs)
    assert all(m.bias is None for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    bn = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bn) == sum(isinstance(l, layers.BatchNormalization) for l in model.layers)
    assert all(m.eps == 1e-3 and m.momentum == pytest.approx(0.01) for m in bn)


def test_twin_maps_a_batch_to_class_scores(torch):
    net = _twin().resnet_cifar().eval()
    x = torch.from_numpy(np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32))
    with torch.inference_mode():
        out = net(x)
    assert tuple(out.shape) == (2, 10)
    opt = _twin().optimizer(net)
    assert opt.defaults["weight_decay"] == 0.004 and opt.defaults["eps"] == 1e-7
