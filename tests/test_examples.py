"""The examples run as scripts and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run(name: str, *args: str) -> str:
    env = os.environ | {"BACKPROP_GPU_BACKEND": "auto"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_seed_single_neuron_prints_the_seed_numbers() -> None:
    out = run("seed_single_neuron.py")
    assert "d/dz relu = 1.0" in out
    assert "-3.0 1.0 -1.0 -2.0 2.0 3.0" in out.splitlines()


def test_seed_layer_backprop_prints_the_seed_numbers() -> None:
    from .test_seeds import DBIASES, DINPUTS, DWEIGHTS, NEW_BIASES, NEW_WEIGHTS

    out = run("seed_layer_backprop.py")
    for printed in (DINPUTS, DWEIGHTS, DBIASES, NEW_WEIGHTS, NEW_BIASES):
        assert printed in out


def test_train_spiral_learns() -> None:
    out = run("train_spiral.py", "--epochs", "2001", "--print-every", "500")
    assert re.search(r"^backend: (numpy|cupy)", out)
    last = re.findall(r"acc: ([\d.]+), loss: ([\d.]+)", out)[-1]
    assert float(last[0]) > 0.85 and float(last[1]) < 0.35, out


def test_train_digits_reaches_97_percent() -> None:
    out = run("train_digits.py")
    accuracy = float(re.search(r"test accuracy: ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert accuracy >= 0.97, out  # measured 0.9749 at seed 0, in about 2 s


def test_regression_sine_fits() -> None:
    out = run("regression_sine.py")
    mse = float(re.search(r"final mse: ([\d.]+)", out).group(1))  # type: ignore[union-attr]
    assert mse < 1e-3, out  # measured 9.7e-05


def test_binary_logistic_separates_the_arms() -> None:
    out = run("binary_logistic.py")
    train, test = map(
        float, re.search(r"train accuracy: ([\d.]+), test accuracy: ([\d.]+)", out).groups()
    )  # type: ignore[union-attr]
    assert train > 0.9 and test > 0.85, out  # measured 0.975 and 0.95


def test_custom_backend_is_one_file_and_trains_as_the_reference() -> None:
    out = run("custom_backend.py")
    assert "bias_relu ran 120 times" in out  # 20 epochs of 6 steps: its override ran
    assert "same history as the reference ops: True" in out


def test_register_backend_refuses_names_it_cannot_take() -> None:
    import pytest

    import backprop_gpu as bg
    from backprop_gpu.backend import register_backend

    for name in ("auto", "cupy", "cupy:1", "no spaces"):
        with pytest.raises(ValueError, match="cannot name a backend"):
            register_backend(name, bg.backend.numpy_backend.NumpyBackend)
    with pytest.raises(ValueError, match=r"unknown backend 'mine'.*array_api_strict"):
        bg.set_backend("mine")


def test_custom_layer_checks_trains_saves_and_loads_in_a_new_process() -> None:
    out = run("custom_layer.py")
    for backend in ("numpy", "array_api_strict"):  # (and cupy, where a GPU works)
        error = re.search(rf"gradient check on {backend}: max error ([\d.e+-]+)", out)
        assert error is not None and float(error.group(1)) < 1e-8, out  # measured 6.6e-10
    train, test = map(
        float, re.search(r"train accuracy ([\d.]+), test accuracy ([\d.]+)", out).groups()
    )  # type: ignore[union-attr]
    assert train > 0.85 and test > 0.8, out  # measured 0.910 and 0.867
    assert "loaded in a new process: LeakyReLU(alpha=0.1)" in out
    assert "same predictions in the new process: True" in out
