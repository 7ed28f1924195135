"""Input checks shared by layers, losses and optimizers: cheap, and with messages that say
who complained, what was expected and what came; and ``check_finite`` for NaN and Inf."""

from __future__ import annotations

import math
import numbers
import os
import sys
import types
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from .backend import Backend, array_library, dtype_name, host_array, to_numpy
from .backend.base import HostRead
from .backend.numpy_backend import host_finite


def batch(backend: Backend, inputs: Any, n_features: int, dtype: Any, where: str) -> Any:
    """``inputs`` as a (batch, n_features) array of ``dtype`` on ``backend``'s device.
    Integer host data is cast with a warning (pixels 0-255 usually want scaling first)."""
    ready = backend.ready(inputs, dtype) and inputs.ndim == 2
    if ready and inputs.shape[1] == n_features and inputs.shape[0]:
        return inputs
    if array_library(inputs) in ("numpy", None):
        inputs = host_array(inputs, f"{where} inputs")
        warn_if_integer(inputs.dtype, where)
    else:
        inputs = backend.asarray(inputs, what=f"{where} inputs")
    batch_shape(inputs, n_features, where, "inputs", " (the layer's n_inputs)")
    return backend.asarray(inputs, dtype, what=f"{where} inputs")


def batch_shape(x: Any, n_features: int | None, where: str, name: str, origin: str = "") -> Any:
    """``x`` when it is a 2-D batch (samples, n_features) with samples > 0, else
    ``ValueError`` naming ``where`` and ``name`` (``origin``: where n_features comes from).
    A layer's inputs and a Model pass's X alike."""
    shape = tuple(x.shape)
    if x.ndim != 2:
        hint = f" (one sample? use {name}.reshape(1, -1))" if x.ndim == 1 else ""
        raise ValueError(
            f"{where} expected {name} as a 2-D batch of shape (samples, {n_features}), got "
            f"{x.ndim}-D shape {shape}{hint}"
        )
    if n_features is not None and shape[1] != n_features:
        raise ValueError(
            f"{where} expected {name} with {n_features} features{origin}, got shape {shape}"
        )
    if shape[0] == 0:
        raise ValueError(f"{where} got an empty batch: {name} has shape {shape}")
    return x


def all_finite(xp: Any, a: Any) -> Any:
    """Whether float array ``a`` holds no NaN or Inf: a bool on NumPy (its min and max pass
    NaN on: two passes and no temporary array, 6 vs 9 ms for 64 MB), a 0-d device array
    elsewhere (for the caller to read, with others, in one copy)."""
    if xp is np:
        return host_finite(a)
    return xp.all(xp.isfinite(a))


def check_finite(array: Any, name: str = "array") -> Any:
    """Raise ``ValueError`` when ``array`` holds NaN or infinite values, naming it and how
    many of each; return ``array`` unchanged when it holds none.

    For hand-written loops: the layers do not scan values (that would cost a pass over every
    batch), while ``Model.train``, ``evaluate`` and ``predict`` check their data once a call.
    ``array`` may be host data (NumPy, lists) or an array of any backend; on a GPU the check
    waits for the device (one small copy of the answer). Integer and boolean arrays are
    always finite.

        x = bg.check_finite(x, "x")          # before dense.forward(x)
    """
    library = array_library(array)
    if library in ("numpy", None):
        a, xp = host_array(array, name), np
    else:
        a, xp = array, _namespace(array, library)
    kind = dtype_kind(a.dtype)
    if kind not in "biufc":
        raise TypeError(f"{name} must hold numbers, got dtype {a.dtype}")
    if kind not in "fc" or a.size == 0:
        return array
    if xp is np:  # in chunks: a memory-mapped file is never read whole at once
        if all(host_finite(part) for _, part in host_chunks(a)):
            return array
        nan = bad = 0
        for _, part in host_chunks(a):
            nan += int(np.count_nonzero(np.isnan(part)))
            bad += int(part.size - np.count_nonzero(np.isfinite(part)))
    elif not bool(all_finite(xp, a)):
        counts = xp.stack([xp.sum(xp.astype(xp.isnan(a), xp.int64)),
                           xp.sum(xp.astype(~xp.isfinite(a), xp.int64))])  # fmt: skip
        nan, bad = (int(c) for c in to_numpy(counts))
    else:
        return array
    raise ValueError(f"{name} holds {bad} NaN or infinite values ({nan} NaN, {bad - nan} infinite)")


