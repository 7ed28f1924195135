"""The training controls on the command line and in TOML files: ``--schedule`` (with
``--warmup``, ``--step-size``, ``--gamma``, ``--min-lr``), ``--early-stopping``,
``--clip-norm``, ``--clip-value`` and ``--weight-decay``; each reaches the optimizer or
callback, is recorded in config.json, and resumes exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import cli, experiment, run_folder

from .test_cli import refused_config
from .test_distributed import arrays, mpirun, needs_mpi

# 150 spiral points (3 x 50) in batches of 32: 5 optimizer steps an epoch
TINY = ["--samples", "150", "--hidden", "16", "--batch-size", "32", "--backend", "numpy"]
STEPS = 5
QUIET = ["--quiet", "--no-plots"]


def train(out: Path, *flags: str) -> int:
    return cli.main(["train", *TINY, *QUIET, "--out", str(out), *flags])


def rows(out: Path) -> list[dict[str, float]]:
    """metrics.csv's rows without the seconds column (the one a resume cannot repeat)."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in experiment.read_metrics(out)]


def recorded(out: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((out / "config.json").read_text())["config"]
    return config


def optimizer(out: Path) -> Any:
    model = bg.Model.load(out / "checkpoint.npz")
    assert model.optimizer is not None
    return model.optimizer


def assert_same_run(a: Path, b: Path) -> None:
    """Bit for bit: every metric of every epoch, and every parameter and optimizer state of
    the last and the best checkpoint."""
    assert rows(a) == rows(b)
    for name in ("checkpoint.npz", "best.npz"):
        one, two = arrays(a / name), arrays(b / name)
        assert one.keys() == two.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], two[key], err_msg=f"{name} {key}")


# --- each flag reaches the optimizer or the callback ---------------------------------------


