"""The ``xp`` layer: which array library (NumPy, CuPy or array-api-strict) does the math.

Every layer, loss and optimizer is written once against ``backend.xp``. This module is the only
place that imports an array library by name (NumPy aside, which is the host format).

Selection, in order of precedence:

1. ``use_backend(name)`` (scoped, per thread / per async task through a context variable),
2. ``set_backend(name)`` (process-wide default),
3. the ``BACKPROP_GPU_BACKEND`` environment variable, read when the package is imported,
4. ``"auto"``: CuPy (>= 14) when it imports, sees a device, loads NVRTC and cuBLAS and runs a
   tiny matmul; NumPy otherwise, logged once (logger ``backprop_gpu``): a WARNING when CuPy is
   installed, INFO when it is not.

``"cupy"`` and ``"auto"`` use the GPU that was current when CuPy was first detected (GPU 0
unless the program chose another); ``"cupy:N"`` names GPU N (one GPU per MPI rank, say).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from .base import Backend, BackendUnavailableError
from .detect import cupy_installed, detect_gpu, gpu_count
from .numpy_backend import NumpyBackend
from .strict_backend import StrictBackend

logger = logging.getLogger("backprop_gpu")

BACKEND_NAMES = ("auto", "numpy", "cupy", "array_api_strict")
ENV_VAR = "BACKPROP_GPU_BACKEND"
KERNELS_VAR = "BACKPROP_GPU_KERNELS"  # "0": every backend runs the reference Ops


def fast_ops_enabled() -> bool:
    """Whether backends made from now on run their accelerated ops (``BACKPROP_GPU_KERNELS``
    is not ``"0"``; read at each selection, so a test or a script can set it)."""
    return os.environ.get(KERNELS_VAR, "1") != "0"


# --- construction and selection ---------------------------------------------------------


def gpu_index(name: str) -> int | None:
    """N for a backend name ``"cupy:N"`` (N in ASCII digits), else None."""
    base, colon, index = name.partition(":")
    if base == "cupy" and colon and index.isascii() and index.isdigit():
        return int(index)
    return None


# Backends made by name alone (CuPy, which needs detection and a GPU index, is apart):
# ``make(fast_ops=...)`` builds one. ``register_backend`` adds to it.
_FACTORIES: dict[str, Callable[..., Backend]] = {
    "numpy": NumpyBackend,
    "array_api_strict": StrictBackend,
}


def register_backend(name: str, make: Callable[..., Backend]) -> None:
    """Make backend ``name`` selectable (``set_backend(name)``, ``use_backend(name)``,
    ``BACKPROP_GPU_BACKEND=name``): ``make(fast_ops=True)`` builds it, a ``Backend`` subclass
    whose ``ops_class`` is its ``Ops`` subclass. A new backend is one file holding those two
    classes and this call."""
    if not name.isidentifier() or name in ("auto", "cupy"):
        raise ValueError(f"register_backend: {name!r} cannot name a backend")
    _FACTORIES[name] = make


def backend_names() -> tuple[str, ...]:
    """The names ``set_backend`` takes (and ``cupy:N``)."""
    return ("auto", "numpy", "cupy", *sorted(set(_FACTORIES) - {"numpy"}))


def _make(name: str | Backend) -> Backend:
    if isinstance(name, Backend):  # one made already (``Backend.with_reference_ops()``, say)
        return name
    index = gpu_index(name)  # "cupy:N": GPU N
    if name not in backend_names() and index is None:
        raise ValueError(
            f"unknown backend {name!r}; valid names are auto, numpy, cupy, cupy:N (GPU N), "
            + ", ".join(n for n in backend_names() if n not in ("auto", "numpy", "cupy"))
        )
    fast = fast_ops_enabled()
    if name in _FACTORIES:
        return _FACTORIES[name](fast_ops=fast)
    global _detected
    count = gpu_count() if index is not None else 0
    if index is not None and 0 < count <= index:
        raise ValueError(
            f"backend {name!r}: there is no GPU {index}; this machine has {count} "
            f"(cupy:0 to cupy:{count - 1})"
        )
    if _detected is None:  # detect once per process
        _detected = _detect(index if count else None)
    gpu, reason = _detected
    if gpu is None and name == "auto":
        _log_fallback(reason)
    if gpu is not None:
        device = gpu.device if index is None else gpu.xp.cuda.Device(index)
        return replace(
            gpu,
            device=device,
            reason="auto: CUDA device works" if name == "auto" else "",
            fast_ops=fast,
        )
    if name == "cupy" or index is not None:
        raise BackendUnavailableError(f"backend {name!r} was requested but cannot run: {reason}")
    return NumpyBackend(reason=f"auto: {reason}", fast_ops=fast)


def _detect(index: int | None) -> tuple[Backend | None, str]:
    """The CuPy backend on the GPU current at detection, or None and why not; ``index``:
    the test matmul runs on GPU ``index`` (``cupy:N``: GPU 0 gets no CUDA context for
    nothing)."""
    if index is None:
        cupy, reason = detect_gpu()
        current = None
    else:
        from .cupy_backend import on_gpu

        current = sys.modules["cupy"].cuda.runtime.getDevice()
        with on_gpu(sys.modules["cupy"], index):
            cupy, reason = detect_gpu()
    if cupy is None:
        return None, reason
    # the device current at detection (device 0 unless the program chose another)
    return _cupy_backend(cupy, cupy.cuda.Device(current)), reason


def _log_fallback(reason: str) -> None:
    """Log ``auto``'s fallback to NumPy once per process: a WARNING when CuPy is installed
    (the user meant to use a GPU, and ``info`` or the message says what to fix), INFO when it
    is not (NumPy is then what ``auto`` is for)."""
    global _fallback_logged
    if _fallback_logged:
        return
    _fallback_logged = True
    installed = cupy_installed()
    logger.log(logging.WARNING if installed else logging.INFO, FALLBACK, reason)


FALLBACK = "backprop_gpu: auto uses NumPy: %s"


def auto_fallback() -> str | None:
    """Why ``auto`` uses NumPy although CuPy is installed (the WARNING's text, without its
    ``backprop_gpu: `` prefix), or None: CuPy runs, is not installed, or was not tried yet."""
    if _detected is None or _detected[0] is not None or not cupy_installed():
        return None
    return (FALLBACK % _detected[1]).removeprefix("backprop_gpu: ")


def _cupy_backend(cupy: Any, device: Any) -> Backend:
    from .cupy_backend import CupyBackend  # (only once CuPy is known to work)

    return CupyBackend(cupy, device)


_detected: tuple[Backend | None, str] | None = None  # (the CuPy backend or None, why not)
_fallback_logged = False
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
                    _default = _make(_env_choice).make_current()
                except (ValueError, RuntimeError) as e:
                    raise type(e)(f"{ENV_VAR}={_env_choice!r}: {e} (or unset {ENV_VAR})") from None
    return _default


def set_backend(name: str | Backend = "auto") -> Backend:
    """Make ``name`` the process-wide backend and return it.

    Inside a ``use_backend`` block it changes that block's backend only (the block restores
    the previous one on exit). ``"cupy"`` without a working GPU raises ``RuntimeError``.
    ``"cupy:N"`` is GPU N, which becomes the calling thread's current CUDA device.
    """
    backend = _make(name).make_current()
    if _scoped.get() is not None:
        _scoped.set(backend)
    else:
        global _default
        _default = backend
    return backend


@contextlib.contextmanager
def use_backend(name: str | Backend) -> Iterator[Backend]:
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


def asarray(a: Any, dtype: Any = None) -> Any:
    """Array-like ``a`` as an array on the active backend's device (see ``Backend.asarray``)."""
    backend = get_backend()
    return backend.asarray(a, None if dtype is None else backend.dtype(dtype))
