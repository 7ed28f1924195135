"""Counting a training step's device operations on an emulated CuPy, with no GPU.

``EmulatedCupyBackend`` is a ``CupyBackend`` whose array module is ``EmulatedCupy``: NumPy
arrays on the host wrapped to look like ``cupy.ndarray`` (``DeviceArray``), and a namespace
with the ``cupy`` functions the package calls. The package's own CuPy code path runs
unchanged over them (``CupyOps``, its ``_fits`` checks and fallbacks, ``CupyBackend``'s device
handling; the arrays claim the ``cupy`` module, which is how the package recognises CuPy
arrays). Only ``CupyOps._launch`` and ``CupyOps._run`` are replaced: a launch of CUDA
kernel ``name`` runs that kernel's CPU computation from the ``KERNELS`` table (its ``Ops``
reference, vectorised, so the emulated path trains to the reference's values bit for bit;
or, with ``twins``, its twin from ``cuda_source``: element by element, and the reductions in
the kernel's order of additions). Every device operation is recorded as an ``Event``, with
the package code that issued it.

Counting rules (what one call costs on CuPy 14, read from CuPy's source):

- ``gemm``: ``xp.matmul`` and ``@``: one cuBLAS GEMM (a transposed operand is a cuBLAS
  flag, not a copy, for C- or F-contiguous operands, which every operand here is).
- ``kernel``: one ``CupyOps._launch``: one launch of the package's own CUDA kernel.
- ``cupy``: one of CuPy's own kernels. Every array-producing elementwise function or operator
  is one (``a + b``, ``a += b``, ``-a``, ``2 * a``, ``xp.maximum``, ``xp.clip``, ``xp.where``,
  ``xp.astype`` to another dtype, comparisons), also on a 0-d array (``-loss / n`` is two);
  every reduction is one (``xp.sum``, ``xp.max``, ``xp.argmax``, ``xp.all``; CUB's device
  reduce is one launch up to a tile, as in a step here); ``xp.take`` and indexing by one
  integer array are one take kernel; indexing by several integer arrays (``p[rows, y]``) is
  a memset of the flat index, one kernel per index array, then a take; ``xp.arange`` is one.
- ``memset/copy``: ``xp.zeros``/``zeros_like`` (one ``cudaMemsetAsync``); ``a[...] = b`` (one
  device-to-device copy; nothing when ``b`` is ``a``), ``a[...] = 0`` (a memset; another
  scalar is a fill kernel, ``cupy``); ``xp.asarray(a, copy=True)`` and a same-dtype
  ``astype`` (a copy); ``xp.stack``/``xp.concat`` of up to 8 arrays (a copy each; of more,
  CuPy copies their pointers to the device, ``h2d``, and runs one kernel, ``cupy``).
- ``h2d`` / ``d2h``: host-to-device and device-to-host copies: ``xp.asarray`` of host data,
  ``a.get()``, ``float(a)``, ``int(a)``, ``bool(a)`` (each ``d2h`` also waits for the device).
- free (no event): views (basic slicing, ``.T``, ``xp.reshape`` of a contiguous array),
  ``xp.empty``/``empty_like`` (memory from CuPy's pool), shapes, dtypes, flags.

The counts depend on the operations issued, not on the array sizes (a kernel of 0 elements
is skipped, as ``CupyOps._launch`` does). Anything the emulator does not know (a ``cupy``
function, boolean-mask indexing, a kernel name) raises, saying what to add.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import backprop_gpu
from backprop_gpu.backend import cuda_source
from backprop_gpu.backend.cupy_backend import CupyBackend, CupyOps
from backprop_gpu.backend.numpy_backend import NumpyBackend
from backprop_gpu.backend.ops import Ops

KINDS = ("gemm", "kernel", "cupy", "memset/copy", "h2d", "d2h")

# --- the kernels' CPU computations ---------------------------------------------------------


@dataclass(frozen=True)
class Twin:
    """A kernel's per-element twin: ``function`` gets element i of each array argument
    listed in ``reads`` (scalar arguments as they are) and returns the new values of the
    array arguments listed in ``writes`` (one value, or a tuple)."""

    function: Callable[..., Any]
    reads: tuple[int, ...]
    writes: tuple[int, ...]
    by_column: tuple[int, ...] = ()  # arrays read at i % cols (bias_relu's biases)
    columns: int = -1  # the argument holding cols, with by_column


@dataclass(frozen=True)
class Kernel:
    """How the emulator runs one CUDA kernel (by its name without the dtype suffix).

    ``reference(ops, *args)`` does the launch's work with the reference ``Ops`` on NumPy
    arrays, writing the kernel's output arguments as the kernel does. ``args`` are the
    launch's arguments, arrays as NumPy: an elementwise kernel's (``CupyOps._launch``)
    without its trailing element count, a kernel launched on its own grid (``CupyOps._run``:
    the column sums, the softmax) all of them, shapes included. With ``twins``, ``twin``
    runs an elementwise kernel element by element instead, and ``ordered(*args)`` a
    reduction in the kernel's own order of additions (its NumPy twin in ``cuda_source``)."""

    reference: Callable[..., None]
    twin: Twin | None = None
    ordered: Callable[..., None] | None = None


