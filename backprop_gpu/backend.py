"""The ``xp`` layer: which array library (NumPy, CuPy or array-api-strict) does the math.

Every layer, loss and optimizer is written once against ``backend.xp``. This module is the only
place that imports an array library by name (NumPy aside, which is the host format).

Selection, in order of precedence:

1. ``use_backend(name)`` (scoped, per thread / per async task through a context variable),
2. ``set_backend(name)`` (process-wide default),
3. the ``BACKPROP_GPU_BACKEND`` environment variable, read when the package is imported,
4. ``"auto"``: CuPy when it imports, sees a device and runs a tiny matmul; NumPy otherwise.

``"cupy"`` and ``"auto"`` use the GPU that was current when CuPy was first detected (GPU 0
unless the program chose another); ``"cupy:N"`` names GPU N (one GPU per MPI rank, say).
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import importlib.util
import logging
import os
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailableError",
    "asarray",
    "detect_gpu",
    "get_backend",
    "gpu_count",
    "gpu_index",
    "set_backend",
    "to_numpy",
    "use_backend",
]

logger = logging.getLogger("backprop_gpu")

BACKEND_NAMES = ("auto", "numpy", "cupy", "array_api_strict")
ENV_VAR = "BACKPROP_GPU_BACKEND"
INSTALL_HINT = (
    "install CuPy for your CUDA version (the cuda12 or cuda13 extra: pip install '.[cuda12]' "
    "in a checkout of backprop_gpu, or pip install cupy-cuda12x), or use set_backend('numpy')"
)


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run here (``cupy`` without a usable GPU)."""


@dataclass(frozen=True, eq=False)
class Backend:
    """One array library on one device.

    ``name`` is ``"numpy"``, ``"cupy"`` or ``"array_api_strict"``; ``xp`` is the module whose
    functions do the math; ``device`` is where arrays live (``"cpu"`` for NumPy);
    ``reason`` says why ``auto`` chose this backend (empty when chosen by name).
    """

    name: str
    xp: Any = field(repr=False)
    device: Any
    reason: str = ""
    array_type: Any = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # (CuPy's is named: making one would allocate on the current GPU, perhaps not ours)
        array_type = self.xp.ndarray if self.name == "cupy" else type(self.xp.asarray(0))
        object.__setattr__(self, "array_type", array_type)

    # Two backends are the same when their library and device are: how ``auto`` got there
    # (``reason``) does not matter, and a CuPy Device is not hashable, its text is.
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Backend):
            return NotImplemented
        return (self.name, str(self.device)) == (other.name, str(other.device))

    def __hash__(self) -> int:
        return hash((self.name, str(self.device)))

    def owns(self, a: Any) -> bool:
        """True when ``a`` is an array of this backend on this backend's device (for NumPy,
        the scalars its reductions return count too)."""
        if self.name == "numpy":
            return isinstance(a, np.ndarray | np.generic)
        return isinstance(a, self.array_type) and _device_of(self.name, a) == self.device

    def on_device(self) -> contextlib.AbstractContextManager[Any]:
        """A context in which this backend's GPU is the current CUDA device (CuPy runs kernels
        on the current one); does nothing on host backends. A new ``Device`` every time:
        CuPy keeps the device to restore on the object, so a shared one would mix up threads.
        """
        if self.name == "cupy":
            return self.xp.cuda.Device(self.device.id)  # type: ignore[no-any-return]
        return contextlib.nullcontext()

    def synchronize(self) -> None:
        """Wait until the device has finished the work queued so far (for timing; a no-op on
        host backends)."""
        if self.name == "cupy":  # (a new Device: its synchronize enters it, see on_device)
            self.xp.cuda.Device(self.device.id).synchronize()

    def ready(self, a: Any, dtype: Any = None) -> bool:
        """The per-step fast path: ``a`` is already this backend's array, on its device
        (and of ``dtype``), so nothing needs converting or checking further."""
        return (
            type(a) is self.array_type
            and (dtype is None or a.dtype == dtype)
            and (self.name == "numpy" or a.device == self.device)
        )

    def asarray(self, a: Any, dtype: Any = None, *, what: str = "array") -> Any:
        """Move array-like ``a`` (host data or this backend's array) onto this backend's device.

        Host data (NumPy arrays, lists, scalars) is copied to the device once. An array that
        already lives here is returned as is (cast when ``dtype`` differs). An array from another
        backend or device raises ``ValueError`` naming ``what``; nothing is moved implicitly.
        """
        if isinstance(a, self.array_type):
            here = _device_of(self.name, a)
            if here != self.device:
                raise ValueError(
                    f"{what} is on device {here!r} but this {self.name} backend works on "
                    f"{self.device!r}; move it explicitly (bg.to_numpy, then bg.asarray)"
                )
            if dtype is not None and a.dtype != dtype:
                if getattr(a.dtype, "kind", "f") not in "biuf":  # NumPy or CuPy: a numpy dtype
                    raise TypeError(f"{what} must hold numbers, got dtype {a.dtype}")
                a = self.xp.astype(a, dtype)  # NumPy >= 2, CuPy >= 14 and the standard
            return a
        other = array_library(a)
        if other is not None and other != "numpy":
            raise ValueError(
                f"{what} comes from {other} but this layer works on the {self.name} backend "
                f"({self.device!r}); move it with bg.to_numpy(a) first, or build the layer "
                f"under bg.use_backend({other!r})"
            )
        host = host_array(a, what)
        if host.dtype.kind not in "biuf":
            raise TypeError(f"{what} must hold numbers, got dtype {host.dtype}")
        if self.name == "numpy":
            return host if dtype is None else host.astype(dtype, copy=False)
        if dtype is None:
            dtype = getattr(self.xp, host.dtype.name)
        if self.name == "cupy":
            with self.on_device():
                return self.xp.asarray(host, dtype=dtype)
        return self.xp.asarray(host, dtype=dtype, device=self.device)

    def arange(self, n: int) -> Any:
        """``0, 1, ..., n-1`` as an int64 array on this backend's device."""
        if self.name == "array_api_strict":
            return self.xp.arange(n, dtype=self.xp.int64, device=self.device)
        if self.name == "cupy":
            with self.on_device():
                return self.xp.arange(n, dtype=self.xp.int64)
        return self.xp.arange(n, dtype=self.xp.int64)

    def dtype(self, name: Any) -> Any:
        """This backend's dtype object for a name such as ``"float32"`` (or a NumPy dtype)."""
        return getattr(self.xp, dtype_name(name))


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


