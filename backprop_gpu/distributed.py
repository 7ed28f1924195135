"""Data-parallel training over MPI, through mpi4py (the ``mpi`` extra).

Every process (rank) holds the whole model. Each global batch of B samples is cut into one
slice per rank; every rank runs forward and backward on its slice, the gradients are summed
across ranks in one ``Allreduce`` over a flat buffer (each rank's weighted by its share of the
batch, so the sum is the gradient of the whole batch's mean loss), and every rank applies the
same optimizer update. So N ranks with global batch B follow the same trajectory as one
process with batch B, up to the rounding of the sum.

Launch with MPI, e.g. ``mpiexec -n 4 backprop-gpu train --distributed`` or
``mpiexec -n 4 python script.py`` where the script calls ``model.train(..., distributed=True)``.
``pip install 'backprop-gpu[mpi]'`` brings mpi4py and the ``mpich`` wheel (its ``mpiexec``);
a system MPI (Open MPI, MPICH) works too when mpi4py is built against it.

On CuPy arrays the buffer goes to MPI directly when the MPI library is CUDA-aware, else it is
staged through a host copy; the choice is made at start (``Context.transport``) and shown by
``backprop-gpu info``. ``BACKPROP_GPU_MPI_CUDA_AWARE=0`` / ``=1`` overrides the detection.

A rank that raises makes the whole job stop: it prints which rank failed and why, then calls
``MPI_Abort`` so no other rank waits forever in a collective call.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import sys
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import numpy as np

from .backend import Backend, dtype_name, get_backend, to_numpy

INSTALL_HINT = (
    "install the mpi extra: pip install 'backprop-gpu[mpi]' (mpi4py and the mpich wheel, which "
    "brings mpiexec), or mpi4py built against your system MPI"
)


class DistributedError(RuntimeError):
    """Distributed training cannot start: no mpi4py, ranks that disagree, a batch too small."""


def mpi() -> Any:
    """The ``mpi4py.MPI`` module (importing it initialises MPI), or DistributedError."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise DistributedError(f"distributed training needs mpi4py: {INSTALL_HINT}") from e
    return MPI


class Context:
    """One rank's view of the job: ``comm`` (default ``MPI.COMM_WORLD``), ``rank``, ``size``,
    and, once bound to the model's backend, the ``transport`` of its arrays (``"host"`` for
    NumPy, ``"cuda-aware"`` or ``"host-staged"`` for CuPy)."""

    def __init__(self, comm: Any = None) -> None:
        self.MPI = mpi()
        self.comm = comm if comm is not None else self.MPI.COMM_WORLD
        self.rank: int = self.comm.Get_rank()
        self.size: int = self.comm.Get_size()
        self.backend: Backend = get_backend()
        self.transport = transport(self.backend.name)
        self._buffer: Any = None  # the flat gradient buffer, reused every step
        # (host, PID) of every rank: MPICH's launcher names a killed rank by its PID only
        self.processes = self.comm.allgather((self.MPI.Get_processor_name(), os.getpid()))

    def bind(self, backend: Backend) -> None:
        """Work on ``backend``'s arrays (the model's); picks the transport."""
        self.backend, self.transport, self._buffer = backend, transport(backend.name), None

    def describe(self) -> str:
        """One line on the job: ranks, where each runs (host:PID) and the transport."""
        where = ", ".join(
            f"rank {r} = {host}:{pid}" for r, (host, pid) in enumerate(self.processes)
        )
        return (
            f"backprop_gpu.distributed: {self.size} rank(s) on {self.backend.name}, "
            f"transport {self.transport} ({where})"
        )

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    # --- agreement at start ---------------------------------------------------------------

    def check_same(self, what: str, value: Any) -> None:
        """Every rank must pass an equal ``value`` (JSON-able): its hash is gathered, and on
        any difference every rank raises DistributedError naming the ranks that differ."""
        digest = hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode())
        digests = self.comm.allgather(digest.hexdigest())
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise DistributedError(
                f"ranks disagree on {what}: rank(s) {differ} differ from rank 0; start every "
                "rank with the same script, settings and data"
            )

    def root_result(self, action: Any) -> Any:
        """Run ``action()`` on rank 0 only and return its result on every rank; if it raised,
        every rank raises the same type with the same message."""
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_root:
            try:
                outcome = ("ok", action())
            except Exception as e:
                outcome = ("error", (type(e), str(e)))
        kind, payload = self.comm.bcast(outcome, root=0)
        if kind == "error":
            error_type, message = payload
            raise error_type(message)
        return payload

    def broadcast_model(self, model: Any) -> None:
        """Parameters, optimizer state and counters from rank 0 to every rank, so all start
        identical (once, at start)."""
        state = None
        if self.is_root:
            opt = model.optimizer
            counters = (opt.iterations, opt.current_learning_rate) if opt is not None else None
            state = (model._host_arrays(with_state=True), counters, model.epochs_trained)
        arrays, counters, epochs = self.comm.bcast(state, root=0)
        if not self.is_root:
            model._assign(model._checked(arrays, "rank 0's model", with_state=True))
            if counters is not None:
                model.optimizer.iterations, model.optimizer.current_learning_rate = counters
            model.epochs_trained = epochs

    # --- every step -----------------------------------------------------------------------

    def allreduce_gradients(self, layers: Sequence[Any], weight: float) -> None:
        """Replace every layer's gradients (``d<param>``) by the sum over ranks of
        ``weight * gradient``, in one Allreduce over a flat buffer. A layer whose gradient is
        None (the rank had no samples this step) contributes zeros."""
        xp = self.backend.xp
        slots = [(layer, name, getattr(layer, name)) for layer in layers for name in layer.params]
        total = sum(int(np.prod(param.shape)) for _, _, param in slots)
        dtype = slots[0][2].dtype
        buffer = self._buffer
        if buffer is None or buffer.shape[0] != total or buffer.dtype != dtype:
            zeros = np.zeros(total, dtype=dtype_name(dtype))
            buffer = self._buffer = self.backend.asarray(zeros)  # on the device, once
        offset = 0
        for layer, name, param in slots:
            size = int(np.prod(param.shape))
            grad = getattr(layer, "d" + name, None)
            part = buffer[offset : offset + size]
            if grad is None or weight == 0:
                part[...] = 0
            else:
                part[...] = xp.reshape(grad, (size,)) * weight
            offset += size
        self._allreduce(buffer)
        offset = 0
        for layer, name, param in slots:
            size = int(np.prod(param.shape))
            setattr(layer, "d" + name, xp.reshape(buffer[offset : offset + size], param.shape))
            offset += size

    def _allreduce(self, buffer: Any) -> None:
        """Sum ``buffer`` over ranks, in place."""
        if self.transport == "host-staged":  # CuPy without CUDA-aware MPI: via the host
            host = to_numpy(buffer)
            self.comm.Allreduce(self.MPI.IN_PLACE, host, op=self.MPI.SUM)
            buffer[...] = self.backend.asarray(host)
            return
        if self.transport == "cuda-aware":
            self.backend.synchronize()  # the kernels that wrote it must be done
        self.comm.Allreduce(self.MPI.IN_PLACE, buffer, op=self.MPI.SUM)

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """Host float64 values summed over ranks."""
        out = np.array(values, dtype=np.float64)
        self.comm.Allreduce(self.MPI.IN_PLACE, out, op=self.MPI.SUM)
        return out

    def min(self, value: float) -> float:
        return float(self.comm.allreduce(value, op=self.MPI.MIN))

    # --- failure ----------------------------------------------------------------------------

    @contextmanager
    def abort_on_error(self) -> Iterator[None]:
        """Inside the block, an exception on any rank ends the whole job (MPI_Abort) after
        printing which rank failed and why: the other ranks would otherwise wait forever in
        the next collective call."""
        try:
            yield
        except BaseException as e:  # KeyboardInterrupt too: a half-stopped job hangs
            if self.size == 1:  # nobody to wait for it: a plain exception is kinder
                raise
            self.abort(e)

    def abort(self, error: BaseException, code: int = 1) -> NoReturn:
        detail = "".join(traceback.format_exception(error)).rstrip()
        print(
            f"backprop_gpu.distributed: rank {self.rank} of {self.size} failed: "
            f"{type(error).__name__}: {error}\n{detail}\n"
            f"backprop_gpu.distributed: aborting all {self.size} ranks",
            file=sys.stderr,
            flush=True,
        )
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: Abort ends the process


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(lo, hi)``: this rank's contiguous part of ``n`` samples (parts differ by at most
    one; the first ``n % size`` ranks take the extra sample)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def transport(backend_name: str) -> str:
    """How device arrays reach MPI: ``"host"`` (NumPy: already host memory), ``"cuda-aware"``
    (CuPy, the MPI library takes device pointers) or ``"host-staged"`` (a host copy)."""
    if backend_name == "numpy":
        return "host"
    if backend_name == "cupy" and cuda_aware():
        return "cuda-aware"
    return "host-staged"  # CuPy without CUDA-aware MPI; the array-api-strict stand-in


