"""The ``backprop-gpu`` command and ``backprop_gpu.experiment``, driven as a user would."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from argparse import Namespace
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import cli, experiment
from backprop_gpu.backend import numpy_backend

from .conftest import GPU_OK, GPU_REASON
from .test_distributed import mpirun, needs_mpi
from .test_interrupt import contents, ctrl_c_works

QUICK = ["--epochs", "3", "--samples", "150", "--hidden", "16", "--batch-size", "32"]


@contextlib.contextmanager
def held_by_another_run(folder: Path) -> Iterator[None]:
    """The run folder's lock held (flock), as another process training in it holds it."""
    import fcntl

    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def command(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"} | (env or {})
    return subprocess.run(
        [sys.executable, "-m", "backprop_gpu", *args],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )  # fmt: skip


# the first stderr line of a command that chose auto here, where CuPy is installed but cannot
# run (a WARNING of the library, in the CLI's one-line form); "" where CuPy runs or is absent
FALLBACK = (
    f"backprop-gpu: warning: auto uses NumPy: {GPU_REASON}\n"
    if not GPU_OK and importlib.util.find_spec("cupy") is not None
    else ""
)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


def quick_run(out: Path, *extra: str) -> int:
    return cli.main(["train", *QUICK, "--out", str(out), "--quiet", *extra])


# --- train and the run folder ----------------------------------------------------------


def test_train_writes_a_complete_run_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = command("train", *QUICK, "--out", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr == FALLBACK  # auto fell back while CuPy is installed: said first
    lines = result.stdout.splitlines()
    assert lines[0].startswith("epoch 1/3: loss ") and "\r" not in result.stdout  # plain lines
    assert lines[-1].startswith("done: 3 epochs in ") and str(out) in lines[-1]
    names = {p.name for p in out.iterdir()}
    assert names == {
        "config.json", "metrics.csv", "metrics.jsonl", "checkpoint.npz", "best.npz",
        "summary.json", "loss.png", "accuracy.png", "decision_boundary.png",
    }  # fmt: skip

    config = json.loads((out / "config.json").read_text())
    expected = experiment.Config(
        epochs=3, samples=150, hidden=(16,), batch_size=32, out=str(out), lr=0.02, decay=1e-4
    )  # every resolved setting: Adam's default learning rate and the book's decay written out
    assert config["config"] == expected.as_dict()
    assert config["backend"]["name"] == ("cupy" if GPU_OK else "numpy")
    assert config["backend"]["reason"].startswith("auto: ")
    assert config["versions"]["numpy"] == np.__version__
    assert config["command"][:2] == ["backprop-gpu", "train"] and "started" in config

    with (out / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    jsonl = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3] == [r["epoch"] for r in jsonl]
    for row, record in zip(rows, jsonl, strict=True):
        assert float(row["val_loss"]) == pytest.approx(record["val_loss"], rel=1e-12)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["final"] == jsonl[-1]
    assert summary["best"]["val_loss"] == min(r["val_loss"] for r in jsonl)
    assert summary["samples_per_second"] > 0 and summary["wall_seconds"] > 0
    model = bg.Model.load(out / "checkpoint.npz")
    assert model.epochs_trained == 3 and model.layers[0].n_neurons == 16


def test_plots_are_real_images(tmp_path: Path) -> None:
    assert quick_run(tmp_path / "run") == 0
    for name in ("loss.png", "accuracy.png", "decision_boundary.png"):
        assert png_size(tmp_path / "run" / name) == (640, 400)
        assert (tmp_path / "run" / name).stat().st_size > 10_000  # drawn, not blank


def test_missing_matplotlib_is_a_note_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m.startswith("matplotlib")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    notes: list[str] = []
    summary = experiment.run(
        {"epochs": 2, "samples": 90, "out": str(tmp_path / "run")}, report=notes.append
    )
    assert summary["plots"] == [] and summary["epochs"] == 2
    assert (
        notes[-1]
        == "note: plots skipped (matplotlib missing: the plot extra, pip install '.[plot]')"
    )
    assert not list((tmp_path / "run").glob("*.png"))


def test_every_dataset_trains(tmp_path: Path) -> None:
    for dataset in ("vertical", "sine", "digits"):
        out = tmp_path / dataset
        assert quick_run(out, "--dataset", dataset, "--no-plots") == 0
        summary = json.loads((out / "summary.json").read_text())
        assert summary["dataset"] == dataset and summary["epochs"] == 3
    assert experiment.Config().dataset == "spiral"


def test_library_use_returns_the_summary(tmp_path: Path) -> None:
    summary = experiment.run(
        {"epochs": 2, "samples": 90, "hidden": [8, 8], "optimizer": "sgd", "momentum": 0.5,
         "out": str(tmp_path / "a")},
        report=None, plots=False,
    )  # fmt: skip
    assert summary["epochs"] == 2 and summary["run"] == str(tmp_path / "a")
    saved = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert saved["hidden"] == [8, 8] and saved["optimizer"] == "sgd" and saved["momentum"] == 0.5


def test_progress_bar_on_a_terminal_plain_lines_otherwise(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    experiment.run({"epochs": 3, "samples": 90, "out": str(tmp_path / "a")}, progress=True)
    captured = capsys.readouterr()
    assert "epoch 1/3" not in captured.out  # the bar replaces the per-epoch lines
    assert "3/3" in captured.err and "epoch" in captured.err  # tqdm draws on stderr
    experiment.run({"epochs": 3, "samples": 90, "out": str(tmp_path / "b")}, progress=False)
    assert capsys.readouterr().out.count("\n") >= 3


def test_a_killed_run_keeps_its_history(tmp_path: Path) -> None:
    seen: list[str] = []

    def killed_after_two(line: str) -> None:
        seen.append(line)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        experiment.run(
            {"epochs": 5, "samples": 90, "out": str(tmp_path / "a")}, report=killed_after_two
        )
    rows = experiment.read_metrics(tmp_path / "a")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert bg.Model.load(tmp_path / "a" / "checkpoint.npz").epochs_trained == 2


def test_ctrl_c_exits_130_naming_the_command_that_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"}
    args = [sys.executable, "-m", "backprop_gpu", "train", *QUICK[2:], "--epochs", "100000",
            "--no-plots", "--quiet", "--out", str(out)]  # fmt: skip
    process = subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=ctrl_c_works
    )
    deadline = time.monotonic() + 60
    while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.05)  # (written atomically after every epoch)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    assert f"continue with backprop-gpu train --resume --out {out}" in err
    assert bg.Model.load(out / "checkpoint.npz").epochs_trained >= 1


def test_ctrl_c_names_the_folder_it_made_without_out(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"}
    args = [sys.executable, "-m", "backprop_gpu", "train", *QUICK[2:], "--epochs", "100000",
            "--no-plots", "--quiet"]  # fmt: skip
    process = subprocess.Popen(
        args, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path, preexec_fn=ctrl_c_works
    )
    deadline = time.monotonic() + 60
    while not list(tmp_path.glob("runs/*/checkpoint.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("spiral-")
    epochs = len(experiment.read_metrics(made))
    assert err.startswith(FALLBACK)
    assert err.removeprefix(FALLBACK).strip() == (
        f"backprop-gpu: interrupted (SIGINT) after epoch {epochs}; runs/{made.name} keeps its "
        f"metrics and checkpoint: continue with backprop-gpu train --resume --out "
        f"runs/{made.name} --quiet --no-plots"
    )  # (the output flags are repeated: a run folder keeps settings, not how to show them)


def test_a_nonfinite_run_exits_1_in_one_line_and_saves_no_nonfinite_model(
    tmp_path: Path,
) -> None:
    """SGD at lr 1e30 (finite in float32) on one batch an epoch: epoch 1's loss is finite
    (computed before the update) but the update makes the weights NaN."""
    out = tmp_path / "run"
    result = command("train", *QUICK, "--batch-size", "1000", "--optimizer", "sgd", "--lr",
                     "1e30", "--out", str(out), "--no-plots", "--quiet")  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith(FALLBACK)
    (line,) = result.stderr.removeprefix(FALLBACK).splitlines()  # no traceback, no NumPy warnings
    assert line.startswith("backprop-gpu: ") and str(out) in line
    for name in ("checkpoint.npz", "best.npz"):
        if (out / name).exists():
            model = bg.Model.load(out / name)
            for layer in model.trainable_layers:
                assert np.isfinite(bg.to_numpy(layer.weights)).all(), name
    rows = experiment.read_metrics(out)
    assert all(np.isfinite(r["loss"]) for r in rows)
    saved = bg.Model.load(out / "checkpoint.npz").epochs_trained if rows else 0
    assert [r["epoch"] for r in rows] == list(range(1, saved + 1))


@needs_mpi
def test_a_nonfinite_distributed_run_exits_1_in_one_line_a_rank(tmp_path: Path) -> None:
    """The same under ``mpiexec -n 2 ... --distributed``: every rank raises the same error
    (the check rides on the epoch's reduction) and prints the same line, naming the folder
    and the epoch it keeps; no traceback, no MPI_Abort. (lr 1e20: epoch 1 ends finite, its
    validation loss too; epoch 2's validation outputs overflow.)"""
    out = tmp_path / "run"
    result = mpirun(2, sys.executable, "-m", "backprop_gpu", "train", *QUICK, "--batch-size",
                    "1000", "--optimizer", "sgd", "--lr", "1e20", "--distributed", "--out",
                    str(out), "--no-plots", "--quiet")  # fmt: skip
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line and not line.startswith(
        "backprop_gpu.distributed: 2 rank(s)") and f"{line}\n" != FALLBACK]  # fmt: skip
    assert len(lines) == 2 and lines[0] == lines[1], result.stderr
    assert lines[0].startswith("backprop-gpu: Model.train: ")
    assert lines[0].endswith(f"the run folder {out} keeps epoch 1, the last finite one")
    assert bg.Model.load(out / "checkpoint.npz").epochs_trained == 1
    assert [r["epoch"] for r in experiment.read_metrics(out)] == [1]


def test_evaluate_and_predict_refuse_a_nonfinite_model_in_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    model = bg.Model.load(out / "best.npz")
    model.layers[2].weights[0, 0] = np.nan
    model.save(out / "best.npz")  # (as a run before this check could leave it)
    np.save(tmp_path / "x.npy", np.zeros((4, 2), dtype=np.float32))
    for args in (["evaluate", str(out)], ["predict", str(out), "--input", str(tmp_path / "x.npy")]):
        result = command(*args)
        assert result.returncode == 1 and result.stdout == ""
        assert result.stderr == FALLBACK + (
            f"backprop-gpu: {out / 'best.npz'}: the weights of layer 2 (Dense) hold NaN or "
            "infinite values; not usable\n"
        )
    model.layers[2].weights[:, 0], model.layers[2].weights[:, 1] = 3e38, -3e38  # finite
    model.save(out / "best.npz")  # but the logits overflow float32
    result = command("evaluate", str(out))
    assert result.returncode == 1
    assert result.stderr in (
        f"{FALLBACK}backprop-gpu: {out / 'best.npz'}: the model's loss on the validation data "
        f"is {v}\n"
        for v in ("nan", "inf")
    )
    assert command("evaluate", str(out), "--last").returncode == 0  # checkpoint.npz is fine


# --- resume and refusals ------------------------------------------------------------------


def test_resume_continues_exactly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    settings = ["--samples", "150", "--hidden", "16", "--dropout", "0.2", "--no-plots", "--quiet"]
    assert cli.main(["train", *settings, "--epochs", "4", "--out", str(tmp_path / "full")]) == 0
    assert cli.main(["train", *settings, "--epochs", "2", "--out", str(tmp_path / "part")]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(tmp_path / "part")]) == 0
    assert "done: 2 epochs (4 in all) in " in capsys.readouterr().out
    full = experiment.read_metrics(tmp_path / "full")
    part = experiment.read_metrics(tmp_path / "part")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in part] == strip
    with open(tmp_path / "part" / "metrics.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # appended, one header
    recorded = json.loads((tmp_path / "part" / "config.json").read_text())
    assert recorded["config"]["epochs"] == 4 and recorded["resumed"][0]["from_epoch"] == 2
    # the summary: the run's epochs in all, final and best rows; this call's epochs and speed
    summary = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert (summary["epochs"], summary["epochs_run"]) == (4, 2)
    assert summary["samples_per_second"] > 0 and summary["wall_seconds"] > 0
    assert summary["final"]["epoch"] == 4 and summary["final"]["loss"] == full[-1]["loss"]


def test_resume_with_nothing_to_do_says_how_to_train_more(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    before = contents(out)
    for epochs in ([], ["--epochs", "3"], ["--epochs", "2"]):
        capsys.readouterr()
        assert cli.main(["train", "--resume", "--out", str(out), "--quiet", *epochs]) == 0
        assert capsys.readouterr().out == (
            f"nothing to do: {out} already has 3 epochs (--epochs is the total to reach); to "
            f"train more: backprop-gpu train --resume --out {out} --epochs 6\n"
        )
    assert contents(out) == before  # (config.json too)


def test_one_epoch_is_singular(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots", "--epochs", "1") == 0
    assert capsys.readouterr().out.startswith("done: 1 epoch in ")
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--epochs", "2"]) == 0
    assert capsys.readouterr().out.startswith("done: 1 epoch (2 in all) in ")
    one = tmp_path / "one"
    assert quick_run(one, "--no-plots", "--epochs", "1") == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(one), "--quiet"]) == 0
    assert capsys.readouterr().out == (
        f"nothing to do: {one} already has 1 epoch (--epochs is the total to reach); to "
        f"train more: backprop-gpu train --resume --out {one} --epochs 2\n"
    )


def test_leftover_temporary_files_are_removed_by_the_next_resume(tmp_path: Path) -> None:
    """What a killed save leaves (the temporaries of checkpoint.save and run_folder.write_json)
    goes when the folder is next taken; other files stay."""
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    leftovers = [".checkpoint.npz.k2j4h1x0.tmp", ".best.npz.0a9b8c7d.tmp", ".config.json.tmp",
                 ".summary.json.tmp", ".metrics.jsonl.tmp"]  # fmt: skip
    for name in [*leftovers, ".notes.tmp", "mine.txt"]:
        (out / name).write_bytes(b"PK\x03\x04 torn")
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(out), "--quiet"]) == 0
    names = {p.name for p in out.iterdir()}
    assert not names & set(leftovers) and {".notes.tmp", "mine.txt"} <= names
    assert [r["epoch"] for r in experiment.read_metrics(out)] == [1, 2, 3, 4]


