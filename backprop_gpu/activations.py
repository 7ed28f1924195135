"""Activation functions: layers (``bg.Layer``) with no parameters, a forward and a backward
each."""

from __future__ import annotations

from typing import Any

from . import _checks
from .layer import Layer
from .registry import register


class Activation(Layer):
    """Base of the activations: a ``Layer`` without parameters or settings (``get_config``
    is ``{}``), with the check every ``backward`` starts with."""

    def _dvalues(self, dvalues: Any) -> Any:
        if self.output is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        where = f"{type(self).__name__}.backward"
        return _checks.like(self.backend, dvalues, self.output, where, "dvalues")


@register
class ReLU(Activation):
    """``max(0, x)`` elementwise; the gradient passes where the input was positive."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.inputs = _checks.floats(self.backend, inputs, "ReLU.forward")
        self.output = self.backend.ops.relu(self.inputs)
        return self.output

    def backward(self, dvalues: Any) -> Any:
        dvalues = self._dvalues(dvalues)
        # (the mask from the output: max(x, 0) > 0 exactly where x > 0, NaN included)
        self.dinputs = self.backend.ops.relu_backward(dvalues, self.output)
        return self.dinputs


@register
class Softmax(Activation):
    """Row-wise softmax of (batch, classes) logits, shifted by the row maximum so exp never
    overflows (logits of +-1e4 stay finite)."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.inputs = _checks.floats(self.backend, inputs, "Softmax.forward", ndim=2)
        self.output = self.backend.ops.softmax(self.inputs)
        return self.output

    def backward(self, dvalues: Any) -> Any:
        # Jacobian-vector product row by row: J = diag(s) - s s^T, so
        # dinputs = s * (dvalues - sum(dvalues * s)), without building the (C, C) Jacobians.
        dvalues = self._dvalues(dvalues)
        s = self.output
        self.dinputs = s * (dvalues - self.backend.xp.sum(dvalues * s, axis=1, keepdims=True))
        return self.dinputs


@register
class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``, computed from ``exp(-|x|)`` so it never overflows; the gradient
    is ``s * (1 - s)``. For binary outputs (N, outputs) with BinaryCrossEntropy."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        xp = self.backend.xp
        self.inputs = _checks.floats(self.backend, inputs, "Sigmoid.forward")
        e = xp.exp(-xp.abs(self.inputs))  # in (0, 1]
        self.output = xp.where(self.inputs >= 0, 1 / (1 + e), e / (1 + e))
        return self.output

    def backward(self, dvalues: Any) -> Any:
        dvalues = self._dvalues(dvalues)
        self.dinputs = dvalues * (1 - self.output) * self.output
        return self.dinputs


@register
class Linear(Activation):
    """The identity, ``y = x``: the output activation for regression."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.inputs = _checks.floats(self.backend, inputs, "Linear.forward")
        self.output = self.inputs
        return self.output

    def backward(self, dvalues: Any) -> Any:
        self.dinputs = self._dvalues(dvalues)
        return self.dinputs
