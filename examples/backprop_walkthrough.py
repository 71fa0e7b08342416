"""Backprop, walked through: a small CNN, a few real images, every gradient shown and checked.

The network::

    Conv2D(4, 3, activation='relu', padding='same') -> MaxPooling2D(2) -> Flatten
        -> Dense(10, activation='softmax')

in float64 (``dtype='float64'`` on every layer) so that finite differences are accurate enough to
check each hand-written backward pass to about 1e-10. The script prints, in order:

1. the forward pass, layer by layer: input and output shapes and what each layer computes;
2. the loss: softmax cross-entropy from the last layer's pre-activation ``z``, whose gradient is the
   fused ``dL/dz = (softmax(z) - onehot(y)) / n``;
3. the backward pass, layer by layer in reverse: the incoming ``dL/dy``, the outgoing ``dL/dx`` and
   every parameter gradient, with shapes and norms; then the same gradients from
   ``model.backprop`` (they are identical: this *is* what the model does);
4. gradient checks: each layer's analytic gradients against central differences
   (:func:`minicnn.gradcheck.check_layer` on a float64 copy of the layer with a small input), the
   loss's gradient (:func:`minicnn.gradcheck.check_loss`), and the whole model's ``dL/dw`` for the
   largest gradients of each parameter array, on the real images;
5. Adam steps worked through by hand for one weight (``m``, ``v``, bias correction, the update),
   compared with what minicnn's Adam did to that weight (they agree to the last bit or nearly).

Run it::

    python examples/backprop_walkthrough.py                     # 4 shape images, reference backend
    python examples/backprop_walkthrough.py --images 8 --size 32
    python examples/backprop_walkthrough.py --data ~/data/cifar-10-batches-py

It runs on the ``reference`` backend by default: every op is a plain Python loop in
``minicnn/ops/reference.py`` you can step into with a debugger. Give pdb the function, not a file
and line: import its module first (pdb stops before the script's own imports), then break on
``module.function``; this works from any folder and survives edits to the file::

    python -m pdb examples/backprop_walkthrough.py
    (Pdb) import minicnn.ops.reference
    (Pdb) break minicnn.ops.reference.conv2d_backward
    (Pdb) continue
    (Pdb) p x.shape, kernel.shape, dy.shape
    (Pdb) quit

To step through the Numba kernels instead, switch off the JIT so they run as Python::

    NUMBA_DISABLE_JIT=1 python -m pdb examples/backprop_walkthrough.py --backend numba
    (Pdb) import minicnn.ops._kernels.conv
    (Pdb) break minicnn.ops._kernels.conv.conv2d_backward
    (Pdb) continue
    (Pdb) p x.shape, dy.shape
    (Pdb) quit

The images come from minicnn's generated shapes dataset (no download), or from CIFAR-10 with
``--data PATH`` (the directory of the Python-version batches). ``--size 16`` (the default) averages
2x2 pixel blocks so that the reference backend finishes in a few seconds.
"""
from __future__ import annotations

import argparse

import numpy as np

import minicnn
from minicnn import gradcheck, layers, models, ops, optimizers

TOLERANCE = 1e-6            # a gradient check passes below this relative error (float64)
ADAM_RTOL = 1e-12           # the hand-computed Adam step must match minicnn's to this
SAME_RTOL = 1e-12           # the layer-by-layer walk must match model.backprop to this
CHECK_BATCH = 2             # examples in each layer's gradient check
TOP_WEIGHTS = 3             # weights per parameter array in the end-to-end check
END_TO_END_EPS = 1e-5       # finite-difference step of the end-to-end check

CIFAR10_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck")

WHAT = {  # what each layer computes, forward and backward, in the notation of ops/reference.py
    "Conv2D": ("z = conv(x, kernel) + bias;  y = {act}(z)",
               "dz = dy * {act}'(z);  dkernel = sum of patch(x) * dz;  dbias = sum dz;  "
               "dx = col2im(kernel @ dz)"),
    "MaxPooling2D": ("y = max over each {pool} window (argmax recorded)",
                     "dx = dy routed to the one argmax of each window, zeros elsewhere"),
    "Flatten": ("y = x.reshape(n, -1)  (NHWC order)", "dx = dy.reshape(x.shape)"),
    "Dense": ("z = x @ kernel + bias;  y = {act}(z)",
              "dkernel = x.T @ dz;  dbias = sum_n dz;  dx = dz @ kernel.T"),
}


