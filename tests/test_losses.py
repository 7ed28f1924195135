"""Softmax cross-entropy, categorical cross-entropy and accuracy: values, gradients, labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.testing import check_loss

RNG = np.random.default_rng(11)
P = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]])  # the book's example
Y = np.array([0, 1, 1])
ONEHOT = np.eye(3)[Y]


@pytest.mark.parametrize("labels", [Y, ONEHOT, Y[:, None]], ids=["indices", "onehot", "Nx1"])
def test_categorical_cross_entropy_value(backend: bg.Backend, labels: np.ndarray) -> None:
    loss = bg.CategoricalCrossEntropy().forward(P, labels)
    assert loss.shape == () and backend.owns(loss)
    # the book: -log([0.7, 0.5, 0.9]) averaged = 0.38506088005216804
    assert float(loss) == pytest.approx(np.mean(-np.log([0.7, 0.5, 0.9])), rel=1e-12)
    assert float(loss) == pytest.approx(0.38506088005216804, rel=1e-12)


def test_cross_entropy_clips_like_the_book(backend: bg.Backend) -> None:
    p = np.array([[0.0, 1.0], [1.0, 0.0]])
    loss = float(bg.CategoricalCrossEntropy().forward(p, [0, 0]))
    assert loss == pytest.approx((-np.log(1e-7) - np.log(1 - 1e-7)) / 2, rel=1e-12)
    g = bg.to_numpy(bg.CategoricalCrossEntropy().backward(p, [0, 0]))
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, [[-1 / 1e-7 / 2, 0], [-1 / (1 - 1e-7) / 2, 0]], rtol=1e-12)


def test_softmax_cross_entropy_equals_log_sum_exp(backend: bg.Backend) -> None:
    z = RNG.standard_normal((8, 5))
    y = RNG.integers(0, 5, 8)
    lse = np.log(np.exp(z).sum(1)) - z[np.arange(8), y]
    loss = bg.SoftmaxCrossEntropy()
    assert float(loss.forward(z, y)) == pytest.approx(lse.mean(), rel=1e-12)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    np.testing.assert_allclose(bg.to_numpy(loss.output), p, rtol=1e-12)
    g = bg.to_numpy(loss.backward(loss.output, y))
    np.testing.assert_allclose(g, (p - np.eye(5)[y]) / 8, rtol=1e-12, atol=1e-15)


def test_fused_backward_equals_the_chained_one(backend: bg.Backend) -> None:
    # the book's check: softmax.backward(cce.backward(p)) == the fused gradient
    z = RNG.standard_normal((6, 4))
    y = RNG.integers(0, 4, 6)
    fused = bg.SoftmaxCrossEntropy()
    fused.forward(z, y)
    fused.backward(fused.output, y)
    softmax, cce = bg.Softmax(), bg.CategoricalCrossEntropy()
    softmax.forward(z)
    softmax.backward(cce.backward(softmax.output, y))
    np.testing.assert_allclose(
        bg.to_numpy(fused.dinputs), bg.to_numpy(softmax.dinputs), rtol=1e-9, atol=1e-15
    )


@pytest.mark.parametrize("onehot", [False, True], ids=["indices", "onehot"])
@pytest.mark.parametrize("fused", [True, False], ids=["softmax_ce", "cce"])
def test_loss_gradients_match_finite_differences(
    backend: bg.Backend, onehot: bool, fused: bool
) -> None:
    y = RNG.integers(0, 4, 5)
    labels = np.eye(4)[y] if onehot else y
    if fused:
        check_loss(bg.SoftmaxCrossEntropy(), RNG.standard_normal((5, 4)), labels)
    else:
        p = RNG.uniform(0.05, 1.0, (5, 4))
        check_loss(bg.CategoricalCrossEntropy(), p / p.sum(1, keepdims=True), labels)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_give_finite_loss_and_gradient(backend: bg.Backend, dtype: str) -> None:
    z = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 1e4], [0.0, 0.0, 0.0]], dtype=dtype)
    loss = bg.SoftmaxCrossEntropy()
    value = float(loss.forward(z, [1, 2, 0]))
    g = bg.to_numpy(loss.backward(loss.output, [1, 2, 0]))
    assert np.isfinite(value) and np.all(np.isfinite(g)) and g.dtype == dtype
    # sample 0 is clipped at -log(1e-7); sample 1 splits evenly; sample 2 is uniform
    expected = (-np.log(np.float64(np.array(1e-7, dtype))) + np.log(2) + np.log(3)) / 3
    assert value == pytest.approx(expected, rel=1e-5)


def test_accuracy(backend: bg.Backend) -> None:
    acc = bg.Accuracy()
    assert float(acc.calculate(P, Y)) == pytest.approx(1.0)
    assert float(acc.calculate(P, ONEHOT)) == pytest.approx(1.0)
    assert float(acc.calculate(P, [0, 2, 1])) == pytest.approx(2 / 3)
    assert float(acc.calculate(np.array([2, 1, 0]), [0, 1, 1])) == pytest.approx(1 / 3)
    assert float(acc.calculate(P, [[0], [1], [0]])) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match=r"Accuracy expected class indices in \[0, 2\]"):
        acc.calculate(P, [0, 1, 3])


BAD_LABELS = [
    ([0, 1, 3], ValueError, r"indices in \[0, 2\] for 3 classes, got values from 0 to 3"),
    ([0, -1, 2], ValueError, r"indices in \[0, 2\].*from -1 to 2"),
    ([1, 2, 3], ValueError, r"from 1 to 3"),  # labels starting at 1
    ([0.0, 1.0, 2.0], TypeError, r"integer class indices.*float64.*astype\(int\)"),
    ([0, 1], ValueError, r"3 class indices, shape \(3,\).*got shape \(2,\) for 3 samples"),
    (np.eye(4)[[0, 1, 2]], ValueError, r"one-hot y_true with 3 columns.*\(3, 4\)"),
    (np.full((3, 3), 0.5), ValueError, "one-hot y_true: each row all 0 but a single 1"),
    (np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]), ValueError, "each row all 0 but a single 1"),
    (np.array([[0, 0, 0], [0, 1, 0], [0, 0, 1]]), ValueError, "each row all 0 but a single 1"),
    (np.array(["a", "b", "c"]), TypeError, r"integer class indices.*<U1"),
]


@pytest.mark.parametrize(("labels", "error", "match"), BAD_LABELS)
@pytest.mark.parametrize("cls", [bg.SoftmaxCrossEntropy, bg.CategoricalCrossEntropy])
def test_bad_labels_are_named(
    backend: bg.Backend, cls: type, labels: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match) as err:
        cls().forward(P, labels)
    assert f"{cls.__name__}.forward" in str(err.value)


def test_out_of_range_labels_on_the_device_are_caught(backend: bg.Backend) -> None:
    """CuPy would wrap index 3 to 0 silently; labels already on the device are checked too:
    on the device, without a read (the loss is NaN at once, the error comes at the next read:
    tests/test_label_checks.py), on the host at once."""
    y = bg.asarray(np.array([0, 1, 3]))
    loss = bg.SoftmaxCrossEntropy()
    if backend.host:
        with pytest.raises(ValueError, match=r"from 0 to 3"):
            loss.forward(P, y)
    else:
        assert math.isnan(float(loss.forward(P, y)))
        with pytest.raises(ValueError, match=r"from 0 to 3"):
            loss.check_labels()
    with pytest.raises(TypeError, match="integer class indices"):
        bg.SoftmaxCrossEntropy().forward(P, bg.asarray(np.array([0.0, 1.0, 2.0])))
    ok = bg.SoftmaxCrossEntropy().forward(P, bg.asarray(Y))
    assert float(ok) == pytest.approx(float(bg.SoftmaxCrossEntropy().forward(P, Y)))


def test_bad_one_hot_labels_on_the_device_are_caught(backend: bg.Backend) -> None:
    for bad in (np.full((3, 3), 2.0), np.array([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]])):
        loss = bg.CategoricalCrossEntropy()
        with pytest.raises(ValueError, match="each row all 0 but a single 1"):
            value = loss.forward(P, bg.asarray(bad))
            assert math.isnan(float(value))  # (on the device: NaN now, raised at the read)
            loss.check_labels()
    assert float(bg.CategoricalCrossEntropy().forward(P, bg.asarray(ONEHOT))) == pytest.approx(
        0.38506088005216804, rel=1e-12
    )


def test_validate_false_skips_label_checks(backend: bg.Backend) -> None:
    loss = bg.SoftmaxCrossEntropy(validate=False)
    assert float(loss.forward(P, bg.asarray(Y))) == pytest.approx(
        float(bg.SoftmaxCrossEntropy().forward(P, Y))
    )


def test_loss_rejects_bad_predictions(backend: bg.Backend) -> None:
    with pytest.raises(
        ValueError, match=r"SoftmaxCrossEntropy.forward expected a 2-D array.*got shape \(3,\)"
    ):
        bg.SoftmaxCrossEntropy().forward(np.ones(3), [0])
    with pytest.raises(ValueError, match=r"3 class indices.*got shape \(4,\)"):
        bg.SoftmaxCrossEntropy().forward(P, [0, 1, 1, 2])


def test_device_labels_are_checked_without_a_read(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Device labels cost no device-to-host read (``_host_range`` is the eager check's
    read); the same array in a loss's forward and backward is checked once a step."""
    from backprop_gpu import _checks

    reads = []
    real = _checks._host_range
    monkeypatch.setattr(_checks, "_host_range", lambda b, y: reads.append(1) or real(b, y))
    loss = bg.SoftmaxCrossEntropy()
    y = bg.asarray(Y)
    for _ in range(3):
        loss.forward(P, y)
        loss.backward(loss.output, y)
    loss.forward(P, bg.asarray(Y))  # a new array is checked again, on the device
    assert reads == []
    pending = 0 if backend.host else 4  # y once a step (it may be refilled), the new one once
    assert len(loss._check_labels._pending) == pending
    loss.check_labels()  # all good: nothing raised, nothing left
    assert loss._check_labels._pending == []


