"""Fit one period of a sine (the book's regression chapter): 1 -> 64 -> 64 -> 1 with ReLU and
a Linear output, mean squared error, Adam; prints loss and the share of predictions within
std(y) / 250 of the target.

    python examples/regression_sine.py [--epochs 200] [--seed 0] [--backend auto|numpy|cupy]
"""

from __future__ import annotations

import argparse

import numpy as np

import backprop_gpu as bg
from backprop_gpu.datasets import sine_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    args = parser.parse_args()

    bg.set_backend(args.backend)
    X, y = sine_data(1000)
    model = bg.Model(
        [
            bg.Dense(1, 64, init="he", seed=args.seed),
            bg.ReLU(),
            bg.Dense(64, 64, init="he", seed=args.seed + 1),
            bg.ReLU(),
            bg.Dense(64, 1, init="glorot", seed=args.seed + 2),
            bg.Linear(),
        ]
    )
    model.set(
        loss=bg.MeanSquaredError(),
        optimizer=bg.Adam(learning_rate=0.005, decay=1e-3),
        accuracy=bg.RegressionAccuracy(),
    )
    model.finalize()
    model.train(
        X, y, epochs=args.epochs, batch_size=32, print_every=args.epochs // 5 or 1, seed=args.seed
    )

    X_test = np.linspace(0, 1, 7, dtype=np.float32).reshape(-1, 1)
    predicted = bg.to_numpy(model.predict(X_test))[:, 0]
    result = model.evaluate(X, y)
    print(f"final mse: {result['loss']:.6f}, accuracy: {result['accuracy']:.3f}")
    for x, p in zip(X_test[:, 0], predicted, strict=True):
        print(f"sin(2 pi {x:.3f}) = {np.sin(2 * np.pi * x):+.3f}, predicted {p:+.3f}")


if __name__ == "__main__":
    main()
