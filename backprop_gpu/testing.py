"""Finite-difference gradient checks, for this library's tests and for your own layers.

A layer passes when its ``backward`` agrees with float64 central differences
``(f(x + eps) - f(x - eps)) / (2 eps)`` of a scalar built from its ``forward``. Build the layer
with float64 parameters (``Dense(..., dtype="float64")``): float32 is too coarse for this.
Works on every backend: values are perturbed on the host in float64 and copied to the layer's
device (``layer.backend``) before each ``forward`` and ``backward``, so the layer sees arrays
of its own backend, as in a Model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .backend import dtype_name, to_numpy


def numerical_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-6
) -> np.ndarray:
    """Central-difference gradient of scalar ``f`` at host array ``x`` (same shape as ``x``)."""
    x = np.array(x, dtype=np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        saved = x[i]
        x[i] = saved + eps
        up = f(x.copy())
        x[i] = saved - eps
        down = f(x.copy())
        x[i] = saved
        grad[i] = (up - down) / (2 * eps)
    return grad


def assert_gradient_close(
    analytic: Any,
    numeric: np.ndarray,
    name: str,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> float:
    """Raise ``AssertionError`` naming ``name`` unless the two gradients agree; return the
    largest absolute difference."""
    analytic = to_numpy(analytic)
    if analytic.shape != numeric.shape:
        raise AssertionError(f"{name}: analytic shape {analytic.shape} != {numeric.shape}")
    err = np.abs(analytic - numeric)
    if not np.all(err <= atol + rtol * np.abs(numeric)):
        i = np.unravel_index(np.argmax(err - rtol * np.abs(numeric)), err.shape)
        where = tuple(int(k) for k in i)  # (plain ints and floats: no NumPy reprs)
        raise AssertionError(
            f"{name}: backward disagrees with finite differences at index {where}: "
            f"analytic {float(analytic[i])!r}, numeric {float(numeric[i])!r} "
            f"(max abs error {err.max():.3g})"
        )
    return float(err.max())


def check_layer(
    layer: Any,
    inputs: Any,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    seed: int = 0,
) -> dict[str, float]:
    """Check ``layer.backward`` for its inputs and each parameter in ``layer.params``.

    The scalar is ``L = sum(forward(inputs) * R)`` for a fixed random ``R``, so
    ``dL/doutput = R`` is what backward receives. Returns the largest absolute error per
    gradient (``{"dinputs": ..., "dweights": ...}``) and raises ``AssertionError`` on a mismatch.
    The layer's parameters are left as they were. ``inputs`` may be host data or an array of
    the layer's backend; the layer gets float64 arrays of its backend (never host arrays).
    """
    backend = layer.backend
    f64 = backend.dtype("float64")
    for p in _params(layer):
        if dtype_name(getattr(layer, p).dtype) != "float64":
            raise TypeError(
                f"check_layer: {layer!r} {p} are {dtype_name(getattr(layer, p).dtype)}; finite "
                "differences need float64 parameters (build it with dtype='float64'; a layer of "
                "your own: give its constructor a dtype for its parameters)"
            )
    x = np.array(to_numpy(inputs), dtype=np.float64)

    def forward(v: np.ndarray) -> np.ndarray:
        return to_numpy(layer.forward(backend.asarray(v, f64, what="check_layer inputs")))

    r = np.random.default_rng(seed).standard_normal(forward(x).shape)

    def total(v: np.ndarray) -> float:
        return float(np.sum(forward(v) * r))

    layer.forward(backend.asarray(x, f64))
    layer.backward(backend.asarray(r, f64))
    analytic = {
        g: to_numpy(getattr(layer, g)) for g in ["dinputs"] + ["d" + p for p in _params(layer)]
    }
    numeric = {"dinputs": numerical_gradient(total, x, eps)}
    for p in _params(layer):
        original = getattr(layer, p)

        def with_param(v: np.ndarray, p: str = p, original: Any = original) -> float:
            setattr(layer, p, backend.asarray(v, original.dtype))
            return total(x)

        try:
            numeric["d" + p] = numerical_gradient(with_param, to_numpy(original), eps)
        finally:
            setattr(layer, p, original)
    return {g: assert_gradient_close(analytic[g], numeric[g], g, rtol, atol) for g in analytic}


def check_loss(
    loss: Any,
    inputs: Any,
    y_true: Any,
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-7,
) -> float:
    """Check ``loss.backward`` against finite differences of the mean loss ``loss.forward``.

    ``backward`` gets the loss's ``output`` when ``loss.backward_from_output`` is true (the
    fused softmax cross-entropy), else the inputs. Returns the largest absolute error.
    """
    x = np.array(to_numpy(inputs), dtype=np.float64)
    loss.forward(x, y_true)
    loss.backward(loss.output if loss.backward_from_output else x, y_true)
    numeric = numerical_gradient(lambda v: float(loss.forward(v, y_true)), x, eps)
    return assert_gradient_close(loss.dinputs, numeric, "dinputs", rtol, atol)


def _params(layer: Any) -> tuple[str, ...]:
    return tuple(getattr(layer, "params", ()))
