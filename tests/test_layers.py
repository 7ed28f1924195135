"""Dense, ReLU and Softmax: shapes, dtypes, initialisation, formulas and bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.testing import assert_gradient_close, check_layer, numerical_gradient

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

    match = (
        r"dinputs: backward disagrees with finite differences at index \(\d+, \d+\): "
        r"analytic -?\d"
    )  # (plain numbers, not np.int64(...) / np.float64(...))
    with pytest.raises(AssertionError, match=match):
        check_layer(LeakyWrong(), RNG.standard_normal((3, 4)))


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (
            np.ones((2, 5)),
            r"Dense\(\d+, \d+\)\.forward expected inputs with 4 features .*got shape \(2, 5\)",
        ),
        (
            np.ones(4),
            r"Dense\(\d+, \d+\)\.forward expected inputs as a 2-D batch.*1-D.*reshape\(1, -1\)",
        ),
        (
            np.ones((2, 2, 4)),
            r"Dense\(\d+, \d+\)\.forward expected inputs as a 2-D batch.*3-D .*\(2, 2, 4\)",
        ),
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
        "SGD(learning_rate=0.5, decay=0.0, clip_norm=None, clip_value=None, momentum=0.9, "
        "nesterov=False, weight_decay=0.0)"
    )


# --- L1/L2 regularisation on Dense ---------------------------------------------------------

W_REG = np.array([[0.5, -1.25, 0.75], [-0.3, 2.0, -0.6]])  # no zeros: away from the L1 kink
B_REG = np.array([[0.2, -0.4, 1.5]])
LAMBDAS = {
    "weight_regularizer_l1": 0.01,
    "weight_regularizer_l2": 0.02,
    "bias_regularizer_l1": 0.03,
    "bias_regularizer_l2": 0.04,
}


def _penalty(w: np.ndarray, b: np.ndarray, l1w: float, l2w: float, l1b: float, l2b: float) -> float:
    return float(
        l1w * np.abs(w).sum() + l2w * (w**2).sum() + l1b * np.abs(b).sum() + l2b * (b**2).sum()
    )


@pytest.mark.parametrize(
    "lambdas",
    [
        LAMBDAS,
        {"weight_regularizer_l1": 0.1},
        {"weight_regularizer_l2": 0.1},
        {"bias_regularizer_l1": 0.1},
        {"bias_regularizer_l2": 0.1},
    ],
    ids=["all", "w_l1", "w_l2", "b_l1", "b_l2"],
)
def test_regularised_backward_adds_the_penalty_gradients(
    backend: bg.Backend, lambdas: dict[str, float]
) -> None:
    lam = {k: lambdas.get(k, 0.0) for k in LAMBDAS}
    d = bg.Dense(2, 3, weights=W_REG, biases=B_REG, **lambdas)
    x = np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25], [2.0, 1.0]])
    g = np.array([[0.1, -0.2, 0.3], [0.4, 0.5, -0.6], [-0.7, 0.8, 0.9], [1.0, -1.1, 1.2]])
    d.forward(x)
    d.backward(g)
    dw = x.T @ g + lam["weight_regularizer_l1"] * np.sign(W_REG)
    dw += 2 * lam["weight_regularizer_l2"] * W_REG
    db = g.sum(0, keepdims=True) + lam["bias_regularizer_l1"] * np.sign(B_REG)
    db += 2 * lam["bias_regularizer_l2"] * B_REG
    np.testing.assert_allclose(bg.to_numpy(d.dweights), dw, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bg.to_numpy(d.dbiases), db, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bg.to_numpy(d.dinputs), g @ W_REG.T, rtol=1e-13)  # unchanged
    # with a zero upstream gradient only the penalty's gradient is left
    d.backward(np.zeros((4, 3)))
    np.testing.assert_allclose(bg.to_numpy(d.dweights), dw - x.T @ g, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        bg.to_numpy(d.dbiases), db - g.sum(0, keepdims=True), rtol=1e-12, atol=1e-15
    )
    reg = d.regularization_loss()
    assert backend.owns(reg)
    assert float(reg) == pytest.approx(_penalty(W_REG, B_REG, *lam.values()), rel=1e-13)


def test_regularization_loss_is_zero_without_lambdas(backend: bg.Backend) -> None:
    d = bg.Dense(2, 3, weights=W_REG, biases=B_REG)
    assert float(d.regularization_loss()) == 0.0
    d.forward(np.ones((1, 2)))
    d.backward(np.ones((1, 3)))
    np.testing.assert_allclose(bg.to_numpy(d.dweights), np.ones((2, 3)), rtol=1e-15)


def test_loss_sums_the_regularisation_of_its_layers(backend: bg.Backend) -> None:
    w2 = np.array([[1.0, -0.5], [0.25, 0.5], [-2.0, 0.1]])
    b2 = np.array([[-0.3, 0.6]])
    dense1 = bg.Dense(2, 3, weights=W_REG, biases=B_REG, **LAMBDAS)
    dense2 = bg.Dense(3, 2, weights=w2, biases=b2, weight_regularizer_l2=0.5)
    loss = bg.SoftmaxCrossEntropy()
    total = loss.regularization_loss(dense1, bg.ReLU(), dense2)
    expected = _penalty(W_REG, B_REG, *LAMBDAS.values()) + 0.5 * (w2**2).sum()
    assert backend.owns(total)
    assert float(total) == pytest.approx(expected, rel=1e-13)
    assert float(loss.regularization_loss(bg.Dense(2, 2, seed=0), bg.ReLU())) == 0.0


def test_regularised_gradient_matches_finite_differences(backend: bg.Backend) -> None:
    """d(data loss + regularisation loss)/d(weights, biases) by float64 central differences
    equals what Dense.backward leaves in dweights / dbiases after the loss's backward."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 2))
    y = rng.integers(0, 3, 6)
    dense = bg.Dense(2, 3, weights=W_REG, biases=B_REG, **LAMBDAS)
    loss = bg.SoftmaxCrossEntropy()

    def objective() -> float:
        data = loss.forward(dense.forward(x), y)
        return float(data) + float(loss.regularization_loss(dense))

    objective()
    loss.backward(loss.output, y)
    dense.backward(loss.dinputs)
    analytic = {"weights": bg.to_numpy(dense.dweights), "biases": bg.to_numpy(dense.dbiases)}
    for name in ("weights", "biases"):
        original = getattr(dense, name)

        def f(v: np.ndarray, name: str = name) -> float:
            setattr(dense, name, bg.asarray(v))
            return objective()

        try:
            numeric = numerical_gradient(f, bg.to_numpy(original))
        finally:
            setattr(dense, name, original)
        assert_gradient_close(analytic[name], numeric, "d" + name, rtol=1e-6, atol=1e-9)
        # and the penalty really is part of it: the data gradient alone differs
        assert not np.allclose(analytic[name], numeric - _penalty_grad(name, bg.to_numpy(original)))


