"""Callbacks: what runs around the fit loop (:mod:`backprop_gpu.trainer`) at fixed points.

    model.train(X, y, epochs=100, validation_data=(X_val, y_val), callbacks=[
        bg.EarlyStopping(monitor="val_loss", patience=10, restore_best_weights=True),
        bg.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=3),
        bg.ModelCheckpoint("best.npz", monitor="val_loss", save_best_only=True),
        bg.CSVLogger("metrics.csv"),
    ])

A callback subclasses ``Callback`` and overrides any of ``on_train_begin``,
``on_epoch_begin``, ``on_batch_end``, ``on_epoch_end`` and ``on_train_end`` (Keras's names).
It sees the loop as ``self.trainer`` and the model as ``self.model``, and stops training by
setting ``self.trainer.stop_training = True`` (the epoch running ends first). ``logs`` at an
epoch's end is that epoch's history row (``epoch``, ``loss``, ``regularization_loss``,
``accuracy``, ``learning_rate``, and ``val_loss``/``val_accuracy`` with validation data).

- ``on_batch_end`` costs a call a step, so the loop calls it only when some callback
  overrides it; its ``logs["loss"]`` is the batch's loss as a device scalar (``float()`` of it
  waits for the device: a GPU then syncs every step).
- Distributed training runs every callback on every rank (each sees the same, reduced
  metrics, so a decision like early stopping is taken by all ranks together), except those
  with ``writes = True`` (checkpoints, logs, progress), which run on rank 0 only.
- ``get_state`` / ``set_state``: what a callback must carry over a resume (a run folder's
  checkpoint stores it), so a resumed run decides as the uninterrupted one would.
"""

from __future__ import annotations

import csv
import json
import math
import os
import string
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from . import state


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss (see ``TerminateOnNaN``)."""


class Callback:
    """Base class: every hook does nothing. ``self.trainer`` / ``self.model`` are set when
    training starts."""

    writes = False  # True: runs on rank 0 only in distributed training (it writes files)
    saves_states = False  # True: its on_epoch_end saves get_state() of the callbacks before it
    trainer: Any = None
    model: Any = None

    def set_trainer(self, trainer: Any) -> None:
        self.trainer, self.model = trainer, trainer.model

    def check(self) -> None:
        """Before any callback's ``on_train_begin``: raise if this callback cannot run in
        this training (a metric the logs will not hold, ...), so nothing is written first."""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Before the first epoch."""

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """Before epoch ``epoch`` (counting every epoch the model has trained, from 0)."""

    def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """After step ``batch`` of the epoch (see the module docstring for its cost)."""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        """After epoch ``epoch``, with its history row."""

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        """After the last epoch (also when a callback stopped training)."""

    def close(self) -> None:
        """Let go of what the callback holds open (a file, a progress bar): called after
        ``on_train_end``, and also when training ends on an error."""

    def get_state(self) -> dict[str, Any]:
        """What a resumed run needs to go on deciding as this one would (JSON-able)."""
        return {}

    def set_state(self, saved: dict[str, Any]) -> None:
        """Take back what ``get_state`` returned (before ``train``, to resume)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def overrides(callback: Callback, hook: str) -> bool:
    """Whether ``callback`` has its own ``hook`` (the loop skips hooks nobody overrides): a
    method of its class, or a function set on the object (``LambdaCallback``)."""
    own = getattr(callback, hook)
    return getattr(own, "__func__", own) is not getattr(Callback, hook)


class LambdaCallback(Callback):
    """A callback from plain functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs:
    ...)`` (any of the five hooks, each taking the hook's arguments)."""

    def __init__(self, **hooks: Callable[..., None]) -> None:
        known = ("on_train_begin", "on_epoch_begin", "on_batch_end", "on_epoch_end",
                 "on_train_end")  # fmt: skip
        for name, function in hooks.items():
            if name not in known:
                raise TypeError(f"LambdaCallback: unknown hook {name!r}; known: {known}")
            if not callable(function):
                raise TypeError(f"LambdaCallback: {name} must be callable, got {function!r}")
            setattr(self, name, function)


# --- monitoring a metric -----------------------------------------------------------------


class _Monitor(Callback):
    """Shared by the callbacks that watch one metric of the history row for improvement."""

    def __init__(self, monitor: str, mode: str, owner: str) -> None:
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"{owner}: monitor must be a metric name, got {monitor!r}")
        if mode not in ("auto", "min", "max"):
            raise ValueError(f"{owner}: mode must be 'auto', 'min' or 'max', got {mode!r}")
        if mode == "auto":  # (Keras's rule: accuracies grow, everything else shrinks)
            mode = "max" if "acc" in monitor else "min"
        self.monitor, self.mode, self._owner = monitor, mode, owner
        self._resumed = False  # set_state since the last training: go on from that state

    def reset(self) -> None:
        """Forget earlier trainings (the best value so far, the counts)."""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        # As in Keras, each training starts afresh (a callback reused for another model
        # must not carry its best over), unless set_state gave it a run's state to resume.
        if not self._resumed:
            self.reset()
        self._resumed = False

    def check(self) -> None:
        names = self.trainer.metric_names
        if self.monitor not in names:
            hint = " (pass validation_data to train)" if self.monitor.startswith("val_") else ""
            raise ValueError(
                f"{self._owner}: monitor={self.monitor!r} is not a metric of this training"
                f"{hint}; the metrics are {', '.join(names)}"
            )

    def _value(self, logs: dict[str, Any] | None) -> float:
        logs = logs or {}
        if self.monitor not in logs:
            raise ValueError(
                f"{self._owner}: monitor={self.monitor!r} is not in this epoch's logs; they "
                f"hold {', '.join(logs) or 'nothing'}"
            )
        return float(logs[self.monitor])


