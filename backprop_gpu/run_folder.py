"""A run folder on disk: the files it holds, how each epoch is committed so that a kill at
any moment leaves the folder consistent, how ``resume`` repairs what a kill left, the lock
that keeps one writer per folder, and Ctrl-C / SIGTERM during a run. ``experiment`` runs the
training; this module owns the folder.

The metrics and the checkpoints agree by construction, whenever the process is killed (see
``commit``): after any interruption, ``resume`` leaves every epoch in both metrics files
exactly once, as an uninterrupted run would have written them.
"""

from __future__ import annotations

import contextlib
import csv
import filecmp
import io
import json
import math
import os
import re
import reprlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import checkpoint
from .callbacks import Callback, CSVLogger, ModelCheckpoint


class RunError(RuntimeError):
    """A run that cannot start or continue: folder exists, no checkpoint, unwritable, ..."""


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM (``signum``, SIGINT or SIGTERM), which ``run`` and
    ``resume`` treat alike. ``run_dir`` is the run folder, which ``resume`` continues;
    ``epochs`` how many epochs its checkpoint and metrics hold (None: not read yet)."""

    def __init__(self, run_dir: Path, epochs: int | None, signum: int = signal.SIGINT) -> None:
        super().__init__(f"{run_dir}: interrupted after {epochs} epoch(s)")
        self.run_dir = run_dir
        self.epochs = epochs
        self.signum = signum


def refuse_a_used_folder(out: Path) -> None:
    """Refuse a folder that exists and is not empty (but for the temporary file of a run
    killed as it wrote its config.json: that is no run yet)."""
    if out.exists() and (not out.is_dir() or not unused(out)):
        raise RunError(
            f"{out} already exists and is not empty; pass --resume to continue that run or "
            "choose another --out"
        )


def prepare_folder(out: Path) -> None:
    """Make the new run folder ``out``."""
    if in_use(out):  # (not "pass --resume": a resume would be refused as well, for now)
        raise _busy(out)
    refuse_a_used_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise RunError(f"cannot write the run folder {out}: {e.strerror or e}") from e


COLUMNS = ("epoch", "loss", "regularization_loss", "accuracy", "learning_rate",
           "val_loss", "val_accuracy", "seconds")  # fmt: skip


def _csv_text(rows: list[dict[str, float]], header: bool) -> str:
    """metrics.csv's text for ``rows`` (with the header line first if ``header``)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    if header:
        writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k, "") for k in COLUMNS})
    return text.getvalue()


def _jsonl_text(rows: list[dict[str, float]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


def jsonl_rows(path: Path) -> list[dict[str, float]]:
    """The rows of a metrics.jsonl, in file order. A last line without its newline is one a
    killed process was writing: kept if it is a whole row (only its newline was cut off),
    left out if torn. Any other line that is not a JSON row raises, showing it."""
    if not path.exists():
        return []
    *complete, last = path.read_bytes().split(b"\n")  # (last is b"" after a whole line)
    rows = []
    for number, line in enumerate(complete, 1):
        if not line.strip():
            continue
        row = _metrics_row(line)
        if row is None:
            shown = _SHOW.repr(line.decode(errors="replace"))
            raise RunError(
                f"{path}: line {number} is not a metrics row ({shown}); the file is damaged"
            )
        rows.append(row)
    row = _metrics_row(last) if last.strip() else None
    return rows if row is None else [*rows, row]


_SHOW = reprlib.Repr()
_SHOW.maxstring = 80  # (characters of a damaged line shown)


def _metrics_row(line: bytes) -> dict[str, float] | None:
    """``line`` parsed as a metrics row (a JSON object with an integer epoch), or None."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and isinstance(row.get("epoch"), int) else None


def read_metrics(out: str | os.PathLike[str]) -> list[dict[str, float]]:
    """The rows of ``out/metrics.jsonl``, one dict per epoch (of a run that still trains too:
    a row being written is left out)."""
    return jsonl_rows(Path(out) / "metrics.jsonl")


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (``checkpoint.atomic_write``)."""
    data = text.encode()
    checkpoint.atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2, default=str) + "\n")


_RUN_FILES = ("checkpoint.npz", "best.npz", "config.json", "summary.json", "metrics.csv",
              "metrics.jsonl", "data.json")  # fmt: skip


# the temporaries of checkpoint.atomic_write (.checkpoint.npz.<random>.tmp), and of earlier
# versions (.config.json.tmp)
_TEMPORARY = re.compile(rf"\.({'|'.join(map(re.escape, _RUN_FILES))})(\..*)?\.tmp")


def _temporaries(out: Path) -> list[Path]:
    """What a write killed on its way left in the run folder."""
    return [path for path in out.iterdir() if _TEMPORARY.fullmatch(path.name)]


def remove_temporaries(out: Path) -> None:
    """Remove what a write killed on its way left in the run folder (under the run lock: its
    writer is gone)."""
    for path in _temporaries(out):
        path.unlink(missing_ok=True)


