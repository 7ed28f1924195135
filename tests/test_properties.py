"""Property tests: every backward equals float64 central finite differences, over random
shapes (batch 1 included), seeds and values, on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backprop_gpu as bg
from backprop_gpu.testing import check_layer, check_loss

from .conftest import BACKENDS

SHAPES = st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 4))  # batch, in, out
SEEDS = st.integers(0, 2**32 - 1)
PROPERTY = settings(max_examples=15, deadline=None)


def _inputs(seed: int, shape: tuple[int, int]) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal(shape)
    x[np.abs(x) < 1e-3] = 0.5  # away from ReLU's kink
    return x


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(shape=SHAPES, seed=SEEDS)
def test_dense_and_activations(name: str, shape: tuple[int, int, int], seed: int) -> None:
    batch, n_in, n_out = shape
    with bg.use_backend(name):
        dense = bg.Dense(n_in, n_out, dtype="float64", seed=seed, init="he")
        check_layer(dense, _inputs(seed, (batch, n_in)), seed=seed)
        for activation in (bg.ReLU(), bg.Softmax()):
            check_layer(activation, _inputs(seed + 1, (batch, n_out)), seed=seed)


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(batch=st.integers(1, 5), classes=st.integers(2, 4), seed=SEEDS, onehot=st.booleans())
def test_cross_entropy_losses(name: str, batch: int, classes: int, seed: int, onehot: bool) -> None:
    # at least 2 classes: with one, p = 1 sits on the clip boundary where f is not smooth
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, batch)
    labels = np.eye(classes)[y] if onehot else y
    with bg.use_backend(name):
        check_loss(bg.SoftmaxCrossEntropy(), rng.standard_normal((batch, classes)) * 3, labels)
        p = rng.uniform(0.05, 1.0, (batch, classes))
        check_loss(bg.CategoricalCrossEntropy(), p / p.sum(1, keepdims=True), labels)
