"""No device-to-host read in a training step, counted on the GPU stand-in (array-api-strict's
fake device: tests/host_reads.py counts every conversion to the host), and a constant number
of device operations at each epoch's end however many steps the epoch has."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.trainer import Trainer
from tests.host_reads import HostReads

RNG = np.random.default_rng(7)
X = RNG.standard_normal((256, 4)).astype(np.float32)
Y = (X[:, 0] > 0).astype(np.int64) + (X[:, 1] > 0.5)  # 3 classes


@pytest.fixture
def strict() -> Iterator[bg.Backend]:
    with bg.use_backend("array_api_strict") as b:
        yield b


@pytest.mark.parametrize("clip_norm", [None, 0.5])
def test_a_hand_written_loop_reads_nothing_per_step(
    strict: bg.Backend, clip_norm: float | None
) -> None:
    """The nnfs loop (Dense, ReLU, Dense, SoftmaxCrossEntropy, Accuracy, SGD with momentum)
    on device labels sliced afresh each step: 0 reads a step, labels checked all the same;
    with ``clip_gradients`` first when clipping by norm (the norm stays on the device)."""
    X_dev, y_dev = bg.asarray(X), bg.asarray(Y)
    dense1, relu, dense2 = bg.Dense(4, 16), bg.ReLU(), bg.Dense(16, 3)
    loss, accuracy = bg.SoftmaxCrossEntropy(), bg.Accuracy()
    optimizer = bg.SGD(learning_rate=0.5, momentum=0.9, clip_norm=clip_norm)
    losses = []
    with HostReads() as reads:
        for step in range(48):
            start = reads.count
            lo = (step % 8) * 32
            xb, yb = X_dev[lo : lo + 32, :], y_dev[lo : lo + 32]  # fresh arrays each step
            dense1.forward(xb)
            relu.forward(dense1.output)
            dense2.forward(relu.output)
            losses.append(loss.forward(dense2.output, yb))
            accuracy.calculate(loss.output, yb)
            loss.backward(loss.output, yb)
            dense2.backward(loss.dinputs)
            relu.backward(dense2.dinputs)
            dense1.backward(relu.dinputs)
            optimizer.pre_update_params()
            if clip_norm is not None:
                optimizer.clip_gradients([dense1, dense2])
            optimizer.update_params(dense1)
            optimizer.update_params(dense2)
            optimizer.post_update_params()
            assert reads.since(start) == [], f"step {step}"
        loss.check_labels()  # the checks were made: reading them now finds all good
        accuracy.check_labels()
    values = [float(v) for v in losses]
    assert np.mean(values[-8:]) < 0.8 * np.mean(values[:8])  # a real loop: it learns


def model(optimizer: Any = None) -> bg.Model:
    m = bg.Model()
    for layer in (bg.Dense(4, 16), bg.ReLU(), bg.Dense(16, 3)):
        m.add(layer)
    optimizer = bg.SGD(momentum=0.9) if optimizer is None else optimizer
    return m.set(loss=bg.SoftmaxCrossEntropy(), optimizer=optimizer).finalize()


OPTIMIZERS = {
    "sgd": lambda: None,
    # clipping and weight decay keep their factors on the device
    "clip_norm": lambda: bg.SGD(momentum=0.9, weight_decay=1e-3, clip_norm=0.5),
    "adamw_clip_value": lambda: bg.AdamW(0.01, clip_value=0.1),
}


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("y_on_device", [False, True])
def test_model_train_reads_once_an_epoch(
    strict: bg.Backend, y_on_device: bool, optimizer: str
) -> None:
    """Reads per epoch do not depend on the number of steps: one (the epoch's metrics and
    the parameters' finiteness, in one copy)."""
    y = bg.asarray(Y) if y_on_device else Y
    per_epoch = {}
    for batch_size in (128, 16):  # 2 and 16 steps an epoch
        counts = []
        for epochs in (1, 3):
            m = model(OPTIMIZERS[optimizer]())
            with HostReads() as reads:
                m.train(bg.asarray(X), y, epochs=epochs, batch_size=batch_size, print_every=0)
            counts.append(reads.count)
        per_epoch[batch_size] = (counts[1] - counts[0]) / 2
    assert per_epoch == {128: 1, 16: 1}


def count_ops(monkeypatch: pytest.MonkeyPatch, counts: dict[str, int], phase: list[str]) -> None:
    """Count every call of an array_api_strict namespace function, by ``phase[0]``."""
    import array_api_strict as xps

    for name in xps.__all__:
        function = getattr(xps, name)
        if callable(function) and not isinstance(function, type) and name[0].islower():

            def counted(*args: Any, _f: Any = function, _n: str = name, **kw: Any) -> Any:
                key = f"{phase[0]}:{_n}"
                counts[key] = counts.get(key, 0) + 1
                return _f(*args, **kw)

            monkeypatch.setattr(xps, name, counted)


def test_the_epoch_end_costs_a_constant_number_of_operations(
    strict: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside the steps an epoch runs the same device operations for 2 steps as for 64
    (one stack and one cast per dtype of the per-step values, not one cast a value), besides
    the batch gathers (``take``, one for X and one for y a step)."""
    outside = {}
    for batch_size in (128, 16, 4):  # 2, 16 and 64 steps
        m = model()
        step = Trainer._train_step
        counts: dict[str, int] = {}
        phase = ["epoch"]

        def in_step(self: Trainer, *args: Any, _step: Any = step, _phase: Any = phase) -> Any:
            _phase[0] = "step"
            try:
                return _step(self, *args)
            finally:
                _phase[0] = "epoch"

        X_dev, y_dev = bg.asarray(X), bg.asarray(Y)
        with monkeypatch.context() as patch:
            patch.setattr(Trainer, "_train_step", in_step)
            count_ops(patch, counts, phase)
            m.train(X_dev, y_dev, epochs=1, batch_size=batch_size, print_every=0)
        steps = -(-len(X) // batch_size)
        assert counts.pop("epoch:take") == 2 * steps
        outside[steps] = {k: v for k, v in counts.items() if k.startswith("epoch:")}
        assert sum(v for k, v in counts.items() if k.startswith("step:")) >= steps
    assert outside[2] == outside[16] == outside[64], outside
    assert outside[2]["epoch:astype"] <= 3  # one cast a dtype (float32 values, bool flags)
