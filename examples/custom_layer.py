"""A layer of your own, first class: LeakyReLU(alpha) on ``bg.Layer``.

Writes the layer (forward, backward, nothing else), gradient-checks it against float64 finite
differences on every backend this machine has, trains a small spiral classifier with it,
saves the model, and loads it again in a new Python process (this script, run with
``--predict``), which gives the same predictions.

    python examples/custom_layer.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data
from backprop_gpu.testing import check_layer


@bg.register  # so Model.load finds "LeakyReLU" (this module must be imported before loading)
class LeakyReLU(bg.Layer):
    """``x`` where x > 0, else ``alpha * x``; the gradient is 1 or ``alpha``."""

    def __init__(self, alpha: float = 0.01) -> None:
        super().__init__()  # self.backend: the backend active now
        self.alpha = float(alpha)  # get_config() reads it from here: {"alpha": ...}

    def forward(self, inputs: Any, training: bool = True) -> Any:
        xp = self.backend.xp  # NumPy, CuPy or array-api-strict: inputs are its arrays
        self.inputs = inputs
        self.output = xp.where(inputs > 0, inputs, self.alpha * inputs)
        return self.output

    def backward(self, dvalues: Any) -> Any:
        xp = self.backend.xp
        self.dinputs = xp.where(self.inputs > 0, dvalues, self.alpha * dvalues)
        return self.dinputs


def available_backends() -> list[str]:
    """The backends this machine can run: numpy, the GPU stand-in, and cupy with a GPU."""
    names = []
    for name in ("numpy", "array_api_strict", "cupy"):
        try:
            with bg.use_backend(name):
                names.append(name)
        except bg.BackendUnavailableError:
            pass
    return names


def gradient_check() -> None:
    x = np.random.default_rng(0).standard_normal((6, 5))
    x[np.abs(x) < 1e-3] = 0.5  # finite differences across the kink at 0 would disagree
    for name in available_backends():
        with bg.use_backend(name):
            errors = check_layer(LeakyReLU(alpha=0.1), x)
        print(f"gradient check on {name}: max error {errors['dinputs']:.1e}")


def train(X_test: np.ndarray, y_test: np.ndarray) -> bg.Model:
    X, y = spiral_data(100, 3, seed=0)
    model = bg.Model(
        [bg.Dense(2, 64, init="he", seed=0), LeakyReLU(alpha=0.1), bg.Dense(64, 3, seed=1)]
    )
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(0.02, decay=1e-4))
    history = model.finalize().train(X, y, epochs=1000, batch_size=50, print_every=0, seed=0)
    test = model.evaluate(X_test, y_test)
    print(
        f"trained: loss {history[-1]['loss']:.3f}, train accuracy "
        f"{history[-1]['accuracy']:.3f}, test accuracy {test['accuracy']:.3f}"
    )
    return model


def predict_in_this_process(model_path: str, inputs_path: str, output_path: str) -> None:
    """What the new process does: load the model (LeakyReLU is registered above, since this
    file was imported) and save its predictions."""
    model = bg.Model.load(model_path)
    np.save(output_path, bg.to_numpy(model.predict(np.load(inputs_path))))
    print(f"loaded in a new process: {model.layers[1]!r}")


def main() -> None:
    gradient_check()
    X_test, y_test = spiral_data(50, 3, seed=1)
    model = train(X_test, y_test)
    with tempfile.TemporaryDirectory() as tmp:
        paths = [str(Path(tmp) / name) for name in ("model.npz", "X.npy", "predictions.npy")]
        model.save(paths[0])
        np.save(paths[1], X_test)
        child = subprocess.run(
            [sys.executable, __file__, "--predict", *paths], capture_output=True, text=True
        )
        if child.returncode != 0:
            sys.exit(f"the new process failed:\n{child.stderr}")
        print(child.stdout, end="")
        loaded = np.load(paths[2])
    mine = bg.to_numpy(model.predict(X_test))
    print(f"same predictions in the new process: {np.array_equal(mine, loaded)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--predict", nargs=3, metavar=("MODEL", "INPUTS", "OUTPUT"))
    args = parser.parse_args()
    if args.predict:
        predict_in_this_process(*args.predict)
    else:
        main()
