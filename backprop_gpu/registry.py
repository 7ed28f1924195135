"""The one registry of classes that are named in files and on the command line: layers,
losses, optimizers, accuracies and learning-rate schedules, by name.

``Model.save`` writes each layer, the loss, the accuracy and the optimizer (with its
schedule) as ``{"class": name, "config": obj.get_config()}``; ``Model.load`` looks the name up
here and calls ``cls(**config)``. The command line's names (``--optimizer adam``,
``--activation relu``, ``--schedule cosine``) are looked up here too, case-insensitively.
Every built-in class is registered where it is defined (a ``Schedule`` subclass registers
itself when it is defined); register your own with the decorator::

    @bg.register
    class LeakyReLU(bg.Layer):
        ...

and import its module before ``Model.load`` reads a file that names it.

One name space for all five kinds (a name means one class), and no two names that differ
only in case (so the case-insensitive names stay unambiguous). Registering a name again with
a class of the same module and qualified name replaces it (a re-run notebook cell, a
reloaded module); with any other class it is an error naming both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, overload

KINDS = ("layer", "loss", "optimizer", "accuracy", "schedule")

_CLASSES: dict[str, type] = {}  # registered name -> class
_NAMES: dict[type, str] = {}  # class -> its registered name

C = TypeVar("C", bound=type)


@overload
def register(cls: C, *, name: str | None = None) -> C: ...
@overload
def register(cls: None = None, *, name: str | None = None) -> Callable[[C], C]: ...
def register(cls: Any = None, *, name: str | None = None) -> Any:
    """Register ``cls`` under ``name`` (default: its class name) so checkpoints and the
    command line can name it; returns ``cls`` unchanged. As a decorator: ``@register`` or
    ``@register(name="...")``.

    The kind comes from the base class (``Layer``, ``Loss``, ``Optimizer``, ``Accuracy``,
    ``Schedule``); a class with ``forward`` and ``backward`` but none of those bases counts as
    a layer.
    """
    if cls is None:
        return lambda c: register(c, name=name)
    if not isinstance(cls, type):
        raise TypeError(f"register: expected a class, got {cls!r}")
    name = cls.__name__ if name is None else name
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"register: name must be a Python identifier, got {name!r}")
    kind_of(cls)  # raises for what no checkpoint could hold
    for known, other in _CLASSES.items():
        if known.casefold() != name.casefold() or _same(other, cls):
            continue
        clash = "is" if known == name else f"differs only in case from {known!r},"
        raise ValueError(
            f"register: {name!r} {clash} registered to {_where(other)}; cannot register "
            f"{_where(cls)} too. Give one of them another name (@register(name=...))"
        )
    old = _CLASSES.get(name)
    if old is not None and old is not cls:  # a redefinition: the old class is gone
        _NAMES.pop(old, None)
    # (one class under a second name: both load it, and files are written with the new one)
    _CLASSES[name], _NAMES[cls] = cls, name
    return cls


def kind_of(cls: type) -> str:
    """``"layer"``, ``"loss"``, ``"optimizer"``, ``"accuracy"`` or ``"schedule"``: the
    ``registry_kind`` of a base class, else ``"layer"`` for a class with ``forward`` and
    ``backward``."""
    kind = getattr(cls, "registry_kind", None)
    if kind in KINDS:
        return str(kind)
    if callable(getattr(cls, "forward", None)) and callable(getattr(cls, "backward", None)):
        return "layer"
    raise TypeError(
        f"register: {_where(cls)} is not a layer, loss, optimizer, accuracy or schedule "
        "(derive from bg.Layer, or give it forward and backward methods)"
    )


def lookup(name: str, kind: str) -> type:
    """The class of ``kind`` registered as ``name``, or under a name equal to it but for
    case (``"adam"`` finds ``Adam``). ``ValueError`` says what is registered, and how to
    register a class of your own."""
    if kind not in KINDS:
        raise ValueError(f"lookup: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    cls = find(name)
    if cls is None:
        raise ValueError(
            f"unknown {kind} class {name!r}: if it is your own, decorate it with "
            f"@bg.register and import it before loading (registered {kind}s: "
            f"{', '.join(names(kind))})"
        )
    if kind_of(cls) != kind:
        raise ValueError(
            f"{name!r} is registered as kind {kind_of(cls)!r} ({_where(cls)}), not {kind!r}"
        )
    return cls


def find(name: str) -> type | None:
    """The class registered as ``name``, or under a name equal to it but for case, whatever
    its kind; None if there is none."""
    cls = _CLASSES.get(name)
    if cls is None and isinstance(name, str):
        cls = next((c for n, c in _CLASSES.items() if n.casefold() == name.casefold()), None)
    return cls


def names(kind: str) -> tuple[str, ...]:
    """The registered names of ``kind``, in registration order."""
    return tuple(n for n, c in _CLASSES.items() if kind_of(c) == kind)


def name_of(obj: Any) -> str:
    """The registered name of ``obj``'s class (what a checkpoint stores). ``ValueError`` when
    the class is not registered: a file naming it could not be loaded."""
    cls = type(obj)
    name = _NAMES.get(cls)
    if name is None:
        raise ValueError(
            f"{_where(cls)} is not registered, so Model.load could not rebuild it from a "
            "file: decorate it with @bg.register (and import it before loading)"
        )
    return name


def build(spec: dict[str, Any], kind: str, **extra: Any) -> Any:
    """``cls(**spec["config"], **extra)`` for the class of ``kind`` that ``spec["class"]``
    names (a spec as ``Model.save`` writes it)."""
    return lookup(spec["class"], kind)(**spec["config"], **extra)


def _same(a: type, b: type) -> bool:
    """One class, or a redefinition of it (same module and qualified name)."""
    return a is b or (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
