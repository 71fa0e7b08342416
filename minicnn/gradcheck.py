"""Gradient checking: compare hand-written backward passes with finite differences.

Use it on the shipped layers or on your own::

    from minicnn import layers, gradcheck
    errors = gradcheck.check_layer(layers.Conv2D(4, 3, padding='same', dtype='float64'),
                                   input_shape=(5, 5, 3))
    # {'dx': 3e-11, 'kernel': 2e-11, 'bias': 1e-11}

The scalar checked is ``L = sum(forward(x) * r)`` for a fixed random ``r``, so
``dL/dy = r`` and one backward pass gives every analytic gradient at once.
The error reported for each gradient is the relative error of whole arrays,
``||analytic - numeric|| / max(||analytic|| + ||numeric||, 1e-300)``: about
1e-10 or smaller in float64 when the backward pass is right, and of order 1
when it is wrong. Use float64 (``dtype='float64'``): in float32 the finite
differences themselves are only good to about 1e-3.
"""
from __future__ import annotations

import warnings

import numpy as np


def numerical_gradient(f, x, eps=1e-6):
    """Central differences of a scalar function: ``(f(x + eps e_i) - f(x - eps e_i)) / 2 eps``.

    ``f`` takes an array shaped like ``x`` and returns a number. ``x`` is not
    modified (a copy is perturbed). Returns an array shaped like ``x``.
    """
    x = np.array(x, dtype=np.float64 if np.asarray(x).dtype != np.float32 else np.float32,
                 copy=True)
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = float(f(x))
        flat[i] = old - eps
        fm = float(f(x))
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return grad