def test_resume_repairs_torn_rows_and_the_duplicates_of_older_versions(tmp_path: Path) -> None:
    """A row cut by a kill (no newline) is dropped; an epoch written twice (by a resume
    before this repair) is kept once; metrics.csv is rewritten to match."""
    settings = ["--samples", "150", "--hidden", "16", "--no-plots", "--quiet"]
    assert cli.main(["train", *settings, "--epochs", "4", "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "run"
    assert cli.main(["train", *settings, "--epochs", "3", "--out", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    (out / "metrics.jsonl").write_text("".join([*lines[:2], lines[1], lines[2]]) + '{"epoch": 4')
    with (out / "metrics.csv").open("a") as f:
        f.write("4,0.9")
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(out), "--quiet"]) == 0
    rows, full = experiment.read_metrics(out), experiment.read_metrics(tmp_path / "full")
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in rows] == strip
    with open(out / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4]


def test_a_whole_last_row_without_its_newline_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    rows = experiment.read_metrics(out)
    (out / "metrics.jsonl").write_bytes((out / "metrics.jsonl").read_bytes().rstrip(b"\n"))
    assert experiment.read_metrics(out) == rows and len(rows) == 3
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(out), "--quiet"]) == 0
    assert [r["epoch"] for r in experiment.read_metrics(out)] == [1, 2, 3, 4]
    assert experiment.read_metrics(out)[:3] == rows


