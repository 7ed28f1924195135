"""Losses. ``forward`` returns the mean loss over the batch as a 0-d device array (call
``float()`` on it to read it: that is a device-to-host sync); ``backward`` sets ``dinputs``,
the gradient of that mean w.r.t. the loss's input.

Labels (``y_true``) are class indices of shape (N,) (or (N, 1)) or one-hot rows (N, C).
"""

from __future__ import annotations

import abc
import functools
from typing import Any

import numpy as np

from . import _checks
from .activations import Softmax
from .backend import Backend, dtype_name, get_backend
from .registry import register

EPS = 1e-7  # the book's clip: predictions are kept in [EPS, 1 - EPS] before the log


def clipped(xp: Any, p: Any) -> Any:
    """``p`` clipped to [EPS, 1 - EPS]; in float16, where 1 - 1e-7 rounds to 1, EPS widens to
    the spacing just below 1 so log(1 - p) stays finite."""
    eps = _clip_eps(dtype_name(p.dtype))
    return xp.clip(p, eps, 1 - eps)


@functools.cache
def _clip_eps(dtype: str) -> float:
    return max(EPS, float(np.finfo(dtype).epsneg))


class Loss(abc.ABC):
    """Base: remembers the backend active when built.

    ``validate=False`` skips the label checks (shape, integer dtype, range), for callers that
    already checked them once for a whole data set. Host labels are checked on the host before
    the copy. Labels already on the device are checked there without a device-to-host read:
    a batch with a bad label gives a NaN loss at once, and ``ValueError`` naming the labels
    comes at the next read (``check_labels()``, a later call of this loss once the answer has
    reached the host, ``bg.to_numpy``, the Model's passes: see ``_checks.LabelChecker``).
    """

    # True when ``backward`` takes the loss's own ``output`` (not its input) as ``dvalues``
    backward_from_output = False
    registry_kind = "loss"  # (what the registry files subclasses under)

    def __init__(self, *, validate: bool = True) -> None:
        self.backend: Backend = get_backend()
        self.validate = validate
        self.dinputs: Any = None
        self._check_labels = _checks.LabelChecker()

    def regularization_loss(self, *layers: Any) -> Any:
        """The layers' summed L1/L2 penalties (``Dense.regularization_loss``), reported apart
        from the data loss, as in the book. 0.0 when no layer is regularised."""
        total: Any = 0.0
        for layer in layers:
            if hasattr(layer, "regularization_loss"):
                total = total + layer.regularization_loss()
        return total

    @abc.abstractmethod
    def forward(self, y_pred: Any, y_true: Any) -> Any:
        """The mean loss over the batch, a 0-d device array."""

    @abc.abstractmethod
    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """Set and return ``dinputs``, the gradient of the mean loss."""

    def get_config(self) -> dict[str, Any]:
        return {}

    def check_labels(self) -> None:
        """Wait for this loss's pending checks of device labels and raise ``ValueError`` if
        any batch had a bad label (a loop can call it once an epoch; nothing to do when every
        label was host data)."""
        self._check_labels.raise_if_bad(when=" (checked on the device, read by check_labels)")

    def _labels(self, y_true: Any, pred: Any, where: str) -> Any:
        n, c = pred.shape
        if self.validate:
            return self._check_labels(self.backend, y_true, n, c, pred.dtype, where)
        self._check_labels.errors = None
        return _checks.unchecked_labels(self.backend, y_true, where)

    def _nan_if_bad_labels(self, loss: Any) -> Any:
        """The loss, NaN when the labels just checked on the device had a bad one."""
        return _checks.nan_if_bad(self.backend, loss, self._check_labels.errors)

    def _onehot(self, y: Any, pred: Any) -> Any:
        """(N, C) one-hot of ``pred``'s dtype from indices (N,), or ``y`` if already one-hot."""
        return self.backend.ops.onehot(y, pred)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register
