"""How data enters a ``Model``'s passes (``train``, ``evaluate``, ``predict``): the checks,
the casting, the labels, and the copy or the stream.

Data come in as host arrays (NumPy, lists, memory-mapped files) or arrays already on the
model's device. Each call checks them once, on the host when they are host data (shape,
NaN/Inf and labels against the model's classes, in blocks for a file), and places them
(``place``): copied to the device once (``DeviceData``), or left on the host and streamed a
batch at a time (``HostData``, through the backend's ``Transfer``). The trainer and
``evaluate`` ask the ``Data`` for their batches and never where it lives. The steps then run
with the per-call label checks of the loss and accuracy off (``Unchecked``), since the whole
data set passed.

    data = prepare(model, X, y, "Model.train", data_on_device)   # train, evaluate
    for Xb, yb in data.batches(order, [(0, 128), (128, 200)]): ...
    X_dev = prepare_x(model, X, "Model.predict", sync_ok=False)   # predict: on the device
    size = batch_size(batch_size, data.n, "Model.train")
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _checks
from .backend import array_library, dtype_name, host_array, to_numpy
from .losses import CLASS_LOSSES

if TYPE_CHECKING:
    from .model import Model

# how a label check a hand-written loop left pending came to raise in the Model's pass
READ_BY = " (checked on the device in an earlier call, read by {})"


def check_pending(where: str) -> None:
    """Raise now for a device label check a hand-written loop left pending (read by
    ``where``, e.g. "Model.train"), so no pass starts on top of it."""
    _checks.check_pending_labels(READ_BY.format(where))


DEVICE_SHARE = 0.5  # data_on_device=None: on the device when it takes at most this share of
# the device's free memory (CuPy: free memory and its pool's unused bytes); the rest is kept
# for the parameters, optimizer state, a step's activations and the pool's rounding


def prepare(model: Model, X: Any, y: Any, where: str, on_device: bool | None = None) -> Data:
    """(X, y) checked once and ready for a pass (``Model.train``, ``evaluate``): copied to
    the model's device (``DeviceData``), or left on the host and streamed batch by batch
    (``HostData``), as ``on_device`` says (None: ``place`` decides)."""
    if not isinstance(on_device, bool | None):
        raise TypeError(f"{where}: data_on_device must be None, True or False, got {on_device!r}")
    if place(model, X, y, where, on_device):
        return DeviceData(model, *prepare_xy(model, X, y, where))
    x = host_x(model, X, where)
    return HostData(model, x, host_y(model, y, x.shape[0], where))


def place(model: Model, X: Any, y: Any, where: str, on_device: bool | None) -> bool:
    """Whether (X, y) go to the device whole (True) or are streamed from the host (False).
    ``on_device`` True or False is obeyed (False needs host data); None decides: data
    already on the device stays there; on NumPy host arrays are used in place and only
    memory-mapped files (``np.load(..., mmap_mode="r")``) are streamed, never read whole;
    elsewhere the data go to the device when they take at most ``DEVICE_SHARE`` of its free
    memory, or when it cannot say (the stand-in)."""
    on_host = all(array_library(a) in ("numpy", None) for a in (X, y))
    if not on_host:
        if on_device is False:
            raise ValueError(
                f"{where}: data_on_device=False streams host data batch by batch, but X or y "
                "is already on the device; pass host arrays (bg.to_numpy), or leave "
                "data_on_device at None"
            )
        return True
    if on_device is not None:
        return on_device
    if model.backend.host:
        return not any(isinstance(a, np.memmap) for a in (X, y))
    free = model.backend.free_memory()
    if free is None:
        return True
    return data_bytes(model, X, y) <= DEVICE_SHARE * free


def data_bytes(model: Model, X: Any, y: Any) -> int:
    """What (X, y) take on the device: X in the model's dtype, y as int64 labels or
    targets (8 bytes a value at most), from their shapes alone."""
    itemsize = np.dtype(dtype_name(model.dtype)).itemsize
    return int(np.size(X)) * itemsize + int(np.size(y)) * 8


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
        return x_dev, _checks.labels(backend, y, n, _classes(model, where), dtype, f"{where} y")
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
    backend = model.backend
    if array_library(X) in ("numpy", None):
        x = host_x(model, X, where)
        if isinstance(x, np.memmap) and not backend.host:  # (a file: to the device in blocks,
            return _to_device_in_blocks(backend, x, model.dtype)  # never whole on the host)
        return backend.asarray(x, model.dtype, what=f"{where} X")
    x = check_x_shape(model, backend.asarray(X, what=f"{where} X"), where)
    x = backend.asarray(x, model.dtype, what=f"{where} X")
    if sync_ok:
        _checks.check_finite(x, f"{where}: X")
    return x


def _to_device_in_blocks(backend: Any, x: np.ndarray, dtype: Any) -> Any:
    """A memory-mapped ``x`` on the device in ``dtype``, copied a check block at a time (the
    host holds one block and its cast, not the file)."""
    out = backend.empty(x.shape, dtype)
    for start, part in _checks.host_chunks(x, _checks.CHUNK_BYTES):
        out[start : start + part.shape[0], ...] = backend.asarray(np.asarray(part), dtype)
    return out


def host_x(model: Model, X: Any, where: str) -> np.ndarray:
    """Host X checked as ``prepare_x`` does (finite in chunks), not copied: a memory-mapped
    file stays one."""
    x = host_array(X, f"{where} X") if not isinstance(X, np.ndarray) else X
    _checks.warn_if_integer(x.dtype, where)
    check_x_shape(model, x, where)
    _checks.check_finite(x, f"{where}: X")
    return x


def check_x_shape(model: Model, x: Any, where: str) -> Any:
    """``x`` when it is (samples, the first Dense's n_inputs) with samples > 0."""
    origin = " (the first Dense's n_inputs)"
    return _checks.batch_shape(x, model.n_inputs, f"{where}:", "X", origin)


def host_y(model: Model, y: Any, n: int, where: str) -> np.ndarray:
    """Host y checked as ``prepare_xy`` does (values in chunks) and shaped as the device's
    would be ((N,) labels, (N, C) one-hot rows, (N, outputs) targets), not copied."""
    y = host_array(y, f"{where} y") if not isinstance(y, np.ndarray) else y
    y_len = y.shape[0] if y.ndim else 0
    if y_len != n:
        raise ValueError(f"{where}: X has {n} samples but y has {y_len}; they must match")
    if isinstance(model.loss, CLASS_LOSSES):
        return _checks.host_labels(y, n, _classes(model, where), f"{where} y")
    if y.dtype.kind not in "biuf":
        raise TypeError(f"{where} y y_true must hold numbers, got dtype {y.dtype}")
    _checks.check_finite(y, f"{where}: y")
    return _checks.target_shape(np, y, n, model.n_outputs or 1, f"{where} y")  # type: ignore[no-any-return]


def _classes(model: Model, where: str) -> int:
    if model.n_outputs is None:
        raise ValueError(f"{where}: no Dense layer, so the number of classes is unknown")
    return model.n_outputs


# --- the data of a pass: on the device, or streamed from the host --------------------------

Ranges = Sequence[tuple[int, int]]


class Data(abc.ABC):
    """A checked data set of a pass, asked for its batches: ``batches(order, ranges)``
    gives the rows ``order[lo:hi]`` (``lo:hi`` when ``order`` is None) of each ``(lo, hi)``
    in turn, as (X, y) device arrays in the model's dtype (int64 labels) for the next step.
    A batch's arrays hold until the next batch is asked for (they may be reused buffers)."""

    n: int

    @abc.abstractmethod
    def order(self, permutation: np.ndarray) -> Any:
        """An epoch's shuffle (host int64) where this data takes it from."""

    @abc.abstractmethod
    def batches(self, order: Any, ranges: Ranges) -> Iterator[tuple[Any, Any]]:
        """The batches of ``ranges`` in turn (see the class)."""

    @abc.abstractmethod
    def host_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``rows`` of X and y on the host, as on the device (a data set's fingerprint)."""


class DeviceData(Data):
    """The data set copied to the device once: a batch is a slice, or a gather into the
    arrays of the previous step (NumPy: ``Backend.reuses_step_buffers``)."""

    def __init__(self, model: Model, X: Any, y: Any) -> None:
        self.backend, self.X, self.y, self.n = model.backend, X, y, X.shape[0]
        self._kept: dict[str, Any] | None = {} if model.backend.reuses_step_buffers else None

    def order(self, permutation: np.ndarray) -> Any:
        return self.backend.asarray(permutation)  # one small copy an epoch

    def batches(self, order: Any, ranges: Ranges) -> Iterator[tuple[Any, Any]]:
        X, y, take, kept = self.X, self.y, self.backend.ops.take_batch, self._kept
        xp = self.backend.xp
        for lo, hi in ranges:
            if order is None:
                yield X[lo:hi, ...], y[lo:hi, ...]
            elif kept is None:
                yield take(X, y, order[lo:hi])
            else:
                out = (_kept(xp, kept, "X", X, hi - lo), _kept(xp, kept, "y", y, hi - lo))
                yield take(X, y, order[lo:hi], out)

    def host_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        xp, index = self.backend.xp, self.backend.asarray(rows)
        return to_numpy(xp.take(self.X, index, axis=0)), to_numpy(xp.take(self.y, index, axis=0))


class HostData(Data):
    """The data set left on the host (arrays or memory-mapped files, checked and shaped but
    not copied), each batch gathered into host buffers and sent to the device through the
    backend's ``Transfer``: NumPy's buffers are the batch (reused: no allocation a step);
    CuPy's are pinned and copied on a second stream while the previous batch computes."""

    def __init__(self, model: Model, X: np.ndarray, y: np.ndarray) -> None:
        self.backend, self.X, self.y, self.n = model.backend, X, y, X.shape[0]
        x_dtype = np.dtype(dtype_name(model.dtype))
        labels = isinstance(model.loss, CLASS_LOSSES) and y.ndim == 1
        self.dtypes = (x_dtype, np.dtype(np.int64) if labels else x_dtype)
        self._transfer: Any = None
        self._staged: dict[int, np.ndarray] = {}  # (rows in the file's dtype, to be cast)

    def order(self, permutation: np.ndarray) -> Any:
        return permutation  # (the gathers run on the host)

    def _buffers(self, rows: int) -> Any:
        t = self._transfer
        if t is None or t.rows < rows:
            columns = [(a.shape[1:], d) for a, d in zip((self.X, self.y), self.dtypes, strict=True)]
            t = self._transfer = self.backend.transfer(rows, columns)
            self._staged = {}
        return t

    def batches(self, order: Any, ranges: Ranges) -> Iterator[tuple[Any, Any]]:
        if not ranges:
            return
        t = self._buffers(max(hi - lo for lo, hi in ranges))
        ahead, slots = t.slots - 1, t.slots

        def load(i: int) -> None:
            lo, hi = ranges[i]
            index = slice(lo, hi) if order is None else order[lo:hi]
            for c, (source, out) in enumerate(zip((self.X, self.y), t.buffers(i % slots),
                                                  strict=True)):  # fmt: skip
                self._gather(c, source, index, out[: hi - lo])
            t.send(i % slots, hi - lo)

        try:
            for i in range(min(ahead, len(ranges))):  # (CuPy: the first batch, before the loop)
                load(i)
            for i, (lo, hi) in enumerate(ranges):
                if i + ahead < len(ranges):
                    load(i + ahead)  # (CuPy: the next batch's copy, queued before this step)
                try:
                    yield tuple(t.receive(i % slots, hi - lo))  # type: ignore[misc]
                finally:  # (also when the loop stops early: the slot's arrays may go)
                    t.release(i % slots)
        finally:  # (a copy queued for a batch never asked for finishes before buffers can go)
            t.settle()

    def _gather(self, column: int, source: np.ndarray, index: Any, out: np.ndarray) -> None:
        """Rows ``index`` (a slice or host int64 indices) of ``source`` into ``out``, cast to
        its dtype as the copy to the device would (``astype``), through a reused buffer in
        the source's dtype when the two differ."""
        if source.dtype == out.dtype:
            if isinstance(index, slice):
                out[...] = source[index]
            else:
                np.take(source, index, axis=0, out=out, mode="clip")  # (in range: no temporary)
            return
        staged = self._staged.get(column)
        if staged is None or staged.shape[0] < out.shape[0]:
            staged = self._staged[column] = np.empty((self._transfer.rows, *source.shape[1:]),
                                                     source.dtype)  # fmt: skip
        part = staged[: out.shape[0]]
        if isinstance(index, slice):
            part[...] = source[index]
        else:
            np.take(source, index, axis=0, out=part, mode="clip")
        np.copyto(out, part, casting="unsafe")

    def host_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x, y = (np.take(a, rows, axis=0).astype(d, copy=False)
                for a, d in zip((self.X, self.y), self.dtypes, strict=True))  # fmt: skip
        return x, y


def _kept(xp: Any, buffers: dict[str, Any], key: str, like: Any, rows: int) -> Any:
    """The kept array ``key`` for ``rows`` rows of ``like`` (its dtype and other axes), made
    if missing or of another shape."""
    shape = (rows, *like.shape[1:])
    kept = buffers.get(key)
    if kept is None or kept.shape != shape or kept.dtype != like.dtype:
        kept = buffers[key] = xp.empty(shape, dtype=like.dtype)
    return kept


def batch_size(size: int | None, n: int, where: str) -> int:
    """The batch size of a pass over ``n`` samples: ``size``, or all of them when None."""
    if size is None:
        return n
    if not isinstance(size, int | np.integer) or size <= 0:
        raise ValueError(f"{where}: batch_size must be a positive integer, got {size!r}")
    return int(size)


class Unchecked:
    """Turn off the per-call label checks of a loss and accuracy for a block (the data set
    was checked once, by ``prepare``), and restore them after."""

    def __init__(self, *objects: Any) -> None:
        self.objects = [o for o in objects if o is not None and hasattr(o, "validate")]

    def __enter__(self) -> None:
        self.saved = [o.validate for o in self.objects]
        for o in self.objects:
            o.validate = False

    def __exit__(self, *exc: object) -> None:
        for o, v in zip(self.objects, self.saved, strict=True):
            o.validate = v
