"""Metric writers beside metrics.csv: each epoch's row as TensorBoard scalars or MLflow metrics.

    model.train(X, y, epochs=50, validation_data=(X_val, y_val), callbacks=[
        TensorBoardWriter("runs/a/tensorboard"),          # the ``tensorboard`` extra
        MLflowWriter("runs/a", params={"lr": 0.02}),     # the ``mlflow`` extra
    ])

``backprop-gpu train --log tensorboard,mlflow`` adds them to a run folder's callbacks, after
the folder's own record (``run_folder.RunFolderLog``): a writer logs an epoch only once it is
committed, so it never holds an epoch that a resume trains again. Each writer logs every key of
the epoch's row but ``epoch``, which is the step (1-based, counted over every training of the
model, so a resumed run goes on at its epoch number).

Both are callbacks with ``writes = True`` (rank 0 only in distributed training). Their packages
are optional: ``check()`` (before training starts, before anything is written) raises an
``ImportError`` naming the extra to install. What a run stopped in the instant between its
commit and a writer's write leaves out, ``catch_up(history)`` logs on resume (the run folder
calls it with the committed epochs): each store ends up holding every epoch once.
"""

from __future__ import annotations

import abc
import contextlib
import json
import os
import struct
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .callbacks import Callback
from .checkpoint import atomic_write

WRITERS = ("tensorboard", "mlflow")  # the names --log takes
EXTRAS = {"tensorboard": ("tensorboardX", "tensorboard"), "mlflow": ("mlflow", "mlflow")}
RECORD = "mlflow.json"  # in the run folder: the MLflow run its epochs go to (for a resume)
DEFAULT_EXPERIMENT = "backprop_gpu"


def require(writer: str) -> Any:
    """Import the package of ``writer`` (a ``WRITERS`` name) and return it; an ``ImportError``
    naming the extra that installs it when it is missing."""
    module, extra = EXTRAS[writer]
    try:
        if writer == "mlflow":
            import mlflow.tracking

            return mlflow
        import tensorboardX

        return tensorboardX
    except ImportError as e:
        raise ImportError(
            f"the {writer} writer (--log {writer}) needs the {module} package, which is not "
            f"installed ({e}); "
            f"install the {extra} extra: pip install 'backprop_gpu[{extra}]'"
        ) from None


