"""Flat parameter buffers: one optimizer update per dtype for a whole model.

``FlatParameters`` owns, for each dtype of a model's parameters, one 1-D buffer holding every
parameter, one holding every gradient and one per optimizer-state kind (``momentums``,
``cache``). Each layer's ``weights``, ``dweights``, ``weight_momentums``, ... are reshaped
views into them (contiguous slices), so

- ``Dense.backward`` writes its gradients straight into the gradient buffer;
- ``Optimizer.step`` applies its rule once per dtype, over the whole buffers (``ops.adam`` on
  every parameter at once: one call, one kernel launch on a GPU). The rules are elementwise,
  so they give the same bits whatever the array's shape; the gaps between slices (each slice
  starts on a 256-byte boundary) hold zeros, which every rule keeps at zero;
- distributed training allreduces the gradient buffer as it is, one call per dtype.

The layers keep the nnfs attributes: a hand-written loop reads and writes ``layer.weights``
as before. Whoever replaces an attribute (``layer.weights = w``) takes that parameter off the
buffers: the optimizer then notices (an identity check per array, a few ns each) and updates
the arrays the layers hold one by one, as without buffers; it never updates a buffer the layer
no longer looks at. ``assign`` writes a value into the view instead (what checkpoint loading,
the non-finite rollback and the MPI broadcast use), which keeps the buffers in use.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .backend import Backend, dtype_name

ALIGN_BYTES = 256  # each slice starts on this boundary (what vector loads and cuBLAS like)

_SINGULAR = {"weights": "weight", "biases": "bias"}


@functools.cache  # (looked up for every state of every update: 60 ns cached, 130 ns not)
def state_name(param: str, kind: str) -> str:
    """``("weights", "momentums")`` -> ``"weight_momentums"``, the book's attribute names."""
    return f"{_SINGULAR.get(param, param)}_{kind}"


class Slot:
    """One parameter of one layer: where it lies in its dtype's buffers and its views."""

    __slots__ = ("grad", "grad_attr", "layer", "name", "param", "shape", "start", "states", "stop")

    def __init__(self, layer: Any, name: str, shape: tuple[int, ...], start: int, size: int):
        self.layer, self.name, self.grad_attr = layer, name, "d" + name
        self.shape, self.start, self.stop = shape, start, start + size
        self.param: Any = None  # the views, set by Group
        self.grad: Any = None
        self.states: dict[str, Any] = {}  # kind -> view


class Group:
    """The buffers of one dtype: ``params``, ``grads`` and ``states[kind]``, each 1-D."""

    def __init__(self, backend: Backend, dtype: Any, slots: list[Slot], size: int) -> None:
        self.backend, self.dtype, self.slots = backend, dtype, slots
        self.params = self._buffer(size)
        self.grads = self._buffer(size)
        self.states: dict[str, Any] = {}
        for slot in slots:
            slot.param = self._view(self.params, slot, slot.name)
            slot.grad = self._view(self.grads, slot, slot.grad_attr)

    def _buffer(self, size: int) -> Any:
        return self.backend.from_host(np.zeros(size, dtype_name(self.dtype)))

    def _view(self, buffer: Any, slot: Slot, attr: str) -> Any:
        """The reshaped slice of ``buffer`` for ``slot`` (a view: writes go to the buffer),
        recorded as the view of ``attr`` in the layer's ``_flat_views``."""
        view = self.backend.xp.reshape(buffer[slot.start : slot.stop], slot.shape)
        slot.layer._flat_views[attr] = view
        return view

    def add_state(self, kind: str) -> None:
        """A zero buffer for state ``kind`` with its views; layers' existing states of that
        kind are copied in (None ones start at zero, as the optimizer would create them)."""
        self.states[kind] = buffer = self._buffer(self.params.shape[0])
        for slot in self.slots:
            attr = state_name(slot.name, kind)
            view = slot.states[kind] = self._view(buffer, slot, attr)
            old = getattr(slot.layer, attr, None)
            if old is not None:
                view[...] = old
            setattr(slot.layer, attr, view)


