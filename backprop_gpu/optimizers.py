"""Optimizers, in order of increasing complexity, used the nnfs way::

    optimizer.pre_update_params()        # the step's learning rate, from the schedule
    for layer in trainable_layers:
        optimizer.update_params(layer)   # one rule applied to each of layer.params
    optimizer.post_update_params()       # iterations += 1

or ``optimizer.step(layers)`` for the same three calls. A trainable layer lists its parameter
names in ``params`` (``("weights", "biases")`` for Dense); the gradient of ``weights`` is
``dweights``. Optimizer state lives on the layer, next to the parameter, under the book's
names (``weight_momentums``, ``bias_cache``), created on the parameter's device the first
time it is needed. Every update is in place, so a parameter keeps its array and dtype.

Every optimizer can clip the gradients before its update: ``clip_norm`` (by their global
norm, over every layer of the step) or ``clip_value`` (each element). ``step`` clips; in the
hand loop ``update_params`` clips by value itself, and clipping by norm needs
``optimizer.clip_gradients(trainable_layers)`` before the ``update_params`` calls.

When the layers' parameters and states are views into flat buffers (``flat.FlatParameters``,
which ``Model`` sets up), ``step`` applies the rule once per dtype over the whole buffers:
the same bits, in one call instead of one per parameter.

The learning rate of each step comes from a schedule (``schedules.py``): the book's
``decay`` by default, or ``schedule=`` (``SGD(0.1, schedule=CosineDecay(total_steps=1000))``),
which scales the base ``learning_rate`` read at each step.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from . import _checks
from .backend import array_library, dtype_name
from .flat import flat_of, state_name
from .registry import register
from .schedules import InverseTimeDecay, Schedule, from_spec

ScheduleLike = Schedule | Mapping[str, Any] | None
"""A schedule, its saved spec ``{"class": name, "config": {...}}``, or None (``decay``)."""


class Optimizer(abc.ABC):
    """Base: the learning rate of each step, ``current_learning_rate``, is the schedule's
    at ``iterations`` for the base ``learning_rate``: by default the book's decay,
    ``lr_t = lr / (1 + decay * iterations)``; with ``schedule=`` (a ``Schedule`` or its
    saved spec; ``decay`` must then be 0) that schedule's. The base rate is read at every
    step, so changing ``learning_rate`` (a ReduceLROnPlateau callback multiplies it) scales
    the schedule from the next step on. Schedules count steps, not epochs (``schedules.py``).
    Gradients are clipped before each update (``clip_norm`` or ``clip_value``, see
    ``_set_clipping``; ``step`` and ``clip_gradients`` clip, ``update_params`` by value only).

    Subclasses define ``_apply`` (the rule, elementwise, on a parameter and its states) and
    list the per-parameter state they keep in ``state_kinds`` (used by checkpoints).
    """

    state_kinds: tuple[str, ...] = ()
    registry_kind = "optimizer"  # (what the registry files subclasses under)

    def __init__(
        self,
        learning_rate: float,
        decay: float = 0.0,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        self.learning_rate = _checks.positive_finite(learning_rate, self._arg("learning_rate"))
        decay = _checks.non_negative_finite(decay, self._arg("decay"))
        if schedule is None:
            self.schedule: Schedule = InverseTimeDecay(decay)
        elif decay:
            raise ValueError(
                f"{self._arg('decay')}={decay!r} and schedule={schedule!r}: pass one of them "
                f"(decay is the schedule InverseTimeDecay({decay!r}))"
            )
        else:
            self.schedule = from_spec(schedule, self._arg("schedule"))
        self.current_learning_rate = self.learning_rate
        self.iterations = 0
        # dtypes whose checks passed, with their largest value: a learning rate raised above
        # it later (opt.learning_rate = 1e39 in a hand loop) is caught at the next step
        self._dtypes_ok: dict[Any, float] = {}
        self._state_attrs: dict[str, tuple[str, ...]] = {}  # "weights" -> ("weight_cache", ...)
        self._set_clipping(clip_norm, clip_value)

    def _set_clipping(self, clip_norm: float | None, clip_value: float | None) -> None:
        """Gradient clipping, applied to the gradients before each update: ``clip_norm``
        scales all of them together so their global 2-norm is at most ``clip_norm``
        (``torch.nn.utils.clip_grad_norm_``), ``clip_value`` clips each element to
        ``[-clip_value, clip_value]`` (``clip_grad_value_``); one of them, or neither (None)."""
        self.clip_norm = self._optional_positive(clip_norm, "clip_norm")
        self.clip_value = self._optional_positive(clip_value, "clip_value")
        if self.clip_norm is not None and self.clip_value is not None:
            raise ValueError(
                f"{type(self).__name__}: set clip_norm or clip_value, not both (got "
                f"clip_norm={clip_norm!r}, clip_value={clip_value!r}): the result would depend "
                "on the order they are applied in"
            )
        self._clipped = False  # clip_gradients ran since the last post_update_params

    def _optional_positive(self, value: float | None, name: str) -> float | None:
        return None if value is None else _checks.positive_finite(value, self._arg(name))

    def _arg(self, name: str) -> str:
        return f"{type(self).__name__}: {name}"

    @property
    def decay(self) -> float:
        """The book's decay: the ``InverseTimeDecay`` schedule's (0 under another schedule).
        Assigning it sets that schedule (only where it is the schedule)."""
        schedule = self.schedule
        return schedule.decay if type(schedule) is InverseTimeDecay else 0.0

    @decay.setter
    def decay(self, value: float) -> None:
        if type(self.schedule) is not InverseTimeDecay:
            raise ValueError(
                f"{self._arg('decay')} cannot be set under schedule={self.schedule!r}; "
                "assign optimizer.schedule instead"
            )
        self.schedule = InverseTimeDecay(_checks.non_negative_finite(value, self._arg("decay")))

    def pre_update_params(self) -> None:
        """``current_learning_rate``: the schedule's rate for this step, from the base
        ``learning_rate`` as it is now."""
        rate = self.schedule(self.learning_rate, self.iterations)
        if not (type(rate) is float and 0.0 <= rate < math.inf):  # (NaN fails too)
            rate = self._checked_rate(rate)
        self.current_learning_rate = rate

    def _checked_rate(self, rate: Any) -> float:
        """A schedule's rate that is not a plain finite float >= 0: a NumPy scalar or an int
        that is one, as a float; anything else raises, naming the schedule."""
        if not (_checks._is_number(rate) and math.isfinite(rate) and rate >= 0):
            raise ValueError(
                f"{type(self).__name__}: schedule {self.schedule!r} gave the learning rate "
                f"{rate!r} at iteration {self.iterations} (base {self.learning_rate!r}); "
                "expected a finite number >= 0"
            )
        return float(rate)

    def update_params(self, layer: Any) -> None:
        """Update every parameter of ``layer`` in place from its gradient. Everything the
        update touches is checked first: on a bad array nothing changes.

        Clipping in a hand loop (one call per layer): ``clip_value`` is elementwise, so this
        clips the layer's gradients itself. ``clip_norm`` needs every layer's gradients at
        once: call ``clip_gradients(layers)`` first in each step (after the backward pass,
        before the first ``update_params``), or this raises; ``step(layers)`` does both."""
        checked = self._checked(layer, "update_params")
        if not self._clipped:
            if self.clip_norm is not None:
                raise RuntimeError(
                    f"{type(self).__name__}.update_params: clip_norm={self.clip_norm!r} clips "
                    "by the norm of all the layers' gradients together, which one layer "
                    "cannot know; call optimizer.clip_gradients(layers) before the "
                    "update_params calls of each step, or use optimizer.step(layers)"
                )
            self._clip(layer.backend.ops, checked)
        for name, param, grad in checked:
            self._update(layer, name, param, grad)

    def clip_gradients(self, layers: Iterable[Any]) -> Any:
        """Clip the gradients of ``layers`` (those with ``params``) in place as set
        (``clip_norm``: by their global norm; ``clip_value``: each element), after checking
        them as ``step`` does; ``step`` calls it, a hand loop calls it before its
        ``update_params`` calls (which then clip nothing more until ``post_update_params``).
        Returns the global norm before clipping, a 0-d array on the device, when clipping by
        norm (None otherwise). A gradient the checks converted (a big-endian one) or a
        read-only one becomes a clipped copy in its layer's ``d<param>``."""
        trainable = [layer for layer in layers if getattr(layer, "params", ())]
        checked = [self._checked(layer, "clip_gradients") for layer in trainable]
        norm = None
        if trainable and not self._clipped:
            norm = self._clip_all(trainable, checked)
            for layer, gradients in zip(trainable, checked, strict=True):
                for name, _, grad in gradients:
                    if grad is not getattr(layer, "d" + name):
                        setattr(layer, "d" + name, grad)
        self._clipped = True
        return norm

    def _clip_all(self, trainable: list[Any], checked: list[list[tuple[str, Any, Any]]]) -> Any:
        """Clip the checked gradients of ``trainable`` in place (a read-only one replaced in
        ``checked`` by a clipped copy): by value one by one, or by their global norm (one
        norm over every layer, so all on one backend), returned."""
        backend = trainable[0].backend
        if self.clip_norm is None:
            for gradients in checked:
                self._clip(backend.ops, gradients)
            return None
        for layer in trainable:
            if layer.backend != backend:
                raise ValueError(
                    f"{type(self).__name__}: clip_norm needs every layer on one backend; "
                    f"{layer!r} is on {layer.backend.name} {layer.backend.device}, the first "
                    f"layer on {backend.name} {backend.device}"
                )
        for gradients in checked:
            gradients[:] = [(n, p, _writable_gradient(g)) for n, p, g in gradients]
        grads = [grad for gradients in checked for _, _, grad in gradients]
        return backend.ops.clip_grad_norm(grads, self.clip_norm)

    def _clip(self, ops: Any, checked: list[tuple[str, Any, Any]]) -> None:
        """Clip each gradient of ``checked`` by value in place (when ``clip_value`` is set:
        elementwise, so one layer at a time is the same as all at once); a read-only one is
        replaced in ``checked`` by a clipped copy."""
        if self.clip_value is not None:
            for i, (name, param, grad) in enumerate(checked):
                grad = _writable_gradient(grad)
                ops.clip_grad_value(grad, self.clip_value)
                checked[i] = (name, param, grad)

    def _checked(
        self, layer: Any, method: str, missing_ok: bool = False
    ) -> list[tuple[str, Any, Any]]:
        """``(name, param, grad)`` for each parameter of ``layer``, after checking every array
        the update will write or read: each parameter and each optimizer state that exists
        must be a writable array on the layer's device (a state of its parameter's shape and
        dtype), and each gradient must exist with its parameter's shape, dtype and device.
        Only attributes are looked at (no pass over the values): this runs every step, so the
        usual case is one expression per array and the slow path says what is wrong."""
        backend = layer.backend
        array_type = backend.array_type
        numpy = array_type is np.ndarray
        checked = []
        for name in layer.params:
            param: Any = getattr(layer, name, None)
            grad: Any = getattr(layer, "d" + name, None)
            if not (
                type(param) is array_type
                and (param.flags.writeable if numpy else param.device == backend.device)
            ):
                self._check_param(layer, method, name, param)
            shape, dtype = param.shape, param.dtype  # (each read makes a new object)
            largest = self._dtypes_ok.get(dtype)
            if largest is None or max(self.learning_rate, self.current_learning_rate) > largest:
                self.check_dtype(dtype)
            if not (
                type(grad) is array_type
                and grad.shape == shape
                and grad.dtype == dtype
                and (numpy or grad.device == backend.device)
            ) and not (grad is None and missing_ok):
                grad = self._other_gradient(layer, method, name, param, grad)
            attrs = self._state_attrs.get(name)
            for attr in self._attrs_of(name) if attrs is None else attrs:
                state: Any = getattr(layer, attr, None)
                if state is not None and not (
                    type(state) is array_type
                    and state.shape == shape
                    and state.dtype == dtype
                    and (state.flags.writeable if numpy else state.device == backend.device)
                ):
                    self._check_state(layer, method, name, param, attr, state)
            checked.append((name, param, grad))
        return checked

    def _attrs_of(self, name: str) -> tuple[str, ...]:
        """The state attribute names of parameter ``name`` (``weight_momentums``, ...), kept."""
        attrs = self._state_attrs[name] = tuple(state_name(name, k) for k in self.state_kinds)
        return attrs

    def _check_param(self, layer: Any, method: str, name: str, param: Any) -> None:
        """A parameter off the fast path: fine if it is a subclass of the backend's array
        (``np.memmap``, say) that can be written; else raise saying why."""
        where = f"{type(self).__name__}.{method}: {layer!r} {name}"
        if not layer.backend.owns(param) or not hasattr(param, "shape"):
            raise ValueError(
                f"{where} must be an array of the layer's {layer.backend.name} backend on "
                f"{layer.backend.device}; got {_describe(param)}; nothing was changed"
            )
        _writable(param, where)

    def _check_state(
        self, layer: Any, method: str, name: str, param: Any, attr: str, state: Any
    ) -> None:
        """An optimizer state off the fast path: fine if it is a writable subclass of the
        backend's array like its parameter; else raise saying why."""
        where = f"{type(self).__name__}.{method}: {layer!r} {attr} (the state of {name})"
        if not (
            layer.backend.owns(state)
            and hasattr(state, "shape")
            and state.shape == param.shape
            and state.dtype == param.dtype
        ):
            raise ValueError(
                f"{where} must match {name}: expected {_describe(param, layer.backend)}; got "
                f"{_describe(state)}; nothing was changed"
            )
        _writable(state, where)

    def _other_gradient(self, layer: Any, method: str, name: str, param: Any, grad: Any) -> Any:
        """A gradient off the fast path: a subclass of the backend's array is fine, and a
        NumPy array that differs in byte order only is the same numbers (``'>f4'`` data is
        float32), converted; anything else raises, naming what was expected and what came."""
        where = f"{type(self).__name__}.{method}: {layer!r} d{name}"
        if grad is None:
            raise RuntimeError(f"{where} is missing; call backward before updating")
        if isinstance(grad, np.ma.MaskedArray):  # its mask would be dropped silently
            raise ValueError(
                f"{where} is a masked array; pass plain gradients (fill the masked values "
                "first); nothing was changed"
            )
        if isinstance(grad, np.ndarray):  # a subclass (np.matrix: ** is a matrix power there)
            grad = np.asarray(grad)  # the same memory as a plain ndarray
        if layer.backend.owns(grad) and hasattr(grad, "shape") and grad.shape == param.shape:
            if grad.dtype == param.dtype:
                return grad
            if isinstance(grad, np.ndarray) and grad.dtype.newbyteorder(
                "="
            ) == param.dtype.newbyteorder("="):
                return grad.astype(param.dtype)
        raise ValueError(
            f"{where} must match {name}: expected {_describe(param, layer.backend)}; got "
            f"{_describe(grad)}; nothing was changed"
        )

    def check_dtype(self, dtype: Any) -> None:
        """The settings must hold in the parameters' dtype: a floating dtype, a learning rate
        below its largest value (1e39 is inf in float32, so every update would be too) and an
        epsilon above its smallest normal (1e-50 is 0 in float32)."""
        name = dtype_name(dtype)
        if np.dtype(name).kind != "f":
            raise ValueError(f"{type(self).__name__}: parameters must be floating, got {name}")
        info = np.finfo(name)
        for setting in ("learning_rate", "current_learning_rate"):
            rate = getattr(self, setting)
            if rate > float(info.max):
                raise ValueError(
                    f"{type(self).__name__}: {setting}={rate!r} overflows {name} (largest "
                    f"{float(info.max):.4g}): every update would be infinite; use a smaller "
                    "learning rate or float64 parameters"
                )
        epsilon = getattr(self, "epsilon", None)
        if epsilon is not None and epsilon < float(info.tiny):
            raise ValueError(
                f"{type(self).__name__}: epsilon={epsilon!r} is not representable in {name} "
                f"(smallest normal {float(info.tiny):.3g}); use a larger epsilon or float64 "
                "parameters"
            )
        self._dtypes_ok[dtype] = float(info.max)

    def _update(self, layer: Any, name: str, param: Any, grad: Any) -> None:
        """Apply the rule to ``param`` of ``layer`` (in place) given its gradient ``grad``,
        with the layer's states (created, zeros, the first time)."""
        states = [self._state(layer, name, kind, param) for kind in self.state_kinds]
        self._apply(layer.backend.ops, param, grad, states)

    @abc.abstractmethod
    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        """The rule, in place, through ``ops``: ``param`` and its states (one array per kind
        of ``state_kinds``, in that order) from ``grad``, all of one shape (a parameter's, or
        a whole flat buffer's: the rule is elementwise)."""

    def post_update_params(self) -> None:
        self.iterations += 1
        self._clipped = False

    def check(self, layers: Iterable[Any], method: str = "step", missing_ok: bool = False) -> None:
        """Raise as ``step(layers)`` would on a bad parameter, state or gradient, changing
        nothing (for callers that must know before they act, as ``DistributedOptimizer``
        before its allreduce, where a missing gradient is allowed: ``missing_ok``, zeros)."""
        for layer in layers:
            if getattr(layer, "params", ()):
                self._checked(layer, method, missing_ok)

    def step(self, layers: Iterable[Any]) -> None:
        """``pre_update_params``, ``update_params`` on each layer that has ``params``,
        ``post_update_params``, with the gradients clipped (``clip_norm``: by the global norm
        over every layer here; ``clip_value``: each element) before the first update. Every
        layer's arrays are checked before any of them changes, so a step applies to every
        layer or to none."""
        trainable = [layer for layer in layers if getattr(layer, "params", ())]
        checked = [self._checked(layer, "step") for layer in trainable]
        self.pre_update_params()
        flat = flat_of(trainable)
        if flat is not None and flat.ready(checked, self.state_kinds):
            # every parameter and state is a view of the flat buffers: one call per dtype
            ops = flat.backend.ops
            if not self._clipped:  # (one reduction and one scaling per dtype)
                grads = [group.grads for group in flat.groups.values()]
                if self.clip_norm is not None:
                    ops.clip_grad_norm(grads, self.clip_norm)
                elif self.clip_value is not None:
                    for grad in grads:
                        ops.clip_grad_value(grad, self.clip_value)
            for group in flat.groups.values():
                states = [group.states[kind] for kind in self.state_kinds]
                self._apply(ops, group.params, group.grads, states)
        else:
            if trainable and not self._clipped and (self.clip_norm or self.clip_value):
                self._clip_all(trainable, checked)
            for layer, gradients in zip(trainable, checked, strict=True):
                for name, param, grad in gradients:
                    self._update(layer, name, param, grad)
        self.post_update_params()

    def _state(self, layer: Any, name: str, kind: str, like: Any) -> Any:
        """The layer's ``<param>_<kind>`` state, zeros on ``like``'s device the first time."""
        attr = state_name(name, kind)
        value = getattr(layer, attr, None)
        if value is None:
            value = layer.backend.xp.zeros_like(like)
            setattr(layer, attr, value)
        return value

    def get_config(self) -> dict[str, Any]:
        """The constructor's arguments (what ``repr`` shows and checkpoints store); a
        schedule other than the book's decay as its spec ``{"class": ..., "config": ...}``."""
        config: dict[str, Any] = {
            "learning_rate": self.learning_rate,
            "decay": self.decay,
            "clip_norm": self.clip_norm,
            "clip_value": self.clip_value,
        }
        if type(self.schedule) is not InverseTimeDecay:
            config["schedule"] = self.schedule.spec()
        return config

    def __repr__(self) -> str:
        config = self.get_config()
        if "schedule" in config:
            config["schedule"] = self.schedule  # its repr, not its spec
        args = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({args})"


