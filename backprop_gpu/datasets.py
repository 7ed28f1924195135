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
