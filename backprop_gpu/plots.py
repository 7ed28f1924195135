"""Training curves and decision boundaries as PNG files (the ``plot`` extra: matplotlib).

Uses matplotlib's object API with the Agg canvas, so no display is needed and the caller's
pyplot state is left alone. ``write_all`` raises ImportError when matplotlib is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .backend import to_numpy

SIZE = (6.4, 4.0)  # inches; at 100 dpi: 640 x 400 pixels
DPI = 100


def _figure() -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def curves(path: Path, history: list[dict[str, float]], metric: str) -> Path:
    """``metric`` (``"loss"`` or ``"accuracy"``) per epoch, training and validation."""
    figure = _figure()
    ax = figure.add_subplot()
    epochs = [row["epoch"] for row in history]
    ax.plot(epochs, [row[metric] for row in history], label=f"training {metric}")
    if history and f"val_{metric}" in history[0]:
        ax.plot(epochs, [row[f"val_{metric}"] for row in history], label=f"validation {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    figure.savefig(path)
    return path


def decision_boundary(path: Path, model: Any, X: np.ndarray, y: np.ndarray) -> Path:
    """The predicted class over a grid covering 2-D data, with the data points on top."""
    lo, hi = X.min(axis=0) - 0.1, X.max(axis=0) + 0.1
    xs, ys = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    grid = np.column_stack([xs.ravel(), ys.ravel()]).astype(np.float32)
    classes = to_numpy(model.predict(grid, batch_size=8192)).argmax(axis=1).reshape(xs.shape)
    figure = _figure()
    ax = figure.add_subplot()
    ax.contourf(xs, ys, classes, alpha=0.3, cmap="brg")
    ax.scatter(X[:, 0], X[:, 1], c=y, s=6, cmap="brg")
    ax.set_title("decision boundary")
    figure.tight_layout()
    figure.savefig(path)
    return path


def write_all(
    out: Path, history: list[dict[str, float]], model: Any, X: np.ndarray, y: np.ndarray
) -> list[Path]:
    """loss.png, accuracy.png and (when ``model`` is given) decision_boundary.png in ``out``."""
    written = [curves(out / "loss.png", history, "loss")]
    written.append(curves(out / "accuracy.png", history, "accuracy"))
    if model is not None:
        written.append(decision_boundary(out / "decision_boundary.png", model, X, y))
    return written