def _relu_backward(ops: Ops, dvalues: Any, inputs: Any, out: Any) -> None:
    out[...] = ops.relu_backward(dvalues, inputs)


def _bias_relu(ops: Ops, z: Any, biases: Any, cols: Any) -> None:
    z[...] = ops.bias_relu(z.copy(), biases.reshape(1, int(cols)))


def _relu_backward_bias_gradient(
    ops: Ops, dvalues: Any, output: Any, dinputs: Any, dbiases: Any, rows: Any, cols: Any
) -> None:
    dinputs[...], dbiases[...] = ops.relu_backward_bias_gradient(dvalues, output)


def _relu_backward_bias_gradient_ordered(
    dvalues: Any, output: Any, dinputs: Any, dbiases: Any, rows: Any, cols: Any
) -> None:
    dinputs[...], dbiases[...] = cuda_source.relu_backward_bias_gradient_twin(dvalues, output)


def _softmax_ce_rows(
    ops: Ops, logits: Any, y: Any, p: Any, dinputs: Any, logp: Any, hit: Any, lo: Any,
    hi: Any, n_rows: Any, grad: Any, rows: Any, cols: Any,
) -> None:  # fmt: skip
    """The reference's softmax, its ``log(clip(p[range(N), y], lo, hi))`` per row (what it
    sums), ``(p - onehot(y)) / N`` and numpy.argmax's hits; a label outside [0, C) gives that
    row NaN and hit -1, as the kernel."""
    bad = (y < 0) | (y >= cols)
    label = np.where(bad, 0, y)
    probabilities = ops.softmax(logits)
    picked = np.clip(probabilities, lo, hi)[np.arange(rows), label]
    with np.errstate(divide="ignore"):
        logp[...] = np.log(picked)
    if grad:
        dinputs[...] = ops.softmax_cross_entropy_backward(probabilities, label)
        dinputs[bad] = np.nan
    p[...] = probabilities
    p[bad], logp[bad] = np.nan, np.nan
    hit[...] = np.where(bad, -1, np.argmax(logits, axis=1) == label)


def _softmax_ce_rows_ordered(
    logits: Any, y: Any, p: Any, dinputs: Any, logp: Any, hit: Any, lo: Any, hi: Any,
    n_rows: Any, grad: Any, rows: Any, cols: Any,
) -> None:  # fmt: skip
    p[...], d, logp[...], hit[...] = cuda_source.softmax_ce_rows_twin(logits, y, lo, hi, bool(grad))
    if grad:
        dinputs[...] = d


def _softmax_ce_reduce(
    ops: Ops, logp: Any, hit: Any, loss: Any, correct: Any, errors: Any, n_rows: Any, rows: Any
) -> None:
    """The reference's ``-sum(log p) / N`` (NumPy's sum), the hits and the bad labels."""
    loss[...] = -np.sum(logp) / n_rows
    correct[...] = np.float32((hit == 1).sum())
    errors[0] += (hit == -1).sum()


def _softmax_ce_reduce_ordered(
    logp: Any, hit: Any, loss: Any, correct: Any, errors: Any, n_rows: Any, rows: Any
) -> None:
    loss[...], correct[...], bad = cuda_source.softmax_ce_reduce_twin(logp, hit)
    errors[0] += bad


def _take_batch(ops: Ops, x: Any, y: Any, idx: Any, xo: Any, yo: Any, rows: Any, cols: Any) -> None:
    xo[...], yo[...] = ops.take_batch(x, y, idx)


def _sgd(ops: Ops, w: Any, g: Any, lr: Any) -> None:
    ops.sgd(w, g, lr)


def _sgd_momentum(ops: Ops, w: Any, v: Any, g: Any, lr: Any, momentum: Any, nesterov: Any) -> None:
    ops.sgd_momentum(w, v, g, lr, momentum, bool(nesterov))


def _adagrad(ops: Ops, w: Any, cache: Any, g: Any, lr: Any, epsilon: Any) -> None:
    ops.adagrad(w, cache, g, lr, epsilon)


def _rmsprop(
    ops: Ops, w: Any, cache: Any, g: Any, lr: Any, rho: Any, one_minus_rho: Any, epsilon: Any
) -> None:
    """The reference's steps with the kernel's scalars (``1 - rho`` rounded once, as CuPy)."""
    cache *= rho
    cache += one_minus_rho * g**2
    w -= lr * g / (np.sqrt(cache) + epsilon)


def _adam(
    ops: Ops, w: Any, m: Any, cache: Any, g: Any, lr: Any, beta_1: Any, one_minus_beta_1: Any,
    beta_2: Any, one_minus_beta_2: Any, correction_1: Any, correction_2: Any, epsilon: Any,
) -> None:  # fmt: skip
    """The reference's steps with the kernel's scalars (each rounded once, as CuPy)."""
    m *= beta_1
    m += one_minus_beta_1 * g
    cache *= beta_2
    cache += one_minus_beta_2 * g**2
    w -= lr * (m / correction_1) / (np.sqrt(cache / correction_2) + epsilon)


def _unscale(ops: Ops, g: Any, out: Any, scale: Any, divide: Any, nonfinite: Any) -> None:
    """The reference's cast, division by the kernel's float32 scale (a Python float holds it
    exactly) and finiteness flag."""
    ops.unscale(g, out, float(scale) if divide else 1.0, nonfinite)


