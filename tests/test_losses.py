"""Softmax cross-entropy, categorical cross-entropy and accuracy: values, gradients, labels."""

from __future__ import annotations

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
    """CuPy would wrap index 3 to 0 silently; labels already on the device are checked too."""
    y = bg.asarray(np.array([0, 1, 3]))
    with pytest.raises(ValueError, match=r"from 0 to 3"):
        bg.SoftmaxCrossEntropy().forward(P, y)
    with pytest.raises(TypeError, match="integer class indices"):
        bg.SoftmaxCrossEntropy().forward(P, bg.asarray(np.array([0.0, 1.0, 2.0])))
    ok = bg.SoftmaxCrossEntropy().forward(P, bg.asarray(Y))
    assert float(ok) == pytest.approx(float(bg.SoftmaxCrossEntropy().forward(P, Y)))


def test_bad_one_hot_labels_on_the_device_are_caught(backend: bg.Backend) -> None:
    for bad in (np.full((3, 3), 2.0), np.array([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]])):
        with pytest.raises(ValueError, match="each row all 0 but a single 1"):
            bg.CategoricalCrossEntropy().forward(P, bg.asarray(bad))
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


def test_device_labels_are_range_checked_once_per_array(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Passing the same device labels every step costs one device-to-host sync, not one each."""
    from backprop_gpu import _checks

    syncs = []
    real = _checks._host_range
    monkeypatch.setattr(_checks, "_host_range", lambda b, y: syncs.append(1) or real(b, y))
    loss = bg.SoftmaxCrossEntropy()
    y = bg.asarray(Y)
    for _ in range(3):
        loss.forward(P, y)
        loss.backward(loss.output, y)
    expected_syncs = 0 if backend.name == "numpy" else 1  # NumPy labels are host labels
    assert len(syncs) == expected_syncs
    loss.forward(P, bg.asarray(Y))  # a new array is checked again
    assert len(syncs) == 2 * expected_syncs
