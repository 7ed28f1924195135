"""Sweeps (issue 17): ``backprop-gpu sweep`` and ``experiment.sweep``, their children run in
worker processes: the same numbers as the children run one by one, a killed or Ctrl-C'd
sweep resumed with every child exactly once, failures recorded while the others go on,
Optuna's seeded studies and pruning, and the refusals of bad input (exit status 2)."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop_gpu import checkpoint, cli, experiment, run_folder, sweep
from backprop_gpu.callbacks import Callback

from .conftest import GPU_OK
from .test_interrupt import ctrl_c_works

ROOT = Path(__file__).resolve().parents[1]
HAVE_OPTUNA = importlib.util.find_spec("optuna") is not None
needs_optuna = pytest.mark.skipif(not HAVE_OPTUNA, reason="needs the optuna extra")
on_linux = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc; PR_SET_PDEATHSIG")

# small spiral runs: a child trains in well under a second
QUICK = {"dataset": "spiral", "samples": 150, "hidden": [16], "batch_size": 32, "epochs": 12,
         "backend": "numpy"}  # fmt: skip
# longer children (about 2 s each): a test can stop the sweep while they train
SLOW_TOML = """
dataset = "spiral"
samples = 300
hidden = [32]
epochs = 150
backend = "numpy"

[sweep.grid]
lr = [0.01, 0.02, 0.05]
"""
SLOW_LRS = (0.01, 0.02, 0.05)
SLOW = {"dataset": "spiral", "samples": 300, "hidden": [32], "epochs": 150, "backend": "numpy"}


def rows(run_dir: Path) -> list[dict[str, Any]]:
    """A run folder's metrics, every column but the wall time."""
    return [{k: v for k, v in row.items() if k != "seconds"} for row in jsonl(run_dir)]


