"""Toy data sets from the nnfs book, generated on the host (NumPy) from a seed."""

from __future__ import annotations

import numpy as np


def spiral_data(
    samples: int = 100, classes: int = 3, *, seed: int | None = 0, noise: float = 0.2
) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` interleaved spiral arms of ``samples`` points each, as in the book.

    Returns ``X`` float32 (samples * classes, 2) and ``y`` int64 (samples * classes,) holding
    the arm (class) of each point. The angle of each point gets Gaussian noise of std ``noise``.
    """
    if samples < 1 or classes < 1:
        raise ValueError(f"spiral_data: samples and classes must be >= 1, got {samples}, {classes}")
    rng = np.random.default_rng(seed)
    X = np.zeros((samples * classes, 2))
    y = np.zeros(samples * classes, dtype=np.int64)
    for c in range(classes):
        ix = slice(samples * c, samples * (c + 1))
        r = np.linspace(0.0, 1.0, samples)  # radius grows along the arm
        t = np.linspace(c * 4, (c + 1) * 4, samples) + rng.standard_normal(samples) * noise
        X[ix] = np.column_stack([r * np.sin(t * 2.5), r * np.cos(t * 2.5)])
        y[ix] = c
    return X.astype(np.float32), y


def vertical_data(
    samples: int = 100, classes: int = 3, *, seed: int | None = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` vertical clusters of ``samples`` points each, as in the book: class ``c``
    is centred at x = c / 3, y = 0.5, with Gaussian spread 0.1. Returns X float32
    (samples * classes, 2) and y int64 (samples * classes,)."""
    if samples < 1 or classes < 1:
        raise ValueError(
            f"vertical_data: samples and classes must be >= 1, got {samples}, {classes}"
        )
    rng = np.random.default_rng(seed)
    X = np.zeros((samples * classes, 2))
    y = np.repeat(np.arange(classes, dtype=np.int64), samples)
    for c in range(classes):
        ix = slice(samples * c, samples * (c + 1))
        X[ix, 0] = rng.standard_normal(samples) * 0.1 + c / 3
        X[ix, 1] = rng.standard_normal(samples) * 0.1 + 0.5
    return X.astype(np.float32), y


def sine_data(samples: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """One period of a sine, as in the book: X = i / samples for i < samples, y = sin(2 pi X).
    Both float32 of shape (samples, 1)."""
    if samples < 1:
        raise ValueError(f"sine_data: samples must be >= 1, got {samples}")
    X = np.arange(samples, dtype=np.float64).reshape(-1, 1) / samples
    return X.astype(np.float32), np.sin(2 * np.pi * X).astype(np.float32)


def load_digits(
    test_fraction: float = 0.2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The 8x8 handwritten digits bundled with scikit-learn (1797 images, 10 classes), split
    into train and test sets by a fixed stratified shuffle (the same split every call).

    Returns ``X_train, y_train, X_test, y_test``: X float32 (n, 64) scaled to [0, 1], y int64.
    Needs the ``data`` extra (``pip install '.[data]'``), which brings scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise ImportError(
            "load_digits needs scikit-learn: install the data extra (pip install '.[data]' in a "
            "checkout of backprop_gpu, or pip install scikit-learn)"
        ) from e
    if not 0 < test_fraction < 1:
        raise ValueError(f"load_digits: test_fraction must be in (0, 1), got {test_fraction}")
    digits = sklearn_digits()
    X = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    rng = np.random.default_rng(0)  # fixed: the split is part of the data set
    test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):  # stratified: each class split in the same proportion
        members = rng.permutation(np.flatnonzero(y == c))
        test[members[: round(len(members) * test_fraction)]] = True
    return X[~test], y[~test], X[test], y[test]