# ----------------------------------------------------------------------------- setup
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=4, help="number of images in the batch (4)")
    p.add_argument("--size", type=int, default=16,
                   help="image side after averaging pixel blocks; must divide 32 (16)")
    p.add_argument("--filters", type=int, default=4, help="Conv2D filters (4)")
    p.add_argument("--backend", default="reference", choices=minicnn.config.BACKENDS,
                   help="ops backend (reference: plain loops you can step through)")
    p.add_argument("--data", metavar="PATH", default=None,
                   help="CIFAR-10 directory (cifar-10-batches-py); default: generated shapes")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the weights (0)")
    p.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (1e-3)")
    p.add_argument("--adam-steps", type=int, default=2, help="Adam steps worked by hand (2)")
    args = p.parse_args(argv)
    for name in ("images", "filters", "adam_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, received {getattr(args, name)}")
    if args.seed < 0:
        p.error(f"--seed must be >= 0, received {args.seed}")
    if not args.learning_rate > 0:
        p.error(f"--learning-rate must be positive, received {args.learning_rate}")
    return args


def load_images(args):
    """``args.images`` images, float64 in [0, 1], block-averaged to ``args.size`` pixels a side;
    their labels (n, 1); the class names; a description of the source."""
    if args.data is None:
        from minicnn.datasets import shapes
        (x, y), _ = shapes.load_data(n_train=args.images, n_test=0, seed=args.seed)
        names, source = shapes.CLASS_NAMES, "generated shapes (minicnn.datasets.shapes)"
    else:
        try:
            from minicnn.datasets import cifar10
        except ImportError as exc:
            raise SystemExit(f"--data: minicnn.datasets.cifar10 is not available ({exc})") from None
        (x, y), _ = cifar10.load_data(args.data)
        if len(x) < args.images:
            raise SystemExit(f"--images: {args.data} holds {len(x)} images, "
                             f"received --images {args.images}")
        x, y = x[:args.images], y[:args.images]
        names = getattr(cifar10, "CLASS_NAMES", CIFAR10_NAMES)
        source = f"CIFAR-10 from {args.data}"
    side = x.shape[1]
    if args.size < 1 or side % args.size or x.shape[2] != side:
        raise SystemExit(f"--size must divide the image side {side}, received {args.size}")
    f = side // args.size
    x = x.astype(np.float64) / 255.0
    # average f x f blocks: the whole picture stays, with fewer pixels for the loops to visit
    x = x.reshape(len(x), args.size, f, args.size, f, x.shape[3]).mean(axis=(2, 4))
    return x, np.asarray(y).reshape(-1, 1).astype(np.int64), list(names), source


