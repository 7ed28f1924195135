"""The CuPy backend: arrays on one CUDA GPU, and ``CupyOps``, the CUDA kernels' fast paths.

The kernels' CUDA C is in ``cuda_source.py`` (with the per-element Python "twins" the CPU
tests hold against the reference); CuPy compiles it with NVRTC on first use, once per
process, and loads it once per GPU. CI compiles the same source to PTX on a machine with
no GPU and checks it (no fused multiply-add in the kernels that must equal the reference).

Nothing here runs at import time: ``select.py`` builds a ``CupyBackend`` only after
``detect.py`` found a working GPU.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from . import cuda_source
from .base import Backend, HostRead, dtype_name
from .ops import Ops

_THREADS = 256  # threads per block of the elementwise kernels


class CupyOps(Ops):
    """The reference ops with fused CUDA kernels where they apply (float32/float64,
    C-contiguous arrays)."""

    name = "cuda"

    def _fits(self, *arrays: Any) -> str | None:
        """The kernels' dtype suffix ("f32", "f64") when every array can go to a kernel."""
        suffix = cuda_source.SUFFIX.get(dtype_name(arrays[0].dtype))
        if suffix is None or not all(a.flags.c_contiguous for a in arrays):
            return None
        return suffix

    def _launch(self, name: str, n: int, *args: Any) -> None:
        if n == 0:  # a grid of 0 blocks is an invalid launch
            return
        kernel = _function(self.backend.device.id, name)
        kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,), (*args, np.int64(n)))

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        return self.xp.matmul(a, b, out=out)  # (cuBLAS writes straight into out)

    def uniform(
        self, seed: int, stream: tuple[int, int], shape: tuple[int, ...], dtype: Any,
        rows: tuple[int, int, int] | None = None,
    ) -> Any:  # fmt: skip
        from ..philox import uniform_cuda  # (one kernel, a thread per Philox block)

        return uniform_cuda(self.backend, seed, stream, shape, dtype, rows)

    def relu_backward(self, dvalues: Any, inputs: Any) -> Any:
        suffix = self._fits(dvalues, inputs)
        if suffix is None or dvalues.dtype != inputs.dtype:
            return super().relu_backward(dvalues, inputs)
        out = self.xp.empty_like(dvalues)
        self._launch(f"relu_backward_{suffix}", out.size, dvalues, inputs, out)
        return out

    def sgd_momentum(
        self, param: Any, velocity: Any, grad: Any, lr: float, momentum: float, nesterov: bool
    ) -> None:
        suffix = self._fits(param, velocity, grad)
        if suffix is None:
            return super().sgd_momentum(param, velocity, grad, lr, momentum, nesterov)
        scalar = np.dtype(dtype_name(param.dtype)).type  # lr and momentum in the params' dtype
        self._launch(
            f"sgd_momentum_{suffix}", param.size,
            param, velocity, grad, scalar(lr), scalar(momentum), np.int32(nesterov),
        )  # fmt: skip


_module: Any = None
_functions: dict[tuple[int, str], Any] = {}
_compile_lock = threading.Lock()


def _function(device_id: int, name: str) -> Any:
    """The compiled kernel ``name`` on GPU ``device_id``: compiled once per process, its
    function looked up once per GPU (``get_function`` costs microseconds a launch).

    ``RawModule.get_function`` loads the module on the *current* GPU, so the lookup runs with
    ``device_id`` current; the check is repeated under the lock, so two threads missing at
    once look it up once."""
    function = _functions.get((device_id, name))  # (a dict read: atomic, no lock needed)
    if function is None:
        import cupy

        global _module
        with _compile_lock:
            function = _functions.get((device_id, name))
            if function is None:
                if _module is None:
                    from ..philox import PHILOX_CUDA_SOURCE  # (Dropout's generator)

                    _module = cupy.RawModule(
                        code=cuda_source.CUDA_SOURCE + PHILOX_CUDA_SOURCE,
                        options=cuda_source.NVRTC_OPTIONS,
                    )
                with on_gpu(cupy, device_id):
                    function = _functions[device_id, name] = _module.get_function(name)
    return function


