"""A ``Model`` to and from a checkpoint file (the file format itself is
:mod:`backprop_gpu.checkpoint`'s): what a whole-model checkpoint holds, and how a model is
rebuilt from one.

- ``save``: the architecture, loss, accuracy and optimizer as ``{"class", "config"}`` specs
  (the registry's names), the epoch count, and every parameter and optimizer state as a
  host array named by ``state.walk`` (``layers.0.weights``, ``optimizer.0.weight_momentums``),
  and ``extra``: JSON metadata the caller adds (a run folder's callback states and data
  description), given back as ``Model.saved_extra``.
- ``load``: the metadata's values checked (``check_model_meta``), each layer built around its
  saved parameters, then every array checked against its slot before any is assigned.
- ``save_parameters`` / ``load_parameters``: the parameters alone, into an existing model.
"""

from __future__ import annotations

import inspect
import math
import os
import reprlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from . import checkpoint, precisions, registry
from .backend import to_numpy
from .checkpoint import CheckpointError
from .flat import assign
from .state import walk

if TYPE_CHECKING:
    from .model import Model

ModelT = TypeVar("ModelT", bound="Model")


def save(model: Model, path: str | os.PathLike[str], extra: dict[str, Any] | None) -> None:
    """Write the whole model to one .npz, atomically (see ``Model.save``)."""
    assert model.loss is not None
    meta: dict[str, Any] = {
        "kind": "model",
        "layers": [_spec(layer) for layer in model.layers],
        "loss": _spec(model.loss),
        "accuracy": None if model.accuracy is None else _spec(model.accuracy),
        "epochs_trained": model.epochs_trained,
        "optimizer": None,
        "extra": extra or {},
        "precision": model.precision,
    }
    scaler = model._policy.scaler if model._policy is not None else None
    if scaler is not None:
        meta["loss_scaler"] = scaler.get_state()
    if model.optimizer is not None:
        opt = model.optimizer
        meta["optimizer"] = _spec(opt) | {
            "iterations": opt.iterations,
            "current_learning_rate": opt.current_learning_rate,
            "base_learning_rate": opt.learning_rate,
        }
    checkpoint.save(path, host_arrays(model, with_state=True), meta)


