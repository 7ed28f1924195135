"""``Backend``: one array library on one device, with the ``Ops`` object that does its math.

A backend is one subclass of ``Backend`` in its own file (``numpy_backend.py``,
``cupy_backend.py``, ``strict_backend.py``): what differs between array libraries (how an
array is recognised, moved to the device, made current) is a method there, never an ``if``
on the backend's name. Host-side helpers every backend shares live here too.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from .ops import Ops


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run here (``cupy`` without a usable GPU)."""


@dataclass(frozen=True, eq=False)
class Backend:
    """One array library on one device.

    ``name`` is ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``; ``xp`` is the module whose
    functions do the math; ``device`` is where arrays live (``"cpu"`` for NumPy);
    ``reason`` says why ``auto`` chose this backend (empty when chosen by name);
    ``ops`` is the object running the hot-path operations (``Ops``: the plain ``xp``
    reference; a subclass per backend overrides what it accelerates). ``fast_ops=False``
    gives the reference ``Ops`` (``BACKPROP_GPU_KERNELS=0``).
    """

    name: ClassVar[str] = ""
    host: ClassVar[bool] = False  # arrays live in host memory (NumPy): no copy to read them
    ops_class: ClassVar[type[Ops]] = Ops  # the accelerated ops; the reference is Ops itself
    # Model.train writes each step's products into the previous step's arrays (``out=``):
    # on NumPy that saves allocating, and page-faulting, several MiB a step
    reuses_step_buffers: ClassVar[bool] = False

    xp: Any = field(repr=False)
    device: Any
    reason: str = ""
    fast_ops: bool = field(default=True, repr=False)
    array_type: Any = field(init=False, repr=False, compare=False)
    ops: Ops = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "array_type", self._array_type())
        ops = self.ops_class(self) if self.fast_ops else Ops(self)
        object.__setattr__(self, "ops", ops)

    def _array_type(self) -> Any:
        return type(self.xp.asarray(0, device=self.device))

    # Two backends are the same when their library and device are: how ``auto`` got there
    # (``reason``) and which ops run do not matter (the arrays are interchangeable), and a CuPy
    # Device is not hashable, its text is.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Backend):
            return NotImplemented
        return (self.name, str(self.device)) == (other.name, str(other.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    def __repr__(self) -> str:
        reason = f", reason={self.reason!r}" if self.reason else ""
        ops = "" if self.fast_ops else ", ops=reference"
        return f"Backend(name={self.name!r}, device={self.device!r}{reason}{ops})"

    def device_of(self, a: Any) -> Any:
        """The device of one of this library's arrays."""
        return a.device

    def owns(self, a: Any) -> bool:
        """True when ``a`` is an array of this backend on this backend's device."""
        return isinstance(a, self.array_type) and self.device_of(a) == self.device

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which this backend's device is current (CuPy runs kernels on the
        current GPU); nothing to do on the others."""
        return contextlib.nullcontext()

    def make_current(self) -> Backend:
        """Make this backend's device the calling thread's current one (CuPy; as
        ``torch.cuda.set_device`` does); returns self."""
        return self

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (for timing; a no-op on
        host backends)."""

    def ready(self, a: Any, dtype: Any = None) -> bool:
        """The per-step fast path: ``a`` is already this backend's array, on its device
        (and of ``dtype``), so nothing needs converting or checking further."""
        return (
            type(a) is self.array_type
            and (dtype is None or a.dtype == dtype)
            and a.device == self.device
        )

    def asarray(self, a: Any, dtype: Any = None, *, what: str = "array") -> Any:
        """Move array-like ``a`` (host data or this backend's array) onto this backend's device.

        Host data (NumPy arrays, lists, scalars) is copied to the device once. An array that
        already lives here is returned as is (cast when ``dtype`` differs). An array from another
        backend or device raises ``ValueError`` naming ``what``; nothing is moved implicitly.
        """
        if isinstance(a, self.array_type):
            here = self.device_of(a)
            if here != self.device:
                raise ValueError(
                    f"{what} is on device {here!r} but this {self.name} backend works on "
                    f"{self.device!r}; move it explicitly (bg.to_numpy, then bg.asarray)"
                )
            if dtype is not None and a.dtype != dtype:
                if not _numbers(a.dtype):
                    raise TypeError(f"{what} must hold numbers, got dtype {a.dtype}")
                a = self.xp.astype(a, dtype)
            return a
        other = array_library(a)
        if other is not None and other != "numpy":
            raise ValueError(
                f"{what} comes from {other} but this layer works on the {self.name} backend "
                f"({self.device!r}); move it with bg.to_numpy(a) first, or build the layer "
                f"under bg.use_backend({other!r})"
            )
        host = host_array(a, what)
        if not _numbers(host.dtype):
            raise TypeError(f"{what} must hold numbers, got dtype {host.dtype}")
        return self.from_host(host, dtype)

    def from_host(self, host: np.ndarray, dtype: Any = None) -> Any:
        """A device copy of the host array ``host`` (as ``dtype``, a dtype of this backend)."""
        dtype = getattr(self.xp, host.dtype.name) if dtype is None else dtype
        return self.xp.asarray(host, dtype=dtype, device=self.device)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        """An uninitialised array on this backend's device."""
        return self.xp.empty(shape, dtype=dtype, device=self.device)

    def arange(self, n: int) -> Any:
        """``0, 1, ..., n-1`` as an int64 array on this backend's device."""
        return self.xp.arange(n, dtype=self.xp.int64, device=self.device)

    def dtype(self, name: Any) -> Any:
        """This backend's dtype object for a name such as ``"float32"`` (or a NumPy dtype)."""
        return getattr(self.xp, dtype_name(name))

    def start_read(self, a: Any) -> HostRead:
        """Start copying the small array ``a`` to the host without waiting for the device:
        ``done()`` then says, without waiting, whether its value has arrived, and ``value()``
        waits for it (CuPy: an asynchronous copy into pinned memory and an event). Here,
        where the device cannot be asked without waiting (the stand-in), ``done()`` is False
        until ``value()`` is read."""
        return HostRead(a, self.host)

    def free_memory(self) -> int | None:
        """Bytes the device could still give a data set (CuPy: free device memory and what
        its pool holds unused); None where unknown or where arrays live on the host."""
        return None

    def transfer(self, rows: int, columns: Sequence[tuple[tuple[int, ...], Any]]) -> Transfer:
        """Host buffers for a data set streamed batch by batch (``inputs.HostData``) and
        their way to this backend's device: one buffer of ``rows`` rows per column, given as
        (the shape of one row, a NumPy dtype). See ``Transfer``."""
        return Transfer(self, rows, columns)

    def with_reference_ops(self) -> Backend:
        """The same library and device, running the plain ``xp`` reference ops (for tests
        holding every fast path equal to the reference)."""
        return type(self)(self.xp, self.device, self.reason, fast_ops=False)


class Transfer:
    """Batches on their way from host buffers to the device (``Backend.transfer``), in
    ``slots`` sets of buffers used in turn. For batch ``i`` in slot ``i % slots``:

        hosts = t.buffers(slot)     # the slot's host buffers, free to fill (may wait)
        ...gather the batch's rows into hosts[c][:rows]...
        t.send(slot, rows)          # start copying them to the device
        arrays = t.receive(slot, rows)   # the batch on the device, for the next work queued
        ...the step on arrays...
        t.release(slot)             # the step is queued: the slot's device arrays may go

    Here (the stand-in) one slot and a plain copy at ``receive``. NumPy's arrays are the
    host buffers themselves; CuPy's copies run on a second stream while the previous batch
    computes (two slots, pinned host memory, events between the streams)."""

    slots = 1

    def __init__(
        self, backend: Backend, rows: int, columns: Sequence[tuple[tuple[int, ...], Any]]
    ) -> None:
        self.backend = backend
        self.rows = rows
        self.host = [[self._host_empty((rows, *shape), dtype) for shape, dtype in columns]
                     for _ in range(self.slots)]  # fmt: skip

    def _host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def buffers(self, slot: int) -> list[np.ndarray]:
        return self.host[slot]

    def send(self, slot: int, rows: int) -> None:
        pass

    def receive(self, slot: int, rows: int) -> list[Any]:
        return [self.backend.from_host(h[:rows]) for h in self.host[slot]]

    def release(self, slot: int) -> None:
        pass

    def settle(self) -> None:
        """After a pass's last batch, or when it stops early: every copy sent has finished
        before later work (or a free of the buffers) can touch what it reads or writes."""


class HostRead:
    """A small device array on its way to the host (``Backend.start_read``)."""

    def __init__(self, a: Any, done: bool = False) -> None:
        self.array = a
        self._value: np.ndarray | None = to_numpy(a) if done else None

    def done(self) -> bool:
        """Whether ``value()`` returns without waiting for the device."""
        return self._value is not None

    def value(self) -> np.ndarray:
        """The array on the host (waits for the device the first time)."""
        if self._value is None:
            self._value = to_numpy(self.array)
        return self._value


def host_values(backend: Backend, values: list[Any]) -> np.ndarray:
    """Device scalars (and Python floats) to the host as float64, the device ones in one copy
    and a constant number of device operations however many there are (an epoch's steps):
    one stack and one cast per dtype, and one concatenation."""
    if backend.host:  # already on the host: no copy to batch (stacking cost 3 us each)
        return np.array([float(v) for v in values], dtype=np.float64)
    out = np.array([float(v) if isinstance(v, float | int) else np.nan for v in values])
    by_dtype: dict[str, list[int]] = {}  # positions of the device values, by dtype
    for i, v in enumerate(values):
        if not isinstance(v, float | int):
            by_dtype.setdefault(str(v.dtype), []).append(i)
    if by_dtype:
        xp = backend.xp
        parts = [xp.astype(xp.stack([values[i] for i in where]), xp.float64)
                 for where in by_dtype.values()]  # fmt: skip
        out[[i for where in by_dtype.values() for i in where]] = to_numpy(
            parts[0] if len(parts) == 1 else xp.concat(parts)
        )
    return out


def dtype_name(dtype: Any) -> str:
    """``"float32"`` for any backend's float32 dtype object (or a NumPy type or name)."""
    return _dtype_name(type(dtype).__qualname__, dtype)  # type first: see below


@functools.cache  # NumPy's dtype.name is slow (microseconds), and this runs every step
def _dtype_name(kind: str, dtype: Any) -> str:
    # ``kind`` (the dtype's class name) comes first in the cache key, so dtypes of different
    # libraries, which hash alike, are never compared (array-api-strict warns when they are)
    try:
        return str(np.dtype(dtype).name)
    except TypeError:  # array-api-strict's dtypes print as "array_api_strict.float32"
        return str(np.dtype(str(dtype).rsplit(".", 1)[-1]).name)


def array_library(a: Any) -> str | None:
    """Name of the array library ``a`` belongs to (``"numpy"``, ``"cupy"``, ...) or None."""
    if isinstance(a, np.ndarray | np.generic):
        return "numpy"
    module = type(a).__module__.split(".")[0]
    if module in ("cupy", "array_api_strict"):
        return module
    return None


def to_numpy(a: Any) -> np.ndarray:
    """Copy any backend's array (or array-like) to a host ``numpy.ndarray``."""
    lib = array_library(a)
    if lib == "cupy":
        return a.get()  # type: ignore[no-any-return]
    if lib == "array_api_strict":
        import array_api_strict

        return np.asarray(a.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.array(a, copy=True)  # a copy on NumPy too, so every backend behaves alike


def _numbers(dtype: Any) -> bool:
    """Whether arrays of ``dtype`` hold numbers: booleans, integers, floats (NumPy's and
    CuPy's dtypes are NumPy's), and ml_dtypes' bfloat16 (a "V" kind to NumPy, a float to the
    mixed policies and to CuPy 14)."""
    kind = getattr(dtype, "kind", "f")  # (array-api-strict's dtypes: numbers only)
    return kind in "biuf" or (kind == "V" and dtype_name(dtype) == "bfloat16")


def host_array(a: Any, what: str = "array") -> np.ndarray:
    """``numpy.asarray(a)`` for host data (lists, NumPy arrays), naming ``what`` when it is
    not an array: ragged nested lists give NumPy's bare "inhomogeneous shape" error otherwise."""
    try:
        return np.asarray(a)
    except ValueError as e:
        raise ValueError(
            f"{what} is not a rectangular array (nested lists of different lengths?); "
            f"NumPy cannot convert it: {e}"
        ) from e
