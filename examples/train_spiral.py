"""Train the nnfs book's spiral classifier (2 -> 64 -> ReLU -> 3 -> softmax cross-entropy)
with SGD (decay and momentum) on the auto-selected device, printing loss and accuracy.

    python examples/train_spiral.py [--epochs 10001] [--backend auto|numpy|cupy] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10001)
    parser.add_argument("--samples", type=int, default=100, help="points per class")
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--print-every", type=int, default=1000)
    args = parser.parse_args()

    backend = bg.set_backend(args.backend)
    print(f"backend: {backend.name} ({backend.device}) {backend.reason}".rstrip())

    X, y = spiral_data(samples=args.samples, classes=3, seed=args.seed)
    X, y = bg.asarray(X), bg.asarray(y)  # to the device once

    dense1 = bg.Dense(2, 64, seed=args.seed)
    activation1 = bg.ReLU()
    dense2 = bg.Dense(64, 3, seed=args.seed + 1)
    loss_activation = bg.SoftmaxCrossEntropy()
    accuracy = bg.Accuracy()
    optimizer = bg.SGD(learning_rate=1.0, decay=1e-3, momentum=0.9)

    start = time.perf_counter()
    for epoch in range(args.epochs):
        dense1.forward(X)
        activation1.forward(dense1.output)
        dense2.forward(activation1.output)
        loss = loss_activation.forward(dense2.output, y)

        if epoch % args.print_every == 0 or epoch == args.epochs - 1:
            acc = accuracy.calculate(loss_activation.output, y)
            print(
                f"epoch: {epoch:6d}, acc: {float(acc):.3f}, loss: {float(loss):.3f}, "
                f"lr: {optimizer.current_learning_rate:.5f}"
            )

        loss_activation.backward(loss_activation.output, y)
        dense2.backward(loss_activation.dinputs)
        activation1.backward(dense2.dinputs)
        dense1.backward(activation1.dinputs)

        optimizer.step([dense1, dense2])
    print(f"trained {args.epochs} epochs in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
