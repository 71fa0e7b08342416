"""A residual BatchNorm CNN for CIFAR-10, written as a Keras 3 program.

Only the two import lines below make it minicnn's: with ``import keras`` and
``from keras import layers, models, optimizers, callbacks`` the same file runs on Keras
(``benchmarks/resnet_vs_keras.py`` does exactly that and compares the two).

The network: a 3x3 stem, three residual stages of 32/64/128 filters (bias-free
convolutions, each followed by BatchNormalization; 1x1 strided convolutions on the
shortcut where the shape changes), global average pooling, dropout and a softmax
classifier: about 310k parameters. The recipe: random flips and translations, AdamW with
a cosine schedule after a linear warm-up, sparse categorical cross-entropy on ``(N, 1)``
labels, 10% of the training images held out, and the best epoch kept by
``ModelCheckpoint(save_best_only=True, monitor="val_accuracy")``.

Environment: ``CIFAR_NPZ`` (an ``.npz`` with x_train, y_train, x_test, y_test; default:
``keras.datasets.cifar10.load_data()``), ``EPOCHS`` (12), ``SEED`` (0), ``CHECKPOINT``
(``resnet_best.keras``).
"""
import os
import time

import numpy as np

import minicnn as keras
from minicnn import layers, models, optimizers, callbacks

EPOCHS = int(os.environ.get("EPOCHS", 12))
BATCH = 64
CHECKPOINT = os.environ.get("CHECKPOINT", "resnet_best.keras")
keras.utils.set_random_seed(int(os.environ.get("SEED", 0)))

if os.environ.get("CIFAR_NPZ"):
    with np.load(os.environ["CIFAR_NPZ"]) as d:
        (x_train, y_train), (x_test, y_test) = (d["x_train"], d["y_train"]), (d["x_test"],
                                                                              d["y_test"])
else:
    (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
x_train = x_train.astype("float32") / 255.0
x_test = x_test.astype("float32") / 255.0


def conv_bn(x, filters, strides=1, kernel_size=3):
    x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False)(x)
    return layers.BatchNormalization()(x)


def residual_block(x, filters, strides):
    shortcut = x
    y = layers.Activation("relu")(conv_bn(x, filters, strides))
    y = conv_bn(y, filters)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = conv_bn(x, filters, strides, kernel_size=1)
    return layers.ReLU()(layers.Add()([shortcut, y]))


inputs = keras.Input(shape=(32, 32, 3))
x = layers.RandomFlip("horizontal")(inputs)
x = layers.RandomTranslation(0.1, 0.1)(x)
x = layers.Activation("relu")(conv_bn(x, 32))
x = residual_block(x, 32, 1)
x = residual_block(x, 64, 2)
x = residual_block(x, 128, 2)
x = layers.GlobalAveragePooling2D()(x)
x = layers.Dropout(0.2)(x)
outputs = layers.Dense(10, activation="softmax")(x)
model = models.Model(inputs, outputs, name="resnet_cifar")
model.summary()

steps = EPOCHS * int(np.ceil(len(x_train) * 0.9 / BATCH))
schedule = optimizers.schedules.CosineDecay(1e-4, decay_steps=steps - steps // 10,
                                            warmup_target=3e-3, warmup_steps=steps // 10)
model.compile(optimizer=optimizers.AdamW(learning_rate=schedule, weight_decay=5e-4),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
start = time.perf_counter()
history = model.fit(x_train, y_train, batch_size=BATCH, epochs=EPOCHS, validation_split=0.1,
                    verbose=2, callbacks=[callbacks.ModelCheckpoint(
                        CHECKPOINT, monitor="val_accuracy", save_best_only=True)])
train_seconds = time.perf_counter() - start
best = models.load_model(CHECKPOINT)
test_loss, test_acc = best.evaluate(x_test, y_test, verbose=0)
print(f"Training time: {train_seconds:.1f} s ({train_seconds / steps * 1000:.0f} ms/step)")
print(f"Test accuracy (best checkpoint): {test_acc:.4f}")
