"""Class labels on the device are checked on the device, with no device-to-host read in a
step: a batch with a bad label has a NaN loss (and accuracy) at once, and ``ValueError``
naming the loss, the bad value, its position and what is allowed comes at the next read
(``check_labels()``, the checker's next call once the answer is on the host, ``bg.to_numpy``,
``Model.train`` / ``evaluate``). Host labels are checked on the host at once, as before."""

from __future__ import annotations

import math

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import _checks
from backprop_gpu.backend.base import HostRead

P = np.array([[0.7, 0.1, 0.2], [0.1, 0.5, 0.4], [0.02, 0.9, 0.08]])
Y = np.array([0, 1, 1])
BAD = np.array([0, 1, 3])  # 3 is not a class of 3
ALLOWED = r"expected class indices in \[0, 2\] for 3 classes"
NAMED = ALLOWED + r", got values from 0 to 3 \(1 outside, the first y_true\[2\] = 3\)"


@pytest.fixture
def device(backend: bg.Backend) -> bg.Backend:
    """The device backends only (on NumPy every label is host data, checked at once)."""
    if backend.host:
        pytest.skip("NumPy labels are host labels, checked at once")
    return backend


def test_reference_op_counts_and_replaces_bad_indices(backend: bg.Backend) -> None:
    y = bg.asarray(np.array([0, -1, 2, 3, 7, 1]))
    labels, errors = backend.with_reference_ops().ops.checked_labels(y, 3)
    assert bg.to_numpy(labels).tolist() == [0, 0, 2, 0, 0, 1]
    assert int(bg.to_numpy(errors)) == 3


def test_host_labels_still_raise_at_once(backend: bg.Backend) -> None:
    with pytest.raises(ValueError, match="SoftmaxCrossEntropy.forward " + NAMED + "$"):
        bg.SoftmaxCrossEntropy().forward(P, BAD)


def test_bad_device_labels_give_nan_now_and_raise_at_check_labels(device: bg.Backend) -> None:
    loss, acc = bg.SoftmaxCrossEntropy(), bg.Accuracy()
    value = loss.forward(P, bg.asarray(BAD))
    assert math.isnan(float(value))  # the loss says so at once
    assert math.isnan(float(acc.calculate(loss.output, bg.asarray(BAD))))
    loss.backward(loss.output, bg.asarray(BAD))  # (runs: the bad index is taken as 0)
    when = r" \(checked on the device in call 1, read later\)|read by check_labels"
    with pytest.raises(ValueError, match=f"^SoftmaxCrossEntropy.forward {NAMED}.*({when})"):
        loss.check_labels()
    with pytest.raises(ValueError, match=f"^Accuracy {NAMED}"):
        acc.check_labels()
    loss.check_labels()  # raised once: read and forgotten
    good = loss.forward(P, bg.asarray(Y))
    assert float(good) == float(bg.SoftmaxCrossEntropy().forward(P, Y))  # the same value
    loss.check_labels()


def test_the_other_losses_and_one_hot_rows(device: bg.Backend) -> None:
    loss = bg.CategoricalCrossEntropy()
    assert math.isnan(float(loss.forward(P, bg.asarray(BAD))))
    with pytest.raises(ValueError, match="^CategoricalCrossEntropy.forward " + NAMED):
        loss.check_labels()
    onehot = np.eye(3)[Y]
    onehot[1] = [0.0, 1.0, 1.0]
    assert math.isnan(float(loss.forward(P, bg.asarray(onehot))))
    with pytest.raises(
        ValueError,
        match=r"each row all 0 but a single 1 .*; 1 rows are not, the first "
        r"y_true\[1\] = \[0.0, 1.0, 1.0\]",
    ):
        loss.check_labels()


def test_to_numpy_reads_the_pending_checks(device: bg.Backend) -> None:
    loss = bg.SoftmaxCrossEntropy()
    value = loss.forward(P, bg.asarray(BAD))
    with pytest.raises(ValueError, match=NAMED + r" \(checked on the device, read by bg.to_numpy"):
        bg.to_numpy(value)
    assert math.isnan(bg.to_numpy(value))  # read once: the next copy just copies


def test_the_next_call_raises_once_the_answer_is_on_the_host(
    device: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a GPU the answer's copy is asynchronous and the next call raises for each answer
    that has arrived (an event, asked without waiting); here every answer has arrived."""
    monkeypatch.setattr(type(device), "start_read", lambda self, a: HostRead(a, done=True))
    loss = bg.SoftmaxCrossEntropy()
    loss.forward(P, bg.asarray(BAD))
    with pytest.raises(ValueError, match=NAMED + r" \(checked on the device in call 1, read"):
        loss.forward(P, bg.asarray(Y))


def test_the_answers_not_arrived_stay_pending(device: bg.Backend) -> None:
    """The stand-in cannot be asked without waiting: nothing is read before a read."""
    loss = bg.SoftmaxCrossEntropy()
    loss.forward(P, bg.asarray(BAD))
    loss.forward(P, bg.asarray(Y))  # no raise: the first answer is not read yet
    with pytest.raises(ValueError, match=NAMED):
        loss.check_labels()


def test_many_unread_checks_are_summed_into_one(
    device: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_checks.LabelChecker, "MAX_PENDING", 3)
    loss = bg.SoftmaxCrossEntropy()
    labels = [BAD, Y, BAD, Y, Y, Y]
    for y in labels:
        loss.forward(P, bg.asarray(y))
    # at the 4th answer the first 3 were summed into one; at the 6th, that and the next two
    assert len(loss._check_labels._pending) == 2
    with pytest.raises(
        ValueError,
        match=r"^SoftmaxCrossEntropy.forward " + ALLOWED + r", got 2 bad labels in calls 1 "
        r"to 5 \(no longer kept to name them\)",
    ):
        loss.check_labels()


def model() -> bg.Model:
    m = bg.Model()
    for layer in (bg.Dense(3, 4), bg.ReLU(), bg.Dense(4, 3)):
        m.add(layer)
    return m.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD()).finalize()


def test_the_model_reads_what_a_hand_loop_left_pending(device: bg.Backend) -> None:
    m, loss = model(), bg.SoftmaxCrossEntropy()
    before = [bg.to_numpy(layer.weights) for layer in m.trainable_layers]
    for method in ("train", "evaluate"):
        loss.forward(P, bg.asarray(BAD))
        with pytest.raises(ValueError, match=NAMED + rf".* read by Model.{method}"):
            getattr(m, method)(P, Y, print_every=0) if method == "train" else m.evaluate(P, Y)
    after = [bg.to_numpy(layer.weights) for layer in m.trainable_layers]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    m.train(P, Y, epochs=1, print_every=0)  # read: trains now


def test_a_label_buffer_refilled_in_place_is_read_afresh(backend: bg.Backend) -> None:
    """A hand loop that refills one device label array between steps trains on the new
    labels: a forward and its backward share one check, the next step checks again."""
    logits = np.log(np.array([[0.98, 0.01, 0.01], [0.01, 0.98, 0.01]], np.float32))
    y = bg.asarray(np.array([0, 1]))
    loss = bg.SoftmaxCrossEntropy()
    first = float(loss.forward(logits, y))
    loss.backward(loss.output, y)
    y[...] = bg.asarray(np.array([2, 2]))  # the same array, new labels
    second = float(loss.forward(logits, y))
    assert first == pytest.approx(-np.log(0.98), rel=1e-5)
    assert second == pytest.approx(-np.log(0.01), rel=1e-5)