def discard_if_unused(out: Path) -> None:
    """Remove the run folder ``out`` if it holds no run, unless another process holds it
    (a run of the same folder started at the same time, which may be about to write)."""
    with contextlib.suppress(OSError, RunError), run_lock(out):
        if unused(out):
            remove_temporaries(out)
            out.rmdir()


def unused(out: Path) -> bool:
    """``out`` holds no run: nothing, or only what a run killed as it wrote its first file
    (config.json) left."""
    return all(_TEMPORARY.fullmatch(path.name) for path in out.iterdir())


def best_row(history: list[dict[str, float]]) -> dict[str, float] | None:
    """The first row with the lowest validation loss (the epoch ``best.npz`` holds)."""
    best: dict[str, float] | None = None
    for row in history:
        if row.get("val_loss", math.inf) < (math.inf if best is None else best["val_loss"]):
            best = row
    return best


def committed_history(out: Path, epochs: int) -> list[dict[str, float]]:
    """Bring the metrics files back to the epochs the checkpoint holds and return their rows.

    By ``commit``'s order a killed run's files hold epochs 1 to ``epochs`` and, at most, the
    row of the next epoch, whole or torn, in one or both files: it is dropped here (that
    epoch trains again, to the same numbers). metrics.jsonl is the record; metrics.csv is
    rewritten from it when it differs. Files that disagree with the checkpoint otherwise (a
    row missing, rows further on: not what a kill leaves) are refused, not cut."""
    jsonl = out / "metrics.jsonl"
    by_epoch: dict[int, dict[str, float]] = {}
    for row in jsonl_rows(jsonl):
        by_epoch[int(row["epoch"])] = row  # (resumed before this repair: maybe twice; last wins)
    rows = [by_epoch[e] for e in range(1, epochs + 1) if e in by_epoch]
    if len(rows) < epochs or max(by_epoch, default=0) > epochs + 1:
        holds = "there is no checkpoint.npz"
        if (out / "checkpoint.npz").is_file():
            holds = f"the checkpoint holds {epochs}"
        raise RunError(
            f"{jsonl}: holds epochs {_spans(sorted(by_epoch))} but {holds}; the run folder "
            "is damaged (a file replaced or edited?)"
        )
    for path, text in ((jsonl, _jsonl_text(rows)), (out / "metrics.csv", _csv_text(rows, True))):
        if not path.exists() or path.read_bytes() != text.encode():
            _write_text(path, text)
    return rows


def _spans(epochs: list[int]) -> str:
    """``[1, 2, 3]`` -> ``"1 to 3"``; ``[1, 3]`` -> ``"1, 3"``."""
    if not epochs:
        return "none"
    if epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]} to {epochs[-1]}"
    return ", ".join(map(str, epochs))


