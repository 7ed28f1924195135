"""Where the fit loop runs: ``Local`` (one process) and the interface a distributed strategy
fills in (``distributed.DataParallel``: MPI ranks that split every batch).

The loop in :mod:`backprop_gpu.trainer` calls these hooks at fixed points and never asks
which strategy it has: a strategy shards a batch, reduces the gradients before the update,
reduces the epoch's sums, and says which rank writes files.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
_NOTHING = contextlib.nullcontext()  # (reusable: a guard of one process costs no generator)


class Local:
    """One process trains on every sample of every batch (the default)."""

    rank = 0
    size = 1
    is_root = True

    def setup(self, model: Any, data: Any, validation: Any, settings: dict[str, Any]) -> None:
        """Before the first epoch, after the inputs are checked (``data``, ``validation``:
        ``inputs.Data``; distributed: agree on the model, data and settings and start from
        rank 0's parameters)."""

    def on_every_rank(self, action: Callable[[], T]) -> T:
        """``action()`` on every rank; if it raises on one, all stop."""
        return action()

    def on_root(self, action: Callable[[], T]) -> T:
        """``action()`` on rank 0 alone, its result on every rank."""
        return action()

    def guard(self) -> contextlib.AbstractContextManager[None]:
        """A block in which an error on one rank must stop every rank (one process: none)."""
        return _NOTHING

    def shard(self, start: int, stop: int, dropouts: Sequence[Any] = ()) -> tuple[int, int]:
        """This rank's rows ``[lo, hi)`` of the batch ``[start, stop)``."""
        return start, stop

    def end_epoch(self, dropouts: Sequence[Any] = ()) -> None:
        """After an epoch's last step."""

    def reduce_gradients(self, layers: Sequence[Any], share: float) -> None:
        """Make every layer's gradients the whole batch's (``share``: this rank's part of
        it), before the optimizer's update."""

    def sum(self, values: Sequence[float]) -> np.ndarray:
        """Host float64 values summed over ranks."""
        return np.asarray(values, dtype=np.float64)

    def min(self, value: float) -> float:
        return value

    def evaluation_rows(self, n: int) -> tuple[int, int]:
        """The rows ``[lo, hi)`` of an n-sample evaluation this rank computes."""
        return 0, n

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank (decisions every rank must take together)."""
        return flag
