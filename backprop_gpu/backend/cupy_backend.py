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
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np

from . import cuda_source
from .base import Backend, HostRead, Transfer, dtype_name
from .ops import Ops

_THREADS = 256  # threads per block of the elementwise and row kernels
_MAX_BLOCKS = 4096  # the kernels loop (grid-stride) over what a grid this size does not cover


def _blocks(n: int, per_block: int) -> int:
    """Blocks for ``n`` items at ``per_block`` a block: at least 1 (a grid of 0 blocks is an
    invalid launch), at most _MAX_BLOCKS."""
    return max(1, min((n + per_block - 1) // per_block, _MAX_BLOCKS))


def _python_scalars(*values: Any) -> bool:
    """Whether every value is a Python int or float: "weak" scalars, which CuPy 14 casts to
    the array's dtype (as the kernels take them). A NumPy scalar promotes instead (float64
    with a float32 array), so the reference runs for it."""
    return all(type(v) in (int, float) for v in values)


class CupyOps(Ops):
    """The reference ops with fused CUDA kernels where they apply (float32/float64,
    C-contiguous arrays; float16 and bfloat16 too for the kernels of a mixed step,
    ``cuda_source.HALF_KERNELS``); anything else runs the reference.

    ``label_errors`` is a 1-element int64 device array (made at the first softmax
    cross-entropy kernel on this ops object): each ``softmax_cross_entropy*`` kernel adds the
    number of rows whose class index was outside [0, C) (those rows' probabilities, gradient
    and loss are NaN; nothing is read out of bounds). The library's own label checks are
    ``_checks.LabelChecker``'s, before a loss runs (``Model.train`` checks its data once and
    then passes ``validate=False``), so no bad label reaches the kernel from there; this
    cumulative count is the kernel's safety net for a caller who turned the checks off
    (``SoftmaxCrossEntropy(validate=False)``), never read by the library (no host sync).
    """

    name = "cuda"

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self.label_errors: Any = None

    def _fits(self, kernel: str, *arrays: Any) -> str | None:
        """The name of ``kernel``'s variant for these arrays ("bias_relu_f32", "bias_relu_f16")
        when every array can go to it: the first array's dtype one the kernel is built for
        (``cuda_source.SUFFIXES``: float32 and float64; float16 and bfloat16 too for the
        kernels of a mixed step; CuPy 14's bfloat16 is ``ml_dtypes.bfloat16``'s NumPy dtype),
        the others' the same, all C-contiguous. None otherwise: the reference runs."""
        dtype = arrays[0].dtype
        suffix = cuda_source.SUFFIX.get(dtype_name(dtype))
        if suffix is None or suffix not in cuda_source.SUFFIXES[kernel]:
            return None
        if not all(a.dtype == dtype and a.flags.c_contiguous for a in arrays):
            return None
        return f"{kernel}_{suffix}"

    def _run(self, name: str, grid: int, block: tuple[int, ...], *args: Any) -> None:
        _function(self.backend.device.id, name)((grid,), block, args)

    def _launch(self, name: str, n: int, *args: Any) -> None:
        """An elementwise kernel over ``n`` elements (its last argument)."""
        if n == 0:
            return
        self._run(name, _blocks(n, _THREADS), (_THREADS,), *args, np.int64(n))

    @staticmethod
    def _scalar(param: Any) -> Any:
        return np.dtype(dtype_name(param.dtype)).type  # a Python scalar as CuPy casts it

    def take_batch(
        self, X: Any, y: Any, indices: Any, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        """One kernel for both gathers (float X (N, F), any of the four float dtypes; int64
        labels y (N,), int64 indices); other arrays: the two takes."""
        xp = self.xp
        kernel = self._fits("take_batch", X)
        if (
            kernel is None or X.ndim != 2 or y.ndim != 1 or y.dtype != xp.int64
            or indices.dtype != xp.int64
            or not (y.flags.c_contiguous and indices.flags.c_contiguous)
        ):  # fmt: skip
            return super().take_batch(X, y, indices, out)
        rows, cols = indices.shape[0], X.shape[1]
        if out is None:
            out = (xp.empty((rows, cols), X.dtype), xp.empty((rows,), xp.int64))
        x_out, y_out = out
        self._launch(
            kernel, rows * cols + rows,
            X, y, indices, x_out, y_out, np.int64(rows), np.int64(cols),
        )  # fmt: skip
        return x_out, y_out

    def matmul(self, a: Any, b: Any, out: Any = None) -> Any:
        return self.xp.matmul(a, b, out=out)  # (cuBLAS writes straight into out)

    def bias_gradient(self, dvalues: Any, out: Any = None) -> Any:
        # CuPy's own column sum (the reference's order), straight into ``out``: one launch
        return self.xp.sum(dvalues, axis=0, keepdims=True, out=out)

    def uniform(
        self, seed: int, stream: tuple[int, int], shape: tuple[int, ...], dtype: Any,
        rows: tuple[int, int, int] | None = None,
    ) -> Any:  # fmt: skip
        from ..philox import uniform_cuda  # (one kernel, a thread per Philox block)

        return uniform_cuda(self.backend, seed, stream, shape, dtype, rows)

    # --- Dense + ReLU ----------------------------------------------------------------

    def bias_relu(self, z: Any, biases: Any) -> Any:
        """One kernel, in place on ``z``: ``max(z + biases, 0)`` with CuPy's ``maximum``
        rules (NaN stays NaN), the sum rounded to the dtype first, as the reference's. Bit for
        bit the reference (float16/bfloat16: each step in float, rounded once, as CuPy's)."""
        kernel = self._fits("bias_relu", z, biases)
        if kernel is None or z.ndim != 2 or biases.size != z.shape[1]:
            return super().bias_relu(z, biases)
        self._launch(kernel, z.size, z, biases, np.int64(z.shape[1]))
        return z

    def relu_backward(self, dvalues: Any, inputs: Any) -> Any:
        kernel = self._fits("relu_backward", dvalues, inputs)
        if kernel is None or dvalues.shape != inputs.shape:
            return super().relu_backward(dvalues, inputs)
        out = self.xp.empty_like(dvalues)
        self._launch(kernel, out.size, dvalues, inputs, out)
        return out

    def relu_backward_bias_gradient(
        self, dvalues: Any, output: Any, out: tuple[Any, Any] | None = None
    ) -> tuple[Any, Any]:
        """One kernel: ``dinputs = dvalues * (output > 0)`` (bit for bit the reference) and
        its column sums (1, C), added in a fixed order, the same on every run: a block takes
        32 columns; in each column thread k (0..7) adds rows k, k + 8, k + 16, ... in
        increasing order starting from 0, then the 8 partial sums are added pairwise (p[k] +=
        p[k + 4], then + p[k + 2], then + p[k + 1]). That is not CuPy's order: the sums differ
        from the reference by a sum's rounding, at most (N - 1) eps sum(|column|) (Higham);
        ``cuda_source.relu_backward_bias_gradient_twin`` is this order in NumPy. float16 and
        bfloat16: the sums accumulate in float32 and round once, as CuPy's ``sum`` does, so
        they differ from it by a float32 sum's rounding and at most one 16-bit rounding
        (``cuda_source.half_sum_tolerance``). ``out``: as the reference's (the kernel writes
        into it)."""
        kernel = self._fits("relu_backward_bias_gradient", dvalues, output, *(out or ()))
        if (
            kernel is None or dvalues.ndim != 2 or dvalues.shape != output.shape
            or (out is not None and (out[0].shape != dvalues.shape
                                     or out[1].shape != (1, dvalues.shape[1])))
        ):  # fmt: skip
            return super().relu_backward_bias_gradient(dvalues, output, out)
        rows, cols = dvalues.shape
        if out is None:
            dinputs = self.xp.empty_like(dvalues)
            dbiases = self.xp.empty((1, cols), dtype=dvalues.dtype)
        else:
            dinputs, dbiases = out
        if cols:
            grid = _blocks(cols, cuda_source.COL_TILE)
            block = (cuda_source.COL_TILE, cuda_source.ROW_THREADS)
            self._run(kernel, grid, block, dvalues, output, dinputs, dbiases, np.int64(rows),
                      np.int64(cols))  # fmt: skip
        return dinputs, dbiases

    # --- softmax cross-entropy -------------------------------------------------------

    def _softmax_ce(self, logits: Any, y: Any, eps: Any, grad: bool) -> tuple[Any, ...] | None:
        """The two kernels (rows, then one reduction): (p, loss, correct, dinputs or None),
        or None where they do not apply (the caller then runs the reference)."""
        xp = self.xp
        rows_kernel = self._fits("softmax_ce_rows", logits)
        if (
            rows_kernel is None or logits.ndim != 2 or 0 in logits.shape or not _python_scalars(eps)
            or y.ndim != 1 or y.shape[0] != logits.shape[0] or dtype_name(y.dtype) != "int64"
            or not y.flags.c_contiguous
        ):  # fmt: skip
            return None
        rows, cols = logits.shape
        scalar = self._scalar(logits)
        if self.label_errors is None:
            with self.backend.on_device():
                self.label_errors = xp.zeros(1, dtype=xp.int64)
        p = xp.empty_like(logits)
        dinputs = xp.empty_like(logits) if grad else p  # (not written without grad)
        logp, hit = xp.empty(rows, dtype=logits.dtype), xp.empty(rows, dtype=xp.int32)
        loss, correct = xp.empty((), dtype=logits.dtype), xp.empty((), dtype=xp.float32)
        n_rows = scalar(rows)  # the reference's "/ N": a Python int, cast as CuPy casts it
        self._run(rows_kernel, _blocks(rows, _THREADS), (_THREADS,), logits, y,
                  p, dinputs, logp, hit, scalar(eps), scalar(1 - eps), n_rows, np.int32(grad),
                  np.int64(rows), np.int64(cols))  # fmt: skip
        reduce_kernel = rows_kernel.replace("softmax_ce_rows", "softmax_ce_reduce")
        self._run(reduce_kernel, 1, (cuda_source.REDUCE_THREADS,), logp, hit,
                  loss, correct, self.label_errors, n_rows, np.int64(rows))  # fmt: skip
        return p, loss, correct, dinputs if grad else None

    def softmax_cross_entropy(self, logits: Any, y: Any, eps: float) -> tuple[Any, Any, Any]:
        """Two kernels. One thread a row: the row's maximum and argmax (the first maximal
        index; a NaN first, as numpy.argmax), ``e = exp(x - max)`` summed left to right,
        ``p = e / sum``, and the row's ``log(clip(p[y], eps, 1 - eps))`` and hit; then one
        block reduces the rows (fixed order: ``cuda_source.softmax_ce_reduce_twin``) to the
        mean loss (0-d, the logits' dtype) and ``correct``, the count of rows whose argmax is
        y (a 0-d float32 device array, exact below 2**24 rows).
        p and the loss differ from the reference by exp's rounding and the sums' order, within
        ``cuda_source.softmax_tolerances``. A label outside [0, C) gives NaN on its row and
        counts in ``label_errors``. ``y`` must be int64 class indices (N,): one-hot labels and
        other dtypes or layouts run the reference (``correct`` None)."""
        fused = self._softmax_ce(logits, y, eps, grad=False)
        if fused is None:
            return super().softmax_cross_entropy(logits, y, eps)
        return fused[0], fused[1], fused[2]

    def softmax_cross_entropy_forward_backward(
        self, logits: Any, y: Any, eps: float
    ) -> tuple[Any, Any, Any, Any]:
        """``softmax_cross_entropy``'s two kernels, the row kernel also writing ``dinputs =
        (p - onehot(y)) / N`` (within ``cuda_source.softmax_tolerances`` of the reference)."""
        fused = self._softmax_ce(logits, y, eps, grad=True)
        if fused is None:
            return super().softmax_cross_entropy_forward_backward(logits, y, eps)
        p, loss, correct, dinputs = fused
        return p, loss, correct, dinputs

    # --- mixed precision ------------------------------------------------------------

    def unscale(self, grad: Any, out: Any, scale: float, nonfinite: Any) -> None:
        """One kernel a gradient (the reference's cast, division, copy and finiteness flag
        are nine device operations): a float16 or bfloat16 ``grad`` widened to the float32
        ``out`` and divided by ``scale`` (rounded to float32 first, as CuPy casts the Python
        float), bit for bit the reference; ``nonfinite[0] = 1`` (one atomic OR a block at
        most) when a result is not finite. Other dtypes, layouts or shapes, or a ``scale``
        that is not a Python number: the reference."""
        kernel = self._fits("unscale", grad)
        if (
            kernel is None or dtype_name(out.dtype) != "float32" or out.shape != grad.shape
            or not out.flags.c_contiguous or dtype_name(nonfinite.dtype) != "int32"
            or nonfinite.shape != (1,) or not _python_scalars(scale)
        ):  # fmt: skip
            return super().unscale(grad, out, scale, nonfinite)
        self._launch(kernel, grad.size, grad, out, np.float32(scale), np.int32(scale != 1.0),
                     nonfinite)  # fmt: skip

    def clip_grad_value(self, grad: Any, clip_value: float) -> None:
        # in place: one CuPy kernel (the reference's clip and copy back are two)
        self.xp.clip(grad, -clip_value, clip_value, out=grad)

    # --- optimizer updates: one kernel each, bit for bit the reference on CuPy --------

    def sgd(self, param: Any, grad: Any, lr: float) -> None:
        kernel = self._fits("sgd", param, grad)
        if kernel is None or param.shape != grad.shape or not _python_scalars(lr):
            return super().sgd(param, grad, lr)
        self._launch(kernel, param.size, param, grad, self._scalar(param)(lr))

    def sgd_momentum(
        self, param: Any, velocity: Any, grad: Any, lr: float, momentum: float, nesterov: bool
    ) -> None:
        kernel = self._fits("sgd_momentum", param, velocity, grad)
        if (
            kernel is None or not param.shape == velocity.shape == grad.shape
            or not _python_scalars(lr, momentum)
        ):  # fmt: skip
            return super().sgd_momentum(param, velocity, grad, lr, momentum, nesterov)
        scalar = self._scalar(param)
        self._launch(
            kernel, param.size,
            param, velocity, grad, scalar(lr), scalar(momentum), np.int32(nesterov),
        )  # fmt: skip

    def adagrad(self, param: Any, cache: Any, grad: Any, lr: float, epsilon: float) -> None:
        kernel = self._fits("adagrad", param, cache, grad)
        if (
            kernel is None or not param.shape == cache.shape == grad.shape
            or not _python_scalars(lr, epsilon)
        ):  # fmt: skip
            return super().adagrad(param, cache, grad, lr, epsilon)
        scalar = self._scalar(param)
        self._launch(kernel, param.size, param, cache, grad, scalar(lr), scalar(epsilon))

    def rmsprop(
        self, param: Any, cache: Any, grad: Any, lr: float, rho: float, epsilon: float
    ) -> None:
        kernel = self._fits("rmsprop", param, cache, grad)
        if (
            kernel is None or not param.shape == cache.shape == grad.shape
            or not _python_scalars(lr, rho, epsilon)
        ):  # fmt: skip
            return super().rmsprop(param, cache, grad, lr, rho, epsilon)
        scalar = self._scalar(param)
        self._launch(kernel, param.size, param, cache, grad, scalar(lr), scalar(rho),
                     scalar(1 - rho), scalar(epsilon))  # fmt: skip

    def adam(
        self, param: Any, momentums: Any, cache: Any, grad: Any, *, lr: float, beta_1: float,
        beta_2: float, epsilon: float, t: int,
    ) -> None:  # fmt: skip
        kernel = self._fits("adam", param, momentums, cache, grad)
        if (
            kernel is None or not param.shape == momentums.shape == cache.shape == grad.shape
            or not _python_scalars(lr, beta_1, beta_2, epsilon, t)
        ):  # fmt: skip
            return super().adam(param, momentums, cache, grad, lr=lr, beta_1=beta_1,
                                beta_2=beta_2, epsilon=epsilon, t=t)  # fmt: skip
        scalar = self._scalar(param)
        # (each as the reference's Python expression, then rounded once, as CuPy does)
        self._launch(
            kernel, param.size, param, momentums, cache, grad, scalar(lr),
            scalar(beta_1), scalar(1 - beta_1), scalar(beta_2), scalar(1 - beta_2),
            scalar(1 - beta_1**t), scalar(1 - beta_2**t), scalar(epsilon),
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
                    source, _ = cuda_source.module()
                    _module = cupy.RawModule(code=source, options=cuda_source.NVRTC_OPTIONS)
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

    def free_memory(self) -> int | None:
        with self.on_device():
            free, _total = self.xp.cuda.runtime.memGetInfo()
            return int(free) + int(self.xp.get_default_memory_pool().free_bytes())

    def transfer(self, rows: int, columns: Sequence[tuple[tuple[int, ...], Any]]) -> Transfer:
        with self.on_device():
            return CupyTransfer(self, rows, columns)

    def from_host(self, host: np.ndarray, dtype: Any = None) -> Any:
        if dtype is None:  # (native byte order; bfloat16 is ml_dtypes' dtype, not a cupy name)
            dtype = host.dtype if host.dtype.kind == "V" else getattr(self.xp, host.dtype.name)
        with self.on_device():
            return self.xp.asarray(host, dtype=dtype)

    def empty(self, shape: tuple[int, ...], dtype: Any) -> Any:
        with self.on_device():
            return self.xp.empty(shape, dtype=dtype)

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


class CupyTransfer(Transfer):
    """CuPy's ``Transfer``: two slots, each a set of pinned host buffers and device arrays.
    ``send`` copies a slot's host buffers on a second stream (``copy``), after the compute
    stream's last use of that slot's device arrays (event ``consumed``, recorded by
    ``release``), and records event ``copied``; ``receive`` makes the compute stream (the
    current one) wait for ``copied``, so the next batch's copy runs while this one computes.
    The host waits only before refilling a pinned buffer, for the copy that last read it
    (``buffers``: in a training loop, the copy of two batches before, long done)."""

    slots = 2

    def __init__(
        self, backend: Backend, rows: int, columns: Sequence[tuple[tuple[int, ...], Any]]
    ) -> None:
        cuda, xp = backend.xp.cuda, backend.xp
        self._cuda = cuda
        super().__init__(backend, rows, columns)
        self.device = [[xp.empty(h.shape, h.dtype) for h in hosts] for hosts in self.host]
        self.copy = cuda.Stream(non_blocking=True)
        self.copied = [cuda.Event(block=False, disable_timing=True) for _ in range(self.slots)]
        self.consumed = [cuda.Event(block=False, disable_timing=True) for _ in range(self.slots)]
        self._sent = [False] * self.slots  # a copy from the slot was queued
        self._used = [False] * self.slots  # the compute stream used the slot's arrays

    def _host_empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        # (cupyx.empty_pinned's way, through cupy.cuda: page-locked, so the copy is async)
        nbytes = max(1, int(np.prod(shape)) * np.dtype(dtype).itemsize)
        memory = self._cuda.alloc_pinned_memory(nbytes)
        pinned: np.ndarray = np.ndarray(shape, dtype=dtype, buffer=memory)
        return pinned

    def buffers(self, slot: int) -> list[np.ndarray]:
        if self._sent[slot]:
            self.copied[slot].synchronize()  # the copy that read these buffers has run
        return self.host[slot]

    def send(self, slot: int, rows: int) -> None:
        if self._used[slot]:
            self.copy.wait_event(self.consumed[slot])  # the step on these arrays has run
        if rows:
            for h, d in zip(self.host[slot], self.device[slot], strict=True):
                d[:rows].set(h[:rows], stream=self.copy)
        self.copied[slot].record(self.copy)
        self._sent[slot] = True

    def receive(self, slot: int, rows: int) -> list[Any]:
        self._cuda.get_current_stream().wait_event(self.copied[slot])
        return [d[:rows] for d in self.device[slot]]

    def release(self, slot: int) -> None:
        self.consumed[slot].record(self._cuda.get_current_stream())
        self._used[slot] = True

    def settle(self) -> None:
        # The compute stream (where the device slots were allocated, so where the pool
        # reuses them) waits for every copy sent, and the host for the copy stream before
        # the pinned buffers can go back to their pool: a copy queued for a batch the loop
        # never took (it stopped early) would otherwise write into, or read from, memory
        # already given to something else. One host wait a pass.
        current = self._cuda.get_current_stream()
        for slot in range(self.slots):
            if self._sent[slot]:
                current.wait_event(self.copied[slot])
        self.copy.synchronize()