def scalars(row: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of an epoch's row: every key but ``epoch`` (the step), as floats."""
    return {key: float(value) for key, value in row.items() if key != "epoch"}


class MetricWriter(Callback, abc.ABC):
    """Shared by the writers: ``on_epoch_end`` logs the row at step ``epoch + 1``; ``log``,
    ``logged`` and ``where`` are each writer's (abstract), ``open`` where it has a store to
    open."""

    writes = True
    name = ""  # the WRITERS name

    def __init__(self) -> None:
        self._open = False

    def check(self) -> None:
        require(self.name)

    def open(self, start: int) -> None:
        """Open the store before the first row (``start``: the epochs the model has trained)."""

    @abc.abstractmethod
    def log(self, step: int, values: Mapping[str, float]) -> None:
        """Write ``values`` at ``step`` (the epoch)."""

    @abc.abstractmethod
    def logged(self, start: int) -> set[tuple[str, int]]:
        """The (key, step) pairs the store already holds (``start`` as ``open``'s, if it
        must be opened to be read)."""

    @abc.abstractmethod
    def where(self) -> str:
        """Where the writer logs, for people."""

    def ensure_open(self, start: int) -> None:
        """``open(start)`` unless the writer is open already."""
        if not self._open:
            self.open(start)
            self._open = True

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.ensure_open(int(self.model.epochs_trained))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.ensure_open(epoch)
        self.log(epoch + 1, scalars(logs or {}))

    def catch_up(self, history: Iterable[Mapping[str, Any]]) -> int:
        """Log the values of ``history``'s rows (the epochs this run has trained so far)
        that the store lacks, and return how many rows it completed. A resumed run folder
        calls it: a stop between an epoch's commit and the writer's write leaves that epoch
        out. The writer stays open (``close`` closes it)."""
        rows = list(history)
        if not rows:
            return 0
        require(self.name)
        start = max(int(row["epoch"]) for row in rows)
        have = self.logged(start)
        completed = 0
        for row in rows:
            step = int(row["epoch"])
            missing = {k: v for k, v in scalars(row).items() if (k, step) not in have}
            if missing:
                self.ensure_open(start)
                self.log(step, missing)
                completed += 1
        return completed


# --- TensorBoard ---------------------------------------------------------------------------


class TensorBoardWriter(MetricWriter):
    """Each epoch's row as TensorBoard scalars in event files under ``logdir`` (one tag per
    key, ``loss``, ``val_loss``, ..., at step ``epoch``), through tensorboardX (the
    ``tensorboard`` extra); ``tensorboard --logdir LOGDIR`` shows them.

    Each training writes a new event file (a resume appends to the folder, never rewrites a
    file; its name sorts after the earlier ones'), synchronously: an epoch's scalars are in
    the file, flushed, when ``on_epoch_end`` returns. TensorBoard stores scalars as float32."""

    name = "tensorboard"

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        super().__init__()
        self.logdir = Path(logdir)
        self._writer: Any = None
        self.files: list[Path] = []  # the event files this writer wrote

    def where(self) -> str:
        return f"TensorBoard (tensorboard --logdir {self.logdir})"

    def open(self, start: int) -> None:
        from tensorboardX.event_file_writer import EventsWriter

        self.logdir.mkdir(parents=True, exist_ok=True)
        # events.out.tfevents.<time>.<host><suffix>: the epoch it starts from and a count, so
        # two trainings in the same second neither share a file nor sort out of order
        names = {path.name for path in self.logdir.iterdir()}
        count = 0
        while any(name.endswith(f".{start:06d}.{os.getpid()}.{count}") for name in names):
            count += 1
        self._writer = EventsWriter(
            str(self.logdir / "events"), f".{start:06d}.{os.getpid()}.{count}"
        )
        self.files.append(Path(self._writer._file_name))

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self._writer.write_event(Event(wall_time=time.time(), step=step, summary=summary))
        self._writer.flush()

    def logged(self, start: int) -> set[tuple[str, int]]:
        found: set[tuple[str, int]] = set()
        for event in read_events(self.logdir):
            for value in event.summary.value:
                found.add((value.tag, int(event.step)))
        return found

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._open = False

    def __repr__(self) -> str:
        return f"TensorBoardWriter({os.fspath(self.logdir)!r})"


def read_events(logdir: str | os.PathLike[str]) -> list[Any]:
    """The events (tensorboardX's ``Event`` protos) of every event file in ``logdir``, in
    file-name order: TFRecord framing (a little-endian uint64 length, its CRC, the data, its
    CRC). A file's torn last record (a writer killed in it) ends that file."""
    from tensorboardX.proto.event_pb2 import Event

    events = []
    for path in sorted(Path(logdir).glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, at)
            end = at + 12 + length + 4
            if end > len(data):
                break
            try:
                events.append(Event.FromString(data[at + 12 : at + 12 + length]))
            except Exception:  # (protobuf's DecodeError: a damaged record ends the file)
                break
            at = end
    return events


# --- MLflow --------------------------------------------------------------------------------


class MLflowWriter(MetricWriter):
    """Each epoch's row as MLflow metrics (every key, at step ``epoch``) and ``params`` (a
    run's settings) once, through ``mlflow.tracking.MlflowClient`` (the ``mlflow`` extra:
    mlflow-skinny).

    The store: ``tracking_uri``, else the one ``run_dir/mlflow.json`` records, else the
    environment's ``MLFLOW_TRACKING_URI``, else a local file store in ``run_dir/mlruns``
    (``mlflow ui --backend-store-uri file:RUN_DIR/mlruns`` shows it). MLflow 3 refuses its file
    store unless ``MLFLOW_ALLOW_FILE_STORE`` is true: for a ``file:`` store this writer sets
    it (for this process) when it is not set. The run: ``run_name`` (default: ``run_dir``'s
    name) in the experiment ``experiment`` (default: ``MLFLOW_EXPERIMENT_NAME``, else
    "backprop_gpu"), created on the first training and recorded in ``run_dir/mlflow.json``;
    a later training with the same ``run_dir`` (a resume) logs to that run again. Params are
    logged when the run is created (MLflow keeps a param's first value: a resume's raised
    ``epochs`` target is not logged). When training ends the run is marked FINISHED, or
    KILLED after Ctrl-C or SIGTERM, FAILED after an error."""

    name = "mlflow"

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params or {})
        self.run_id: str | None = None
        self._client: Any = None
        self._uri = ""

    def _recorded(self) -> dict[str, Any] | None:
        path = self.run_dir / RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("run_id"), str):
                raise ValueError("no run_id")
        except ValueError as e:
            raise ValueError(
                f"{path}: not an MLflow run record ({e}); the file is damaged"
            ) from None
        return record

    def store_uri(self) -> str:
        """The tracking URI this writer logs to (see the class docstring)."""
        record = self._recorded()
        if record is None:
            return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (
                self._folder_store())  # fmt: skip
        recorded = record.get("tracking_uri") or self._folder_store()  # (None: in the folder)
        if self.tracking_uri is not None and self.tracking_uri != recorded:
            raise ValueError(
                f"MLflowWriter: {self.run_dir / RECORD} records run {record['run_id']} in the "
                f"store {recorded}, not tracking_uri {self.tracking_uri!r}; pass that store, "
                "or another run_dir"
            )
        return str(recorded)

    def _folder_store(self) -> str:
        return (self.run_dir.absolute() / "mlruns").as_uri()

    def where(self) -> str:
        return f"MLflow (mlflow ui --backend-store-uri {self.store_uri()})"

    def open(self, start: int) -> None:
        from mlflow.tracking import MlflowClient

        self._uri = uri = self.store_uri()
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        with self._errors():
            self._client, self.run_id = self._start(MlflowClient(uri), uri)

    def _start(self, client: Any, uri: str) -> tuple[Any, str]:
        """The client and the id of the run this writer logs to: the one mlflow.json
        records, marked running again, or a new one (with the params), then recorded."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException

        record = self._recorded()
        if record is not None:
            run_id = record["run_id"]
            try:
                client.get_run(run_id)
            except Exception as e:  # (MlflowException; a file store's folder gone: Exception)
                why = e.message if isinstance(e, MlflowException) else str(e)
                raise RuntimeError(
                    f"{self.run_dir / RECORD} records the MLflow run {run_id}, which the store "
                    f"{uri} does not hold ({why}); to log this run folder to a new MLflow "
                    f"run, remove {self.run_dir / RECORD}"
                ) from None
            client.update_run(run_id, status="RUNNING")
        else:
            name = self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or (
                DEFAULT_EXPERIMENT)  # fmt: skip
            found = client.get_experiment_by_name(name)
            if found is not None:
                experiment_id = found.experiment_id
            else:
                try:
                    experiment_id = client.create_experiment(name)
                except MlflowException:  # (made meanwhile by another process: a sweep's child)
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
                    experiment_id = found.experiment_id
            run = client.create_run(
                experiment_id,
                run_name=self.run_name or self.run_dir.absolute().name,
                tags={"backprop_gpu.run_dir": str(self.run_dir.absolute())},
            )
            run_id = run.info.run_id
            params = [Param(str(k), _param(v)) for k, v in self.params.items()]
            for i in range(0, len(params), 100):  # (MLflow takes 100 params a call)
                client.log_batch(run_id, params=params[i : i + 100])
            in_folder = uri == self._folder_store()  # (recorded relative: the folder may move)
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record = {"tracking_uri": None if in_folder else uri,
                      "experiment_id": experiment_id, "run_id": run_id}  # fmt: skip
            text = (json.dumps(record, indent=2) + "\n").encode()
            atomic_write(self.run_dir / RECORD, lambda f: f.write(text))
        return client, run_id

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """The store's errors (a server down, a store that refuses) as a ``RuntimeError``
        naming it, in one line."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except MlflowException as e:
            raise RuntimeError(f"MLflow, the store {self._uri}: {e.message}") from e

    def log(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        with self._errors():
            self._client.log_batch(self.run_id, metrics=metrics)

    def logged(self, start: int) -> set[tuple[str, int]]:
        self.ensure_open(start)
        found: set[tuple[str, int]] = set()
        with self._errors():
            for key in self._client.get_run(self.run_id).data.metrics:
                for metric in self._client.get_metric_history(self.run_id, key):
                    found.add((key, int(metric.step)))
        return found

    def close(self) -> None:
        """Mark the run ended: FINISHED, or KILLED (Ctrl-C, SIGTERM) or FAILED when training
        ends on an exception (the one propagating while the fit loop closes its callbacks)."""
        if self._client is None:
            return
        error = sys.exc_info()[1]
        status = "FINISHED"
        if isinstance(error, KeyboardInterrupt):
            status = "KILLED"
        elif error is not None:
            status = "FAILED"
        client, self._client, self._open = self._client, None, False
        try:
            with self._errors():
                client.set_terminated(self.run_id, status=status)
        except Exception:
            if error is None:
                raise
            # (closing after an error: that error is the one to see, not the store's)

    def __repr__(self) -> str:
        return f"MLflowWriter({os.fspath(self.run_dir)!r}, tracking_uri={self.tracking_uri!r})"


def _param(value: Any) -> str:
    """A setting as an MLflow param (text): lists as JSON (``[64, 64]``), None as ``None``."""
    return json.dumps(value) if isinstance(value, list | tuple) else str(value)


def for_run(names: Iterable[str], out: Path, params: Mapping[str, Any]) -> list[MetricWriter]:
    """The writers ``--log`` names for the run folder ``out``: TensorBoard's event files in
    ``out/tensorboard``, MLflow's run (with ``params``, the run's settings) in the store
    ``MLflowWriter`` picks for ``out``."""
    writers: list[MetricWriter] = []
    for name in names:
        if name == "tensorboard":
            writers.append(TensorBoardWriter(out / "tensorboard"))
        elif name == "mlflow":
            writers.append(MLflowWriter(out, params=params))
        else:
            raise ValueError(f"log: unknown writer {name!r}; valid: {', '.join(WRITERS)}")
    return writers
