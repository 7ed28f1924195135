"""Layers with parameters. ``Dense`` is the fully connected layer of the nnfs book."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _checks
from .backend import Backend, get_backend, to_numpy

INITS = ("nnfs", "he", "glorot")


class Dense:
    """Fully connected layer: ``output = inputs @ weights + biases``.

    Shapes: ``weights`` (n_inputs, n_neurons), kept "transposed" as in the book so no transpose
    is needed in forward; ``biases`` (1, n_neurons); inputs (batch, n_inputs); output
    (batch, n_neurons).

    Parameters live on the backend active when the layer is built. ``weights=`` / ``biases=``
    set them explicitly (copied; their dtype kept unless ``dtype=`` is given); otherwise weights
    are drawn on the host from ``numpy.random.default_rng(seed)`` (so a seed gives the same
    weights on every backend) and biases start at zero. ``init`` picks the draw: ``"nnfs"``
    (0.01 * normal, as in the book), ``"he"`` (normal * sqrt(2 / n_inputs), for ReLU stacks) or
    ``"glorot"`` (uniform in +-sqrt(6 / (n_inputs + n_neurons))).
    """

    params = ("weights", "biases")  # each has a gradient named "d" + name

    def __init__(
        self,
        n_inputs: int,
        n_neurons: int,
        *,
        weights: Any = None,
        biases: Any = None,
        dtype: Any = None,
        seed: int | np.random.Generator | None = None,
        init: str = "nnfs",
    ) -> None:
        for name, n in (("n_inputs", n_inputs), ("n_neurons", n_neurons)):
            if not isinstance(n, int | np.integer) or isinstance(n, bool) or n < 1:
                raise ValueError(f"Dense: {name} must be a positive integer, got {n!r}")
        if init not in INITS:
            raise ValueError(f"Dense: init must be one of {', '.join(INITS)}, got {init!r}")
        self.n_inputs, self.n_neurons, self.init = int(n_inputs), int(n_neurons), init
        self.backend: Backend = get_backend()
        if dtype is None:
            dtype = to_numpy(weights).dtype if weights is not None else np.float32
        self.dtype_name = np.dtype(dtype).name
        if np.dtype(dtype).kind != "f":
            raise ValueError(f"Dense: dtype must be a floating type, got {self.dtype_name}")
        self.dtype = self.backend.dtype(dtype)
        if weights is None:
            weights = _draw(init, self.n_inputs, self.n_neurons, seed)
        if biases is None:
            biases = np.zeros((1, self.n_neurons))
        self.weights = self._param(weights, (self.n_inputs, self.n_neurons), "weights")
        self.biases = self._param(biases, (1, self.n_neurons), "biases")
        self.inputs: Any = None
        self.output: Any = None
        self.dweights: Any = None
        self.dbiases: Any = None
        self.dinputs: Any = None

    def _param(self, value: Any, shape: tuple[int, int], name: str) -> Any:
        host = to_numpy(value).astype(self.dtype_name)  # a copy: the caller's array is not updated
        if name == "biases" and host.ndim == 1:
            host = host.reshape(1, -1)
        if host.shape != shape:
            raise ValueError(f"Dense: expected {name} of shape {shape}, got {host.shape}")
        return self.backend.asarray(host)

    def forward(self, inputs: Any) -> Any:
        """(batch, n_inputs) -> (batch, n_neurons); also kept as ``self.output``."""
        self.inputs = _checks.batch(
            self.backend, inputs, self.n_inputs, self.dtype, "Dense.forward"
        )
        self.output = self.inputs @ self.weights + self.biases
        return self.output

    def backward(self, dvalues: Any) -> Any:
        """Chain ``dvalues`` (batch, n_neurons), the loss gradient w.r.t. ``output``.

        Sets ``dweights`` = inputs.T @ dvalues, ``dbiases`` = column sums of dvalues and
        ``dinputs`` = dvalues @ weights.T, and returns ``dinputs`` (batch, n_inputs).
        """
        if self.inputs is None:
            raise RuntimeError("Dense.backward called before forward")
        dvalues = _checks.like(self.backend, dvalues, self.output, "Dense.backward", "dvalues")
        self.dweights = self.inputs.T @ dvalues
        self.dbiases = self.backend.xp.sum(dvalues, axis=0, keepdims=True)
        self.dinputs = dvalues @ self.weights.T
        return self.dinputs

    def __repr__(self) -> str:
        return (
            f"Dense({self.n_inputs}, {self.n_neurons}, dtype={self.dtype_name}, "
            f"backend={self.backend.name})"
        )


def _draw(init: str, n_inputs: int, n_neurons: int, seed: Any) -> np.ndarray:
    """Initial weights (n_inputs, n_neurons) drawn on the host in float64."""
    rng = np.random.default_rng(seed)
    if init == "glorot":
        limit = math.sqrt(6.0 / (n_inputs + n_neurons))
        return rng.uniform(-limit, limit, size=(n_inputs, n_neurons))
    scale = 0.01 if init == "nnfs" else math.sqrt(2.0 / n_inputs)
    return scale * rng.standard_normal((n_inputs, n_neurons))
