"""The metric writers (``train --log tensorboard,mlflow``): what they write, read back with
each tool's own reader (tensorboard's ``EventAccumulator``, mlflow's ``MlflowClient``), equals
metrics.csv, epoch for epoch, also across a resume and a stop between a commit and a write."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import cli, datasets, experiment, writers
from backprop_gpu.experiment import Config, ConfigError, RunInterrupted

from .test_distributed import mpirun, needs_mpi

EventAccumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator"
).EventAccumulator
pytest.importorskip("tensorboardX")
mlflow_tracking = pytest.importorskip("mlflow.tracking")

TINY = {"dataset": "spiral", "samples": 150, "hidden": (8,), "batch_size": 32,
        "backend": "numpy"}  # fmt: skip
# metrics.csv's columns; the writers log all but epoch, which is their step
METRICS = ("loss", "regularization_loss", "accuracy", "learning_rate", "val_loss",
           "val_accuracy", "seconds")  # fmt: skip


@pytest.fixture(autouse=True)
def _no_mlflow_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The writers' defaults, whatever the caller's shell sets."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


def train(out: Path, epochs: int, log: tuple[str, ...], resume: bool = False) -> None:
    if resume:
        experiment.resume(out, {"epochs": epochs}, report=None, plots=False)
    else:
        config = Config(**TINY, epochs=epochs, log=log, out=str(out))  # type: ignore[arg-type]
        experiment.run(config, report=None, plots=False)


def csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag's (step, value) pairs, as TensorBoard reads the folder."""
    accumulator = EventAccumulator(str(logdir))
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}  # fmt: skip


def assert_tensorboard_holds(logdir: Path, rows: list[dict[str, str]]) -> None:
    """Each epoch once, at its step, each value metrics.csv's rounded to float32 (the
    precision TensorBoard's scalars have), exactly."""
    found = tensorboard_scalars(logdir)
    assert sorted(found) == sorted(METRICS)
    for tag in METRICS:
        expected = [(int(row["epoch"]), float(np.float32(float(row[tag])))) for row in rows]
        assert sorted(found[tag]) == expected, tag


def mlflow_run(out: Path) -> tuple[Any, str]:
    """The client of the run folder's own store, and the run id mlflow.json records."""
    client = mlflow_tracking.MlflowClient((out / "mlruns").absolute().as_uri())
    return client, json.loads((out / "mlflow.json").read_text())["run_id"]


def assert_mlflow_holds(out: Path, rows: list[dict[str, str]]) -> None:
    """Each metric's history: each epoch once, at its step, the value metrics.csv holds."""
    client, run_id = mlflow_run(out)
    assert sorted(client.get_run(run_id).data.metrics) == sorted(METRICS)
    for key in METRICS:
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert history == [(int(row["epoch"]), float(row[key])) for row in rows], key


# --- TensorBoard -----------------------------------------------------------------------


