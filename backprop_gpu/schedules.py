"""Learning-rate schedules: the rate of each optimizer step from the optimizer's base rate.

An optimizer takes one as ``schedule=``::

    SGD(learning_rate=0.1, momentum=0.9, schedule=CosineDecay(total_steps=1000, warmup_steps=50))

and at each step sets ``current_learning_rate = schedule(learning_rate, iterations)``. The
base rate is read from ``optimizer.learning_rate`` at every step, never kept by the schedule,
so whatever changes it between steps (a ``ReduceLROnPlateau`` callback multiplying it, a hand
loop assigning it) scales the whole schedule from then on. A schedule holds settings only, no
state: the rate at step ``t`` is a function of ``t``, and the optimizer's ``iterations`` (saved
in every checkpoint) is all that resuming needs.

Schedules count optimizer iterations (steps, one per batch; the first step is iteration 0),
like Keras' ``LearningRateSchedule`` and ``torch.optim.lr_scheduler`` stepped once per batch.
To think in epochs, multiply by the steps per epoch, ``ceil(n_samples / batch_size)``:
``StepDecay(step_size=10 * steps_per_epoch)`` divides the rate every 10 epochs.

Without ``schedule=`` an optimizer uses the book's ``InverseTimeDecay(decay)``, built from its
``decay`` argument (``decay=0``: the constant rate). Each built-in equals a
``torch.optim.lr_scheduler`` on the same steps (see each class; tests/test_schedules.py).

A schedule is saved as ``{"class": name, "config": get_config()}`` inside its optimizer's
config, and the optimizer's constructor takes that spec back, looking the name up in the one
registry of layers, losses, optimizers and schedules (``registry.py``). Your own schedule:
subclass ``Schedule``, define ``__call__`` and ``get_config`` (its constructor's arguments);
defining the class registers it under its class name (``@bg.register(name=...)`` adds
another), so ``Model.load`` finds it once its module is imported.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping
from typing import Any

from . import _checks, registry


class Schedule(abc.ABC):
    """The learning rate of each optimizer step, from the optimizer's base learning rate.

    Subclasses define ``__call__`` (a pure function of its two arguments) and ``get_config``;
    defining one registers it under its class name (``registry.register``).
    """

    registry_kind = "schedule"  # (what the registry files subclasses under)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        try:  # (the same class defined again, in a notebook: replaces the old one)
            registry.register(cls)
        except ValueError:  # the name is another class's (a schedule, a layer, ...)
            known = registry.find(cls.__name__)
            assert known is not None
            raise TypeError(
                f"Schedule {cls.__name__!r}: the name is taken by {known.__module__}."
                f"{known.__qualname__}; checkpoints find schedules by registered name, so give "
                "this one another name"
            ) from None

    @abc.abstractmethod
    def __call__(self, learning_rate: float, iteration: int) -> float:
        """The rate of step ``iteration`` (0 for the first) for base rate ``learning_rate``
        (the optimizer's, read at that step): a finite number >= 0."""

    @abc.abstractmethod
    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (what ``repr`` shows and checkpoints store)."""

    def spec(self) -> dict[str, Any]:
        """``{"class": name, "config": get_config()}``: what ``from_spec`` builds back."""
        return {"class": registry.name_of(self), "config": self.get_config()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        """The same class with the same settings (schedules hold nothing else)."""
        return isinstance(other, Schedule) and other.spec() == self.spec()

    __hash__ = None  # type: ignore[assignment]


def from_spec(schedule: Any, where: str) -> Schedule:
    """``schedule`` itself if it is a ``Schedule``, else built from its saved spec
    ``{"class": name, "config": {...}}`` (the config checked by the class's constructor).
    ``where`` names the argument in errors."""
    if isinstance(schedule, Schedule):
        return schedule
    if not isinstance(schedule, Mapping):
        raise TypeError(
            f"{where} must be a Schedule (e.g. CosineDecay(total_steps=1000)) or its spec "
            f'{{"class": name, "config": {{...}}}}, got {schedule!r}'
        )
    name, config = schedule.get("class"), schedule.get("config")
    if set(schedule) != {"class", "config"} or not isinstance(config, Mapping):
        raise ValueError(
            f'{where} spec must be {{"class": name, "config": {{...}}}}, got {schedule!r}'
        )
    try:
        if not isinstance(name, str):
            raise ValueError(name)
        cls: type[Schedule] = registry.lookup(name, "schedule")
    except ValueError:
        known = ", ".join(sorted(registry.names("schedule")))
        raise ValueError(
            f"{where}: unknown schedule class {name!r}; known: {known} (a schedule of your own "
            "registers when its module is imported)"
        ) from None
    try:
        return cls(**config)
    except TypeError as e:  # an unexpected or missing argument
        raise TypeError(f"{where}: cannot build {name} from {dict(config)!r}: {e}") from None


def _count(value: Any, minimum: int, where: str) -> int:
    """``value`` as an int, refusing anything that is not an integer >= ``minimum``."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _factor(value: Any, where: str) -> float:
    """A multiplier in (0, 1]."""
    if not _checks._is_number(value) or not (0 < value <= 1):
        raise ValueError(f"{where} must be a number in (0, 1], got {value!r}")
    return float(value)


class InverseTimeDecay(Schedule):
    """The book's decay, ``lr / (1 + decay * t)``; ``decay=0`` is the constant rate.

    This is what an optimizer's ``decay`` argument builds (``SGD(1.0, decay=1e-3)``), and the
    default. torch: ``LambdaLR(opt, lambda t: 1 / (1 + decay * t))``.
    """

    def __init__(self, decay: float = 0.0) -> None:
        self.decay = _checks.non_negative_finite(decay, "InverseTimeDecay: decay")

    def __call__(self, learning_rate: float, iteration: int) -> float:
        return learning_rate / (1.0 + self.decay * iteration)  # (the book's expression: same bits)

    def get_config(self) -> dict[str, Any]:
        return {"decay": self.decay}


class StepDecay(Schedule):
    """``lr * gamma ** (t // step_size)``: the rate times ``gamma`` every ``step_size`` steps.

    torch: ``StepLR(opt, step_size, gamma)``.
    """

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _count(step_size, 1, "StepDecay: step_size")
        self.gamma = _factor(gamma, "StepDecay: gamma")

    def __call__(self, learning_rate: float, iteration: int) -> float:
        return learning_rate * self.gamma ** (iteration // self.step_size)

    def get_config(self) -> dict[str, Any]:
        return {"step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """``lr * gamma ** t``: the rate times ``gamma`` at every step.

    torch: ``ExponentialLR(opt, gamma)``. (Keras' ``ExponentialDecay(lr, decay_steps,
    decay_rate)`` is ``gamma = decay_rate ** (1 / decay_steps)``.)
    """

    def __init__(self, gamma: float) -> None:
        self.gamma = _factor(gamma, "ExponentialDecay: gamma")

    def __call__(self, learning_rate: float, iteration: int) -> float:
        return learning_rate * self.gamma**iteration

    def get_config(self) -> dict[str, Any]:
        return {"gamma": self.gamma}


class CosineDecay(Schedule):
    """Linear warmup, then half a cosine from the base rate down to ``min_learning_rate``.

    With ``W = warmup_steps``, ``T = total_steps``, ``s = warmup_start_factor``::

        t < W:       lr * (s + (1 - s) * t / W)
        W <= t < T:  min_lr + (lr - min_lr) * (1 + cos(pi * (t - W) / (T - W))) / 2
        t >= T:      min_lr

    ``min_learning_rate`` is absolute (torch's ``eta_min``), not scaled with the base rate.
    The default ``warmup_start_factor=0`` makes the first step's rate 0 (the warmup of
    Hugging Face's ``get_cosine_schedule_with_warmup``).
    torch (``s > 0``): ``SequentialLR(opt, [LinearLR(opt, s, 1.0, W),
    CosineAnnealingLR(opt, T - W, min_lr)], milestones=[W])``; without warmup,
    ``CosineAnnealingLR(opt, T, min_lr)``. After ``T`` steps torch's cosine rises again
    (it is periodic); this one stays at ``min_learning_rate``.
    """

    def __init__(
        self,
        total_steps: int,
        warmup_steps: int = 0,
        min_learning_rate: float = 0.0,
        warmup_start_factor: float = 0.0,
    ) -> None:
        self.total_steps = _count(total_steps, 1, "CosineDecay: total_steps")
        self.warmup_steps = _count(warmup_steps, 0, "CosineDecay: warmup_steps")
        if self.warmup_steps >= self.total_steps:
            raise ValueError(
                f"CosineDecay: warmup_steps must be below total_steps={self.total_steps} "
                f"(the warmup is part of the total), got {warmup_steps!r}"
            )
        self.min_learning_rate = _checks.non_negative_finite(
            min_learning_rate, "CosineDecay: min_learning_rate"
        )
        self.warmup_start_factor = _checks.in_range(
            warmup_start_factor, 0.0, 1.0, "CosineDecay: warmup_start_factor"
        )

    def __call__(self, learning_rate: float, iteration: int) -> float:
        warmup, total = self.warmup_steps, self.total_steps
        if iteration < warmup:
            start = self.warmup_start_factor
            return learning_rate * (start + (1.0 - start) * iteration / warmup)
        if iteration >= total:
            return self.min_learning_rate
        low = self.min_learning_rate
        cosine = 1.0 + math.cos(math.pi * (iteration - warmup) / (total - warmup))
        return low + (learning_rate - low) * cosine / 2.0

    def get_config(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "min_learning_rate": self.min_learning_rate,
            "warmup_start_factor": self.warmup_start_factor,
        }


class OneCycle(Schedule):
    """Leslie Smith's one cycle, as torch's ``OneCycleLR`` with ``max_lr`` = the optimizer's
    ``learning_rate``: from ``lr / div_factor`` up to ``lr`` over the first ``pct_start`` of
    ``total_steps``, then down to ``lr / div_factor / final_div_factor`` at step
    ``total_steps - 1``, each phase annealed by ``anneal_strategy`` (``"cos"`` or
    ``"linear"``). Steps past the cycle keep the final rate (torch raises there).

    torch: ``OneCycleLR(opt, max_lr=lr, total_steps, pct_start, anneal_strategy,
    div_factor=div_factor, final_div_factor=final_div_factor, cycle_momentum=False)``.
    The momentum is not cycled (torch's ``cycle_momentum=True`` default): the optimizer's
    ``momentum`` / ``beta_1`` stays fixed.
    """

    def __init__(
        self,
        total_steps: int,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
    ) -> None:
        self.total_steps = _count(total_steps, 2, "OneCycle: total_steps")
        if not _checks._is_number(pct_start) or not (0 < pct_start < 1):
            raise ValueError(f"OneCycle: pct_start must be a number in (0, 1), got {pct_start!r}")
        self.pct_start = float(pct_start)
        # torch's phase ends: the rate peaks at step pct_start * total - 1 and ends at total - 1
        self._peak = self.pct_start * self.total_steps - 1.0
        if not (0 < self._peak < self.total_steps - 1):
            raise ValueError(
                f"OneCycle: pct_start * total_steps - 1 (the step of the peak) must lie in "
                f"(0, {self.total_steps - 1}); got {self._peak!r} from pct_start={pct_start!r}, "
                f"total_steps={total_steps!r}: make the cycle longer"
            )
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(
                f"OneCycle: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}"
            )
        self.anneal_strategy = anneal_strategy
        self.div_factor = _checks.positive_finite(div_factor, "OneCycle: div_factor")
        self.final_div_factor = _checks.positive_finite(
            final_div_factor, "OneCycle: final_div_factor"
        )

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":  # torch's _annealing_cos, term for term
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def __call__(self, learning_rate: float, iteration: int) -> float:
        initial = learning_rate / self.div_factor
        final = initial / self.final_div_factor
        last = self.total_steps - 1
        if iteration <= self._peak:
            return self._anneal(initial, learning_rate, iteration / self._peak)
        step = min(iteration, last)
        return self._anneal(learning_rate, final, (step - self._peak) / (last - self._peak))

    def get_config(self) -> dict[str, Any]:
        return {
            "total_steps": self.total_steps,
            "pct_start": self.pct_start,
            "anneal_strategy": self.anneal_strategy,
            "div_factor": self.div_factor,
            "final_div_factor": self.final_div_factor,
        }
