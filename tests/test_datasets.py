"""The book's toy data sets and the bundled digits."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from backprop_gpu import datasets


def test_vertical_data() -> None:
    X, y = datasets.vertical_data(samples=200, classes=3, seed=1)
    assert X.shape == (600, 2) and X.dtype == np.float32 and y.tolist() == sorted(y.tolist())
    for c in range(3):  # centred at (c / 3, 0.5), spread 0.1
        np.testing.assert_allclose(X[y == c].mean(0), [c / 3, 0.5], atol=0.03)
        np.testing.assert_allclose(X[y == c].std(0), [0.1, 0.1], atol=0.02)
    assert np.array_equal(X, datasets.vertical_data(samples=200, classes=3, seed=1)[0])


def test_sine_data() -> None:
    X, y = datasets.sine_data(1000)
    assert X.shape == y.shape == (1000, 1) and X.dtype == y.dtype == np.float32
    assert X[0, 0] == 0 and X[-1, 0] == pytest.approx(0.999)
    np.testing.assert_allclose(y, np.sin(2 * np.pi * X), atol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: datasets.spiral_data(0),
        lambda: datasets.vertical_data(5, 0),
        lambda: datasets.sine_data(0),
    ],
)
def test_bad_sizes(call: object) -> None:
    with pytest.raises(ValueError, match="must be >= 1"):
        call()  # type: ignore[operator]


def test_load_digits_split_is_fixed_and_stratified() -> None:
    X_train, y_train, X_test, y_test = datasets.load_digits()
    assert X_train.shape == (1438, 64) and X_test.shape == (359, 64)
    assert X_train.dtype == np.float32 and y_train.dtype == np.int64
    assert X_train.min() >= 0 and X_train.max() == 1.0
    counts_train, counts_test = np.bincount(y_train), np.bincount(y_test)
    np.testing.assert_allclose(counts_test / (counts_train + counts_test), 0.2, atol=0.01)
    again = datasets.load_digits()
    assert np.array_equal(again[3], y_test) and np.array_equal(again[2], X_test)
    # no image is in both sets
    train_rows = {row.tobytes() for row in X_train}
    assert sum(row.tobytes() in train_rows for row in X_test) < 5  # a few digits repeat exactly


def test_load_digits_names_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"scikit-learn: install the data extra \(pip install"):
        datasets.load_digits()