def test_tensorboard_event_files_hold_every_epoch_and_a_resume_appends(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(out, 3, ("tensorboard",))
    assert len(csv_rows(out)) == 3
    assert_tensorboard_holds(out / "tensorboard", csv_rows(out))
    first = sorted((out / "tensorboard").iterdir())
    assert len(first) == 1
    before = first[0].read_bytes()

    train(out, 5, (), resume=True)  # (the run keeps its writers: config.json's log)
    files = sorted((out / "tensorboard").iterdir())
    assert len(files) == 2 and files[0] == first[0], files  # a new file, sorting after
    assert files[0].read_bytes() == before  # the first one untouched
    assert ".000003." in files[1].name  # (from epoch 3)
    assert [int(r["epoch"]) for r in csv_rows(out)] == [1, 2, 3, 4, 5]
    assert_tensorboard_holds(out / "tensorboard", csv_rows(out))
    second = writers.read_events(out / "tensorboard")  # (our reader: the same steps)
    steps = sorted({e.step for e in second if e.summary.value})
    assert steps == [1, 2, 3, 4, 5]


def test_tensorboard_writer_on_model_train_steps_go_on_at_the_epoch(tmp_path: Path) -> None:
    """The callback outside a run folder: a second train call of the same model (another
    writer, the same folder) goes on at its epoch number, in a new file."""
    X, y = datasets.spiral_data(30, 3, seed=0)
    with bg.use_backend("numpy"):
        model = experiment.build_model(Config(**TINY), 2, 3)  # type: ignore[arg-type]
        logdir = tmp_path / "tb"
        first = model.train(X, y, epochs=2, batch_size=30, print_every=0, seed=0,
                            callbacks=[writers.TensorBoardWriter(logdir)])  # fmt: skip
        second = model.train(X, y, epochs=2, batch_size=30, print_every=0, seed=0,
                             callbacks=[writers.TensorBoardWriter(logdir)])  # fmt: skip
    found = tensorboard_scalars(logdir)
    assert sorted(found) == ["accuracy", "learning_rate", "loss", "regularization_loss"]
    expected = [(int(r["epoch"]), float(np.float32(r["loss"]))) for r in first + second]
    assert [r["epoch"] for r in first + second] == [1, 2, 3, 4]
    assert sorted(found["loss"]) == expected
    assert len(list(logdir.iterdir())) == 2


# --- MLflow ------------------------------------------------------------------------------


def test_mlflow_store_holds_the_params_and_every_epoch_and_a_resume_appends(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    train(out, 3, ("mlflow",))
    client, run_id = mlflow_run(out)
    run = client.get_run(run_id)
    settings = json.loads((out / "config.json").read_text())["config"]
    params = run.data.params
    assert sorted(params) == sorted(settings)  # every setting, once
    # (by hand: lists as JSON, None as Python writes it, numbers as str)
    assert params["hidden"] == "[8]" and params["log"] == '["mlflow"]'
    assert params["lr"] == "0.02" and params["epochs"] == "3" and params["optimizer"] == "adam"
    assert params["schedule"] == "None" and params["out"] == str(out)
    assert run.info.run_name == "run" and run.info.status == "FINISHED"
    assert run.data.tags["backprop_gpu.run_dir"] == str(out.absolute())
    experiment_ = client.get_experiment(run.info.experiment_id)
    assert experiment_.name == "backprop_gpu"
    record = {"tracking_uri": None, "experiment_id": run.info.experiment_id, "run_id": run_id}
    assert json.loads((out / "mlflow.json").read_text()) == record
    assert_mlflow_holds(out, csv_rows(out))

    train(out, 5, (), resume=True)
    assert mlflow_run(out)[1] == run_id  # the same run
    assert [int(r["epoch"]) for r in csv_rows(out)] == [1, 2, 3, 4, 5]
    assert_mlflow_holds(out, csv_rows(out))
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert client.get_run(run_id).info.status == "FINISHED"


def test_mlflow_writer_to_a_given_store_and_experiment(tmp_path: Path) -> None:
    """tracking_uri and experiment given (as a tracking server would be); a resume of the
    folder finds the store in mlflow.json, and another store for it is refused."""
    store = (tmp_path / "elsewhere").as_uri()
    X, y = datasets.spiral_data(30, 3, seed=0)
    folder = tmp_path / "folder"
    with bg.use_backend("numpy"):
        model = experiment.build_model(Config(**TINY), 2, 3)  # type: ignore[arg-type]
        writer = writers.MLflowWriter(folder, store, "mine", "first", params={"lr": 0.5})
        history = model.train(X, y, epochs=2, batch_size=30, print_every=0, seed=0,
                              callbacks=[writer])  # fmt: skip
        again = writers.MLflowWriter(folder)  # (the store: mlflow.json's)
        assert again.store_uri() == store
        history += model.train(X, y, epochs=1, batch_size=30, print_every=0, seed=0,
                               callbacks=[again])  # fmt: skip
    assert not (folder / "mlruns").exists()
    record = json.loads((folder / "mlflow.json").read_text())
    assert record["tracking_uri"] == store
    client = mlflow_tracking.MlflowClient(store)
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "first" and run.data.params == {"lr": "0.5"}
    assert client.get_experiment(run.info.experiment_id).name == "mine"
    losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "loss"))
    assert losses == [(r["epoch"], r["loss"]) for r in history]
    with pytest.raises(ValueError, match="records run .* in the store .*elsewhere"):
        writers.MLflowWriter(folder, (tmp_path / "other").as_uri()).store_uri()


