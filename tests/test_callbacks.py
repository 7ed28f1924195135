"""The callbacks of :mod:`backprop_gpu.callbacks` as the fit loop (:mod:`backprop_gpu.trainer`)
drives them through ``Model.train(..., callbacks=[...])``: the hook order and its logs, stopping,
and each built-in against a hand trace, Keras's rule (EarlyStopping) or torch
(ReduceLROnPlateau, when installed), on every backend for anything that trains.

Scripted metric values come from ``Script``, a callback placed before the one under test that
overwrites the epoch's row (the row is one dict shared by the callbacks and the history).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import io
import json
import math
import re
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import checkpoint
from backprop_gpu.callbacks import Callback, PrintEpochs, overrides
from backprop_gpu.datasets import spiral_data
from backprop_gpu.state import walk

X, Y = spiral_data(20, 3)  # 60 samples: 4 steps of 16, 16, 16, 12
X_VAL, Y_VAL = spiral_data(10, 3, seed=1)
BATCH, STEPS, SIZES = 16, 4, [16, 16, 16, 12]
KEYS = ["epoch", "loss", "regularization_loss", "accuracy", "learning_rate"]
VAL_KEYS = [*KEYS, "val_loss", "val_accuracy"]


def small_model(learning_rate: float = 0.1, **sgd: Any) -> bg.Model:
    """Dense(2, 8) - ReLU - Dense(8, 3) with softmax cross-entropy and SGD."""
    model = bg.Model([bg.Dense(2, 8, seed=0, init="he"), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(learning_rate, **sgd))
    return model.finalize()


def train(
    model: bg.Model, epochs: int, callbacks: list[Any], *, val: bool = True, **kwargs: Any
) -> list[dict[str, float]]:
    """``model.train`` on the spiral, 4 steps an epoch, silent, seeded."""
    kwargs = {"batch_size": BATCH, "print_every": 0, "seed": 0} | kwargs
    validation = (X_VAL, Y_VAL) if val else None
    return model.train(X, Y, epochs=epochs, validation_data=validation, callbacks=callbacks,
                       **kwargs)  # fmt: skip


def snapshot(model: bg.Model, *, with_state: bool = True) -> dict[str, np.ndarray]:
    """Host copies of every parameter (and optimizer state that exists), by checkpoint key."""
    slots = walk(model.layers, model.optimizer if with_state else None)
    return {s.key: np.array(bg.to_numpy(s.value), copy=True) for s in slots if s.value is not None}


def counters(model: bg.Model) -> tuple[Any, ...]:
    opt = model.optimizer
    return opt.iterations, opt.learning_rate, opt.current_learning_rate, model.epochs_trained


def assert_bit_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key


def params_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith("layers.")}


def states_only(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in arrays.items() if k.startswith("optimizer.")}


class Script(Callback):
    """Sets ``logs[key]`` to ``values[epoch - 1]`` (``epoch`` as in the row: every epoch the
    model has trained, 1-based), so a resumed run reads on where it left off."""

    def __init__(self, key: str, values: list[float]) -> None:
        self.key, self.values = key, values

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert logs is not None
        logs[self.key] = self.values[epoch]


class Snapshots(Callback):
    """The state (parameters and optimizer state) and counters at each epoch's end, by the
    row's 1-based epoch."""

    def __init__(self) -> None:
        self.at: dict[int, dict[str, np.ndarray]] = {}
        self.counters: dict[int, tuple[Any, ...]] = {}

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.at[epoch + 1] = snapshot(self.model)
        self.counters[epoch + 1] = counters(self.model)