# Every CUDA kernel of cuda_source.KERNEL_NAMES, by name without its dtype suffix ("_f32").
# A new kernel needs its entry here: what it computes, as the reference Ops method it replaces.
KERNELS: dict[str, Kernel] = {
    "relu_backward": Kernel(
        _relu_backward, Twin(cuda_source.relu_backward_element, reads=(0, 1), writes=(2,))
    ),
    "bias_relu": Kernel(
        _bias_relu,
        Twin(cuda_source.bias_relu_element, reads=(0, 1), writes=(0,), by_column=(1,), columns=2),
    ),
    "relu_backward_bias_gradient": Kernel(
        _relu_backward_bias_gradient, ordered=_relu_backward_bias_gradient_ordered
    ),
    "softmax_ce_rows": Kernel(_softmax_ce_rows, ordered=_softmax_ce_rows_ordered),
    "softmax_ce_reduce": Kernel(_softmax_ce_reduce, ordered=_softmax_ce_reduce_ordered),
    "take_batch": Kernel(_take_batch),
    "unscale": Kernel(_unscale),
    "sgd": Kernel(_sgd, Twin(cuda_source.sgd_element, reads=(0, 1, 2), writes=(0,))),
    "sgd_momentum": Kernel(
        _sgd_momentum,
        Twin(cuda_source.sgd_momentum_element, reads=(0, 1, 2, 3, 4, 5), writes=(0, 1)),
    ),
    "adagrad": Kernel(
        _adagrad, Twin(cuda_source.adagrad_element, reads=(0, 1, 2, 3, 4), writes=(0, 1))
    ),
    "rmsprop": Kernel(
        _rmsprop, Twin(cuda_source.rmsprop_element, reads=(0, 1, 2, 3, 4, 5, 6), writes=(0, 1))
    ),
    "adam": Kernel(_adam, Twin(cuda_source.adam_element, reads=tuple(range(12)), writes=(0, 1, 2))),
}


def kernel_entry(name: str) -> Kernel:
    """The ``KERNELS`` entry for the launched kernel ``name`` (``"sgd_momentum_f32"``)."""
    base, _, suffix = name.rpartition("_")
    if suffix not in cuda_source.SUFFIX.values():
        base = name
    entry = KERNELS.get(base)
    if entry is None:
        raise KeyError(
            f"benchmarks.trace: CupyOps launched the CUDA kernel {name!r}, which the emulator "
            f"does not know: add {base!r} to KERNELS in benchmarks/trace.py (the reference "
            "Ops computation it replaces, and its cuda_source twin if it has one)"
        )
    return entry


def _run_twin(twin: Twin, args: Sequence[Any], n: int) -> None:
    flat = [a.reshape(-1) if isinstance(a, np.ndarray) else None for a in args]  # views
    cols = int(args[twin.columns]) if twin.by_column else 1
    for i in range(n):
        values = [
            args[j] if (a := flat[j]) is None else a[i % cols if j in twin.by_column else i]
            for j in twin.reads
        ]
        result = twin.function(*values)
        results = result if len(twin.writes) > 1 else (result,)
        for j, value in zip(twin.writes, results, strict=True):
            flat[j][i] = value  # type: ignore[index]


