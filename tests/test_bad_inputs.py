"""The bad-input battery: every mistake gets an exception that names who complained, what was
expected and what came, and leaves the model exactly as it was (parameters, optimizer state,
counters); the inputs that are merely unusual are accepted. On every backend."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg

RNG = np.random.default_rng(0)
X = RNG.standard_normal((20, 4)).astype(np.float32)
Y = RNG.integers(0, 3, 20)


def trained_model() -> bg.Model:
    """4 -> 8 -> 3 with SGD momentum, one epoch in, so there is optimizer state to corrupt."""
    model = bg.Model([bg.Dense(4, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1, momentum=0.9))
    model.finalize()
    model.train(X, Y, epochs=1, batch_size=8, print_every=0, seed=0)
    return model


def state(model: bg.Model) -> dict[str, Any]:
    arrays = {
        f"{i}.{attr}": bg.to_numpy(getattr(layer, attr))
        for i, layer in enumerate(model.layers)
        for attr in ("weights", "biases", "weight_momentums", "bias_momentums")
        if getattr(layer, attr, None) is not None
    }
    opt = model.optimizer
    return arrays | {"counters": (opt.iterations, opt.current_learning_rate, model.epochs_trained)}


def assert_same(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]), key


def other_device_array(backend: bg.Backend) -> Any:
    """An array the backend must refuse: from array-api-strict's fake device or its CPU."""
    import array_api_strict as xps

    device = xps.Device("CPU_DEVICE") if backend.name == "array_api_strict" else None
    return xps.asarray(X, device=device or xps.Device("device1"))


TRAIN_CASES: list[tuple[str, Callable[[Any], tuple[Any, Any]], type, str]] = [
    ("wrong feature count", lambda b: (X[:, :3], Y), ValueError,
     r"Model.train: expected X with 4 features \(the first Dense's n_inputs\), "
     r"got shape \(20, 3\)"),
    ("transposed X", lambda b: (X.T, Y), ValueError,
     r"expected X with 4 features .*got shape \(4, 20\)"),
    ("one sample, 1-D", lambda b: (X[0], Y[:1]), ValueError,
     r"expected X as a 2-D batch of shape \(samples, 4\), got 1-D shape \(4,\) "
     r"\(one sample\? use X.reshape\(1, -1\)\)"),
    ("3-D input", lambda b: (X[None], Y), ValueError, r"got 3-D shape \(1, 20, 4\)"),
    ("empty batch", lambda b: (X[:0], Y[:0]), ValueError,
     r"Model.train: got an empty batch: X has shape \(0, 4\)"),
    ("len(X) != len(y)", lambda b: (X, Y[:-1]), ValueError, "X has 20 samples but y has 19"),
    ("labels out of range", lambda b: (X, np.where(Y == 2, 3, Y)), ValueError,
     r"y expected class indices in \[0, 2\] for 3 classes, got values from 0 to 3"),
    ("negative labels", lambda b: (X, Y - 1), ValueError, r"got values from -1 to 1"),
    ("float labels", lambda b: (X, Y.astype(np.float64)), TypeError,
     r"expected integer class indices in y_true, got dtype float64 \(convert with y.astype"),
    ("labels starting at 1", lambda b: (X, Y + 1), ValueError, r"got values from 1 to 3"),
    ("labels as characters", lambda b: (X, np.array(list("abc" * 7))[:20]), TypeError,
     r"integer class indices in y_true, got dtype <U1"),
    ("one-hot, wrong class count", lambda b: (X, np.eye(4)[Y]), ValueError,
     r"one-hot y_true with 3 columns \(one per class\), got shape \(20, 4\)"),
    ("one-hot, not 0/1", lambda b: (X, np.eye(3)[Y] * 0.5), ValueError,
     "one-hot y_true: each row all 0 but a single 1"),
    ("NaN in X", lambda b: (np.where(np.arange(80).reshape(20, 4) == 5, np.nan, X), Y),
     ValueError, r"Model.train: X holds 1 NaN or infinite values"),
    ("Inf in X", lambda b: (np.where(X > 1.5, np.inf, X), Y), ValueError,
     r"X holds \d+ NaN or infinite values"),
    ("-Inf in X", lambda b: (np.where(np.arange(80).reshape(20, 4) == 7, -np.inf, X), Y),
     ValueError, r"X holds 1 NaN or infinite values"),
    ("array from another device", lambda b: (other_device_array(b), Y), ValueError,
     r"Model.train X (comes from array_api_strict|is on device).* numpy|Model.train X is on dev"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [pytest.param(make, err, match, id=name) for name, make, err, match in TRAIN_CASES],
)
def test_bad_training_data(
    backend: bg.Backend, make: Callable[[Any], tuple[Any, Any]], error: type, match: str
) -> None:
    model = trained_model()
    before = state(model)
    X_bad, y_bad = make(backend)
    with pytest.raises(error, match=match):
        model.train(X_bad, y_bad, epochs=1, batch_size=8, print_every=0)
    assert_same(before, state(model))
    with pytest.raises(error, match=match.replace("Model.train", "Model.evaluate")):
        model.evaluate(X_bad, y_bad)
    assert_same(before, state(model))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, "batch_size must be a positive integer, got 0"),
        ({"batch_size": -1}, ValueError, "batch_size must be a positive integer, got -1"),
        ({"epochs": -1}, ValueError, "epochs must be an integer >= 0, got -1"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite must be 'raise' or 'stop'"),
        ({"validation_data": (X[:, :2], Y)}, ValueError, "validation_data: expected X with 4"),
    ],
)
def test_bad_training_settings(
    backend: bg.Backend, kwargs: dict[str, Any], error: type, match: str
) -> None:
    model = trained_model()
    before = state(model)
    with pytest.raises(error, match=match):
        model.train(X, Y, print_every=0, **kwargs)
    assert_same(before, state(model))


