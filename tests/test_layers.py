"""Dense, ReLU and Softmax: shapes, dtypes, initialisation, formulas and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.testing import check_layer

RNG = np.random.default_rng(7)


def test_dense_shapes_and_formula(backend: bg.Backend) -> None:
    x = RNG.standard_normal((5, 4)).astype(np.float32)
    d = bg.Dense(4, 3, seed=1)
    assert d.weights.shape == (4, 3) and d.biases.shape == (1, 3)
    out = d.forward(x)
    assert out is d.output and backend.owns(out) and out.shape == (5, 3)
    w, b = bg.to_numpy(d.weights), bg.to_numpy(d.biases)
    np.testing.assert_allclose(bg.to_numpy(out), x @ w + b, rtol=1e-6)
    g = RNG.standard_normal((5, 3)).astype(np.float32)
    assert d.backward(g) is d.dinputs
    np.testing.assert_allclose(bg.to_numpy(d.dweights), x.T @ g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bg.to_numpy(d.dbiases), g.sum(0, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(bg.to_numpy(d.dinputs), g @ w.T, rtol=1e-5, atol=1e-7)


def test_default_dtype_is_float32_and_explicit_float64_stays(backend: bg.Backend) -> None:
    xp = backend.xp
    d = bg.Dense(2, 2, seed=0)
    assert d.weights.dtype == xp.float32 and d.biases.dtype == xp.float32
    assert d.forward(np.ones((1, 2))).dtype == xp.float32  # float64 host data cast once
    d64 = bg.Dense(2, 2, weights=np.eye(2), biases=np.zeros(2))
    assert d64.weights.dtype == xp.float64 and d64.biases.shape == (1, 2)
    assert d64.forward(np.ones((1, 2), dtype=np.float32)).dtype == xp.float64
    assert bg.Dense(2, 2, weights=np.eye(2), dtype="float32").weights.dtype == xp.float32
    assert bg.Dense(2, 2, dtype=np.float64, seed=0).weights.dtype == xp.float64


def test_same_seed_same_weights_on_every_backend(backend: bg.Backend) -> None:
    with bg.use_backend("numpy"):
        reference = bg.Dense(5, 4, seed=123)
    d = bg.Dense(5, 4, seed=123)
    assert np.array_equal(bg.to_numpy(d.weights), bg.to_numpy(reference.weights))
    assert not np.array_equal(bg.to_numpy(bg.Dense(5, 4, seed=124).weights), reference.weights)
    assert np.all(bg.to_numpy(d.biases) == 0)


@pytest.mark.parametrize(
    ("init", "check"),
    [
        ("nnfs", lambda w, n_in, n_out: abs(w.std() - 0.01) < 0.001),
        ("he", lambda w, n_in, n_out: abs(w.std() - np.sqrt(2 / n_in)) < 0.05 * np.sqrt(2 / n_in)),
        ("glorot", lambda w, n_in, n_out: np.abs(w).max() <= np.sqrt(6 / (n_in + n_out))),
    ],
)
def test_initialisations(init: str, check: object) -> None:
    w = bg.to_numpy(bg.Dense(400, 300, init=init, seed=0).weights).astype(np.float64)
    assert check(w, 400, 300)  # type: ignore[operator]


def test_relu_forward_backward(backend: bg.Backend) -> None:
    r = bg.ReLU()
    z = np.array([[-1.0, 0.0, 2.0], [3.0, -4.0, 0.5]], dtype=np.float32)
    assert bg.to_numpy(r.forward(z)).tolist() == [[0, 0, 2], [3, 0, 0.5]]
    g = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    # the book: the gradient passes where the input was > 0, and is 0 at 0
    assert bg.to_numpy(r.backward(g)).tolist() == [[0, 0, 3], [4, 0, 6]]
    assert r.dinputs.dtype == backend.xp.float32


def test_softmax_rows_sum_to_one_and_match_formula(backend: bg.Backend) -> None:
    z = RNG.standard_normal((6, 5))
    p = bg.to_numpy(bg.Softmax().forward(z))
    np.testing.assert_allclose(p, np.exp(z) / np.exp(z).sum(1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)


def test_softmax_is_stable_for_huge_logits(backend: bg.Backend) -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=np.float32)
    s = bg.Softmax()
    p = bg.to_numpy(s.forward(z))
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    assert np.all(np.isfinite(bg.to_numpy(s.backward(np.ones((2, 3), dtype=np.float32)))))


@pytest.mark.parametrize(
    "make", [lambda: bg.Dense(4, 3, dtype="float64", seed=3, init="he"), bg.ReLU, bg.Softmax]
)
def test_backward_matches_finite_differences(backend: bg.Backend, make: object) -> None:
    layer = make()  # type: ignore[operator]
    x = RNG.standard_normal((5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep ReLU inputs away from its kink
    errors = check_layer(layer, x)
    assert set(errors) == {"dinputs"} | {"d" + p for p in getattr(layer, "params", ())}


def test_gradient_checker_refuses_float32_parameters() -> None:
    with pytest.raises(TypeError, match="check_layer: .* weights are float32; .*float64"):
        check_layer(bg.Dense(2, 2, seed=0), np.ones((1, 2)))


def test_gradient_checker_catches_a_wrong_backward(backend: bg.Backend) -> None:
    class LeakyWrong(bg.ReLU):
        def backward(self, dvalues: object) -> object:
            self.dinputs = super().backward(dvalues) * 1.01
            return self.dinputs

    with pytest.raises(AssertionError, match="dinputs: backward disagrees"):
        check_layer(LeakyWrong(), RNG.standard_normal((3, 4)))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (
            np.ones((2, 5)),
            r"Dense\(\d+, \d+\)\.forward expected inputs with 4 features .*got shape \(2, 5\)",
        ),
        (np.ones(4), r"Dense\(\d+, \d+\)\.forward expected a 2-D batch.*1-D.*reshape\(1, -1\)"),
        (np.ones((2, 2, 4)), r"Dense\(\d+, \d+\)\.forward expected a 2-D batch.*3-D .*\(2, 2, 4\)"),
        (np.ones((0, 4)), r"Dense\(4, 3\)\.forward got an empty batch"),
        (np.ones((4, 2)), r"expected inputs with 4 features.*\(4, 2\)"),  # transposed
    ],
)
def test_dense_rejects_bad_inputs(backend: bg.Backend, x: np.ndarray, match: str) -> None:
    d = bg.Dense(4, 3, seed=0)
    before = bg.to_numpy(d.weights).copy()
    with pytest.raises(ValueError, match=match):
        d.forward(x)
    assert np.array_equal(bg.to_numpy(d.weights), before) and d.output is None


def test_dense_rejects_bad_construction() -> None:
    with pytest.raises(ValueError, match="n_inputs must be a positive integer, got 0"):
        bg.Dense(0, 3)
    with pytest.raises(ValueError, match=r"expected weights of shape \(4, 3\), got \(3, 4\)"):
        bg.Dense(4, 3, weights=np.ones((3, 4)))
    with pytest.raises(ValueError, match="dtype must be a floating type, got int64"):
        bg.Dense(2, 2, dtype="int64")
    with pytest.raises(ValueError, match="init must be one of nnfs, he, glorot"):
        bg.Dense(2, 2, init="zeros")
    with pytest.raises(TypeError, match="must hold numbers, got dtype <U1"):
        bg.Dense(2, 1).forward([["a", "b"]])


def test_backward_checks_order_and_shape(backend: bg.Backend) -> None:
    d = bg.Dense(3, 2, seed=0)
    with pytest.raises(RuntimeError, match=r"Dense\(3, 2\)\.backward called before forward"):
        d.backward(np.ones((1, 2)))
    d.forward(np.ones((4, 3)))
    with pytest.raises(
        ValueError, match=r"Dense\(3, 2\)\.backward expected dvalues of shape \(4, 2\)"
    ):
        d.backward(np.ones((4, 3)))
    with pytest.raises(RuntimeError, match="ReLU.backward called before forward"):
        bg.ReLU().backward(np.ones((1, 2)))


def test_repr_names_the_layer() -> None:
    with bg.use_backend("numpy"):
        assert repr(bg.Dense(2, 64)) == "Dense(2, 64, dtype=float32, backend=numpy)"
    assert repr(bg.ReLU()) == "ReLU()"
    assert repr(bg.SGD(0.5, momentum=0.9)) == (
        "SGD(learning_rate=0.5, decay=0.0, momentum=0.9, nesterov=False)"
    )