def test_step_schedule_counts_epochs(tmp_path: Path) -> None:
    """--step-size 2 --gamma 0.5: StepDecay(10 steps, 0.5). A row's learning_rate is the
    epoch's last step's (iteration 5e - 1): 0.02 * 0.5 ** ((5e - 1) // 10)."""
    out = tmp_path / "run"
    assert train(out, "--epochs", "5", "--schedule", "step", "--step-size", "2", "--gamma",
                 "0.5") == 0  # fmt: skip
    assert optimizer(out).schedule == bg.StepDecay(step_size=2 * STEPS, gamma=0.5)
    lrs = [r["learning_rate"] for r in rows(out)]
    assert lrs == [0.02 * 0.5 ** ((STEPS * e - 1) // (2 * STEPS)) for e in range(1, 6)]
    config = recorded(out)
    assert (config["schedule"], config["step_size"], config["gamma"]) == ("step", 2, 0.5)
    assert config["decay"] == 0.0  # (no book decay under a schedule)


def test_step_gamma_defaults_to_a_tenth(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", "--schedule", "step", "--step-size", "3") == 0
    assert optimizer(out).schedule == bg.StepDecay(step_size=3 * STEPS, gamma=0.1)


def test_exponential_gamma_is_per_epoch(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "3", "--schedule", "exponential", "--gamma", "0.5") == 0
    schedule = optimizer(out).schedule
    assert schedule == bg.ExponentialDecay(0.5 ** (1 / STEPS))
    lrs = [r["learning_rate"] for r in rows(out)]  # iteration 5e - 1: 0.5 ** (e - 1/5)
    assert lrs == pytest.approx([0.02 * 0.5 ** (e - 1 / STEPS) for e in range(1, 4)], rel=1e-12)


def test_cosine_with_warmup_spans_the_run(tmp_path: Path) -> None:
    """8 epochs, 2 of warmup: CosineDecay(40 steps, 10 of warmup, min_lr); the rows'
    rates are the formula's at steps 4, 9, ..., 39."""
    out = tmp_path / "run"
    assert train(out, "--epochs", "8", "--schedule", "cosine", "--warmup", "2", "--min-lr",
                 "0.001") == 0  # fmt: skip
    assert optimizer(out).schedule == bg.CosineDecay(
        total_steps=8 * STEPS, warmup_steps=2 * STEPS, min_learning_rate=0.001
    )

    def rate(t: int) -> float:
        if t < 10:
            return 0.02 * t / 10
        return 0.001 + (0.02 - 0.001) * (1 + math.cos(math.pi * (t - 10) / 30)) / 2

    lrs = [r["learning_rate"] for r in rows(out)]
    assert lrs == pytest.approx([rate(STEPS * e - 1) for e in range(1, 9)], rel=1e-12)
    assert (recorded(out)["warmup"], recorded(out)["min_lr"]) == (2, 0.001)


def test_onecycle_peaks_at_lr_after_the_warmup(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "5", "--optimizer", "sgd", "--lr", "0.5", "--schedule",
                 "onecycle", "--warmup", "2") == 0  # fmt: skip
    assert optimizer(out).schedule == bg.OneCycle(total_steps=5 * STEPS, pct_start=2 / 5)
    # the peak is step 0.4 * 25 - 1 = 9, the last of epoch 2: that row's rate is lr itself
    assert rows(out)[1]["learning_rate"] == 0.5


def test_onecycle_rises_over_30_percent_by_default(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "4", "--schedule", "onecycle") == 0
    assert optimizer(out).schedule == bg.OneCycle(total_steps=4 * STEPS, pct_start=0.3)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--clip-norm", "0.5"], {"clip_norm": 0.5, "clip_value": None}),
        (["--clip-value", "0.25"], {"clip_norm": None, "clip_value": 0.25}),
        (["--optimizer", "sgd", "--weight-decay", "0.001"], {"weight_decay": 0.001}),
        (["--optimizer", "adamw", "--weight-decay", "0.05"], {"weight_decay": 0.05}),
        (["--optimizer", "adamw"], {"weight_decay": 0.01}),  # AdamW's own default
        (["--optimizer", "sgd"], {"weight_decay": 0.0}),
    ],
)
def test_clipping_and_weight_decay_reach_the_optimizer(
    tmp_path: Path, flags: list[str], expected: dict[str, Any]
) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", *flags) == 0
    found = optimizer(out)
    for key, value in expected.items():
        assert getattr(found, key) == value, key
        assert recorded(out)[key] == value, key  # config.json: the value used


def test_clipping_changes_the_training(tmp_path: Path) -> None:
    """SGD's update is lr * gradient: with the gradients' norm clipped to 1e-3, 5 steps of
    lr 1 move no weight by more than 5e-3 from the seeded initial ones; unclipped, more."""
    plain, clipped = tmp_path / "plain", tmp_path / "clipped"
    assert train(plain, "--epochs", "1", "--optimizer", "sgd") == 0
    assert train(clipped, "--epochs", "1", "--optimizer", "sgd", "--clip-norm", "1e-3") == 0
    initial = experiment.build_model(experiment.Config(hidden=(16,), samples=150), 2, 3)
    moved = {}
    for path in (plain, clipped):
        layer = bg.Model.load(path / "checkpoint.npz").layers[0]
        moved[path.name] = float(np.abs(layer.weights - initial.layers[0].weights).max())
    assert moved["clipped"] <= STEPS * 1e-3 * (1 + 1e-6) < moved["plain"]


def test_early_stopping_stops_and_ends_with_the_best_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adam at lr 0.1: val_loss is lowest at epoch 5, then worse for 3 epochs: patience 3
    stops after epoch 8 of 10. The model the run ends with (the one its plots draw) holds
    epoch 5's weights, which are best.npz's; checkpoint.npz stays epoch 8's (to resume)."""
    ended_with: dict[str, np.ndarray] = {}

    def plots(out: Path, history: Any, model: bg.Model | None, *args: Any) -> list[str]:
        assert model is not None
        ended_with.update({f"{i}": np.array(layer.weights) for i, layer in
                           enumerate(model.layers) if hasattr(layer, "weights")})  # fmt: skip
        return []

    monkeypatch.setattr(experiment, "_plots", plots)
    out = tmp_path / "run"
    flags = ["--lr", "0.1", "--epochs", "10", "--early-stopping", "3"]
    assert cli.main(["train", *TINY, "--quiet", "--out", str(out), *flags]) == 0
    found = rows(out)
    assert len(found) == 8 < 10
    best = min(found, key=lambda r: r["val_loss"])
    assert best["epoch"] == 5 and all(r["val_loss"] > best["val_loss"] for r in found[5:])
    assert "8 epochs (early stopping: no better val_loss in the 3 epochs after epoch 5" in (
        capsys.readouterr().out
    )
    best_model = bg.Model.load(out / "best.npz")
    last_model = bg.Model.load(out / "checkpoint.npz")
    assert (best_model.epochs_trained, last_model.epochs_trained) == (5, 8)
    for i, weights in ended_with.items():
        np.testing.assert_array_equal(weights, best_model.layers[int(i)].weights)
        assert not np.array_equal(weights, last_model.layers[int(i)].weights)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["early_stopping"] == {"patience": 3, "best_epoch": 5, "stopped_epoch": 8}
    assert summary["epochs_run"] == 8 and recorded(out)["early_stopping"] == 3
    assert experiment.evaluate(out)["loss"] == pytest.approx(best["val_loss"], rel=1e-6)


# --- exact resume ----------------------------------------------------------------------------


def interrupt_after(monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    """Ctrl-C (a real SIGINT) arriving during epoch ``epochs``'s commit: the run finishes
    that commit and stops, as it would under a user's Ctrl-C."""
    commit = run_folder.commit

    def commit_then_ctrl_c(*args: Any) -> None:
        commit(*args)
        if args[3] + 1 == epochs:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(run_folder, "commit", commit_then_ctrl_c)


ONECYCLE_SGD = ["--optimizer", "sgd", "--momentum", "0.5", "--schedule", "onecycle",
                "--clip-norm", "0.5", "--weight-decay", "0.01"]  # fmt: skip


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to oneself")
@pytest.mark.parametrize(
    "flags",
    [
        ["--schedule", "cosine", "--warmup", "2", "--min-lr", "0.001"],
        ONECYCLE_SGD,
    ],
    ids=["cosine-warmup", "onecycle-clip-weight-decay"],
)
def test_a_run_interrupted_mid_schedule_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flags: list[str]
) -> None:
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, "--epochs", "8", *flags) == 0
    interrupt_after(monkeypatch, 4)
    assert train(part, "--epochs", "8", *flags) == 128 + signal.SIGINT
    monkeypatch.undo()
    assert len(rows(part)) == 4 and bg.Model.load(part / "checkpoint.npz").epochs_trained == 4
    assert cli.main(["train", "--resume", "--out", str(part), *QUIET]) == 0
    assert_same_run(full, part)
    assert optimizer(part).schedule == optimizer(full).schedule
    assert recorded(part) == {**recorded(full), "out": str(part)}