def _device_of(name: str, a: Any) -> Any:
    return "cpu" if name == "numpy" else a.device


def to_numpy(a: Any) -> np.ndarray:
    """Copy any backend's array (or array-like) to a host ``numpy.ndarray``."""
    lib = array_library(a)
    if lib == "cupy":
        return a.get()  # type: ignore[no-any-return]
    if lib == "array_api_strict":
        import array_api_strict

        return np.asarray(a.to_device(array_api_strict.Device("CPU_DEVICE")))
    return np.array(a, copy=True)  # a copy on NumPy too, so every backend behaves alike


# --- detection -----------------------------------------------------------------------------


def detect_gpu() -> tuple[Any, str]:
    """Try CuPy: return ``(cupy_module, "")`` when a GPU works, else ``(None, reason)``.

    Never raises. A CuPy that imports but finds no driver or device returns quickly. With no
    NVIDIA driver library on the machine CuPy is not even imported (it would cost 16 MiB of
    memory and a tenth of a second for nothing), unless the program imported it already.
    """
    if "cupy" not in sys.modules and not _driver_library_present():
        if importlib.util.find_spec("cupy") is None:
            return None, f"CuPy is not installed; {INSTALL_HINT}"
        return None, NO_DRIVER
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install failing at import
        return None, f"CuPy is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    try:
        available = cupy.is_available()
    except Exception as e:
        return None, f"CuPy is installed but cannot query CUDA ({type(e).__name__}: {e})"
    if not available:
        try:
            return None, _why_no_device(cupy)
        except Exception as e:
            return None, f"CuPy is installed but CUDA is unusable ({type(e).__name__}: {e})"
    try:
        a = cupy.ones((2, 2), dtype=cupy.float32)
        (a @ a).sum()
        cupy.cuda.Device().synchronize()
    except Exception as e:
        return (
            None,
            f"CuPy sees a device but a test matmul failed ({type(e).__name__}: {e})",
        )
    return cupy, ""


NO_DRIVER = (
    "CuPy is installed but no NVIDIA driver was found (no GPU on this machine?); "
    "install the NVIDIA driver, or use the numpy backend"
)