def test_the_interrupt_message_says_what_the_folder_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(epochs None: a resume stopped before it read the checkpoint)"""
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")
    resume = f"continue with backprop-gpu train --resume --out {out}"
    expected = {
        None: f"in epoch 1; {out} holds no epoch yet: {resume} (from epoch 1)",
        2: f"after epoch 2; {out} keeps its metrics and checkpoint: {resume}",
    }
    for epochs, signum in ((None, signal.SIGINT), (2, signal.SIGTERM)):
        if epochs:
            (out / "checkpoint.npz").write_bytes(b"")
        code = cli._interrupted(experiment.RunInterrupted(out, epochs, signum), Namespace())
        assert code == 128 + signum
        name = signal.Signals(signum).name
        assert (
            capsys.readouterr().err == f"\nbackprop-gpu: interrupted ({name}) {expected[epochs]}\n"
        )


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")
def test_a_run_folder_in_use_is_refused_to_a_second_writer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--resume while another process still trains in the folder (holding its lock) is
    refused, and leaves the folder as it was."""
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    before = contents(out)
    with held_by_another_run(out):  # as the other process's run does
        capsys.readouterr()
        assert cli.main(["train", "--resume", "--epochs", "5", "--out", str(out)]) == 1
        assert "another process is training in this run folder" in capsys.readouterr().err
    assert contents(out) == before
    assert cli.main(["train", "--resume", "--epochs", "5", "--out", str(out), "--quiet"]) == 0


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")
def test_a_refused_run_leaves_the_folder_another_process_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two runs of one new --out at once: the second is refused and, though the folder holds
    nothing yet, leaves it to the first (which was about to write its config.json)."""
    out = tmp_path / "run"
    out.mkdir()
    with held_by_another_run(out):  # the first run, just started
        assert quick_run(out, "--no-plots") == 1
        assert "another process is training in this run folder" in capsys.readouterr().err
        assert out.is_dir()
    assert quick_run(out, "--no-plots") == 0  # and once it is gone, the folder is free


@pytest.mark.skipif(sys.platform == "win32", reason="no flock on Windows")
def test_a_new_run_in_a_folder_that_trains_now_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """train --out R3 while another process trains in R3: not "pass --resume" (which would
    be refused too, for now) but that it trains now, and what to do."""
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    before = contents(out)
    with held_by_another_run(out):  # as the other process's run does
        capsys.readouterr()
        assert quick_run(out, "--no-plots") == 1
        assert capsys.readouterr().err == (
            f"backprop-gpu: {out}: another process is training in this run folder now; wait "
            "for it to end (then --resume continues it)\n"
        )
    assert contents(out) == before


def test_existing_run_folder_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    before = contents(out)
    capsys.readouterr()
    assert quick_run(out) == 1
    assert "already exists and is not empty; pass --resume" in capsys.readouterr().err
    assert contents(out) == before


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("no-checkpoint", [], "holds epochs 1 to 3 but there is no checkpoint.npz; the run folder"),
        (
            "damaged",
            [],
            'line 2 is not a metrics row (\'{"epoch": 2, "lo\\x00\\x00ss": 1}\'); the file',
        ),
        ("none", [], "run: no such folder"),
        (
            "run",
            ["--hidden", "32"],
            "hidden=[32] is a different architecture from the run's hidden=[16]",
        ),
        ("run", ["--lr", "0.5"], "lr=0.5 is a different setting"),
    ],
)
def test_bad_resume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    if setup in ("run", "no-checkpoint"):
        assert quick_run(out, "--no-plots") == 0
    if setup == "no-checkpoint":  # (what no kill leaves: a resume cannot cut 3 rows)
        (out / "checkpoint.npz").unlink()
    if setup == "damaged":
        assert quick_run(out, "--no-plots") == 0
        lines = (out / "metrics.jsonl").read_bytes().splitlines(keepends=True)
        lines[1] = b'{"epoch": 2, "lo\0\0ss": 1}\n'  # (a line damaged on disk)
        (out / "metrics.jsonl").write_bytes(b"".join(lines))
    before = contents(out)
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", *args]) == 1
    assert message in capsys.readouterr().err
    assert contents(out) == before


def test_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("not a folder")
    assert quick_run(tmp_path / "file" / "run") == 1
    assert "cannot write the run folder" in capsys.readouterr().err


# --- usage errors: exit code 2 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--dataset", "mnist"], "invalid choice: 'mnist' (choose from 'spiral', 'vert"),
        (
            ["train", "--optimizer", "lbfgs"],
            "choose from 'sgd', 'adam', 'adamw', 'rmsprop', 'adagrad'",
        ),
        (["train", "--activation", "tanh"], "choose from 'relu', 'sigmoid', 'linear'"),
        (["train", "--hidden", "64,x"], "hidden: expected comma-separated layer sizes"),
        (
            ["train", "--hidden", "128,,64"],
            "hidden: expected comma-separated layer sizes such as 64,64; got '128,,64'",
        ),
        (["train", "--hidden", "64,"], "sizes such as 64,64; got '64,'"),
        (["train", "--hidden", ""], "sizes such as 64,64; got ''"),
        (["train", "--hidden", " "], "sizes such as 64,64; got ' '"),
        (["train", "--hidden", "0"], "hidden: expected positive layer sizes"),
        (["train", "--epochs", "ten"], "invalid int value: 'ten'"),
        (["train", "--momentum", "0.9"], "only the sgd optimizer has momentum"),
        (["train", "--resume"], "--resume needs --out RUN_DIR"),
        (["train", "--seed", "-1"], "seed: must be an integer >= 0, got -1"),
        (["train", "--dropout", "1.5"], "dropout: must be < 1, got 1.5"),
        (
            ["train", "--optimizer", "sgd", "--lr", "1e39"],
            "lr: 1e+39 overflows float32, the models' dtype (largest 3.403e+38)",
        ),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_usage_errors_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    assert message.replace("'", "") in capsys.readouterr().err.replace("'", "")  # 3.12 drops '


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["train", "--lerning-rate", "0.1"],
            "--lerning-rate 0.1; --lerning-rate: the learning rate is --lr",
        ),
        (
            ["train", "--learning-rate=0.1"],
            "--learning-rate=0.1; --learning-rate: the learning rate is --lr",
        ),
        (["train", "--hiden", "8"], "--hiden 8; --hiden: did you mean --hidden?"),
        (
            ["train", "--batch_size", "8", "--no-plts"],
            "--batch_size 8 --no-plts; --batch_size: did you mean --batch-size?; --no-plts: did "
            "you mean --no-plots?",
        ),
        (
            ["train", "--weight_decay", "0.1"],
            "--weight_decay 0.1; --weight_decay: did you mean --weight-decay?",
        ),
        (["train", "--verbose"], "--verbose"),  # (nothing close)
        (
            ["predict", "run", "--input", "x.npy", "--ouput", "y"],
            "--ouput y; --ouput: did you mean --output?",
        ),
        (["evaluate", "run", "--lats"], "--lats; --lats: did you mean --last?"),
        (["--json", "info"], "--json; --json: put it after the command, info"),
    ],
)
def test_an_unknown_flag_shows_its_commands_usage_and_the_closest_flag(
    args: list[str], error: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(args)
    assert exit_info.value.code == 2
    command = next(arg for arg in args if not arg.startswith("-"))
    err = capsys.readouterr().err
    assert err.startswith(f"usage: backprop-gpu {command} [-h]"), err  # the command's usage
    assert err.endswith(f"\nbackprop-gpu {command}: error: unrecognized arguments: {error}\n")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('datset = "spiral"', "unknown key(s) datset; valid keys: dataset, hidden"),
        ('epochs = "ten"', "epochs must be int, got str 'ten'"),
        ("lr = true", "lr must be int or float, got bool True"),
        ("hidden = [64, 1.5]", "hidden: expected layer sizes"),
        ("epochs = [", "not valid TOML"),
    ],
)
def test_bad_config_files_name_the_key(
    tmp_path: Path, toml: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert message in refused_config(tmp_path, toml, capsys)


def refused_config(tmp_path: Path, toml: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``train --config`` of a file holding ``toml``: exits 2 leaving no run folder; its
    message."""
    path = tmp_path / "sweep.toml"
    path.write_text(toml + "\n")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert not (tmp_path / "run").exists()
    return capsys.readouterr().err