def build_model(input_shape, filters, num_classes, learning_rate):
    model = models.Sequential([
        layers.Conv2D(filters, 3, activation="relu", padding="same", input_shape=input_shape,
                      dtype="float64", name="conv2d"),
        layers.MaxPooling2D(2, dtype="float64", name="max_pooling2d"),
        layers.Flatten(dtype="float64", name="flatten"),
        layers.Dense(num_classes, activation="softmax", dtype="float64", name="dense"),
    ])
    model.compile(optimizer=optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


# ----------------------------------------------------------------------------- printing helpers
def heading(text):
    print()
    print(text)
    print("-" * len(text))


def shape(a):
    return "None" if a is None else str(tuple(a.shape))


def norm(a):
    return float(np.linalg.norm(a))


def describe(layer, which):
    text = WHAT[type(layer).__name__][which]
    return text.format(act=getattr(layer, "activation", ""),
                       pool="x".join(map(str, getattr(layer, "pool_size", ()))))


def label(layer):
    return f"{layer.name} ({type(layer).__name__})"


def row(expression, value):
    """One line of a hand computation: the formula, then its value (or the numbers it uses)."""
    text = value if isinstance(value, str) else f"{value: .12e}"
    print(f"  {expression:<48} = {text}")


# ----------------------------------------------------------------------------- 1-3: the passes
def forward_pass(model, x):
    """Each layer's forward(training=True) in turn; returns the list of activations [x, y1, ...]."""
    heading("1. Forward pass, layer by layer: y = layer.forward(x, training=True)")
    acts = [x]
    for layer in model.layers:
        y = layer.forward(acts[-1], training=True)
        print(f"{label(layer):<28} x {shape(acts[-1]):<17} -> y {shape(y):<17}  "
              f"{describe(layer, 0)}")
        acts.append(y)
    return acts


def loss_step(model, acts, y, names):
    """The loss from the last layer's pre-activation z, and the fused gradient dL/dz."""
    heading("2. Loss: softmax cross-entropy from the logits z of the last layer")
    dense = model.layers[-1]
    z = ops.dense_forward(acts[-2], dense.params["kernel"], dense.params["bias"])
    loss, dz = model.loss.from_logits_forward(z, y)
    p = acts[-1]
    print(f"z = x @ kernel + bias (the logits): {shape(z)};  p = softmax(z): {shape(p)}")
    k = z.shape[1]
    print(f"loss = -mean_b log p[b, y_b] = {float(loss):.6f}   (log({k}) = {np.log(k):.6f} for "
          f"a uniform guess)")
    for b in range(len(y)):
        print(f"  image {b}: label {names[int(y[b, 0])]:<10} p[label] = {p[b, int(y[b, 0])]:.4f}  "
              f"predicted {names[int(np.argmax(p[b]))]}")
    print(f"dL/dz = (p - onehot(y)) / n, fused: the softmax Jacobian and the cross-entropy "
          f"gradient multiplied out on paper.  shape {shape(dz)}, norm {norm(dz):.4e}")
    return float(loss), dz


def backward_pass(model, dz):
    """Each layer's backward in reverse order; returns {layer name: {grad name: array}}."""
    heading("3. Backward pass, last layer first: dx = layer.backward(dy) fills layer.grads")
    grads = {}
    *rest, last = model.layers
    steps = [(last, dz, "dL/dz")] + [(layer, None, "dL/dy") for layer in reversed(rest)]
    dy = None
    for layer, incoming, what in steps:
        if incoming is not None:  # the softmax is fused into the loss: start from dL/dz
            dy = incoming
            dx = layer.backward_preactivation(dy)
        else:
            dx = layer.backward(dy)
        print(f"{label(layer)}")
        print(f"    backward: {describe(layer, 1)}")
        print(f"    in   {what:<12} {shape(dy):<17} norm {norm(dy):.4e}")
        if dx is None:
            print(f"    out  {'dL/dx':<12} not computed: no layer below has weights, "
                  f"so nothing needs it")
        else:
            print(f"    out  {'dL/dx':<12} {shape(dx):<17} norm {norm(dx):.4e}")
        grads[layer.name] = {}
        for key, g in layer.grads.items():
            print(f"    grad {'dL/d' + key:<12} {shape(g):<17} norm {norm(g):.4e}")
            grads[layer.name][key] = g.copy()
        if not layer.grads:
            print("    (no parameters)")
        dy = dx
    return grads


def compare_with_model(model, x, y, loss, grads):
    """``model.backprop`` must give the same loss and gradients as the layer-by-layer walk."""
    loss_model = model.backprop(x, y)
    diff = max(_rel_diff(layer.grads[k], grads[layer.name][k])
               for layer in model.layers for k in layer.grads)
    diff = max(diff, _rel_diff(loss_model, loss))
    if diff == 0.0:
        verdict = "identical, bit for bit"
    else:  # e.g. numba's fused Conv2D(relu) + MaxPooling2D kernel sums in another order
        verdict = f"equal to rounding (max relative difference {diff:.1e})"
    print(f"\nmodel.backprop(x, y) does the same: loss {loss_model:.6f}, gradients {verdict}")
    return diff <= SAME_RTOL


def _rel_diff(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.max(np.abs(b))), 1e-300)
    return float(np.max(np.abs(a - b))) / scale


# ----------------------------------------------------------------------------- 4: gradient checks
def check_input_shape(layer, filters):
    """A small input for a layer's gradient check (finite differences cost 2 passes per number)."""
    kind = type(layer).__name__
    if kind == "Conv2D":
        return (6, 6, layer.input_shape[2])
    if kind == "MaxPooling2D":
        return (6, 6, filters)
    if kind == "Flatten":
        return (3, 3, filters)
    return (min(layer.input_shape[0], 16),)


