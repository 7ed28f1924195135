"""The derived rounding bounds of tests/tolerances.py: real float32 evaluations in different
orders fit them, and an error ten times the one they allow (or TF32's) does not."""

from __future__ import annotations

import numpy as np
import pytest

from .tolerances import (
    assert_within,
    gamma,
    matmul_difference,
    softmax_difference,
    sum_difference,
    unit_roundoff,
)

RNG = np.random.default_rng(7)
A = RNG.standard_normal((48, 700)).astype(np.float32)
B = RNG.standard_normal((700, 24)).astype(np.float32)
BIAS = RNG.standard_normal((1, 24)).astype(np.float32)


def reversed_order(a: np.ndarray, b: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """a @ b + bias in float32, one rounded rank-1 update at a time, last k first (not BLAS's
    blocked order)."""
    out = np.zeros((a.shape[0], b.shape[1]), np.float32)
    for k in reversed(range(a.shape[1])):
        out += a[:, k : k + 1] * b[k : k + 1]
    return out + bias


def test_unit_roundoff_and_gamma() -> None:
    assert unit_roundoff(np.float32) == 2.0**-24 and unit_roundoff(np.float64) == 2.0**-53
    assert gamma(3, np.float32) == pytest.approx(3 * 2.0**-24 / (1 - 3 * 2.0**-24), rel=1e-15)
    with pytest.raises(ValueError, match="k \\* u must be below 1"):
        gamma(2**24, np.float32)


def test_two_float32_summation_orders_fit_the_gemm_bound() -> None:
    blas, loop = A @ B + BIAS, reversed_order(A, B, BIAS)
    bound = matmul_difference(A, B, np.float32, bias=BIAS)
    assert not np.array_equal(blas, loop)  # they do differ: the test compares something
    assert_within(blas, loop, bound, "float32 BLAS vs reversed loop")
    # each is within half the bound of the exact (float64) product
    exact = A.astype(np.float64) @ B.astype(np.float64) + BIAS
    assert_within(blas, exact, bound / 2, "float32 BLAS vs exact")


def test_an_error_bigger_than_the_bound_fails() -> None:
    exact = A.astype(np.float64) @ B.astype(np.float64) + BIAS
    bound = matmul_difference(A, B, np.float32, bias=BIAS)
    observed = np.abs((A @ B + BIAS) - exact).max()
    # a perturbation of one entry by ten times the observed error is caught once it exceeds
    # the bound; by the bound itself plus 1 % it always is
    bumped = exact.copy()
    bumped[3, 5] += 1.01 * bound[3, 5]
    with pytest.raises(AssertionError, match="1 of 1152 entries outside .* worst at \\(3, 5\\)"):
        assert_within(bumped, exact, bound)
    bumped = exact + 10 * bound
    with pytest.raises(AssertionError, match="1152 of 1152"):
        assert_within(bumped, exact, bound)
    assert observed <= bound.max() / 2


def test_tf32_inputs_break_the_float32_bound() -> None:
    """TF32 (CUPY_TF32=1) rounds the inputs to 10 mantissa bits: far outside float32's bound,
    which is why the GPU comparisons run with it off."""

    def tf32(x: np.ndarray) -> np.ndarray:
        bits = x.view(np.uint32) + np.uint32(1 << 12)  # round to nearest, 13 bits dropped
        return (bits & np.uint32(0xFFFFE000)).view(np.float32)

    a, b = A[:, :8], B[:8]  # a short sum: float32's bound is 2 * 9 * 2**-24 relative
    reduced = tf32(a).astype(np.float64) @ tf32(b).astype(np.float64) + BIAS
    with pytest.raises(AssertionError, match="outside the derived rounding bound"):
        assert_within(reduced, a @ b + BIAS, matmul_difference(a, b, np.float32, bias=BIAS))


def test_known_input_spread_adds_its_product() -> None:
    """Inputs known within da: the bound grows by (|a|+da)(|b|) - |a||b| on each side."""
    b = np.abs(B)  # no cancellation: a shift of every input moves every output the same way
    da = np.full_like(A, 1e-3, dtype=np.float64)
    wider = matmul_difference(A, b, np.float32, da=da)
    assert np.all(wider > matmul_difference(A, b, np.float32))
    assert_within((A + np.float32(1e-3)) @ b, A @ b, wider, "inputs moved by da")
    with pytest.raises(AssertionError, match="1152 of 1152"):
        assert_within((A + np.float32(1e-2)) @ b, A @ b, wider)


def test_sum_and_softmax_bounds() -> None:
    x = RNG.standard_normal((5000, 3)).astype(np.float32)
    pairwise, sequential = x.sum(axis=0, keepdims=True), np.zeros((1, 3), np.float32)
    for row in x:
        sequential += row
    bound = sum_difference(x, np.float32)
    assert_within(pairwise, sequential, bound, "pairwise vs sequential sum")
    with pytest.raises(AssertionError):
        assert_within(pairwise + 10 * bound, sequential, bound)

    logits = RNG.standard_normal((50, 3))
    d = 1e-4

    def softmax(z: np.ndarray) -> np.ndarray:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p, moved = softmax(logits), softmax(logits + RNG.uniform(-d, d, logits.shape))
    bound = softmax_difference(p, d, np.float64)
    assert_within(moved, p, bound, "softmax of moved logits")
    with pytest.raises(AssertionError):
        assert_within(softmax(logits + 20 * d * np.eye(3)[RNG.integers(0, 3, 50)]), p, bound)