def cuda_aware() -> bool:
    """Whether the MPI library under mpi4py takes CUDA device buffers:
    ``BACKPROP_GPU_MPI_CUDA_AWARE`` if set, else the library's own answer (Open MPI's
    ``MPIX_Query_cuda_support``, MPICH's ``MPIX_GPU_query_support``), else False."""
    forced = os.environ.get("BACKPROP_GPU_MPI_CUDA_AWARE")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        library = ctypes.CDLL(mpi().__file__, mode=ctypes.RTLD_GLOBAL)  # resolves libmpi too
    except OSError:
        return False
    query = getattr(library, "MPIX_Query_cuda_support", None)
    if query is not None:
        return bool(query())
    gpu_query = getattr(library, "MPIX_GPU_query_support", None)
    if gpu_query is not None:
        supported = ctypes.c_int(0)
        mpix_gpu_support_cuda = 1  # MPICH's enum value for CUDA
        if gpu_query(mpix_gpu_support_cuda, ctypes.byref(supported)) == 0:
            return bool(supported.value)
    return False


def info() -> dict[str, Any]:
    """mpi4py and MPI versions and the transport CuPy arrays would take (for
    ``backprop-gpu info``); ``{"available": False, "why": ...}`` without mpi4py."""
    try:
        MPI = mpi()
    except DistributedError as e:
        return {"available": False, "why": str(e)}
    import mpi4py

    return {
        "available": True,
        "mpi4py": mpi4py.__version__,
        "library": MPI.Get_library_version().strip().splitlines()[0].strip(),
        "cupy_transport": "cuda-aware" if cuda_aware() else "host-staged",
    }


def fingerprint(backend: Backend, X: Any, y: Any) -> list[Any]:
    """A cheap summary of a data set on ``backend`` for ``check_same``: shapes, dtypes and a
    hash of up to 64 evenly spaced rows (copied to the host, not the whole set)."""
    n = X.shape[0]
    rows = backend.asarray(np.unique(np.linspace(0, max(n - 1, 0), 64).astype(np.int64)))
    xp = backend.xp
    x_rows, y_rows = to_numpy(xp.take(X, rows, axis=0)), to_numpy(xp.take(y, rows, axis=0))
    sample = hashlib.sha256(x_rows.tobytes() + y_rows.tobytes()).hexdigest()
    return [list(X.shape), str(X.dtype), list(y.shape), str(y.dtype), sample]
