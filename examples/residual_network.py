"""A small residual network written with the Functional API, trained on minicnn.

The code is Keras 3 code: swap the import for ``import keras`` and it runs there too.
By default it trains on the built-in ``shapes`` dataset (no files, no network); give
``--data path/to/cifar-10-python.tar.gz`` for CIFAR-10. Run it::

    python examples/residual_network.py                 # shapes, 3 epochs
    python examples/residual_network.py --data ../shared/datasets/cifar-10-python.tar.gz --epochs 10

It prints the summary (with the "Connected to" column of the graph), one line per epoch,
the test accuracy, and the norm of the gradient that reaches each convolution through
the skip connections.
"""
from __future__ import annotations

import argparse

import numpy as np

import minicnn as keras
from minicnn import layers


def residual_block(x, filters, name):
    """``relu(x + conv(relu(conv(x))))``; a 1x1 convolution on the skip when the width
    changes. The skip tensor ``x`` fans out: its gradient is the sum of both paths."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, name=f"{name}_shortcut")(x)
    y = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{name}_conv1")(x)
    y = layers.Conv2D(filters, 3, padding="same", name=f"{name}_conv2")(y)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")(
        [shortcut, y]))


def build_model(input_shape=(32, 32, 3), num_classes=10):
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = residual_block(x, 16, "block1")
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = residual_block(x, 32, "block2")
    x = layers.MaxPooling2D(2, name="pool3")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="classifier")(x)
    return keras.Model(inputs, outputs, name="small_resnet")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="CIFAR-10 archive (default: the shapes dataset)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    keras.utils.set_random_seed(args.seed)
    if args.data:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data(path=args.data)
    else:
        (x_train, y_train), (x_test, y_test) = keras.datasets.shapes.load_data(
            n_train=4000, n_test=1000)
    x_train = x_train.astype("float32") / 255
    x_test = x_test.astype("float32") / 255

    model = build_model(x_train.shape[1:], 10)
    model.summary()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=64, epochs=args.epochs, validation_split=0.1,
              verbose=2)
    loss, acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"Test accuracy: {acc:.4f} (loss {loss:.4f})")

    # what backprop sent to each convolution on one batch (model.backprop fills grads)
    model.backprop(x_train[:64], y_train[:64])
    print("Gradient norm of each convolution kernel (one batch):")
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D):
            print(f"  {layer.name:<18} {np.linalg.norm(layer.grads['kernel']):.4f}")
    return acc


if __name__ == "__main__":
    main()