def test_a_resume_whose_mlflow_run_is_gone_says_how_to_start_a_new_one(tmp_path: Path) -> None:
    """(In new processes, as a user runs them: MLflow keeps a store it has opened.)"""
    out = tmp_path / "run"
    resume = [sys.executable, "-m", "backprop_gpu", "train", "--resume", "--out", str(out),
              "--epochs", "2", "--quiet"]  # fmt: skip
    train(out, 1, ("mlflow",))
    run_id = mlflow_run(out)[1]
    shutil.rmtree(out / "mlruns")
    refused = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    lines = [line for line in refused.stderr.splitlines() if "warning: auto" not in line]
    assert len(lines) == 1 and lines[0].startswith(
        f"backprop-gpu: {out / 'mlflow.json'} records the MLflow run {run_id}, which the "
        f"store {(out / 'mlruns').absolute().as_uri()} does not hold ("
    )  # fmt: skip
    assert lines[0].endswith(f"; to log this run folder to a new MLflow run, remove "
                             f"{out / 'mlflow.json'}")  # fmt: skip
    assert [int(r["epoch"]) for r in csv_rows(out)] == [1]  # (refused before training)
    (out / "mlflow.json").unlink()
    done = subprocess.run(resume, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert_mlflow_holds(out, csv_rows(out))  # a new run, caught up: epochs 1 and 2


# --- a stop between the commit and the write ---------------------------------------------


@pytest.mark.parametrize("which", ["tensorboard", "mlflow"])
def test_an_epoch_committed_but_not_logged_is_logged_on_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, which: str
) -> None:
    """Ctrl-C in the instant after epoch 3's commit, before the writer logs it: the folder
    keeps 3 epochs, the store 2; the resume logs epoch 3, then 4 and 5, each once."""
    cls = writers.TensorBoardWriter if which == "tensorboard" else writers.MLflowWriter
    log = cls.log

    def stopped_at_3(self: Any, step: int, values: Any) -> None:
        if step == 3:
            raise KeyboardInterrupt
        log(self, step, values)

    out = tmp_path / "run"
    monkeypatch.setattr(cls, "log", stopped_at_3)
    with pytest.raises(RunInterrupted):
        train(out, 5, (which,))
    assert [int(r["epoch"]) for r in csv_rows(out)] == [1, 2, 3]
    if which == "tensorboard":
        assert sorted(tensorboard_scalars(out / "tensorboard")["loss"])[-1][0] == 2
    else:
        client, run_id = mlflow_run(out)
        assert [m.step for m in client.get_metric_history(run_id, "loss")] == [1, 2]
        assert client.get_run(run_id).info.status == "KILLED"
    monkeypatch.setattr(cls, "log", log)

    train(out, 5, (), resume=True)
    rows = csv_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    if which == "tensorboard":
        assert_tensorboard_holds(out / "tensorboard", rows)
    else:
        assert_mlflow_holds(out, rows)
        assert mlflow_run(out)[0].get_run(mlflow_run(out)[1]).info.status == "FINISHED"