def load(model_class: type[ModelT], path: str | os.PathLike[str]) -> ModelT:
    """Rebuild a model of ``model_class`` saved by ``save``, on the active backend (for
    ``Model.load``). The metadata's values are checked before anything is built
    (``check_model_meta``) and each layer is built around its saved parameters, so its
    constructor checks their shapes against its settings and nothing is allocated beyond what
    the file holds; every array is then checked against its slot before any is assigned."""
    arrays, meta = checkpoint.load(path)
    if meta.get("kind") != "model":
        raise CheckpointError(
            f"{path}: holds {meta.get('kind')!r}, not a whole model; use load_parameters"
        )
    check_model_meta(meta, path)
    layers = []
    for i, spec in enumerate(meta["layers"]):
        where = f"{path}: cannot rebuild layers[{i}] ({spec['class']})"
        try:
            layer_class = registry.lookup(spec["class"], "layer")
        except ValueError as e:
            raise CheckpointError(f"{where}: {e}") from e
        # parameters the constructor takes go to it: Dense(n_inputs, n_neurons,
        # weights=..., biases=...) checks their shapes; the others are assigned below
        takes = inspect.signature(layer_class).parameters
        saved = {}
        for name in getattr(layer_class, "params", ()):
            if (key := f"layers.{i}.{name}") not in arrays:
                raise CheckpointError(f"{path}: missing array {key!r}")
            if name in takes:
                saved[name] = arrays[key]
        try:
            layers.append(layer_class(**spec["config"], **saved))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: {e}") from e
    try:
        model = model_class(layers, precision=meta.get("precision", "float32"))
        accuracy = meta["accuracy"]
        model.set(
            loss=registry.build(meta["loss"], "loss"),
            accuracy=None if accuracy is None else registry.build(accuracy, "accuracy"),
        )
        opt_meta = meta["optimizer"]
        if opt_meta is not None:
            model.set(optimizer=registry.build(opt_meta, "optimizer"))
            opt = model.optimizer
            assert opt is not None
            opt.iterations = int(opt_meta["iterations"])
            opt.current_learning_rate = float(opt_meta["current_learning_rate"])
            # (a ReduceLROnPlateau may have lowered the base rate since construction)
            opt.learning_rate = float(opt_meta.get("base_learning_rate", opt.learning_rate))
        model.finalize()
        if meta.get("loss_scaler") is not None and model._policy is not None:
            assert model._policy.scaler is not None
            model._policy.scaler.set_state(meta["loss_scaler"])
        model.epochs_trained = int(meta["epochs_trained"])
        model.saved_extra = dict(meta.get("extra") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot rebuild the model: {e!r}") from e
    _assign(_checked(model, arrays, path, with_state=True))
    return model


def check_model_meta(meta: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a ``kind == "model"`` checkpoint whose metadata ``Model.load`` could not use:
    each layer, the loss, the accuracy (or null) and the optimizer (or null) a
    ``{"class": name, "config": {...}}`` object, ``epochs_trained`` and the optimizer's
    ``iterations`` non-negative integers, its ``current_learning_rate`` finite and >= 0.
    The settings inside each ``config`` are checked by the class's own constructor."""

    def fail(field: str, expected: str, got: Any) -> None:
        raise CheckpointError(f"{path}: {field} must be {expected}, got {reprlib.repr(got)}")

    def need(owner: dict[str, Any], key: str, field: str) -> Any:
        if key not in owner:
            raise CheckpointError(f"{path}: the metadata has no {field}")
        return owner[key]

    def spec(value: Any, field: str) -> None:
        if not isinstance(value, dict) or not isinstance(value.get("class"), str):
            fail(field, 'an object {"class": name, "config": {...}}', value)
        if not isinstance(value.get("config"), dict):
            fail(f"{field}.config", "an object", value.get("config"))

    def count(owner: dict[str, Any], key: str, field: str) -> None:
        n = need(owner, key, field)
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            fail(field, "a non-negative integer", n)

    layers = need(meta, "layers", "layers")
    if not isinstance(layers, list) or not layers:
        fail("layers", "a non-empty list", layers)
    for i, layer in enumerate(layers):
        spec(layer, f"layers[{i}]")
    spec(need(meta, "loss", "loss"), "loss")
    if need(meta, "accuracy", "accuracy") is not None:
        spec(meta["accuracy"], "accuracy")
    count(meta, "epochs_trained", "epochs_trained")
    if "precision" in meta:
        try:
            precisions.check(meta["precision"], "precision")
        except ValueError as e:
            raise CheckpointError(f"{path}: {e}") from None
    scaler = meta.get("loss_scaler")
    if scaler is not None and meta.get("precision") != "mixed16":
        fail("loss_scaler", "absent unless precision is mixed16", scaler)
    if scaler is not None:
        try:
            precisions.LossScaler().set_state(scaler)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: loss_scaler is not a loss scaler's state: {e!r}"
            ) from None
    optimizer = need(meta, "optimizer", "optimizer")
    if optimizer is not None:
        spec(optimizer, "optimizer")
        count(optimizer, "iterations", "optimizer.iterations")
        rate = need(optimizer, "current_learning_rate", "optimizer.current_learning_rate")
        if (
            not isinstance(rate, int | float)
            or isinstance(rate, bool)
            or not math.isfinite(rate)
            or rate < 0
        ):  # (0 is a schedule's rate at a warmup's start or a cosine's end)
            fail("optimizer.current_learning_rate", "a finite number >= 0", rate)


def save_parameters(model: Model, path: str | os.PathLike[str]) -> None:
    """Write the layers' parameters to ``path`` (.npz), atomically."""
    names = [type(layer).__name__ for layer in model.layers]
    checkpoint.save(path, host_arrays(model, False), {"kind": "parameters", "layers": names})


def load_parameters(model: Model, path: str | os.PathLike[str]) -> None:
    """Load parameters saved by ``save_parameters`` or ``save`` into ``model``'s layers, all
    checked before any is assigned."""
    arrays, _ = checkpoint.load(path)
    _assign(_checked(model, arrays, path, with_state=False))


def host_arrays(model: Model, with_state: bool) -> dict[str, np.ndarray]:
    """Parameters (and optimizer state that exists) as host arrays, by checkpoint key."""
    return {
        key: to_numpy(value)
        for key, layer, attr, _ in _slots(model, with_state)
        if (value := getattr(layer, attr, None)) is not None
    }


def _slots(model: Model, with_state: bool) -> Iterator[tuple[str, Any, str, Any]]:
    """``(key, layer, attribute, parameter)`` for every parameter and, ``with_state``,
    every optimizer-state slot beside it (``state.walk``); ``key`` is the array's name in
    a checkpoint."""
    for slot in walk(model.layers, model.optimizer if with_state else None):
        yield slot.key, slot.layer, slot.attr, slot.param


def _checked(
    model: Model, arrays: dict[str, np.ndarray], path: Any, with_state: bool
) -> list[tuple[Any, str, Any]]:
    """``(layer, attribute, device array or None)`` for every slot, after checking that
    every parameter is there, every array has its parameter's shape and none is extra.
    Optimizer state missing from the file was never created: it comes back as None."""
    updates, known = [], set()
    for key, layer, attr, param in _slots(model, with_state):
        known.add(key)
        if key not in arrays:
            if key.startswith("layers."):
                raise CheckpointError(f"{path}: missing array {key!r}")
            updates.append((layer, attr, None))
            continue
        if arrays[key].shape != tuple(param.shape):
            raise CheckpointError(
                f"{path}: {key} has shape {arrays[key].shape}, the model needs {tuple(param.shape)}"
            )
        updates.append((layer, attr, layer.backend.asarray(arrays[key], param.dtype)))
    families = ("layers.", "optimizer.") if with_state else ("layers.",)
    extra = sorted(k for k in arrays if k.startswith(families) and k not in known)
    if extra:
        raise CheckpointError(f"{path}: arrays {extra} have no matching slot in this model")
    return updates


def _assign(updates: list[tuple[Any, str, Any]]) -> None:
    """Set each ``(layer, attribute, value)``, into the flat buffers where the attribute
    is one of their views (so they stay in use)."""
    for layer, attr, value in updates:
        assign(layer, attr, value)


def _spec(obj: Any) -> dict[str, Any]:
    """What a checkpoint stores of ``obj``: its registered class name and its config
    (``ValueError`` for a class that is not registered: no file could bring it back)."""
    return {"class": registry.name_of(obj), "config": obj.get_config()}