# --- the record --------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One device operation: its ``kind`` (one of ``KINDS``), what it was (``op``: the cupy
    function, operator or kernel) and who issued it (``site``: the package method, and the
    ``Ops`` method when it came through one)."""

    kind: str
    op: str
    site: str


_PACKAGE = os.path.dirname(os.path.abspath(backprop_gpu.__file__)) + os.sep
_BACKEND = _PACKAGE + "backend" + os.sep
_HERE = os.path.abspath(__file__)


def _site() -> str:
    """``"Dense(2, 64).forward_relu > CupyOps.bias_relu"``: the package method that issued
    the current operation and, when it went through the backend, the outermost backend method
    on the way (the op the package asked for)."""
    frame = sys._getframe(2)
    backend_method = None
    while frame is not None:
        path = frame.f_code.co_filename
        if path == _HERE:
            frame = frame.f_back  # type: ignore[assignment]
            continue
        name = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
        if path.startswith(_BACKEND):  # "Ops.softmax": the reference's code; "CupyOps.*": CUDA
            backend_method = name
        elif path.startswith(_PACKAGE):
            owner = frame.f_locals.get("self")
            label = getattr(owner, "name", None)
            if isinstance(label, str) and "." in name:  # a Dense: its name, "Dense(2, 64)"
                name = f"{label}.{name.split('.')[-1]}"
            return name if backend_method is None else f"{name} > {backend_method}"
        else:
            break
        frame = frame.f_back  # type: ignore[assignment]
    return backend_method or "(outside backprop_gpu)"


# --- the emulated cupy ---------------------------------------------------------------------


class EmulatedDevice:
    """``cupy.cuda.Device`` for the emulated GPU: an id, a context that makes it current,
    ``use`` and ``synchronize`` (nothing to wait for)."""

    def __init__(self, id: int = 0) -> None:  # (CuPy's name)
        self.id = id

    def __enter__(self) -> EmulatedDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def use(self) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EmulatedDevice) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id} (emulated)>"


class _Runtime:
    """``cupy.cuda.runtime`` for one emulated GPU: the current device is always 0 (host
    calls, no device operation); ``memGetInfo`` reports the emulated GPU's ``free`` and
    ``total`` bytes (``EmulatedCupy.memory``)."""

    def __init__(self, xp: EmulatedCupy) -> None:
        self._xp = xp

    @staticmethod
    def getDevice() -> int:  # noqa: N802 (CuPy's names)
        return 0

    @staticmethod
    def setDevice(device_id: int) -> None:  # noqa: N802
        pass

    @staticmethod
    def deviceSynchronize() -> None:  # noqa: N802
        pass

    def memGetInfo(self) -> tuple[int, int]:  # noqa: N802
        return self._xp.memory


class _Driver:
    """``cupy.cuda.driver``: a current context (nonzero) exists."""

    @staticmethod
    def ctxGetCurrent() -> int:  # noqa: N802
        return 1


class EmulatedStream:
    """``cupy.cuda.Stream``: work on it runs at once (the emulator has no concurrency), and
    what is ordered on it is logged in ``EmulatedCupy.streams`` (``"wait"``: the stream waits
    for an event) for the tests of the ordering between streams."""

    def __init__(self, xp: EmulatedCupy, name: str, non_blocking: bool = False) -> None:
        self._xp, self.name, self.non_blocking = xp, name, non_blocking

    def wait_event(self, event: EmulatedEvent) -> None:
        self._xp.streams.append(("wait", self.name, event.name))

    def synchronize(self) -> None:
        self._xp.streams.append(("host waits", self.name, ""))

    def __repr__(self) -> str:
        return f"<emulated stream {self.name}>"


class EmulatedEvent:
    """``cupy.cuda.Event``: ``record`` on a stream and ``synchronize`` (the host waits) are
    logged in ``EmulatedCupy.streams``; it is always ``done`` (the work ran already)."""

    def __init__(self, xp: EmulatedCupy, name: str) -> None:
        self._xp, self.name, self.recorded = xp, name, False

    def record(self, stream: EmulatedStream | None = None) -> None:
        where = "null" if stream is None else stream.name  # (CuPy's default: the null stream)
        self._xp.streams.append(("record", where, self.name))
        self.recorded = True

    def synchronize(self) -> None:
        self._xp.streams.append(("host waits", "", self.name))

    @property
    def done(self) -> bool:
        return True


class _Cuda:
    """``cupy.cuda`` of one ``EmulatedCupy``: the ``Device`` class, ``runtime`` and ``driver``
    (``on_gpu``), and the streams, events and pinned host memory of a streamed data set."""

    Device = EmulatedDevice
    driver = _Driver

    def __init__(self, xp: EmulatedCupy) -> None:
        self._xp = xp
        self.runtime = _Runtime(xp)
        self._current = EmulatedStream(xp, "compute")  # (the current stream: the null one)
        self._counts = {"stream": 0, "event": 0}
        self.created: list[EmulatedStream] = []  # every Stream() made, in order

    def Stream(self, non_blocking: bool = False) -> EmulatedStream:  # noqa: N802 (CuPy's)
        self._counts["stream"] += 1
        stream = EmulatedStream(self._xp, f"stream {self._counts['stream']}", non_blocking)
        self.created.append(stream)
        return stream

    def Event(  # noqa: N802
        self, block: bool = False, disable_timing: bool = False, interprocess: bool = False
    ) -> EmulatedEvent:
        self._counts["event"] += 1
        return EmulatedEvent(self._xp, f"event {self._counts['event']}")

    def get_current_stream(self) -> EmulatedStream:
        return self._current

    def alloc_pinned_memory(self, nbytes: int) -> bytearray:
        """Page-locked host memory: here a bytearray the emulator remembers as pinned (an
        asynchronous copy from any other host memory is refused, as it would not be async)."""
        memory = bytearray(nbytes)
        self._xp.pinned.append(memory)
        return memory


class _MemoryPool:
    """``cupy.get_default_memory_pool()``: its unused bytes (``EmulatedCupy.pool_free``)."""

    def __init__(self, xp: EmulatedCupy) -> None:
        self._xp = xp

    def free_bytes(self) -> int:
        return self._xp.pool_free


def _is_host_array(a: Any) -> bool:
    return isinstance(a, np.ndarray)


class DeviceArray:
    """A ``cupy.ndarray`` stand-in: a NumPy array on the host that the package takes for
    a CuPy array on the emulated GPU. Each operator records its device operation."""

    __module__ = "cupy._emulated"  # backprop_gpu.backend.array_library: "cupy"
    __hash__ = None  # type: ignore[assignment]  # (== is elementwise)

    def __init__(self, data: np.ndarray, xp: EmulatedCupy) -> None:
        self._data = data
        self._xp = xp

    # --- attributes (free) ---
    @property
    def shape(self) -> tuple[int, ...]:
        return self._data.shape

    @property
    def dtype(self) -> np.dtype[Any]:
        return self._data.dtype

    @property
    def ndim(self) -> int:
        return self._data.ndim

    @property
    def size(self) -> int:
        return self._data.size

    @property
    def nbytes(self) -> int:
        return self._data.nbytes

    @property
    def flags(self) -> Any:
        return self._data.flags

    @property
    def device(self) -> EmulatedDevice:
        return self._xp.device

    @property
    def T(self) -> DeviceArray:  # noqa: N802 (numpy's name)
        return DeviceArray(self._data.T, self._xp)

    def __len__(self) -> int:
        return len(self._data)

    def __array_namespace__(self, api_version: str | None = None) -> EmulatedCupy:
        return self._xp

    def __repr__(self) -> str:
        return f"DeviceArray({self._data!r})"

    # --- to the host ---
    def get(self) -> np.ndarray:
        self._xp.record("d2h", "get")
        host: np.ndarray = self._data.copy()
        return host

    def _scalar(self, op: str) -> Any:
        self._xp.record("d2h", op)
        return self._data.item()

    def __float__(self) -> float:
        return float(self._scalar("float"))

    def __int__(self) -> int:
        return int(self._scalar("int"))

    def __bool__(self) -> bool:
        return bool(self._scalar("bool"))

    def item(self) -> Any:
        return self._scalar("item")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(  # CuPy's own refusal
            "Implicit conversion to a NumPy array is not allowed. Please use `.get()` to "
            "construct a NumPy array explicitly."
        )

    def set(self, arr: np.ndarray, stream: EmulatedStream | None = None) -> None:
        """``cupy.ndarray.set``: a host-to-device copy into this array, on ``stream`` (async:
        ``arr`` must be pinned) or the current one."""
        if not _is_host_array(arr) or arr.shape != self.shape or arr.dtype != self.dtype:
            raise ValueError(  # (CuPy: TypeError or ValueError; neither casts nor reshapes)
                f"benchmarks.trace: set needs a host array of shape {self.shape} and dtype "
                f"{self.dtype}, got {type(arr).__name__} {getattr(arr, 'shape', '')}"
            )
        if stream is not None and not self._xp.is_pinned(arr):
            raise ValueError(
                "benchmarks.trace: an asynchronous copy from pageable host memory (CUDA runs "
                "it synchronously); allocate the host buffer with alloc_pinned_memory"
            )
        where = "current stream" if stream is None else stream.name
        self._xp.record("h2d", f"set (on {where})")
        self._xp.streams.append(("copy", where, ""))
        self._data[...] = arr

    # --- methods ---
    def astype(self, dtype: Any, copy: bool = True) -> DeviceArray:
        return self._xp.astype(self, dtype, copy=copy)

    def reshape(self, *shape: Any) -> DeviceArray:
        return self._xp.reshape(self, shape[0] if len(shape) == 1 else shape)

    def copy(self) -> DeviceArray:
        return self._xp.asarray(self, copy=True)

    # --- indexing ---
    def __getitem__(self, key: Any) -> DeviceArray:
        keys = key if isinstance(key, tuple) else (key,)
        arrays = [k for k in keys if isinstance(k, DeviceArray | np.ndarray | list)]
        if not arrays:
            return DeviceArray(self._data[key], self._xp)  # a view
        if any(_is_host_array(k) or isinstance(k, list) for k in arrays):
            raise TypeError("benchmarks.trace: index a DeviceArray with device arrays only")
        if any(k.dtype.kind == "b" for k in arrays if isinstance(k, DeviceArray)):
            raise NotImplementedError(
                "benchmarks.trace: boolean-mask indexing (a nonzero scan and a device-to-host "
                "sync on CuPy) is not emulated; add it to DeviceArray.__getitem__"
            )
        if len(arrays) > 1:  # CuPy: a memset of the flat index, one kernel per index array
            self._xp.record("memset/copy", "fill(0) [advanced index]")
            for _ in arrays:
                self._xp.record("cupy", "prepare_array_indexing [advanced index]")
        self._xp.record("cupy", "take [advanced index]")
        plain = tuple(k._data if isinstance(k, DeviceArray) else k for k in keys)
        return DeviceArray(np.ascontiguousarray(self._data[plain]), self._xp)

    def __setitem__(self, key: Any, value: Any) -> None:
        keys = key if isinstance(key, tuple) else (key,)
        if any(isinstance(k, DeviceArray | np.ndarray | list) for k in keys):
            raise NotImplementedError(
                "benchmarks.trace: assignment through an index array is not emulated"
            )
        target = self._data[key]
        if isinstance(value, DeviceArray):
            if not (target.shape == value.shape and np.shares_memory(target, value._data)):
                self._xp.record("memset/copy", "setitem (copy)")
            target[...] = value._data
            return
        if _is_host_array(value):
            raise TypeError("benchmarks.trace: assign host data with xp.asarray first")
        contiguous = target.flags.c_contiguous
        self._xp.record("memset/copy" if value == 0 and contiguous else "cupy", "setitem (fill)")
        target[...] = value

    # --- operators: one elementwise kernel each ---
    def _binary(self, op: str, fn: Any, other: Any, reflected: bool = False) -> Any:
        if _is_host_array(other):
            raise TypeError(f"Unsupported type {type(other)} (a host array in a device {op})")
        b = other._data if isinstance(other, DeviceArray) else other
        if not isinstance(b, DeviceArray | np.ndarray | np.generic | int | float | bool):
            return NotImplemented
        self._xp.record("gemm" if op == "@" else "cupy", op)
        result = fn(b, self._data) if reflected else fn(self._data, b)
        return self._xp.wrap(result)

    def _inplace(self, op: str, fn: Any, other: Any) -> DeviceArray:
        if _is_host_array(other):
            raise TypeError(f"Unsupported type {type(other)} (a host array in a device {op})")
        b = other._data if isinstance(other, DeviceArray) else other
        self._xp.record("cupy", op)
        fn(self._data, b, out=self._data)
        return self

    def __add__(self, o: Any) -> Any:
        return self._binary("+", np.add, o)

    def __radd__(self, o: Any) -> Any:
        return self._binary("+", np.add, o, True)

    def __sub__(self, o: Any) -> Any:
        return self._binary("-", np.subtract, o)

    def __rsub__(self, o: Any) -> Any:
        return self._binary("-", np.subtract, o, True)

    def __mul__(self, o: Any) -> Any:
        return self._binary("*", np.multiply, o)

    def __rmul__(self, o: Any) -> Any:
        return self._binary("*", np.multiply, o, True)

    def __truediv__(self, o: Any) -> Any:
        return self._binary("/", np.true_divide, o)

    def __rtruediv__(self, o: Any) -> Any:
        return self._binary("/", np.true_divide, o, True)

    def __pow__(self, o: Any) -> Any:
        return self._binary("**", np.power, o)

    def __matmul__(self, o: Any) -> Any:
        return self._binary("@", np.matmul, o)

    def __rmatmul__(self, o: Any) -> Any:
        return self._binary("@", np.matmul, o, True)

    def __and__(self, o: Any) -> Any:
        return self._binary("&", np.bitwise_and, o)

    def __or__(self, o: Any) -> Any:
        return self._binary("|", np.bitwise_or, o)

    def __gt__(self, o: Any) -> Any:
        return self._binary(">", np.greater, o)

    def __ge__(self, o: Any) -> Any:
        return self._binary(">=", np.greater_equal, o)

    def __lt__(self, o: Any) -> Any:
        return self._binary("<", np.less, o)

    def __le__(self, o: Any) -> Any:
        return self._binary("<=", np.less_equal, o)

    def __eq__(self, o: Any) -> Any:  # type: ignore[override]
        return self._binary("==", np.equal, o)

    def __ne__(self, o: Any) -> Any:  # type: ignore[override]
        return self._binary("!=", np.not_equal, o)

    def __neg__(self) -> DeviceArray:
        self._xp.record("cupy", "unary -")
        return self._xp.wrap(-self._data)

    def __invert__(self) -> DeviceArray:
        self._xp.record("cupy", "~")
        return self._xp.wrap(~self._data)

    def __iadd__(self, o: Any) -> DeviceArray:
        return self._inplace("+=", np.add, o)

    def __isub__(self, o: Any) -> DeviceArray:
        return self._inplace("-=", np.subtract, o)

    def __imul__(self, o: Any) -> DeviceArray:
        return self._inplace("*=", np.multiply, o)

    def __itruediv__(self, o: Any) -> DeviceArray:
        return self._inplace("/=", np.true_divide, o)


_ELEMENTWISE = ("abs", "sign", "sqrt", "log", "exp", "maximum", "minimum", "isfinite", "isnan",
                "clip", "where")  # fmt: skip
_REDUCTIONS = ("sum", "mean", "max", "min", "all", "any", "argmax", "argmin")
_DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
           "float16", "float32", "float64")  # fmt: skip


class EmulatedCupy:
    """The ``cupy`` namespace over ``DeviceArray``: the functions the package calls, each
    recording its device operations (see the module's rules) in ``events``, and running on
    NumPy. ``twins=True`` runs the package's kernels through their per-element twins (slow:
    for small arrays) instead of their vectorised reference."""

    ndarray = DeviceArray

    def __init__(self, twins: bool = False) -> None:
        self.device = EmulatedDevice(0)
        self.twins = twins
        self.cuda = _Cuda(self)
        self.memory = (16 << 30, 16 << 30)  # (free, total) bytes: memGetInfo's answer
        self.pool_free = 0  # bytes CuPy's pool holds unused
        self.pinned: list[bytearray] = []  # the pinned host memory allocated
        # what was ordered on the streams: (what, stream, event), see EmulatedStream
        self.streams: list[tuple[str, str, str]] = []
        self.events: list[Event | str] = []  # a str marks a boundary (see ``mark``)
        self.recording = True
        self.reference = Ops(NumpyBackend(fast_ops=False))  # the kernels' CPU computations

    def __getattr__(self, name: str) -> Any:
        if name in _DTYPES:
            return np.bool_ if name == "bool" else getattr(np, name)
        if name in _ELEMENTWISE:
            return lambda *a, **k: self._call("cupy", name, getattr(np, name), a, k)
        if name in _REDUCTIONS:
            return lambda *a, **k: self._call("cupy", name, getattr(np, name), a, k)
        raise AttributeError(
            f"benchmarks.trace: the emulated cupy has no {name!r}; add it to EmulatedCupy "
            "with the device operations it costs on CuPy"
        )

    def get_default_memory_pool(self) -> _MemoryPool:
        return _MemoryPool(self)

    def is_pinned(self, a: np.ndarray) -> bool:
        """Whether host array ``a`` lies in pinned memory from ``cuda.alloc_pinned_memory``."""
        base: Any = a
        while isinstance(base, np.ndarray):
            base = base.base
        return any(base is memory for memory in self.pinned)

    # --- the record ---
    def record(self, kind: str, op: str) -> None:
        if self.recording:
            self.events.append(Event(kind, op, _site()))

    def mark(self, label: str) -> None:
        """A boundary in ``events`` (the end of a step, say), for ``segments``."""
        self.events.append(label)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Nothing recorded inside (setting up a test's arrays)."""
        before, self.recording = self.recording, False
        try:
            yield
        finally:
            self.recording = before

    def wrap(self, result: Any) -> DeviceArray:
        """A NumPy result (a scalar from a 0-d operation too: CuPy returns 0-d arrays) as a
        DeviceArray."""
        return DeviceArray(np.asarray(result), self)

    def _call(
        self, kind: str, op: str, fn: Any, args: Sequence[Any], kwargs: dict[str, Any]
    ) -> DeviceArray:
        out = kwargs.get("out")
        plain = [self._unwrap(a, op) for a in args]
        if out is not None:
            kwargs = kwargs | {"out": out._data}
        self.record(kind, op)
        result = fn(*plain, **kwargs)
        return out if out is not None else self.wrap(result)

    def _unwrap(self, a: Any, op: str) -> Any:
        if isinstance(a, DeviceArray):
            return a._data
        if _is_host_array(a):
            raise TypeError(f"Unsupported type {type(a)}: a host array passed to cupy.{op}")
        return a

    # --- the functions ---
    def matmul(self, a: Any, b: Any, out: Any = None) -> DeviceArray:
        return self._call("gemm", "matmul", np.matmul, (a, b), {} if out is None else {"out": out})

    def astype(self, x: DeviceArray, dtype: Any, copy: bool = True) -> DeviceArray:
        if x.dtype == dtype:
            if not copy:
                return x
            self.record("memset/copy", "astype (same dtype: a copy)")
        else:
            self.record("cupy", f"astype {np.dtype(dtype).name}")
        return self.wrap(x._data.astype(dtype))

    def take(self, a: DeviceArray, indices: DeviceArray, axis: int | None = None) -> DeviceArray:
        return self._call("cupy", "take", np.take, (a, indices), {"axis": axis})

    def reshape(self, a: DeviceArray, shape: Any) -> DeviceArray:
        if not a.flags.c_contiguous:
            self.record("memset/copy", "reshape (a copy)")
        return DeviceArray(np.reshape(a._data, shape), self)

    def asarray(self, a: Any, dtype: Any = None, copy: bool | None = None) -> DeviceArray:
        if isinstance(a, DeviceArray):
            if dtype is not None and a.dtype != dtype:
                return self.astype(a, dtype)
            return self.asarray_copy(a) if copy else a
        self.record("h2d", "asarray (from the host)")
        return self.wrap(np.array(a, dtype=dtype))

    def asarray_copy(self, a: DeviceArray) -> DeviceArray:
        self.record("memset/copy", "asarray (copy)")
        return self.wrap(a._data.copy())

    def arange(self, *args: Any, dtype: Any = None) -> DeviceArray:
        self.record("cupy", "arange")
        return self.wrap(np.arange(*args, dtype=dtype))

    def empty(self, shape: Any, dtype: Any = np.float64) -> DeviceArray:
        return self.wrap(np.empty(shape, dtype))  # from CuPy's pool: no device operation

    def empty_like(self, a: DeviceArray, dtype: Any = None) -> DeviceArray:
        return self.wrap(np.empty_like(a._data, dtype=dtype))

    def zeros(self, shape: Any, dtype: Any = np.float64) -> DeviceArray:
        self.record("memset/copy", "zeros (memset)")
        return self.wrap(np.zeros(shape, dtype))

    def zeros_like(self, a: DeviceArray, dtype: Any = None) -> DeviceArray:
        self.record("memset/copy", "zeros_like (memset)")
        return self.wrap(np.zeros_like(a._data, dtype=dtype))

    def concat(self, arrays: Sequence[DeviceArray], axis: int = 0) -> DeviceArray:
        return self._concatenate("concat", arrays, axis, np.concatenate)

    def concatenate(self, arrays: Sequence[DeviceArray], axis: int = 0) -> DeviceArray:
        return self._concatenate("concatenate", arrays, axis, np.concatenate)

    def stack(self, arrays: Sequence[DeviceArray], axis: int = 0) -> DeviceArray:
        return self._concatenate("stack", arrays, axis, np.stack)

    def _concatenate(
        self, op: str, arrays: Sequence[DeviceArray], axis: int, fn: Any
    ) -> DeviceArray:
        plain = [self._unwrap(a, op) for a in arrays]
        result = fn(plain, axis=axis)
        same = len({a.dtype for a in plain}) == 1 and result.dtype == plain[0].dtype
        if len(plain) > 8 and same and result.nbytes < 2 * 1024 * 1024 * len(plain):
            self.record("h2d", f"{op} (the arrays' pointers)")
            self.record("cupy", f"{op} (one kernel)")
        else:
            for _ in plain:
                self.record("memset/copy", f"{op} (a copy an array)")
        return self.wrap(result)