class FlatParameters:
    """The flat buffers of ``layers`` (those with ``params``), one ``Group`` per dtype.

    Building it copies each layer's parameters, and its gradients and the optimizer states
    of ``state_kinds`` that exist, into fresh buffers and points the layers' attributes at
    the views. Shapes: a parameter of shape S has views of shape S; every buffer is 1-D.
    """

    def __init__(self, layers: Iterable[Any], state_kinds: Sequence[str] = ()) -> None:
        self.layers = tuple(layer for layer in layers if getattr(layer, "params", ()))
        if not self.layers:
            raise ValueError("FlatParameters: no layer with parameters")
        self.backend: Backend = self.layers[0].backend
        plan: dict[str, list[Slot]] = {}
        sizes: dict[str, int] = {}
        self.slots: list[list[Slot]] = []  # per layer, per parameter (layer.params' order)
        for layer in self.layers:
            layer._flat_views = {}
            row = []
            for name in layer.params:
                param = getattr(layer, name)
                dtype, size = dtype_name(param.dtype), int(np.prod(param.shape))
                align = max(1, ALIGN_BYTES // np.dtype(dtype).itemsize)
                start = sizes.get(dtype, 0)
                slot = Slot(layer, name, tuple(param.shape), start, size)
                sizes[dtype] = start + -(-size // align) * align
                plan.setdefault(dtype, []).append(slot)
                row.append(slot)
            self.slots.append(row)
        self.groups = {
            dtype: Group(self.backend, self.backend.dtype(dtype), slots, sizes[dtype])
            for dtype, slots in plan.items()
        }
        for group in self.groups.values():
            for slot in group.slots:
                layer = slot.layer
                slot.param[...] = getattr(layer, slot.name)
                setattr(layer, slot.name, slot.param)
                grad = getattr(layer, slot.grad_attr, None)
                if grad is not None and _same_kind(grad, slot.grad):
                    slot.grad[...] = grad
                    setattr(layer, slot.grad_attr, slot.grad)
            for kind in state_kinds:
                if any(getattr(s.layer, state_name(s.name, kind), None) is not None
                       for s in group.slots):  # fmt: skip
                    group.add_state(kind)
        for layer in self.layers:
            layer._flat = self

    @classmethod
    def packable(cls, layers: Iterable[Any]) -> bool:
        """Whether every parameter of ``layers`` can go into buffers: a plain, writable array
        of the layers' one backend on its device. (Anything else stays where it is, so the
        optimizer's checks report it as they would without buffers.)"""
        trainable = [layer for layer in layers if getattr(layer, "params", ())]
        if not trainable:
            return False
        backend = trainable[0].backend
        for layer in trainable:
            if layer.backend is not backend:
                return False
            for name in layer.params:
                param = getattr(layer, name, None)
                if type(param) is not backend.array_type or not _writable(param, backend):
                    return False
        return True

    def covers(self, layers: Sequence[Any]) -> bool:
        """Whether ``layers`` (those with parameters) are exactly this object's layers, in
        order."""
        mine = self.layers
        return len(layers) == len(mine) and all(a is b for a, b in zip(layers, mine, strict=True))

    def intact(self, kinds: Sequence[str] = ()) -> bool:
        """Whether every parameter is still its view, and so is every state of ``kinds``
        (one that does not exist yet aside)."""
        for group in self.groups.values():
            for slot in group.slots:
                if getattr(slot.layer, slot.name, None) is not slot.param:
                    return False
                for kind in kinds:
                    state = getattr(slot.layer, state_name(slot.name, kind), None)
                    if state is not None and state is not slot.states.get(kind):
                        return False
        return True

    def ready(
        self, gradients: Sequence[Sequence[tuple[str, Any, Any]]], kinds: Sequence[str]
    ) -> bool:
        """Prepare a one-call-per-dtype update from ``gradients`` (per layer, the
        ``(name, param, grad)`` that ``Optimizer._checked`` returned, all checked): True when
        every parameter, and every state of ``kinds`` that exists, is its view. Then the
        gradients that are not views are copied into theirs, and missing states are made
        (zeros, as the optimizer would). False, with nothing changed, when any parameter or
        existing state has been replaced: the caller updates the arrays one by one."""
        copies: list[tuple[Slot, Any]] = []
        missing: list[tuple[Slot, str]] = []
        for row, checked in zip(self.slots, gradients, strict=True):
            for slot, (_, param, grad) in zip(row, checked, strict=True):
                if param is not slot.param:
                    return False
                if grad is not slot.grad:
                    copies.append((slot, grad))
                for kind in kinds:
                    state = getattr(slot.layer, state_name(slot.name, kind), None)
                    if state is None or state is not slot.states.get(kind):
                        if state is not None:
                            return False
                        missing.append((slot, kind))
        for slot, grad in copies:
            slot.grad[...] = grad
        for slot, kind in missing:
            group = self.groups[dtype_name(slot.param.dtype)]
            if kind not in group.states:
                group.add_state(kind)
            else:
                view = slot.states[kind]
                view[...] = 0
                setattr(slot.layer, state_name(slot.name, kind), view)
        return True

    def gather_gradients(self, group: Group) -> Any:
        """``group``'s gradient buffer, holding every layer's current gradient (one that is
        not its view is copied in, None as zeros), each layer's ``d<param>`` its view."""
        for slot in group.slots:
            grad = getattr(slot.layer, slot.grad_attr, None)
            if grad is slot.grad:
                continue
            if grad is None:
                slot.grad[...] = 0
            else:
                slot.grad[...] = self.backend.xp.reshape(grad, slot.shape)
            setattr(slot.layer, slot.grad_attr, slot.grad)
        return group.grads


def flat_of(layers: Sequence[Any]) -> FlatParameters | None:
    """The ``FlatParameters`` holding exactly ``layers`` (those with parameters), or None."""
    flat = getattr(layers[0], "_flat", None) if layers else None
    return flat if isinstance(flat, FlatParameters) and flat.covers(layers) else None


def assign(layer: Any, attr: str, value: Any) -> None:
    """``setattr(layer, attr, value)``, but into the flat buffer when ``attr`` is one of its
    views (or None, a state the buffer has a view for) and ``value`` fits: the value is
    copied into the view, so the buffers stay in use."""
    views = getattr(layer, "_flat_views", None)
    view = views.get(attr) if views else None
    if view is not None and value is not None and _same_kind(value, view):
        current = getattr(layer, attr, None)
        if current is view or current is None:
            view[...] = value
            setattr(layer, attr, view)
            return
    setattr(layer, attr, value)


def _same_kind(a: Any, b: Any) -> bool:
    return hasattr(a, "shape") and tuple(a.shape) == tuple(b.shape) and a.dtype == b.dtype


def _writable(a: Any, backend: Backend) -> bool:
    if isinstance(a, np.ndarray):
        return bool(a.flags.writeable)
    return bool(backend.device_of(a) == backend.device)


def pack(
    layers: Sequence[Any], optimizer: Any, flat: FlatParameters | None
) -> FlatParameters | None:
    """The ``FlatParameters`` of a Model's trainable ``layers`` and ``optimizer``'s states: one
    per dtype, the layers' arrays views into them, so an optimizer step is one call per dtype.
    ``flat`` (the current one) when it holds them already; None when arrays cannot go there
    (not plain writable arrays of the backend: they stay as they are, so the optimizer's
    checks name them)."""
    kinds = optimizer.state_kinds if optimizer is not None else ()
    if flat is not None and flat.covers(layers) and flat.intact(kinds):
        return flat
    return FlatParameters(layers, kinds) if FlatParameters.packable(layers) else None