def test_epsilon_not_representable_in_float32(backend: bg.Backend) -> None:
    model = trained_model()
    before = state(model)
    model.set(optimizer=bg.Adam(epsilon=1e-50)).finalize()
    with pytest.raises(ValueError, match=r"Adam: epsilon=1e-50 is not representable in float32"):
        model.train(X, Y, print_every=0)
    after = state(model)
    after["counters"] = before["counters"]  # the new optimizer has its own counters
    assert_same(before, after)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bg.SGD(learning_rate=math.inf), "SGD: learning_rate must be a positive finite"),
        (lambda: bg.Adam(learning_rate=math.nan), "Adam: learning_rate must be a positive finite"),
        (lambda: bg.RMSprop(learning_rate=0), "RMSprop: learning_rate must be a positive finite"),
        (lambda: bg.Adagrad(learning_rate=-1), "Adagrad: learning_rate must be a positive finite"),
        (lambda: bg.SGD(momentum=1.5), r"SGD: momentum must be in \[0.0, 1.0\), got 1.5"),
        (lambda: bg.Dropout(1.0), r"Dropout: rate must be in \[0.0, 1.0\), got 1.0"),
        (lambda: bg.Dense(4, 3, weight_regularizer_l2=-1), "weight_regularizer_l2 must be"),
    ],
)
def test_bad_settings(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (X[:, :3], r"Dense\(4, 8\).forward expected inputs with 4 features"),
        (X[0], r"Dense\(4, 8\).forward expected inputs as a 2-D batch.*inputs.reshape\(1, -1\)"),
        (X[None], r"Dense\(4, 8\).forward expected inputs as a 2-D batch .* 3-D"),
        (X[:0], r"Dense\(4, 8\).forward got an empty batch"),
    ],
)
def test_bad_layer_inputs_leave_the_layer_alone(
    backend: bg.Backend, x: np.ndarray, match: str
) -> None:
    model = trained_model()
    before = state(model)
    with pytest.raises(ValueError, match=match):
        model.layers[0].forward(x)
    assert_same(before, state(model))


# --- unusual but fine ------------------------------------------------------------------


def test_column_labels_are_accepted(backend: bg.Backend) -> None:
    a = trained_model().train(X, Y, print_every=0, seed=1)
    b = trained_model().train(X, Y.reshape(-1, 1), print_every=0, seed=1)
    assert a == b


def test_integer_inputs_are_cast_with_a_warning(backend: bg.Backend) -> None:
    pixels = RNG.integers(0, 255, (20, 4)).astype(np.uint8)
    model = trained_model()
    with pytest.warns(UserWarning, match="integer dtype uint8; casting them to floats") as w:
        model.train(pixels, Y, print_every=0)
    with pytest.warns(UserWarning, match=r"Dense\(4, 8\).forward: inputs have integer dtype") as v:
        model.layers[0].forward(pixels)
    assert {r.filename for r in [*w, *v]} == {__file__}  # the user's line, not the library's
    assert model.layers[0].output.dtype == backend.xp.float32


