"""Optimizers, used the nnfs way::

    optimizer.pre_update_params()        # learning-rate decay
    for layer in trainable_layers:
        optimizer.update_params(layer)   # one rule applied to each of layer.params
    optimizer.post_update_params()       # iterations += 1

or ``optimizer.step(layers)`` for the same three calls. A trainable layer lists its parameter
names in ``params`` (``("weights", "biases")`` for Dense); the gradient of ``weights`` is
``dweights``. Optimizer state lives on the layer, next to the parameter, as in the book
(``weight_momentums``), created on the parameter's device the first time it is needed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import _checks

_SINGULAR = {"weights": "weight", "biases": "bias"}


def _state_name(param: str, kind: str) -> str:
    """``("weights", "momentums")`` -> ``"weight_momentums"``, the book's attribute names."""
    return f"{_SINGULAR.get(param, param)}_{kind}"


class Optimizer:
    """Base: learning rate with the book's decay, ``lr_t = lr / (1 + decay * iterations)``."""

    def __init__(self, learning_rate: float, decay: float = 0.0) -> None:
        name = type(self).__name__
        self.learning_rate = _checks.positive_finite(learning_rate, f"{name}: learning_rate")
        if not isinstance(decay, int | float) or not decay >= 0 or decay == float("inf"):
            raise ValueError(f"{name}: decay must be a finite number >= 0, got {decay!r}")
        self.decay = float(decay)
        self.current_learning_rate = self.learning_rate
        self.iterations = 0

    def pre_update_params(self) -> None:
        if self.decay:
            self.current_learning_rate = self.learning_rate / (1.0 + self.decay * self.iterations)

    def update_params(self, layer: Any) -> None:
        """Update every parameter of ``layer`` in place from its gradient."""
        for name in layer.params:
            grad = getattr(layer, "d" + name)
            if grad is None:
                raise RuntimeError(
                    f"{type(self).__name__}.update_params: {layer!r} has no d{name}; "
                    "call backward before updating"
                )
            self._update(layer, name, getattr(layer, name), grad)

    def _update(self, layer: Any, name: str, param: Any, grad: Any) -> None:
        raise NotImplementedError  # each optimizer defines its rule

    def post_update_params(self) -> None:
        self.iterations += 1

    def step(self, layers: Iterable[Any]) -> None:
        """``pre_update_params``, ``update_params`` on each layer that has ``params``,
        ``post_update_params``."""
        self.pre_update_params()
        for layer in layers:
            if getattr(layer, "params", ()):
                self.update_params(layer)
        self.post_update_params()


class SGD(Optimizer):
    """Stochastic gradient descent with the book's decay and (optional) momentum.

    Without momentum: ``w -= lr_t * dw``. With momentum: ``v = momentum * v - lr_t * dw;
    w += v`` (``weight_momentums`` holds ``v``), which equals PyTorch's SGD when decay is 0.
    """

    def __init__(self, learning_rate: float = 1.0, decay: float = 0.0, momentum: float = 0.0):
        super().__init__(learning_rate, decay)
        self.momentum = _checks.in_range(momentum, 0.0, 1.0, "SGD: momentum")

    def _update(self, layer: Any, name: str, param: Any, grad: Any) -> None:
        if not self.momentum:
            param -= self.current_learning_rate * grad
            return
        state = _state_name(name, "momentums")
        velocity = getattr(layer, state, None)
        if velocity is None:
            velocity = layer.backend.xp.zeros_like(param)
        velocity = self.momentum * velocity - self.current_learning_rate * grad
        setattr(layer, state, velocity)
        param += velocity

    def __repr__(self) -> str:
        return (
            f"SGD(learning_rate={self.learning_rate}, decay={self.decay}, momentum={self.momentum})"
        )