# --- binary cross-entropy, mean squared error, mean absolute error ---------------------------

P_BIN = np.array([[0.9, 0.2], [0.3, 0.6], [0.5, 0.99], [0.05, 0.4]])
Y_BIN = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
P_REG = np.array([[1.5, -0.2, 0.7], [0.0, 2.5, -1.0]])
Y_REG = np.array([[1.0, 0.3, 0.2], [-0.5, 2.0, 1.0]])  # |y - p| >= 0.5 everywhere
REGRESSION_LOSSES = [bg.BinaryCrossEntropy, bg.MeanSquaredError, bg.MeanAbsoluteError]


def test_binary_cross_entropy_value_and_gradient(backend: bg.Backend) -> None:
    loss = bg.BinaryCrossEntropy()
    value = loss.forward(P_BIN, Y_BIN)
    assert value.shape == () and backend.owns(value)
    # mean over outputs, then over samples, of -(y log p + (1 - y) log(1 - p))
    per_sample = -(Y_BIN * np.log(P_BIN) + (1 - Y_BIN) * np.log(1 - P_BIN)).mean(axis=1)
    assert float(value) == pytest.approx(per_sample.mean(), rel=1e-13)
    hand = (-np.log(0.9) - np.log(0.8) - np.log(0.7) - np.log(0.6)) + (
        -np.log(0.5) - np.log(0.99) - np.log(0.95) - np.log(0.6)
    )
    assert float(value) == pytest.approx(hand / 8, rel=1e-13)
    g = bg.to_numpy(loss.backward(P_BIN, Y_BIN))
    expected = -(Y_BIN / P_BIN - (1 - Y_BIN) / (1 - P_BIN)) / 2 / 4
    np.testing.assert_allclose(g, expected, rtol=1e-13)