@register
class SGD(Optimizer):
    """Stochastic gradient descent with the book's decay (or a ``schedule``) and optional
    momentum.

    Without momentum: ``w -= lr_t * dw`` (PyTorch's SGD under the same schedule). With
    momentum the velocity ``v`` (kept in ``weight_momentums``) is ``v = momentum * v - lr_t *
    dw`` and ``w += v``, which equals PyTorch's SGD at a constant rate. ``nesterov=True`` looks
    ahead: ``w += momentum * v - lr_t * dw`` with the new ``v`` (PyTorch's
    ``SGD(nesterov=True)`` at a constant rate). Under a changing rate the velocity keeps each
    step's own rate, as Keras' SGD does; PyTorch's keeps ``v = momentum * v + dw`` and steps
    ``w -= lr_t * v``, so a rate change there rescales the past steps too.

    ``weight_decay`` is L2 decay coupled to the gradient, PyTorch's ``SGD(weight_decay=...)``:
    ``dw + weight_decay * w`` replaces ``dw`` in the rule (before the momentum), for every
    parameter (biases too). ``clip_norm``/``clip_value``: see ``Optimizer``.
    """

    def __init__(
        self,
        learning_rate: float = 1.0,
        decay: float = 0.0,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay, schedule=schedule, clip_norm=clip_norm,
                         clip_value=clip_value)  # fmt: skip
        self.momentum = _checks.in_range(momentum, 0.0, 1.0, self._arg("momentum"))
        if nesterov and not self.momentum:
            raise ValueError("SGD: nesterov=True needs a momentum > 0, got momentum=0")
        self.nesterov = bool(nesterov)
        self.weight_decay = _checks.non_negative_finite(weight_decay, self._arg("weight_decay"))
        self.state_kinds = ("momentums",) if self.momentum else ()

    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        lr = self.current_learning_rate
        if self.weight_decay:  # (a new array: the layer's gradient stays the loss's)
            grad = ops.weight_decay_gradient(param, grad, self.weight_decay)
        if not self.momentum:
            ops.sgd(param, grad, lr)
            return
        (velocity,) = states
        ops.sgd_momentum(param, velocity, grad, lr, self.momentum, self.nesterov)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