def _non_negative(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _count(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


class EarlyStopping(_Monitor):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience``
    epochs (Keras 3's rule: each epoch counts one more ``wait``; an improvement on the best
    value so far resets it, and once ``wait >= patience`` on an epoch that did not improve,
    after the first epoch, training stops).

    ``restore_best_weights=True`` keeps a device copy of the parameters of the best epoch and
    puts them back when training ends, whether this callback stopped it or the epoch limit
    came first (the optimizer state and the epoch count stay those of the last epoch, as in
    Keras). ``baseline``: an improvement resets ``wait`` only if it also beats this value, so
    training stops ``patience`` epochs after the start if the baseline is never beaten.
    ``start_from_epoch``: the first epochs of the model (counted over every ``train`` call and
    a resume) that are not looked at (warm-up). ``stopped_epoch`` is the epoch (1-based, as in
    the history) after which it stopped, 0 if it did not; ``best_epoch`` the best one.

    As in Keras, each ``train`` call starts afresh (no best, ``wait`` 0), unless ``set_state``
    gave it a run's state first, as a resume does: ``get_state``/``set_state`` carry ``best``,
    ``best_epoch`` and ``wait``.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        patience: int = 0,
        min_delta: float = 0.0,
        mode: str = "auto",
        restore_best_weights: bool = False,
        baseline: float | None = None,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(monitor, mode, "EarlyStopping")
        self.patience = _count(patience, "EarlyStopping: patience")
        self.min_delta = _non_negative(min_delta, "EarlyStopping: min_delta")
        self.restore_best_weights = bool(restore_best_weights)
        if baseline is not None and not (
            isinstance(baseline, int | float) and math.isfinite(baseline)
        ):
            raise ValueError(f"EarlyStopping: baseline must be a finite number, got {baseline!r}")
        self.baseline = None if baseline is None else float(baseline)
        self.start_from_epoch = _count(start_from_epoch, "EarlyStopping: start_from_epoch")
        self.best_weights: dict[str, Any] | None = None
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch = self.wait = self.stopped_epoch = 0
        self.best_weights = None

    def _improves(self, value: float, reference: float) -> bool:
        if self.mode == "min":  # (beats it by more than min_delta)
            return value + self.min_delta < reference
        return value - self.min_delta > reference

    def _keep_weights(self) -> None:
        slots = list(state.walk(self.model.layers))
        self.best_weights = state.copy_of(slots, self.model.backend.xp, self.best_weights)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        super().on_train_begin(logs)
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = self._value(logs)
        if epoch < self.start_from_epoch:  # (epoch: 0-based, over every training)
            return
        if self.restore_best_weights and self.best_weights is None and not self.best_epoch:
            self._keep_weights()  # (Keras: the first epoch looked at is the best until beaten)
        self.wait += 1
        if self._improves(value, self.best):
            self.best, self.best_epoch = value, epoch + 1
            if self.restore_best_weights:
                self._keep_weights()
            if self.baseline is None or self._improves(value, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch + 1
            self.trainer.stop_training = True

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            state.put_back(list(state.walk(self.model.layers)), self.best_weights)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "wait": self.wait}

    def set_state(self, saved: dict[str, Any]) -> None:
        """Resume from ``get_state()``. The best epoch's weights are not part of it: set
        ``best_weights`` too (``state.copy_of`` of a model holding them, as the run folder
        does from ``best.npz``), or only an epoch that beats ``best`` is restored."""
        self.best = float(saved["best"])
        self.best_epoch, self.wait = int(saved["best_epoch"]), int(saved["wait"])
        self._resumed = True

    def __repr__(self) -> str:
        return (
            f"EarlyStopping(monitor={self.monitor!r}, patience={self.patience}, "
            f"min_delta={self.min_delta}, mode={self.mode!r}, "
            f"restore_best_weights={self.restore_best_weights}, baseline={self.baseline}, "
            f"start_from_epoch={self.start_from_epoch})"
        )


class ReduceLROnPlateau(_Monitor):
    """Multiply the optimizer's learning rate by ``factor`` when ``monitor`` has not improved
    for more than ``patience`` epochs: ``torch.optim.lr_scheduler.ReduceLROnPlateau``'s rule
    (``threshold`` relative or absolute, ``cooldown`` epochs after a reduction, never below
    ``min_lr``, a change smaller than ``eps`` skipped), stepped once an epoch.

    It scales ``optimizer.learning_rate``, the base rate the optimizer's schedule (the book's
    decay by default) starts from, so a schedule goes on from the reduced rate.
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        *,
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
        mode: str = "auto",
    ) -> None:
        super().__init__(monitor, mode, "ReduceLROnPlateau")
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in (0, 1), got {factor!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(
                f"ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}"
            )
        self.factor = float(factor)
        self.patience = _count(patience, "ReduceLROnPlateau: patience")
        self.threshold = _non_negative(threshold, "ReduceLROnPlateau: threshold")
        self.threshold_mode = threshold_mode
        self.cooldown = _count(cooldown, "ReduceLROnPlateau: cooldown")
        self.min_lr = _non_negative(min_lr, "ReduceLROnPlateau: min_lr")
        self.eps = _non_negative(eps, "ReduceLROnPlateau: eps")
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = self.cooldown_counter = 0

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            bar = self.best * (1 - self.threshold) if self.threshold_mode == "rel" else (
                self.best - self.threshold)  # fmt: skip
            return value < bar
        bar = self.best * (1 + self.threshold) if self.threshold_mode == "rel" else (
            self.best + self.threshold)  # fmt: skip
        return value > bar

    def step(self, value: float) -> bool:
        """One epoch's ``value``; whether the rate was reduced (torch's ``step(metrics)``)."""
        if self._better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
            return self._reduce()
        return False

    def _reduce(self) -> bool:
        optimizer = self.trainer.model.optimizer
        old = float(optimizer.learning_rate)
        new = max(old * self.factor, self.min_lr)
        if old - new <= self.eps:
            return False
        scale_lr(optimizer, new)
        return True

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.step(self._value(logs))

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}  # fmt: skip

    def set_state(self, saved: dict[str, Any]) -> None:
        self.best = float(saved["best"])
        self.num_bad_epochs = int(saved["num_bad_epochs"])
        self.cooldown_counter = int(saved["cooldown_counter"])
        self._resumed = True

    def __repr__(self) -> str:
        return (
            f"ReduceLROnPlateau(monitor={self.monitor!r}, factor={self.factor}, "
            f"patience={self.patience}, threshold={self.threshold}, "
            f"threshold_mode={self.threshold_mode!r}, cooldown={self.cooldown}, "
            f"min_lr={self.min_lr}, eps={self.eps}, mode={self.mode!r})"
        )


def scale_lr(optimizer: Any, new: float) -> None:
    """Set the optimizer's base learning rate to ``new``, and the rate of the next step with
    it (the same ratio), so it applies from the next step whatever the schedule."""
    old = float(optimizer.learning_rate)
    optimizer.learning_rate = new
    optimizer.current_learning_rate = float(optimizer.current_learning_rate) * (new / old)


# --- files -------------------------------------------------------------------------------


class ModelCheckpoint(_Monitor):
    """Save the model (``Model.save``: parameters, optimizer state, epoch count, and the
    callbacks' states for a resume) to ``filepath`` after every epoch, or with
    ``save_best_only`` only when ``monitor`` improved on the best so far. ``filepath`` may
    name the epoch and any metric (``"ckpt-{epoch:03d}-{val_loss:.3f}.npz"``). Each save is
    atomic (a temporary file renamed): a kill leaves the previous file whole. It saves the
    states of the callbacks listed before it: put it after those that decide."""

    writes = True
    saves_states = True

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        *,
        monitor: str = "val_loss",
        save_best_only: bool = False,
        mode: str = "auto",
        copy_from: str | os.PathLike[str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(monitor, mode, "ModelCheckpoint")
        self.extra = dict(extra or {})  # JSON-able, kept in each file's metadata
        self.filepath = os.fspath(filepath)
        try:  # (the fields it names: checked against the metrics when training starts)
            self._fields = [f for _, f, _, _ in string.Formatter().parse(self.filepath) if f]
        except ValueError as e:
            raise ValueError(
                f"ModelCheckpoint: filepath {self.filepath!r} is not a valid format string: {e}"
            ) from None
        self.save_best_only = bool(save_best_only)
        # a file another checkpoint wrote this very epoch: copied instead of saving again
        self.copy_from = None if copy_from is None else Path(copy_from)
        self.saved: list[Path] = []  # every path written, in order
        self.reset()

    def reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf

    def check(self) -> None:
        if self.save_best_only:
            super().check()
        names = self.trainer.metric_names
        for field in self._fields:
            if field.split(".")[0].split("[")[0] not in names:
                hint = " (pass validation_data to train)" if field.startswith("val_") else ""
                raise ValueError(
                    f"ModelCheckpoint: filepath {self.filepath!r} names {{{field}}}, which is "
                    f"not a metric of this training{hint}; it may name {', '.join(names)}"
                )
        try:  # a bad format spec ({epoch:03q}) fails here, not after the first epoch
            self.filepath.format(**{name: 1.0 for name in names} | {"epoch": 1})
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
            raise ValueError(
                f"ModelCheckpoint: filepath {self.filepath!r} cannot be formatted with an "
                f"epoch's metrics: {e}"
            ) from None

    def improved(self, logs: dict[str, Any] | None) -> bool:
        value = self._value(logs)
        return value < self.best if self.mode == "min" else value > self.best

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.save_best_only:
            if not self.improved(logs):
                return
            self.best = self._value(logs)
        path = Path(self.filepath.format(**{**(logs or {}), "epoch": epoch + 1}))
        if self.copy_from is not None:
            from .checkpoint import copy_file

            copy_file(self.copy_from, path)
        else:
            states = self.trainer.callback_states()
            self.model.save(path, extra={**self.extra, "callbacks": states})
        self.saved.append(path)

    def get_state(self) -> dict[str, Any]:
        return {"best": self.best}

    def set_state(self, saved: dict[str, Any]) -> None:
        self.best, self._resumed = float(saved["best"]), True

    def __repr__(self) -> str:
        return (
            f"ModelCheckpoint({self.filepath!r}, monitor={self.monitor!r}, "
            f"save_best_only={self.save_best_only})"
        )


class CSVLogger(Callback):
    """Append each epoch's row to ``filename`` as CSV (a header first, in a new or empty
    file), and to ``jsonl`` as one JSON object a line when given; each row is flushed and
    synced to disk (``fsync``) before training goes on, so a kill loses at most the row being
    written. ``columns``: the fields and their order (default: the first row's keys); a
    field a row lacks is left empty. ``append=False`` starts the files afresh."""

    writes = True

    def __init__(
        self,
        filename: str | os.PathLike[str],
        *,
        separator: str = ",",
        append: bool = False,
        columns: Sequence[str] | None = None,
        jsonl: str | os.PathLike[str] | None = None,
    ) -> None:
        self.filename = Path(filename)
        self.jsonl = None if jsonl is None else Path(jsonl)
        self.separator, self.append = separator, bool(append)
        self.columns = None if columns is None else tuple(columns)
        self._files: list[IO[str]] = []
        self._writer: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.open()

    def open(self) -> None:
        """Open the files (``on_train_begin`` does; a caller may do it earlier)."""
        if self._files:
            return
        mode = "a" if self.append else "w"
        self._new = not (self.append and self.filename.exists() and self.filename.stat().st_size)
        self._files = [self.filename.open(mode, newline="")]
        if self.jsonl is not None:
            self._files.append(self.jsonl.open(mode))
        self._writer = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.write(dict(logs or {}))

    def write(self, row: dict[str, Any]) -> None:
        """Write one row to every file, then flush and sync them."""
        if not self._files:
            self.open()
        if self._writer is None:
            columns = self.columns or tuple(row)
            self._writer = csv.DictWriter(
                self._files[0], fieldnames=columns, delimiter=self.separator, extrasaction="ignore"
            )
            if self._new:
                self._writer.writeheader()
        self._writer.writerow({k: row.get(k, "") for k in self._writer.fieldnames})
        if self.jsonl is not None:
            self._files[1].write(json.dumps(row) + "\n")
        for file in self._files:
            file.flush()
            os.fsync(file.fileno())

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.close()

    def close(self) -> None:
        for file in self._files:
            file.close()
        self._files, self._writer = [], None

    def __repr__(self) -> str:
        return f"CSVLogger({os.fspath(self.filename)!r})"


# --- what the user sees --------------------------------------------------------------------


def summary_line(row: dict[str, Any]) -> str:
    """One epoch's row as the line ``Model.train(print_every=...)`` prints."""
    text = (
        f"epoch {int(row['epoch'])}: loss {row['loss']:.4f} "
        f"(reg {row['regularization_loss']:.4f}), acc {row['accuracy']:.4f}, "
        f"lr {row['learning_rate']:.6g}"
    )
    if "val_loss" in row:
        text += f", val_loss {row['val_loss']:.4f}, val_acc {row['val_accuracy']:.4f}"
    return text


class PrintEpochs(Callback):
    """Print ``summary_line`` every ``every`` epochs (counting every epoch the model has
    trained) and after the last one (what ``Model.train(print_every=N)`` adds)."""

    writes = True

    def __init__(self, every: int = 1, report: Callable[[str], None] = print) -> None:
        self.every = _count(every, "PrintEpochs: every")
        self.report = report

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        last = self.trainer.epochs_left == 0 or self.trainer.stop_training
        if logs is not None and self.every and ((epoch + 1) % self.every == 0 or last):
            self.report(summary_line(logs))


class ProgressBar(Callback):
    """A tqdm bar over the epochs with the last loss and accuracies (tqdm is optional: without
    it, ``fallback`` gets one line an epoch, when given)."""

    writes = True

    def __init__(self, fallback: Callable[[str], None] | None = None, file: Any = None) -> None:
        self.fallback, self.file = fallback, file
        self._bar: Any = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        try:
            from tqdm import tqdm
        except ImportError:
            self._bar = None
            return
        self._bar = tqdm(total=self.trainer.epochs_left, unit="epoch", dynamic_ncols=True,
                         file=self.file or sys.stderr)  # fmt: skip

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row = logs or {}
        if self._bar is None:
            if self.fallback is not None:
                self.fallback(summary_line(row))
            return
        self._bar.update(1)
        shown = {"loss": f"{row['loss']:.4f}", "acc": f"{row['accuracy']:.3f}"}
        if "val_accuracy" in row:
            shown["val_acc"] = f"{row['val_accuracy']:.3f}"
        self._bar.set_postfix(shown)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# --- non-finite values ---------------------------------------------------------------------


class TerminateOnNaN(Callback):
    """What happens when an epoch's loss, regularization loss, accuracy or validation loss,
    or any parameter or optimizer state, is NaN or infinite (the loop checks them all at each
    epoch's end, with the epoch's one read of its metrics).

    ``restore=True`` (the default) puts parameters and optimizer state back where that epoch
    started (a device copy is taken at each epoch's start: the memory of one more model and
    its optimizer state), which was checked finite too; then ``mode="raise"`` raises
    ``NonFiniteLossError`` naming the epoch, the step and what went non-finite, and
    ``mode="stop"`` ends training quietly with the finite history. ``restore=False`` keeps no
    copy (as Keras's TerminateOnNaN): training stops with the non-finite state left as it is.
    ``Model.train(on_nonfinite=...)`` is this callback's ``mode`` (with ``restore=True``),
    used when the callbacks hold no TerminateOnNaN of their own.
    """

    def __init__(self, mode: str = "raise", *, restore: bool = True) -> None:
        if mode not in ("raise", "stop"):
            raise ValueError(f"TerminateOnNaN: mode must be 'raise' or 'stop', got {mode!r}")
        self.mode, self.restore = mode, bool(restore)
        self._saved: dict[str, Any] | None = None
        self._counters: tuple[Any, ...] = ()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._saved = None
        if self.restore:  # a non-finite state has no finite one to go back to
            self.trainer.check_state_finite()

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.restore:
            model = self.model
            self._saved = state.copy_of(self.trainer.slots, model.backend.xp, self._saved)
            opt = model.optimizer
            self._counters = (opt.iterations, opt.learning_rate, opt.current_learning_rate,
                              model.epochs_trained)  # fmt: skip

    def on_nonfinite(self, message: str) -> None:
        """Called by the loop, before any other callback sees the epoch, with what went
        non-finite (``message`` says where); the epoch is not added to the history."""
        if self.restore and self._saved is not None:
            model = self.model
            state.put_back(self.trainer.slots, self._saved)
            opt = model.optimizer
            opt.iterations, opt.learning_rate, opt.current_learning_rate, epochs = self._counters
            model.epochs_trained = epochs
        if self.mode == "raise":
            raise NonFiniteLossError(message)
        self.trainer.stop_training = True

    def __repr__(self) -> str:
        return f"TerminateOnNaN(mode={self.mode!r}, restore={self.restore})"
