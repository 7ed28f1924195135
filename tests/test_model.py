"""Model: batching, shuffling, metrics, modes, the fused softmax path, and its errors."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data

X, Y = spiral_data(samples=100, classes=3, seed=0)  # 300 samples


def classifier(*, dropout: float = 0.0, fused_layer: bool = False, lr: float = 0.02) -> bg.Model:
    """2 -> 32 -> 3 spiral classifier; the same seeds give the same start on every backend."""
    layers = [bg.Dense(2, 32, init="he", seed=0, weight_regularizer_l2=1e-4), bg.ReLU()]
    if dropout:
        layers.append(bg.Dropout(dropout, seed=5))
    layers.append(bg.Dense(32, 3, init="glorot", seed=1))
    if fused_layer:  # the book's way: a Softmax layer + CategoricalCrossEntropy
        layers.append(bg.Softmax())
        loss: bg.losses.Loss = bg.CategoricalCrossEntropy()
    else:
        loss = bg.SoftmaxCrossEntropy()
    model = bg.Model(layers)
    model.set(loss=loss, optimizer=bg.Adam(learning_rate=lr), accuracy=bg.Accuracy())
    return model.finalize()


def params(model: bg.Model) -> list[np.ndarray]:
    return [bg.to_numpy(getattr(lyr, p)) for lyr in model.trainable_layers for p in lyr.params]


def test_model_learns_the_spiral(backend: bg.Backend) -> None:
    model = classifier(lr=0.05)
    history = model.train(X, Y, epochs=150, batch_size=64, print_every=0, seed=0)
    assert history[0]["loss"] > history[-1]["loss"]
    assert history[-1]["accuracy"] > 0.75  # chance is 1/3
    assert model.evaluate(X, Y)["accuracy"] > 0.75


def test_same_training_on_every_backend(backend: bg.Backend) -> None:
    with bg.use_backend("numpy"):
        reference = classifier(dropout=0.1).train(
            X, Y, epochs=3, batch_size=64, print_every=0, seed=7
        )
    history = classifier(dropout=0.1).train(X, Y, epochs=3, batch_size=64, print_every=0, seed=7)
    for ours, ref in zip(history, reference, strict=True):
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], rel=1e-5), key


def test_one_epoch_matches_the_hand_written_nnfs_loop(backend: bg.Backend) -> None:
    """Batches in order (shuffle=False), the last one partial, equal the manual loop exactly,
    and the epoch's loss/accuracy are the sample-weighted means of the batches'."""
    model = classifier()
    history = model.train(X, Y, epochs=1, batch_size=128, shuffle=False, print_every=0)
    assert model.optimizer.iterations == 3  # 128 + 128 + 44: the partial batch is used

    manual = classifier()
    dense1, relu, dense2 = manual.layers
    loss_fn, acc_fn, opt = bg.SoftmaxCrossEntropy(), bg.Accuracy(), bg.Adam(learning_rate=0.02)
    losses, accs, regs, sizes = [], [], [], []
    for start in range(0, 300, 128):
        xb, yb = X[start : start + 128], Y[start : start + 128]
        out = dense2.forward(relu.forward(dense1.forward(xb)))
        losses.append(float(loss_fn.forward(out, yb)))
        regs.append(float(loss_fn.regularization_loss(dense1, dense2)))
        accs.append(float(acc_fn.calculate(out, yb)))
        sizes.append(len(yb))
        dense1.backward(relu.backward(dense2.backward(loss_fn.backward(loss_fn.output, yb))))
        opt.step([dense1, dense2])
    for a, b in zip(params(model), params(manual), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    row = history[0]
    assert row["loss"] == pytest.approx(np.average(losses, weights=sizes), rel=1e-6)
    assert row["accuracy"] == pytest.approx(np.average(accs, weights=sizes), rel=1e-6)
    assert row["regularization_loss"] == pytest.approx(np.average(regs, weights=sizes), rel=1e-5)
    assert row["learning_rate"] == model.optimizer.current_learning_rate
    assert row["epoch"] == 1.0 and model.epochs_trained == 1


def test_softmax_layer_with_cce_trains_like_the_fused_loss(backend: bg.Backend) -> None:
    a, b = classifier(fused_layer=True), classifier()
    ha = a.train(X, Y, epochs=2, batch_size=100, print_every=0, seed=1)
    hb = b.train(X, Y, epochs=2, batch_size=100, print_every=0, seed=1)
    assert ha[-1]["loss"] == pytest.approx(hb[-1]["loss"], rel=1e-5)
    for pa, pb in zip(params(a), params(b), strict=True):
        np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        bg.to_numpy(a.predict(X[:5])), bg.to_numpy(b.predict(X[:5])), rtol=1e-5, atol=1e-6
    )


def test_shuffling_is_seeded(backend: bg.Backend) -> None:
    runs = [
        classifier().train(X, Y, epochs=2, batch_size=32, print_every=0, seed=s) for s in (3, 3, 4)
    ]
    assert runs[0] == runs[1]
    assert runs[0][-1]["loss"] != runs[2][-1]["loss"]


def test_validation_and_inference_mode(backend: bg.Backend) -> None:
    X_val, Y_val = spiral_data(samples=30, classes=3, seed=1)
    model = classifier(dropout=0.5)
    history = model.train(
        X, Y, epochs=2, batch_size=64, validation_data=(X_val, Y_val), print_every=0, seed=0
    )
    assert set(history[-1]) == {
        "epoch", "loss", "regularization_loss", "accuracy", "learning_rate", "val_loss",
        "val_accuracy",
    }  # fmt: skip
    first, second = model.evaluate(X_val, Y_val), model.evaluate(X_val, Y_val, batch_size=7)
    assert first["loss"] == pytest.approx(second["loss"], rel=1e-6)  # no dropout at inference
    assert history[-1]["val_loss"] == pytest.approx(first["loss"], rel=1e-6)
    probs = bg.to_numpy(model.predict(X_val))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(bg.to_numpy(model.predict(X_val, batch_size=8)), probs, rtol=1e-6)
    manual = X_val
    for layer in model.layers:
        manual = layer.forward(manual, training=False)
    expected = bg.to_numpy(bg.Softmax().forward(bg.to_numpy(manual)))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-7)


def test_device_labels_train_and_the_label_checks_come_back(backend: bg.Backend) -> None:
    """Labels already on the device (checked once, not per step: the reads are counted in
    test_host_reads.py); the loss's and accuracy's own checks are back on after training."""
    model = classifier()
    y_device = bg.asarray(Y)
    history = model.train(X, y_device, epochs=3, batch_size=16, print_every=0, seed=0)
    assert model.optimizer.iterations == 57  # 3 epochs of ceil(300 / 16) steps
    again = classifier().train(X, Y, epochs=3, batch_size=16, print_every=0, seed=0)
    assert [r["loss"] for r in history] == [r["loss"] for r in again]
    assert model.loss.validate and model.accuracy.validate


def test_one_hot_and_column_labels(backend: bg.Backend) -> None:
    h1 = classifier().train(X, Y, epochs=1, print_every=0, seed=0)
    h2 = classifier().train(X, np.eye(3)[Y], epochs=1, print_every=0, seed=0)
    h3 = classifier().train(X, Y.reshape(-1, 1), epochs=1, print_every=0, seed=0)
    assert h1[0]["loss"] == pytest.approx(h2[0]["loss"], rel=1e-6) == h3[0]["loss"]


def test_print_every_reports_epochs(capsys: pytest.CaptureFixture[str]) -> None:
    classifier().train(X, Y, epochs=5, print_every=2, seed=0)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 2", "epoch 4", "epoch 5"]
    assert all("loss" in line and "acc" in line and "lr" in line for line in lines)


def test_regression_model(backend: bg.Backend) -> None:
    from backprop_gpu.datasets import sine_data

    Xs, ys = sine_data(200)
    model = bg.Model(
        [
            bg.Dense(1, 32, init="he", seed=0),
            bg.ReLU(),
            bg.Dense(32, 32, init="he", seed=2),
            bg.ReLU(),
            bg.Dense(32, 1, seed=1),
            bg.Linear(),
        ]
    )
    model.set(
        loss=bg.MeanSquaredError(),
        optimizer=bg.Adam(learning_rate=0.01),
        accuracy=bg.RegressionAccuracy(),
    )
    model.finalize()
    history = model.train(Xs, ys[:, 0], epochs=100, batch_size=16, print_every=0, seed=0)
    assert model.accuracy.precision == pytest.approx(float(np.std(ys)) / 250)
    assert history[0]["loss"] > 0.3 and history[-1]["loss"] < 0.005  # measured: 0.44 -> 0.0007
    assert bg.to_numpy(model.predict(Xs)).shape == (200, 1)


# --- errors -----------------------------------------------------------------------------


def test_train_before_finalize_or_without_parts() -> None:
    model = bg.Model([bg.Dense(2, 3)])
    with pytest.raises(RuntimeError, match=r"Model.train: call model.set\(.*model.finalize"):
        model.train(X, Y)
    with pytest.raises(ValueError, match=r"Model.finalize: no loss; call model.set\(loss=...\)"):
        model.finalize()
    model.set(loss=bg.SoftmaxCrossEntropy()).finalize()
    with pytest.raises(RuntimeError, match=r"no optimizer; call model.set\(optimizer=...\)"):
        model.train(X, Y)
    with pytest.raises(ValueError, match="the model has no layers"):
        bg.Model().set(loss=bg.SoftmaxCrossEntropy()).finalize()
    with pytest.raises(TypeError, match="Model.add expected a layer with forward and backward"):
        bg.Model([np.ones(3)])


def test_finalize_checks_the_stack() -> None:
    model = bg.Model([bg.Dense(2, 8), bg.ReLU(), bg.Dense(4, 3)])
    with pytest.raises(
        ValueError, match=r"Dense\(2, 8.* gives 8 outputs but the next Dense expects 4"
    ):
        model.set(loss=bg.SoftmaxCrossEntropy()).finalize()
    with bg.use_backend("array_api_strict"):
        strict_layer = bg.Dense(8, 3)
    mixed = bg.Model([bg.Dense(2, 8), strict_layer]).set(loss=bg.SoftmaxCrossEntropy())
    with pytest.raises(ValueError, match="different backends"):
        mixed.finalize()


@pytest.mark.parametrize(
    ("X_bad", "y_bad", "error", "match"),
    [
        (X[:10], Y[:9], ValueError, "X has 10 samples but y has 9"),
        (X[:, :1], Y, ValueError, r"expected X with 2 features .*got shape \(300, 1\)"),
        (X[0], Y[:1], ValueError, r"1-D shape \(2,\).*reshape\(1, -1\)"),
        (X[:0], Y[:0], ValueError, r"empty batch: X has shape \(0, 2\)"),
        (X, Y + 1, ValueError, r"indices in \[0, 2\].*from 1 to 3"),
        (X, Y.astype(float), TypeError, "integer class indices"),
        (np.where(np.arange(600).reshape(300, 2) == 7, np.nan, X), Y, ValueError, "1 NaN or inf"),
        (X, np.eye(4)[Y], ValueError, "one-hot y_true with 3 columns"),
    ],
)
def test_bad_training_data_changes_nothing(
    backend: bg.Backend, X_bad: np.ndarray, y_bad: np.ndarray, error: type, match: str
) -> None:
    model = classifier()
    before = params(model)
    with pytest.raises(error, match=match):
        model.train(X_bad, y_bad, epochs=1, print_every=0)
    assert all(np.array_equal(a, b) for a, b in zip(before, params(model), strict=True))
    assert model.optimizer.iterations == 0 and model.epochs_trained == 0


@pytest.mark.parametrize("batch_size", [0, -5, 2.5])
def test_bad_batch_size(batch_size: object) -> None:
    with pytest.raises(
        ValueError, match=f"batch_size must be a positive integer, got {batch_size}"
    ):
        classifier().train(X, Y, batch_size=batch_size, print_every=0)  # type: ignore[arg-type]


def test_batch_larger_than_the_data_is_one_batch() -> None:
    model = classifier()
    model.train(X, Y, epochs=2, batch_size=10_000, print_every=0)
    assert model.optimizer.iterations == 2


def test_bad_validation_data() -> None:
    with pytest.raises(ValueError, match="validation_data must be a pair"):
        classifier().train(X, Y, validation_data=X, print_every=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"validation_data: expected X with 2 features"):
        classifier().train(X, Y, validation_data=(X[:, :1], Y), print_every=0)


def test_regression_needs_an_accuracy() -> None:
    model = bg.Model([bg.Dense(1, 1), bg.Linear()])
    model.set(loss=bg.MeanSquaredError(), optimizer=bg.SGD(0.1)).finalize()
    with pytest.raises(RuntimeError, match=r"no accuracy for MeanSquaredError\(\).*Regression"):
        model.train(np.ones((3, 1)), np.ones(3), print_every=0)
    binary = bg.Model([bg.Dense(1, 1), bg.Sigmoid()]).set(loss=bg.BinaryCrossEntropy()).finalize()
    assert isinstance(binary.accuracy, bg.BinaryAccuracy)


def test_nan_in_regression_targets_is_refused() -> None:
    model = bg.Model([bg.Dense(1, 1), bg.Linear()])
    model.set(loss=bg.MeanSquaredError(), optimizer=bg.SGD(0.1), accuracy=bg.RegressionAccuracy())
    model.finalize()
    with pytest.raises(ValueError, match="Model.train: y holds 1 NaN"):
        model.train(np.ones((3, 1)), np.array([1.0, math.nan, 2.0]), print_every=0)


def test_model_skips_the_first_layers_dinputs(backend: bg.Backend) -> None:
    """The fast path (no dX for the first layer) gives the reference path's gradients."""
    model = classifier()
    model.train(X, Y, epochs=1, batch_size=300, shuffle=False, print_every=0)
    first = model.layers[0]
    assert first.dinputs is None and model.layers[2].dinputs is not None
    reference = bg.Dense(2, 32, weights=bg.to_numpy(first.weights), biases=first.biases)
    reference.forward(first.inputs)
    dvalues = bg.to_numpy(model.layers[1].dinputs)
    reference.backward(dvalues)
    fast = bg.Dense(2, 32, weights=bg.to_numpy(first.weights), biases=first.biases)
    fast.forward(first.inputs)
    assert fast.backward(dvalues, need_dinputs=False) is None and fast.dinputs is None
    assert np.array_equal(bg.to_numpy(fast.dweights), bg.to_numpy(reference.dweights))
    assert np.array_equal(bg.to_numpy(fast.dbiases), bg.to_numpy(reference.dbiases))