def test_a_resume_with_nothing_missing_writes_no_event_file(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(out, 2, ("tensorboard",))
    train(out, 2, (), resume=True)  # (nothing to train, nothing to catch up)
    assert len(list((out / "tensorboard").iterdir())) == 1


# --- the setting and the packages ----------------------------------------------------------


def test_the_log_setting_is_parsed_validated_and_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mixed = "TensorBoard, mlflow,tensorboard"
    assert Config(log=mixed).log == ("tensorboard", "mlflow")  # type: ignore[arg-type]
    assert Config(log=["mlflow"]).log == ("mlflow",)  # type: ignore[arg-type]
    assert Config(log="").log == () and Config().log == ()  # type: ignore[arg-type]
    assert Config.from_mapping({"log": "mlflow"}).as_dict()["log"] == ["mlflow"]
    with pytest.raises(ConfigError, match=r"log: unknown writer 'wandb'; valid: tensorboard, "
                       "mlflow"):  # fmt: skip
        Config(log="tensorboard,wandb")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="log: expected writer names"):
        Config.from_mapping({"log": 3})

    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--samples", "150", "--hidden", "8", "--backend", "numpy",
            "--quiet", "--no-plots", "--out", str(out)]  # fmt: skip
    with pytest.raises(SystemExit) as stopped:
        cli.main([*args, "--log", "tensorboard,wandb"])
    assert stopped.value.code == 2
    assert "log: unknown writer 'wandb'; valid: tensorboard, mlflow" in capsys.readouterr().err
    assert not out.exists()

    assert cli.main([*args, "--log", "tensorboard"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["log"] == ["tensorboard"]
    capsys.readouterr()
    # a resume keeps the run's writers; another set is another setting, refused
    assert cli.main(["train", "--resume", "--out", str(out), "--log", "mlflow", "--quiet"]) == 1
    assert "log=['mlflow'] is a different setting from the run's log=['tensorboard']" in (
        capsys.readouterr().err)  # fmt: skip


@pytest.mark.parametrize(("which", "module"), [("tensorboard", "tensorboardX"),
                                               ("mlflow", "mlflow")])  # fmt: skip
def test_a_missing_package_names_its_extra_before_anything_is_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    which: str,
    module: str,
) -> None:
    for name in list(sys.modules):
        if name == module or name.startswith(f"{module}."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # (import raises ImportError)
    install = f"pip install 'backprop_gpu[{which}]'"
    writer = writers.for_run([which], tmp_path / "w", {})[0]
    with pytest.raises(ImportError, match=install.replace("[", r"\[").replace("]", r"\]")):
        writer.check()  # (what the fit loop calls before on_train_begin)

    out = tmp_path / "run"
    args = ["train", "--epochs", "1", "--samples", "150", "--hidden", "8", "--backend", "numpy",
            "--quiet", "--no-plots", "--out", str(out), "--log", which]  # fmt: skip
    assert cli.main(args) == 1
    assert install in capsys.readouterr().err
    assert not out.exists()  # nothing was written


@needs_mpi
def test_distributed_rank_0_alone_writes_every_epoch(tmp_path: Path) -> None:
    """Under ``mpiexec -n 2 ... --distributed`` the writers run on rank 0 only: one event
    file and one MLflow run a training, every epoch once, a resume included."""
    out = tmp_path / "run"
    train_args = ["-m", "backprop_gpu", "train", "--samples", "150", "--hidden", "8",
                  "--batch-size", "32", "--distributed", "--out", str(out), "--no-plots",
                  "--quiet"]  # fmt: skip
    first = mpirun(2, sys.executable, *train_args, "--epochs", "2", "--log", "tensorboard,mlflow")
    assert first.returncode == 0, first.stderr
    again = mpirun(2, sys.executable, *train_args, "--epochs", "4", "--resume")
    assert again.returncode == 0, again.stderr
    rows = csv_rows(out)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert len(list((out / "tensorboard").iterdir())) == 2
    assert_tensorboard_holds(out / "tensorboard", rows)
    assert_mlflow_holds(out, rows)
    client, run_id = mlflow_run(out)
    experiment_id = client.get_run(run_id).info.experiment_id
    assert len(client.search_runs([experiment_id])) == 1