def _driver_library_present() -> bool:
    """The CUDA driver library loads (what CuPy needs before it can see any device)."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _why_no_device(cupy: Any) -> str:
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()
    except Exception:
        driver = 0
    if driver == 0:
        return NO_DRIVER
    try:
        count = runtime.getDeviceCount()
    except Exception as e:
        need = runtime.runtimeGetVersion()
        return (
            f"CuPy is installed but CUDA failed ({e}); the driver supports CUDA "
            f"{driver // 1000}.{driver % 1000 // 10} and CuPy was built for "
            f"{need // 1000}.{need % 1000 // 10}: update the driver or install the matching "
            "cupy-cudaXXx wheel"
        )
    if count == 0:
        return "CuPy is installed but reports no CUDA device"
    return "CuPy is installed but cupy.is_available() is False"


# --- construction and selection ---------------------------------------------------------


def gpu_index(name: str) -> int | None:
    """N for a backend name ``"cupy:N"`` (N in ASCII digits), else None."""
    base, colon, index = name.partition(":")
    if base == "cupy" and colon and index.isascii() and index.isdigit():
        return int(index)
    return None


def _make(name: str) -> Backend:
    index = gpu_index(name)  # "cupy:N": GPU N
    if name not in BACKEND_NAMES and index is None:
        raise ValueError(
            f"unknown backend {name!r}; valid names are auto, numpy, cupy, cupy:N (GPU N), "
            "array_api_strict"
        )
    if name == "numpy":
        return Backend("numpy", np, "cpu")
    if name == "array_api_strict":
        try:
            import array_api_strict
        except ImportError as e:
            raise RuntimeError(
                "backend 'array_api_strict' needs the array-api-strict package "
                "(the test extra: pip install '.[test]' in a checkout of backprop_gpu)"
            ) from e
        return Backend("array_api_strict", array_api_strict, array_api_strict.Device("device1"))
    global _detected
    count = gpu_count() if index is not None else 0
    if index is not None and 0 < count <= index:
        raise ValueError(
            f"backend {name!r}: there is no GPU {index}; this machine has {count} "
            f"(cupy:0 to cupy:{count - 1})"
        )
    if _detected is None:  # detect once per process, and log a fallback once
        # "cupy:N": the test matmul runs on GPU N, so GPU 0 gets no CUDA context for nothing
        where = sys.modules["cupy"].cuda.Device(index) if count else contextlib.nullcontext()
        with where:
            cupy, reason = detect_gpu()
        # the device current at detection (device 0 unless the program chose another)
        _detected = (
            Backend("cupy", cupy, cupy.cuda.Device()) if cupy is not None else None,
            reason,
        )
        if cupy is None:
            logger.info("backprop_gpu: auto uses NumPy: %s", reason)
    gpu, reason = _detected
    if gpu is not None:
        if index is not None:
            return replace(gpu, device=gpu.xp.cuda.Device(index))
        return gpu if name == "cupy" else replace(gpu, reason="auto: CUDA device works")
    if name == "cupy" or index is not None:
        raise BackendUnavailableError(f"backend {name!r} was requested but cannot run: {reason}")
    return Backend("numpy", np, "cpu", reason=f"auto: {reason}")


def gpu_count() -> int:
    """How many GPUs CuPy sees, without creating a CUDA context on any (0 without CuPy or
    without a driver)."""
    if "cupy" not in sys.modules and not _driver_library_present():
        return 0
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # not installed, or no usable driver: detect_gpu says why
        return 0


def _make_current(backend: Backend) -> Backend:
    """CuPy runs kernels on the calling thread's current GPU: make it the backend's (as
    ``torch.cuda.set_device`` does), so a model on GPU N computes there."""
    if backend.name == "cupy":
        backend.device.use()
    return backend


_detected: tuple[Backend | None, str] | None = None  # (the CuPy backend or None, why not)
_lock = threading.Lock()
_env_choice = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
_default: Backend | None = None
_scoped: contextvars.ContextVar[Backend | None] = contextvars.ContextVar(
    "backprop_gpu_backend", default=None
)


def get_backend() -> Backend:
    """The active backend: the innermost ``use_backend``, else the process default.

    The default is resolved on first use from ``BACKPROP_GPU_BACKEND`` (``auto`` if unset).
    """
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                try:
                    _default = _make_current(_make(_env_choice))
                except (ValueError, RuntimeError) as e:
                    raise type(e)(f"{ENV_VAR}={_env_choice!r}: {e} (or unset {ENV_VAR})") from None
    return _default


def set_backend(name: str = "auto") -> Backend:
    """Make ``name`` the process-wide backend and return it.

    Inside a ``use_backend`` block it changes that block's backend only (the block restores
    the previous one on exit). ``"cupy"`` without a working GPU raises ``RuntimeError``.
    ``"cupy:N"`` is GPU N, which becomes the calling thread's current CUDA device.
    """
    backend = _make_current(_make(name))
    if _scoped.get() is not None:
        _scoped.set(backend)
    else:
        global _default
        _default = backend
    return backend


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Run a block on backend ``name``; the previous one comes back on exit, also on error.

    The choice is held in a context variable, so two threads can use different backends at once.
    On CuPy the backend's GPU is the current CUDA device inside the block.
    """
    backend = _make(name)
    token = _scoped.set(backend)
    try:
        with backend.on_device():
            yield _scoped.get()  # type: ignore[misc]
    finally:
        _scoped.reset(token)


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


def asarray(a: Any, dtype: Any = None) -> Any:
    """Array-like ``a`` as an array on the active backend's device (see ``Backend.asarray``)."""
    backend = get_backend()
    return backend.asarray(a, None if dtype is None else backend.dtype(dtype))