class Recorder(Callback):
    """Every hook call with its arguments (the logs copied)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(("train_begin", dict(logs or {})))

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(("epoch_begin", epoch))

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        assert logs is not None and set(logs) == {"size", "loss"}
        self.calls.append(("batch_end", batch, logs["size"], float(logs["loss"])))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(("epoch_end", epoch, dict(logs or {})))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.calls.append(("train_end", logs))

    def names(self) -> list[tuple[Any, ...]]:
        """The calls without their logs: (hook,) or (hook, epoch or batch)."""
        return [call[:2] if call[0] in ("epoch_begin", "batch_end", "epoch_end") else call[:1]
                for call in self.calls]  # fmt: skip


class FakeTrainer:
    """What a monitoring callback sees of the loop, to drive ``on_epoch_end`` directly."""

    def __init__(self, learning_rate: float = 1.0, **sgd: Any) -> None:
        self.metric_names = tuple(VAL_KEYS)
        self.stop_training = False
        self.model = SimpleNamespace(optimizer=bg.SGD(learning_rate, **sgd))


def drive(callback: Callback, values: list[float], monitor: str, start: int = 0, **sgd: Any) -> int:
    """``callback`` through epochs ``start, start + 1, ...`` whose ``monitor`` is each of
    ``values`` in turn, as the loop calls it; returns the number of epochs run."""
    trainer = FakeTrainer(**sgd)
    callback.set_trainer(trainer)
    callback.on_train_begin({})
    for i, value in enumerate(values):
        callback.on_epoch_end(start + i, {monitor: value})
        if trainer.stop_training:
            return i + 1
    return len(values)


# --- the interface: hooks, their order and logs, stopping -------------------------------------


def test_hooks_run_in_order_with_the_documented_logs(backend: bg.Backend) -> None:
    model = small_model(0.1, decay=0.01)
    recorder = Recorder()
    history = train(model, 3, [recorder])
    expected: list[tuple[Any, ...]] = [("train_begin",)]
    for epoch in range(3):
        expected += [("epoch_begin", epoch)] + [("batch_end", b) for b in range(STEPS)]
        expected += [("epoch_end", epoch)]
    assert recorder.names() == [*expected, ("train_end",)]
    assert recorder.calls[0][1] == {} and recorder.calls[-1][1] == {"history": history}

    ends = [call for call in recorder.calls if call[0] == "epoch_end"]
    batches = [call for call in recorder.calls if call[0] == "batch_end"]
    assert [row for _, _, row in ends] == history and len(history) == 3
    for epoch, (_, _, row) in enumerate(ends):
        assert list(row) == VAL_KEYS and row["epoch"] == epoch + 1
        # the epoch's loss: the batches' losses weighted by their sizes
        steps = batches[epoch * STEPS : (epoch + 1) * STEPS]
        assert [size for _, _, size, _ in steps] == SIZES
        mean = sum(loss * size for _, _, size, loss in steps) / len(X)
        assert row["loss"] == pytest.approx(mean, rel=1e-12)
        # the rate of the epoch's last step: the book's decay at iteration 4 (epoch + 1) - 1
        assert row["learning_rate"] == pytest.approx(0.1 / (1 + 0.01 * (STEPS * (epoch + 1) - 1)))
        assert row["regularization_loss"] == 0.0 and 0.0 <= row["accuracy"] <= 1.0
    final = model.evaluate(X_VAL, Y_VAL, batch_size=BATCH)
    assert history[-1]["val_loss"] == pytest.approx(final["loss"], rel=1e-6)
    assert history[-1]["val_accuracy"] == pytest.approx(final["accuracy"], rel=1e-12)


def test_epochs_count_every_epoch_the_model_trained(backend: bg.Backend) -> None:
    model = small_model()
    train(model, 2, [], val=False)
    recorder = Recorder()
    history = train(model, 2, [recorder], val=False)
    begins = [call[1] for call in recorder.calls if call[0] == "epoch_begin"]
    assert begins == [2, 3] and [row["epoch"] for row in history] == [3, 4]
    assert all(list(row) == KEYS for row in history)  # no val_ keys without validation data


def test_lambda_callback_calls_each_of_its_hooks(backend: bg.Backend) -> None:
    """Its on_batch_end too: a function set on the object counts as overriding the hook."""
    calls: list[str] = []
    lam = bg.LambdaCallback(
        on_train_begin=lambda logs: calls.append("train_begin"),
        on_epoch_begin=lambda epoch, logs: calls.append(f"epoch_begin {epoch}"),
        on_batch_end=lambda batch, logs: calls.append(f"batch_end {batch}"),
        on_epoch_end=lambda epoch, logs: calls.append(f"epoch_end {logs['epoch']}"),
        on_train_end=lambda logs: calls.append("train_end"),
    )
    assert overrides(lam, "on_batch_end")
    assert not overrides(bg.LambdaCallback(on_epoch_end=print), "on_batch_end")
    train(small_model(), 2, [lam])
    expected = []
    for epoch in range(2):  # (the hook gets the 0-based epoch; the row's is 1-based)
        expected += [f"epoch_begin {epoch}"] + [f"batch_end {b}" for b in range(STEPS)]
        expected += [f"epoch_end {epoch + 1}"]
    assert calls == ["train_begin", *expected, "train_end"]


def test_lambda_callback_refuses_unknown_hooks_and_non_functions() -> None:
    with pytest.raises(TypeError, match=r"LambdaCallback: unknown hook 'on_step_end'; known:"):
        bg.LambdaCallback(on_step_end=print)
    with pytest.raises(TypeError, match=r"LambdaCallback: on_epoch_end must be callable, got 3"):
        bg.LambdaCallback(on_epoch_end=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("hook", ["on_batch_end", "on_epoch_end"])
def test_stop_training_ends_after_the_running_epoch(backend: bg.Backend, hook: str) -> None:
    """Set during the second epoch (at its second step, or at its end): that epoch finishes,
    no third one starts, and on_train_end still runs."""

    class Stopper(Recorder):
        def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            super().on_batch_end(batch, logs)
            if hook == "on_batch_end" and self.model.epochs_trained == 1 and batch == 1:
                self.trainer.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            super().on_epoch_end(epoch, logs)
            if hook == "on_epoch_end" and epoch == 1:
                self.trainer.stop_training = True

    model, stopper = small_model(), Stopper()
    history = train(model, 5, [stopper])
    assert [row["epoch"] for row in history] == [1, 2]
    assert model.epochs_trained == 2 and model.optimizer.iterations == 2 * STEPS
    assert [c[0] for c in stopper.calls].count("batch_end") == 2 * STEPS
    assert stopper.calls[-1][0] == "train_end"


def test_callbacks_must_be_callback_objects() -> None:
    model = small_model()
    before = snapshot(model)
    with pytest.raises(
        TypeError, match=r"Model.train: callbacks must be backprop_gpu Callback objects, got 'csv'"
    ):
        train(model, 1, [bg.EarlyStopping("loss"), "csv"])
    match = (r"Model.train: callbacks must be a list of callbacks, got one callback, "
             r"EarlyStopping\(monitor='loss'.*\(pass callbacks=\[\.\.\.\]\)")  # fmt: skip
    with pytest.raises(TypeError, match=match):
        train(model, 1, bg.EarlyStopping("loss"))  # type: ignore[arg-type]
    assert model.epochs_trained == 0
    assert_bit_equal(before, snapshot(model))


def test_a_callback_without_on_batch_end_costs_no_call_a_step(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The loop calls on_batch_end only on the callbacks that have their own: with the base
    class's hook replaced by a counter, the built-ins (none has one) are never called a step."""
    lines: list[str] = []
    builtins = [
        bg.EarlyStopping("val_loss", patience=9),
        bg.ReduceLROnPlateau("val_loss"),
        bg.ModelCheckpoint(tmp_path / "last.npz"),
        bg.CSVLogger(tmp_path / "m.csv", jsonl=tmp_path / "m.jsonl"),
        bg.TerminateOnNaN(),
        PrintEpochs(report=lines.append),
        bg.ProgressBar(fallback=lines.append, file=io.StringIO()),
        bg.LambdaCallback(on_epoch_end=lambda epoch, logs: None),
    ]
    assert not any(overrides(cb, "on_batch_end") for cb in builtins)
    called: list[str] = []

    def counted(self: Callback, batch: int, logs: dict[str, Any] | None = None) -> None:
        called.append(type(self).__name__)

    monkeypatch.setattr(Callback, "on_batch_end", counted)
    assert not any(overrides(cb, "on_batch_end") for cb in builtins)
    recorder = Recorder()
    train(small_model(), 2, [*builtins, recorder])
    assert called == []  # not one call to a hook nobody overrides
    assert [c[0] for c in recorder.calls].count("batch_end") == 2 * STEPS


# --- EarlyStopping ----------------------------------------------------------------------------


def keras_stop(
    values: list[float],
    *,
    patience: int = 0,
    min_delta: float = 0.0,
    mode: str = "min",
    baseline: float | None = None,
    start_from_epoch: int = 0,
) -> tuple[int, float, int]:
    """Keras 3's ``EarlyStopping.on_epoch_end`` (keras/src/callbacks/early_stopping.py):
    ``monitor_op(current - min_delta, reference)`` with min_delta negated for "min", the best
    starting at +-inf, ``wait`` counted up each epoch looked at and reset by an improvement
    that also beats the baseline, a stop only on an epoch that did not improve, after the
    first; (the 1-based epoch after which it stops or 0, best, best epoch)."""
    op = np.less if mode == "min" else np.greater
    delta = -min_delta if mode == "min" else min_delta
    best = math.inf if mode == "min" else -math.inf
    best_epoch, wait = 0, 0
    for epoch, current in enumerate(values):
        if epoch < start_from_epoch:
            continue
        wait += 1
        if op(current - delta, best):
            best, best_epoch = current, epoch + 1
            if baseline is None or op(current - delta, baseline):
                wait = 0
            continue
        if wait >= patience and epoch > 0:
            return epoch + 1, best, best_epoch
    return 0, best, best_epoch