def restore_best(out: Path, history: list[dict[str, float]], epochs: int) -> None:
    """Make best.npz the model of the best epoch again. A kill between the checkpoint's save
    and best.npz's copy of it (``commit``) leaves best.npz one best epoch behind; that epoch
    is then the checkpoint's own, so the checkpoint is copied (unless best.npz is already
    the same bytes)."""
    best = best_row(history)
    if best is None or best["epoch"] != epochs:
        return  # best.npz was written in an earlier, completed commit
    path, source = out / "best.npz", out / "checkpoint.npz"
    if not (path.is_file() and filecmp.cmp(path, source, shallow=False)):
        checkpoint.copy_file(source, path)


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM during a run: either stops it as a ``KeyboardInterrupt``
    (SIGTERM as Ctrl-C), at once, or, inside an epoch's commit (``deferred``), once the
    commit is done. One handler for both, set for the whole call (``installed``): a signal
    set to be ignored stays ignored, and a Python handler the caller had set (not Python's
    own Ctrl-C one) is called in its place, deferred the same way. ``signum`` is the signal
    that stopped the run (SIGTERM when both came during a commit).

    Python runs signal handlers in the main thread only, and can set them only there: from
    another thread ``installed`` sets nothing, and Ctrl-C goes to the main thread as usual
    (a SIGKILL-proof commit order keeps the folder consistent whatever happens)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._holding = False
        self._pending: list[int] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        try:  # (each handler is noted before it is replaced: a signal at any point of the
            # swap leaves no handler of ours behind)
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if handler not in (signal.SIG_IGN, None):  # (None: set outside Python)
                    self._previous[signum] = handler
                    signal.signal(signum, self._handle)
            yield
        finally:
            self._holding = True  # a signal while the handlers go back: acted on after
            for number, previous in self._previous.items():
                signal.signal(number, previous)
            self._release()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM until the block ends, then act on them."""
        self._holding = True
        try:
            yield
        finally:
            self._release()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._holding:
            self._pending.append(signum)
        else:
            self._act(signum, frame)

    def _release(self) -> None:
        self._holding = False
        pending, self._pending = self._pending, []
        for signum in sorted(set(pending), key=lambda s: s != signal.SIGTERM):  # SIGTERM first
            self._act(signum, None)

    def _act(self, signum: int, frame: Any) -> None:
        previous = self._previous.get(signum)
        self.signum = signum
        if callable(previous) and previous is not signal.default_int_handler:
            previous(signum, frame)  # the caller's (one that raises, or sets a flag)
            self.signum = None  # (it returned: the run goes on)
            return
        raise KeyboardInterrupt


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder while this process writes it: a second run
    or resume of the same folder (say, --resume while it still trains) is refused instead of
    interleaving its rows. Advisory (flock); none on Windows, which has no fcntl."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    fd = os.open(out, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _busy(out) from None
        yield
    finally:
        os.close(fd)  # (releases the lock)


def _busy(out: Path) -> RunError:
    return RunError(
        f"{out}: another process is training in this run folder now; wait for it to end "
        "(then --resume continues it)"
    )


def in_use(out: Path) -> bool:
    """Another process holds ``out``'s run lock (``run_lock``), that is, trains in it now.
    (A probe: it takes the lock for an instant. Never call it while holding the lock: a
    second lock of the same folder conflicts with the first in one process too.)"""
    try:
        import fcntl
    except ImportError:
        return False
    try:
        fd = os.open(out, os.O_RDONLY)
    except OSError:  # (no such folder, not a folder, not readable: no run holds it)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def kept(out: Path, epochs: int | None) -> str:
    if epochs:
        return f"the run folder {out} keeps epoch {epochs}, the last finite one"
    return f"the run folder {out} holds no checkpoint: no epoch ended finite"


class RunFolderLog(Callback):
    """The run folder's record of training, on the fit loop's callbacks: each finished
    epoch's row goes to metrics.csv and metrics.jsonl (a ``CSVLogger``), then the model to
    checkpoint.npz (a ``ModelCheckpoint``, with the callbacks' states for a resume), then,
    when its validation loss is the best so far, best.npz as a copy of it (a second
    ``ModelCheckpoint``), all in ``commit``'s order, with Ctrl-C and SIGTERM held meanwhile
    (``interrupts``). ``committed`` is the last epoch on disk."""

    writes = True
    saves_states = True  # (checkpoint.npz holds the states of the callbacks before it)

    def __init__(
        self,
        out: Path,
        interrupts: Interrupts,
        best_val_loss: float,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.interrupts = interrupts
        self.metrics = CSVLogger(out / "metrics.csv", append=True, columns=COLUMNS,
                                 jsonl=out / "metrics.jsonl")  # fmt: skip
        self.checkpoint = ModelCheckpoint(out / "checkpoint.npz", extra=extra)
        self.best = ModelCheckpoint(out / "best.npz", monitor="val_loss", save_best_only=True,
                                    copy_from=out / "checkpoint.npz")  # fmt: skip
        self.best.best = best_val_loss
        self.committed: int | None = None
        self._parts = (self.metrics, self.checkpoint, self.best)

    def set_trainer(self, trainer: Any) -> None:
        super().set_trainer(trainer)
        for part in self._parts:
            part.set_trainer(trainer)

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.metrics.open()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        with self.interrupts.deferred():  # (Ctrl-C or SIGTERM: after the commit, not inside)
            commit(self.metrics, self.checkpoint, self.best, epoch, dict(logs or {}))
            self.committed = epoch + 1

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self.metrics.close()

    def close(self) -> None:
        self.metrics.close()


def commit(
    metrics: CSVLogger,
    checkpoint_: ModelCheckpoint,
    best: ModelCheckpoint,
    epoch: int,
    row: dict[str, Any],
) -> None:
    """Record a finished epoch: its rows, then checkpoint.npz, then (if ``improved``) best.npz
    as a copy of it.

    The checkpoint is the commit point: on resume, the metrics files are cut back to the
    epochs it holds (``committed_history``) and best.npz is made to match it
    (``restore_best``). Why every kill point is covered (SIGKILL included; the caller holds
    SIGINT and SIGTERM until this returns, so they never stop it half-way):

    - before or while the rows are written: the checkpoint holds the epoch before, and the
      files hold its rows plus part or all of this epoch's row, in one or both files (or a
      torn last line). Resume drops that row and trains the epoch again, deterministically.
    - after the rows (synced), before checkpoint.npz is replaced (during its save too: it
      writes a temporary file, then renames it in one step): the same.
    - after checkpoint.npz is replaced, before best.npz is: the rows were synced before it,
      so the files hold exactly the checkpoint's epochs. If this epoch is the best one,
      best.npz still holds the previous best; resume copies the checkpoint (this epoch's
      model) over it. Otherwise best.npz was right all along.
    - afterwards: all agree.

    So the files never hold a row beyond the checkpoint's epoch plus one, and every row up to
    the checkpoint's epoch is on disk before the checkpoint is. Leftover temporary files are
    removed when the next run or resume takes the folder. summary.json is written last, when a
    call has trained the last epoch and made the plots, and removed when a resume starts
    training (it would describe the end of an earlier call)."""
    metrics.write(row)
    checkpoint_.on_epoch_end(epoch, row)
    best.on_epoch_end(epoch, row)  # (a copy: the model is not gathered, serialized twice)