def relative_error(a, b) -> float:
    """``||a - b|| / max(||a|| + ||b||, 1e-300)``, of whole arrays."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), 1e-300))


def check_layer(layer, input_shape, batch_size=2, x=None, eps=1e-6, seed=0, training=False):
    """Maximum relative error of every gradient of ``layer``, against finite differences.

    Parameters
    ----------
    layer : a minicnn layer (unbuilt or built), ideally with ``dtype='float64'``
    input_shape : shape of one example (no batch dimension)
    batch_size : examples in the checked batch
    x : optional input ``(batch_size, *input_shape)``; random normal by default. Choose
        inputs away from kinks (ReLU at 0, max-pool ties) where the gradient is undefined.
    training : passed to ``forward`` (dropout and augmentation layers need the same
        random draw in every call: give them a ``seed``; this function reseeds them)

    Returns
    -------
    dict : ``{'dx': err, <param name>: err, ...}``

    The upstream gradient is a random ``r`` (never ``ones``: the sum of a normalised
    output has zero gradient, so a ``.sum()`` check passes wrong code). Each weight's
    gradient is checked on both paths a layer has: alone (first in a model, where it
    skips dL/dx) and after a layer with weights (where it computes dL/dx); the worst of
    the two is reported. Non-trainable weights (BatchNormalization's moving statistics)
    have no gradient and are not checked. A float32 layer warns: its finite differences are only good to
    about 1e-3, so errors of 1e-2 mean nothing there.
    """
    rng = np.random.default_rng(seed)
    if not layer.built:
        layer.build(tuple(input_shape))
    dtype = layer.dtype
    if np.dtype(dtype) != np.float64:
        warnings.warn(f"gradcheck: {getattr(layer, 'name', layer)} computes in {np.dtype(dtype)}, "
                      f"whose finite differences are only good to about 1e-3; build it with "
                      f"dtype='float64' for a meaningful check", stacklevel=2)
    if x is None:
        x = rng.standard_normal((batch_size,) + tuple(input_shape))
    x = np.asarray(x, dtype=dtype)
    y = layer.forward(x, training=training)
    r = rng.standard_normal(y.shape).astype(dtype)

    def reseed():
        if hasattr(layer, "reseed"):       # random layers with a seed draw the same again
            layer.reseed()

    def loss_of_x(xv):
        reseed()
        return float(np.sum(layer.forward(xv, training=training) * r))

    # analytic gradients from one forward/backward pair on each path
    old_flag = layer.compute_input_gradient
    analytic = {}
    try:
        for after_weights in (False, True):
            layer.compute_input_gradient = after_weights
            reseed()
            layer.forward(x, training=training)
            dx = layer.backward(r)
            analytic[after_weights] = {name: np.array(g, copy=True)
                                       for name, g in layer.grads.items()}
    finally:
        layer.compute_input_gradient = old_flag

    errors = {"dx": relative_error(dx, numerical_gradient(loss_of_x, x, eps))}
    trainable = getattr(layer, "is_trainable_weight", lambda key: True)
    for name, param in layer.params.items():
        if not trainable(name):       # moving statistics: updated by the layer, no gradient
            continue
        original = param.copy()

        def loss_of_param(pv, param=param):
            param[...] = pv
            return loss_of_x(x)

        numeric = numerical_gradient(loss_of_param, original, eps)
        param[...] = original
        errors[name] = max(relative_error(analytic[path][name], numeric) for path in analytic)
    return errors


def check_loss(loss, logits, y_true, eps=1e-6):
    """Relative error of a loss's gradient, both on logits (fused) and on probabilities.

    Returns ``{'fused_logits': err, 'probabilities': err}`` (float64 inputs expected).
    ``loss`` is a :class:`minicnn.losses.Loss`; ``logits`` ``(n, k)``.
    """
    from . import ops
    logits = np.asarray(logits, dtype=np.float64)
    _, d = loss.from_logits_forward(logits, y_true)
    numeric = numerical_gradient(lambda z: loss.from_logits_forward(z, y_true)[0], logits, eps)
    out = {"fused_logits": relative_error(d, numeric)}
    p = ops.activation_forward("softmax", logits)
    was = loss.from_logits
    loss.from_logits = False
    try:
        _, dp = loss.forward(p, y_true)
        numeric_p = numerical_gradient(lambda q: loss.forward(q, y_true)[0], p, eps)
    finally:
        loss.from_logits = was
    out["probabilities"] = relative_error(dp, numeric_p)
    return out


def check_model(model, x, y, sample_weight=None, eps=1e-6, training=True):
    """Relative error of every trainable weight's gradient of a compiled model's loss.

    The loss is the whole training loss: the compiled loss (its options such as
    ``label_smoothing``, the ``sample_weight``) plus every regularizer's penalty, on one
    batch ``x, y``; ``model.backprop`` gives the analytic gradients, central differences
    the numeric ones. Use a float64 model without unseeded randomness (Dropout, random
    augmentation) in the pass.

    Returns ``{weight path: err}``.
    """
    x = np.asarray(x, dtype=model.dtype)
    model.backprop(x, y, sample_weight)
    slots = model.trainable_slots()
    analytic = {path: np.array(owner.grads[key], copy=True) for path, owner, key in slots}

    def loss():
        y_pred = model.call(x, training=training)
        return model.compute_loss(y_pred, y, sample_weight)[0]

    errors = {}
    for path, owner, key in slots:
        param = owner.params[key]
        original = param.copy()

        def loss_of(pv, param=param):
            param[...] = pv
            return loss()

        numeric = numerical_gradient(loss_of, original, eps)
        param[...] = original
        errors[path] = relative_error(analytic[path], numeric)
    return errors


# ----------------------------------------------------------------------------- against torch
def float64_copy(model, random_as_identity=False):
    """A float64 copy of ``model`` (same architecture, weights cast to float64).

    With ``random_as_identity`` every Dropout and augmentation layer (a
    :class:`minicnn.layers.augment.RandomLayer`) becomes ``Activation('linear')`` under
    the same name: a training pass is then deterministic. Returns ``(copy, names of the
    layers replaced)``.
    """
    from . import saving
    from .layers.augment import RandomLayer
    from .models import Model
    classes = {saving.get_registered_name(type(layer)): type(layer)
               for layer in model.walk_layers()}
    replaced = []

    def convert(entry):
        cls = saving.get_registered_object(entry["class_name"], classes)
        cfg = entry["config"]
        if isinstance(cls, type) and issubclass(cls, Model):
            for inner in cfg["layers"]:
                convert(inner)
        elif random_as_identity and isinstance(cls, type) and issubclass(cls, RandomLayer):
            replaced.append(cfg["name"])
            entry["class_name"] = "Activation"
            entry["config"] = {"name": cfg["name"], "activation": "linear", "dtype": "float64",
                               **{k: cfg[k] for k in ("input_shape", "trainable") if k in cfg}}
        else:
            cfg["dtype"] = "float64"

    cfg = model.get_config()
    for entry in cfg["layers"]:
        convert(entry)
    copy = saving.model_from_config({"class_name": saving.model_class_name(model),
                                     "config": cfg}, classes)
    copy.set_weights([np.asarray(w, dtype=np.float64) for w in model.get_weights()])
    copy.fuse = model.fuse
    return copy, replaced


def _torch_loss(torch, loss, out, y, sample_weight, on_logits):
    """minicnn's cross-entropy (:mod:`minicnn.losses`) written in torch."""
    n, k = out.shape
    y = np.asarray(y)
    if loss.sparse:
        t = np.eye(k)[y.reshape(-1).astype(np.int64)]
    else:
        t = np.array(y, dtype=np.float64)
    smoothing = getattr(loss, "label_smoothing", 0.0)
    if smoothing:
        t = t * (1 - smoothing) + smoothing / k
    if sample_weight is not None:
        t = t * np.asarray(sample_weight, dtype=np.float64).reshape(n, 1)
    t = torch.from_numpy(np.ascontiguousarray(t, dtype=np.float64))
    if on_logits:
        logp = torch.log_softmax(out, dim=-1)
    else:                                       # renormalised, then clipped, as Keras
        from .losses import EPSILON
        p = out / out.sum(dim=-1, keepdim=True)
        logp = torch.log(torch.clamp(p, EPSILON, 1 - EPSILON))
    return -(t * logp).sum() / n


def _torch_penalty(torch, twin, entries):
    """The regularizers' penalties (``kernel_regularizer=`` ...) on the torch weights."""
    from .regularizers import L1L2
    params = dict(twin.named_parameters())
    total = torch.zeros((), dtype=torch.float64)
    for tname, layer, key, _, _ in entries:
        reg = getattr(layer, f"{key}_regularizer", None) if key else None
        if reg is None:
            continue
        if not isinstance(reg, L1L2):
            raise ValueError(f"compare_with_torch: {layer.name}.{key}_regularizer is "
                             f"{type(reg).__name__}, which has no torch form (L1, L2, L1L2 do)")
        w = params[tname]
        total = total + reg.l1 * w.abs().sum() + reg.l2 * (w * w).sum()
    return total


def compare_with_torch(model, x, y, loss=None, sample_weight=None, print_fn=print):
    """One training backprop in minicnn and in its PyTorch twin, gradient by gradient.

    Both run in float64 on a copy of ``model`` (:func:`float64_copy`; the model itself,
    its weights and BatchNormalization statistics are untouched): minicnn's
    ``backprop`` (its hand-written backward passes, the fusions of the backend) against
    autograd through :func:`minicnn.export.to_torch`'s module, in training mode
    (BatchNormalization on the batch statistics). Dropout and augmentation layers run as
    the identity in both, so that the two passes see the same function (the table says
    which ones).

    Parameters
    ----------
    model : a built minicnn model; compiled, or give ``loss``
    x, y : one batch (``x`` NHWC; a list for several inputs) and its targets
    loss : a loss name or object (default: the compiled loss), with the same
        regularizer penalties as training
    print_fn : where the table goes (``None``: nowhere)

    Returns
    -------
    dict : ``{'loss': err, <weight path>: err, ...}``, each the relative error
    ``||a - b|| / (||a|| + ||b||)`` of :func:`relative_error` (about 1e-15 to 1e-12 when
    the backward passes are right).
    """
    from . import losses
    from .export import layout, torch_module
    layout.require_built(model, "compare_with_torch")
    torch = torch_module.torch_module()
    if loss is None:
        if not model.compiled:
            raise ValueError("compare_with_torch: the model is not compiled; compile it or "
                             "pass loss=, e.g. loss='categorical_crossentropy'")
        loss = model.loss
    loss = losses.get(loss)
    copy, identities = float64_copy(model, random_as_identity=True)
    copy.compile(optimizer="sgd", loss=loss)
    several = isinstance(x, (list, tuple))
    xs64 = [np.array(a, dtype=np.float64) for a in (x if several else [x])]   # new arrays
    ours_loss = copy.backprop(xs64 if several else xs64[0], y, sample_weight)
    ours = {path: np.array(owner.grads[key], copy=True)
            for path, owner, key in copy.trainable_slots()}

    twin = torch_module.to_torch(copy).train()
    on_logits = copy.loss_from_preactivation() or loss.from_logits
    out = twin.run([torch.from_numpy(a) for a in xs64],
                   preactivation=copy.loss_from_preactivation())[0]
    entries = layout.torch_weights(copy)
    theirs_loss = (_torch_loss(torch, loss, out, y, sample_weight, on_logits)
                   + _torch_penalty(torch, twin, entries))
    theirs_loss.backward()
    params = dict(twin.named_parameters())
    by_slot = {(id(layer), key): (tname, back) for tname, layer, key, _, back in entries
               if key is not None}
    errors = {"loss": relative_error(ours_loss, float(theirs_loss.detach()))}
    rows = []
    for path, owner, key in copy.trainable_slots():
        tname, back = by_slot[(id(owner), key)]
        grad = params[tname].grad
        theirs = np.zeros_like(ours[path]) if grad is None else back(grad.numpy())
        errors[path] = relative_error(ours[path], theirs)
        rows.append((path, str(ours[path].shape), tname, errors[path]))
    if print_fn is not None:
        print_fn(f"compare_with_torch: {model.name}, one backprop in float64, training mode"
                 + (f"; as the identity: {', '.join(identities)}" if identities else ""))
        width = max(len(r[0]) for r in rows + [("loss",)])
        twidth = max(len(r[2]) for r in rows)
        print_fn(f"{'weight':<{width}}  {'shape':<16}  {'torch':<{twidth}}  rel. error")
        print_fn(f"{'loss':<{width}}  {'':<16}  {'':<{twidth}}  {errors['loss']:.2e}")
        for path, shape, tname, err in rows:
            print_fn(f"{path:<{width}}  {shape:<16}  {tname:<{twidth}}  {err:.2e}")
        print_fn(f"worst: {max(errors.values()):.2e}")
    return errors