def test_train_evaluate_and_predict_run_with_the_models_gpu_current() -> None:
    """CuPy computes on the current GPU, so Model.train/evaluate/predict enter their model's
    (Backend.on_device) around all their work: a model built under use_backend("cupy:1")
    runs on GPU 1 after the block too. Recorded here with a stand-in for on_device."""

    class Recording:
        def __init__(self, real: bg.Backend) -> None:
            self.real, self.entered, self.inside = real, 0, False

        def __getattr__(self, name: str) -> object:
            return getattr(self.real, name)

        @contextlib.contextmanager
        def on_device(self) -> Iterator[None]:
            self.entered, self.inside = self.entered + 1, True
            yield
            self.inside = False

    with bg.use_backend("numpy"):
        model = bg.Model([bg.Dense(3, 4, seed=0), bg.ReLU(), bg.Dense(4, 2, seed=1)])
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1)).finalize()
    recording = Recording(model.backend)
    model.backend = recording  # type: ignore[assignment]
    forward, seen = model.layers[0].forward, []

    def recorded(*args: object, **kwargs: object) -> object:
        seen.append(recording.inside)
        return forward(*args, **kwargs)

    model.layers[0].forward = recorded  # type: ignore[method-assign]
    X, y = np.ones((8, 3)), np.zeros(8, int)
    model.train(X, y, epochs=2, print_every=0)
    model.evaluate(X, y)
    model.predict(X)
    assert recording.entered == 3 and seen and all(seen)


