"""What may run on a ``Model`` at once, and where: ``one_pass_at_a_time`` (a ``PassGuard``
per model) and ``on_its_gpu`` (the model's GPU as CuPy's current device), decorators of the
Model's public passes."""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar, cast

M = TypeVar("M", bound=Callable[..., Any])


class PassGuard:
    """One pass at a time through a model's layers, which keep their inputs and outputs
    between forward and backward (two passes at once would mix them up):

    - ``train`` owns the model until it returns. A second ``train`` (another thread, or one
      called from inside the first) raises at once, and so do ``predict`` and ``evaluate``
      from other threads meanwhile; from the training thread itself (``on_epoch_end``)
      they run. ``train`` waits for the predictions already in flight.
    - ``predict`` and ``evaluate`` from several threads take turns (each waits for the one
      running), so every thread gets its own answer. (One that began in the instant a
      ``train`` started waits for that training to end instead of raising.)
    """

    def __init__(self) -> None:
        self._passes = threading.RLock()  # held by the pass running (re-entered inside train)
        self._claim = threading.Lock()  # makes taking the trainer's place one step
        self._trainer: int | None = None  # the thread inside train, if one is

    def enter(self, method: str) -> None:
        """Take the model for ``method`` ("train", "predict", "evaluate", ...), or raise."""
        me = threading.get_ident()
        if method == "train":
            with self._claim:
                if self._trainer is not None:
                    raise RuntimeError(
                        f"Model.train: this model is already training {_which(self._trainer)}; "
                        "one model trains in one thread at a time (build one Model per thread "
                        "to train several)"
                    )
                self._trainer = me  # from now on, other threads' passes raise
            try:
                self._passes.acquire()  # after the predictions already in flight
            except BaseException:  # (Ctrl-C while it waited)
                self._trainer = None
                raise
            return
        trainer = self._trainer
        if trainer is not None and trainer != me:
            raise RuntimeError(
                f"Model.{method}: this model is training in another thread, which changes "
                "its layers' state at every step; call it when train has returned, from "
                "on_epoch_end, or on a copy (Model.load of a checkpoint)"
            )
        self._passes.acquire()  # (a pass of another thread: wait for its end)

    def leave(self, method: str) -> None:
        if method == "train":
            self._trainer = None
        self._passes.release()


def _which(thread: int) -> str:
    if thread == threading.get_ident():
        return "in this thread (train called from inside train, by on_epoch_end?)"
    return "in another thread"


def one_pass_at_a_time(method: M) -> M:
    """Run a Model method under the model's ``PassGuard`` (``self._guard``; see there)."""

    name = method.__name__

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        self._guard.enter(name)
        try:
            return method(self, *args, **kwargs)
        finally:
            self._guard.leave(name)

    return cast(M, run)


def on_its_gpu(method: M) -> M:
    """Run a Model method with the model's GPU as the current CUDA device (CuPy computes on
    the current one), so a model built under ``use_backend("cupy:1")`` still runs there."""

    @functools.wraps(method)
    def run(self: Any, *args: Any, **kwargs: Any) -> Any:
        backend = getattr(self, "backend", None)  # (set by finalize)
        with backend.on_device() if backend is not None else contextlib.nullcontext():
            return method(self, *args, **kwargs)

    return cast(M, run)