class CategoricalCrossEntropy(Loss):
    """``-log(p[true class])`` averaged over the batch, ``p`` being probabilities (N, C)
    clipped to [1e-7, 1 - 1e-7] as in the book."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        where = "CategoricalCrossEntropy.forward"
        p = _checks.floats(self.backend, y_pred, where, ndim=2)
        y = self._labels(y_true, p, where)
        return self._nan_if_bad_labels(_mean_cross_entropy(self.backend, p, y))

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """``dvalues`` are the predictions (N, C); dinputs = -onehot / p / N.

        ``p`` is clipped as in forward (the book divides by the raw ``p``), so a probability
        that underflowed to 0 gives a large finite gradient rather than -inf.
        """
        xp = self.backend.xp
        where = "CategoricalCrossEntropy.backward"
        p = _checks.floats(self.backend, dvalues, where, ndim=2)
        onehot = self._onehot(self._labels(y_true, p, where), p)
        self.dinputs = -onehot / clipped(xp, p) / p.shape[0]
        return self.dinputs


@register
class SoftmaxCrossEntropy(Loss):
    """Softmax followed by categorical cross-entropy, with the fused backward of the book:
    the gradient w.r.t. the logits is simply ``(softmax - onehot) / N``.

    ``forward(logits, y_true)`` returns the mean loss and keeps the probabilities in ``output``;
    ``backward(output, y_true)`` sets and returns ``dinputs`` (N, C).
    """

    backward_from_output = True

    def __init__(self, *, validate: bool = True) -> None:
        super().__init__(validate=validate)
        self.activation = Softmax()
        self.activation.backend = self.backend
        self.output: Any = None
        # the number of rows of ``logits`` (the last forward's input) whose largest logit is
        # the true class, when the backend's ops found it on the way (a fused kernel finds
        # the row maxima anyway); None otherwise. The Model reads it for its accuracy.
        self.correct: Any = None
        self.logits: Any = None

    def forward(self, inputs: Any, y_true: Any) -> Any:
        where = "SoftmaxCrossEntropy.forward"
        logits = _checks.floats(self.backend, inputs, where, ndim=2)
        y = self._labels(y_true, logits, where)
        eps = _clip_eps(dtype_name(logits.dtype))
        self.logits = logits
        self.output, loss, self.correct = self.backend.ops.softmax_cross_entropy(logits, y, eps)
        self.activation.inputs, self.activation.output = logits, self.output
        return self._nan_if_bad_labels(loss)

    def forward_backward(self, inputs: Any, y_true: Any) -> Any:
        """``forward`` and then ``backward(self.output, y_true)`` in one pass over the logits
        (what ``Model.train`` runs): returns the mean loss and sets ``output`` and
        ``dinputs``."""
        where = "SoftmaxCrossEntropy.forward"
        logits = _checks.floats(self.backend, inputs, where, ndim=2)
        y = self._labels(y_true, logits, where)
        eps = _clip_eps(dtype_name(logits.dtype))
        self.logits = logits
        ops = self.backend.ops
        self.output, loss, self.correct, self.dinputs = ops.softmax_cross_entropy_forward_backward(
            logits, y, eps
        )
        self.activation.inputs, self.activation.output = logits, self.output
        return self._nan_if_bad_labels(loss)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        where = "SoftmaxCrossEntropy.backward"
        p = _checks.floats(self.backend, dvalues, where, ndim=2)
        y = self._labels(y_true, p, where)
        self.dinputs = self.backend.ops.softmax_cross_entropy_backward(p, y)
        return self.dinputs


def _mean_cross_entropy(backend: Backend, p: Any, y: Any) -> Any:
    """Mean of -log(clipped p of the true class); ``y`` int64 indices (N,) or one-hot (N, C)."""
    return backend.ops.cross_entropy(p, y, _clip_eps(dtype_name(p.dtype)))


CLASS_LOSSES = (CategoricalCrossEntropy, SoftmaxCrossEntropy)  # their targets are class labels


class _RegressionLoss(Loss):
    """Base for losses on real-valued targets shaped like the predictions (N, outputs);
    targets (N,) are accepted for a single output. The loss is the mean over outputs, then
    over samples."""

    def _pair(self, y_pred: Any, y_true: Any, where: str) -> tuple[Any, Any]:
        pred = _checks.floats(self.backend, y_pred, where, ndim=2)
        return pred, _checks.targets(
            self.backend, y_true, pred.shape[0], pred.shape[1], pred.dtype, where
        )


@register
class BinaryCrossEntropy(_RegressionLoss):
    """``-(y log p + (1 - y) log(1 - p))`` for independent binary outputs ``p`` in (0, 1)
    (a Sigmoid's output), p clipped to [1e-7, 1 - 1e-7] as in the book."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        xp = self.backend.xp
        p, y = self._pair(y_pred, y_true, "BinaryCrossEntropy.forward")
        p = clipped(xp, p)
        return xp.mean(-(y * xp.log(p) + (1 - y) * xp.log(1 - p)))

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """dinputs = -(y / p - (1 - y) / (1 - p)) / outputs / N, with ``p`` clipped."""
        xp = self.backend.xp
        p, y = self._pair(dvalues, y_true, "BinaryCrossEntropy.backward")
        p = clipped(xp, p)
        self.dinputs = -(y / p - (1 - y) / (1 - p)) / (p.shape[0] * p.shape[1])
        return self.dinputs


@register
class MeanSquaredError(_RegressionLoss):
    """``mean((y - p) ** 2)``; dinputs = -2 (y - p) / outputs / N."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        p, y = self._pair(y_pred, y_true, "MeanSquaredError.forward")
        return self.backend.xp.mean((y - p) ** 2)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        p, y = self._pair(dvalues, y_true, "MeanSquaredError.backward")
        self.dinputs = -2 * (y - p) / (p.shape[0] * p.shape[1])
        return self.dinputs


@register
class MeanAbsoluteError(_RegressionLoss):
    """``mean(|y - p|)``; dinputs = sign(p - y) / outputs / N.

    (The book prints ``sign(y - p)``, the gradient's negative; finite differences agree with
    ``sign(p - y)``.)"""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        p, y = self._pair(y_pred, y_true, "MeanAbsoluteError.forward")
        return self.backend.xp.mean(self.backend.xp.abs(y - p))

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        p, y = self._pair(dvalues, y_true, "MeanAbsoluteError.backward")
        self.dinputs = self.backend.xp.sign(p - y) / (p.shape[0] * p.shape[1])
        return self.dinputs