@register
class Adagrad(Optimizer):
    """Per-parameter learning rates from the sum of squared gradients:
    ``cache += dw**2; w -= lr_t * dw / (sqrt(cache) + epsilon)``."""

    state_kinds = ("cache",)

    def __init__(
        self,
        learning_rate: float = 1.0,
        decay: float = 0.0,
        epsilon: float = 1e-7,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay, schedule=schedule, clip_norm=clip_norm,
                         clip_value=clip_value)  # fmt: skip
        self.epsilon = _checks.positive_finite(epsilon, self._arg("epsilon"))

    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        (cache,) = states
        ops.adagrad(param, cache, grad, self.current_learning_rate, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"epsilon": self.epsilon}


@register
class RMSprop(Optimizer):
    """Adagrad with a moving average of squared gradients:
    ``cache = rho * cache + (1 - rho) * dw**2; w -= lr_t * dw / (sqrt(cache) + epsilon)``."""

    state_kinds = ("cache",)

    def __init__(
        self,
        learning_rate: float = 0.001,
        decay: float = 0.0,
        epsilon: float = 1e-7,
        rho: float = 0.9,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay, schedule=schedule, clip_norm=clip_norm,
                         clip_value=clip_value)  # fmt: skip
        self.epsilon = _checks.positive_finite(epsilon, self._arg("epsilon"))
        self.rho = _checks.in_range(rho, 0.0, 1.0, self._arg("rho"))

    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        (cache,) = states
        ops.rmsprop(param, cache, grad, self.current_learning_rate, self.rho, self.epsilon)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"epsilon": self.epsilon, "rho": self.rho}


