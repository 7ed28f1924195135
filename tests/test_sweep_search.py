"""Sweeps that search (issue 17): the Optuna pruners ``make_pruner`` builds, a Hyperband
study whose pruned children stop at the epoch the pruner said, a seeded random sweep that
gives the same children twice, a seeded TPE study past its random startup trials that
gives the same trials twice (and is TPE fed with the children's values), and an Optuna
sweep stopped by Ctrl-C then resumed with every trial exactly once."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop_gpu import cli, experiment, sweep
from backprop_gpu.experiment import Config, ConfigError

from .test_interrupt import ctrl_c_works
from .test_sweep import QUICK, command, epochs_written, manifest, statuses, wait_for

optuna = pytest.importorskip("optuna")

LR = {"distribution": "loguniform", "low": 1e-4, "high": 0.1}


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """A run folder's metrics.csv as its text: every column but the wall time."""
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def study_trials(folder: Path) -> list[Any]:
    """The trials of the sweep's study, read from its journal (as anyone would open it)."""
    from optuna.storages.journal import JournalFileBackend

    storage = optuna.storages.JournalStorage(JournalFileBackend(str(folder / "optuna.journal")))
    with sweep.quiet_optuna():
        return list(optuna.load_study(study_name="sweep", storage=storage).get_trials())


def spec_of(table: dict[str, Any], **base: Any) -> tuple[dict[str, Any], sweep.Spec]:
    return sweep.split({**base, "sweep": {"method": "optuna", "trials": 4, **table}})


def run_both(tmp_path: Path, toml: str, *flags: str) -> tuple[Path, Path]:
    """The same sweep twice (``backprop-gpu sweep``), the two side by side."""
    (tmp_path / "s.toml").write_text(toml)
    processes = [
        command("sweep", "--config", "s.toml", "--out", name, "--parallel", "1", "--no-plots",
                "--quiet", *flags, cwd=tmp_path)
        for name in ("first", "second")
    ]  # fmt: skip
    for process in processes:
        _, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
    return tmp_path / "first", tmp_path / "second"


# --- the pruners -----------------------------------------------------------------------------


def test_hyperband_runs_from_warmup_epochs_to_the_most_epochs_a_child_trains() -> None:
    cases = [
        ({}, {"epochs": 10}, 1, 10),  # (defaults: from epoch 1 to the run's epochs)
        ({"warmup_epochs": 0}, {"epochs": 10}, 1, 10),  # (at least one epoch)
        ({"warmup_epochs": 3}, {"epochs": 27}, 3, 27),
        ({}, {}, 1, Config(dataset="spiral").epochs),  # (the run's default epochs)
    ]
    for table, base, least, most in cases:
        space = {"random": {"lr": LR}, "pruner": "hyperband", **table}
        pruner = sweep.make_pruner(spec_of(space, **base)[1], spec_of(space, **base)[0])
        assert isinstance(pruner, optuna.pruners.HyperbandPruner), (table, base)
        assert (pruner._min_resource, pruner._max_resource) == (least, most), (table, base)
        assert pruner._reduction_factor == 3 and pruner._bootstrap_count == 0
    # epochs swept: the most a child can train (the distribution's top, a choice's largest)
    for epochs, most in (
        ({"distribution": "int", "low": 5, "high": 20}, 20),
        ({"distribution": "choice", "values": [4, 30, 8]}, 30),
    ):
        base, spec = spec_of({"random": {"lr": LR, "epochs": epochs}, "pruner": "hyperband"},
                             epochs=6)  # fmt: skip
        pruner = sweep.make_pruner(spec, base)
        assert (pruner._min_resource, pruner._max_resource) == (1, most)
    # the brackets Optuna makes of 1 to 10 epochs (reduction factor 3): floor(log3 10) + 1
    base, spec = spec_of({"random": {"lr": LR}, "pruner": "hyperband"}, epochs=10)
    pruner = sweep.make_pruner(spec, base)
    pruner._try_initialization(optuna.create_study())
    assert pruner._n_brackets == 3
    assert [p._min_early_stopping_rate for p in pruner._pruners] == [0, 1, 2]