# (values, EarlyStopping arguments, stopped_epoch, best, best_epoch), traced by hand
HAND_TRACES = [
    # 0.75 and 0.625 do not beat 0.5: the second of them is the 2nd epoch without improvement
    ([1.0, 0.5, 0.75, 0.625, 0.25], {"patience": 2}, 4, 0.5, 2),
    ([1.0, 0.5, 0.75, 0.625, 0.25], {"patience": 3}, 0, 0.25, 5),
    ([1.0, 0.5, 0.75], {"patience": 0}, 3, 0.5, 2),  # the first epoch without improvement
    # min_delta: 0.75 is not below 1.0 - 0.25 (strictly), 0.5 is; 0.25 is not below 0.5 - 0.25
    ([1.0, 0.75, 0.5, 0.375, 0.25], {"patience": 1, "min_delta": 0.25}, 2, 1.0, 1),
    ([1.0, 0.75, 0.5, 0.375, 0.25], {"patience": 2, "min_delta": 0.25}, 5, 0.5, 3),
    # mode "max" (auto for a monitor with "acc" in its name): a tie is no improvement
    ([0.5, 0.625, 0.625, 0.5], {"patience": 2, "monitor": "val_accuracy"}, 4, 0.625, 2),
    ([0.5, 0.625, 0.625, 0.5], {"patience": 2, "mode": "max"}, 4, 0.625, 2),
    ([0.5, 0.625, 0.625, 0.5], {"patience": 2, "mode": "min"}, 3, 0.5, 1),
    # baseline: improvements that do not beat it still count towards the patience, but a stop
    # comes only on an epoch that did not improve
    ([1.0, 0.75, 0.625, 0.25], {"patience": 2, "baseline": 0.5}, 0, 0.25, 4),
    ([1.0, 0.75, 0.75, 0.25], {"patience": 2, "baseline": 0.5}, 3, 0.75, 2),
    ([1.0, 0.75, 0.25, 0.375], {"patience": 3, "baseline": 0.5}, 0, 0.25, 3),
    # start_from_epoch: the first two epochs are not looked at
    ([1.0, 2.0, 3.0, 2.5, 2.75], {"patience": 0, "start_from_epoch": 2}, 5, 2.5, 4),
    ([1.0, 2.0, 3.0, 2.5, 2.75], {"patience": 0}, 2, 1.0, 1),
]


@pytest.mark.parametrize(("values", "kwargs", "stopped", "best", "best_epoch"), HAND_TRACES)
def test_early_stopping_hand_traces(
    values: list[float], kwargs: dict[str, Any], stopped: int, best: float, best_epoch: int
) -> None:
    kwargs = dict(kwargs)
    monitor = kwargs.pop("monitor", "val_loss")
    es = bg.EarlyStopping(monitor, **kwargs)
    ran = drive(es, values, monitor)
    assert (es.stopped_epoch, es.best, es.best_epoch) == (stopped, best, best_epoch)
    assert ran == (stopped or len(values))
    mode = kwargs.pop("mode", "max" if "acc" in monitor else "min")
    assert keras_stop(values, mode=mode, **kwargs) == (stopped, best, best_epoch)


def random_case(seed: int) -> tuple[list[float], str, dict[str, Any]]:
    """A random sequence on a grid of eighths (exact arithmetic, many ties) and settings."""
    rng = np.random.default_rng(seed)
    mode = ["min", "max"][seed % 2]
    kwargs = {
        "patience": int(rng.integers(0, 4)),
        "min_delta": float(rng.integers(0, 3)) / 8,
        "baseline": None if rng.random() < 0.5 else float(rng.integers(4, 12)) / 8,
        "start_from_epoch": int(rng.integers(0, 3)),
    }
    walk_ = np.cumsum(rng.integers(-2, 3, 15) * (1 if mode == "min" else -1)) / 8 + 1.0
    return [float(v) for v in (walk_[::-1] if seed % 3 == 0 else walk_)], mode, kwargs


