"""Small models covering every layer the exporters write, for the ONNX and torch tests.

Each case builds a float32 model whose weights (BatchNormalization's moving statistics
included) are random, so a swapped axis, a wrong epsilon or a missing transpose changes
the output.
"""
from __future__ import annotations

import numpy as np

import minicnn as keras
from minicnn import layers, models


def randomize(model, seed=0):
    """Random weights; variances positive and away from 1, so epsilon matters."""
    rng = np.random.default_rng(seed)
    weights = []
    for path, owner, key in model.weight_slots():
        shape = owner.params[key].shape
        if key == "moving_variance":
            weights.append(rng.uniform(1e-3, 2.0, shape))
        elif key == "gamma":
            weights.append(rng.uniform(0.5, 1.5, shape))
        else:
            weights.append(rng.standard_normal(shape) * 0.5)
    model.set_weights([w.astype(np.float32) for w in weights])
    return model


def seq(input_shape, *stack, name=None):
    return keras.Sequential([keras.Input(shape=input_shape), *stack], name=name)


def conv_cases():
    out = {}
    for padding in ("same", "valid"):
        for strides in (1, 2, (2, 1)):
            for kernel in (3, 2, (2, 3)):
                key = f"conv-{padding}-s{strides}-k{kernel}".replace(" ", "")
                out[key] = lambda p=padding, s=strides, k=kernel: seq(
                    (7, 9, 3), layers.Conv2D(4, k, strides=s, padding=p))
    out["conv-nobias-relu"] = lambda: seq((6, 5, 2), layers.Conv2D(3, 3, padding="same",
                                                                    use_bias=False,
                                                                    activation="relu"))
    return out


def pool_cases():
    out = {}
    for cls in (layers.MaxPooling2D, layers.AveragePooling2D):
        for padding in ("same", "valid"):
            for pool, strides in ((2, None), (3, 2), ((3, 2), (1, 2))):
                key = f"{cls.__name__}-{padding}-p{pool}-s{strides}".replace(" ", "")
                out[key] = lambda c=cls, p=padding, k=pool, s=strides: seq(
                    (7, 9, 3), c(k, strides=s, padding=p))
    for cls in (layers.GlobalAveragePooling2D, layers.GlobalMaxPooling2D):
        for keepdims in (False, True):
            out[f"{cls.__name__}-keepdims{keepdims}"] = lambda c=cls, k=keepdims: seq(
                (5, 6, 4), c(keepdims=k))
    return out


ACTIVATIONS = ("linear", "relu", "sigmoid", "tanh", "softmax", "gelu", "swish", "silu", "elu",
               "leaky_relu")


def activation_cases():
    out = {}
    for act in ACTIVATIONS:
        out[f"dense-{act}"] = lambda a=act: seq((6,), layers.Dense(5, activation=a))
        # on images: softmax must run over the channels, axis 1 of NCHW
        out[f"image-{act}"] = lambda a=act: seq((4, 5, 3), layers.Activation(a))
    out["ReLU"] = lambda: seq((4, 5, 3), layers.ReLU())
    out["LeakyReLU"] = lambda: seq((4, 5, 3), layers.LeakyReLU(negative_slope=0.1))
    out["Softmax"] = lambda: seq((4, 5, 3), layers.Softmax())
    return out


def other_cases():
    out = {
        "bn-images": lambda: seq((5, 6, 3), layers.BatchNormalization(epsilon=0.01)),
        "bn-dense": lambda: seq((6,), layers.Dense(4), layers.BatchNormalization()),
        "bn-sequence": lambda: seq((5, 4), layers.BatchNormalization(), layers.Flatten()),
        "bn-no-scale-center": lambda: seq((5, 6, 3), layers.BatchNormalization(
            scale=False, center=False)),
        "flatten-dense": lambda: seq((5, 3, 4), layers.Conv2D(3, 2), layers.Flatten(),
                                     layers.Dense(6)),
        "rescaling": lambda: seq((4, 5, 3), layers.Rescaling(1 / 255.0, offset=-0.5)),
        "rescaling-no-offset": lambda: seq((6,), layers.Rescaling(2.0)),
        "zero-padding": lambda: seq((4, 5, 3), layers.ZeroPadding2D(((1, 2), (0, 3))),
                                    layers.Conv2D(2, 3)),
        "dropout-augment": lambda: seq((6, 6, 3), layers.RandomFlip("horizontal"),
                                       layers.RandomTranslation(0.2, 0.2),
                                       layers.Conv2D(2, 3), layers.Dropout(0.5),
                                       layers.Flatten(), layers.Dense(3, activation="softmax")),
        "image-output": lambda: seq((6, 7, 3), layers.Conv2D(4, 3, strides=2, padding="same")),
    }
    for cls in (layers.Add, layers.Subtract, layers.Multiply, layers.Average, layers.Maximum,
                layers.Minimum):
        out[f"merge-{cls.__name__}"] = lambda c=cls: _merge_model(c)
    out["merge-Add-3"] = lambda: _merge_model(layers.Add, branches=3)
    for axis in (-1, 1, 2, 3):
        out[f"concatenate-axis{axis}"] = lambda a=axis: _concat_model(a)
    out["concatenate-flat"] = _concat_flat
    out["nested-and-shared"] = _nested_model
    return out


def _merge_model(cls, branches=2):
    inputs = keras.Input(shape=(5, 6, 3))
    x = layers.Conv2D(4, 3, padding="same")(inputs)
    ys = [layers.Conv2D(4, 1)(x) for _ in range(branches - 1)]
    y = cls()([x, *ys])
    return keras.Model(inputs, layers.Dense(3)(layers.Flatten()(y)))


def _concat_model(axis):
    inputs = keras.Input(shape=(4, 6, 3))
    a = layers.Conv2D(2, 3, padding="same")(inputs)
    b = layers.Conv2D(2, 1)(inputs)
    y = layers.Concatenate(axis=axis)([a, b])
    return keras.Model(inputs, layers.Flatten()(y))


def _concat_flat():
    inputs = keras.Input(shape=(6,))
    y = layers.Concatenate()([layers.Dense(3)(inputs), layers.Dense(2, activation="tanh")(inputs)])
    return keras.Model(inputs, y)


def _nested_model():
    inner_in = keras.Input(shape=(6, 6, 4))
    inner = keras.Model(inner_in, layers.BatchNormalization()(
        layers.Conv2D(4, 3, padding="same")(inner_in)), name="inner")
    inputs = keras.Input(shape=(6, 6, 3))
    x = layers.Conv2D(4, 1, name="stem")(inputs)
    shared = layers.Conv2D(4, 3, padding="same", name="shared")
    y = layers.Add()([shared(x), shared(inner(x))])
    return keras.Model(inputs, layers.GlobalAveragePooling2D()(y), name="outer")


def all_cases():
    return {**conv_cases(), **pool_cases(), **activation_cases(), **other_cases()}


def build(key, seed=0):
    return randomize(all_cases()[key](), seed)


def batch(model, n=3, seed=1):
    """A batch for ``model`` with values away from ReLU kinks and pooling ties."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n,) + tuple(model.input_shape)) * 2).astype(np.float32)


def trained(name):
    """The seed CNN or the residual BatchNorm CNN after two training steps on random data
    (so the moving statistics are not their initial zeros and ones)."""
    keras.set_random_seed(0)
    model = models.zoo.MODELS[name]()
    model.compile("adam", "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 32, 32, 3)).astype(np.float32)
    y = np.arange(16) % 10
    for _ in range(2):
        model.train_on_batch(x, y)
    return model, x[:6], y[:6]