def test_mean_squared_and_absolute_error_values_and_gradients(backend: bg.Backend) -> None:
    diff = Y_REG - P_REG
    mse, mae = bg.MeanSquaredError(), bg.MeanAbsoluteError()
    value = mse.forward(P_REG, Y_REG)
    assert backend.owns(value) and value.shape == ()
    assert float(value) == pytest.approx(np.mean(diff**2), rel=1e-13)
    hand_mse = (0.25 + 0.25 + 0.25 + 0.25 + 0.25 + 4.0) / 6  # squares of y - p, by hand
    assert float(value) == pytest.approx(hand_mse, rel=1e-13)
    assert float(mae.forward(P_REG, Y_REG)) == pytest.approx((0.5 * 5 + 2.0) / 6, rel=1e-13)
    np.testing.assert_allclose(
        bg.to_numpy(mse.backward(P_REG, Y_REG)), -2 * diff / 6, rtol=1e-13, atol=1e-16
    )
    np.testing.assert_array_equal(bg.to_numpy(mae.backward(P_REG, Y_REG)), -np.sign(diff) / 6)


@pytest.mark.parametrize("cls", REGRESSION_LOSSES)
def test_regression_losses_match_finite_differences(backend: bg.Backend, cls: type) -> None:
    rng = np.random.default_rng(21)
    if cls is bg.BinaryCrossEntropy:
        p = rng.uniform(0.05, 0.95, (6, 3))  # inside the clip range
        y = rng.integers(0, 2, (6, 3)).astype(np.float64)
        y[0] = [0.25, 0.5, 0.75]  # soft targets work too
    else:
        y = rng.standard_normal((6, 3))
        offset = rng.uniform(0.1, 1.0, (6, 3)) * rng.choice([-1.0, 1.0], (6, 3))
        p = y + offset  # |y - p| >= 0.1: away from MAE's kink
    assert check_loss(cls(), p, y) < 1e-8