@contextlib.contextmanager
def on_gpu(cupy: Any, device_id: int) -> Iterator[None]:
    """Make GPU ``device_id`` current for a block, and on leaving it go back to the GPU that
    was current before only if this thread had a CUDA context on it.

    ``with cupy.cuda.Device(n):`` calls ``cudaSetDevice(previous)`` on exit, and since CUDA 12
    ``cudaSetDevice`` creates the primary context of that GPU: a process that only ever used
    GPU 1 (an MPI rank on ``cupy:1``) would get a context, a few hundred MiB, on GPU 0, which
    ``cudaGetDevice`` reports as current before anything chose a GPU. So: the thread has a
    current context (``cuCtxGetCurrent``, CuPy's ``driver.ctxGetCurrent``), then its GPU is
    the previous one and comes back; it has none, then no GPU was in use in this thread, and
    ``device_id`` stays current after the block (the GPU this thread has used). When the
    driver cannot say, the previous GPU comes back, as CuPy does."""
    runtime = cupy.cuda.runtime
    previous = runtime.getDevice()
    restore = True  # (previous == device_id: the block makes a context there anyway)
    if previous != device_id:
        with contextlib.suppress(Exception):  # (the driver cannot say: restore, as CuPy)
            restore = cupy.cuda.driver.ctxGetCurrent() != 0
        runtime.setDevice(device_id)
    try:
        yield
    finally:  # (also after a set_backend("cupy:M") inside the block)
        if restore and runtime.getDevice() != previous:
            runtime.setDevice(previous)


class CupyBackend(Backend):
    """CuPy on one GPU (``device`` is a ``cupy.cuda.Device``)."""

    name = "cupy"
    ops_class: ClassVar[type[Ops]] = CupyOps

    def _array_type(self) -> Any:
        # (not from an array: making one would allocate on the current GPU, perhaps not ours)
        return self.xp.ndarray

    def on_device(self) -> Any:
        # (not cupy.cuda.Device's own context: it goes back to GPU 0 even if this thread never
        # used it, creating a context there; see on_gpu)
        return on_gpu(self.xp, self.device.id)

    def make_current(self) -> Backend:
        self.device.use()
        return self

    def synchronize(self) -> None:
        # (not Device.synchronize: it calls cudaSetDevice(previous) afterwards, see on_gpu)
        with self.on_device():
            self.xp.cuda.runtime.deviceSynchronize()

    def start_read(self, a: Any) -> HostRead:
        return _CupyRead(self.xp, a)

    def from_host(self, host: np.ndarray, dtype: Any = None) -> Any:
        dtype = getattr(self.xp, host.dtype.name) if dtype is None else dtype
        with self.on_device():
            return self.xp.asarray(host, dtype=dtype)

    def arange(self, n: int) -> Any:
        with self.on_device():
            return self.xp.arange(n, dtype=self.xp.int64)


class _CupyRead(HostRead):
    """``a`` copied on the current stream into pinned host memory without blocking, and an
    event recorded after the copy: ``done()`` asks the event (no wait), ``value()`` waits on
    it alone, not on the work queued since."""

    def __init__(self, cupy: Any, a: Any) -> None:
        import cupyx  # type: ignore[import-untyped]

        self.array = a
        self._host = cupyx.empty_pinned(a.shape, a.dtype)
        stream = cupy.cuda.get_current_stream()
        a.get(stream=stream, out=self._host, blocking=False)
        self._event = cupy.cuda.Event(block=False, disable_timing=True)
        self._event.record(stream)
        self._value: np.ndarray | None = None

    def done(self) -> bool:
        return self._value is not None or bool(self._event.done)

    def value(self) -> np.ndarray:
        if self._value is None:
            self._event.synchronize()
            self._value = np.array(self._host, copy=True)  # (the pinned buffer goes back)
            self.array = self._host = None
        return self._value