def float64_copy(layer, input_shape):
    """The same layer (same config, float64) built for ``input_shape``, holding the layer's
    weights (a Dense kernel keeps its first rows)."""
    cfg = layer.get_config()
    cfg.pop("input_shape", None)
    cfg.update(name=f"{layer.name}_check", dtype="float64")
    twin = type(layer)(**cfg)
    twin.build(input_shape)
    for key, p in layer.params.items():
        twin.params[key][...] = p[tuple(slice(0, s) for s in twin.params[key].shape)]
    return twin


def gradient_checks(model, x, y, z_fn, filters):
    heading(f"4. Gradient checks: relative error ||analytic - numeric|| / (||analytic|| + "
            f"||numeric||), passes below {TOLERANCE:.0e}")
    print("Each layer: L = sum(layer.forward(x) * r) for a random r, so dL/dy = r; numeric "
          "gradients by central differences (gradcheck.check_layer) on a float64 copy of "
          "the layer, same weights, small input:")
    worst = 0.0
    for layer in model.layers:
        in_shape = check_input_shape(layer, filters)
        errors = gradcheck.check_layer(float64_copy(layer, in_shape), in_shape,
                                       batch_size=CHECK_BATCH, seed=1)
        worst = max([worst, *errors.values()])
        cells = "  ".join(f"{k} {e:.1e}" for k, e in errors.items())
        verdict = "OK" if max(errors.values()) < TOLERANCE else "FAILED"
        batch_shape = str((CHECK_BATCH,) + in_shape)
        print(f"  {label(layer):<28} input {batch_shape:<14}  {cells}  {verdict}")

    errors = gradcheck.check_loss(model.loss, z_fn(), y)
    worst = max([worst, *errors.values()])
    cells = "  ".join(f"{k} {e:.1e}" for k, e in errors.items())
    print(f"  {'loss (' + model.loss.name + ')':<28} {'':<20}  {cells}  "
          f"{'OK' if max(errors.values()) < TOLERANCE else 'FAILED'}")

    print(f"\nWhole model on the real images: dL/dw of the loss, for the {TOP_WEIGHTS} largest "
          f"gradients of each parameter array, against (L(w + h) - L(w - h)) / 2h, "
          f"h = {END_TO_END_EPS:g}:")
    model.backprop(x, y)

    def batch_loss():
        return float(model.test_on_batch(x, y)[0])

    for layer in model.layers:
        for key, param in layer.params.items():
            analytic = layer.grads[key].copy()
            top = np.argsort(np.abs(analytic).reshape(-1))[::-1][:TOP_WEIGHTS]
            idx = [np.unravel_index(i, param.shape) for i in top]
            numeric = []
            for i in idx:
                old = param[i]
                param[i] = old + END_TO_END_EPS
                up = batch_loss()
                param[i] = old - END_TO_END_EPS
                down = batch_loss()
                param[i] = old
                numeric.append((up - down) / (2 * END_TO_END_EPS))
            a = np.array([analytic[i] for i in idx])
            err = gradcheck.relative_error(a, numeric)
            worst = max(worst, err)
            where = ", ".join(str(tuple(int(j) for j in i)) for i in idx)
            print(f"  {layer.name + '/' + key:<20} at {where:<40} error {err:.1e}  "
                  f"{'OK' if err < TOLERANCE else 'FAILED'}")
    return worst


