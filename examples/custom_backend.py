"""A new backend in one file: NumPy with the Dense + ReLU step done in place.

A backend is a ``Backend`` subclass (which array library, which device) and an ``Ops``
subclass overriding only what it does differently from the plain ``xp`` reference in
``backprop_gpu/backend/ops.py``. ``register_backend`` makes it selectable by name. Here:
NumPy, whose ReLU forward writes into the Dense's fresh product instead of a new array (the
same values, one allocation less), and which counts its calls.

    python examples/custom_backend.py
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

import backprop_gpu as bg
from backprop_gpu.backend import Ops, register_backend
from backprop_gpu.backend.numpy_backend import NumpyBackend
from backprop_gpu.datasets import spiral_data


class InPlaceReluOps(Ops):
    """The reference ops, but ``bias_relu`` works in place."""

    calls = 0

    def bias_relu(self, z: Any, biases: Any) -> Any:
        InPlaceReluOps.calls += 1
        z += biases
        return np.maximum(z, 0, out=z)


class InPlaceReluBackend(NumpyBackend):
    name = "inplace_relu"
    ops_class: ClassVar[type[Ops]] = InPlaceReluOps


register_backend("inplace_relu", InPlaceReluBackend)


def train(backend: str) -> list[dict[str, float]]:
    X, y = spiral_data(100, 3, seed=0)
    with bg.use_backend(backend):
        model = bg.Model([bg.Dense(2, 64, seed=0), bg.ReLU(), bg.Dense(64, 3, seed=1)])
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(1.0, momentum=0.9))
        return model.finalize().train(X, y, epochs=20, batch_size=50, print_every=0, seed=0)


if __name__ == "__main__":
    mine, reference = train("inplace_relu"), train(NumpyBackend(fast_ops=False))
    print(f"inplace_relu: bias_relu ran {InPlaceReluOps.calls} times")
    print(f"final loss {mine[-1]['loss']:.6f}, reference {reference[-1]['loss']:.6f}")
    print("same history as the reference ops:", mine == reference)