def test_a_config_file_that_is_not_utf8_is_a_usage_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes("epochs = 3 # größer\n".encode("latin-1"))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"backprop-gpu: error: --config {path}: not UTF-8 text (byte 15: invalid start byte); "
        "save it as UTF-8\n"
    )
    assert not (tmp_path / "run").exists()


def test_a_data_set_larger_than_the_memory_is_refused_before_allocating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--samples", "1000000000000") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "backprop-gpu: samples: 1000000000000 spiral samples need at least 35,762.8 GiB of "
        "memory for the data alone, and this machine has "
    )
    assert err.endswith(" GiB; choose fewer samples\n") and not out.exists()


def test_flags_override_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "sweep.toml"
    path.write_text('dataset = "vertical"\nhidden = [12]\nepochs = 9\nbatch-size = 30\n')
    assert cli.main(["train", "--config", str(path), "--epochs", "2", "--out",
                     str(tmp_path / "run"), "--quiet", "--no-plots"]) == 0  # fmt: skip
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (saved["dataset"], saved["hidden"], saved["epochs"]) == ("vertical", [12], 2)
    assert saved["batch_size"] == 30  # keys may be spelt like the flags, with a hyphen


def test_the_shipped_sweep_file_works(tmp_path: Path) -> None:
    sweep = Path(__file__).resolve().parents[1] / "examples" / "spiral.toml"
    out = tmp_path / "run"
    args = ["train", "--config", str(sweep), "--epochs", "2", "--out", str(out), "--quiet"]
    assert cli.main([*args, "--no-plots"]) == 0
    assert json.loads((out / "config.json").read_text())["config"]["epochs"] == 2