CHUNK_BYTES = 16 * 1024 * 1024  # a host scan reads at most this much of an array at a time


def host_chunks(a: np.ndarray, chunk_bytes: int = CHUNK_BYTES) -> Iterator[tuple[int, Any]]:
    """``(first row, rows)`` of host array ``a`` in blocks of about ``chunk_bytes`` along the
    first axis (one block when it is smaller), so a scan of a memory-mapped file holds one
    block and its temporaries at a time."""
    if a.ndim == 0:
        yield 0, a
        return
    row_bytes = max(1, a.itemsize * (a.size // a.shape[0] if a.shape[0] else 1))
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, max(a.shape[0], 1), step):
        yield start, a[start : start + step]


def _namespace(array: Any, library: str) -> Any:
    """The array module of a device array: its ``__array_namespace__()`` where it has one,
    else its library's module (imported already: ``array`` came from it)."""
    own = getattr(array, "__array_namespace__", None)
    if own is not None:
        return own()
    import importlib

    return importlib.import_module(library)


_PACKAGE = os.path.normcase(os.path.dirname(os.path.abspath(__file__)) + os.sep)


def _caller_outside_the_package() -> int:
    """The ``stacklevel`` for a warning raised by this module's caller that points at the
    first line outside backprop_gpu (the user's call, however deep the library's own)."""
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and _inside(frame.f_code.co_filename):
        frame, level = frame.f_back, level + 1
    return level


def _inside(filename: str) -> bool:
    return os.path.normcase(os.path.abspath(filename)).startswith(_PACKAGE)


def warn_if_integer(dtype: Any, where: str) -> None:
    if np.dtype(dtype).kind in "iub":
        warnings.warn(
            f"{where}: inputs have integer dtype {np.dtype(dtype)}; casting them to floats "
            "(scale pixel values to [0, 1] first if that is what they are)",
            UserWarning,
            stacklevel=_caller_outside_the_package(),
        )


def like(backend: Backend, values: Any, ref: Any, where: str, what: str) -> Any:
    """``values`` on ``backend`` with the same shape and dtype as array ``ref``."""
    if backend.ready(values, ref.dtype) and values.shape == ref.shape:
        return values
    v = backend.asarray(values, ref.dtype, what=f"{where} {what}")
    if tuple(v.shape) != tuple(ref.shape):
        raise ValueError(
            f"{where} expected {what} of shape {tuple(ref.shape)}, got {tuple(v.shape)}"
        )
    return v


def labels(
    backend: Backend,
    y_true: Any,
    n_samples: int,
    n_classes: int,
    dtype: Any,
    where: str,
    *,
    later: LabelChecker | None = None,
) -> Any:
    """Check class labels and return them on the device: int64 indices (N,), or one-hot
    (N, C) cast to ``dtype``.

    (N, 1) integer labels are accepted as (N,). Host labels are checked on the host before the
    copy. Labels already on the device are checked there: with ``later`` (a loss's or an
    accuracy's ``LabelChecker``) the check is one device pass whose answer ``later`` keeps
    and reads later (no wait now; out-of-range indices are replaced by 0 so the batch can run,
    and ``later.errors`` is the 0-d count that makes its loss NaN); without, it costs one
    device-to-host read now (CuPy would otherwise wrap an out-of-range index silently).
    """
    if n_samples == 0:
        raise ValueError(f"{where} got an empty batch (0 samples)")
    if (  # the common case, checked in a few steps: a host vector of integer labels
        type(y_true) is np.ndarray
        and y_true.shape == (n_samples,)
        and y_true.dtype.kind in "iu"
        and y_true.min() >= 0
        and y_true.max() < n_classes
    ):
        return backend.asarray(y_true, backend.xp.int64, what=f"{where} y_true")
    on_host = array_library(y_true) in ("numpy", None)
    if on_host:
        y = host_labels(y_true, n_samples, n_classes, where)
        return backend.asarray(
            y, backend.xp.int64 if y.ndim == 1 else dtype, what=f"{where} y_true"
        )
    y = backend.asarray(y_true, what=f"{where} y_true")
    y = label_shape(backend.xp, y, n_samples, n_classes, where)
    if later is not None:  # on the device: checked there, read later
        xp = backend.xp
        given = y
        if y.ndim == 1:
            given = y if y.dtype == xp.int64 else xp.astype(y, xp.int64)
            y, errors = backend.ops.checked_labels(given, n_classes)
        else:
            errors = xp.sum(xp.astype(~_one_hot_rows_ok(xp, y), xp.int64))
        later.record(backend, errors, given, n_classes, where)
    else:  # on the device, read now (Model.train/evaluate: once a call, for the data set)
        if y.ndim == 1:
            ok = _host_range(backend, y)
            bad = bool(ok[0] < 0 or ok[1] >= n_classes) if y.size else False
        else:
            bad = not bool(backend.xp.all(_one_hot_rows_ok(backend.xp, y)))
        if bad:
            _raise_if_bad_labels(to_numpy(y), n_classes, where)
    if y.ndim == 1:
        return backend.asarray(y, backend.xp.int64, what=f"{where} y_true")
    return backend.asarray(y, dtype, what=f"{where} y_true")


def host_labels(y_true: Any, n_samples: int, n_classes: int, where: str) -> np.ndarray:
    """Host class labels checked (shape, dtype, values; in chunks, so a memory-mapped file
    is not read whole at once) and returned without a copy: (N,) indices ((N, 1) as a view
    of (N,)) or (N, C) one-hot rows, in their own dtype."""
    y: np.ndarray = label_shape(np, host_array(y_true, f"{where} y_true"), n_samples, n_classes,
                                where)  # fmt: skip
    _raise_if_bad_labels(y, n_classes, where)
    return y


def label_shape(xp: Any, y: Any, n_samples: int, n_classes: int, where: str) -> Any:
    """Labels ``y`` of ``xp`` as (N,) class indices or (N, C) one-hot rows (their shape and
    dtype checked, not their values); (N, 1) integer indices become (N,), a view."""
    if y.ndim == 2 and y.shape[1] == 1 and (n_classes > 1 or dtype_kind(y.dtype) in "iu"):
        # (N, 1) class indices; with a single class, float (N, 1) rows are one-hot
        y = xp.reshape(y, (y.shape[0],))
    if y.ndim not in (1, 2) or y.shape[0] != n_samples:
        raise ValueError(
            f"{where} expected y_true as {n_samples} class indices, shape ({n_samples},), or "
            f"one-hot of shape ({n_samples}, {n_classes}); got shape {tuple(y.shape)} "
            f"for {n_samples} samples"
        )
    if y.ndim == 2 and y.shape[1] != n_classes:
        raise ValueError(
            f"{where} expected one-hot y_true with {n_classes} columns (one per class), "
            f"got shape {tuple(y.shape)}"
        )
    kind = dtype_kind(y.dtype)
    if y.ndim == 1 and kind not in "iu":
        raise TypeError(
            f"{where} expected integer class indices in y_true, got dtype {y.dtype} "
            "(convert with y.astype(int), or pass one-hot rows)"
        )
    if y.ndim == 2 and kind not in "iubf":
        raise TypeError(f"{where} expected numeric one-hot y_true, got dtype {y.dtype}")
    return y


def _raise_if_bad_labels(y: np.ndarray, n_classes: int, where: str, when: str = "") -> None:
    """Raise for host labels ``y`` (checked for shape and dtype) that are not class indices
    in [0, n_classes) (1-D) or one-hot rows (2-D), naming the values and where they are;
    ``when`` is added to the message (how a check on the device came to be read)."""
    count, first, lo, hi = 0, -1, math.inf, -math.inf  # (in chunks: see host_chunks)
    for start, part in host_chunks(y):
        bad = np.flatnonzero(
            ((part < 0) | (part >= n_classes)) if y.ndim == 1 else ~_one_hot_rows_ok(np, part)
        )
        if bad.size and first < 0:
            first = start + int(bad[0])
        count += bad.size
        if y.ndim == 1 and part.size:
            lo, hi = min(lo, int(part.min())), max(hi, int(part.max()))
    if not count:
        return
    if y.ndim == 1:
        raise ValueError(
            f"{where} expected class indices in [0, {n_classes - 1}] for {n_classes} "
            f"classes, got values from {lo} to {hi} ({count} outside, the first "
            f"y_true[{first}] = {int(y[first])}){when}"
        )
    raise ValueError(
        f"{where} expected one-hot y_true: each row all 0 but a single 1 (or pass "
        f"class indices of shape (N,)); {count} rows are not, the first "
        f"y_true[{first}] = {np.asarray(y[first]).tolist()}{when}"
    )


def dtype_kind(dtype: Any) -> str:
    """NumPy's one-letter kind ("f", "i", "u", "b", ...) for any backend's dtype ("f" for
    ml_dtypes' bfloat16 too, which NumPy files as "V")."""
    try:
        kind = str(np.dtype(dtype).kind)
    except TypeError:
        return str(np.dtype(dtype_name(dtype)).kind)
    return "f" if kind == "V" and np.dtype(dtype).name == "bfloat16" else kind


def unchecked_labels(backend: Backend, y_true: Any, where: str) -> Any:
    """Labels on the device without the checks (the caller checked them already); (N, 1)
    class indices become (N,)."""
    y = backend.asarray(y_true, what=f"{where} y_true")
    return backend.xp.reshape(y, (y.shape[0],)) if y.ndim == 2 and y.shape[1] == 1 else y


class LabelChecker:
    """``labels`` with a memory, so a training loop pays for the checks as little as it can:
    no device-to-host read in a step, on any backend.

    - Host labels (NumPy, lists) are checked on the host before the copy, at once. The next
      call reuses them when given the same object (a loss's backward after its forward); the
      following step checks afresh, since refilling a host buffer between steps is common.
    - Labels on the device are checked on the device in one pass (``Ops.checked_labels``,
      or a fused kernel's own count handed to ``record``), and the answer, a 0-d count of bad
      labels, is kept pending: the batch's loss (or accuracy) is NaN at once when it has a bad
      label (``errors``), and a pending check raises ``ValueError`` naming the labels at the
      next read, which is the first of: ``check_labels()`` (a loss's or accuracy's); this
      checker's next call, for every pending answer that has reached the host without waiting
      (on a GPU, typically the answer of a step or two before; never on the stand-in, which
      cannot be asked); ``bg.to_numpy``; ``Model.train``, ``evaluate`` and each epoch's end
      (``check_pending_labels``). As host labels, the same device array given to a forward and
      its backward is checked once; the next step checks it afresh.
    """

    MAX_PENDING = 64  # more unread answers than this are summed into one (positions lost)

    def __init__(self) -> None:
        self._last: tuple[Any, tuple[Any, ...], Any, bool, Any] | None = None
        self._pending: list[_Pending] = []
        self.calls = 0
        self.errors: Any = None  # the last call's 0-d count of bad labels on the device

    def __call__(
        self, backend: Backend, y_true: Any, n_samples: int, n_classes: int, dtype: Any, where: str
    ) -> Any:
        key = (backend, n_samples, n_classes, dtype)
        last = self._last
        if last is not None and last[0] is y_true and last[1] == key:
            # good for this one reuse (a backward after its forward): a label buffer refilled
            # in place between steps is checked (and copied) afresh at the next call
            self._last = None
            self.errors = last[4]
            return last[2]
        self.calls += 1
        self.raise_if_bad(wait=False)
        self.errors = None
        y = labels(backend, y_true, n_samples, n_classes, dtype, where, later=self)
        on_host = array_library(y_true) in ("numpy", None)
        self._last = (y_true, key, y, on_host, self.errors)
        return y

    def record(self, backend: Backend, errors: Any, y: Any, n_classes: int, where: str) -> None:
        """Keep a check done on the device: ``errors``, a 0-d integer array, is how many of
        labels ``y`` (int64 indices (N,) or one-hot rows (N, C)) are bad (0 when all are
        good). Nothing is read now; the copy to the host starts."""
        self.errors = errors
        self._pending.append(_Pending(backend, backend.start_read(errors), y, n_classes,
                                      where, self.calls, self.calls))  # fmt: skip
        if len(self._pending) > self.MAX_PENDING:
            self._fold()
        _WITH_PENDING.add(self)

    def raise_if_bad(self, *, wait: bool = True, when: str = "") -> None:
        """Read the pending checks (``wait=False``: only those already on the host, so
        nothing waits) and raise ``ValueError`` for the first with bad labels; the ones read
        are forgotten, those not read stay pending."""
        ready = [p for p in self._pending if wait or p.read.done()]
        if not ready:
            return
        waiting = [p for p in ready if not p.read.done()]
        if len(waiting) > 1:  # one copy for them all
            xp = waiting[0].backend.xp
            counts = to_numpy(xp.stack([p.read.array for p in waiting]))
            for p, count in zip(waiting, counts, strict=True):
                p.read = HostRead(count, done=True)
        self._pending = [p for p in self._pending if p not in ready]
        if not self._pending:
            _WITH_PENDING.discard(self)
        for p in ready:
            if int(p.read.value()):
                self._pending.clear()  # (raised: the rest would only repeat it)
                _WITH_PENDING.discard(self)
                self._last = None
                p.raise_(when or f" (checked on the device in call {p.first}, read later)")

    def _fold(self) -> None:
        """Sum the oldest pending answers into one (their labels are let go), so an unread
        loop keeps a bounded number of arrays."""
        old, self._pending = self._pending[:-1], self._pending[-1:]
        backend = old[0].backend
        xp = backend.xp
        total = xp.sum(xp.stack([p.read.array for p in old]))
        folded = _Pending(backend, backend.start_read(total), None, old[0].n_classes,
                          old[0].where, old[0].first, old[-1].last)  # fmt: skip
        self._pending.insert(0, folded)


class _Pending:
    """One check on the device, not read yet: the count of bad labels on its way to the host
    and the labels it counted (None once folded with others), to name them when raising."""

    def __init__(
        self, backend: Backend, read: Any, y: Any, n_classes: int, where: str, first: int,
        last: int,
    ) -> None:  # fmt: skip
        self.backend, self.read, self.y, self.n_classes = backend, read, y, n_classes
        self.where, self.first, self.last = where, first, last

    def raise_(self, when: str) -> None:
        count = int(self.read.value())
        if self.y is not None:
            _raise_if_bad_labels(to_numpy(self.y), self.n_classes, self.where, when)
            when = f"{when}; the labels have changed since"  # (changed in place: not found)
        what = (
            f"class indices in [0, {self.n_classes - 1}] for {self.n_classes} classes"
            if self.y is None or self.y.ndim == 1
            else "one-hot y_true: each row all 0 but a single 1"
        )
        raise ValueError(
            f"{self.where} expected {what}, got {count} bad labels in calls {self.first} to "
            f"{self.last} (no longer kept to name them){when}"
        )


_WITH_PENDING: weakref.WeakSet[LabelChecker] = weakref.WeakSet()


def check_pending_labels(when: str = "") -> None:
    """Read every pending device label check of every loss and accuracy (waits for the
    device if any is pending; nothing to do otherwise) and raise ``ValueError`` for the first
    with bad labels. ``bg.to_numpy`` and the Model's passes call this."""
    for checker in list(_WITH_PENDING):
        checker.raise_if_bad(when=when)


def nan_if_bad(backend: Backend, value: Any, errors: Any) -> Any:
    """``value`` (a 0-d device array: a loss or an accuracy) as NaN when ``errors``, a 0-d
    count of bad labels on the device, is not 0; ``value`` itself when ``errors`` is None."""
    if errors is None:
        return value
    xp = backend.xp
    out = xp.where(errors == 0, value, xp.nan)
    return out if out.dtype == value.dtype else xp.astype(out, value.dtype)


def to_numpy_checked(a: Any) -> np.ndarray:
    """``bg.to_numpy``: raises first for bad device labels still pending (see
    ``LabelChecker``), then copies ``a`` to a host ``numpy.ndarray``."""
    check_pending_labels(" (checked on the device, read by bg.to_numpy)")
    return to_numpy(a)


def _one_hot_rows_ok(xp: Any, y: Any) -> Any:
    """For each row of one-hot ``y`` (N, C): every entry 0 or 1 and the row sums to 1."""
    if dtype_kind(y.dtype) == "b":
        y = xp.astype(y, xp.int64)
    return xp.all((y == 0) | (y == 1), axis=1) & (xp.sum(y, axis=1) == 1)


def _host_range(backend: Backend, y: Any) -> np.ndarray:
    xp = backend.xp
    return to_numpy(xp.stack([xp.min(y), xp.max(y)]))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_finite(value: float, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where} must be a positive finite number, got {value!r}")
    return float(value)


def in_range(value: float, lo: float, hi: float, where: str) -> float:
    """``lo <= value < hi``."""
    if not _is_number(value) or not (lo <= value < hi):
        raise ValueError(f"{where} must be in [{lo}, {hi}), got {value!r}")
    return float(value)


def floats(backend: Backend, inputs: Any, where: str, ndim: int | None = None) -> Any:
    """``inputs`` on the device as a floating array (integers become float32)."""
    ready = backend.ready(inputs) and (ndim is None or inputs.ndim == ndim)
    if ready and dtype_kind(inputs.dtype) == "f":
        return inputs
    x = backend.asarray(inputs, what=f"{where} inputs")
    if dtype_kind(x.dtype) != "f":
        x = backend.asarray(x, backend.xp.float32)
    if ndim is not None and x.ndim != ndim:
        raise ValueError(
            f"{where} expected a {ndim}-D array (batch, features), got shape {tuple(x.shape)}"
        )
    return x


def non_negative_finite(value: float, where: str) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where} must be a finite number >= 0, got {value!r}")
    return float(value)


def targets(backend: Backend, y_true: Any, n: int, outputs: int, dtype: Any, where: str) -> Any:
    """Real-valued targets of shape (n, outputs) and ``dtype`` on the device; (n,) is
    accepted when there is one output."""
    if n == 0:
        raise ValueError(f"{where} got an empty batch (0 samples)")
    y = backend.asarray(y_true, dtype, what=f"{where} y_true")
    return target_shape(backend.xp, y, n, outputs, where)


def target_shape(xp: Any, y: Any, n: int, outputs: int, where: str) -> Any:
    """Targets ``y`` of ``xp`` shaped (n, outputs) ((n,) as a view of (n, 1) when there is
    one output), or ``ValueError``."""
    if y.ndim == 1 and outputs == 1 and y.shape[0] == n:
        y = xp.reshape(y, (n, 1))
    if tuple(y.shape) != (n, outputs):
        raise ValueError(
            f"{where} expected y_true of shape ({n}, {outputs}) like the predictions, "
            f"got {tuple(y.shape)}"
        )
    return y