def keras_itself(
    values: list[float], mode: str, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[int, float, int]:
    """Keras's own EarlyStopping (its NumPy backend) over ``values``, in our numbering."""
    monkeypatch.setenv("KERAS_BACKEND", "numpy")  # (no TensorFlow or JAX needed)
    keras = pytest.importorskip("keras")
    es = keras.callbacks.EarlyStopping(monitor="val_loss", mode=mode, **kwargs)
    es.set_model(SimpleNamespace(stop_training=False))
    es.on_train_begin()
    for epoch, value in enumerate(values):
        es.on_epoch_end(epoch, {"val_loss": value})
        if es.model.stop_training:
            break
    stopped = es.stopped_epoch + 1 if es.model.stop_training else 0
    return stopped, float(es.best), es.best_epoch + 1  # (Keras counts epochs from 0)


@pytest.mark.parametrize("seed", range(40))
def test_early_stopping_follows_keras_rule(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random sequences and settings: the transcribed rule always, and Keras 3 itself where
    it is installed."""
    values, mode, kwargs = random_case(seed)
    es = bg.EarlyStopping("val_loss", mode=mode, **kwargs)
    drive(es, values, "val_loss")
    assert (es.stopped_epoch, es.best, es.best_epoch) == keras_stop(values, mode=mode, **kwargs)
    if importlib.util.find_spec("keras") is not None:
        assert (es.stopped_epoch, es.best, es.best_epoch) == keras_itself(
            values, mode, monkeypatch, **kwargs
        )


def test_early_stopping_stops_training_at_keras_epoch(backend: bg.Backend) -> None:
    scripted = [3.0, 1.0, 2.0, 1.5, 0.5, 0.25]
    es = bg.EarlyStopping("val_loss", patience=2)
    model = small_model()
    history = train(model, 6, [Script("val_loss", scripted), es])
    assert keras_stop(scripted, patience=2)[0] == 4 == es.stopped_epoch
    assert len(history) == 4 == model.epochs_trained
    assert [row["val_loss"] for row in history] == scripted[:4]


@pytest.mark.parametrize("stops", [True, False], ids=["stopped", "epoch-limit"])
def test_restore_best_weights(backend: bg.Backend, stops: bool) -> None:
    """The best epoch's parameters come back whether EarlyStopping stopped training or the
    epoch limit came first; the optimizer state and counters stay the last epoch's."""
    scripted = [3.0, 1.0, 2.0, 2.5, 0.5]  # best at epoch 2, patience 2 stops after epoch 4
    model, snaps = small_model(0.1, momentum=0.9), Snapshots()
    es = bg.EarlyStopping("val_loss", patience=2 if stops else 5, restore_best_weights=True)
    history = train(model, 5 if stops else 3, [Script("val_loss", scripted), es, snaps])
    last = len(history)
    assert last == (4 if stops else 3) and es.best_epoch == 2
    now = snapshot(model)
    assert_bit_equal(params_only(now), params_only(snaps.at[2]))
    assert not all(np.array_equal(now[k], v) for k, v in params_only(snaps.at[last]).items())
    assert_bit_equal(states_only(now), states_only(snaps.at[last]))
    assert counters(model) == snaps.counters[last]


def test_without_restore_best_weights_the_last_parameters_stay(backend: bg.Backend) -> None:
    model, snaps = small_model(0.1, momentum=0.9), Snapshots()
    es = bg.EarlyStopping("val_loss", patience=2)
    train(model, 5, [Script("val_loss", [3.0, 1.0, 2.0, 2.5, 0.5]), es, snaps])
    assert_bit_equal(snapshot(model), snaps.at[4])


@pytest.mark.parametrize("split", [1, 2, 3, 4])
def test_early_stopping_state_round_trip(split: int) -> None:
    """A second EarlyStopping given the first's ``get_state`` (through JSON, as a checkpoint
    keeps it) decides on the later epochs as one callback over all of them would, warm-up
    included: epochs 1 and 2 are not looked at, epoch 3 is the best, 4 and 5 do not beat it,
    so training stops after epoch 5 (a warm-up restarted on resuming would skip 3 or 4 and
    go on)."""
    values = [5.0, 5.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    kwargs = {"patience": 2, "min_delta": 0.125, "start_from_epoch": 2}
    whole = bg.EarlyStopping("val_loss", **kwargs)
    ran = drive(whole, values, "val_loss")
    assert whole.stopped_epoch == ran == 5 and keras_stop(values, **kwargs) == (5, 1.0, 3)
    first = bg.EarlyStopping("val_loss", **kwargs)
    assert drive(first, values[:split], "val_loss") == split
    saved = json.loads(json.dumps(first.get_state()))
    second = bg.EarlyStopping("val_loss", **kwargs)
    second.set_state(saved)
    assert split + drive(second, values[split:], "val_loss", start=split) == ran
    assert (second.stopped_epoch, second.best, second.best_epoch, second.wait) == (
        whole.stopped_epoch, whole.best, whole.best_epoch, whole.wait)  # fmt: skip


def test_early_stopping_resumes_from_a_checkpoint_as_uninterrupted(
    backend: bg.Backend, tmp_path: Path
) -> None:
    """The callbacks' states a ModelCheckpoint stores, given back with ``set_state`` to a new
    EarlyStopping on the loaded model: training stops after the same epoch, with the same
    parameters."""
    scripted = [2.0, 1.0, 1.5, 1.25, 0.5, 0.75, 0.625, 0.625]

    def callbacks(es: bg.EarlyStopping, *more: Callback) -> list[Callback]:
        return [Script("val_loss", scripted), es, *more]

    whole = small_model(0.1, momentum=0.9)
    es_whole = bg.EarlyStopping("val_loss", patience=3, restore_best_weights=False)
    full = train(whole, 8, callbacks(es_whole))
    assert es_whole.stopped_epoch == 8 == len(full)

    first = small_model(0.1, momentum=0.9)
    es_first = bg.EarlyStopping("val_loss", patience=3)
    train(first, 3, callbacks(es_first, bg.ModelCheckpoint(tmp_path / "ckpt.npz")))
    resumed = bg.Model.load(tmp_path / "ckpt.npz")
    (key,) = [k for k in resumed.saved_extra["callbacks"] if k.endswith(":EarlyStopping")]
    es_resumed = bg.EarlyStopping("val_loss", patience=3)
    es_resumed.set_state(resumed.saved_extra["callbacks"][key])
    tail = train(resumed, 5, callbacks(es_resumed))
    assert es_resumed.stopped_epoch == 8 and [r["epoch"] for r in tail] == [4, 5, 6, 7, 8]
    assert tail == full[3:]
    assert_bit_equal(snapshot(resumed), snapshot(whole))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: bg.EarlyStopping(patience=-1),
         r"EarlyStopping: patience must be an integer >= 0, got -1"),
        (lambda: bg.EarlyStopping(patience=1.5),
         r"EarlyStopping: patience must be an integer >= 0, got 1.5"),
        (lambda: bg.EarlyStopping(mode="up"),
         r"EarlyStopping: mode must be 'auto', 'min' or 'max', got 'up'"),
        (lambda: bg.EarlyStopping(min_delta=-0.1),
         r"EarlyStopping: min_delta must be a number >= 0, got -0.1"),
        (lambda: bg.EarlyStopping(baseline=math.nan),
         r"EarlyStopping: baseline must be a finite number, got nan"),
        (lambda: bg.EarlyStopping(start_from_epoch=-2),
         r"EarlyStopping: start_from_epoch must be an integer >= 0, got -2"),
        (lambda: bg.EarlyStopping(""), r"EarlyStopping: monitor must be a metric name, got ''"),
        (lambda: bg.ReduceLROnPlateau(factor=1.0),
         r"ReduceLROnPlateau: factor must be in \(0, 1\), got 1.0"),
        (lambda: bg.ReduceLROnPlateau(factor=0),
         r"ReduceLROnPlateau: factor must be in \(0, 1\), got 0"),
        (lambda: bg.ReduceLROnPlateau(threshold_mode="relative"),
         r"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got 'relative'"),
        (lambda: bg.ReduceLROnPlateau(cooldown=-1),
         r"ReduceLROnPlateau: cooldown must be an integer >= 0, got -1"),
        (lambda: bg.ReduceLROnPlateau(min_lr=-1e-3),
         r"ReduceLROnPlateau: min_lr must be a number >= 0, got -0.001"),
        (lambda: bg.ReduceLROnPlateau(eps=math.inf),
         r"ReduceLROnPlateau: eps must be finite, got inf"),
        (lambda: bg.ReduceLROnPlateau(mode="lower"),
         r"ReduceLROnPlateau: mode must be 'auto', 'min' or 'max', got 'lower'"),
        (lambda: bg.ModelCheckpoint("c.npz", mode="best"),
         r"ModelCheckpoint: mode must be 'auto', 'min' or 'max', got 'best'"),
        (lambda: bg.TerminateOnNaN("ignore"),
         r"TerminateOnNaN: mode must be 'raise' or 'stop', got 'ignore'"),
        (lambda: PrintEpochs(-1), r"PrintEpochs: every must be an integer >= 0, got -1"),
    ],
)  # fmt: skip
def test_bad_arguments_are_named(make: Any, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("make", "owner"),
    [(lambda m: bg.EarlyStopping(m), "EarlyStopping"),
     (lambda m: bg.ReduceLROnPlateau(m), "ReduceLROnPlateau"),
     (lambda m: bg.ModelCheckpoint("best.npz", monitor=m, save_best_only=True),
      "ModelCheckpoint")],
)  # fmt: skip
def test_a_monitor_that_is_not_a_metric_is_refused_before_training(
    backend: bg.Backend, make: Any, owner: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    model = small_model()
    before = snapshot(model)
    names = "epoch, loss, regularization_loss, accuracy, learning_rate"
    match = (rf"{owner}: monitor='val_loss' is not a metric of this training \(pass "
             rf"validation_data to train\); the metrics are {names}$")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        train(model, 2, [make("val_loss")], val=False)
    match = rf"{owner}: monitor='val_acc' is not a metric .*; the metrics are {names}, val_loss"
    with pytest.raises(ValueError, match=match):
        train(model, 2, [make("val_acc")])
    assert model.epochs_trained == 0 and list(tmp_path.iterdir()) == []
    assert_bit_equal(before, snapshot(model))


@pytest.mark.parametrize(
    "callback",
    [bg.EarlyStopping("val_loss"), bg.ReduceLROnPlateau("val_loss"),
     bg.ModelCheckpoint("best.npz", monitor="val_loss", save_best_only=True)],
    ids=lambda cb: type(cb).__name__,
)  # fmt: skip
def test_a_monitor_missing_from_the_logs_is_named(callback: Callback) -> None:
    """Driven directly with logs that lack the monitored value (as a callback that deleted
    it would leave them): a ValueError naming the monitor and what the logs hold."""
    callback.set_trainer(FakeTrainer())
    match = (rf"{type(callback).__name__}: monitor='val_loss' is not in this epoch's logs; "
             r"they hold epoch, loss$")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        callback.on_epoch_end(0, {"epoch": 1, "loss": 0.5})


# --- ReduceLROnPlateau ------------------------------------------------------------------------


def plateau_rates(values: list[float], learning_rate: float = 1.0, **kwargs: Any) -> list[float]:
    """The optimizer's learning rate after each of ``ReduceLROnPlateau.step(values[i])``."""
    cb = bg.ReduceLROnPlateau("val_loss", **kwargs)
    trainer = FakeTrainer(learning_rate)
    cb.set_trainer(trainer)
    rates = []
    for value in values:
        cb.step(value)
        rates.append(trainer.model.optimizer.learning_rate)
    return rates


@pytest.mark.parametrize(
    ("values", "kwargs", "expected"),
    [
        # patience 1, cooldown 1: reduced at the 2nd bad epoch, then 1 epoch not counted
        ([1.0] * 6, {"factor": 0.5, "patience": 1, "cooldown": 1, "threshold": 0.0},
         [1.0, 1.0, 0.5, 0.5, 0.5, 0.25]),
        # threshold 0.1: 0.76 beats 0.85 relatively (0.85 * 0.9 = 0.765), not absolutely (0.75)
        ([1.0, 0.95, 0.85, 0.76], {"factor": 0.5, "patience": 0, "threshold": 0.1},
         [1.0, 0.5, 0.5, 0.5]),
        ([1.0, 0.95, 0.85, 0.76],
         {"factor": 0.5, "patience": 0, "threshold": 0.1, "threshold_mode": "abs"},
         [1.0, 0.5, 0.5, 0.25]),
        # min_lr: never below 0.3, and a step to the same rate changes nothing
        ([1.0] * 5, {"factor": 0.5, "patience": 0, "min_lr": 0.3}, [1.0, 0.5, 0.3, 0.3, 0.3]),
        # eps: a reduction by 0.0125 <= eps is skipped
        ([1.0] * 5, {"factor": 0.5, "patience": 0, "eps": 0.02, "lr": 0.1},
         [0.1, 0.05, 0.025, 0.025, 0.025]),
        # and one by exactly eps (1.0 -> 0.5 is 0.5 > 0.25; 0.5 -> 0.25 is 0.25, not > 0.25)
        ([1.0] * 4, {"factor": 0.5, "patience": 0, "eps": 0.25}, [1.0, 0.5, 0.5, 0.5]),
        # mode max: growing values are improvements; the default factor 0.1
        ([0.5, 0.625, 0.75, 0.75, 0.75], {"patience": 1, "mode": "max"},
         [1.0, 1.0, 1.0, 1.0, 0.1]),
    ],
)  # fmt: skip
def test_reduce_lr_on_plateau_hand_traces(
    values: list[float], kwargs: dict[str, Any], expected: list[float]
) -> None:
    kwargs = dict(kwargs)
    rates = plateau_rates(values, kwargs.pop("lr", 1.0), **kwargs)
    assert rates == pytest.approx(expected, rel=1e-15)


PLATEAU_SETTINGS = [
    {"mode": "min", "factor": 0.5, "patience": 0},
    {"mode": "min", "factor": 0.1, "patience": 2, "threshold": 0.05},
    {"mode": "min", "factor": 0.5, "patience": 1, "threshold": 0.125, "threshold_mode": "abs"},
    {"mode": "max", "factor": 0.3, "patience": 1, "threshold": 0.0},
    {"mode": "max", "factor": 0.5, "patience": 0, "threshold": 0.25, "threshold_mode": "abs"},
    {"mode": "min", "factor": 0.5, "patience": 0, "cooldown": 2},
    {"mode": "max", "factor": 0.7, "patience": 1, "cooldown": 1, "min_lr": 0.2},
    {"mode": "min", "factor": 0.9, "patience": 0, "eps": 0.05},
    {"mode": "min", "factor": 0.5, "patience": 0, "eps": 0.25},
    {"mode": "min", "factor": 0.5, "patience": 3, "cooldown": 3, "min_lr": 1e-3, "eps": 0.0},
]


@pytest.mark.parametrize("settings", PLATEAU_SETTINGS, ids=lambda s: ",".join(map(str, s.values())))
@pytest.mark.parametrize("seed", range(3))
def test_reduce_lr_on_plateau_equals_torch(settings: dict[str, Any], seed: int) -> None:
    """The rate after each step equals ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s for
    the same metric values (random walks with ties and negative values)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(seed)
    values = [float(v) for v in np.cumsum(rng.integers(-2, 3, 30)) / 8 + rng.choice([-1.0, 1.0])]
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **settings)
    expected = []
    for value in values:
        scheduler.step(value)
        expected.append(optimizer.param_groups[0]["lr"])
    assert plateau_rates(values, 1.0, **settings) == expected
    assert len(set(expected)) > 1  # (the case does reduce)


def test_reduce_lr_on_plateau_scales_the_rate_of_the_next_step_too() -> None:
    """Under the book's decay the next step's rate is scaled by the same ratio."""
    cb = bg.ReduceLROnPlateau("val_loss", factor=0.5, patience=0)
    trainer = FakeTrainer(1.0, decay=0.1)
    opt = trainer.model.optimizer
    opt.iterations, opt.current_learning_rate = 3, 1 / 1.3
    cb.set_trainer(trainer)
    assert cb.step(1.0) is False and cb.step(1.0) is True
    assert opt.learning_rate == 0.5 and opt.current_learning_rate == pytest.approx(0.5 / 1.3)


def test_reduce_lr_on_plateau_changes_the_rate_training_uses(backend: bg.Backend) -> None:
    """One step an epoch and a flat val_loss: the rate halves after every epoch but the first
    (logs' learning_rate), and each epoch's update is ``w -= lr * dw`` with that epoch's
    rate."""

    class Steps(Callback):  # the parameters at each epoch's start, and the step's gradients
        def __init__(self) -> None:
            self.begin: list[Any] = []
            self.grads: list[Any] = []

        def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.begin.append(snapshot(self.model, with_state=False))

        def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            layers = [(i, layer) for i, layer in enumerate(self.model.layers) if layer.params]
            self.grads.append({f"layers.{i}.{name}": bg.to_numpy(getattr(layer, "d" + name))
                               for i, layer in layers for name in layer.params})  # fmt: skip

    model, steps = small_model(0.5), Steps()
    plateau = bg.ReduceLROnPlateau("val_loss", factor=0.5, patience=0)
    history = train(model, 4, [Script("val_loss", [1.0] * 4), plateau, steps], batch_size=60)
    rates = [0.5, 0.5, 0.25, 0.125]
    assert [row["learning_rate"] for row in history] == rates
    assert model.optimizer.learning_rate == model.optimizer.current_learning_rate == 0.0625
    after = [*steps.begin[1:], snapshot(model, with_state=False)]
    for rate, begin, grads, end in zip(rates, steps.begin, steps.grads, after, strict=True):
        for key, w in begin.items():
            expected = w - np.float32(rate) * grads[key].reshape(w.shape)
            np.testing.assert_allclose(end[key], expected, rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("split", [2, 5])
def test_reduce_lr_on_plateau_state_round_trip(split: int) -> None:
    values = [1.0, 0.875, 0.875, 0.875, 0.5, 0.625, 0.625, 0.625, 0.625, 0.25]
    kwargs = {"factor": 0.5, "patience": 1, "cooldown": 1, "threshold": 0.0}
    whole = plateau_rates(values, **kwargs)
    first = bg.ReduceLROnPlateau("val_loss", **kwargs)
    trainer = FakeTrainer(1.0)
    first.set_trainer(trainer)
    head = []
    for value in values[:split]:
        first.step(value)
        head.append(trainer.model.optimizer.learning_rate)
    second = bg.ReduceLROnPlateau("val_loss", **kwargs)
    second.set_state(json.loads(json.dumps(first.get_state())))
    resumed = FakeTrainer(trainer.model.optimizer.learning_rate)  # (the checkpoint's base rate)
    second.set_trainer(resumed)
    tail = []
    for value in values[split:]:
        second.step(value)
        tail.append(resumed.model.optimizer.learning_rate)
    assert head + tail == whole and len(set(whole)) > 2


# --- ModelCheckpoint --------------------------------------------------------------------------


def test_checkpoint_filepath_names_the_epoch_and_metrics(
    backend: bg.Backend, tmp_path: Path
) -> None:
    model, snaps = small_model(0.1, momentum=0.9), Snapshots()
    mc = bg.ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}-{val_loss:.3f}.npz")
    history = train(model, 3, [mc, snaps])
    names = [f"ckpt-{row['epoch']:02d}-{row['val_loss']:.3f}.npz" for row in history]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    assert mc.saved == [tmp_path / name for name in names]
    for epoch, name in enumerate(names, start=1):
        loaded = bg.Model.load(tmp_path / name)
        assert loaded.epochs_trained == epoch
        assert_bit_equal(snapshot(loaded), snaps.at[epoch])
        assert isinstance(loaded.saved_extra["callbacks"], dict)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_save_best_only_writes_only_on_improvement(backend: bg.Backend, tmp_path: Path) -> None:
    class Watch(Callback):  # the fixed file's content and inode after each epoch
        def __init__(self) -> None:
            self.seen: list[tuple[str, int]] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            path = tmp_path / "best.npz"
            self.seen.append((sha256(path), path.stat().st_ino))

    scripted = [3.0, 1.0, 2.0, 0.5, 0.5]  # improvements at epochs 1, 2, 4 (a tie is not one)
    model, snaps, watch = small_model(0.1, momentum=0.9), Snapshots(), Watch()
    best = bg.ModelCheckpoint(tmp_path / "best.npz", monitor="val_loss", save_best_only=True)
    each = bg.ModelCheckpoint(tmp_path / "best-{epoch}.npz", save_best_only=True)
    train(model, 5, [Script("val_loss", scripted), best, each, snaps, watch])
    files = {p.name for p in tmp_path.iterdir()}
    assert files == {"best.npz", "best-1.npz", "best-2.npz", "best-4.npz"}
    assert best.saved == [tmp_path / "best.npz"] * 3 and best.best == 0.5
    seen = watch.seen
    assert seen[0] != seen[1] and seen[2] == seen[1] and seen[3] != seen[2] and seen[4] == seen[3]
    for name, epoch in [("best.npz", 4), ("best-1.npz", 1), ("best-2.npz", 2), ("best-4.npz", 4)]:
        loaded = bg.Model.load(tmp_path / name)
        assert loaded.epochs_trained == epoch, name
        assert_bit_equal(snapshot(loaded), snaps.at[epoch])


def test_save_best_only_on_an_accuracy_keeps_the_highest(
    backend: bg.Backend, tmp_path: Path
) -> None:
    mc = bg.ModelCheckpoint(tmp_path / "acc-{epoch}.npz", monitor="val_accuracy",
                            save_best_only=True)  # fmt: skip
    train(small_model(), 4, [Script("val_accuracy", [0.5, 0.25, 0.75, 0.75]), mc])
    assert mc.mode == "max" and [p.name for p in mc.saved] == ["acc-1.npz", "acc-3.npz"]


def test_a_filepath_naming_a_missing_metric_is_refused_before_training(
    backend: bg.Backend, tmp_path: Path
) -> None:
    model = small_model()
    match = (r"ModelCheckpoint: filepath '.*ckpt-\{val_loss:.3f\}.npz' names \{val_loss\}, "
             r"which is not a metric of this training \(pass validation_data to train\); it may "
             r"name epoch, loss, regularization_loss, accuracy, learning_rate$")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        train(model, 2, [bg.ModelCheckpoint(tmp_path / "ckpt-{val_loss:.3f}.npz")], val=False)
    with pytest.raises(ValueError, match=r"names \{step\}, which is not a metric"):
        train(model, 2, [bg.ModelCheckpoint(tmp_path / "ckpt-{step}.npz")])
    assert model.epochs_trained == 0 and list(tmp_path.iterdir()) == []


def test_a_failed_save_leaves_the_previous_checkpoint_whole(
    backend: bg.Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second epoch's save fails half-way (a full disk): the error comes through, the
    file still holds epoch 1, whole, and no temporary file is left."""
    real_savez = np.savez
    saves = []

    def full_disk(file: Any, **arrays: Any) -> None:
        saves.append(1)
        if len(saves) == 1:
            return real_savez(file, **arrays)
        file.write(b"PK\x03\x04 half of an archive")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.np, "savez", full_disk)
    model, snaps = small_model(0.1, momentum=0.9), Snapshots()
    with pytest.raises(OSError, match="No space left on device"):
        train(model, 3, [snaps, bg.ModelCheckpoint(tmp_path / "last.npz")])
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]
    loaded = bg.Model.load(tmp_path / "last.npz")
    assert loaded.epochs_trained == 1
    assert_bit_equal(snapshot(loaded), snaps.at[1])


