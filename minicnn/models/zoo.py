"""Ready-made models: the seed tutorial CNN and the residual BatchNorm CNN for CIFAR.

Each builder takes the framework's modules, so the same function builds the same network
in minicnn (the default) and in Keras 3 (``resnet_cifar(keras=keras_module)``): that is
how the benchmarks compare the two on one architecture.
"""
from __future__ import annotations


def _modules(keras):
    if keras is None:
        import minicnn as keras
    return keras, keras.layers


def seed_cnn(input_shape=(32, 32, 3), num_classes=10, keras=None):
    """The Keras CIFAR-10 tutorial CNN (319,178 parameters for CIFAR-10)."""
    keras, layers = _modules(keras)
    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(64, (3, 3), activation="relu", padding="same"),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
        layers.Dense(num_classes, activation="softmax")], name="seed_cnn")


def resnet_cifar(input_shape=(32, 32, 3), num_classes=10, widths=(32, 64, 128), augment=True,
                 dropout=0.2, keras=None):
    """A small residual CNN: a 3x3 stem, one residual block per stage of ``widths`` filters
    (the later stages at stride 2), global average pooling, dropout, softmax.

    Bias-free convolutions each followed by BatchNormalization; a 1x1 strided convolution
    (+ BatchNormalization) on the shortcut where the shape changes. With the default widths
    and CIFAR-10: 309,994 parameters, 1,344 of them non-trainable (the moving statistics).
    ``augment`` puts RandomFlip('horizontal') and RandomTranslation(0.1, 0.1) first.
    """
    keras, layers = _modules(keras)

    def conv_bn(x, filters, strides=1, kernel_size=3):
        x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same",
                          use_bias=False)(x)
        return layers.BatchNormalization()(x)

    def block(x, filters, strides):
        shortcut = x
        y = layers.Activation("relu")(conv_bn(x, filters, strides))
        y = conv_bn(y, filters)
        if strides != 1 or x.shape[-1] != filters:
            shortcut = conv_bn(x, filters, strides, kernel_size=1)
        return layers.ReLU()(layers.Add()([shortcut, y]))

    inputs = keras.Input(shape=input_shape)
    x = inputs
    if augment:
        x = layers.RandomTranslation(0.1, 0.1)(layers.RandomFlip("horizontal")(x))
    x = layers.Activation("relu")(conv_bn(x, widths[0]))
    for i, w in enumerate(widths):
        x = block(x, w, 1 if i == 0 else 2)
    x = layers.GlobalAveragePooling2D()(x)
    if dropout:
        x = layers.Dropout(dropout)(x)
    outputs = layers.Dense(num_classes, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="resnet_cifar")


MODELS = {"seed": seed_cnn, "resnet": resnet_cifar}