def test_the_environment_variable_picks_the_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BACKPROP_GPU_BACKEND", "numpy")
    assert quick_run(tmp_path / "a", "--no-plots") == 0
    assert json.loads((tmp_path / "a" / "config.json").read_text())["config"]["backend"] == "numpy"
    monkeypatch.setenv("BACKPROP_GPU_BACKEND", "gpu")
    with pytest.raises(SystemExit) as exit_info:
        quick_run(tmp_path / "b")
    assert exit_info.value.code == 2
    assert "backend: unknown backend 'gpu' (from BACKPROP_GPU_BACKEND?)" in capsys.readouterr().err
    assert quick_run(tmp_path / "c", "--backend", "numpy", "--no-plots") == 0  # the flag wins


def test_a_run_may_name_a_gpu() -> None:
    """--backend / the config take cupy:N (checked against the GPUs when the run starts)."""
    assert experiment.Config(backend="cupy:3").backend == "cupy:3"
    for bad in ("cupy:", "cupy:one", "gpu:0", "cupy:N"):
        with pytest.raises(experiment.ConfigError, match=r"valid: auto, numpy, cupy, cupy:N"):
            experiment.Config(backend=bad)


def test_a_run_that_fails_at_once_leaves_no_empty_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # the data extra is missing
    out = tmp_path / "run"
    assert quick_run(out, "--dataset", "digits") == 1
    err = capsys.readouterr().err
    assert "load_digits needs scikit-learn: install the data extra" in err
    assert "Traceback" not in err and not out.exists()