def test_the_median_pruner_and_none() -> None:
    for table, startup, warmup in (({}, 5, 0), ({"startup_trials": 0}, 0, 0),
                                   ({"startup_trials": 2, "warmup_epochs": 4}, 2, 4)):  # fmt: skip
        base, spec = spec_of({"random": {"lr": LR}, **table}, epochs=10)
        assert spec.pruner == "median"  # (the default)
        pruner = sweep.make_pruner(spec, base)
        assert type(pruner) is optuna.pruners.MedianPruner, table
        assert (pruner._n_startup_trials, pruner._n_warmup_steps) == (startup, warmup), table
        assert (pruner._percentile, pruner._interval_steps, pruner._n_min_trials) == (50.0, 1, 1)
    base, spec = spec_of({"random": {"lr": LR}, "pruner": "none"}, epochs=10)
    assert type(sweep.make_pruner(spec, base)) is optuna.pruners.NopPruner
    refusals: list[tuple[dict[str, Any], str]] = [
        ({"pruner": "none", "warmup_epochs": 2}, "warmup_epochs: pruner none prunes nothing"),
        ({"pruner": "hyperband", "startup_trials": 2},
         "startup_trials: the median pruner's, not hyperband's"),
        ({"pruner": "asha"}, "pruner: expected one of median, hyperband, none, got 'asha'"),
    ]  # fmt: skip
    for table, message in refusals:
        with pytest.raises(ConfigError) as info:
            spec_of({"random": {"lr": LR}, **table})
        assert str(info.value) == f"[sweep] {message}"


HYPERBAND = {**QUICK, "epochs": 10, "sweep": {
    "method": "optuna", "trials": 7, "seed": 0, "pruner": "hyperband",
    "random": {"lr": LR, "hidden": {"distribution": "choice", "values": [[8], [16]]}},
}}  # fmt: skip


def test_a_hyperband_study_stops_children_at_its_rungs(tmp_path: Path) -> None:
    folder = tmp_path / "s"
    experiment.sweep(HYPERBAND, out=folder, parallel=1, report=None, plots=False)
    children = manifest(folder)["children"]
    found = study_trials(folder)
    assert [c["trial"] for c in children] == [t.number for t in found] == list(range(7))
    kinds = {c["status"] for c in children}
    assert kinds == {"done", "pruned"}, [c["status"] for c in children]  # (both happen)
    # the same decisions, replayed here from the children's metrics by Hyperband of 1 to 10
    # epochs in a study of the same name (its brackets hash the name and the trial number)
    replay = optuna.create_study(
        study_name=sweep.STUDY,
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=10),
    )
    for child, trial in zip(children, found, strict=True):
        history = csv_rows(folder / child["name"])
        epochs = [int(row["epoch"]) for row in history]
        assert epochs == list(range(1, len(epochs) + 1))
        values = {int(row["epoch"]): float(row["val_loss"]) for row in history}
        assert trial.intermediate_values == values  # (each epoch's val_loss, reported once)
        assert trial.last_step == epochs[-1]
        mine = replay.ask()
        stopped = None
        for epoch, value in values.items():
            mine.report(value, epoch)
            if mine.should_prune():
                stopped = epoch
                break
        if child["status"] == "pruned":
            assert trial.state.name == "PRUNED"
            assert stopped == epochs[-1] < 10 and stopped in (1, 3, 9)  # (a rung: 1 * 3**k)
            log = (folder / "logs" / f"{child['name']}.log").read_text().splitlines()
            assert log[-1] == f"pruned after epoch {stopped}"
            replay.tell(mine, state=optuna.trial.TrialState.PRUNED)
        else:
            assert child["status"] == "done" and trial.state.name == "COMPLETE"
            assert stopped is None and epochs == list(range(1, 11))  # (all its epochs)
            assert trial.values == [min(values.values())]
            replay.tell(mine, min(values.values()))


