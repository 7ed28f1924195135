"""Learning-rate schedules: hand-written formulas, torch.optim.lr_scheduler on the same steps,
SGD on a small model against torch's SGD under each schedule, the base rate read at every
step, bad settings, and exact save / load / resume mid-schedule."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import checkpoint, registry
from backprop_gpu.datasets import spiral_data

from .test_model import params

LR = 0.3


def rates(schedule: bg.Schedule, steps: int, lr: float = LR) -> list[float]:
    """The rate of each of the first ``steps`` steps, as an optimizer sees them."""
    opt = bg.SGD(lr, schedule=schedule)
    out = []
    for _ in range(steps):
        opt.pre_update_params()
        out.append(opt.current_learning_rate)
        opt.post_update_params()
    return out


# --- formulas --------------------------------------------------------------------------------


def test_inverse_time_decay_is_the_books_decay() -> None:
    assert rates(bg.InverseTimeDecay(0.1), 3, 0.5) == [0.5, 0.5 / 1.1, 0.5 / 1.2]
    assert rates(bg.InverseTimeDecay(), 3) == [LR] * 3  # decay 0: constant


def test_default_schedule_is_the_books_decay_bit_for_bit() -> None:
    """``SGD(lr, decay=d)`` keeps the rate the book computes, ``lr / (1 + d * t)``."""
    opt = bg.SGD(0.7, decay=3e-3)
    assert opt.schedule == bg.InverseTimeDecay(3e-3) and opt.decay == 3e-3
    got = []
    for _ in range(50):
        opt.pre_update_params()
        got.append(opt.current_learning_rate)
        opt.post_update_params()
    assert got == [0.7 / (1.0 + 3e-3 * t) for t in range(50)]
    assert repr(opt) == (
        "SGD(learning_rate=0.7, decay=0.003, clip_norm=None, clip_value=None, momentum=0.0, "
        "nesterov=False, weight_decay=0.0)"
    )
    assert opt.get_config() == {
        "learning_rate": 0.7, "decay": 3e-3, "momentum": 0.0, "nesterov": False,
        "clip_norm": None, "clip_value": None, "weight_decay": 0.0,
    }  # fmt: skip


def test_step_decay() -> None:
    # 0.3 for steps 0-2, 0.15 for 3-5, 0.075 for 6-8, 0.0375 at 9
    assert rates(bg.StepDecay(3, gamma=0.5), 10) == [0.3] * 3 + [0.15] * 3 + [0.075] * 3 + [0.0375]
    assert rates(bg.StepDecay(2), 5) == [LR, LR, LR * 0.1, LR * 0.1, LR * 0.1**2]


def test_exponential_decay() -> None:
    got = rates(bg.ExponentialDecay(0.9), 30)
    assert got[:3] == [LR, LR * 0.9, LR * 0.9**2]
    np.testing.assert_allclose(got, LR * 0.9 ** np.arange(30), rtol=1e-15)


def test_cosine_decay_with_warmup() -> None:
    # W = 4 warmup steps from 0.25 lr, then half a cosine over T - W = 6 steps to 0.01
    got = rates(bg.CosineDecay(10, warmup_steps=4, min_learning_rate=0.01,
                               warmup_start_factor=0.25), 13)  # fmt: skip
    warm = [LR * (0.25 + 0.75 * t / 4) for t in range(4)]
    assert got[:4] == pytest.approx(warm, rel=1e-15)
    assert got[4] == LR  # the peak, right after the warmup
    cos = [0.01 + (LR - 0.01) * (1 + math.cos(math.pi * k / 6)) / 2 for k in range(6)]
    assert got[4:10] == pytest.approx(cos, rel=1e-15)
    assert got[7] == pytest.approx((LR + 0.01) / 2, rel=1e-15)  # halfway down
    assert got[10:] == [0.01] * 3  # at total_steps and after: the floor


def test_cosine_decay_defaults_start_at_zero_and_end_at_zero() -> None:
    got = rates(bg.CosineDecay(8, warmup_steps=2), 9)
    assert got[:3] == [0.0, LR / 2, LR]
    assert got[8] == 0.0
    assert rates(bg.CosineDecay(4), 5) == pytest.approx(
        [LR, LR * (1 + math.sqrt(0.5)) / 2, LR / 2, LR * (1 - math.sqrt(0.5)) / 2, 0.0],
        rel=1e-15, abs=1e-17,
    )  # fmt: skip


def test_one_cycle() -> None:
    """total 10, pct_start 0.3: up from lr/25 to lr at step 2 (= 0.3 * 10 - 1), down to
    lr/25/1e4 at step 9, then held."""
    got = rates(bg.OneCycle(10), 12)
    initial, final = LR / 25, LR / 25 / 1e4
    # (torch's peak step is 0.3 * 10 - 1 = 2.0000000000000004: rounding, in torch too)
    assert got[0] == pytest.approx(initial, rel=1e-15) and got[2] == pytest.approx(LR, rel=1e-15)
    assert got[9] == pytest.approx(final, rel=1e-12)
    assert got[1] == pytest.approx(initial + (LR - initial) * (1 - math.cos(math.pi / 2)) / 2)
    down = [final + (LR - final) * (1 + math.cos(math.pi * (t - 2) / 7)) / 2 for t in range(2, 10)]
    assert got[2:10] == pytest.approx(down, rel=1e-14)
    assert got[10:] == [got[9]] * 2
    linear = rates(bg.OneCycle(5, pct_start=0.6, anneal_strategy="linear", div_factor=4.0,
                               final_div_factor=2.0), 5)  # fmt: skip
    # peak at step 2: 0.075, 0.1875, 0.3; then down to 0.0375 at step 4
    assert linear == pytest.approx([0.075, 0.1875, 0.3, 0.16875, 0.0375], rel=1e-15)


# --- torch.optim.lr_scheduler on the same steps ------------------------------------------------


def torch_rates(make: Callable[[Any], Any], steps: int, lr: float = LR) -> list[float]:
    """The rate torch's SGD uses at each of ``steps`` steps under scheduler ``make(opt)``
    (stepped once per optimizer step, after it)."""
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (SequentialLR's notes on how it calls step)
        scheduler = make(opt)
        out = []
        for _ in range(steps):
            out.append(opt.param_groups[0]["lr"])
            p.grad = torch.zeros(1)
            opt.step()
            scheduler.step()
    return out


def _torch_cases() -> list[Any]:
    def L() -> Any:
        return pytest.importorskip("torch").optim.lr_scheduler

    def warmup_cosine(opt: Any) -> Any:
        sched = L()
        return sched.SequentialLR(
            opt,
            [sched.LinearLR(opt, 0.1, 1.0, total_iters=5),
             sched.CosineAnnealingLR(opt, T_max=15, eta_min=0.01)],
            milestones=[5],
        )  # fmt: skip

    return [
        pytest.param(lambda o: L().LambdaLR(o, lambda t: 1 / (1 + 0.1 * t)),
                     bg.InverseTimeDecay(0.1), 40, id="inverse-time"),
        pytest.param(lambda o: L().StepLR(o, step_size=3, gamma=0.5),
                     bg.StepDecay(3, gamma=0.5), 20, id="step"),
        pytest.param(lambda o: L().ExponentialLR(o, gamma=0.9),
                     bg.ExponentialDecay(0.9), 60, id="exponential"),
        pytest.param(lambda o: L().CosineAnnealingLR(o, T_max=20),
                     bg.CosineDecay(20), 21, id="cosine"),
        pytest.param(warmup_cosine, bg.CosineDecay(20, warmup_steps=5, min_learning_rate=0.01,
                                                   warmup_start_factor=0.1), 21,
                     id="warmup-cosine"),
        pytest.param(lambda o: L().OneCycleLR(o, max_lr=LR, total_steps=20,
                                              cycle_momentum=False),
                     bg.OneCycle(20), 20, id="one-cycle"),
        pytest.param(lambda o: L().OneCycleLR(o, max_lr=LR, total_steps=23, pct_start=0.25,
                                              anneal_strategy="linear", div_factor=10.0,
                                              final_div_factor=100.0, cycle_momentum=False),
                     bg.OneCycle(23, 0.25, "linear", 10.0, 100.0), 23, id="one-cycle-linear"),
    ]  # fmt: skip


TORCH_CASES = _torch_cases()


@pytest.mark.parametrize(("make", "schedule", "steps"), TORCH_CASES)
def test_schedule_equals_torch(
    make: Callable[[Any], Any], schedule: bg.Schedule, steps: int
) -> None:
    """torch's schedulers compute most rates from the previous one (chained), ours from the
    step: the same numbers up to rounding (StepLR and OneCycleLR: the same bits)."""
    expected = torch_rates(make, steps)
    np.testing.assert_allclose(rates(schedule, steps), expected, rtol=1e-14, atol=1e-17)


@pytest.mark.parametrize(("make", "schedule", "steps"), TORCH_CASES)
def test_sgd_under_a_schedule_equals_torch(
    backend: bg.Backend, make: Callable[[Any], Any], schedule: bg.Schedule, steps: int
) -> None:
    """A 3 -> 4 -> 2 ReLU net with MSE, float64, ``steps`` steps of SGD under ``schedule``
    here and under torch's scheduler there: the same weights."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(8, 3)), rng.normal(size=(8, 2))
    W1, B1 = rng.normal(size=(3, 4)), rng.normal(size=(1, 4)) * 0.1
    W2, B2 = rng.normal(size=(4, 2)), rng.normal(size=(1, 2)) * 0.1

    dense1 = bg.Dense(3, 4, weights=W1, biases=B1, dtype="float64")
    relu, dense2 = bg.ReLU(), bg.Dense(4, 2, weights=W2, biases=B2, dtype="float64")
    loss = bg.MeanSquaredError()
    x, y = bg.asarray(X, "float64"), bg.asarray(Y, "float64")
    opt = bg.SGD(LR, schedule=schedule)
    for _ in range(steps):
        out = dense2.forward(relu.forward(dense1.forward(x)))
        loss.forward(out, y)
        dense1.backward(relu.backward(dense2.backward(loss.backward(out, y))))
        opt.step([dense1, relu, dense2])

    tensors = [torch.tensor(a, requires_grad=True) for a in (W1, B1, W2, B2)]
    w1, b1, w2, b2 = tensors
    opt_t = torch.optim.SGD(tensors, lr=LR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scheduler = make(opt_t)
        for _ in range(steps):
            opt_t.zero_grad()
            out_t = torch.relu(torch.tensor(X) @ w1 + b1) @ w2 + b2
            ((out_t - torch.tensor(Y)) ** 2).mean().backward()
            opt_t.step()
            scheduler.step()
    for got, want in zip((dense1.weights, dense1.biases, dense2.weights, dense2.biases),
                         tensors, strict=True):  # fmt: skip
        np.testing.assert_allclose(bg.to_numpy(got), want.detach().numpy(), rtol=1e-12, atol=1e-14)
    assert not np.allclose(bg.to_numpy(dense1.weights), W1)  # it did train


def test_momentum_under_a_schedule_keeps_each_steps_rate(backend: bg.Backend) -> None:
    """``v = 0.9 v - lr_t dw; w += v`` with lr_t halving every step (Keras' rule; see SGD)."""
    rng = np.random.default_rng(1)
    W0, grads = rng.normal(size=(2, 3)), rng.normal(size=(4, 2, 3))
    layer = bg.Dense(2, 3, weights=W0, biases=np.zeros((1, 3)), dtype="float64")
    opt = bg.SGD(0.4, momentum=0.9, schedule=bg.StepDecay(1, gamma=0.5))
    v, w = np.zeros_like(W0), W0.copy()
    for t, dw in enumerate(grads):
        layer.dweights = bg.asarray(dw, "float64")
        layer.dbiases = bg.asarray(np.zeros((1, 3)), "float64")
        opt.step([layer])
        v = 0.9 * v - 0.4 * 0.5**t * dw
        w = w + v
    np.testing.assert_allclose(bg.to_numpy(layer.weights), w, rtol=1e-14)
    np.testing.assert_allclose(bg.to_numpy(layer.weight_momentums), v, rtol=1e-14)


# --- the base rate, read at every step ---------------------------------------------------------


@pytest.mark.parametrize(
    "schedule",
    [
        bg.InverseTimeDecay(0.1),
        bg.StepDecay(2),
        bg.CosineDecay(10, warmup_steps=3),
        bg.OneCycle(10),
    ],
    ids=repr,
)
def test_changing_learning_rate_scales_the_schedule(schedule: bg.Schedule) -> None:
    """What ReduceLROnPlateau does: ``optimizer.learning_rate *= 0.5`` between steps halves
    every later step's rate (the schedule keeps no copy of the base rate)."""
    opt = bg.SGD(LR, schedule=schedule)
    got = []
    for t in range(8):
        if t == 4:
            opt.learning_rate *= 0.5
        opt.pre_update_params()
        got.append(opt.current_learning_rate)
        opt.post_update_params()
    expected = [schedule(LR, t) for t in range(4)] + [schedule(LR * 0.5, t) for t in range(4, 8)]
    assert got == expected
    assert got[4:] == pytest.approx([r / 2 for r in rates(schedule, 8)[4:]], rel=1e-15)


def test_decay_assignment_still_sets_the_books_decay() -> None:
    opt = bg.SGD(1.0)
    opt.decay = 0.5
    opt.iterations = 2
    opt.pre_update_params()
    assert opt.current_learning_rate == 0.5 and opt.schedule == bg.InverseTimeDecay(0.5)
    cosine = bg.SGD(1.0, schedule=bg.CosineDecay(5))
    assert cosine.decay == 0.0
    with pytest.raises(ValueError, match=r"SGD: decay cannot be set under schedule=CosineDecay"):
        cosine.decay = 0.1


def test_a_bad_rate_from_a_schedule_is_named() -> None:
    class Broken(bg.Schedule):
        def __call__(self, learning_rate: float, iteration: int) -> float:
            return -learning_rate if iteration == 1 else learning_rate

        def get_config(self) -> dict[str, Any]:
            return {}

    opt = bg.Adam(0.01, schedule=Broken())
    opt.pre_update_params()
    opt.post_update_params()
    match = (r"Adam: schedule Broken\(\) gave the learning rate -0.01 at iteration 1 "
             r"\(base 0.01\); expected a finite number >= 0")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        opt.pre_update_params()


class Constant(bg.Schedule):
    """Whatever ``value`` is, at every step (to try what an optimizer takes from a schedule)."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __call__(self, learning_rate: float, iteration: int) -> float:
        return self.value  # type: ignore[no-any-return]

    def get_config(self) -> dict[str, Any]:
        return {"value": self.value}


@pytest.mark.parametrize(
    ("value", "expected"), [(np.float64(0.25), 0.25), (np.float32(0.5), 0.5), (2, 2.0), (0.0, 0.0)]
)
def test_a_numeric_rate_from_a_schedule_becomes_a_float(value: Any, expected: float) -> None:
    opt = bg.SGD(0.1, schedule=Constant(value))
    opt.pre_update_params()
    assert type(opt.current_learning_rate) is float and opt.current_learning_rate == expected


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -1e-9, True, "0.1", None, np.float64(np.nan)]
)
def test_a_non_numeric_or_bad_rate_from_a_schedule_is_named(value: Any) -> None:
    opt = bg.SGD(0.1, schedule=Constant(value))
    match = (r"SGD: schedule Constant\(value=.*\) gave the learning rate .* at iteration 0 "
             r"\(base 0.1\); expected a finite number >= 0")  # fmt: skip
    with pytest.raises(ValueError, match=match):
        opt.pre_update_params()
    assert opt.current_learning_rate == 0.1  # unchanged


# --- bad settings ----------------------------------------------------------------------------


# fmt: off
BAD_SETTINGS = [
    (lambda: bg.InverseTimeDecay(-1.0), r"InverseTimeDecay: decay must be a finite number >= 0, got -1.0"),  # noqa: E501
    (lambda: bg.StepDecay(0), r"StepDecay: step_size must be an integer >= 1, got 0"),
    (lambda: bg.StepDecay(2.5), r"StepDecay: step_size must be an integer >= 1, got 2.5"),  # type: ignore[arg-type]
    (lambda: bg.StepDecay(True), r"step_size must be an integer >= 1, got True"),
    (lambda: bg.StepDecay(3, gamma=0), r"StepDecay: gamma must be a number in \(0, 1\], got 0"),
    (lambda: bg.StepDecay(3, gamma=1.5), r"StepDecay: gamma must be a number in \(0, 1\], got 1.5"),
    (lambda: bg.ExponentialDecay(math.nan), r"ExponentialDecay: gamma must be a number in \(0, 1\], got nan"),  # noqa: E501
    (lambda: bg.ExponentialDecay("0.9"), r"ExponentialDecay: gamma .* got '0.9'"),  # type: ignore[arg-type]
    (lambda: bg.CosineDecay(0), r"CosineDecay: total_steps must be an integer >= 1, got 0"),
    (lambda: bg.CosineDecay(10, warmup_steps=-1), r"CosineDecay: warmup_steps must be an integer >= 0, got -1"),  # noqa: E501
    (lambda: bg.CosineDecay(10, warmup_steps=10), r"CosineDecay: warmup_steps must be below total_steps=10 \(the warmup is part of the total\), got 10"),  # noqa: E501
    (lambda: bg.CosineDecay(10, min_learning_rate=-0.1), r"CosineDecay: min_learning_rate must be a finite number >= 0, got -0.1"),  # noqa: E501
    (lambda: bg.CosineDecay(10, warmup_start_factor=1.0), r"CosineDecay: warmup_start_factor must be in \[0.0, 1.0\), got 1.0"),  # noqa: E501
    (lambda: bg.OneCycle(1), r"OneCycle: total_steps must be an integer >= 2, got 1"),
    (lambda: bg.OneCycle(10, pct_start=1.0), r"OneCycle: pct_start must be a number in \(0, 1\), got 1.0"),  # noqa: E501
    (lambda: bg.OneCycle(5, pct_start=0.2), r"OneCycle: pct_start \* total_steps - 1 \(the step of the peak\) must lie in \(0, 4\); got 0.0 from pct_start=0.2, total_steps=5"),  # noqa: E501
    (lambda: bg.OneCycle(10, anneal_strategy="cosine"), r"OneCycle: anneal_strategy must be 'cos' or 'linear', got 'cosine'"),  # noqa: E501
    (lambda: bg.OneCycle(10, div_factor=0), r"OneCycle: div_factor must be a positive finite number, got 0"),  # noqa: E501
    (lambda: bg.SGD(0.1, decay=0.01, schedule=bg.StepDecay(5)), r"SGD: decay=0.01 and schedule=StepDecay\(step_size=5, gamma=0.1\): pass one of them \(decay is the schedule InverseTimeDecay\(0.01\)\)"),  # noqa: E501
    (lambda: bg.Adam(schedule={"class": "Nope", "config": {}}), r"Adam: schedule: unknown schedule class 'Nope'; known: .*CosineDecay, .*OneCycle, StepDecay"),  # noqa: E501
    (lambda: bg.Adam(schedule={"class": "StepDecay"}), r'Adam: schedule spec must be \{"class": name, "config": \{...\}\}, got \{\'class\': \'StepDecay\'\}'),  # noqa: E501
    (lambda: bg.RMSprop(schedule={"class": "StepDecay", "config": {"step_size": 0}}), r"StepDecay: step_size must be an integer >= 1, got 0"),  # noqa: E501
]
# fmt: on


@pytest.mark.parametrize(("make", "match"), BAD_SETTINGS)
def test_bad_settings_are_named(make: Callable[[], Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_schedule_types_are_named() -> None:
    with pytest.raises(TypeError, match=r"SGD: schedule must be a Schedule \(e.g. CosineDecay"
                       r"\(total_steps=1000\)\) or its spec .*got 'cosine'"):  # fmt: skip
        bg.SGD(schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Adagrad: schedule: cannot build StepDecay from "
                       r"\{'steps': 3\}: .*unexpected keyword argument 'steps'"):  # fmt: skip
        bg.Adagrad(schedule={"class": "StepDecay", "config": {"steps": 3}})


def test_a_name_taken_by_another_schedule_is_refused() -> None:
    with pytest.raises(TypeError, match=r"Schedule 'StepDecay': the name is taken by "
                       r"backprop_gpu.schedules.StepDecay"):  # fmt: skip

        class StepDecay(bg.Schedule):
            def __call__(self, learning_rate: float, iteration: int) -> float:
                return learning_rate

            def get_config(self) -> dict[str, Any]:
                return {}


# --- specs, save, load, resume -----------------------------------------------------------------

ALL = [
    bg.InverseTimeDecay(0.01),
    bg.StepDecay(7, gamma=0.5),
    bg.ExponentialDecay(0.97),
    bg.CosineDecay(40, warmup_steps=6, min_learning_rate=1e-3, warmup_start_factor=0.1),
    bg.OneCycle(40, pct_start=0.25, anneal_strategy="linear", div_factor=5.0),
]


@pytest.mark.parametrize("schedule", ALL, ids=repr)
@pytest.mark.parametrize("cls", [bg.SGD, bg.Adagrad, bg.RMSprop, bg.Adam])
def test_the_spec_round_trips_through_the_constructor(cls: Any, schedule: bg.Schedule) -> None:
    opt = cls(0.05, schedule=schedule)
    config = opt.get_config()
    again = cls(**config)
    assert again.get_config() == config and repr(again) == repr(opt)
    if type(schedule) is bg.InverseTimeDecay:  # the book's decay is saved as decay=
        assert "schedule" not in config and config["decay"] == 0.01
    else:
        assert config["schedule"] == {"class": type(schedule).__name__,
                                      "config": schedule.get_config()}  # fmt: skip
        assert again.schedule == schedule and again.schedule is not schedule
        assert f"schedule={schedule!r}" in repr(opt)
    assert rates(again.schedule, 45) == rates(schedule, 45)


X, Y = spiral_data(samples=40, classes=3, seed=0)


def scheduled_classifier(make_optimizer: Callable[[], Any]) -> bg.Model:
    layers = [bg.Dense(2, 16, init="he", seed=0), bg.ReLU(), bg.Dense(16, 3, seed=1)]
    model = bg.Model(layers)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=make_optimizer(), accuracy=bg.Accuracy())
    return model.finalize()


# 120 samples in batches of 16: 8 steps an epoch, 6 epochs = 48 steps; the schedules span them
STEPS_PER_EPOCH = 8
OPTIMIZERS = [
    pytest.param(lambda: bg.SGD(0.5, momentum=0.9, schedule=bg.CosineDecay(
        6 * STEPS_PER_EPOCH, warmup_steps=STEPS_PER_EPOCH, min_learning_rate=0.01)),
        id="sgd-warmup-cosine"),
    pytest.param(lambda: bg.Adam(0.02, schedule=bg.OneCycle(6 * STEPS_PER_EPOCH)),
                 id="adam-one-cycle"),
    pytest.param(lambda: bg.RMSprop(0.01, schedule=bg.StepDecay(2 * STEPS_PER_EPOCH, 0.5)),
                 id="rmsprop-step"),
    pytest.param(lambda: bg.Adagrad(0.3, schedule=bg.ExponentialDecay(0.97)), id="adagrad-exp"),
    pytest.param(lambda: bg.SGD(0.5, decay=0.05), id="sgd-decay"),
]  # fmt: skip


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS)
def test_resume_mid_schedule_equals_an_uninterrupted_run(
    backend: bg.Backend, tmp_path: Path, make_optimizer: Callable[[], Any]
) -> None:
    """6 epochs straight; or 3, save, load into a fresh model, 3 more: the same history
    (rates included) and the same parameter bits."""
    straight = scheduled_classifier(make_optimizer)
    full = straight.train(X, Y, epochs=6, batch_size=16, print_every=0, seed=3)
    assert straight.optimizer is not None and straight.optimizer.iterations == 48

    first = scheduled_classifier(make_optimizer)
    head = first.train(X, Y, epochs=3, batch_size=16, print_every=0, seed=3)
    first.save(tmp_path / "m.npz")
    resumed = bg.Model.load(tmp_path / "m.npz")
    assert resumed.optimizer is not None and first.optimizer is not None
    assert resumed.optimizer.schedule == first.optimizer.schedule
    assert resumed.optimizer.get_config() == first.optimizer.get_config()
    assert resumed.optimizer.iterations == 24
    tail = resumed.train(X, Y, epochs=3, batch_size=16, print_every=0, seed=3)

    assert head + tail == full
    opt = straight.optimizer  # each epoch's row: the rate of its last step, 8 e + 7
    assert [row["learning_rate"] for row in full] == [opt.schedule(opt.learning_rate, 8 * e + 7)
                                                      for e in range(6)]  # fmt: skip
    assert len({row["learning_rate"] for row in full}) > 1
    for a, b in zip(params(straight), params(resumed), strict=True):
        assert np.array_equal(a, b)


def test_a_zero_rate_saves_and_loads(tmp_path: Path) -> None:
    """A warmup from 0 gives the first step the rate 0; a checkpoint taken there loads."""
    model = scheduled_classifier(lambda: bg.SGD(0.5, schedule=bg.CosineDecay(10, warmup_steps=2)))
    model.train(X, Y, epochs=1, print_every=0, seed=0)  # one full batch: one step, at rate 0
    assert model.optimizer is not None and model.optimizer.current_learning_rate == 0.0
    model.save(tmp_path / "m.npz")
    _, meta = checkpoint.load(tmp_path / "m.npz")
    assert meta["optimizer"]["config"]["schedule"] == {
        "class": "CosineDecay",
        "config": {"total_steps": 10, "warmup_steps": 2, "min_learning_rate": 0.0,
                   "warmup_start_factor": 0.0},
    }  # fmt: skip
    loaded = bg.Model.load(tmp_path / "m.npz")
    assert loaded.optimizer is not None and loaded.optimizer.current_learning_rate == 0.0
    history = loaded.train(X, Y, epochs=1, print_every=0, seed=0)
    assert history[0]["learning_rate"] == 0.25  # step 1 of the warmup: lr * 1/2


def test_a_custom_schedule_saves_and_loads(tmp_path: Path) -> None:
    model = scheduled_classifier(lambda: bg.SGD(0.5, schedule=Halving(every=3)))
    model.train(X, Y, epochs=2, batch_size=32, print_every=0, seed=0)  # 4 steps an epoch
    model.save(tmp_path / "m.npz")
    loaded = bg.Model.load(tmp_path / "m.npz")
    assert loaded.optimizer is not None and loaded.optimizer.schedule == Halving(every=3)
    assert repr(loaded.optimizer.schedule) == "Halving(every=3)"
    assert (
        loaded.train(X, Y, epochs=1, batch_size=32, print_every=0, seed=0)[0]["learning_rate"]
        == 0.5 / 2**3
    )  # step 11 (the epoch's last): 11 // 3 = 3 halvings


def test_a_bad_saved_schedule_is_a_checkpoint_error(tmp_path: Path) -> None:
    model = scheduled_classifier(lambda: bg.SGD(0.5, schedule=bg.StepDecay(4)))
    model.save(tmp_path / "m.npz")
    arrays, meta = checkpoint.load(tmp_path / "m.npz")
    meta["optimizer"]["config"]["schedule"]["config"]["step_size"] = -2
    checkpoint.save(tmp_path / "bad.npz", arrays, meta)
    with pytest.raises(bg.CheckpointError, match=r"bad.npz: cannot rebuild the model: "
                       r".*StepDecay: step_size must be an integer >= 1, got -2"):  # fmt: skip
        bg.Model.load(tmp_path / "bad.npz")


class Halving(bg.Schedule):
    """A schedule of one's own: ``lr * 0.5 ** (t // every)``."""

    def __init__(self, every: int) -> None:
        self.every = every

    def __call__(self, learning_rate: float, iteration: int) -> float:
        return learning_rate * 0.5 ** (iteration // self.every)

    def get_config(self) -> dict[str, Any]:
        return {"every": self.every}


def test_registry_holds_the_built_ins() -> None:
    for name in ("InverseTimeDecay", "StepDecay", "ExponentialDecay", "CosineDecay", "OneCycle"):
        assert registry.lookup(name, "schedule") is getattr(bg, name)
        assert registry.kind_of(getattr(bg, name)) == "schedule"
