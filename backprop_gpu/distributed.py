"""Data-parallel training over MPI, through mpi4py (the ``mpi`` extra).

Every process (rank) holds the whole model. Each global batch of B samples is cut into one
slice per rank; every rank runs forward and backward on its slice, the gradients are summed
across ranks in one ``Allreduce`` over a flat buffer (each rank's weighted by its share of the
batch, so the sum is the gradient of the whole batch's mean loss), and every rank applies the
same optimizer update. So N ranks with global batch B follow the same trajectory as one
process with batch B, up to the rounding of the sum.

Launch with MPI, e.g. ``mpiexec -n 4 backprop-gpu train --distributed`` or
``mpiexec -n 4 python script.py`` where the script calls ``model.train(..., distributed=True)``.
``pip install -e '.[mpi]'`` (in a checkout) brings mpi4py and the ``mpich`` wheel (its ``mpiexec``);
a system MPI (Open MPI, MPICH) works too when mpi4py is built against it.

On CuPy arrays the buffer goes to MPI directly when the MPI library is CUDA-aware, else it is
staged through a host copy; the choice is made at start (``Context.transport``) and shown by
``backprop-gpu info``. ``BACKPROP_GPU_MPI_CUDA_AWARE=0`` / ``=1`` overrides the detection.

A rank that raises makes the whole job stop: it prints which rank failed and why, then calls
``MPI_Abort`` so no other rank waits forever in a collective call.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import numpy as np

from .backend import Backend, dtype_name, gpu_count, to_numpy, use_backend
from .flat import assign, flat_of
from .state import walk
from .strategy import Local

T = TypeVar("T")

# how long a failing rank waits after printing why, before MPI_Abort ends the job (see abort)
ABORT_GRACE_SECONDS = 0.5

INSTALL_HINT = (
    "install the mpi extra: pip install -e '.[mpi]' in a checkout of backprop_gpu (mpi4py and "
    "the mpich wheel, which brings mpiexec), or mpi4py built against your system MPI"
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
        # the model's backend, from bind (not resolved here: local_backend may pick a GPU first)
        self._backend: Backend | None = None
        self.transport: str | None = None
        self._buffers: dict[str, Any] = {}  # the flat gradient buffer of each dtype, reused
        # (host, PID) of every rank: MPICH's launcher names a killed rank by its PID only
        self.processes = self.comm.allgather((self.MPI.Get_processor_name(), os.getpid()))
        # this rank's place among the ranks on its machine (Horovod's and ChainerMN's local
        # rank): what spreads a machine's ranks over its GPUs, see local_backend
        local = self.comm.Split_type(self.MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank: int = local.Get_rank()
        self.local_size: int = local.Get_size()
        local.Free()
        self.gpus: list[tuple[int, str, int] | None] = [None] * self.size  # see check_gpus
        self._picked: dict[str, str] = {}  # local_backend's answers

    def bind(self, backend: Backend) -> None:
        """Work on ``backend``'s arrays (the model's); picks the transport."""
        if backend is not self._backend:
            self._backend, self.transport, self._buffers = backend, transport(backend.name), {}

    @property
    def backend(self) -> Backend:
        """The backend of the arrays this context sums (the model's, given to ``bind``)."""
        if self._backend is None:
            raise DistributedError("this Context has no backend yet: call bind(model.backend)")
        return self._backend

    def local_backend(self, name: str = "auto") -> str:
        """The backend name this rank should build its model under, for ``name``: on a
        machine with several GPUs where CuPy works, ``"auto"`` and ``"cupy"`` become
        ``"cupy:<local rank mod GPU count>"``, so the ranks on each machine spread over its
        GPUs, and that GPU becomes this thread's current one before CuPy is first used (so GPU
        0 gets no CUDA context from every rank); else ``name`` itself (``"auto"`` may still
        fall back to NumPy). The name is checked here: a rank that cannot run it raises, and
        the other ranks stop too (a collective call). ``backprop-gpu train --distributed``
        uses it; a script calls ``bg.set_backend(context.local_backend())`` before building
        its model. Only the first call for a ``name`` communicates: later ones (on any subset
        of ranks) return the answer kept from it."""
        if name not in self._picked:
            self._picked[name] = self.together(lambda: self._pick_backend(name))
        return self._picked[name]

    def _pick_backend(self, name: str) -> str:
        count = gpu_count() if name in ("auto", "cupy") else 0
        index = self.local_rank % count if count > 1 else None
        if index is not None:
            sys.modules["cupy"].cuda.Device(index).use()
        with use_backend(name) as backend:  # detection (on that GPU); raises if name can't run
            pass
        return f"cupy:{index}" if index is not None and backend.name == "cupy" else name

    def check_gpus(self, backend: Backend, stacklevel: int = 1) -> None:
        """Learn every rank's GPU on ``backend`` (a collective call, made at start) for
        ``describe``, and warn when ranks on one machine share a GPU while others are idle
        (the warning names the line ``stacklevel`` frames up: 1 is the caller)."""
        mine = None
        if backend.name == "cupy":
            device = backend.device  # its PCI bus id: the same GPU whatever CUDA_VISIBLE_DEVICES
            mine = (int(device.id), device.pci_bus_id, backend.xp.cuda.runtime.getDeviceCount())
        self.gpus = self.comm.allgather(mine)
        crowding = crowded_gpus(self.processes, self.gpus)
        if crowding and self.is_root:
            warnings.warn(crowding, RuntimeWarning, stacklevel=stacklevel + 1)

    def describe(self) -> str:
        """One line on the job: ranks, where each runs (host:PID, and GPU) and the transport."""
        where = ", ".join(
            f"rank {r} = {host}:{pid}" + ("" if gpu is None else f" GPU {gpu[0]}")
            for r, ((host, pid), gpu) in enumerate(zip(self.processes, self.gpus, strict=True))
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
        digests = self.comm.allgather(
            _sha256(json.dumps(value, sort_keys=True, default=str).encode())
        )
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise DistributedError(
                f"ranks disagree on {what}: rank(s) {differ} differ from rank 0; start every "
                "rank with the same script, settings and data"
            )

    def root_result(self, action: Callable[[], T]) -> T:
        """Run ``action()`` on rank 0 only and return its result on every rank. If it raised,
        rank 0 raises it and every other rank raises the same type with the same message
        (or a DistributedError quoting it, when that type cannot be rebuilt)."""
        outcome: tuple[str, Any] = ("ok", None)
        error: BaseException | None = None
        if self.is_root:
            try:
                outcome = ("ok", action())
            except BaseException as e:  # KeyboardInterrupt too: the others must not wait
                error, outcome = e, ("error", (type(e), str(e)))
        kind, payload = self.comm.bcast(outcome, root=0)
        if error is not None:
            raise error
        if kind == "error":
            error_type, message = payload
            raise _rebuilt(error_type, message, "rank 0")
        return payload  # type: ignore[no-any-return]

    def together(self, action: Callable[[], T]) -> T:
        """Run ``action()`` on every rank; if it raised on any, every rank raises: the failing
        ones their own error, the others a DistributedError naming the failing ranks and why
        (so no rank goes on to wait in a collective call for one that stopped)."""
        result: Any = None
        error: BaseException | None = None
        try:
            result = action()
        except BaseException as e:
            error = e
        failures = self.comm.allgather(
            None if error is None else f"{type(error).__name__}: {error}"
        )
        if error is not None:
            raise error
        failed = {rank: why for rank, why in enumerate(failures) if why is not None}
        if failed:
            reasons = "; ".join(f"rank {rank}: {why}" for rank, why in failed.items())
            raise DistributedError(f"stopping: other ranks failed ({reasons})")
        return result  # type: ignore[no-any-return]

    def broadcast_state(self, layers: Sequence[Any], optimizer: Any, extra: Any = None) -> Any:
        """Rank 0's parameters, optimizer state (None where rank 0 has none yet) and counters
        to every rank, so all start identical (once, at start); returns rank 0's ``extra``."""
        slots = list(walk(layers, optimizer))
        message = None
        if self.is_root:
            arrays = {s.key: to_numpy(s.value) for s in slots if s.value is not None}
            counters = None
            if optimizer is not None:
                counters = (optimizer.iterations, optimizer.learning_rate,
                            optimizer.current_learning_rate)  # fmt: skip
            message = (arrays, counters, extra)
        arrays, counters, extra = self.comm.bcast(message, root=0)
        if self.is_root:
            return extra
        for slot in slots:
            value = arrays.get(slot.key)
            if value is not None and value.shape != tuple(slot.param.shape):
                raise DistributedError(f"rank 0's {slot.key} has shape {value.shape}, this "
                                       f"rank's {tuple(slot.param.shape)}")  # fmt: skip
            assign(  # (into the flat buffers, where the layers use them)
                slot.layer, slot.attr,
                None if value is None else slot.layer.backend.asarray(value, slot.param.dtype),
            )  # fmt: skip
        if counters is not None:
            (optimizer.iterations, optimizer.learning_rate,
             optimizer.current_learning_rate) = counters  # fmt: skip
        return extra

    # --- every step -----------------------------------------------------------------------

    def allreduce_gradients(self, layers: Sequence[Any], weight: float) -> None:
        """Replace every layer's gradients (``d<param>``) by the sum over ranks of
        ``weight * gradient``, in one Allreduce over a flat buffer (one per dtype, for a model
        that mixes them). A gradient that is None (the rank had no samples this step)
        contributes zeros."""
        if layers:
            self.bind(layers[0].backend)  # (nothing to do after the first step)
        flat = flat_of(layers)
        if flat is not None:  # the gradients' own buffers: no copy in or out
            for group in flat.groups.values():
                self._allreduce_flat(flat.gather_gradients(group), weight)
            return
        groups: dict[str, list[tuple[Any, str, Any]]] = {}
        for slot in walk(layers):
            groups.setdefault(dtype_name(slot.param.dtype), []).append(
                (slot.layer, slot.name, slot.param)
            )
        for dtype, slots in groups.items():
            self._allreduce_group(dtype, slots, weight)

    def _allreduce_group(
        self, dtype: str, slots: list[tuple[Any, str, Any]], weight: float
    ) -> None:
        xp = self.backend.xp
        sizes = [int(np.prod(param.shape)) for _, _, param in slots]
        buffer = self._buffers.get(dtype)
        if buffer is None or buffer.shape[0] != sum(sizes):
            zeros = np.zeros(sum(sizes), dtype=dtype)
            buffer = self._buffers[dtype] = self.backend.asarray(zeros)  # on the device, once
        offset = 0
        for (layer, name, _), size in zip(slots, sizes, strict=True):
            grad = getattr(layer, "d" + name, None)
            part = buffer[offset : offset + size]
            if grad is None or weight == 0:
                part[...] = 0
            elif self.backend.name == "numpy":  # one pass, no temporary (7 MiB a step saved)
                np.multiply(grad.reshape(size), weight, out=part)
            else:
                part[...] = xp.reshape(grad, (size,)) * weight
            offset += size
        self._allreduce(buffer)
        offset = 0
        for (layer, name, param), size in zip(slots, sizes, strict=True):
            setattr(layer, "d" + name, xp.reshape(buffer[offset : offset + size], param.shape))
            offset += size

    def _allreduce_flat(self, grads: Any, weight: float) -> None:
        """Weight and sum a flat gradient buffer in place (its gaps hold zeros, summed too)."""
        if weight == 0:
            grads[...] = 0
        elif weight != 1:
            grads *= weight  # (the same bits as the copy loop's grad * weight)
        self._allreduce(grads)

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
            self.abort(e, 130 if isinstance(e, KeyboardInterrupt) else 1)

    def abort(self, error: BaseException, code: int = 1) -> NoReturn:
        detail = "".join(traceback.format_exception(error)).rstrip()
        print(
            f"backprop_gpu.distributed: rank {self.rank} of {self.size} failed: "
            f"{type(error).__name__}: {error}\n{detail}\n"
            f"backprop_gpu.distributed: aborting all {self.size} ranks",
            file=sys.stderr,
            flush=True,
        )
        # MPICH's launcher forwards each rank's stderr through a pipe it stops reading once
        # an abort tears the job down: without a pause the message above was lost in about
        # 1 run in 10 (the job then ended naming no rank)
        time.sleep(ABORT_GRACE_SECONDS)
        self.comm.Abort(code)
        raise SystemExit(code)  # not reached: Abort ends the process


class DataParallel(Local):
    """The fit loop's strategy over MPI ranks (``Model.train(distributed=True)``): each rank
    takes its slice of every global batch, the gradients are summed in one allreduce a step
    before the update, the epoch's sums are reduced, and an error on one rank stops all."""

    def __init__(self, context: Context) -> None:
        self.context = context
        self.rank, self.size = context.rank, context.size

    @property
    def is_root(self) -> bool:  # type: ignore[override]
        return self.context.is_root

    def setup(self, model: Any, data: Any, validation: Any,
              settings: dict[str, Any]) -> None:  # fmt: skip
        """Check that every rank has the same model, data and settings, that the global
        batch gives every rank a sample; then broadcast rank 0's parameters and optimizer
        state, and print the job's description on rank 0."""
        dist = self.context
        dist.bind(model.backend)
        spec = {
            "model": [{"class": type(o).__name__, "config": o.get_config()}
                      for o in (*model.layers, model.loss, model.optimizer, model.accuracy)
                      if o is not None],
            "backend": model.backend.name,
            "train": settings,
            "data": fingerprint(data),
            "validation": None if validation is None else fingerprint(validation),
        }  # fmt: skip
        dist.check_same("the model, the data or the Model.train arguments", spec)
        check_batch(settings["batch_size"], dist.size, "Model.train")
        model.epochs_trained = dist.broadcast_state(model.layers, model.optimizer,
                                                    model.epochs_trained)  # fmt: skip
        dist.check_gpus(model.backend, stacklevel=5)  # (the caller of Model.train)
        if dist.is_root:
            print(dist.describe(), file=sys.stderr, flush=True)

    def on_every_rank(self, action: Callable[[], T]) -> T:
        return self.context.together(action)

    def on_root(self, action: Callable[[], T]) -> T:
        return self.context.root_result(action)

    def guard(self) -> Any:
        return self.context.abort_on_error()

    def shard(self, start: int, stop: int, dropouts: Sequence[Any] = ()) -> tuple[int, int]:
        lo, hi = (start + b for b in shard_bounds(stop - start, self.rank, self.size))
        for layer in dropouts:  # each rank keeps its rows of the whole batch's mask
            layer.rows = (stop - start, lo - start, hi - start)
        return lo, hi

    def end_epoch(self, dropouts: Sequence[Any] = ()) -> None:
        for layer in dropouts:
            layer.rows = None

    def reduce_gradients(self, layers: Sequence[Any], share: float) -> None:
        self.context.allreduce_gradients(layers, share)

    def sum(self, values: Sequence[float]) -> np.ndarray:
        return self.context.sum(values)

    def min(self, value: float) -> float:
        return self.context.min(value)

    def evaluation_rows(self, n: int) -> tuple[int, int]:
        return shard_bounds(n, self.rank, self.size)

    def any(self, flag: bool) -> bool:
        return bool(self.context.comm.allreduce(bool(flag), op=self.context.MPI.LOR))


class DistributedOptimizer:
    """An optimizer for the nnfs hand-written loop across ranks: gradients are summed over the
    ranks, each weighted by the rank's share of the global batch, before every update.

    ::

        opt = DistributedOptimizer(bg.SGD(0.1, momentum=0.9))  # under mpiexec -n R
        opt.broadcast(layers)                 # once: rank 0's parameters (and state) to all
        lo, hi = shard_bounds(len(batch), opt.rank, opt.size)   # this rank's rows of a batch
        ...forward / backward on those rows...
        opt.step(layers)                      # one allreduce of every gradient, then the update

    ``share`` (this rank's rows / the global batch) defaults to ``1 / size``: pass it when the
    parts differ. The nnfs calls work too: ``update_params(layer)`` allreduces that layer's
    gradients (one call per layer) before updating it. Other attributes (``iterations``,
    ``current_learning_rate``, ...) are the wrapped optimizer's.
    """

    def __init__(self, optimizer: Any, context: Context | None = None) -> None:
        self.optimizer = optimizer
        self.context = context if context is not None else Context()
        self.rank, self.size = self.context.rank, self.context.size

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def broadcast(self, layers: Sequence[Any]) -> None:
        """Rank 0's parameters, optimizer state and counters to every rank."""
        self.context.broadcast_state(layers, self.optimizer)
        trainable = [layer for layer in layers if getattr(layer, "params", ())]
        if trainable:
            self.context.check_gpus(trainable[0].backend, stacklevel=2)

    def _sum(self, layers: Sequence[Any], share: float | None) -> None:
        trainable = [layer for layer in layers if getattr(layer, "params", ())]
        if trainable:
            self.context.allreduce_gradients(trainable, 1 / self.size if share is None else share)

    def step(self, layers: Sequence[Any], share: float | None = None) -> None:
        """One allreduce of every layer's gradients, then the wrapped optimizer's ``step``."""
        self._check(layers, "step")
        self._sum(layers, share)
        self.optimizer.step(layers)

    def update_params(self, layer: Any, share: float | None = None) -> None:
        """Allreduce this layer's gradients, then update it (the nnfs call)."""
        self._check([layer], "update_params")
        self._sum([layer], share)
        self.optimizer.update_params(layer)

    def clip_gradients(self, layers: Sequence[Any]) -> Any:
        """Refused: clipping by the global norm needs the gradients summed over the ranks,
        which ``step`` does first (it allreduces, clips, then updates)."""
        raise RuntimeError(
            "DistributedOptimizer.clip_gradients: the clip needs the gradients summed over "
            "the ranks; use step(layers), which allreduces them, clips and updates (per-layer "
            "update_params calls can clip by value only)"
        )

    def _check(self, layers: Sequence[Any], method: str) -> None:
        """The wrapped optimizer's checks, before the allreduce replaces the gradients (a bad
        step then changes nothing); on several ranks a rank that fails them stops the job,
        since the others would wait for it in the allreduce."""
        with self.context.abort_on_error():
            # (a missing gradient is allowed: the allreduce takes it as zeros, for a rank with
            # no rows in a step)
            self.optimizer.check(layers, method, missing_ok=True)


def on_root(dist: Context | None, action: Callable[[], T]) -> T:
    """``action()`` on rank 0, its result (or error) on every rank; just ``action()`` when
    ``dist`` is None (one process)."""
    return action() if dist is None else dist.root_result(action)


def on_every_rank(dist: Context | None, action: Callable[[], T]) -> T:
    """``action()`` on every rank, all stopping if one fails (``Context.together``); just
    ``action()`` when ``dist`` is None."""
    return action() if dist is None else dist.together(action)


def check_batch(batch_size: int, ranks: int, where: str) -> None:
    """A global batch must give every rank at least one sample."""
    if batch_size < ranks:
        raise DistributedError(
            f"{where}: the global batch_size {batch_size} is smaller than the {ranks} ranks; "
            f"every rank needs a sample each step: use a batch_size of at least {ranks}"
        )


def _rebuilt(error_type: type[BaseException], message: str, where: str) -> BaseException:
    """Another rank's error, as its own type where that takes just a message."""
    try:
        return error_type(message)
    except Exception:
        return DistributedError(f"{where} failed: {error_type.__name__}: {message}")


def shard_bounds(n: int, rank: int, size: int) -> tuple[int, int]:
    """``(lo, hi)``: this rank's contiguous part of ``n`` samples (parts differ by at most
    one; the first ``n % size`` ranks take the extra sample)."""
    base, extra = divmod(n, size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def crowded_gpus(
    processes: Sequence[tuple[str, int]], gpus: Sequence[tuple[int, str, int] | None]
) -> str | None:
    """A warning when ranks on one machine share a GPU while it has GPUs no rank uses:
    ``processes`` is every rank's (host, PID), ``gpus`` its (GPU id, PCI bus id, GPUs it
    sees), None off CuPy."""
    ranks_on: dict[str, list[tuple[int, str, int]]] = {}
    for rank, ((host, _), gpu) in enumerate(zip(processes, gpus, strict=True)):
        if gpu is not None:
            ranks_on.setdefault(host, []).append((rank, gpu[1], gpu[2]))
    for host, placed in ranks_on.items():
        used = {bus for _, bus, _ in placed}
        count = max(seen for _, _, seen in placed)
        if len(used) < min(len(placed), count):
            return (
                f"backprop_gpu.distributed: ranks {[r for r, _, _ in placed]} on {host} share "
                f"GPU(s) {sorted(used)} while it has {count}: build each rank's model under "
                "bg.set_backend(context.local_backend()) (backprop-gpu train --distributed does)"
            )
    return None


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
        mpix_gpu_support_cuda = 0  # MPICH's MPIX_GPU_SUPPORT_CUDA (mpi.h)
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


def fingerprint(data: Any) -> list[Any]:
    """A cheap summary of a data set (an ``inputs.Data``, on the device or streamed) for
    ``check_same``: shapes, dtypes and a hash of up to 64 evenly spaced rows (copied to the
    host, not the whole set), the same wherever the data live."""
    n = data.n
    rows = np.unique(np.linspace(0, max(n - 1, 0), 64).astype(np.int64))
    x_rows, y_rows = data.host_rows(rows)
    sample = _sha256(x_rows.tobytes() + y_rows.tobytes())
    shapes = [[n, *x_rows.shape[1:]], str(x_rows.dtype), [n, *y_rows.shape[1:]], str(y_rows.dtype)]
    return [*shapes, sample]


def _sha256(data: bytes) -> str:
    import hashlib  # here, not at the top: it loads OpenSSL (3.6 MiB) in every importing process

    return hashlib.sha256(data).hexdigest()
