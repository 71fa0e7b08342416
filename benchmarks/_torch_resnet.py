"""The PyTorch twin of :func:`minicnn.models.zoo.resnet_cifar`, for the benchmarks.

Layer for layer the same network as the zoo builder (augmentation off): a 3x3 stem, one
residual block per stage of ``widths`` filters (the later stages at stride 2), global
average pooling, dropout, a dense softmax layer; bias-free convolutions each followed by
BatchNorm, a 1x1 strided convolution + BatchNorm on the shortcut where the shape changes.
Trainable parameters: 308,650 with the default widths, as in minicnn and Keras (their
1,344 non-trainable moving statistics are PyTorch's ``running_mean``/``running_var``
buffers).

What differs, on purpose:

- NCHW, PyTorch's native layout (``channels_last=True`` converts model and input).
- A strided 3x3 convolution pads one pixel on every side (``padding=1``); Keras's
  ``padding="same"`` pads only the bottom and right at stride 2. Same output shapes and
  the same FLOPs; the windows sit one pixel apart.
- The model returns logits; the driver applies ``CrossEntropyLoss`` (training) or a
  softmax (inference), as ``_torch_seed.py`` does.

BatchNorm uses Keras's defaults (``eps=1e-3``, moving-average momentum 0.99, which is
PyTorch's ``momentum=0.01``), and the drivers use ``AdamW(lr=1e-3, eps=1e-7,
weight_decay=0.004)``, Keras's defaults.
"""
from __future__ import annotations


def resnet_cifar(widths=(32, 64, 128), num_classes=10, dropout=0.2, in_channels=3):
    """The twin as an ``nn.Module`` (imports torch when called)."""
    from torch import nn

    def conv_bn(cin, cout, stride=1, kernel_size=3):
        return nn.Sequential(
            nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=kernel_size // 2,
                      bias=False),
            nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.a = conv_bn(cin, cout, stride)
            self.b = conv_bn(cout, cout)
            self.shortcut = (conv_bn(cin, cout, stride, kernel_size=1)
                             if stride != 1 or cin != cout else nn.Identity())
            self.relu = nn.ReLU()

        def forward(self, x):
            y = self.b(self.relu(self.a(x)))
            return self.relu(self.shortcut(x) + y)

    stages = []
    cin = widths[0]
    for i, w in enumerate(widths):
        stages.append(Block(cin, w, 1 if i == 0 else 2))
        cin = w
    return nn.Sequential(
        conv_bn(in_channels, widths[0]), nn.ReLU(), *stages,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(dropout) if dropout else nn.Identity(),
        nn.Linear(widths[-1], num_classes))


def optimizer(model):
    """AdamW with Keras's defaults (learning rate 1e-3, epsilon 1e-7, weight decay 0.004)."""
    import torch
    return torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-7, weight_decay=0.004)


def count_params(model):
    """Parameters as Keras's ``count_params`` counts them: the trainable ones and
    BatchNorm's moving statistics (PyTorch's ``running_mean``/``running_var`` buffers)."""
    return int(sum(p.numel() for p in model.parameters())
               + sum(b.numel() for name, b in model.named_buffers()
                     if name.endswith(("running_mean", "running_var"))))