def _buffers_model(seed: int = 0) -> bg.Model:
    model = bg.Model([bg.Dense(2, 16, seed=seed), bg.ReLU(), bg.Dense(16, 8, seed=seed + 1),
                      bg.ReLU(), bg.Dense(8, 3, seed=seed + 2)])  # fmt: skip
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1, momentum=0.9))
    return model.finalize()


def test_step_buffers_give_the_same_training_as_fresh_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On NumPy each step of Model.train writes into the previous step's arrays (the shuffled
    batch, every Dense's products and gradients): the same numbers, bit for bit, as fresh
    arrays, with a smaller last batch (new buffers for its shape) and a second call."""
    from backprop_gpu.backend.numpy_backend import NumpyBackend

    X, y = spiral_data(70, 3)  # 210 samples: batches of 64, 64, 64, 18
    results = []
    for reuse in (True, False):
        monkeypatch.setattr(NumpyBackend, "reuses_step_buffers", reuse)
        with bg.use_backend("numpy"):
            model = _buffers_model()
            history = model.train(X, y, epochs=3, batch_size=64, print_every=0, seed=4)
            history += model.train(X, y, epochs=2, batch_size=64, print_every=0, seed=5)
        params = [
            bg.to_numpy(getattr(d, a)) for d in model.layers[::2] for a in model.layers[0].params
        ]
        results.append((history, params))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1], strict=True):
        np.testing.assert_array_equal(a, b, strict=True)


def test_step_buffers_stay_inside_one_train_call() -> None:
    """Within a call the steps reuse one set of arrays; arrays a caller held before the call
    are not written by it, nor those it holds after it by the next call; and the layers
    themselves (a hand-written loop) always return fresh arrays."""
    X, y = spiral_data(50, 3)
    with bg.use_backend("numpy"):
        model = _buffers_model()
        dense = model.layers[0]
        seen: list[tuple[int, int]] = []

        def note(row: dict[str, float]) -> None:
            seen.append((id(dense.dweights), id(model.layers[1].output)))

        model.train(X, y, epochs=3, batch_size=50, print_every=0, on_epoch_end=note)
        assert len(set(seen)) == 1  # the same arrays in every epoch
        assert dense.step_buffers is None  # off outside the pass
        # (the gradients are views of the model's flat buffer, written in place by every step
        # like the parameters themselves, as PyTorch's .grad: not step buffers)
        gradient = dense.dweights
        held = [model.layers[1].output, model.layers[2].dinputs]
        copies = [a.copy() for a in held]
        model.train(X, y, epochs=2, batch_size=50, print_every=0)
        assert dense.dweights is gradient
        assert all(a is not b for a, b in zip(held, [model.layers[1].output,
                   model.layers[2].dinputs], strict=True))  # fmt: skip
        for a, b in zip(held, copies, strict=True):
            np.testing.assert_array_equal(a, b, strict=True)
        first = dense.forward(X[:10])
        kept = first.copy()
        second = dense.forward(X[10:20])
        assert second is not first
        np.testing.assert_array_equal(first, kept, strict=True)