# --- the backend --------------------------------------------------------------------------


class EmulatedCupyOps(CupyOps):
    """``CupyOps`` with each kernel launch run on the CPU (see ``KERNELS``) and recorded."""

    name = "cuda (emulated)"

    def _launch(self, name: str, n: int, *args: Any) -> None:
        if n == 0:  # as CupyOps._launch: no launch of 0 elements
            return
        xp: EmulatedCupy = self.xp
        entry = kernel_entry(name)
        xp.record("kernel", name)
        plain = [a._data if isinstance(a, DeviceArray) else a for a in args]
        if xp.twins and entry.twin is not None:
            _run_twin(entry.twin, plain, n)
        else:
            entry.reference(xp.reference, *plain)

    def _run(self, name: str, grid: int, block: tuple[int, ...], *args: Any) -> None:
        """A kernel on its own grid (the column sums, the softmax): all its arguments."""
        xp: EmulatedCupy = self.xp
        entry = kernel_entry(name)
        xp.record("kernel", name)
        plain = [a._data if isinstance(a, DeviceArray) else a for a in args]
        if xp.twins and entry.ordered is not None:
            entry.ordered(*plain)
        else:
            entry.reference(xp.reference, *plain)


class EmulatedCupyBackend(CupyBackend):
    """The CuPy backend over ``EmulatedCupy`` (its ``xp``; a new one when not given): the
    package's CuPy code path, counted, on the CPU."""

    ops_class = EmulatedCupyOps

    def __init__(
        self, xp: Any = None, device: Any = None, reason: str = "", fast_ops: bool = True
    ) -> None:
        xp = EmulatedCupy() if xp is None else xp
        super().__init__(xp, xp.device if device is None else device, reason, fast_ops)

    @property
    def events(self) -> list[Event | str]:
        return self.xp.events  # type: ignore[no-any-return]


