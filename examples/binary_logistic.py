"""Binary logistic regression on two spiral arms (the book's chapter): 2 -> 64 -> 1 with ReLU,
a Sigmoid output, binary cross-entropy, L2 regularisation and Adam; prints train and test
accuracy.

    python examples/binary_logistic.py [--epochs 2000] [--seed 0] [--backend auto|numpy|cupy]
"""

from __future__ import annotations

import argparse

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    args = parser.parse_args()

    bg.set_backend(args.backend)
    X, y = spiral_data(samples=100, classes=2, seed=args.seed)
    X_test, y_test = spiral_data(samples=100, classes=2, seed=args.seed + 1)
    y, y_test = y.reshape(-1, 1), y_test.reshape(-1, 1)  # one binary output per sample

    model = bg.Model(
        [
            bg.Dense(
                2,
                64,
                init="he",
                seed=args.seed,
                weight_regularizer_l2=5e-4,
                bias_regularizer_l2=5e-4,
            ),
            bg.ReLU(),
            bg.Dense(64, 1, init="glorot", seed=args.seed + 1),
            bg.Sigmoid(),
        ]
    )
    model.set(
        loss=bg.BinaryCrossEntropy(),
        optimizer=bg.Adam(learning_rate=0.01, decay=5e-7),
        accuracy=bg.BinaryAccuracy(),
    )
    model.finalize()
    model.train(X, y, epochs=args.epochs, print_every=args.epochs // 4 or 1, seed=args.seed)
    train, test = model.evaluate(X, y), model.evaluate(X_test, y_test)
    print(f"train accuracy: {train['accuracy']:.3f}, test accuracy: {test['accuracy']:.3f}")


if __name__ == "__main__":
    main()