def test_early_stopping_state_resumes_exactly(tmp_path: Path) -> None:
    """6 epochs (best at 5, one worse since: wait 1), resumed to 10: it stops after epoch 8
    and ends with epoch 5's weights, as the uninterrupted 10-epoch run. (Without the saved
    state the resumed run would count from scratch and train to 10.)"""
    full, part = tmp_path / "full", tmp_path / "part"
    flags = ["--lr", "0.1", "--early-stopping", "3"]
    assert train(full, "--epochs", "10", *flags) == 0
    assert train(part, "--epochs", "6", *flags) == 0
    saved = bg.Model.load(part / "checkpoint.npz").saved_extra["callbacks"]
    (state,) = [v for k, v in saved.items() if k.endswith(":EarlyStopping")]
    assert (state["best_epoch"], state["wait"]) == (5, 1)
    assert cli.main(["train", "--resume", "--out", str(part), "--epochs", "10", *QUIET]) == 0
    assert len(rows(part)) == 8
    assert_same_run(full, part)
    summary = json.loads((part / "summary.json").read_text())
    assert summary["early_stopping"] == {"patience": 3, "best_epoch": 5, "stopped_epoch": 8}


def test_the_best_weights_come_back_after_a_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The best epoch (5) was before the interruption (after 6): the resumed run still ends
    with its weights (from best.npz), as the uninterrupted run does."""
    ended: dict[str, np.ndarray] = {}

    def plots(out: Path, history: Any, model: bg.Model | None, *args: Any) -> list[str]:
        assert model is not None
        ended[out.name] = np.array(model.layers[0].weights)
        return []

    monkeypatch.setattr(experiment, "_plots", plots)
    flags = ["--lr", "0.1", "--early-stopping", "3", "--quiet"]
    for name, epochs in (("full", "10"), ("part", "6")):
        assert cli.main(["train", *TINY, *flags, "--epochs", epochs,
                         "--out", str(tmp_path / name)]) == 0  # fmt: skip
    resumed = ["train", "--resume", "--out", str(tmp_path / "part"), "--epochs", "10", "--quiet"]
    assert cli.main(resumed) == 0
    np.testing.assert_array_equal(ended["part"], ended["full"])
    np.testing.assert_array_equal(
        ended["full"], bg.Model.load(tmp_path / "full" / "best.npz").layers[0].weights
    )


def test_a_resume_of_a_run_early_stopping_ended_trains_no_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The uninterrupted run of more epochs would stop at the same epoch: nothing to do."""
    out = tmp_path / "run"
    assert train(out, "--lr", "0.1", "--epochs", "10", "--early-stopping", "3") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "20", "--quiet"]) == 0
    assert capsys.readouterr().out == (
        f"nothing to do: {out} has ended after 8 epochs (early stopping: no better val_loss "
        "in the 3 epochs after epoch 5, whose weights it keeps)\n"
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_a_schedule_spanning_the_run_refuses_other_epochs_on_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "3", "--schedule", "cosine") == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "6", "--quiet"]) == 1
    assert (
        f"{out}: epochs=6 differs from the run's 3, which its cosine schedule spans (its rate "
        "ends at epoch 3)"
    ) in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 0  # (3: as it is)
    assert "to train more: its cosine schedule spans these epochs, so start a new run" in (
        capsys.readouterr().out
    )