def jsonl(run_dir: Path) -> list[dict[str, Any]]:
    text = (run_dir / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def manifest(folder: Path) -> dict[str, Any]:
    return dict(json.loads((folder / "sweep.json").read_text()))


def statuses(folder: Path) -> list[str]:
    return [child["status"] for child in manifest(folder)["children"]]


def results_csv(folder: Path) -> list[dict[str, str]]:
    with (folder / "results.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def command(*args: str, cwd: Path, **popen: Any) -> subprocess.Popen[str]:
    """``backprop-gpu ARGS`` of this checkout, started in ``cwd``."""
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.Popen(
        [sys.executable, "-m", "backprop_gpu", *args], cwd=cwd, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
    )  # fmt: skip


def finished(*args: str, cwd: Path) -> tuple[int, str, str]:
    process = command(*args, cwd=cwd)
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def epochs_written(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_text().count("\n")
    except OSError:
        return 0


def references(tmp_path: Path, base: dict[str, Any], lrs: tuple[float, ...]) -> dict[float, list]:  # type: ignore[type-arg]
    """Each child of an lr grid trained here in this process, one after the other."""
    found = {}
    for lr in lrs:
        out = tmp_path / f"reference-{lr}"
        experiment.run({**base, "lr": lr, "out": str(out)}, report=None, plots=False)
        found[lr] = rows(out)
    return found


# --- the children's numbers ----------------------------------------------------------------


def test_a_parallel_sweep_equals_its_children_run_one_by_one(tmp_path: Path) -> None:
    config = {**QUICK, "sweep": {"grid": {"lr": [0.01, 0.05]}, "repeats": 2}}
    results = experiment.sweep(config, out=tmp_path / "s", parallel=2, report=None, plots=False)
    folder = tmp_path / "s"
    names = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file())
    assert names == ["000-lr=0.01,seed=0", "001-lr=0.01,seed=1", "002-lr=0.05,seed=0",
                     "003-lr=0.05,seed=1"]  # fmt: skip
    assert statuses(folder) == ["done"] * 4
    assert manifest(folder)["parallel"] == 2
    best: dict[tuple[float, int], dict[str, Any]] = {}
    for index, (lr, seed) in enumerate(itertools.product((0.01, 0.05), (0, 1))):
        out = tmp_path / f"one-{lr}-{seed}"
        experiment.run({**QUICK, "lr": lr, "seed": seed, "out": str(out)}, report=None,
                       plots=False)  # fmt: skip
        assert rows(folder / names[index]) == rows(out)  # bit for bit (float64 JSON)
        history = rows(out)
        best[lr, seed] = min(history, key=lambda row: row["val_loss"])  # (the first lowest)
    # the results: each child's best epoch, its group's mean and std over the seeds, ranked
    means = {lr: statistics.fmean(best[lr, s]["val_loss"] for s in (0, 1)) for lr in (0.01, 0.05)}
    stds = {lr: statistics.stdev(best[lr, s]["val_loss"] for s in (0, 1)) for lr in (0.01, 0.05)}
    order = sorted((0.01, 0.05), key=means.__getitem__)
    place = {(lr, s): i for i, (lr, s) in enumerate(itertools.product((0.01, 0.05), (0, 1)))}
    # the children by their own best val_loss (the groups by their mean, ranked apart)
    expected = sorted(best, key=lambda key: (best[key]["val_loss"], place[key]))
    lines = results_csv(folder)
    assert [(float(line["lr"]), int(line["seed"])) for line in lines] == expected
    assert [line["rank"] for line in lines] == ["1", "2", "3", "4"]
    for line, (lr, seed) in zip(lines, expected, strict=True):
        assert int(line["best_epoch"]) == best[lr, seed]["epoch"]
        for metric in sweep.METRICS:
            assert float(line[metric]) == best[lr, seed][metric]
        assert float(line["val_loss_mean"]) == pytest.approx(means[lr], rel=1e-15)
        assert float(line["val_loss_std"]) == pytest.approx(stds[lr], rel=1e-12)
        assert line["status"] == "done" and line["n"] == "2" and line["group"] == f"lr={lr}"
    # what experiment.sweep returns is what the files say
    assert [(c["settings"]["lr"], c["settings"]["seed"]) for c in results["children"]] == expected
    assert results["best"]["value"] == best[expected[0]]["val_loss"]
    assert [g["group"] for g in results["groups"]] == [f"lr={lr}" for lr in order]
    assert results["counts"]["done"] == 4
    table = (folder / "results.md").read_text()
    assert f"| 1 | lr={order[0]} | 2 | {means[order[0]]:.4f} ± {stds[order[0]]:.4f} |" in table
    assert sweep.best_runs(results, 2) == [folder / names[place[p]] for p in expected[:2]]


def test_a_failing_child_does_not_stop_the_sweep(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text(
        'dataset = "spiral"\nsamples = 150\nhidden = [8]\nepochs = 3\noptimizer = "sgd"\n'
        'backend = "numpy"\n[sweep.grid]\nlr = [1e30, 0.5]\n'
    )
    code, out, err = finished("sweep", "--config", "s.toml", "--out", "s", "--no-plots",
                              cwd=tmp_path)  # fmt: skip
    assert code == 1, err
    assert "1 failed of 2 children" in err and "sweep --resume --out s" in err
    children = manifest(tmp_path / "s")["children"]
    assert [c["status"] for c in children] == ["failed", "done"]
    assert children[0]["error"].startswith("NonFiniteLossError: Model.train: the loss became")
    assert f"[1/2] failed      {children[0]['name']}: NonFiniteLossError" in out
    assert len(jsonl(tmp_path / "s" / children[1]["name"])) == 3
    lines = results_csv(tmp_path / "s")
    assert [line["status"] for line in lines] == ["done", "failed"]  # (no metrics: last)
    assert lines[1]["rank"] == "" and lines[1]["error"] == children[0]["error"]
    assert "NonFiniteLossError: Model.train" in (tmp_path / "s" / "results.md").read_text()


# --- stopping and resuming -----------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_references(tmp_path_factory: pytest.TempPathFactory) -> dict[float, list]:  # type: ignore[type-arg]
    return references(tmp_path_factory.mktemp("slow"), SLOW, SLOW_LRS)


def _children_of(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@on_linux
def test_a_killed_sweep_resumed_runs_every_child_exactly_once(
    tmp_path: Path,
    slow_references: dict[float, list],  # type: ignore[type-arg]
) -> None:
    (tmp_path / "s.toml").write_text(SLOW_TOML)
    process = command("sweep", "--config", "s.toml", "--out", "s", "--parallel", "2",
                      "--no-plots", "--quiet", cwd=tmp_path)  # fmt: skip
    folder = tmp_path / "s"
    names = [sweep.child_name(i, {"lr": lr}) for i, lr in enumerate(SLOW_LRS)]

    def two_training() -> bool:
        return sum(epochs_written(folder / name) >= 3 for name in names[:2]) == 2

    wait_for(two_training, "two children training")
    workers = _children_of(process.pid)
    assert len(workers) == 2
    process.kill()  # SIGKILL: the sweep records nothing more
    process.communicate(timeout=60)
    # its workers stop by themselves (SIGTERM from the kernel: PR_SET_PDEATHSIG), cleanly
    wait_for(lambda: not any(_alive(pid) for pid in workers), "the workers to stop", 60)
    assert statuses(folder)[:2] == ["running", "running"]  # (what the killed sweep left)
    for name in names[:2]:
        log = (folder / "logs" / f"{name}.log").read_text().splitlines()
        epochs = len(jsonl(folder / name))
        assert log[-1] == f"interrupted (SIGTERM) after epoch {epochs}"
        assert 3 <= epochs < 150
    code, _, err = finished("sweep", "--resume", "--out", "s", "--parallel", "2", cwd=tmp_path)
    assert code == 0, err
    assert statuses(folder) == ["done"] * 3
    assert [c["name"] for c in manifest(folder)["children"]] == names
    for lr, name in zip(SLOW_LRS, names, strict=True):
        found = jsonl(folder / name)
        assert [row["epoch"] for row in found] == list(range(1, 151))  # each epoch once
        assert rows(folder / name) == slow_references[lr]
        with (folder / name / "metrics.csv").open(newline="") as f:
            assert [int(r["epoch"]) for r in csv.DictReader(f)] == list(range(1, 151))
    assert sorted(int(line["index"]) for line in results_csv(folder)) == [0, 1, 2]
    assert manifest(folder)["resumed"][0]["command"][:2] == ["backprop-gpu", "sweep"]


def test_ctrl_c_stops_every_child_cleanly_and_resume_finishes(
    tmp_path: Path,
    slow_references: dict[float, list],  # type: ignore[type-arg]
) -> None:
    (tmp_path / "s.toml").write_text(SLOW_TOML)
    process = command("sweep", "--config", "s.toml", "--out", "s", "--parallel", "2",
                      "--no-plots", cwd=tmp_path, preexec_fn=ctrl_c_works)  # fmt: skip
    folder = tmp_path / "s"
    names = [sweep.child_name(i, {"lr": lr}) for i, lr in enumerate(SLOW_LRS)]
    wait_for(lambda: all(epochs_written(folder / name) >= 3 for name in names[:2]), "training")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err.endswith(
        "backprop-gpu: interrupted (SIGINT); s keeps its 0 finished children and the "
        "checkpoints of 2 stopped ones: continue with backprop-gpu sweep --resume --out s\n"
    )
    assert statuses(folder) == ["interrupted", "interrupted", "pending"]
    for name in names[:2]:  # each stopped after a whole commit: its checkpoint has every row
        epochs = len(jsonl(folder / name))
        assert checkpoint.load(folder / name / "checkpoint.npz")[1]["epochs_trained"] == epochs
        log = (folder / "logs" / f"{name}.log").read_text().splitlines()
        assert log[-1] == f"interrupted (SIGINT) after epoch {epochs}"
    assert not (folder / names[2]).exists()
    code, out, err = finished("sweep", "--resume", "--out", "s", "--parallel", "2", cwd=tmp_path)
    assert code == 0, err
    threads = sweep.threads_per_child(2)
    each = f"{threads} thread{'s' if threads > 1 else ''} each"
    assert out.startswith(f"sweep s: 3 children (grid), 2 at a time, {each}\n")
    assert statuses(folder) == ["done"] * 3
    for lr, name in zip(SLOW_LRS, names, strict=True):
        assert rows(folder / name) == slow_references[lr]


def test_resume_skips_finished_children(tmp_path: Path) -> None:
    config = {**QUICK, "epochs": 3, "sweep": {"grid": {"lr": [0.01, 0.05]}}}
    experiment.sweep(config, out=tmp_path / "s", report=None, plots=False)
    folder = tmp_path / "s"
    before = {p: p.stat().st_mtime_ns for p in folder.glob("*/metrics.jsonl")}
    lines: list[str] = []
    results = experiment.sweep(out=folder, resume=True, report=lines.append)
    assert (
        lines[0] == "sweep " + str(folder) + ": 2 children (grid, 0 to run), 1 at a time, "
        f"{sweep.threads_per_child(1)} thread{'s' if sweep.threads_per_child(1) > 1 else ''} each"
    )
    assert {p: p.stat().st_mtime_ns for p in folder.glob("*/metrics.jsonl")} == before
    assert results["counts"]["done"] == 2 and len(manifest(folder)["resumed"]) == 1


# --- Optuna ----------------------------------------------------------------------------------

OPTUNA = {**QUICK, "epochs": 10, "sweep": {
    "method": "optuna", "trials": 6, "seed": 3, "startup_trials": 1, "warmup_epochs": 2,
    "random": {"lr": {"distribution": "loguniform", "low": 1e-4, "high": 0.1},
               "hidden": {"distribution": "choice", "values": [[8], [32, 32]]}},
}}  # fmt: skip


@pytest.fixture(scope="module")
def studies(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same seeded Optuna sweep twice, one child at a time."""
    pytest.importorskip("optuna")
    folders = []
    for name in ("first", "second"):
        folder = tmp_path_factory.mktemp("optuna") / name
        experiment.sweep(OPTUNA, out=folder, parallel=1, report=None, plots=False)
        folders.append(folder)
    return folders[0], folders[1]


def trials(folder: Path) -> list[Any]:
    import optuna

    with sweep.quiet_optuna():
        study = optuna.load_study(study_name=sweep.STUDY, storage=sweep._storage(folder))
        return list(study.get_trials())


@needs_optuna
def test_a_seeded_study_gives_the_same_trials_twice(studies: tuple[Path, Path]) -> None:
    first, second = studies
    a, b = trials(first), trials(second)
    assert len(a) == 6
    for x, y in zip(a, b, strict=True):
        assert (x.number, x.params, x.state, x.values, x.intermediate_values) == (
            y.number, y.params, y.state, y.values, y.intermediate_values)  # fmt: skip
    assert len({t.params["lr"] for t in a}) == 6  # (draws, not one value six times)
    assert [c["overrides"] for c in manifest(first)["children"]] == [
        c["overrides"] for c in manifest(second)["children"]
    ]
    for child in manifest(first)["children"]:
        assert rows(first / child["name"]) == rows(second / child["name"])
        trial = a[child["trial"]]
        assert child["overrides"] == {"lr": trial.params["lr"],
                                      "hidden": json.loads(trial.params["hidden"])}  # fmt: skip
        history = rows(first / child["name"])
        # each epoch's val_loss was reported; a finished trial's value is its best
        assert trial.intermediate_values == {r["epoch"]: r["val_loss"] for r in history}
        if child["status"] == "done":
            assert trial.values == [min(r["val_loss"] for r in history)]


@needs_optuna
def test_pruning_stops_a_child_early(studies: tuple[Path, Path]) -> None:
    folder = studies[0]
    children = manifest(folder)["children"]
    found = trials(folder)
    pruned = [c for c in children if c["status"] == "pruned"]
    assert pruned and len(pruned) < len(children)
    history = {c["trial"]: rows(folder / c["name"]) for c in children}

    def pruned_at(number: int, step: int) -> bool:
        """The median rule, from the metrics files: the trial's best val_loss so far is
        worse than the median of the finished earlier trials' val_loss at that epoch."""
        if step < 2:  # warmup_epochs
            return False
        done = [history[t.number] for t in found[:number] if t.state.name == "COMPLETE"]
        if not done:  # startup_trials = 1
            return False
        best = min(r["val_loss"] for r in history[number][:step])
        return bool(best > float(np.median([h[step - 1]["val_loss"] for h in done])))

    for child in children:
        trial, epochs = child["trial"], len(history[child["trial"]])
        stops = [step for step in range(1, 11) if pruned_at(trial, step)]
        if child["status"] == "pruned":  # its metrics end at the epoch the pruner said
            assert stops and epochs == stops[0]
            assert found[trial].state.name == "PRUNED"
            log = (folder / "logs" / f"{child['name']}.log").read_text().splitlines()
            assert log[-1] == f"pruned after epoch {epochs}"
            summary = json.loads((folder / child["name"] / "summary.json").read_text())
            assert summary["epochs"] == epochs  # (it ended as a finished run)
        else:
            assert child["status"] == "done" and stops == [] and epochs == 10
    assert any(len(history[c["trial"]]) < 10 for c in pruned)  # (stopped early)
    lines = results_csv(folder)
    assert {line["status"] for line in lines} == {"done", "pruned"}


@needs_optuna
def test_a_resumed_child_reports_the_epochs_it_had_committed(tmp_path: Path) -> None:
    import optuna

    out = tmp_path / "r"
    experiment.run({**QUICK, "epochs": 3, "out": str(out)}, report=None, plots=False)
    with sweep.quiet_optuna():
        study = optuna.create_study()
        trial = study.ask()
        pruning = sweep.OptunaPruning(trial, "val_loss")
        pruning.report(run_folder.read_metrics(out)[:2])  # (as a stopped child reported)
        pruning.report(run_folder.read_metrics(out))  # (resumed: every committed epoch)
        found = study.trials[0].intermediate_values
    assert found == {row["epoch"]: row["val_loss"] for row in run_folder.read_metrics(out)}


# --- what runs where -------------------------------------------------------------------------


def test_several_gpus_give_each_worker_slot_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sweep.slot_backends(3, 2) == ["cupy:0", "cupy:1", "cupy:0"]
    assert sweep.slot_backends(2, 0) == [None, None]
    monkeypatch.setattr(sweep, "gpu_count", lambda: 2)
    monkeypatch.setattr(sweep, "detect_gpu", lambda: (object(), ""))
    assert (sweep.usable_gpus("auto"), sweep.usable_gpus("cupy")) == (2, 2)
    assert (sweep.usable_gpus("numpy"), sweep.usable_gpus("cupy:1")) == (0, 0)
    monkeypatch.setattr(sweep, "detect_gpu", lambda: (None, "no driver"))
    assert (sweep.usable_gpus("auto"), sweep.usable_gpus("cupy")) == (0, 2)  # (auto falls back)
    monkeypatch.setattr(sweep, "detect_gpu", lambda: (object(), ""))
    config = {**QUICK, "epochs": 2, "backend": "auto", "sweep": {"grid": {"lr": [0.01, 0.02]}}}
    experiment.sweep(config, out=tmp_path / "s", report=None, plots=False)  # parallel: 2 GPUs
    recorded = manifest(tmp_path / "s")
    assert (recorded["gpus"], recorded["parallel"]) == (2, 2)
    backends = sorted(c["backend"] for c in recorded["children"])
    assert backends == ["cupy:0", "cupy:1"]
    for child in recorded["children"]:
        log = (tmp_path / "s" / "logs" / f"{child['name']}.log").read_text()
        assert f" --backend {child['backend']}\n" in log.splitlines(keepends=True)[0]
        if not GPU_OK:  # (here no GPU runs: each child says why)
            assert child["status"] == "failed"
            assert child["error"].startswith(
                f"BackendUnavailableError: backend '{child['backend']}' was requested but "
            )


def test_children_split_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweep, "cores", lambda: 8)
    assert [sweep.threads_per_child(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    env = sweep.worker_env(4)
    assert all(env[name] == "4" for name in sweep.THREAD_VARS)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)
    assert env[sweep.PARENT_VAR] == str(os.getpid())


# --- planning ----------------------------------------------------------------------------------


def test_a_grid_is_its_cartesian_product_in_order() -> None:
    base, spec = sweep.split({"epochs": 5, "sweep": {
        "grid": {"lr": [0.01, 0.02], "hidden": [[16], [32, 32]]}, "repeats": [4, 9]}})  # fmt: skip
    children = sweep.plan(base, spec)
    assert [c.name for c in children] == [
        "000-lr=0.01,hidden=16,seed=4", "001-lr=0.01,hidden=16,seed=9",
        "002-lr=0.01,hidden=32-32,seed=4", "003-lr=0.01,hidden=32-32,seed=9",
        "004-lr=0.02,hidden=16,seed=4", "005-lr=0.02,hidden=16,seed=9",
        "006-lr=0.02,hidden=32-32,seed=4", "007-lr=0.02,hidden=32-32,seed=9",
    ]  # fmt: skip
    assert children[3].overrides == {"lr": 0.01, "hidden": [32, 32], "seed": 9}
    assert children[3].group == "lr=0.01, hidden=[32, 32]" == children[2].group
    assert spec.size() == 8 and spec.goal == "min" and spec.metric == "val_loss"
    _, spec = sweep.split({"seed": 3, "sweep": {"repeats": 3, "metric": "val_accuracy"}})
    assert spec.repeats == [3, 4, 5] and spec.goal == "max"  # (an accuracy: the higher)


def test_random_draws_come_from_the_seeded_generator() -> None:
    space = {
        "lr": {"distribution": "loguniform", "low": 1e-4, "high": 1e-1},
        "dropout": {"distribution": "uniform", "low": 0.0, "high": 0.5},
        "batch_size": {"distribution": "int", "low": 16, "high": 18},
        "activation": {"distribution": "choice", "values": ["relu", "sigmoid"]},
    }
    base, spec = sweep.split({"sweep": {"random": space, "trials": 200, "seed": 7,
                                        "grid": {"l2": [0.0, 1e-4]}}})  # fmt: skip
    children = sweep.plan(base, spec)
    assert spec.method == "random" and len(children) == 400
    rng = np.random.default_rng(7)  # the draws, in order: trial by trial, key by key
    for trial in range(200):
        lr = math.exp(rng.uniform(math.log(1e-4), math.log(1e-1)))
        dropout, batch = rng.uniform(0.0, 0.5), int(rng.integers(16, 18, endpoint=True))
        activation = ("relu", "sigmoid")[int(rng.integers(2))]
        for l2, child in zip((0.0, 1e-4), children[trial::200], strict=True):
            expected = {"l2": l2, "lr": lr, "dropout": dropout, "batch_size": batch,
                        "activation": activation}  # fmt: skip
            assert child.overrides == expected
    sizes = {c.overrides["batch_size"] for c in children}
    assert sizes == {16, 17, 18}  # (both ends drawn)
    assert all(1e-4 <= c.overrides["lr"] <= 0.1 for c in children)


# --- bad input -------------------------------------------------------------------------------

R = "[sweep]\ntrials = 2\n[sweep.random]\n"  # (a random sweep's table, then a distribution)
BAD = [
    ("[sweep]\ngrids = { lr = [0.1] }\n",
     "[sweep]: unknown key(s) grids; valid keys: method, grid, random, trials, seed, repeats, "
     "metric, goal, pruner, startup_trials, warmup_epochs"),
    (R + 'lr = { distribution = "uniform", low = 0.1, high = 0.01 }\n',
     "[sweep.random] lr: low must be below high, got low=0.1, high=0.01"),
    (R + 'lr = { distribution = "loguniform", low = 0.0, high = 0.1 }\n',
     "[sweep.random] lr: a loguniform distribution needs low > 0, got low=0.0"),
    (R + 'batch_size = { distribution = "int", low = 8, high = 64.5 }\n',
     "[sweep.random] batch_size: high must be an integer, got 64.5"),
    (R + 'lr = { distribution = "normal", low = 0.1, high = 1.0 }\n',
     "[sweep.random] lr: distribution must be one of uniform, loguniform, int, choice, got "
     "'normal'"),
    (R + 'lr = { distribution = "uniform", low = 0.1, high = 1.0, step = 0.1 }\n',
     "[sweep.random] lr: unknown key(s) step for a uniform distribution; it takes distribution, "
     "low, high"),
    (R + 'dropout = { distribution = "uniform", low = 0.0, high = 1.5 }\n',
     "[sweep.random] dropout: the value 1.5: dropout: must be < 1, got 1.5"),
    ("[sweep.grid]\nlrr = [0.1]\n", "[sweep.grid]: unknown setting 'lrr'; valid settings: "),
    ('[sweep.grid]\nactivation = ["relu", "tanh"]\n',
     "[sweep] child 001-activation=tanh: activation: unknown activation 'tanh'; valid: relu, "
     "sigmoid, linear"),
    ("[sweep]\nrepeats = 2\n[sweep.grid]\nseed = [1, 2]\n",
     "[sweep] repeats: the seed is also swept (grid or random); keep one"),
    ('[sweep]\nmetric = "f1"\nrepeats = 2\n',
     "[sweep] metric: expected one of val_loss, val_accuracy, loss, accuracy, got 'f1'"),
    ("epochs = 2\n", "[sweep]: missing; a sweep needs a [sweep] table"),
]  # fmt: skip


@pytest.mark.parametrize(("table", "message"), BAD, ids=[m[:40] for _, m in BAD])
def test_bad_input_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], table: str, message: str
) -> None:
    (tmp_path / "s.toml").write_text(table)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith(f"backprop-gpu: error: {message}")
    assert not (tmp_path / "s").exists()  # (refused before anything is made)


def test_too_many_children_refuse_to_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = ", ".join(str(0.001 * (i + 1)) for i in range(1001))
    (tmp_path / "big.toml").write_text(f"[sweep.grid]\nlr = [{values}]\n")
    (tmp_path / "four.toml").write_text("[sweep]\nrepeats = 4\n")
    cases = [("big.toml", [], "1001 children, more than 1000"),
             ("four.toml", ["--max-runs", "3"], "4 children, more than 3")]  # fmt: skip
    for toml, flags, said in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["sweep", "--config", str(tmp_path / toml), "--out", str(tmp_path / "s"),
                      *flags])  # fmt: skip
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == (
            f"backprop-gpu: error: --max-runs: the sweep has {said}; sweep fewer settings or "
            "raise --max-runs\n"
        )
        assert not (tmp_path / "s").exists()


def test_an_existing_folder_is_refused_unless_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "s.toml").write_text("epochs = 2\nsamples = 90\n[sweep]\nrepeats = 1\n")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "notes.txt").write_text("mine")
    args = ["sweep", "--config", str(tmp_path / "s.toml"), "--out", str(tmp_path / "s")]
    assert cli.main(args) == 1
    assert capsys.readouterr().err == (
        f"backprop-gpu: {tmp_path / 's'} already exists; pass --resume to continue the sweep "
        "in it or choose another --out\n"
    )
    assert cli.main([*args, "--resume"]) == 1
    assert capsys.readouterr().err == (
        f"backprop-gpu: {tmp_path / 's'}: not a sweep folder (no sweep.json)\n"
    )
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["notes.txt"]