def test_help_shows_defaults() -> None:
    result = command("train", "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    for expected in ("(default: spiral)", "(default: 300)", "(default: 64,64)", "--resume"):
        assert expected in text


def test_train_says_first_that_auto_falls_back_with_cupy_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CuPy too old (13.6): train's first line, on stderr, says auto uses NumPy and why,
    before any epoch; a named --backend numpy says nothing."""
    from backprop_gpu.backend import select

    from .test_backend import _fake_cupy

    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(version="13.6.0"))
    monkeypatch.setattr(select, "_detected", None)
    monkeypatch.setattr(select, "_fallback_logged", False)
    monkeypatch.delenv("BACKPROP_GPU_BACKEND", raising=False)
    assert cli.main(["train", *QUICK, "--out", str(tmp_path / "run"), "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert captured.err == (
        "backprop-gpu: warning: auto uses NumPy: CuPy 13.6.0 is installed but backprop_gpu "
        "needs CuPy >= 14.0 (it uses cupy.astype, cupy.concat and asarray(copy=), new in CuPy "
        "14); upgrade: pip install -U cupy-cuda12x (or cupy-cuda13x, for a CUDA 13 driver)\n"
    )
    assert captured.out.startswith("epoch 1/3: ")
    monkeypatch.setattr(select, "_fallback_logged", False)
    assert cli.main(["train", *QUICK, "--out", str(tmp_path / "run2"), "--no-plots",
                     "--backend", "numpy"]) == 0  # fmt: skip
    assert capsys.readouterr().err == ""


def test_cupy_without_a_gpu_is_a_failure_exit_1(tmp_path: Path) -> None:
    if GPU_OK:
        pytest.skip("this machine has a GPU")
    result = command("train", *QUICK, "--backend", "cupy", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "'cupy' was requested but cannot run" in result.stderr
    assert result.stderr.rstrip().endswith("; here: --backend numpy")
    env = {"BACKPROP_GPU_BACKEND": "cupy:0"}
    from_env = command("train", *QUICK, "--out", str(tmp_path / "run2"), env=env)
    assert from_env.returncode == 1 and "'cupy:0' was requested but cannot run" in from_env.stderr
    assert from_env.stderr.rstrip().endswith(
        "; here: --backend numpy or unset BACKPROP_GPU_BACKEND"
    )


# --- info, evaluate, predict --------------------------------------------------------------


def test_info_reports_the_backend_and_why() -> None:
    result = command("info")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"backprop_gpu: {bg.__version__}" in out and f"numpy: {np.__version__}" in out
    if GPU_OK:
        assert "backend (auto): cupy" in out and "GPU 0:" in out
    else:
        assert "backend (auto): numpy on cpu" in out
        assert f"why: auto: {GPU_REASON}" in out
    as_json = json.loads(command("info", "--json").stdout)
    assert as_json["backend"]["name"] == ("cupy" if GPU_OK else "numpy")
    c_kernels = "on" if numpy_backend.HAVE_C else "not built: no _cpu module in"
    assert f"CPU kernels (C extension): {c_kernels}" in out
    off = command("info", "--json", env={"BACKPROP_GPU_KERNELS": "0"})
    cpu = json.loads(off.stdout)["cpu"]
    assert "malloc_tuned" not in cpu and "malloc" not in out  # the allocator is left alone
    assert cpu["c_kernels"].startswith("off" if numpy_backend.HAVE_C else "not built")


def test_info_says_where_the_c_extension_was_looked_for() -> None:
    """Without backprop_gpu._cpu (no compiler, or a checkout shadowing a non-editable install,
    as once happened in CI), ``info`` names the folder it looked in and the fix."""
    code = (
        "import sys; sys.modules['backprop_gpu._cpu'] = None\n"  # makes the import fail
        "from backprop_gpu.cli import main; main(['info', '--json'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    c_kernels = json.loads(result.stdout)["cpu"]["c_kernels"]
    assert c_kernels.startswith(f"not built: no _cpu module in {Path(bg.__file__).parent}")
    assert "pip install -e" in c_kernels and "plain NumPy code runs" in c_kernels


def test_info_says_when_the_environment_names_a_backend_that_cannot_run() -> None:
    result = command("info", env={"BACKPROP_GPU_BACKEND": "numpy"})
    assert result.returncode == 0
    assert "BACKPROP_GPU_BACKEND=numpy: train uses it unless --backend says otherwise" in (
        result.stdout
    )
    if GPU_OK:
        pytest.skip("this machine has a GPU: cupy runs")
    result = command("info", env={"BACKPROP_GPU_BACKEND": "cupy"})
    assert result.returncode == 1  # every train without --backend would fail
    assert "train uses it" not in result.stdout
    assert (
        "BACKPROP_GPU_BACKEND=cupy: CANNOT RUN on this machine, so train fails unless --backend "
        "says otherwise (or unset BACKPROP_GPU_BACKEND): backend 'cupy' was requested but "
        f"cannot run: {GPU_REASON}\n"
    ) in result.stdout
    as_json = command("info", "--json", env={"BACKPROP_GPU_BACKEND": "cupy:1"})
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["env_backend"] == {
        "name": "cupy:1", "known": True, "usable": False,
        "why": f"backend 'cupy:1' was requested but cannot run: {GPU_REASON}",
    }  # fmt: skip


def test_info_says_when_the_environment_names_no_backend() -> None:
    """Not "CANNOT RUN on this machine" for a misspelt name, but that it is no backend name,
    and which are (exit 1: every train without --backend would fail)."""
    for value, what in (
        ("numpyy", "not a backend name"),
        ("array_api_strict", "a test backend, not one a run takes"),  # (the library's only)
    ):
        result = command("info", env={"BACKPROP_GPU_BACKEND": value})
        assert result.returncode == 1
        assert result.stdout.splitlines()[-1] == (
            f"BACKPROP_GPU_BACKEND={value}: {what} (valid: auto, numpy, cupy, cupy:N), so train "
            "fails unless --backend says otherwise (or unset BACKPROP_GPU_BACKEND)"
        )
        as_json = command("info", "--json", env={"BACKPROP_GPU_BACKEND": value})
        assert as_json.returncode == 1
        assert json.loads(as_json.stdout)["env_backend"] == {
            "name": value, "known": False, "usable": False,
            "why": f"{what} (valid: auto, numpy, cupy, cupy:N)",
        }  # fmt: skip


def test_info_with_cupy_installed_but_no_gpu() -> None:
    pytest.importorskip("cupy")
    if GPU_OK:
        pytest.skip("this machine has a GPU")
    out = command("info").stdout
    assert "cupy: 1" in out or "cupy: 2" in out  # the real wheel's version, imported
    assert "why: auto: CuPy is installed but" in out


def test_evaluate_and_predict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    capsys.readouterr()
    assert cli.main(["evaluate", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    best = json.loads((out / "summary.json").read_text())["best"]
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"], rel=1e-6)

    X = np.random.default_rng(0).uniform(-1, 1, (7, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "p")]) == 0  # fmt: skip
    assert f"wrote {tmp_path / 'p.npy'} (7, 3)" in capsys.readouterr().out
    probs = np.load(tmp_path / "p.npy")
    assert probs.shape == (7, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(probs, experiment.predict(out, X), rtol=1e-6)

    np.save(tmp_path / "bad.npy", np.ones((2, 5)))
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "bad.npy")]) == 1
    assert "expected X with 2 features" in capsys.readouterr().err
    for bad, dtype, kind in (
        (np.array([["1", "2"]]), "<U1", "strings"),
        (np.ones((3, 2), dtype=np.complex64), "complex64", "complex numbers"),
    ):
        np.save(tmp_path / "bad.npy", bad)
        assert cli.main(["predict", str(out), "--input", str(tmp_path / "bad.npy")]) == 1
        assert capsys.readouterr().err == (
            f"backprop-gpu: --input {tmp_path / 'bad.npy'}: expected an array of real numbers, "
            f"got dtype {dtype} ({kind})\n"
        )
    assert cli.main(["evaluate", str(tmp_path)]) == 1
    assert f"{tmp_path}: not a run folder (no config.json in it)" in capsys.readouterr().err


def test_evaluate_and_predict_say_what_a_folder_that_is_no_run_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """evaluate and predict find the run's model alike, and say why a path is not a run
    folder, and what to pass instead."""
    runs = tmp_path / "runs"
    run = runs / "a"
    assert quick_run(run, "--no-plots") == 0
    stopped = tmp_path / "R5"  # stopped before its first epoch ended
    stopped.mkdir()
    shutil.copy(run / "config.json", stopped)
    (tmp_path / "empty").mkdir()
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 2), np.float32))

    def refusals(path: Path) -> set[str]:
        """What evaluate and predict say of ``path`` (each exits 1)."""
        said = set()
        for args in (["evaluate", str(path)], ["predict", str(path), "--input", str(x)]):
            capsys.readouterr()
            assert cli.main(args) == 1
            said.add(capsys.readouterr().err)
        return said

    resume = f"continue with backprop-gpu train --resume --out {stopped}"
    cases = {
        tmp_path / "nosuch": f"{tmp_path / 'nosuch'}: no such folder",
        stopped: f"{stopped}: no finished epoch yet; {resume}",
        run / "best.npz": f"{run / 'best.npz'} is a file; pass its run folder {run}",
        x: f"{x} is a file, not a run folder",
        tmp_path / "empty": f"{tmp_path / 'empty'}: not a run folder (no config.json in it)",
        runs: f"{runs}: not a run folder (no config.json in it); it holds the run folder {run}",
    }
    for path, message in cases.items():
        assert refusals(path) == {f"backprop-gpu: {message}\n"}, path
    for name, age in (("b", 20), ("c", 10)):  # b the newest
        shutil.copytree(run, runs / name)
        os.utime(runs / name / "config.json", (time.time() + age,) * 2)
    assert refusals(runs) == {
        f"backprop-gpu: {runs}: not a run folder (no config.json in it); it holds 3 run "
        f"folders, such as {runs / 'b'} and {runs / 'c'}\n"
    }
    with held_by_another_run(stopped):  # as a run training in its first epoch does
        assert refusals(stopped) == {
            f"backprop-gpu: {stopped}: no finished epoch yet (another process is training in "
            "it now: wait for its first epoch to end)\n"
        }
    shutil.copy(run / "metrics.jsonl", stopped)  # 3 rows, and no checkpoint: not from a kill
    assert refusals(stopped) == {
        f"backprop-gpu: {stopped}: no checkpoint.npz, but metrics.jsonl holds 3 epochs; the "
        "run folder is damaged (a file removed?)\n"
    }


def test_predict_says_what_an_input_that_is_no_npy_array_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file of another kind, or an array of Python objects, is refused in one line that
    says what it is, without the advice to load it unsafely (allow_pickle) NumPy gives."""
    import pickle

    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")
    (tmp_path / "empty.npy").write_bytes(b"")
    pickled = pickle.dumps([[1.0, 2.0]], protocol=4)
    (tmp_path / "pickled.npy").write_bytes(pickled)
    np.save(tmp_path / "objects.npy", np.array([[1.0, None]], dtype=object), allow_pickle=True)
    np.save(tmp_path / "cut.npy", np.ones((4, 2), np.float32))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "cut.npy").read_bytes()[:-8])
    (tmp_path / "folder.npy").mkdir()
    expected = {
        "text.npy": "not a .npy file (it starts with b'1 2\\n3 ', not b'\\x93NUMPY'); save the "
        "array with np.save",
        "empty.npy": "not a .npy file (empty); save the array with np.save",
        "pickled.npy": f"not a .npy file (it starts with {pickled[:6]!r}, not b'\\x93NUMPY'); "
        "save the array with np.save",
        "objects.npy": "expected an array of real numbers, got dtype object (objects)",
        "cut.npy": "cannot read a .npy array (",  # (then NumPy's words, which vary)
        "missing.npy": "no such file",
        "folder.npy": "a folder, not a .npy file",
    }
    for name, message in expected.items():
        capsys.readouterr()
        assert cli.main(["predict", str(out), "--input", str(tmp_path / name)]) == 1
        err = capsys.readouterr().err
        if message.endswith("("):
            assert err.startswith(f"backprop-gpu: --input {tmp_path / name}: {message}"), err
            assert err.count("\n") == 1 and "allow_pickle" not in err
        else:
            assert err == f"backprop-gpu: --input {tmp_path / name}: {message}\n"