def _penalty_grad(name: str, p: np.ndarray) -> np.ndarray:
    prefix = "weight" if name == "weights" else "bias"
    l1, l2 = LAMBDAS[f"{prefix}_regularizer_l1"], LAMBDAS[f"{prefix}_regularizer_l2"]
    return l1 * np.sign(p) + 2 * l2 * p


@pytest.mark.parametrize("name", list(LAMBDAS))
@pytest.mark.parametrize("value", [-0.01, float("nan"), float("inf")])
def test_bad_regularisation_lambdas_are_named(name: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"Dense: {name} must be a finite number >= 0, got"):
        bg.Dense(2, 2, **{name: value})  # type: ignore[arg-type]


# --- Dropout ---------------------------------------------------------------------------------


def test_dropout_zeroes_or_scales_in_training(backend: bg.Backend) -> None:
    rate = 0.3
    x = np.random.default_rng(0).uniform(0.5, 1.5, (200, 200))  # no zeros in the input
    drop = bg.Dropout(rate, seed=1)
    out = drop.forward(x)
    assert backend.owns(out) and out.dtype == backend.xp.float64
    o = bg.to_numpy(out)
    kept = o != 0
    # every output is 0 or input / (1 - rate)
    np.testing.assert_allclose(o[kept], x[kept] / (1 - rate), rtol=1e-15)
    # exactly input * mask, the mask being 0 or 1 / (1 - rate)
    np.testing.assert_array_equal(o, x * (kept / (1 - rate)))
    assert abs((1 - kept.mean()) - rate) < 0.02  # share dropped near rate
    assert o.mean() == pytest.approx(x.mean(), rel=0.02)  # inverted dropout keeps the mean
    g = np.random.default_rng(1).standard_normal((200, 200))
    dinputs = drop.backward(g)
    assert backend.owns(dinputs)
    np.testing.assert_array_equal(bg.to_numpy(dinputs), g * (kept / (1 - rate)))  # same mask


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_keeps_the_input_dtype(backend: bg.Backend, dtype: str) -> None:
    x = np.full((50, 40), 2.0, dtype=dtype)
    drop = bg.Dropout(0.5, seed=3)
    o = bg.to_numpy(drop.forward(x))
    assert o.dtype == np.dtype(dtype)
    assert set(np.unique(o).tolist()) == {0.0, 4.0}
    assert bg.to_numpy(drop.backward(np.ones_like(x))).dtype == np.dtype(dtype)