def test_a_step_schedule_extends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """Step and exponential schedules do not depend on the epochs: --epochs may grow."""
    full, part = tmp_path / "full", tmp_path / "part"
    flags = ["--schedule", "step", "--step-size", "2", "--gamma", "0.5"]
    assert train(full, "--epochs", "5", *flags) == 0
    assert train(part, "--epochs", "3", *flags) == 0
    assert cli.main(["train", "--resume", "--out", str(part), "--epochs", "5", *QUIET]) == 0
    assert_same_run(full, part)


def test_a_run_folder_of_an_older_version_resumes(tmp_path: Path) -> None:
    """A config.json without the new keys (written before them) and a checkpoint without
    callback states: resumed with the book's decay, as before."""
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, "--epochs", "4") == 0
    assert train(part, "--epochs", "2") == 0
    path = part / "config.json"
    old = json.loads(path.read_text())
    new_keys = ("schedule", "warmup", "step_size", "gamma", "min_lr", "early_stopping",
                "clip_norm", "clip_value", "weight_decay")  # fmt: skip
    old["config"] = {k: v for k, v in old["config"].items() if k not in new_keys}
    assert old["config"]["decay"] == 1e-4
    path.write_text(json.dumps(old))
    assert cli.main(["train", "--resume", "--out", str(part), "--epochs", "4", *QUIET]) == 0
    assert_same_run(full, part)
    assert optimizer(part).schedule == bg.InverseTimeDecay(1e-4)


# --- TOML keys ---------------------------------------------------------------------------------