@pytest.mark.parametrize("cls", REGRESSION_LOSSES)
def test_regression_targets_of_shape_n_for_one_output(backend: bg.Backend, cls: type) -> None:
    p = np.array([[0.2], [0.7], [0.9]])
    y = np.array([0.0, 1.0, 0.0])
    loss = cls()
    flat, column = float(loss.forward(p, y)), float(loss.forward(p, y[:, None]))
    assert flat == pytest.approx(column, rel=1e-15)
    if cls is bg.BinaryCrossEntropy:
        expected = -(np.log(0.8) + np.log(0.7) + np.log(0.1)) / 3
    elif cls is bg.MeanSquaredError:
        expected = (0.04 + 0.09 + 0.81) / 3
    else:
        expected = (0.2 + 0.3 + 0.9) / 3
    assert flat == pytest.approx(expected, rel=1e-13)
    g = loss.backward(p, y)
    assert g.shape == (3, 1)
    np.testing.assert_allclose(bg.to_numpy(g), bg.to_numpy(cls().backward(p, y[:, None])))


@pytest.mark.parametrize("cls", REGRESSION_LOSSES)
@pytest.mark.parametrize(
    ("p", "y", "shapes"),
    [
        (np.full((4, 2), 0.5), np.zeros(4), r"\(4, 2\) like the predictions, got \(4,\)"),
        (np.full((4, 2), 0.5), np.zeros((4, 3)), r"\(4, 2\) like the predictions, got \(4, 3\)"),
        (np.full((4, 1), 0.5), np.zeros(3), r"\(4, 1\) like the predictions, got \(3,\)"),
        (np.full((4, 2), 0.5), np.zeros((2, 4)), r"\(4, 2\) like the predictions, got \(2, 4\)"),
    ],
)
def test_regression_losses_name_wrong_target_shapes(
    backend: bg.Backend, cls: type, p: np.ndarray, y: np.ndarray, shapes: str
) -> None:
    for method in ("forward", "backward"):
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{method} expected y_true.*"):
            getattr(cls(), method)(p, y)
        with pytest.raises(ValueError, match=shapes):
            getattr(cls(), method)(p, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_binary_cross_entropy_clips_certain_predictions(backend: bg.Backend, dtype: str) -> None:
    p = np.array([[0.0, 1.0], [1.0, 0.0]], dtype=dtype)
    y = np.array([[1.0, 0.0], [1.0, 0.0]], dtype=dtype)
    loss = bg.BinaryCrossEntropy()
    value = float(loss.forward(p, y))
    g = bg.to_numpy(loss.backward(p, y))
    assert np.isfinite(value) and np.all(np.isfinite(g))
    # p clipped to [lo, hi] = [1e-7, 1 - 1e-7] (rounded to the dtype); the four terms are
    # -log(lo), -log(1 - hi) (wrong and certain) and -log(hi), -log(1 - lo) (right and certain)
    lo = np.float64(np.array(1e-7, dtype))
    hi = np.float64(np.array(1 - 1e-7, dtype))
    expected = (-np.log(lo) - np.log(1 - hi) - np.log(hi) - np.log(1 - lo)) / 4
    assert value == pytest.approx(expected, rel=1e-5 if dtype == "float32" else 1e-13)
    if dtype == "float64":  # the book's numbers (float32 rounds 1 - 1e-7 to 1 - 1.19e-7)
        assert value == pytest.approx((-np.log(1e-7) - np.log(1 - 1e-7)) / 2, rel=1e-9)
    expected_g = np.array([[-1 / lo, 1 / (1 - hi)], [-1 / hi, 1 / (1 - lo)]]) / 4
    np.testing.assert_allclose(g, expected_g, rtol=1e-5 if dtype == "float32" else 1e-12)


# --- binary and regression accuracy ----------------------------------------------------------


def test_binary_accuracy(backend: bg.Backend) -> None:
    acc = bg.BinaryAccuracy()
    # predictions P_BIN > 0.5: [[1, 0], [0, 1], [0, 1], [0, 0]]; 0.5 itself counts as 0
    value = acc.calculate(P_BIN, Y_BIN)
    assert backend.owns(value) and value.shape == ()
    assert float(value) == pytest.approx(7 / 8)
    assert float(acc.calculate(P_BIN, 1 - Y_BIN)) == pytest.approx(1 / 8)
    p1 = np.array([[0.51], [0.49], [0.5], [0.99], [0.01]])
    assert float(acc.calculate(p1, np.array([1, 0, 0, 0, 0]))) == pytest.approx(4 / 5)
    assert float(acc.calculate(p1, np.array([[1], [1], [1], [1], [1]]))) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match=r"BinaryAccuracy expected y_true of shape \(4, 2\)"):
        acc.calculate(P_BIN, np.ones(4))