# --- counting ------------------------------------------------------------------------------


def tally(events: Sequence[Event | str]) -> dict[str, int]:
    """The number of events of each kind (``KINDS``, all present) and ``total``."""
    counts = Counter(e.kind for e in events if isinstance(e, Event))
    out = {kind: counts.get(kind, 0) for kind in KINDS}
    out["total"] = sum(out.values())
    return out


def breakdown(events: Sequence[Event | str]) -> list[tuple[str, str, str, int]]:
    """``(site, kind, op, count)`` for each distinct operation, in order of first issue."""
    counts = Counter((e.site, e.kind, e.op) for e in events if isinstance(e, Event))
    return [(site, kind, op, n) for (site, kind, op), n in counts.items()]


@dataclass
class Segment:
    """The events between two boundaries of a training run: ``label`` is ``"start"`` (before
    the first step of an epoch: the shuffle order's copy, the snapshot), ``"step"`` or
    ``"epoch end"`` (the metrics read and the finiteness checks)."""

    label: str
    epoch: int
    events: list[Event] = field(default_factory=list)


def trace_training(model: Any, *args: Any, **kwargs: Any) -> list[Segment]:
    """Run ``model.train(*args, **kwargs)`` on an ``EmulatedCupyBackend`` and cut what it
    issued into segments: per epoch a ``start``, each ``step`` (the batch's gather too) and the
    ``epoch end``. (Marks ``TerminateOnNaN.on_epoch_begin``, the epoch's snapshot, and the
    trainer's ``_train_step`` and ``_epoch``.)"""
    xp: EmulatedCupy = model.backend.xp
    if not isinstance(xp, EmulatedCupy):
        raise TypeError(f"trace_training needs a model on EmulatedCupyBackend, got {xp!r}")
    from backprop_gpu.callbacks import TerminateOnNaN
    from backprop_gpu.trainer import Trainer

    # (class, method, mark): the epoch's snapshot starts its steps
    hooks = [(TerminateOnNaN, "on_epoch_begin", "_snapshot"), (Trainer, "_train_step",
             "_train_step"), (Trainer, "_epoch", "_epoch")]  # fmt: skip
    originals = {mark: getattr(cls, name) for cls, name, mark in hooks}

    def marked(mark: str) -> Callable[..., Any]:
        def run(*a: Any, **k: Any) -> Any:
            result = originals[mark](*a, **k)
            xp.mark(mark)
            return result

        return run

    start = len(xp.events)
    for cls, name, mark in hooks:
        setattr(cls, name, marked(mark))
    try:
        model.train(*args, **kwargs)
    finally:
        for cls, name, mark in hooks:
            setattr(cls, name, originals[mark])  # the class's methods again
    segments = [Segment("start", 1)]
    for item in xp.events[start:]:
        current = segments[-1]
        if isinstance(item, Event):
            current.events.append(item)
        elif item in ("_snapshot", "_train_step"):
            segments.append(Segment("step", current.epoch))
        else:  # "_epoch": the open segment after the last step was the epoch's end
            current.label = "epoch end"
            segments.append(Segment("start", current.epoch + 1))
    return segments