def test_the_toml_keys_are_the_flags_names(tmp_path: Path) -> None:
    path = tmp_path / "controls.toml"
    path.write_text(
        'samples = 150\nhidden = [16]\nbatch-size = 32\nepochs = 4\nbackend = "numpy"\n'
        'optimizer = "sgd"\nschedule = "cosine"\nwarmup = 1\nmin-lr = 0.01\n'
        "early-stopping = 5\nclip_value = 0.5\nweight-decay = 0.001\n"
    )
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(path), "--out", str(out), *QUIET]) == 0
    config = recorded(out)
    expected = {"schedule": "cosine", "warmup": 1, "min_lr": 0.01, "early_stopping": 5,
                "clip_value": 0.5, "weight_decay": 0.001, "decay": 0.0}  # fmt: skip
    assert {key: config[key] for key in expected} == expected
    found = optimizer(out)
    assert found.schedule == bg.CosineDecay(4 * STEPS, warmup_steps=STEPS, min_learning_rate=0.01)
    assert (found.clip_value, found.weight_decay) == (0.5, 0.001)
    # the same settings as flags over the file: flags win
    over = tmp_path / "over"
    assert cli.main(["train", "--config", str(path), "--out", str(over), "--warmup", "2",
                     *QUIET]) == 0  # fmt: skip
    assert optimizer(over).schedule.warmup_steps == 2 * STEPS


