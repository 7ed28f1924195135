"""Classify scikit-learn's 8x8 handwritten digits with a Model: 64 -> 256 -> 128 -> 10, ReLU,
dropout and L2, Adam, softmax cross-entropy; prints the test accuracy (>= 97% at seed 0).

    pip install '.[data]'
    python examples/train_digits.py [--epochs 60] [--seed 0] [--backend auto|numpy|cupy]
"""

from __future__ import annotations

import argparse
import time

import backprop_gpu as bg
from backprop_gpu.datasets import load_digits


def build(seed: int, precision: str = "float32") -> bg.Model:
    model = bg.Model(
        [
            bg.Dense(64, 256, init="he", seed=seed, weight_regularizer_l2=1e-4),
            bg.ReLU(),
            bg.Dropout(0.2, seed=seed),
            bg.Dense(256, 128, init="he", seed=seed + 1, weight_regularizer_l2=1e-4),
            bg.ReLU(),
            bg.Dropout(0.2, seed=seed + 1),
            bg.Dense(128, 10, init="glorot", seed=seed + 2),
        ],
        precision=precision,
    )
    model.set(
        loss=bg.SoftmaxCrossEntropy(),
        optimizer=bg.Adam(learning_rate=0.001, decay=1e-4),
        accuracy=bg.Accuracy(),
    )
    return model.finalize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    args = parser.parse_args()

    backend = bg.set_backend(args.backend)
    print(f"backend: {backend.name}")
    X_train, y_train, X_test, y_test = load_digits()
    model = build(args.seed)
    start = time.perf_counter()
    model.train(
        X_train,
        y_train,
        epochs=args.epochs,
        batch_size=32,
        validation_data=(X_test, y_test),
        print_every=10,
        seed=args.seed,
    )
    seconds = time.perf_counter() - start
    test = model.evaluate(X_test, y_test)
    print(f"test accuracy: {test['accuracy']:.4f}, test loss: {test['loss']:.4f}")
    print(f"trained {args.epochs} epochs in {seconds:.1f} s")


if __name__ == "__main__":
    main()