def test_regression_accuracy_with_a_given_precision(backend: bg.Backend) -> None:
    acc = bg.RegressionAccuracy(precision=0.1)
    p = np.array([[1.0], [2.05], [2.95], [4.5], [-0.09]])
    y = np.array([1.0, 2.0, 3.0, 4.0, 0.0])
    value = acc.calculate(p, y)  # |p - y| = 0, 0.05, 0.05, 0.5, 0.09: four within 0.1
    assert backend.owns(value)
    assert float(value) == pytest.approx(4 / 5)
    acc.init(np.array([0.0, 1000.0]))  # a given precision is kept
    assert acc.precision == 0.1
    assert float(bg.RegressionAccuracy(precision=0.01).calculate(p, y)) == pytest.approx(1 / 5)


def test_regression_accuracy_learns_its_precision(backend: bg.Backend) -> None:
    y_train = np.random.default_rng(4).normal(3.0, 50.0, (200, 1))
    acc = bg.RegressionAccuracy()
    with pytest.raises(RuntimeError, match="RegressionAccuracy: no precision yet"):
        acc.calculate(y_train, y_train)
    acc.init(y_train)
    precision = np.std(y_train) / 250
    assert acc.precision == pytest.approx(precision, rel=1e-12)
    y = np.array([[0.0], [10.0], [20.0], [30.0]])
    p = y + np.array([[0.5], [-0.9], [1.5], [-2.0]]) * precision  # within: 0.5 and -0.9 only
    assert float(acc.calculate(p, y)) == pytest.approx(2 / 4)
    acc.init(np.array([0.0, 1.0]), reinit=True)  # std 0.5
    assert acc.precision == pytest.approx(0.5 / 250, rel=1e-15)