# --- a random sweep, seeded ------------------------------------------------------------------

RANDOM_TOML = """
dataset = "spiral"
samples = 150
batch_size = 32
epochs = 6
backend = "numpy"

[sweep]
method = "random"
trials = 3
seed = 11

[sweep.random]
lr = { distribution = "loguniform", low = 0.001, high = 0.1 }
hidden = { distribution = "choice", values = [[8], [16, 16], [32]] }
"""


def test_a_seeded_random_sweep_gives_the_same_children_twice(tmp_path: Path) -> None:
    first, second = run_both(tmp_path, RANDOM_TOML)
    base, spec = sweep.split(cli._read_toml(tmp_path / "s.toml"))  # (as the CLI reads it)
    planned = sweep.plan(base, spec)
    rng = np.random.default_rng(11)  # the draws, trial by trial, key by key
    expected = []
    for _ in range(3):
        lr = math.exp(rng.uniform(math.log(0.001), math.log(0.1)))
        expected.append({"lr": lr, "hidden": ([8], [16, 16], [32])[int(rng.integers(3))]})
    assert [c.overrides for c in planned] == expected
    assert len({json.dumps(e["hidden"]) for e in expected} | {e["lr"] for e in expected}) > 3
    for folder in (first, second):
        children = manifest(folder)["children"]
        assert [c["overrides"] for c in children] == expected
        assert [c["name"] for c in children] == [c.name for c in planned]
        assert [c["status"] for c in children] == ["done"] * 3
        for child in children:  # each ran with its settings
            config = json.loads((folder / child["name"] / "config.json").read_text())["config"]
            assert {k: config[k] for k in ("lr", "hidden")} == child["overrides"]
    for child in planned:
        a, b = csv_rows(first / child.name), csv_rows(second / child.name)
        assert [int(row["epoch"]) for row in a] == list(range(1, 7))
        assert a == b  # (every number's text: bit for bit)


# --- TPE past its startup trials -------------------------------------------------------------

TPE_TOML = """
dataset = "spiral"
samples = 120
batch_size = 40
hidden = [8]
epochs = 2
backend = "numpy"

[sweep]
method = "optuna"
trials = 12
seed = 5
pruner = "none"

[sweep.random]
lr = { distribution = "loguniform", low = 0.0001, high = 0.5 }
hidden = { distribution = "choice", values = [[8], [16]] }
"""
STARTUP = 10  # TPE's n_startup_trials (Optuna's default): random draws before its model


def test_a_seeded_tpe_study_past_its_startup_gives_the_same_trials_twice(
    tmp_path: Path,
) -> None:
    first, second = run_both(tmp_path, TPE_TOML)
    a, b = study_trials(first), study_trials(second)
    assert len(a) == len(b) == 12
    for x, y in zip(a, b, strict=True):
        assert (x.number, x.params, x.state.name, x.values) == (
            y.number, y.params, "COMPLETE", y.values)  # fmt: skip
    children = manifest(first)["children"]
    assert [c["overrides"] for c in children] == [
        c["overrides"] for c in manifest(second)["children"]
    ]
    for child in children:
        assert csv_rows(first / child["name"]) == csv_rows(second / child["name"])
    # the study is TPE seeded by 5 fed with the children's values, trial by trial: the
    # first 10 the random sampler's draws, the last 2 TPE's model's (not those draws)
    space = {
        "lr": optuna.distributions.FloatDistribution(0.0001, 0.5, log=True),
        "hidden": optuna.distributions.CategoricalDistribution(["[8]", "[16]"]),
    }
    with sweep.quiet_optuna():
        tpe = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=5))
        draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=5))
        for child, trial in zip(children, a, strict=True):
            value = min(float(row["val_loss"]) for row in csv_rows(first / child["name"]))
            assert trial.values == [value]
            mine = tpe.ask(space)
            assert mine.params == trial.params, trial.number
            assert child["overrides"] == {"lr": trial.params["lr"],
                                          "hidden": json.loads(trial.params["hidden"])}  # fmt: skip
            tpe.tell(mine, value)
            drawn = draws.ask(space)
            if trial.number < STARTUP:
                assert drawn.params == trial.params, trial.number
            else:
                assert drawn.params["lr"] != trial.params["lr"], trial.number
            draws.tell(drawn, value)


