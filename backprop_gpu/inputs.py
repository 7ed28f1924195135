"""How data enters a ``Model``'s passes (``train``, ``evaluate``, ``predict``).

Data come in as host arrays (NumPy, lists) or arrays already on the model's device. Each call
checks them once, on the host where they live there (shape, NaN/Inf, labels against the
model's classes), and copies them to the device once; the steps then run with the per-call
label checks of the loss and accuracy off (``Unchecked``), since the whole data set passed.

    X_dev, y_dev = prepare_xy(model, X, y, "Model.train")   # train, evaluate
    X_dev = prepare_x(model, X, "Model.predict", sync_ok=False)
    size = batch_size(batch_size, X_dev.shape[0], "Model.train")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checks
from .backend import array_library, host_array
from .losses import CLASS_LOSSES

if TYPE_CHECKING:
    from .model import Model

# how a label check a hand-written loop left pending came to raise in the Model's pass
READ_BY = " (checked on the device in an earlier call, read by {})"


def check_pending(where: str) -> None:
    """Raise now for a device label check a hand-written loop left pending (read by
    ``where``, e.g. "Model.train"), so no pass starts on top of it."""
    _checks.check_pending_labels(READ_BY.format(where))


def prepare_xy(model: Model, X: Any, y: Any, where: str) -> tuple[Any, Any]:
    """(X, y) checked once (on the host where they are host data) and on the model's device:
    X as ``prepare_x``; y as class labels for a classification loss, else as targets shaped
    like the outputs (and finite)."""
    x_dev = prepare_x(model, X, where)
    n = x_dev.shape[0]
    if array_library(y) is None:  # Python data: a ragged list is named here
        y = host_array(y, f"{where} y")
    y_len = y.shape[0] if y.ndim else 0
    if y_len != n:
        raise ValueError(f"{where}: X has {n} samples but y has {y_len}; they must match")
    backend, dtype = model.backend, model.dtype
    if isinstance(model.loss, CLASS_LOSSES):
        if model.n_outputs is None:
            raise ValueError(f"{where}: no Dense layer, so the number of classes is unknown")
        return x_dev, _checks.labels(backend, y, n, model.n_outputs, dtype, f"{where} y")
    outputs = model.n_outputs or 1
    on_host = array_library(y) == "numpy"
    if on_host and y.dtype.kind in "biuf":  # like X: on the host, first
        _checks.check_finite(y, f"{where}: y")
    y_dev = _checks.targets(backend, y, n, outputs, dtype, f"{where} y")
    if not on_host:
        _checks.check_finite(y_dev, f"{where}: y")
    return x_dev, y_dev


def prepare_x(model: Model, X: Any, where: str, *, sync_ok: bool = True) -> Any:
    """X checked (2-D, the first Dense's features, not empty, finite) and on the model's
    device in its dtype. NaN/Inf are looked for on the host before the copy; data already on
    the device costs a sync for that, skipped when not ``sync_ok``."""
    backend, n_inputs = model.backend, model.n_inputs
    on_host = array_library(X) in ("numpy", None)
    x = host_array(X, f"{where} X") if on_host else backend.asarray(X, what=f"{where} X")
    if on_host:
        _checks.warn_if_integer(x.dtype, where)
    if x.ndim != 2:
        hint = " (one sample? use X.reshape(1, -1))" if x.ndim == 1 else ""
        raise ValueError(
            f"{where}: expected X of shape (samples, {n_inputs}), got {x.ndim}-D "
            f"shape {tuple(x.shape)}{hint}"
        )
    if n_inputs is not None and x.shape[1] != n_inputs:
        raise ValueError(
            f"{where}: expected X with {n_inputs} features (the first Dense's "
            f"n_inputs), got shape {tuple(x.shape)}"
        )
    if x.shape[0] == 0:
        raise ValueError(f"{where}: X is empty (shape {tuple(x.shape)})")
    if on_host:
        _checks.check_finite(x, f"{where}: X")
    x = backend.asarray(x, model.dtype, what=f"{where} X")
    if not on_host and sync_ok:
        _checks.check_finite(x, f"{where}: X")
    return x


def batch_size(size: int | None, n: int, where: str) -> int:
    """The batch size of a pass over ``n`` samples: ``size``, or all of them when None."""
    if size is None:
        return n
    if not isinstance(size, int | np.integer) or size <= 0:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {size!r}")
    return int(size)


class Unchecked:
    """Turn off the per-call label checks of a loss and accuracy for a block (the data set
    was checked once, by ``prepare_xy``), and restore them after."""

    def __init__(self, *objects: Any) -> None:
        self.objects = [o for o in objects if o is not None and hasattr(o, "validate")]

    def __enter__(self) -> None:
        self.saved = [o.validate for o in self.objects]
        for o in self.objects:
            o.validate = False

    def __exit__(self, *exc: object) -> None:
        for o, v in zip(self.objects, self.saved, strict=True):
            o.validate = v