# --- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--weight-decay", "0.1"], "weight_decay: only the sgd and adamw optimizers take "
         "weight decay, not adam (L2 regularisation for any optimizer: l2)"),
        (["--optimizer", "rmsprop", "--weight-decay", "0"], "weight_decay: only the sgd and "
         "adamw optimizers take weight decay, not rmsprop"),
        (["--optimizer", "sgd", "--weight-decay", "-0.1"], "weight_decay: must be a finite "
         "number >= 0, got -0.1"),
        (["--schedule", "cosine", "--decay", "0.001"], "decay: 0.001 and schedule 'cosine' are "
         "two learning-rate schedules; pass one"),
        (["--schedule", "step"], "step_size: --schedule step needs --step-size E"),
        (["--schedule", "step", "--step-size", "0"], "step_size: must be an integer >= 1, got 0"),
        (["--schedule", "exponential"], "gamma: --schedule exponential needs --gamma"),
        (["--schedule", "step", "--step-size", "2", "--gamma", "1.5"], "gamma: must be a number "
         "in (0, 1], got 1.5"),
        (["--warmup", "2"], "warmup: only --schedule cosine and --schedule onecycle take it, not "
         "no --schedule"),
        (["--schedule", "step", "--step-size", "2", "--min-lr", "0.1"], "min_lr: only --schedule "
         "cosine takes it, not --schedule step"),
        (["--schedule", "cosine", "--gamma", "0.5"], "gamma: only --schedule step and --schedule "
         "exponential take it, not --schedule cosine"),
        (["--schedule", "cosine", "--epochs", "5", "--warmup", "5"], "warmup: 5 epochs, but the "
         "run has 5"),
        (["--schedule", "cosine", "--warmup", "-1"], "warmup: must be an integer >= 0, got -1"),
        (["--schedule", "onecycle", "--warmup", "0"], "warmup: onecycle rises to its peak for "
         ">= 1 epoch, got 0"),
        (["--schedule", "onecycle", "--epochs", "1", "--batch-size", "1000"], "schedule: "
         "--schedule onecycle over 1 epochs of 1 steps: OneCycle: total_steps must be an "
         "integer >= 2"),
        (["--schedule", "onecycle", "--epochs", "2", "--batch-size", "1000"], "warmup: --schedule "
         "onecycle over 2 epochs of 1 steps: OneCycle: pct_start * total_steps - 1 (the step of "
         "the peak) must lie in (0, 1)"),
        (["--schedule", "cosine", "--min-lr", "-1"], "min_lr: must be a finite number >= 0"),
        (["--schedule", "linear"], "invalid choice: 'linear' (choose from 'step', "
         "'exponential', 'cosine', 'onecycle')"),
        (["--early-stopping", "0"], "early_stopping: must be an integer >= 1, got 0"),
        (["--early-stopping", "2.5"], "--early-stopping: invalid int value: '2.5'"),
        (["--clip-norm", "0"], "clip_norm: must be a positive finite number, got 0.0"),
        (["--clip-value", "-1"], "clip_value: must be a positive finite number, got -1.0"),
        (["--clip-norm", "inf"], "clip_norm: must be a positive finite number, got inf"),
        (["--clip-norm", "1", "--clip-value", "1"], "clip_norm and clip_value: pass one of them"),
    ],
)  # fmt: skip
def test_bad_controls_exit_2_naming_the_setting(
    tmp_path: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", *TINY, "--epochs", "2", "--out", str(out), *QUIET, *flags])
    assert exit_info.value.code == 2
    assert message.replace("'", "") in capsys.readouterr().err.replace("'", "")  # 3.12 drops '
    assert not out.exists()  # refused before anything is recorded


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('schedule = "linear"', "schedule: unknown schedule 'linear'; valid: step, exponential, "
         "cosine, onecycle"),
        ('early-stopping = "5"', "early_stopping must be int, got str '5'"),
        ("clip-norm = true", "clip_norm must be int or float, got bool True"),
        ("warmup = 1.5", "warmup must be int, got float 1.5"),
    ],
)  # fmt: skip
def test_bad_control_keys_exit_2_naming_the_key(
    tmp_path: Path, toml: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in refused_config(tmp_path, toml, capsys)


# --- distributed -------------------------------------------------------------------------------


@needs_mpi
def test_schedule_and_early_stopping_under_distributed_equal_one_process(tmp_path: Path) -> None:
    """Two ranks: the same schedule (one step a global batch), the same stop (decided on
    every rank from the reduced val_loss), and weights equal to one process's."""
    flags = ["--lr", "0.1", "--epochs", "10", "--early-stopping", "3", "--schedule", "cosine",
             "--warmup", "1"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert train(one, *flags) == 0
    result = mpirun(2, sys.executable, "-m", "backprop_gpu", "train", *TINY, *QUIET, *flags,
                    "--distributed", "--out", str(two))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((two / "config.json").read_text())["distributed"]["ranks"] == 2
    a, b = rows(one), rows(two)
    assert len(a) == len(b) < 10  # stopped early, at the same epoch
    assert [r["learning_rate"] for r in a] == [r["learning_rate"] for r in b]
    for row_a, row_b in zip(a, b, strict=True):
        for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
            assert row_b[key] == pytest.approx(row_a[key], rel=1e-5), key
    for name in ("checkpoint.npz", "best.npz"):
        many, single = arrays(two / name), arrays(one / name)
        for key in single:
            np.testing.assert_allclose(many[key], single[key], rtol=1e-5, atol=1e-7, err_msg=key)


# --- the precision policy ------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["mixed16", "mixed_bf16"])
def test_precision_is_recorded_and_resumes_exactly(tmp_path: Path, policy: str) -> None:
    """--precision (a TOML key too) builds the model in that policy, config.json and the
    checkpoints record it, and a run resumed half-way equals an uninterrupted one, bit for
    bit (mixed16's loss scale included)."""
    pytest.importorskip("ml_dtypes")
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert train(whole, "--epochs", "4", "--precision", policy) == 0
    assert recorded(whole)["precision"] == policy
    loaded = bg.Model.load(whole / "checkpoint.npz")
    assert loaded.precision == policy
    assert all(str(layer.weights.dtype) == "float32" for layer in loaded.trainable_layers)
    assert train(part, "--epochs", "2", "--precision", policy) == 0
    assert cli.main(["train", "--resume", "--out", str(part), "--epochs", "4", *QUIET]) == 0
    assert_same_run(whole, part)
    f32 = tmp_path / "f32"
    assert train(f32, "--epochs", "4") == 0
    assert rows(f32) != rows(whole)  # (the policy did change the computation)


def test_float32_is_the_default_and_a_resume_keeps_the_policy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1") == 0
    assert recorded(out)["precision"] == "float32"
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--epochs", "2", "--precision",
                     "mixed16", *QUIET]) == 1  # fmt: skip
    assert "precision='mixed16' is a different setting from the run's precision='float32'" in (
        capsys.readouterr().err)  # fmt: skip


def test_an_unknown_precision_exits_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        train(tmp_path / "run", "--precision", "fp8")
    assert exit_info.value.code == 2
    assert "--precision: invalid choice: 'fp8'" in capsys.readouterr().err
    message = refused_config(tmp_path, 'precision = "fp8"', capsys)
    assert "precision" in message and "fp8" in message and "mixed16" in message