# --- CSVLogger --------------------------------------------------------------------------------


def read_csv(path: Path, separator: str = ",") -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f, delimiter=separator)
        return list(reader.fieldnames or []), list(reader)


def as_numbers(rows: list[dict[str, str]]) -> list[dict[str, float]]:
    return [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in rows]


def test_csv_logger_rows_equal_the_history(backend: bg.Backend, tmp_path: Path) -> None:
    """Exact values (a float's text reads back to the same float), each row on disk before
    the next callback runs, and the JSON-lines twin."""

    class Lines(Callback):  # the CSV file's line count at each epoch's end
        def __init__(self) -> None:
            self.counts: list[int] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            self.counts.append(len((tmp_path / "m.csv").read_text().splitlines()))

    logger, lines = bg.CSVLogger(tmp_path / "m.csv", jsonl=tmp_path / "m.jsonl"), Lines()
    history = train(small_model(), 3, [logger, lines])
    columns, rows = read_csv(tmp_path / "m.csv")
    assert columns == VAL_KEYS and as_numbers(rows) == history
    jsonl = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert jsonl == history
    assert lines.counts == [2, 3, 4]  # header + the rows so far


def test_csv_logger_append_continues_the_files(backend: bg.Backend, tmp_path: Path) -> None:
    model = small_model()
    paths = {"filename": tmp_path / "m.csv", "jsonl": tmp_path / "m.jsonl"}
    first = train(model, 2, [bg.CSVLogger(**paths)])
    second = train(model, 2, [bg.CSVLogger(**paths, append=True)])
    text = (tmp_path / "m.csv").read_text()
    assert text.count("epoch,loss") == 1  # one header
    rows = read_csv(tmp_path / "m.csv")[1]
    assert as_numbers(rows) == first + second and [r["epoch"] for r in rows] == list("1234")
    jsonl = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert jsonl == first + second
    third = train(model, 1, [bg.CSVLogger(**paths)])  # append=False: afresh
    assert as_numbers(read_csv(tmp_path / "m.csv")[1]) == third
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 1


