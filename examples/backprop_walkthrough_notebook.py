# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Backprop, walked through
#
# A small CNN, a few real images, every gradient shown and checked, the way CS231n's
# assignment 2 teaches it: write the backward pass by hand, then trust it only after a
# numerical gradient check agrees.
#
# The network is
#
# ```
# Conv2D(4, 3, activation='relu', padding='same') -> MaxPooling2D(2) -> Flatten
#     -> Dense(10, activation='softmax')
# ```
#
# in float64, so that finite differences are accurate enough to check each hand-written
# backward pass to about 1e-10. It runs on minicnn's `reference` backend: every op is a plain
# Python loop in `minicnn/ops/reference.py` that you can read next to this notebook.
#
# This notebook is paired with `backprop_walkthrough_notebook.py` (jupytext, percent format):
# edit either one, then `jupytext --sync examples/backprop_walkthrough_notebook.ipynb`.
# The printing helpers live in `backprop_walkthrough.py`, the command-line version of the
# same walkthrough (`python examples/backprop_walkthrough.py --help`).

# %%
import numpy as np

import minicnn
from minicnn import ops

import backprop_walkthrough as walk      # examples/backprop_walkthrough.py, beside this notebook

print("minicnn", minicnn.__version__, "from", minicnn.__path__[0])
minicnn.set_backend("reference")
args = walk.parse_args(["--images", "3", "--size", "8", "--adam-steps", "1"])
minicnn.set_random_seed(args.seed)
x, y, names, source = walk.load_images(args)
print(f"{len(x)} images from {source}, {x.shape[1]}x{x.shape[2]}, labels",
      [names[int(c)] for c in y[:, 0]])
model = walk.build_model(x.shape[1:], args.filters, len(names), args.learning_rate)
model.summary()

# %% [markdown]
# ## 1. Forward pass
#
# Each layer's `forward(x, training=True)` in turn. A layer keeps what its backward pass will
# need (the input, the max-pool's argmax, the activation) in its cache.

# %%
acts = walk.forward_pass(model, x)

# %% [markdown]
# ## 2. Loss
#
# Softmax cross-entropy from the logits $z$ of the last layer:
# $L = -\frac{1}{n}\sum_b \log p_{b, y_b}$ with $p = \mathrm{softmax}(z)$. Multiplying the
# softmax Jacobian by the cross-entropy gradient gives the fused
# $\frac{\partial L}{\partial z} = \frac{1}{n}(p - \mathrm{onehot}(y))$.

# %%
loss, dz = walk.loss_step(model, acts, y, names)

# %% [markdown]
# ## 3. Backward pass
#
# Last layer first. Each layer receives $\partial L/\partial y$, fills `layer.grads` and
# returns $\partial L/\partial x$ for the layer below.

# %%
grads = walk.backward_pass(model, dz)
assert walk.compare_with_model(model, x, y, loss, grads)

# %% [markdown]
# **By hand.** For the Dense layer $z = x W + b$, so $\partial L/\partial W = x^T dz$ and
# $\partial L/\partial b = \sum_b dz_b$. Its input is the flattened max-pool output, `acts[-2]`:

# %%
dense = model.layers[-1]
dW = acts[-2].T @ dz
db = dz.sum(axis=0)
print("dW by hand vs the layer:", np.max(np.abs(dW - grads[dense.name]["kernel"])))
print("db by hand vs the layer:", np.max(np.abs(db - grads[dense.name]["bias"])))
assert np.allclose(dW, grads[dense.name]["kernel"], rtol=1e-12, atol=1e-15)
assert np.allclose(db, grads[dense.name]["bias"], rtol=1e-12, atol=1e-15)

# %% [markdown]
# ## 4. Gradient checks
#
# Each layer against central differences,
# $\frac{\partial L}{\partial w} \approx \frac{L(w + h) - L(w - h)}{2h}$, on a float64 copy with
# a small input; then the loss, then the whole model on the real images. The relative error
# $\frac{\lVert a - n \rVert}{\lVert a \rVert + \lVert n \rVert}$ should be far below 1e-6.

# %%
dense = model.layers[-1]


def logits():
    h = x
    for layer in model.layers[:-1]:
        h = layer.forward(h)
    return ops.dense_forward(h, dense.params["kernel"], dense.params["bias"])


worst_check = walk.gradient_checks(model, x, y, logits, args.filters)
assert worst_check < walk.TOLERANCE

# %% [markdown]
# ## 5. Adam by hand
#
# One Adam step for the first layer's weight with the largest gradient: the moments $m$ and
# $v$, the bias correction, the update, then what minicnn's Adam did to the same weight.

# %%
worst_adam = walk.adam_by_hand(model, x, y, args.adam_steps)
assert worst_adam <= walk.ADAM_RTOL

# %% [markdown]
# ## 6. BatchNormalization
#
# The per-channel statistics of the first convolution's output, the backward pass term by
# term (each of the three paths: through $\hat{x}$, the mean and the variance), and its
# gradient check.

# %%
worst_bn = walk.batchnorm_section(model, x)
assert worst_bn < walk.TOLERANCE
print(f"\nworst gradient check {worst_check:.1e}, Adam by hand {worst_adam:.1e}, "
      f"BatchNormalization {worst_bn:.1e}: all checks pass")

# %% [markdown]
# ## Try it yourself
#
# - Break a backward pass and watch the checks fail: in `minicnn/ops/reference.py`, scale the
#   kernel gradient of `dense_backward` by 1.01 and run the notebook again.
# - Step into an op with a debugger: `%debug` after an error, or
#   `import pdb; pdb.runcall(ops.reference.conv2d_backward, ...)`.
# - More images or CIFAR-10 itself: `walk.parse_args(["--images", "8", "--data", PATH])`.
