"""The seed program: Keras's CIFAR-10 CNN tutorial, run on minicnn with only its imports changed.

Differences from the original, all outside the model code:

- the imports (``from minicnn import ...`` instead of ``from tensorflow.keras import ...``);
- the accuracy plot is written to a PNG (matplotlib's Agg backend) instead of ``plt.show()``;
- command-line options for the data file, the number of epochs and the PNG path, which
  default to the seed recipe (15 epochs, batch 64, validation_split 0.2), and an optional
  ``--seed`` for a repeatable run (the seed program sets none).

Run it::

    python examples/seed_tutorial.py --data ../shared/datasets/cifar-10-python.tar.gz

It prints the model summary (319,178 parameters), one line per epoch, then the test loss
and accuracy and the wall-clock time of training.
"""
from __future__ import annotations

import argparse
import time

import matplotlib

matplotlib.use("Agg")                      # no window: the plot goes to a file
import matplotlib.pyplot as plt  # noqa: E402

from minicnn import datasets, layers, models  # noqa: E402
from minicnn.utils import set_random_seed, to_categorical  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None,
                   help="CIFAR-10 python archive or folder (default: load_data()'s own)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (seed: 15)")
    p.add_argument("--out", default="seed_accuracy.png", help="where to write the accuracy plot")
    p.add_argument("--seed", type=int, default=None,
                   help="seed minicnn's generator (init, shuffling) for a repeatable run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.seed is not None:
        set_random_seed(args.seed)

    # ---- the seed program, imports changed --------------------------------------------
    (x_train, y_train), (x_test, y_test) = datasets.cifar10.load_data(path=args.data)
    x_train, x_test = x_train / 255.0, x_test / 255.0
    y_train = to_categorical(y_train, 10); y_test = to_categorical(y_test, 10)  # noqa: E702
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation='relu', padding='same', input_shape=(32, 32, 3)),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
        layers.MaxPooling2D(2, 2),
        layers.Conv2D(64, (3, 3), activation='relu', padding='same'),
        layers.Flatten(),
        layers.Dense(64, activation='relu'),
        layers.Dense(10, activation='softmax')])
    model.summary()
    model.compile(optimizer='adam', loss='categorical_crossentropy', metrics=['accuracy'])
    t0 = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=64,
                        validation_split=0.2, verbose=2)
    train_seconds = time.perf_counter() - t0
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)

    plt.plot(history.epoch, history.history['accuracy'], label='accuracy')
    plt.plot(history.epoch, history.history['val_accuracy'], label='val_accuracy')
    plt.xlabel('Epoch')
    plt.ylabel('Accuracy')
    plt.legend(loc='lower right')
    # ---- end of the seed program ----------------------------------------------------

    plt.title(f"minicnn seed CNN: test accuracy {test_acc:.4f}")
    plt.savefig(args.out, dpi=100)
    plt.close()
    n_fit = int(len(x_train) * (1 - 0.2))
    print(f"images: {len(x_train)} train ({n_fit} fit, {len(x_train) - n_fit} validation), "
          f"{len(x_test)} test")
    print(f"training time: {train_seconds:.1f} s for {len(history.epoch)} epochs")
    print(f"test loss: {test_loss:.4f} - test accuracy: {test_acc:.4f}")
    print(f"accuracy plot written to {args.out}")
    return test_loss, test_acc


if __name__ == "__main__":
    main()