@register
class Adam(Optimizer):
    """RMSprop plus momentum, both bias-corrected (``t`` = iterations + 1)::

        m = beta_1 * m + (1 - beta_1) * dw          # weight_momentums
        c = beta_2 * c + (1 - beta_2) * dw**2       # weight_cache
        w -= lr_t * (m / (1 - beta_1**t)) / (sqrt(c / (1 - beta_2**t)) + epsilon)

    epsilon is added after the square root of the corrected cache, as in the book.
    """

    state_kinds = ("momentums", "cache")

    def __init__(
        self,
        learning_rate: float = 0.001,
        decay: float = 0.0,
        epsilon: float = 1e-7,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        super().__init__(learning_rate, decay, schedule=schedule, clip_norm=clip_norm,
                         clip_value=clip_value)  # fmt: skip
        self.epsilon = _checks.positive_finite(epsilon, self._arg("epsilon"))
        self.beta_1 = _checks.in_range(beta_1, 0.0, 1.0, self._arg("beta_1"))
        self.beta_2 = _checks.in_range(beta_2, 0.0, 1.0, self._arg("beta_2"))

    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        momentums, cache = states
        ops.adam(
            param, momentums, cache, grad, lr=self.current_learning_rate, beta_1=self.beta_1,
            beta_2=self.beta_2, epsilon=self.epsilon, t=self.iterations + 1,
        )  # fmt: skip

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {
            "epsilon": self.epsilon,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
        }


def _describe(a: Any, backend: Any = None) -> str:
    """``shape (2, 2), float32 on cpu`` for an array (naming a byte order that is not the
    machine's, and where it lives: on ``backend``'s device, else from its library); for
    anything else, its type."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        return "None" if a is None else f"a {type(a).__name__}, not an array"
    dtype = dtype_name(a.dtype)
    if isinstance(a.dtype, np.dtype) and not a.dtype.isnative:
        dtype += " (big-endian)" if a.dtype.byteorder == ">" else " (little-endian)"
    if backend is not None:
        return f"shape {tuple(a.shape)}, {dtype} on {backend.device}"
    library = array_library(a)
    where = "" if library == "numpy" else f" on {getattr(a, 'device', '?')}"
    return f"shape {tuple(a.shape)}, {dtype} from {library}{where}"


def _writable_gradient(grad: Any) -> Any:
    """``grad``, or a copy of it if it is read-only (clipping writes in place)."""
    if isinstance(grad, np.ndarray) and not grad.flags.writeable:
        return grad.copy()
    return grad


def _writable(a: Any, where: str) -> None:
    """Raise unless ``a`` can be updated in place (NumPy's ``flags.writeable``)."""
    if not getattr(getattr(a, "flags", None), "writeable", True):
        raise ValueError(
            f"{where} is read-only (flags.writeable is False), so it cannot be updated in "
            "place; nothing was changed. Make it writable, or assign a writable copy"
        )


@register
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), PyTorch's ``AdamW``: each
    step first shrinks every parameter (biases too), ``w *= 1 - lr_t * weight_decay``, then
    takes the Adam step (``Adam``) from the loss's gradient alone. ``weight_decay`` defaults
    to PyTorch's 0.01; ``epsilon`` to the book's 1e-7 (PyTorch's is 1e-8), added after the
    square root as in ``Adam``. With ``weight_decay=0`` it is ``Adam``.
    """

    def __init__(
        self,
        learning_rate: float = 0.001,
        decay: float = 0.0,
        epsilon: float = 1e-7,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        weight_decay: float = 0.01,
        *,
        schedule: ScheduleLike = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
    ) -> None:
        super().__init__(
            learning_rate, decay, epsilon, beta_1, beta_2, schedule=schedule,
            clip_norm=clip_norm, clip_value=clip_value,
        )  # fmt: skip
        self.weight_decay = _checks.non_negative_finite(weight_decay, self._arg("weight_decay"))

    def _apply(self, ops: Any, param: Any, grad: Any, states: list[Any]) -> None:
        if self.weight_decay:
            ops.decoupled_weight_decay(param, self.current_learning_rate, self.weight_decay)
        super()._apply(ops, param, grad, states)

    def get_config(self) -> dict[str, Any]:
        return super().get_config() | {"weight_decay": self.weight_decay}