def test_resume_refuses_another_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.toml").write_text("epochs = 2\nsamples = 90\nbackend = 'numpy'\n"
                                     "[sweep]\nrepeats = 1\n")  # fmt: skip
    (tmp_path / "b.toml").write_text("epochs = 3\nsamples = 90\nbackend = 'numpy'\n"
                                     "[sweep]\nrepeats = 1\n")  # fmt: skip
    out = str(tmp_path / "s")
    assert cli.main(["sweep", "--config", str(tmp_path / "a.toml"), "--out", out, "--quiet",
                     "--no-plots"]) == 0  # fmt: skip
    assert cli.main(["sweep", "--config", str(tmp_path / "b.toml"), "--out", out, "--resume"]) == 1
    assert capsys.readouterr().err == (
        f"backprop-gpu: {out}: its run settings differ from the config's (epochs); resume it "
        "without --config, or start a new sweep with another --out\n"
    )
    assert cli.main(["sweep", "--config", str(tmp_path / "a.toml"), "--out", out, "--resume",
                     "--quiet"]) == 0  # fmt: skip


# --- the callbacks a run takes ---------------------------------------------------------------


def test_run_callbacks_see_committed_epochs_and_may_stop_the_run(tmp_path: Path) -> None:
    out = tmp_path / "r"
    seen: list[tuple[int, list[int], int]] = []

    class StopAtThree(Callback):
        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            assert logs is not None
            saved = checkpoint.load(out / "checkpoint.npz")[1]["epochs_trained"]
            epochs = [int(r["epoch"]) for r in run_folder.read_metrics(out)]
            seen.append((logs["epoch"], epochs, saved))
            if logs["epoch"] == 3:
                self.trainer.stop_training = True

    summary = experiment.run({**QUICK, "epochs": 10, "out": str(out)}, report=None,
                             plots=False, callbacks=[StopAtThree()])  # fmt: skip
    assert seen == [(1, [1], 1), (2, [1, 2], 2), (3, [1, 2, 3], 3)]
    assert summary["epochs"] == 3 and (out / "summary.json").is_file()
    seen.clear()
    experiment.resume(out, report=None, plots=False, callbacks=[StopAtThree()])
    assert [epoch for epoch, _, _ in seen] == list(range(4, 11))
    assert [r["epoch"] for r in run_folder.read_metrics(out)] == list(range(1, 11))


