"""Accuracy for class predictions."""

from __future__ import annotations

from typing import Any

from . import _checks
from .backend import Backend, get_backend


class Accuracy:
    """Share of samples whose predicted class equals the true class.

    ``calculate(predictions, y_true)`` takes class scores or probabilities (N, C) (the argmax
    is the prediction) or predicted class indices (N,), and labels as indices (N,) or one-hot
    (N, C). It returns a 0-d device array; ``float()`` it to read it.
    """

    def __init__(self, *, validate: bool = True) -> None:
        self.backend: Backend = get_backend()
        self.validate = validate
        self._check_labels = _checks.LabelChecker()

    def calculate(self, predictions: Any, y_true: Any) -> Any:
        xp = self.backend.xp
        pred = self.backend.asarray(predictions, what="Accuracy predictions")
        if pred.ndim == 2:
            n_classes = pred.shape[1]
            pred = xp.argmax(pred, axis=1)
        elif pred.ndim == 1:
            n_classes = None
        else:
            raise ValueError(
                f"Accuracy expected predictions of shape (N, C) or (N,), got {tuple(pred.shape)}"
            )
        if self.validate and n_classes is not None:
            n = pred.shape[0]
            y = self._check_labels(self.backend, y_true, n, n_classes, xp.float32, "Accuracy")
        else:
            y = self.backend.asarray(y_true, what="Accuracy y_true")
            if y.ndim == 2 and y.shape[1] == 1:
                y = xp.reshape(y, (-1,))
        if y.ndim == 2:
            y = xp.argmax(y, axis=1)
        if tuple(y.shape) != tuple(pred.shape):
            raise ValueError(
                f"Accuracy expected {pred.shape[0]} labels, got y_true of shape {tuple(y.shape)}"
            )
        return xp.mean(xp.astype(pred == xp.astype(y, pred.dtype), xp.float32))

    def __repr__(self) -> str:
        return "Accuracy()"