# --- an Optuna sweep stopped and resumed -----------------------------------------------------

RESUME_TOML = """
dataset = "spiral"
samples = 300
hidden = [32]
epochs = 150
backend = "numpy"

[sweep]
method = "optuna"
trials = 3
seed = 2
pruner = "none"

[sweep.random]
lr = { distribution = "loguniform", low = 0.001, high = 0.05 }
"""


def test_an_interrupted_optuna_sweep_resumed_runs_each_trial_once(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(RESUME_TOML)
    process = command("sweep", "--config", "s.toml", "--out", "s", "--parallel", "2",
                      "--no-plots", "--quiet", cwd=tmp_path, preexec_fn=ctrl_c_works)  # fmt: skip
    folder = tmp_path / "s"

    def two_training() -> bool:
        if not (folder / "sweep.json").is_file():
            return False
        names = [c["name"] for c in manifest(folder)["children"]]
        return len(names) == 2 and all(epochs_written(folder / n) >= 3 for n in names)

    wait_for(two_training, "two children training")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    stopped = manifest(folder)["children"]
    assert [c["status"] for c in stopped] == ["interrupted", "interrupted"]
    assert [c["trial"] for c in stopped] == [0, 1]
    before = study_trials(folder)
    assert [(t.number, t.state.name) for t in before] == [(0, "RUNNING"), (1, "RUNNING")]
    for child in stopped:
        assert 3 <= len(csv_rows(folder / child["name"])) < 150
    resumed = command("sweep", "--resume", "--out", "s", "--parallel", "2", "--quiet",
                      cwd=tmp_path)  # fmt: skip
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    children = manifest(folder)["children"]
    assert statuses(folder) == ["done"] * 3
    assert [c["trial"] for c in children] == [0, 1, 2]  # (each trial once, none asked again)
    assert [c["overrides"] for c in children[:2]] == [c["overrides"] for c in stopped]
    names = [c["name"] for c in children]
    assert len(set(names)) == 3 and names[:2] == [c["name"] for c in stopped]
    runs = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name != "logs")
    assert runs == sorted(names)  # (no other child folder)
    found = study_trials(folder)
    assert [(t.number, t.state.name) for t in found] == [(i, "COMPLETE") for i in range(3)]
    for child, trial in zip(children, found, strict=True):
        history = csv_rows(folder / child["name"])
        assert [int(row["epoch"]) for row in history] == list(range(1, 151))  # each once
        values = {int(row["epoch"]): float(row["val_loss"]) for row in history}
        assert trial.intermediate_values == values
        assert trial.values == [min(values.values())]
        assert child["overrides"] == {"lr": trial.params["lr"]}
    assert len(manifest(folder)["resumed"]) == 1


@pytest.mark.parametrize("pruner", ["median", "hyperband"])
def test_a_pruner_that_could_never_prune_is_refused(pruner: str, tmp_path: Path) -> None:
    pytest.importorskip("optuna")
    lr = {"distribution": "loguniform", "low": 1e-3, "high": 1e-1}
    table = {"method": "optuna", "trials": 2, "seed": 0, "pruner": pruner,
             "warmup_epochs": 10, "random": {"lr": lr}}  # fmt: skip
    config = {"dataset": "spiral", "samples": 60, "hidden": [4], "epochs": 10,
              "backend": "numpy", "sweep": table}  # fmt: skip
    why = (f"warmup_epochs: 10 is not below the most epochs a child trains \\(10\\); "
           f"the {pruner} pruner would prune nothing")  # fmt: skip
    with pytest.raises(ConfigError, match=why):
        experiment.sweep(config, out=tmp_path / "s", report=None)
    assert not (tmp_path / "s").exists()