# --- the example -----------------------------------------------------------------------------


def test_the_example_sweep_runs_in_under_a_minute(tmp_path: Path) -> None:
    started = time.perf_counter()
    code, out, err = finished("sweep", "--config", str(ROOT / "examples" / "sweep.toml"),
                              "--out", "s", "--parallel", "2", cwd=tmp_path)  # fmt: skip
    seconds = time.perf_counter() - started
    assert code == 0, err
    assert set(statuses(tmp_path / "s")) == {"done"}
    assert seconds < 60, f"examples/sweep.toml took {seconds:.0f} s"
    assert "sweep done in" in out.splitlines()[-1]
    # the comparison plot of the best children, as `compare --output` draws them
    pytest.importorskip("matplotlib")
    with (tmp_path / "s" / "compare.png").open("rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == (1280, 480)


def test_the_comparison_plot_overlays_the_best_finished_children(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("matplotlib")
    from backprop_gpu import compare

    drawn: dict[str, Any] = {}
    real = compare.plot_runs

    def spy(runs: list[Path], path: Path, labels: list[str]) -> Path:
        drawn.update(runs=list(runs), labels=list(labels))
        return real(runs, path, labels)

    monkeypatch.setattr(compare, "plot_runs", spy)
    monkeypatch.setattr(sweep, "BEST_K", 2)
    config = {**QUICK, "sweep": {"grid": {"lr": [0.01, 0.05, 0.2]}}}
    results = experiment.sweep(config, out=tmp_path / "s", parallel=1, report=None)
    assert drawn["runs"] == sweep.best_runs(results, 2) and len(drawn["runs"]) == 2
    assert drawn["labels"] == [f"#{i + 1} {run.name}" for i, run in enumerate(drawn["runs"])]
    assert results["plot"] == str(tmp_path / "s" / "compare.png")
    none = experiment.sweep(config, out=tmp_path / "t", parallel=1, report=None, plots=False)
    assert "plot" not in none and not (tmp_path / "t" / "compare.png").exists()


# --- review fixes ------------------------------------------------------------------------------


def test_a_distribution_valid_with_some_grid_combination_is_accepted(tmp_path: Path) -> None:
    """The edges of a distribution are checked with the grid's settings: a warmup is valid
    with the grid's cosine schedule (not with the base, which has none), and a distribution
    valid with no combination is still refused."""
    base, spec = sweep.split({**QUICK, "sweep": {
        "method": "random", "trials": 2, "grid": {"schedule": ["cosine", "onecycle"]},
        "random": {"warmup": {"distribution": "int", "low": 1, "high": 3}}}})  # fmt: skip
    sweep.check_space(base, spec)
    base, spec = sweep.split({**QUICK, "sweep": {
        "method": "random", "trials": 2, "grid": {"schedule": ["step", "exponential"]},
        "random": {"warmup": {"distribution": "int", "low": 1, "high": 3}}}})  # fmt: skip
    with pytest.raises(experiment.ConfigError, match=r"\[sweep.random\] warmup: the value 1"):
        sweep.check_space(base, spec)


def test_grid_and_choice_data_paths_are_made_absolute(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    _, spec = sweep.split({**QUICK, "target": "label", "sweep": {
        "grid": {"data": ["a.csv", "/abs/b.csv"]},
        "random": {"val_data": {"distribution": "choice", "values": ["v.csv"]}},
        "method": "random", "trials": 1}})  # fmt: skip
    assert spec.grid["data"] == [str(tmp_path / "a.csv"), "/abs/b.csv"]
    assert spec.random["val_data"].as_dict()["values"] == [str(tmp_path / "v.csv")]


def test_a_failure_during_a_stop_stays_a_failure_with_its_last_attempts_error(
    tmp_path: Path,
) -> None:
    log = tmp_path / "child.log"
    log.write_text("--- 2026-12-02T10:00:00: first\nerror: the first attempt's error\n"
                   "--- 2026-12-02T11:00:00: again\nTraceback...\n"
                   "ValueError: this one\n")  # fmt: skip
    assert sweep.outcome(1, log, stopping=True) == ("failed", "ValueError: this one")
    assert sweep.outcome(130, log, stopping=True) == ("interrupted", None)
    assert sweep.outcome(-signal.SIGKILL, log, stopping=True) == ("interrupted", None)
    assert sweep.outcome(-signal.SIGKILL, log, stopping=False) == ("failed", "killed by SIGKILL")
    assert sweep.outcome(0, log, stopping=True) == ("done", None)


@pytest.mark.parametrize("bad", [0, -3, True])
def test_max_runs_must_be_at_least_one(bad: Any, tmp_path: Path) -> None:
    with pytest.raises(
        experiment.ConfigError, match=rf"--max-runs: must be an integer >= 1, got {bad!r}"
    ):
        experiment.sweep({**QUICK, "sweep": {"grid": {"lr": [0.1]}}}, out=tmp_path / "s",
                         max_runs=bad, report=None)  # fmt: skip
    assert not (tmp_path / "s").exists()


def test_the_children_share_one_mlflow_store_named_after_the_sweep(tmp_path: Path) -> None:
    env = sweep.worker_env(1, tmp_path / "my-sweep")
    if "MLFLOW_TRACKING_URI" not in os.environ:
        assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "my-sweep" / "mlruns").as_uri()
    if "MLFLOW_EXPERIMENT_NAME" not in os.environ:
        assert env["MLFLOW_EXPERIMENT_NAME"] == "my-sweep"
