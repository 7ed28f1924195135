"""Losses. ``forward`` returns the mean loss over the batch as a 0-d device array (call
``float()`` on it to read it: that is a device-to-host sync); ``backward`` sets ``dinputs``,
the gradient of that mean w.r.t. the loss's input.

Labels (``y_true``) are class indices of shape (N,) (or (N, 1)) or one-hot rows (N, C).
"""

from __future__ import annotations

from typing import Any

from . import _checks
from .activations import Softmax
from .backend import Backend, get_backend

EPS = 1e-7  # the book's clip: predictions are kept in [EPS, 1 - EPS] before the log


class Loss:
    """Base: remembers the backend active when built.

    ``validate=False`` skips the label checks (shape, integer dtype, range), for callers that
    already checked them once for a whole data set. Host labels are checked on the host before
    the copy; labels already on a GPU cost one device-to-host sync the first time a given
    array is seen (the same array passed again is not checked again).
    """

    # True when ``backward`` takes the loss's own ``output`` (not its input) as ``dvalues``
    backward_from_output = False

    def __init__(self, *, validate: bool = True) -> None:
        self.backend: Backend = get_backend()
        self.validate = validate
        self.dinputs: Any = None
        self._check_labels = _checks.LabelChecker()

    def _labels(self, y_true: Any, pred: Any, where: str) -> Any:
        n, c = pred.shape
        if self.validate:
            return self._check_labels(self.backend, y_true, n, c, pred.dtype, where)
        y = self.backend.asarray(y_true)
        return self.backend.xp.reshape(y, (n,)) if y.ndim == 2 and y.shape[1] == 1 else y

    def _onehot(self, y: Any, pred: Any) -> Any:
        """(N, C) one-hot of ``pred``'s dtype from indices (N,), or ``y`` if already one-hot."""
        xp = self.backend.xp
        if y.ndim == 2:
            return y if y.dtype == pred.dtype else xp.astype(y, pred.dtype)
        classes = self.backend.arange(pred.shape[1])
        return xp.astype(y[:, None] == classes[None, :], pred.dtype)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CategoricalCrossEntropy(Loss):
    """``-log(p[true class])`` averaged over the batch, ``p`` being probabilities (N, C)
    clipped to [1e-7, 1 - 1e-7] as in the book."""

    def forward(self, y_pred: Any, y_true: Any) -> Any:
        where = "CategoricalCrossEntropy.forward"
        p = _checks.floats(self.backend, y_pred, where, ndim=2)
        return _mean_cross_entropy(self.backend.xp, p, self._labels(y_true, p, where))

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        """``dvalues`` are the predictions (N, C); dinputs = -onehot / p / N.

        ``p`` is clipped as in forward (the book divides by the raw ``p``), so a probability
        that underflowed to 0 gives a large finite gradient rather than -inf.
        """
        xp = self.backend.xp
        where = "CategoricalCrossEntropy.backward"
        p = _checks.floats(self.backend, dvalues, where, ndim=2)
        onehot = self._onehot(self._labels(y_true, p, where), p)
        self.dinputs = -onehot / xp.clip(p, EPS, 1 - EPS) / p.shape[0]
        return self.dinputs


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

    def forward(self, inputs: Any, y_true: Any) -> Any:
        where = "SoftmaxCrossEntropy.forward"
        logits = _checks.floats(self.backend, inputs, where, ndim=2)
        y = self._labels(y_true, logits, where)
        self.output = self.activation.forward(logits)
        return _mean_cross_entropy(self.backend.xp, self.output, y)

    def backward(self, dvalues: Any, y_true: Any) -> Any:
        where = "SoftmaxCrossEntropy.backward"
        p = _checks.floats(self.backend, dvalues, where, ndim=2)
        onehot = self._onehot(self._labels(y_true, p, where), p)
        self.dinputs = (p - onehot) / p.shape[0]
        return self.dinputs


def _mean_cross_entropy(xp: Any, p: Any, y: Any) -> Any:
    """Mean of -log(clipped p of the true class); ``y`` int64 indices (N,) or one-hot (N, C)."""
    p = xp.clip(p, EPS, 1 - EPS)
    if y.ndim == 1:
        correct = xp.take_along_axis(p, y[:, None], axis=1)[:, 0]
    else:
        correct = xp.sum(p * y, axis=1)
    return xp.mean(-xp.log(correct))
