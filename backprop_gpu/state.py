"""A model's training state as one walk: every (layer, parameter, optimizer state).

Checkpoints (``Model.save`` / ``load``), the non-finite rollback and early stopping's best
weights (``callbacks``), and the MPI broadcast and gradient allreduce (``distributed``) all
go through ``walk``, so they agree on what the state is and what each array is called.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from .flat import assign, state_name


class Slot(NamedTuple):
    """One array of the training state.

    ``key`` is its name in a checkpoint (``layers.2.weights``, ``optimizer.2.weight_momentums``:
    the index is the layer's place in the model), ``layer`` holds it as attribute ``attr``,
    ``param`` is the parameter it belongs to (itself, or the one a state is kept for: its
    shape and dtype), ``name`` that parameter's name (``weights``)."""

    key: str
    layer: Any
    attr: str
    param: Any
    name: str

    @property
    def is_state(self) -> bool:
        return self.key.startswith("optimizer.")

    @property
    def value(self) -> Any:
        """The array the layer holds now (None: an optimizer state not created yet)."""
        return getattr(self.layer, self.attr, None)


def walk(layers: Sequence[Any], optimizer: Any = None) -> Iterator[Slot]:
    """Every parameter of ``layers`` (those with ``params``), each followed by its optimizer
    states when an ``optimizer`` is given (its ``state_kinds``, existing or not)."""
    kinds = optimizer.state_kinds if optimizer is not None else ()
    for i, layer in enumerate(layers):
        for name in getattr(layer, "params", ()):
            param = getattr(layer, name)
            yield Slot(f"layers.{i}.{name}", layer, name, param, name)
            for kind in kinds:
                attr = state_name(name, kind)
                yield Slot(f"optimizer.{i}.{attr}", layer, attr, param, name)


def copy_of(
    slots: Sequence[Slot], xp: Any, previous: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Device copies of the slots' current arrays by key (None where a state does not exist
    yet). The arrays of a ``previous`` copy are overwritten where they fit, so repeated
    copies (one an epoch) reuse their memory."""
    previous = previous or {}
    copies: dict[str, Any] = {}
    for slot in slots:
        value, kept = slot.value, previous.get(slot.key)
        if value is None:
            copies[slot.key] = None
        elif (
            kept is not None
            and kept is not value
            and kept.shape == value.shape
            and (kept.dtype == value.dtype)
        ):
            kept[...] = value
            copies[slot.key] = kept
        else:
            copies[slot.key] = xp.asarray(value, copy=True)
    return copies


def put_back(slots: Sequence[Slot], copies: dict[str, Any]) -> None:
    """Set every slot found in ``copies`` back to its copied value (into the flat buffers
    where the layer's attribute is one of their views, so they stay in use)."""
    for slot in slots:
        if slot.key in copies:
            assign(slot.layer, slot.attr, copies[slot.key])
