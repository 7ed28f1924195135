"""Derived tolerances for comparing two floating-point evaluations of the same math (CuPy's
cuBLAS against NumPy's BLAS): neither is exact, and they sum in different orders, so they may
differ, but by no more than the standard rounding bounds allow (Higham, *Accuracy and Stability
of Numerical Algorithms*, 2nd ed., section 3.1 and 3.5):

    |fl(A @ B) - A @ B| <= gamma_k |A| @ |B|,   gamma_k = k u / (1 - k u),

for an inner dimension k in any summation order (with or without FMA), u the unit roundoff
(2**-24 for float32, 2**-53 for float64). Two evaluations are each within that of the exact
product, so they differ by at most twice it; an input already known only up to ``d`` adds
``d`` times the other factor. The bounds are computed in float64 from the reference values.
They do not hold for TF32 or other reduced-precision GEMMs (``CUPY_TF32=1``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAFETY = 1.0 + 1e-9  # the bound itself is computed in float64: room for its own rounding


def unit_roundoff(dtype: Any) -> float:
    """u for a floating dtype: half its machine epsilon (2**-24 for float32)."""
    return float(np.finfo(dtype).eps) / 2


def gamma(k: int, dtype: Any) -> float:
    """gamma_k = k u / (1 - k u): the relative error bound of a sum of k rounded terms."""
    ku = k * unit_roundoff(dtype)
    if ku >= 1:
        raise ValueError(f"gamma: k * u must be below 1, got k={k} (k*u={ku})")
    return ku / (1 - ku)


def _abs64(a: Any) -> np.ndarray:
    return np.abs(np.asarray(a, dtype=np.float64))


def matmul_difference(
    a: Any, b: Any, dtype: Any, *, da: Any = 0.0, db: Any = 0.0, bias: Any = None
) -> np.ndarray:
    """Bound on ``|fl1(a1 @ b1 + bias) - fl2(a2 @ b2 + bias)|`` elementwise, for two
    evaluations in ``dtype`` summing in any orders, where ``a1``, ``a2`` are within ``da`` of
    ``a`` (n, k) and ``b1``, ``b2`` within ``db`` of ``b`` (k, m); an optional ``bias`` (1, m)
    counts as one more term of each sum. Returns (n, m) float64."""
    a_hi, b_hi = _abs64(a) + da, _abs64(b) + db
    k = a_hi.shape[-1]
    sizes = a_hi @ b_hi  # >= |a_i||b_i| for both evaluations
    if bias is not None:
        sizes = sizes + _abs64(bias)
        k += 1
    rounding = 2 * gamma(k, dtype) * sizes
    spread = a_hi @ b_hi - _abs64(a) @ _abs64(b)  # >= |a1 b1 - a2 b2| (exact products)
    return np.asarray((rounding + 2 * spread) * SAFETY)


def sum_difference(x: Any, dtype: Any, *, dx: Any = 0.0, axis: int = 0) -> np.ndarray:
    """Bound on ``|fl1(sum(x1)) - fl2(sum(x2))|`` over ``axis`` (keepdims), for ``x1``, ``x2``
    within ``dx`` of ``x``: ``2 gamma_n sum|x| + 2 sum dx``."""
    x_hi = _abs64(x) + dx
    n = x_hi.shape[axis]
    sizes = x_hi.sum(axis=axis, keepdims=True)
    spread = np.broadcast_to(np.asarray(dx, dtype=np.float64), x_hi.shape).sum(
        axis=axis, keepdims=True
    )
    return np.asarray((2 * gamma(n, dtype) * sizes + 2 * spread) * SAFETY)


def softmax_difference(
    probabilities: Any, dlogits: Any, dtype: Any, *, logits: Any = None
) -> np.ndarray:
    """Bound on the difference of two evaluations of ``exp(z - max z) / sum(exp(z - max z))``
    whose logits differ by at most ``dlogits`` (per entry): if every logit of a row moves by
    at most d, each probability is scaled by a factor within exp(+-2d); given the ``logits``,
    each side's rounding of ``z - max z`` adds ``u |z - max z|`` to d; each side rounds its
    exp (within 2 ulp), its sum of the m classes and the division (gamma_{m+2} relative)."""
    p = _abs64(probabilities)
    shift = np.broadcast_to(np.asarray(dlogits, dtype=np.float64), p.shape)
    if logits is not None:
        z = np.asarray(logits, dtype=np.float64)
        shift = shift + 2 * unit_roundoff(dtype) * np.abs(z - z.max(axis=-1, keepdims=True))
    d = np.max(shift, axis=-1, keepdims=True)
    m = p.shape[-1]
    return np.asarray(p * (np.expm1(2 * d) + 2 * gamma(m + 2, dtype)) * SAFETY)


def assert_within(actual: Any, expected: Any, bound: Any, what: str = "values") -> None:
    """Every ``|actual - expected| <= bound``; the message names the worst entry."""
    actual64, expected64, bound64 = np.broadcast_arrays(
        *(np.asarray(x, dtype=np.float64) for x in (actual, expected, bound))
    )
    excess = np.abs(actual64 - expected64) - bound64
    excess[~np.isfinite(excess)] = np.inf  # a NaN anywhere fails too
    if np.any(excess > 0):
        i = np.unravel_index(int(np.argmax(excess)), excess.shape)
        raise AssertionError(
            f"{what}: {int(np.sum(excess > 0))} of {excess.size} entries outside the derived "
            f"rounding bound; worst at {tuple(map(int, i))}: actual {actual64[i]!r}, "
            f"expected {expected64[i]!r}, bound {bound64[i]!r}"
        )