def test_dropout_passes_through_in_inference(backend: bg.Backend) -> None:
    x = np.random.default_rng(2).standard_normal((30, 20))
    drop = bg.Dropout(0.5, seed=0)
    np.testing.assert_array_equal(bg.to_numpy(drop.forward(x, training=False)), x)
    g = np.random.default_rng(3).standard_normal((30, 20))
    np.testing.assert_array_equal(bg.to_numpy(drop.backward(g)), g)
    # and rate 0 in training is the identity too
    np.testing.assert_array_equal(bg.to_numpy(bg.Dropout(0.0).forward(x)), x)


def test_dropout_seed_fixes_the_mask(backend: bg.Backend) -> None:
    x = np.ones((40, 50))
    first = bg.to_numpy(bg.Dropout(0.4, seed=7).forward(x))
    again = bg.to_numpy(bg.Dropout(0.4, seed=7).forward(x))
    other = bg.to_numpy(bg.Dropout(0.4, seed=8).forward(x))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first == 0, other == 0)
    drop = bg.Dropout(0.4, seed=7)
    drop.forward(x)
    assert not np.array_equal(bg.to_numpy(drop.forward(x)), first)  # the stream moves on


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rejects_bad_rates(rate: float) -> None:
    with pytest.raises(ValueError, match=r"Dropout: rate must be in \[0.0, 1.0\), got"):
        bg.Dropout(rate)


def test_dropout_backward_before_forward_is_an_error(backend: bg.Backend) -> None:
    with pytest.raises(RuntimeError, match="Dropout.backward called before forward"):
        bg.Dropout(0.5).backward(np.ones((2, 2)))


# --- Sigmoid and Linear ----------------------------------------------------------------------


def test_sigmoid_and_linear_forward_match_formulas(backend: bg.Backend) -> None:
    z = np.array([[-3.0, -0.5, 0.0], [0.25, 2.0, 10.0]])
    s = bg.Sigmoid()
    out = s.forward(z)
    assert backend.owns(out) and out.dtype == backend.xp.float64
    np.testing.assert_allclose(bg.to_numpy(out), 1 / (1 + np.exp(-z)), rtol=1e-15)
    g = np.array([[1.0, 2.0, -1.0], [0.5, -3.0, 4.0]])
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(bg.to_numpy(s.backward(g)), g * sig * (1 - sig), rtol=1e-13)
    lin = bg.Linear()
    np.testing.assert_array_equal(bg.to_numpy(lin.forward(z)), z)
    np.testing.assert_array_equal(bg.to_numpy(lin.backward(g)), g)
    assert backend.owns(lin.dinputs)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sigmoid_is_stable_for_huge_inputs(backend: bg.Backend, dtype: str) -> None:
    z = np.array([[1000.0, -1000.0, 0.0, 50.0, -50.0]], dtype=dtype)
    s = bg.Sigmoid()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow RuntimeWarning would fail the test
        out = bg.to_numpy(s.forward(z))
        grad = bg.to_numpy(s.backward(np.ones_like(z)))
    assert out.dtype == np.dtype(dtype) and np.all(np.isfinite(out)) and np.all(np.isfinite(grad))
    expected = np.array(
        [[1.0, 0.0, 0.5, 1 / (1 + np.exp(-50.0)), np.exp(-50.0) / (1 + np.exp(-50.0))]]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-6 if dtype == "float32" else 1e-15)
    assert grad[0, 0] == 0.0 and grad[0, 1] == 0.0 and grad[0, 2] == 0.25


@pytest.mark.parametrize("make", [bg.Sigmoid, bg.Linear])
def test_sigmoid_and_linear_match_finite_differences(backend: bg.Backend, make: type) -> None:
    layer = make()
    x = 3 * RNG.standard_normal((5, 4))
    errors = check_layer(layer, x)
    assert set(errors) == {"dinputs"}