def test_float64_inputs_into_a_float32_model(backend: bg.Backend) -> None:
    model = trained_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # cast quietly, once
        history = model.train(X.astype(np.float64), Y, print_every=0)
    assert math.isfinite(history[0]["loss"])
    assert model.layers[0].weights.dtype == backend.xp.float32


def test_python_lists_work_like_arrays(backend: bg.Backend) -> None:
    a = trained_model().train(X, Y, print_every=0, seed=2)
    b = trained_model().train(X.tolist(), Y.tolist(), print_every=0, seed=2)
    assert a == b


def test_batch_larger_than_the_data(backend: bg.Backend) -> None:
    model = trained_model()
    model.train(X, Y, batch_size=1000, print_every=0)
    assert model.optimizer.iterations == 3 + 1  # 3 batches of 8 before, one batch of 20 now


# --- NaN / Inf during training -------------------------------------------------------------


def exploding() -> bg.Model:
    model = bg.Model([bg.Dense(4, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(learning_rate=1e38)).finalize()
    return model


def test_nonfinite_loss_raises_naming_epoch_and_step(backend: bg.Backend) -> None:
    model = exploding()
    before = state(model)
    with (
        warnings.catch_warnings(),
        pytest.raises(bg.NonFiniteLossError, match=r"became nan at epoch 1, step 2 of 3"),
    ):
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow notes
        model.train(X, Y, epochs=2, batch_size=8, print_every=0, seed=0)
    assert_same(before, state(model))  # back at the last finite state


def test_nonfinite_loss_stop_keeps_the_last_finite_parameters(backend: bg.Backend) -> None:
    model = trained_model()
    model.optimizer.learning_rate = model.optimizer.current_learning_rate = 1e38
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = model.train(X, Y, epochs=3, batch_size=8, print_every=0, on_nonfinite="stop")
    assert history == [] and model.epochs_trained == 1
    assert all(np.isfinite(v).all() for k, v in state(model).items() if k != "counters")


def test_nonfinite_in_a_later_epoch_restores_the_epoch_before(backend: bg.Backend) -> None:
    """The snapshot's arrays are reused from epoch to epoch: a NaN in epoch 3 must bring back
    exactly the end of epoch 2, momentums included."""
    model = trained_model()
    seen: dict[str, Any] = {}

    def explode_after_two(row: dict[str, float]) -> None:
        if row["epoch"] == 3:  # the model's third epoch in all, the second of this call
            model.optimizer.learning_rate = model.optimizer.current_learning_rate = 1e38
            seen.update(state(model))

    with warnings.catch_warnings(), pytest.raises(bg.NonFiniteLossError, match="epoch 4"):
        warnings.simplefilter("ignore", RuntimeWarning)
        model.train(X, Y, epochs=4, batch_size=8, print_every=0, on_epoch_end=explode_after_two)
    assert seen and model.epochs_trained == 3
    assert_same(seen, state(model))


def test_nonfinite_restore_brings_back_uncreated_optimizer_state(backend: bg.Backend) -> None:
    """In the first epoch the momentums do not exist yet: after a NaN they must not either,
    so training again with a sane learning rate starts clean."""
    model = exploding()
    model.set(optimizer=bg.SGD(learning_rate=1e38, momentum=0.9)).finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        model.train(X, Y, epochs=1, batch_size=8, print_every=0, on_nonfinite="stop")
    assert getattr(model.layers[0], "weight_momentums", None) is None
    model.optimizer.learning_rate = model.optimizer.current_learning_rate = 0.01
    history = model.train(X, Y, epochs=2, batch_size=8, print_every=0)
    assert all(math.isfinite(row["loss"]) for row in history)


def test_a_failed_set_changes_nothing() -> None:
    model = trained_model()
    loss, optimizer = model.loss, model.optimizer
    with pytest.raises(TypeError, match="Model.set: optimizer must be an Optimizer, got 'adam'"):
        model.set(loss=bg.MeanSquaredError(), optimizer="adam")  # type: ignore[arg-type]
    assert model.loss is loss and model.optimizer is optimizer


def test_losses_refuse_an_empty_batch(backend: bg.Backend) -> None:
    empty = np.zeros((0, 3), np.float32)
    with pytest.raises(ValueError, match=r"SoftmaxCrossEntropy.forward got an empty batch"):
        bg.SoftmaxCrossEntropy().forward(empty, np.zeros(0, np.int64))
    with pytest.raises(ValueError, match=r"MeanSquaredError.forward got an empty batch"):
        bg.MeanSquaredError().forward(empty, empty)


def test_explicit_float64_biases_set_the_dtype(backend: bg.Backend) -> None:
    dense = bg.Dense(2, 3, biases=np.zeros((1, 3)))  # float64 biases, no weights, no dtype
    assert dense.weights.dtype == dense.biases.dtype == backend.xp.float64


# --- the state restored after a non-finite epoch is finite ----------------------------------


def state_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """``assert_same`` for states that may hold NaN."""
    return a.keys() == b.keys() and all(
        np.array_equal(a[k], b[k], equal_nan=True) if k != "counters" else a[k] == b[k] for k in a
    )


def overflowing() -> bg.Model:
    """One step an epoch, whose update overflows float32 (lr 3e38 times gradients > 1.2)
    while that step's loss, computed before the update, is finite."""
    model = bg.Model([bg.Dense(4, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(learning_rate=3e38)).finalize()
    return model


def assert_no_epoch_kept(model: bg.Model, match: str, X: Any, **train: Any) -> None:
    """``model.train(X, Y, **train)`` raises NonFiniteLossError matching ``match`` and, with
    ``on_nonfinite="stop"``, returns an empty history; both leave the model as it was."""
    before, trained = state(model), model.epochs_trained
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's overflow notes
        with pytest.raises(bg.NonFiniteLossError, match=match):
            model.train(X, Y, print_every=0, seed=0, **train)
        assert_same(before, state(model))
        history = model.train(X, Y, print_every=0, seed=0, on_nonfinite="stop", **train)
    assert history == [] and model.epochs_trained == trained
    assert_same(before, state(model))  # finite weights under the (empty) finite history


@pytest.mark.parametrize("trained_before", [0, 2])
def test_parameters_that_overflow_in_a_finite_epoch_are_not_kept(
    backend: bg.Backend, trained_before: int
) -> None:
    """The issue's case: the last update of an epoch whose loss was finite made the weights
    inf/NaN; that epoch was accepted and the next one's restore brought the NaN back."""
    model = overflowing()
    if trained_before:
        model.optimizer.learning_rate = model.optimizer.current_learning_rate = 0.01
        model.train(X, Y, epochs=trained_before, print_every=0, seed=0)
        model.optimizer.learning_rate = model.optimizer.current_learning_rate = 3e38
    epoch = trained_before + 1
    back = f"at the end of epoch {trained_before}" if trained_before else "where they were"
    match = (
        rf"layer 2 Dense\(8, 3\) weights became NaN or infinite in epoch {epoch} \(every step's "
        rf"loss was finite, so by the last update, step 1 of 1, at the latest\); parameters and "
        rf"optimizer state are back {back}"
    )
    assert_no_epoch_kept(model, match, X * 100, epochs=3)


@pytest.mark.parametrize("trained_before", [0, 1])
def test_a_nonfinite_validation_loss_is_not_kept_either(
    backend: bg.Backend, trained_before: int
) -> None:
    """Finite parameters whose outputs overflow on the validation data (val_loss NaN) are as
    unusable as NaN weights: the epoch is not kept, and "stop" returns the finite history."""
    model = bg.Model([bg.Dense(4, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(learning_rate=0.1)).finalize()
    model.train(X, Y, epochs=trained_before, print_every=0, seed=0)
    huge = np.full_like(X, 3e38)  # finite data; the first product overflows to inf
    back = "at the end of epoch 1" if trained_before else "where they were before training"
    match = (
        rf"the validation loss became nan after epoch {trained_before + 1}, though the "
        rf"parameters and the training loss are finite \(the outputs overflow\); parameters "
        rf"and optimizer state are back {back}"
    )
    assert_no_epoch_kept(model, match, X, epochs=2, validation_data=(huge, Y))


def test_a_nonfinite_loss_names_the_parameters_too(backend: bg.Backend) -> None:
    """One step an epoch: epoch 2's loss at step 1 comes from the state epoch 1 ended with,
    the state restored, whose weights are finite but overflow the outputs: the error says
    that no state with a finite loss is kept (rather than calling it the last finite one)."""
    model = exploding()  # lr 1e38: a finite first epoch, then NaN
    match = (
        r"the loss became nan at epoch 2, step 1 of 1; layer 0 Dense\(4, 8\) weights and 3 more "
        r"arrays are no longer finite either; parameters and optimizer state are back at the end "
        r"of epoch 1: those parameters are finite but gave that value at step 1 \(their "
        r"outputs overflow\), so no state with a finite loss is kept"
    )
    with warnings.catch_warnings(), pytest.raises(bg.NonFiniteLossError, match=match):
        warnings.simplefilter("ignore", RuntimeWarning)
        model.train(X, Y, epochs=3, print_every=0, seed=0)
    assert all(np.isfinite(v).all() for k, v in state(model).items() if k != "counters")


@pytest.mark.parametrize(
    ("attr", "name"),
    [("weights", r"layer 0 Dense\(4, 8\) weights"),
     ("bias_momentums", r"layer 2 Dense\(8, 3\) bias_momentums \(optimizer state\)")],
)  # fmt: skip
def test_training_from_a_nonfinite_state_is_refused_up_front(
    backend: bg.Backend, attr: str, name: str
) -> None:
    """No finite state exists to go back to: say so instead of training."""
    model = trained_model()
    layer = model.layers[0] if attr == "weights" else model.layers[2]
    host = bg.to_numpy(getattr(layer, attr))
    host.flat[:3] = [np.nan, np.inf, np.nan]
    setattr(layer, attr, bg.asarray(host))
    before = state(model)
    match = (
        rf"Model.train: {name} holds 3 NaN or infinite values \(2 NaN, 1 infinite\) before "
        "training, so there is no finite state to train from or to go back to"
    )
    for on_nonfinite in ("raise", "stop"):
        with pytest.raises(ValueError, match=match):
            model.train(X, Y, epochs=2, print_every=0, on_nonfinite=on_nonfinite)
        assert state_equal(before, state(model))


def test_a_learning_rate_that_overflows_float32_is_refused_up_front(backend: bg.Backend) -> None:
    """SGD(1e39) on float32 made every update inf: refused before training, naming the
    optimizer, the learning rate and float32's largest value."""
    model = trained_model()
    before = state(model)
    model.set(optimizer=bg.SGD(1e39)).finalize()
    match = r"SGD: learning_rate=1e\+39 overflows float32 \(largest 3.403e\+38\)"
    with pytest.raises(ValueError, match=match):
        model.train(X, Y, print_every=0)
    after = state(model)
    after["counters"] = before["counters"]  # the new optimizer has its own counters
    assert_same(before, after)


# --- ragged host data is named; check_finite for hand-written loops -------------------------

RAGGED = [[0.0] * 4, [0.0] * 3]


def regression_model() -> bg.Model:
    model = bg.Model([bg.Dense(4, 2, seed=0)])
    model.set(loss=bg.MeanSquaredError(), optimizer=bg.SGD(0.1))
    return model.set(accuracy=bg.RegressionAccuracy()).finalize()


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: m.train(RAGGED, [0, 1], print_every=0), "Model.train X"),
        (lambda m: m.train(X[:2], [[1, 0, 0], [1, 0]], print_every=0), "Model.train y"),
        (lambda m: m.train(X, Y, validation_data=(RAGGED, [0, 1]), print_every=0),
         "Model.train validation_data X"),
        (lambda m: m.train(X, Y, validation_data=(X[:2], [[0], [1, 2]]), print_every=0),
         "Model.train validation_data y"),
        (lambda m: m.evaluate(RAGGED, [0, 1]), "Model.evaluate X"),
        (lambda m: m.predict(RAGGED), "Model.predict X"),
        (lambda m: m.layers[0].forward(RAGGED), r"Dense\(4, 8\).forward inputs"),
        (lambda m: m.layers[1].forward(RAGGED), "ReLU.forward inputs"),
        (lambda m: m.loss.forward(np.zeros((2, 3), np.float32), [[1, 0, 0], [0, 1]]),
         "SoftmaxCrossEntropy.forward y_true"),
        (lambda m: regression_model().train(X[:2], [[0.0, 1.0], [0.0]], print_every=0),
         "Model.train y"),
        (lambda m: bg.MeanSquaredError().forward(np.zeros((2, 2), np.float32), RAGGED),
         "MeanSquaredError.forward y_true"),
        (lambda m: bg.Dense(4, 2, weights=[[0.0, 1.0]] * 3 + [[0.0]]), "Dense: weights"),
        (lambda m: bg.Dense(2, 2, biases=[[0.0, 1.0], [0.0]]), "Dense: biases"),
        (lambda m: bg.asarray(RAGGED), "array"),
        (lambda m: m.backend.asarray(RAGGED, what="my data"), "my data"),
    ],
)  # fmt: skip
def test_ragged_lists_are_named(backend: bg.Backend, call: Any, name: str) -> None:
    model = trained_model()
    before = state(model)
    match = (
        rf"^{name} is not a rectangular array \(nested lists of different lengths\?\); NumPy "
        "cannot convert it: .*inhomogeneous"
    )
    with pytest.raises(ValueError, match=match):
        call(model)
    assert_same(before, state(model))


def test_check_finite_names_the_array_and_counts(backend: bg.Backend) -> None:
    host = np.ones((4, 3), np.float32)
    host[0, 0], host[1, 2], host[3, 1] = np.nan, -np.inf, np.nan
    for value in (host, bg.asarray(host), host.tolist()):
        with pytest.raises(ValueError, match=r"^x holds 3 NaN or infinite values \(2 NaN, 1 inf"):
            bg.check_finite(value, "x")
    clean = bg.asarray(np.ones((4, 3), np.float32))
    assert bg.check_finite(clean, "x") is clean  # returned as is, for chaining
    for fine in (np.arange(6).reshape(2, 3), np.zeros((0, 3)), [[1.0, 2.0]], True):
        assert bg.check_finite(fine) is fine
    with pytest.raises(TypeError, match="labels must hold numbers, got dtype <U1"):
        bg.check_finite(np.array(["a"]), "labels")
    with pytest.raises(ValueError, match="x is not a rectangular array"):
        bg.check_finite(RAGGED, "x")


def test_a_hand_written_layer_does_not_scan_values_check_finite_does(backend: bg.Backend) -> None:
    """By design the layers never look at values (a pass per call): NaN passes through a
    hand-written Dense.forward, and bg.check_finite is the one-line guard for such loops."""
    dense = bg.Dense(4, 2, seed=0)
    bad = X[:3].copy()
    bad[1, 2] = np.nan
    out = bg.to_numpy(dense.forward(bad))
    assert np.isnan(out[1]).all() and np.isfinite(out[[0, 2]]).all()
    with pytest.raises(ValueError, match=r"batch holds 1 NaN or infinite values \(1 NaN, 0 inf"):
        dense.forward(bg.check_finite(bad, "batch"))


class NaNAccuracy(bg.Accuracy):
    def calculate(self, predictions: Any, y: Any) -> Any:
        return super().calculate(predictions, y) * np.nan


def test_a_nonfinite_accuracy_alone_is_named(backend: bg.Backend) -> None:
    """Finite loss and parameters, NaN accuracy: the message names the accuracy (it had an
    empty subject: 'Model.train:  became NaN')."""
    model = bg.Model([bg.Dense(4, 3, seed=0)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1), accuracy=NaNAccuracy())
    model.finalize()
    match = r"^Model.train: the accuracy became nan at epoch 1, step 1 of 2; parameters"
    with pytest.raises(bg.NonFiniteLossError, match=match):
        model.train(X, Y, epochs=1, batch_size=10, print_every=0, seed=0)


def test_an_overflowing_penalty_at_step_1_is_named_as_the_penalty(backend: bg.Backend) -> None:
    """The regularization loss of finite weights overflows: the message blames the penalty,
    not the outputs."""
    layer = bg.Dense(4, 3, seed=0, weight_regularizer_l2=1.0)
    layer.weights = layer.backend.asarray(np.full((4, 3), 1e30, np.float32))
    model = bg.Model([layer]).set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1))
    match = (
        r"the regularization loss became inf at epoch 1, step 1 of 1; .*back where they were "
        r"before training: those parameters are finite but gave that value at step 1 \(the "
        r"L1/L2 penalty of those weights overflows\)"
    )
    with warnings.catch_warnings(), pytest.raises(bg.NonFiniteLossError, match=match):
        warnings.simplefilter("ignore", RuntimeWarning)
        model.finalize().train(np.zeros((8, 4), np.float32), Y[:8], print_every=0, seed=0)