def test_warnings_are_one_line_on_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The library's warning (integer inputs) in the CLI's one-line format, not Python's with
    its source file and line; the library's own warning, and Python's format outside the
    CLI, are left as they are."""
    import warnings

    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    X = np.array([[0, 1], [1, 0]], dtype=np.int64)
    np.save(tmp_path / "ints.npy", X)
    result = command("predict", str(out), "--input", str(tmp_path / "ints.npy"))
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert result.stderr.startswith(FALLBACK)  # (this process chose auto, and fell back)
    stderr = result.stderr.removeprefix(FALLBACK)
    assert stderr.startswith(
        "backprop-gpu: warning: Model.predict: inputs have integer dtype int64; casting them"
    )
    assert stderr.count("\n") == 1, stderr  # (no source line, no file name)
    shown = warnings.showwarning
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "ints.npy")]) == 0
    assert capsys.readouterr().err == stderr  # (auto's fallback: logged once a process)
    assert warnings.showwarning is shown  # put back
    with pytest.warns(UserWarning, match="inputs have integer dtype int64"):
        experiment.predict(out, X)


def test_predict_never_overwrites_silently(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert quick_run(out, "--no-plots") == 0
    X = np.random.default_rng(1).uniform(-1, 1, (5, 2)).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    predict = ["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output"]
    (tmp_path / "folder").mkdir()
    for folder in (tmp_path / "folder", tmp_path / "folder.npy"):
        folder.mkdir(exist_ok=True)
        capsys.readouterr()
        assert cli.main([*predict, str(folder)]) == 1
        assert capsys.readouterr().err == (
            f"backprop-gpu: --output {folder}: is a folder; name a file in it, such as "
            f"{folder / 'outputs.npy'}\n"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "folder.npy", "run", "x.npy"]

    target = tmp_path / "p.npy"
    target.write_bytes(b"precious")
    for name in ("p", "p.npy"):  # (.npy appended as np.save does)
        assert cli.main([*predict, str(tmp_path / name)]) == 1
        assert capsys.readouterr().err == (
            f"backprop-gpu: --output {target} exists; pass --force to overwrite it\n"
        )
    assert target.read_bytes() == b"precious"
    assert cli.main([*predict, str(target), "--force"]) == 0
    np.testing.assert_allclose(np.load(target), experiment.predict(out, X), rtol=1e-6)
    assert target.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # as np.save's
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# --- the test suite's own output ----------------------------------------------------------


def test_the_gpu_skip_reason_is_one_short_clause() -> None:
    """pytest repeats a skip reason on every SKIPPED line: the cause, not the install advice
    (which `backprop-gpu info` gives in full)."""
    from backprop_gpu.backend import INSTALL_HINT, NO_DRIVER

    from . import conftest

    assert conftest.cause(f"CuPy is not installed; {INSTALL_HINT}") == "CuPy is not installed"
    assert conftest.cause(NO_DRIVER) == (
        "CuPy is installed but no NVIDIA driver was found (no GPU on this machine?)"
    )
    assert conftest.cause("CuPy is not importable (OSError: a; b); install it") == (
        "CuPy is not importable (OSError: a; b)"  # (a "; " inside the cause stays)
    )
    assert len(conftest.cause("x" * 50 + " y" * 100)) <= 120
    if GPU_OK:
        pytest.skip("this machine has a GPU: nothing skips")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
         str(Path(__file__).parent / "test_seeds.py")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    skipped = [line for line in result.stdout.splitlines() if line.startswith("SKIPPED")]
    assert result.returncode == 0 and skipped, result.stdout
    for line in skipped:
        assert line.endswith(f": needs a working CUDA GPU: {conftest.cause(GPU_REASON)}"), line
        assert len(line) < 170 and "install the" not in line and "pip" not in line, line