# ----------------------------------------------------------------------------- 5: Adam by hand
def adam_by_hand(model, x, y, steps):
    """Work ``steps`` Adam steps through by hand for the first layer's largest-gradient weight."""
    opt = model.optimizer
    layer = model.layers[0]
    key = f"{layer.name}/kernel"
    b1, b2, eps, lr = opt.beta_1, opt.beta_2, opt.epsilon, opt.learning_rate
    heading(f"5. Adam by hand (learning_rate {lr:g}, beta_1 {b1:g}, beta_2 {b2:g}, "
            f"epsilon {eps:g})")
    model.backprop(x, y)
    grad = layer.grads["kernel"]
    idx = np.unravel_index(int(np.argmax(np.abs(grad))), grad.shape)
    where = f"{key}[{', '.join(map(str, idx))}]"
    print(f"The weight: {where}, the first layer's weight with the largest |gradient| "
          f"(its gradient flowed back through every layer).")
    worst = 0.0
    for _ in range(steps):
        loss = model.backprop(x, y)                # the gradient train_on_batch will use
        g = float(layer.grads["kernel"][idx])
        w = float(layer.params["kernel"][idx])
        slots = opt.state.get(key)
        m = float(slots["m"][idx]) if slots else 0.0
        v = float(slots["v"][idx]) if slots else 0.0
        t = opt.iterations + 1
        print(f"\nstep t = {t}   (loss before the step {loss:.6f})")
        row("w", w)
        row("g = dL/dw", g)
        row("m = beta_1 m + (1 - beta_1) g", f"{b1:g} * {m:.6e} + {1 - b1:.3g} * g")
        m = b1 * m + (1 - b1) * g
        row("", m)
        row("v = beta_2 v + (1 - beta_2) g^2", f"{b2:g} * {v:.6e} + {1 - b2:.3g} * g^2")
        v = b2 * v + (1 - b2) * g * g
        row("", v)
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        row("bias correction: m_hat = m / (1 - beta_1^t)", m_hat)
        row("                 v_hat = v / (1 - beta_2^t)", v_hat)
        # minicnn (like Keras) folds both corrections into the step size instead:
        alpha = lr * np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
        step = alpha * m / (np.sqrt(v) + eps)
        row("alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t)", alpha)
        row("update = alpha m / (sqrt(v) + epsilon)", step)
        print(f"    = lr m_hat / (sqrt(v_hat) + epsilon / sqrt(1 - beta_2^t)), Keras's "
              f"placement of epsilon;\n    the textbook lr m_hat / (sqrt(v_hat) + epsilon) "
              f"would give "
              f"{lr * m_hat / (np.sqrt(v_hat) + eps):.12e}")
        w_new = w - step
        row("w_new = w - update", w_new)

        model.train_on_batch(x, y)                 # backprop again + minicnn's Adam on every weight
        slots = opt.state[key]
        got = {"w": float(layer.params["kernel"][idx]), "m": float(slots["m"][idx]),
               "v": float(slots["v"][idx])}
        mine = {"w": w_new, "m": m, "v": v}
        diffs = {k: abs(got[k] - mine[k]) / max(abs(mine[k]), 1e-300) for k in got}
        worst = max([worst, *diffs.values()])
        row("minicnn's Adam (model.train_on_batch): w", got["w"])
        row("                                       m", got["m"])
        row("                                       v", got["v"])
        print("  relative difference, by hand vs minicnn: "
              + "  ".join(f"{k} {d:.1e}" for k, d in diffs.items())
              + ("  agree" if max(diffs.values()) <= ADAM_RTOL else "  DISAGREE"))
    print(f"\nAt t = 1, m / sqrt(v) = sign(g) (1 - beta_1) / sqrt(1 - beta_2) and alpha undoes "
          f"both factors: the first step moves every weight by about lr = {lr:g}, whatever "
          f"the size of its gradient.")
    print(f"loss after {steps} Adam step(s): {float(model.test_on_batch(x, y)[0]):.6f}")
    return worst


