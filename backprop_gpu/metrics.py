"""Accuracy: the share of right answers, for classes, binary outputs and regression.

Each ``calculate(predictions, y_true)`` returns a 0-d device array (``float()`` reads it).
``batch_accuracy`` is the Model's and the trainer's way to it for a batch, which takes the
count a fused softmax cross-entropy kernel made already when there is one.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _checks
from .backend import Backend, get_backend, to_numpy
from .losses import SoftmaxCrossEntropy
from .registry import register


@register
class Accuracy:
    """Share of samples whose predicted class equals the true class.

    ``calculate(predictions, y_true)`` takes class scores or probabilities (N, C) (the argmax
    is the prediction) or predicted class indices (N,), and labels as indices (N,) or one-hot
    (N, C). It returns a 0-d device array; ``float()`` it to read it.
    """

    registry_kind = "accuracy"  # (what the registry files it and its subclasses under)

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
        errors = None
        if self.validate and n_classes is not None:
            n = pred.shape[0]
            y = self._check_labels(self.backend, y_true, n, n_classes, xp.float32, "Accuracy")
            errors = self._check_labels.errors
        else:
            y = _checks.unchecked_labels(self.backend, y_true, "Accuracy")
        if y.ndim == 2:
            y = xp.argmax(y, axis=1)
        if tuple(y.shape) != tuple(pred.shape):
            raise ValueError(
                f"Accuracy expected {pred.shape[0]} labels, got y_true of shape {tuple(y.shape)}"
            )
        # the mean of 0/1 as a float32 count / N: exact, and cheaper than xp.mean on NumPy
        correct = xp.sum(xp.astype(pred == xp.astype(y, pred.dtype), xp.float32))
        if errors is not None:  # device labels with a bad one (checked, read later): NaN
            return _checks.nan_if_bad(self.backend, correct / pred.shape[0], errors)
        return correct / pred.shape[0]

    def check_labels(self) -> None:
        """Wait for the pending checks of device labels and raise ``ValueError`` if any had a
        bad label (as ``Loss.check_labels``)."""
        self._check_labels.raise_if_bad(when=" (checked on the device, read by check_labels)")

    def init(self, y: Any) -> None:
        """Nothing to learn from the targets (the Model calls this before training)."""

    def get_config(self) -> dict[str, Any]:
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register
class BinaryAccuracy(Accuracy):
    """For independent binary outputs (N, outputs) in (0, 1), a Sigmoid's output: the share of
    outputs on the right side of 0.5. Targets are 0/1 of the same shape ((N,) for one output).
    """

    def calculate(self, predictions: Any, y_true: Any) -> Any:
        xp = self.backend.xp
        pred = _checks.floats(self.backend, predictions, "BinaryAccuracy predictions", ndim=2)
        y = _checks.targets(
            self.backend, y_true, pred.shape[0], pred.shape[1], pred.dtype, "BinaryAccuracy"
        )
        return xp.mean(xp.astype((pred > 0.5) == (y > 0.5), xp.float32))


def _std(y: np.ndarray) -> float:
    """``np.std(y)``; for targets larger than one check block (a memory-mapped file, say) two
    float64 passes over blocks of it, so they are never read whole."""
    if y.nbytes <= _checks.CHUNK_BYTES:
        return float(np.std(y))
    blocks = [part for _, part in _checks.host_chunks(y, _checks.CHUNK_BYTES)]  # (views)
    mean = sum(float(np.sum(part, dtype=np.float64)) for part in blocks) / y.size
    squares = 0.0
    for part in blocks:  # (one float64 copy of one block at a time)
        d = part.astype(np.float64).ravel()
        d -= mean
        squares += float(d @ d)
        del d  # (before the next block's copy)
    return math.sqrt(squares / y.size)


@register
class RegressionAccuracy(Accuracy):
    """The share of predictions within ``precision`` of the target. ``precision`` defaults to
    ``std(y) / 250``, learnt from the training targets by ``init(y)``, as in the book."""

    def __init__(self, precision: float | None = None, *, divisor: float = 250.0) -> None:
        super().__init__()
        self.divisor = _checks.positive_finite(divisor, "RegressionAccuracy: divisor")
        self.precision = (
            None
            if precision is None
            else _checks.positive_finite(precision, "RegressionAccuracy: precision")
        )

    def init(self, y: Any, reinit: bool = False) -> None:
        """Set ``precision = std(y) / divisor`` unless already set (or ``reinit``)."""
        if self.precision is None or reinit:
            std = _std(y if isinstance(y, np.ndarray) else to_numpy(y))
            self.precision = std / self.divisor if std > 0 else 1e-7

    def calculate(self, predictions: Any, y_true: Any) -> Any:
        xp = self.backend.xp
        if self.precision is None:
            raise RuntimeError(
                "RegressionAccuracy: no precision yet; pass precision= or call init(y_train)"
            )
        pred = _checks.floats(self.backend, predictions, "RegressionAccuracy predictions", ndim=2)
        y = _checks.targets(
            self.backend, y_true, pred.shape[0], pred.shape[1], pred.dtype, "RegressionAccuracy"
        )
        return xp.mean(xp.astype(xp.abs(pred - y) < self.precision, xp.float32))

    def get_config(self) -> dict[str, Any]:
        return {"precision": self.precision, "divisor": self.divisor}


# --- a batch's accuracy in a pass of the Model ----------------------------------------------


class Hits(NamedTuple):
    """A batch's count of correct predictions on the device, and its rows (the accuracy is
    count / rows, divided when the epoch's values reach the host)."""

    count: Any
    rows: int


def batch_accuracy(accuracy: Any, loss: Any, output: Any, y: Any, *, hits_ok: bool = False) -> Any:
    """``accuracy.calculate(output, y)``, or the same value from the count of hits that a
    fused softmax cross-entropy kernel (C or CUDA) made while computing ``loss`` of
    ``output``. With ``hits_ok``, a device count may come back as ``Hits`` instead, divided
    on the host with the epoch's read (one launch a step less: the same float32 division, so
    the same bits)."""
    if (
        type(accuracy) is Accuracy
        and isinstance(loss, SoftmaxCrossEntropy)
        and loss.correct is not None
        and loss.logits is output
    ):
        correct = loss.correct
        if isinstance(correct, (int, np.integer)):  # counted on the host (the C kernel)
            return np.float32(correct) / output.shape[0]
        if hits_ok:
            return Hits(correct, output.shape[0])
        return correct / output.shape[0]  # a 0-d float32 device count (CUDA): no host sync
    return accuracy.calculate(output, y)
