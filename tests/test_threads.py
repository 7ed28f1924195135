"""Threads and one Model: predict and evaluate from many threads give each thread its own
answer; train owns the model while it runs, and a second train, or a predict or evaluate
from another thread meanwhile, is refused at once with a clear error."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data

X, Y = spiral_data(samples=100, classes=3, seed=0)  # 300 samples
WAIT = 60  # seconds before a test gives up on a thread (never reached when all is well)


def classifier() -> bg.Model:
    model = bg.Model([bg.Dense(2, 64, init="he", seed=0), bg.ReLU(), bg.Dense(64, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(learning_rate=0.01))
    return model.finalize()


def in_thread(work: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``work`` in a thread; its result or exception lands in the returned dict."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = work()
        except BaseException as e:  # handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def training_paused_in_a_thread(
    model: bg.Model, epochs: int = 2
) -> tuple[threading.Thread, dict[str, Any], threading.Event, threading.Event]:
    """``model`` training in another thread, held inside its first on_epoch_end until the
    returned ``release`` event is set (``inside`` is set once it is there)."""
    inside, release = threading.Event(), threading.Event()

    def on_epoch_end(row: dict[str, float]) -> None:
        if row["epoch"] == 1:
            inside.set()
            assert release.wait(WAIT)

    thread, out = in_thread(
        lambda: model.train(
            X, Y, epochs=epochs, batch_size=100, print_every=0, seed=0, on_epoch_end=on_epoch_end
        )
    )
    assert inside.wait(WAIT)
    return thread, out, inside, release


def test_a_second_train_from_another_thread_is_refused_at_once(
    backend: bg.Backend, tmp_path: Path
) -> None:
    model = classifier()
    saved = tmp_path / "before.npz"
    model.save_parameters(saved)
    with bg.use_backend("numpy"):
        reference = classifier().train(X, Y, epochs=2, batch_size=100, print_every=0, seed=0)
    thread, out, _, release = training_paused_in_a_thread(model)
    try:
        refused = "Model.train: this model is already training in another thread; one model"
        with pytest.raises(RuntimeError, match=refused):
            model.train(X, Y, epochs=1, print_every=0)
        for name in ("predict", "evaluate"):
            call = model.predict if name == "predict" else lambda x: model.evaluate(x, Y)
            with pytest.raises(RuntimeError, match=f"Model.{name}: this model is training in"):
                call(X)
        # a checkpoint from another thread would mix two steps' arrays; loading would change
        # the weights under the running epoch
        for name in ("save", "save_parameters", "load_parameters"):
            with pytest.raises(RuntimeError, match=f"Model.{name}: this model is training in"):
                getattr(model, name)(saved)
    finally:
        release.set()
        thread.join(WAIT)
    assert "error" not in out, out.get("error")
    history = out["result"]  # the first train was not disturbed: it equals a lone run
    assert len(history) == 2 and model.epochs_trained == 2
    for ours, ref in zip(history, reference, strict=True):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-5)
    model.train(X, Y, epochs=1, print_every=0)  # and the model trains again afterwards
    assert model.epochs_trained == 3


def test_train_from_its_own_on_epoch_end_is_refused() -> None:
    model = classifier()
    errors: list[Exception] = []

    def again(row: dict[str, float]) -> None:
        try:
            model.train(X, Y, epochs=1, print_every=0)
        except RuntimeError as e:
            errors.append(e)

    model.train(X, Y, epochs=2, print_every=0, on_epoch_end=again)
    assert len(errors) == 2 and model.epochs_trained == 2
    assert "already training in this thread (train called from inside train" in str(errors[0])


def test_predict_and_evaluate_from_the_training_thread_work(tmp_path: Path) -> None:
    """The guard is per thread: on_epoch_end may look at the model (as callbacks do)."""
    model = classifier()
    seen: list[tuple[int, float]] = []

    def look(row: dict[str, float]) -> None:
        seen.append((bg.to_numpy(model.predict(X[:5])).shape[0], model.evaluate(X, Y)["loss"]))
        model.save(path)  # as the command line's checkpoints

    path = tmp_path / "checkpoint.npz"

    model.train(X, Y, epochs=2, print_every=0, on_epoch_end=look)
    assert [n for n, _ in seen] == [5, 5] and all(np.isfinite(loss) for _, loss in seen)
    assert bg.Model.load(path).epochs_trained == 2


class BookStyle(bg.Linear):
    """The identity written as the book writes layers: keep the output, return the kept one
    (and let other threads run in between, as any NumPy call may)."""

    def forward(self, inputs: Any, training: bool = True) -> Any:
        self.output = inputs
        time.sleep(0)
        return self.output


@pytest.mark.parametrize("book_style", [False, True])
def test_many_threads_predicting_get_what_one_thread_gets(
    backend: bg.Backend, book_style: bool
) -> None:
    """Each layer keeps its last input and output, so passes of several threads at once
    would mix them up (with the book's layers, and now and then with Dense and ReLU too);
    predict and evaluate take turns instead."""
    model = classifier()
    if book_style:
        model.layers.insert(2, BookStyle())
        model.finalize()
    model.train(X, Y, epochs=2, batch_size=100, print_every=0, seed=0)
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((n, 2)).astype(np.float32) for n in range(40, 200, 20)]
    predictions = [bg.to_numpy(model.predict(x)) for x in inputs]  # one thread
    metrics = [model.evaluate(X[: 30 * (i + 1)], Y[: 30 * (i + 1)]) for i in range(len(inputs))]
    start = threading.Barrier(len(inputs))

    def work(i: int) -> bool:
        start.wait(WAIT)
        same = True
        for _ in range(40):
            same &= np.array_equal(bg.to_numpy(model.predict(inputs[i])), predictions[i])
            same &= model.evaluate(X[: 30 * (i + 1)], Y[: 30 * (i + 1)]) == metrics[i]
        return same

    threads = [in_thread(lambda i=i: work(i)) for i in range(len(inputs))]
    for thread, _ in threads:
        thread.join(WAIT)
    assert [out.get("error") for _, out in threads] == [None] * len(inputs)
    assert [out["result"] for _, out in threads] == [True] * len(inputs)


def test_train_waits_for_a_prediction_in_flight() -> None:
    """A predict running in another thread finishes before train changes any layer."""
    armed, inside, release = threading.Event(), threading.Event(), threading.Event()
    order: list[str] = []

    class Pausing(bg.Linear):  # once armed, holds the first inference pass until released
        def forward(self, inputs: Any, training: bool = True) -> Any:
            if not training and armed.is_set() and not inside.is_set():
                inside.set()
                assert release.wait(WAIT)
                order.append("predict done")
            return super().forward(inputs, training)

    model = bg.Model([bg.Dense(2, 8, seed=0), Pausing(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1)).finalize()
    expected = bg.to_numpy(model.predict(X))
    armed.set()
    predicting, prediction = in_thread(lambda: bg.to_numpy(model.predict(X)))
    assert inside.wait(WAIT)
    training, trained = in_thread(
        lambda: model.train(
            X, Y, epochs=1, print_every=0, on_epoch_end=lambda row: order.append("epoch")
        )
    )
    training.join(0.2)  # (time for a train that did not wait to get going)
    release.set()
    predicting.join(WAIT)
    training.join(WAIT)
    assert "error" not in prediction and "error" not in trained
    assert order == ["predict done", "epoch"]
    np.testing.assert_array_equal(prediction["result"], expected)  # the weights before train