def test_csv_logger_columns_and_separator(backend: bg.Backend, tmp_path: Path) -> None:
    """``columns`` chooses the fields and their order; one a row lacks is left empty."""
    logger = bg.CSVLogger(tmp_path / "m.csv", separator=";",
                          columns=["val_loss", "epoch", "seconds"])  # fmt: skip
    history = train(small_model(), 2, [logger])
    expected = ["val_loss;epoch;seconds"] + [f"{r['val_loss']!r};{r['epoch']};" for r in history]
    assert (tmp_path / "m.csv").read_text().splitlines() == expected


# --- TerminateOnNaN ---------------------------------------------------------------------------


class Poison(Callback):
    """Puts an infinity in the first weight after step 2 of the model's second epoch: the
    next steps' losses are NaN."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.model.epochs_trained == 1 and batch == 1:
            self.model.layers[0].weights[0, 0] = math.inf


def nan_run(guard: bg.TerminateOnNaN, epochs: int = 4) -> tuple[bg.Model, Snapshots, Any]:
    """Train with ``guard`` and the poison; returns the model, its snapshots and the
    history, or the error raised."""
    model, snaps = small_model(0.1, momentum=0.9, decay=0.01), Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NumPy's notes on inf - inf
        try:
            result: Any = train(model, epochs, [guard, snaps, Poison()])
        except bg.NonFiniteLossError as e:
            result = e
    return model, snaps, result


STEP_3 = r"Model.train: the loss became nan at epoch 2, step 3 of 4; layer 0 Dense\(2, 8\) "


def test_terminate_on_nan_raises_naming_the_epoch_and_restores(backend: bg.Backend) -> None:
    model, snaps, error = nan_run(bg.TerminateOnNaN("raise"))
    assert isinstance(error, bg.NonFiniteLossError)
    match = STEP_3 + r".*parameters and optimizer state are back at the end of epoch 1\. Lower"
    assert re.search(match, str(error)), str(error)
    assert_bit_equal(snapshot(model), snaps.at[1])  # momentums included
    assert counters(model) == snaps.counters[1]


def test_terminate_on_nan_stop_returns_the_finite_history(backend: bg.Backend) -> None:
    recorder = Recorder()
    model, snaps = small_model(0.1, momentum=0.9, decay=0.01), Snapshots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        history = train(model, 4, [bg.TerminateOnNaN("stop"), snaps, Poison(), recorder])
    assert [row["epoch"] for row in history] == [1]
    assert_bit_equal(snapshot(model), snaps.at[1])
    assert counters(model) == snaps.counters[1]
    # the bad epoch reaches no on_epoch_end; on_train_end still runs
    assert [c[1] for c in recorder.calls if c[0] == "epoch_end"] == [0]
    assert recorder.calls[-1] == ("train_end", {"history": history})


@pytest.mark.parametrize("mode", ["raise", "stop"])
def test_terminate_on_nan_without_restore_leaves_the_state(backend: bg.Backend, mode: str) -> None:
    model, snaps, result = nan_run(bg.TerminateOnNaN(mode, restore=False))
    if mode == "raise":
        assert isinstance(result, bg.NonFiniteLossError)
        assert re.search(STEP_3 + r".*are left as they are \(TerminateOnNaN\(restore=False\)\)",
                         str(result)), str(result)  # fmt: skip
    else:
        assert [row["epoch"] for row in result] == [1]
    now = snapshot(model)
    assert not np.isfinite(now["layers.0.weights"]).all()
    assert model.optimizer.iterations == 2 * STEPS  # the bad epoch's steps stay taken
    assert model.epochs_trained == 1  # (not counted: it is not in the history)
    assert not all(np.array_equal(now[k], v, equal_nan=True) for k, v in snaps.at[1].items())


def test_one_terminate_on_nan_only() -> None:
    model = small_model()
    with pytest.raises(ValueError, match=r"Model.train: at most one TerminateOnNaN, got \["):
        train(model, 1, [bg.TerminateOnNaN(), bg.TerminateOnNaN("stop")])
    with pytest.raises(ValueError, match=r"on_nonfinite and a TerminateOnNaN callback both say"):
        train(model, 1, [bg.TerminateOnNaN()], on_nonfinite="stop")
    assert model.epochs_trained == 0


# --- what the user sees -----------------------------------------------------------------------


def line(row: dict[str, float]) -> str:
    """The summary line, written out by hand."""
    text = (f"epoch {row['epoch']}: loss {row['loss']:.4f} (reg {row['regularization_loss']:.4f})"
            f", acc {row['accuracy']:.4f}, lr {row['learning_rate']:.6g}")  # fmt: skip
    if "val_loss" in row:
        text += f", val_loss {row['val_loss']:.4f}, val_acc {row['val_accuracy']:.4f}"
    return text


def test_progress_bar_writes_to_the_given_file(backend: bg.Backend) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    bar = bg.ProgressBar(file=out)
    history = train(small_model(), 3, [bar])
    text = out.getvalue()
    last = history[-1]
    assert "3/3" in text and "epoch" in text
    shown = f"loss={last['loss']:.4f}, acc={last['accuracy']:.3f}, "
    shown += f"val_acc={last['val_accuracy']:.3f}"
    assert shown in text
    assert bar._bar is None  # closed at the end


def test_progress_bar_without_tqdm_reports_to_the_fallback(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # import tqdm raises ImportError
    lines: list[str] = []
    history = train(small_model(), 2, [bg.ProgressBar(fallback=lines.append)])
    assert lines == [line(row) for row in history]


def test_print_epochs_every_n_and_the_last(backend: bg.Backend) -> None:
    lines: list[str] = []
    model = small_model(0.1, decay=0.01)
    history = train(model, 5, [PrintEpochs(2, report=lines.append)], val=False)
    assert lines == [line(history[i]) for i in (1, 3, 4)]
    assert "val_loss" not in lines[0]
    lines.clear()  # counting every epoch the model trained: 6 and 8, then the last, 9
    more = train(model, 4, [PrintEpochs(2, report=lines.append)])
    assert lines == [line(more[i]) for i in (0, 2, 3)] and more[0]["epoch"] == 6
    lines.clear()
    train(model, 2, [PrintEpochs(0, report=lines.append)])
    assert lines == []


def test_print_every_prints_the_epoch_a_callback_stopped_at(
    backend: bg.Backend, capsys: pytest.CaptureFixture[str]
) -> None:
    """``Model.train(print_every=10)``: only the last epoch, the one after which a callback
    (before it in the list) stopped training."""
    stop = bg.LambdaCallback(on_epoch_end=lambda epoch, logs: setattr(
        stop.trainer, "stop_training", epoch == 2))  # fmt: skip
    capsys.readouterr()
    history = train(small_model(), 20, [stop], print_every=10)
    assert len(history) == 3
    assert capsys.readouterr().out.splitlines() == [line(history[-1])]


# --- reuse, checks before anything is written, order, closing on errors ------------------------


def test_a_reused_early_stopping_starts_afresh_for_another_model(backend: bg.Backend) -> None:
    """As in Keras, each training starts from no best (a callback reused for a second model
    does not measure it against the first, nor put the first model's weights back)."""
    es = bg.EarlyStopping("val_loss", patience=2, restore_best_weights=True)
    train(small_model(), 3, [Script("val_loss", [0.25, 0.5, 0.5]), es])
    assert es.best == 0.25 and es.stopped_epoch == 3
    second, snaps = small_model(0.05), Snapshots()
    train(second, 3, [Script("val_loss", [2.0, 1.0, 1.5]), es, snaps])
    assert (es.best, es.best_epoch, es.stopped_epoch) == (1.0, 2, 0)
    assert_bit_equal(params_only(snapshot(second)), params_only(snaps.at[2]))


def test_a_reused_plateau_and_checkpoint_start_afresh(tmp_path: Path) -> None:
    plateau = bg.ReduceLROnPlateau("val_loss", patience=0, factor=0.5)
    best = bg.ModelCheckpoint(tmp_path / "best.npz", save_best_only=True)
    train(small_model(), 2, [Script("val_loss", [0.25, 0.5]), plateau, best])
    assert plateau.best == 0.25 and best.best == 0.25
    model = small_model()
    train(model, 1, [Script("val_loss", [3.0]), plateau, best])
    assert plateau.best == 3.0 and best.best == 3.0  # (not 0.25: another model)
    assert bg.Model.load(tmp_path / "best.npz").epochs_trained == 1  # this model's epoch 1


def test_set_state_before_train_resumes_instead_of_starting_afresh() -> None:
    es = bg.EarlyStopping("val_loss", patience=2)
    es.set_state({"best": 0.25, "best_epoch": 1, "wait": 1})
    history = train(small_model(), 4, [Script("val_loss", [9.0, 0.5, 0.5, 0.5]), es])
    assert es.best == 0.25 and es.stopped_epoch == 2 and len(history) == 2


def test_a_resume_without_the_best_weights_restores_only_a_later_best() -> None:
    """After ``set_state`` the best epoch's weights are unknown: the first epoch of the
    resumed run is not taken for them (it is not the best); a later improvement is."""
    model, snaps = small_model(), Snapshots()
    es = bg.EarlyStopping("val_loss", patience=5, restore_best_weights=True)
    es.set_state({"best": 0.25, "best_epoch": 1, "wait": 0})
    train(model, 2, [Script("val_loss", [1.0, 2.0]), es, snaps])
    assert es.best_weights is None and es.best_epoch == 1
    assert_bit_equal(snapshot(model), snaps.at[2])  # nothing put back
    model, snaps = small_model(), Snapshots()
    es.set_state({"best": 0.25, "best_epoch": 1, "wait": 0})
    train(model, 3, [Script("val_loss", [1.0, 0.125, 2.0]), es, snaps])
    assert es.best_epoch == 2
    assert_bit_equal(params_only(snapshot(model)), params_only(snaps.at[2]))


def test_a_refused_callback_leaves_the_files_of_the_others_untouched(tmp_path: Path) -> None:
    """Every callback's check runs before any on_train_begin: the CSV log given first is not
    truncated when the checkpoint after it names a metric this training does not have."""
    log = tmp_path / "m.csv"
    log.write_text("epoch,loss\n1,0.5\n")
    logger = bg.CSVLogger(log)
    callbacks = [logger, bg.ModelCheckpoint(tmp_path / "ck-{val_loss}.npz")]
    model = small_model()
    with pytest.raises(ValueError, match=r"names \{val_loss\}.*pass validation_data"):
        train(model, 2, callbacks, val=False)
    assert log.read_text() == "epoch,loss\n1,0.5\n" and model.epochs_trained == 0


@pytest.mark.parametrize(
    ("filepath", "match"),
    [("ck-{epoch.npz", r"ModelCheckpoint: filepath '.*ck-\{epoch.npz' is not a valid format"),
     ("ck-{epoch:03q}.npz", r"ModelCheckpoint: filepath '.*ck-\{epoch:03q\}.npz' cannot be "
                            r"formatted with an epoch's metrics: Unknown format code 'q'")],
)  # fmt: skip
def test_a_bad_checkpoint_filepath_is_named_before_training(
    filepath: str, match: str, tmp_path: Path
) -> None:
    model = small_model()
    with pytest.raises(ValueError, match=match):
        train(model, 1, [bg.ModelCheckpoint(tmp_path / filepath)])
    assert model.epochs_trained == 0 and list(tmp_path.iterdir()) == []


def test_files_are_closed_when_training_raises(tmp_path: Path) -> None:
    logger = bg.CSVLogger(tmp_path / "m.csv")
    model = small_model(0.1, momentum=0.9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(bg.NonFiniteLossError):
            train(model, 4, [logger, Poison()])
    assert logger._files == []  # closed, with epoch 1's row on disk
    assert len(list(csv.DictReader((tmp_path / "m.csv").open()))) == 1


def test_a_checkpoint_before_a_callback_it_would_save_stale_is_refused(tmp_path: Path) -> None:
    es = bg.EarlyStopping("val_loss", patience=3)
    checkpoint_ = bg.ModelCheckpoint(tmp_path / "ck.npz")
    with pytest.raises(ValueError, match=r"ModelCheckpoint\(.*saves the callbacks' states, but "
                                         r"EarlyStopping\(.*comes after it"):  # fmt: skip
        train(small_model(), 1, [checkpoint_, es])
    train(small_model(), 1, [es, checkpoint_])  # (the order that saves this epoch's state)
    assert bg.Model.load(tmp_path / "ck.npz").saved_extra["callbacks"]["1:EarlyStopping"] == (
        es.get_state())  # fmt: skip


@pytest.mark.parametrize("given", [5, bg.EarlyStopping, "EarlyStopping"])
def test_callbacks_that_are_no_list_are_named(given: Any) -> None:
    with pytest.raises(TypeError, match=r"Model.train: callbacks must be a list of Callback "
                                        rf"objects, got {re.escape(repr(given))}"):  # fmt: skip
        small_model().train(X, Y, epochs=1, callbacks=given, print_every=0)