# ----------------------------------------------------------------------------- 6: BatchNormalization
def batchnorm_section(model, x):
    """BatchNormalization on the first convolution's output: the per-channel statistics, the
    backward term by term (the staged graph and the closed form), and the gradient check."""
    heading("6. BatchNormalization on the first convolution's output")
    conv = model.layers[0]
    h = conv.forward(x)                                   # (n, h, w, c) of the real images
    n_rows = h.size // h.shape[-1]
    bn = layers.BatchNormalization(dtype="float64")
    bn.build(h.shape[1:])
    rng = np.random.default_rng(0)
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, h.shape[-1])
    bn.params["beta"][...] = rng.standard_normal(h.shape[-1]) * 0.1
    y = bn.forward(h, training=True)
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))
    print(f"x: {shape(h)}; each of the {h.shape[-1]} channels is normalised over its "
          f"m = n*h*w = {n_rows} values")
    xh = (y - bn.params["beta"]) / bn.params["gamma"]          # xhat, recovered from y
    for ch in range(min(3, h.shape[-1])):
        print(f"  channel {ch}: mean {mean[ch]: .5f}, biased variance {var[ch]:.5f} -> xhat "
              f"mean {xh[..., ch].mean(): .1e}, std {xh[..., ch].std():.5f} "
              f"(sqrt(var / (var + epsilon)) = {np.sqrt(var[ch] / (var[ch] + bn.epsilon)):.5f})")
    print(f"moving_mean after one training step = 0.99 * 0 + 0.01 * mean: "
          f"{_rel_diff(bn.params['moving_mean'], 0.01 * mean):.1e} from the rule")
    dy = rng.standard_normal(y.shape)
    dx = bn.backward(dy)
    gamma, eps = bn.params["gamma"], bn.epsilon
    xhat = (h - mean) / np.sqrt(var + eps)
    dxhat = dy * gamma
    inv_std = 1 / np.sqrt(var + eps)
    axes = (0, 1, 2)
    print("backward, term by term (dy random, so sum(dy) != 0):")
    row("dbeta = sum dy", norm(np.sum(dy, axis=axes)))
    row("dgamma = sum dy * xhat", norm(np.sum(dy * xhat, axis=axes)))
    term1 = n_rows * dxhat
    term2 = np.sum(dxhat, axis=axes)
    term3 = xhat * np.sum(dxhat * xhat, axis=axes)
    row("|m * dxhat| (the path through xhat)", norm(term1))
    row("|sum dxhat| (the path through the mean)", norm(term2))
    row("|xhat * sum(dxhat * xhat)| (through the var)", norm(term3))
    closed = inv_std / n_rows * (term1 - term2 - term3)
    staged = ops.reference.batchnorm_backward_graph(dy, h, gamma, eps)[0]
    print(f"dx = inv_std / m * (m dxhat - sum dxhat - xhat sum(dxhat xhat)):  closed form vs "
          f"layer {_rel_diff(closed, dx):.1e}, staged graph vs layer {_rel_diff(staged, dx):.1e}")
    naive = dxhat * inv_std
    print(f"dropping the mean and variance paths (dx = dxhat * inv_std) is wrong by "
          f"{_rel_diff(naive, dx):.1e}: the full backward matters")
    errors = minicnn.gradcheck.check_layer(bn, h.shape[1:], batch_size=2, x=h[:2], training=True)
    worst = max(errors.values())
    print(f"gradient check (random upstream gradient, training mode): "
          + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    return max(worst, _rel_diff(closed, dx), _rel_diff(staged, dx))


# ----------------------------------------------------------------------------- main
def main(argv=None):
    """Run the walkthrough; returns 0 when every check passes, 1 otherwise."""
    args = parse_args(argv)
    with minicnn.use_backend(args.backend):
        return walkthrough(args)


def walkthrough(args):
    minicnn.set_random_seed(args.seed)
    x, y, names, source = load_images(args)
    model = build_model(x.shape[1:], args.filters, len(names), args.learning_rate)
    print(f"Backprop walkthrough on the {minicnn.get_backend()!r} backend, float64")
    print(f"Data: {len(x)} images from {source}, averaged to {x.shape[1]}x{x.shape[2]}; labels "
          f"{[names[int(c)] for c in y[:, 0]]}")
    model.summary()

    acts = forward_pass(model, x)
    loss, dz = loss_step(model, acts, y, names)
    grads = backward_pass(model, dz)
    same = compare_with_model(model, x, y, loss, grads)

    dense = model.layers[-1]

    def logits():
        h = x
        for layer in model.layers[:-1]:
            h = layer.forward(h)
        return ops.dense_forward(h, dense.params["kernel"], dense.params["bias"])

    worst_check = gradient_checks(model, x, y, logits, args.filters)
    worst_adam = adam_by_hand(model, x, y, args.adam_steps)
    worst_bn = batchnorm_section(model, x)

    heading("Summary")
    print(f"manual passes == model.backprop:        {'yes' if same else 'NO'}")
    print(f"worst gradient-check relative error:    {worst_check:.1e}  "
          f"({'all below' if worst_check < TOLERANCE else 'NOT all below'} {TOLERANCE:.0e})")
    print(f"Adam by hand vs minicnn, worst rel diff: {worst_adam:.1e}  "
          f"({'agree' if worst_adam <= ADAM_RTOL else 'DISAGREE'})")
    print(f"BatchNormalization backward, worst error: {worst_bn:.1e}  "
          f"({'all below' if worst_bn < TOLERANCE else 'NOT all below'} {TOLERANCE:.0e})")
    ok = same and worst_check < TOLERANCE and worst_adam <= ADAM_RTOL and worst_bn < TOLERANCE
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
