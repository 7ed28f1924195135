"""Interrupting ``backprop-gpu train`` at any moment, with real signals (SIGKILL, SIGTERM,
SIGINT) sent to a real process, then ``--resume``: every epoch is in metrics.csv and
metrics.jsonl exactly once, and the folder equals an uninterrupted run's (but ``seconds``).

The process is stopped at named points of an epoch's commit (each row, the checkpoint's
temporary file, its rename, best.npz), inside training and at the run's end: a driver wraps
``os.fsync``, ``os.replace``, ``numpy.savez``, ``Dense.forward`` and ``plots.write_all`` so
that the n-th call on a given file prints PAUSED and waits there for the signal. Then runs
with big layers get the signal at varied moments of an epoch, wherever the run happens to
be (often inside a save).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop_gpu import checkpoint, cli, experiment, plots, run_folder

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the driver reads file names from /proc/self/fd"
)

# the interrupted process: `backprop-gpu train ARGS`, paused at the event PAUSE_AT
# ("kind:file:n", the n-th such call on that file), announced by PAUSED on stdout, until the
# file PAUSE_UNTIL exists (the test makes it after sending its signal)
DRIVER = r"""
import os, sys, time
import numpy as np
from backprop_gpu import cli, layers, plots

kind, name, n = os.environ["PAUSE_AT"].split(":")
until, calls = os.environ["PAUSE_UNTIL"], []

def reached(event, fd=None, path=None, label=None):
    if event != kind:
        return
    if label is None:
        label = os.path.basename(path if path is not None else os.readlink(f"/proc/self/fd/{fd}"))
    if name in label:
        calls.append(label)
        if len(calls) == int(n):
            print("PAUSED", flush=True)
            while not os.path.exists(until):  # (a held signal is taken here, or raises)
                time.sleep(0.002)

fsync, replace, savez = os.fsync, os.replace, np.savez
forward, forward_relu = layers.Dense.forward, layers.Dense.forward_relu
write_all = plots.write_all

def paused_fsync(fd):
    reached("fsync", fd=fd)
    return fsync(fd)

def paused_replace(src, dst, **kwargs):
    reached("replace", path=os.fspath(dst))
    return replace(src, dst, **kwargs)

class Writes:  # the file savez writes, pausing at its third write (a torn temporary file)
    def __init__(self, f):
        self.f, self.writes = f, 0
    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            reached("write", fd=self.f.fileno())
        return self.f.write(data)
    def __getattr__(self, attr):
        return getattr(self.f, attr)

def paused_savez(f, *args, **kwargs):
    reached("savez", fd=f.fileno())
    return savez(Writes(f), *args, **kwargs)

def paused_forward(self, *args, **kwargs):
    reached("forward", label="Dense")
    return forward(self, *args, **kwargs)

def paused_forward_relu(self, *args, **kwargs):  # (a Dense and its ReLU, in training)
    reached("forward", label="Dense")
    return forward_relu(self, *args, **kwargs)

def paused_write_all(*args, **kwargs):
    reached("plots", label="plots")
    return write_all(*args, **kwargs)

os.fsync, os.replace, np.savez, plots.write_all = (
    paused_fsync, paused_replace, paused_savez, paused_write_all)
layers.Dense.forward, layers.Dense.forward_relu = paused_forward, paused_forward_relu
sys.exit(cli.main(sys.argv[1:]))
"""

SMALL = ["--samples", "150", "--hidden", "16", "--batch-size", "16", "--lr", "0.05",
         "--epochs", "4", "--seed", "0", "--quiet", "--no-plots"]  # fmt: skip
BIG = ["--samples", "300", "--hidden", "512,512", "--batch-size", "100", "--epochs", "8",
       "--seed", "3", "--quiet", "--no-plots"]  # fmt: skip


def contents(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` (none if it does not exist) by name, to tell it is unchanged."""
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.exists() else {}


def start(out: Path, settings: list[str], pause: str = "none:none:0", preexec: Any = None) -> Any:
    """``backprop-gpu train SETTINGS --out OUT`` (``settings`` may start with --resume),
    paused at ``pause``."""
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"}
    env |= {"PAUSE_AT": pause, "PAUSE_UNTIL": str(out.parent / "signal-sent")}
    (out.parent / "signal-sent").unlink(missing_ok=True)  # (from an earlier process)
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, "train", *settings, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=preexec or ctrl_c_works,
    )  # fmt: skip


def ctrl_c_works() -> None:
    """In the child: SIGINT as in a terminal (a shell starting pytest in the background
    leaves it ignored, and Python then has no KeyboardInterrupt handler)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def signal_paused(process: Any, out: Path, signum: int) -> str:
    """Wait for the process to pause, send it ``signum``, let it go on; its stderr."""
    assert process.stdout.readline() == "PAUSED\n", process.communicate()[1]
    process.send_signal(signum)
    (out.parent / "signal-sent").touch()
    return str(process.communicate(timeout=60)[1])


def jsonl(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def csv_rows(out: Path) -> list[dict[str, str]]:
    with (out / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def epochs_of(path: Path) -> int:
    return int(checkpoint.load(path)[1]["epochs_trained"])


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def assert_consistent(out: Path) -> None:
    """The folder agrees with itself: the rows are epochs 1..N of the checkpoint, once each
    in both files, best.npz holds the best of them, and no temporary file is left."""
    n = epochs_of(out / "checkpoint.npz")
    rows = jsonl(out)
    assert [r["epoch"] for r in rows] == list(range(1, n + 1))
    assert [int(r["epoch"]) for r in csv_rows(out)] == list(range(1, n + 1))
    best = min(rows, key=lambda r: r["val_loss"])
    assert epochs_of(out / "best.npz") == best["epoch"]
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def assert_same_run(out: Path, reference: Path) -> None:
    """``out`` holds what the uninterrupted ``reference`` does (but the seconds)."""
    assert_consistent(out)
    assert without_seconds(jsonl(out)) == without_seconds(jsonl(reference))
    assert without_seconds(csv_rows(out)) == without_seconds(csv_rows(reference))
    for name in ("checkpoint.npz", "best.npz"):
        arrays, meta = checkpoint.load(out / name)
        expected, expected_meta = checkpoint.load(reference / name)
        assert meta == expected_meta
        assert arrays.keys() == expected.keys()
        for key in arrays:
            np.testing.assert_array_equal(arrays[key], expected[key], err_msg=f"{name} {key}")
    summary, expected = (json.loads((p / "summary.json").read_text()) for p in (out, reference))
    assert summary["epochs"] == expected["epochs"]
    for key in ("final", "best"):
        assert without_seconds([summary[key]]) == without_seconds([expected[key]])


def resume(out: Path) -> None:
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet", "--no-plots"]) == 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", *SMALL, "--out", str(out)]) == 0
    return out


def improved_epochs(reference: Path) -> tuple[list[int], list[int]]:
    """The epochs that wrote best.npz, and those that did not."""
    best, improved, not_improved = np.inf, [], []
    for row in jsonl(reference):
        (improved if row["val_loss"] < best else not_improved).append(row["epoch"])
        best = min(best, row["val_loss"])
    return improved, not_improved


# what a SIGKILL at a point leaves, before the resume repairs it (n: the checkpoint's epochs)
CSV_AHEAD = "metrics.csv has the row of epoch n + 1, metrics.jsonl not"
ROWS_AHEAD = "both files have the row of epoch n + 1"
ROWS_AHEAD_TMP = ROWS_AHEAD + ", and the checkpoint's temporary file is left"
BEST_BEHIND = "rows and checkpoint agree, best.npz holds an earlier epoch than the best, n"
AGREE = "all agree"
UNFINISHED = "all epochs done, summary.json not written"


def points(reference: Path) -> list[tuple[str, str, str, int]]:
    """(where, PAUSE_AT, what SIGKILL there leaves, the epochs its checkpoint holds then) for
    every step of an improving epoch E's commit, of a commit that does not improve, and in
    training."""
    improved, not_improved = improved_epochs(reference)
    e = improved[1]  # (epoch 1 always improves; this one follows a checkpoint)
    k = improved.index(e) + 1  # best.npz's k-th save
    q = not_improved[0]
    # Dense.forward calls an epoch: 2 layers, 10 batches of 16 of the 150 samples, then the 30
    # validation samples in 2
    forwards = 2 * (10 + 2)
    return [
        ("in epoch 1, before any checkpoint", "forward:Dense:5", AGREE, 0),
        (f"training epoch {e}", f"forward:Dense:{forwards * (e - 1) + 7}", AGREE, e - 1),
        ("csv row synced, jsonl row not flushed", f"fsync:metrics.csv:{e}", CSV_AHEAD, e - 1),
        ("both rows written", f"fsync:metrics.jsonl:{e}", ROWS_AHEAD, e - 1),
        ("checkpoint's temporary created", f"savez:checkpoint.npz:{e}", ROWS_AHEAD_TMP, e - 1),
        ("checkpoint's temporary half-written", f"write:checkpoint.npz:{e}", ROWS_AHEAD_TMP, e - 1),
        (
            "checkpoint's temporary file complete",
            f"fsync:checkpoint.npz:{e}",
            ROWS_AHEAD_TMP,
            e - 1,
        ),
        ("before the checkpoint's rename", f"replace:checkpoint.npz:{e}", ROWS_AHEAD_TMP, e - 1),
        ("checkpoint renamed, best.npz's copy not synced", f"fsync:best.npz:{k}", BEST_BEHIND, e),
        ("before best.npz's rename", f"replace:best.npz:{k}", BEST_BEHIND, e),
        (
            f"epoch {q}'s commit, not improving",
            f"replace:checkpoint.npz:{q}",
            ROWS_AHEAD_TMP,
            q - 1,
        ),
        ("after the commit, before the next epoch", f"forward:Dense:{forwards * e + 1}", AGREE, e),
        ("the last epoch done, before summary.json", "replace:summary.json:1", UNFINISHED, 4),
    ]


def test_the_reference_has_the_epochs_the_points_need(reference: Path) -> None:
    improved, not_improved = improved_epochs(reference)
    assert len(improved) >= 2 and not_improved and not_improved[0] < 4
    assert_consistent(reference)


@pytest.mark.parametrize("index", range(13))
def test_sigkill_at_every_point_of_an_epoch_then_resume(
    reference: Path, tmp_path: Path, index: int
) -> None:
    where, pause, leaves, epochs = points(reference)[index]
    out = tmp_path / "run"
    process = start(out, SMALL, pause)
    signal_paused(process, out, signal.SIGKILL)
    assert process.returncode == -signal.SIGKILL
    # the state the point is there for
    n = epochs_of(out / "checkpoint.npz") if (out / "checkpoint.npz").exists() else 0
    assert n == epochs, where
    rows, lines = len(jsonl(out)), len(csv_rows(out)) if (out / "metrics.csv").exists() else 0
    temporaries = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if leaves == AGREE:
        assert rows == lines == n and not temporaries, where
    elif leaves == CSV_AHEAD:
        assert lines == n + 1 and rows == n, where
    elif leaves in (ROWS_AHEAD, ROWS_AHEAD_TMP):
        assert rows == lines == n + 1 and bool(temporaries) == (leaves == ROWS_AHEAD_TMP), where
    elif leaves == UNFINISHED:  # (then resume has nothing to do but write the summary)
        assert rows == lines == n and not (out / "summary.json").exists(), where
    else:
        assert rows == lines == n and epochs_of(out / "best.npz") < n, where
    resume(out)
    assert_same_run(out, reference)


@pytest.mark.parametrize(
    ("signum", "index"),
    [
        (signal.SIGTERM, 0),  # in epoch 1
        (signal.SIGTERM, 1),  # training
        (signal.SIGTERM, 2),  # in the commit: held until it ends
        (signal.SIGTERM, 8),
        (signal.SIGINT, 3),
        (signal.SIGINT, 5),
        (signal.SIGINT, 9),
    ],
)
def test_sigterm_and_ctrl_c_stop_cleanly_anywhere_then_resume(
    reference: Path, tmp_path: Path, signum: int, index: int
) -> None:
    """SIGTERM is handled as Ctrl-C: the epoch is abandoned (in training) or its commit
    finished (in the commit), the folder is consistent at once, the message names it."""
    where, pause, leaves, epochs = points(reference)[index]
    out = tmp_path / "run"
    process = start(out, SMALL, pause)
    err = signal_paused(process, out, signum)
    assert process.returncode == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name})" in err and "Traceback" not in err
    assert f"continue with backprop-gpu train --resume --out {out}" in err
    if index == 0:
        assert "in epoch 1; " + f"{out} holds no epoch yet" in err
        assert not (out / "checkpoint.npz").exists() and not jsonl(out)
    else:
        assert_consistent(out)  # at once, before any resume
        n = epochs_of(out / "checkpoint.npz")
        assert f"after epoch {n}; {out} keeps its metrics and checkpoint" in err
        # in training the epoch is abandoned; in a commit, the commit is finished first
        ahead = leaves in (CSV_AHEAD, ROWS_AHEAD, ROWS_AHEAD_TMP)
        assert n == (epochs + 1 if ahead else epochs), where
    resume(out)
    assert_same_run(out, reference)


@pytest.mark.parametrize(
    ("signum", "pause"),
    [
        (signal.SIGINT, "fsync:config.json:1"),
        (signal.SIGTERM, "replace:config.json:1"),
        (signal.SIGKILL, "fsync:config.json:1"),
    ],
)
def test_a_run_stopped_as_it_writes_its_config_can_be_started_again(
    reference: Path, tmp_path: Path, signum: int, pause: str
) -> None:
    """Stopped cleanly, a run that has recorded nothing leaves no folder; killed outright, it
    leaves only config.json's temporary file, and the folder counts as unused: the same
    command starts the run again (and --resume says to do that)."""
    out = tmp_path / "run"
    process = start(out, SMALL, pause)
    err = signal_paused(process, out, signum)
    if signum == signal.SIGKILL:
        (left,) = out.iterdir()
        assert re.fullmatch(r"\.config\.json\.[0-9a-f]{12}\.tmp", left.name), left.name
        assert cli.main(["train", "--resume", "--out", str(out)]) == 1  # (what it says: below)
    else:
        assert process.returncode == 128 + signum, err
        assert err.strip().endswith("before the run started; nothing was recorded"), err
        assert not out.exists()
    assert cli.main(["train", *SMALL, "--out", str(out)]) == 0
    assert_same_run(out, reference)


def test_resume_of_a_run_with_no_config_yet_says_to_start_it_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / ".config.json.0123456789ab.tmp").write_text('{"conf')
    assert cli.main(["train", "--resume", "--out", str(out)]) == 1
    assert capsys.readouterr().err == (
        f"backprop-gpu: {out}: holds no run yet (no config.json: stopped before writing it?); "
        "train it again without --resume\n"
    )


@pytest.mark.parametrize(
    ("first", "then", "signum"),
    [
        ("fsync:metrics.jsonl:2", "replace:config.json:1", signal.SIGTERM),
        ("fsync:metrics.csv:2", "fsync:metrics.csv:1", signal.SIGINT),
        ("BEST", "fsync:best.npz:1", signal.SIGTERM),
    ],
    ids=["recording the resume", "cutting metrics.csv back", "copying the checkpoint to best"],
)
def test_a_resume_stopped_in_its_repairs_leaves_no_temporary_file(
    reference: Path, tmp_path: Path, first: str, then: str, signum: int
) -> None:
    """A run killed in a commit, then its resume stopped (SIGTERM, Ctrl-C) while it brings
    the folder back to the checkpoint: the resume's writes leave nothing half-done behind,
    and the next resume ends as the uninterrupted run."""
    out = tmp_path / "run"
    if first == "BEST":  # killed after an improving epoch's checkpoint, before best.npz
        improved, _ = improved_epochs(reference)
        first = f"fsync:best.npz:{improved.index(improved[1]) + 1}"
    signal_paused(start(out, SMALL, first), out, signal.SIGKILL)
    process = start(out, ["--resume", "--quiet", "--no-plots"], then)
    err = signal_paused(process, out, signum)
    assert process.returncode == 128 + signum, err
    assert f"interrupted ({signal.Signals(signum).name}) after epoch" in err
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    resume(out)
    assert_same_run(out, reference)


def test_ctrl_c_and_sigterm_both_in_a_commit_stop_the_run_as_sigterm(
    reference: Path, tmp_path: Path
) -> None:
    """Both held until the commit ends, then the run stops once, as SIGTERM asked (exit 143):
    neither is lost."""
    _, pause, _, epochs = points(reference)[3]  # both rows written
    out = tmp_path / "run"
    process = start(out, SMALL, pause)
    assert process.stdout.readline() == "PAUSED\n", process.communicate()[1]
    process.send_signal(signal.SIGINT)
    process.send_signal(signal.SIGTERM)
    (out.parent / "signal-sent").touch()
    err = process.communicate(timeout=60)[1]
    assert process.returncode == 143, err
    assert f"interrupted (SIGTERM) after epoch {epochs + 1}; " in err and "Traceback" not in err
    assert_consistent(out)
    resume(out)
    assert_same_run(out, reference)


def ignore_sigterm() -> None:
    ctrl_c_works()
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def test_a_sigterm_set_to_be_ignored_stays_ignored(reference: Path, tmp_path: Path) -> None:
    """A run started with SIGTERM ignored (as by nohup-like launchers) trains on."""
    _, pause, _, _ = points(reference)[1]  # training
    out = tmp_path / "run"
    process = start(out, SMALL, pause, preexec=ignore_sigterm)
    err = signal_paused(process, out, signal.SIGTERM)
    assert process.returncode == 0, err
    assert_same_run(out, reference)


LIBRARY = r"""
import os, signal, sys
from backprop_gpu import Model, experiment

save = Model.save

def save_and_signal(self, path, *args, **kwargs):  # Ctrl-C and SIGTERM in epoch 2's commit
    if self.epochs_trained == 2 and path.name == "checkpoint.npz":
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGTERM)
    return save(self, path, *args, **kwargs)

Model.save = save_and_signal
settings = {"samples": 150, "hidden": [16], "epochs": 4, "out": sys.argv[1]}
try:
    experiment.run(settings, report=None, plots=False)
except experiment.RunInterrupted as e:
    print(e.epochs, signal.Signals(e.signum).name)
print(signal.getsignal(signal.SIGINT) is signal.default_int_handler,
      signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
"""


def test_a_library_run_stops_on_sigterm_and_puts_the_handlers_back(tmp_path: Path) -> None:
    """experiment.run in a script: Ctrl-C and SIGTERM in a commit give one RunInterrupted
    after it, naming SIGTERM (the SIGTERM was lost and the process trained on), and the
    script's handlers are as they were."""
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", LIBRARY, str(out)], capture_output=True,
                            text=True, timeout=120, preexec_fn=ctrl_c_works)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "SIGTERM", "True", "True"]
    assert_consistent(out)


def test_a_run_from_another_thread_sets_no_handler(tmp_path: Path) -> None:
    """Python sets signal handlers from the main thread only: a run in another thread
    trains, and the process's handlers stay as they are."""
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    results: list[Any] = []
    settings = {"samples": 150, "hidden": [16], "epochs": 2, "out": str(tmp_path / "run")}

    def train() -> None:
        try:
            results.append(experiment.run(settings, report=None, plots=False))
        except BaseException as e:  # (shown by the assertion below)
            results.append(e)

    thread = threading.Thread(target=train)
    thread.start()
    thread.join(timeout=120)
    assert isinstance(results[0], dict) and results[0]["epochs"] == 2, results
    assert {s: signal.getsignal(s) for s in before} == before
    assert len(experiment.read_metrics(tmp_path / "run")) == 2


# the handler's own races, in this process: a signal while the handlers are set or put back
SET_HANDLER = signal.signal


@pytest.fixture
def handlers_kept() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        SET_HANDLER(signum, handler)


def signal_at_call(monkeypatch: pytest.MonkeyPatch, n: int, signum: int) -> None:
    """``signum`` to this process just after the n-th ``signal.signal`` call from now."""
    calls = []

    def spy(number: int, handler: Any) -> Any:
        previous = SET_HANDLER(number, handler)
        calls.append(number)
        if len(calls) == n:
            os.kill(os.getpid(), signum)
        return previous

    monkeypatch.setattr(signal, "signal", spy)


def test_a_signal_while_the_handlers_are_set_leaves_none_of_ours(
    handlers_kept: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM (a caller's handler that raises) after SIGINT's handler is set, before
    SIGTERM's: SIGINT's is put back (it stayed, and swallowed every later Ctrl-C)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    SET_HANDLER(signal.SIGTERM, interrupt)
    signal_at_call(monkeypatch, 1, signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), run_folder.Interrupts().installed():
        pytest.fail("the block is not entered")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is interrupt


def test_a_signal_while_the_handlers_are_put_back_is_not_lost(
    handlers_kept: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM after SIGINT's handler is put back, before SIGTERM's: both are put back, and
    the SIGTERM still stops the run."""
    interrupts = run_folder.Interrupts()
    with pytest.raises(KeyboardInterrupt), interrupts.installed():
        signal_at_call(monkeypatch, 1, signal.SIGTERM)
    assert interrupts.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_caller_handler_is_called_after_the_commit(handlers_kept: None) -> None:
    """A Python handler the caller set (one that notes the signal, say) is called in place
    of an interrupt, after the commit: the run goes on."""
    noted: list[int] = []
    SET_HANDLER(signal.SIGTERM, lambda signum, frame: noted.append(signum))
    interrupts = run_folder.Interrupts()
    with interrupts.installed():
        with interrupts.deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.01)  # (Python runs the handler here: it only notes it)
            assert noted == []
        assert noted == [signal.SIGTERM] and interrupts.signum is None


PLOTTED = [arg for arg in SMALL if arg != "--no-plots"]


@pytest.fixture
def plots_made(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[int], bool]]:
    """plots.write_all in this process (matplotlib may be missing) replaced by one that
    writes stand-in PNG files and records the epochs and whether it got the model."""
    made: list[tuple[list[int], bool]] = []

    def write_all(out: Path, history: Any, model: Any, X: Any, y: Any) -> list[Path]:
        made.append(([int(row["epoch"]) for row in history], model is not None))
        paths = [out / f"{name}.png" for name in ("loss", "accuracy", "decision_boundary")]
        for path in paths:
            path.write_bytes(b"\x89PNG")
        return paths

    monkeypatch.setattr(plots, "write_all", write_all)
    return made


@pytest.mark.parametrize(
    ("pause", "signum"),
    [
        ("replace:summary.json:1", signal.SIGKILL),  # the plots made, summary.json not
        ("plots:plots:1", signal.SIGKILL),
        ("plots:plots:1", signal.SIGINT),
    ],
)
def test_a_run_stopped_after_its_last_epoch_is_finished_by_resume(
    reference: Path,
    tmp_path: Path,
    plots_made: list[tuple[list[int], bool]],
    capsys: pytest.CaptureFixture[str],
    pause: str,
    signum: int,
) -> None:
    """summary.json is written last, after the plots: a run stopped after its last epoch's
    commit has none, and resume (with nothing to train) makes the plots and the summary,
    whose numbers are the run's (epochs in all, final, best) and this call's (no epochs
    trained: no samples per second)."""
    out = tmp_path / "run"
    process = start(out, PLOTTED, pause)
    err = signal_paused(process, out, signum)
    if signum == signal.SIGINT:
        assert process.returncode == 130, err
        assert f"after epoch 4; {out} keeps its metrics and checkpoint" in err
    assert not (out / "summary.json").exists()
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == (
        f"nothing to do: {out} already has 4 epochs; wrote the plots and summary.json it "
        f"lacked (--epochs is the total to reach); to train more: backprop-gpu train "
        f"--resume --out {out} --epochs 8\n"
    )
    assert plots_made == [([1, 2, 3, 4], True)]
    assert_consistent(out)
    summary, expected = (json.loads((p / "summary.json").read_text()) for p in (out, reference))
    assert summary["plots"] == ["loss.png", "accuracy.png", "decision_boundary.png"]
    assert (summary["epochs"], summary["epochs_run"], summary["samples_per_second"]) == (4, 0, None)
    assert summary["wall_seconds"] > 0
    for key in ("final", "best"):
        assert without_seconds([summary[key]]) == without_seconds([expected[key]])
    # finished now: the next resume has nothing to do and leaves the folder as it is
    before = contents(out)
    assert cli.main(["train", "--resume", "--out", str(out), "--quiet"]) == 0
    assert contents(out) == before and len(plots_made) == 1


@pytest.fixture(scope="module")
def big_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big") / "run"
    assert cli.main(["train", *BIG, "--out", str(out)]) == 0
    return out


def replaced(path: Path, than: int, deadline: float) -> int:
    """Wait until ``path`` is a file with another inode than ``than`` (a new save); it."""
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError):
            if (inode := path.stat().st_ino) != than:
                return inode
        time.sleep(0.001)
    raise AssertionError(f"{path} was not saved in time")


@pytest.mark.parametrize(
    ("signum", "phase"),
    [
        # the save ends each period: just after its rename (best.npz's copy, the next
        # epoch) and in the next save (rows, temporary file, rename)
        (signal.SIGKILL, 0.0),
        (signal.SIGKILL, 0.75),
        (signal.SIGKILL, 0.9),
        (signal.SIGTERM, 0.8),
    ],
)
def test_a_kill_at_a_random_moment_of_a_big_run_then_resume(
    big_reference: Path, tmp_path: Path, signum: int, phase: float
) -> None:
    """With 512x512 layers a checkpoint's save is a good part of an epoch: the signal comes
    at a ``phase`` of the third epoch (timed from the first two saves), wherever the run
    happens to be then (training, the rows, a save or a rename)."""
    out = tmp_path / "run"
    process = start(out, BIG)
    deadline = time.monotonic() + 120
    first = replaced(out / "checkpoint.npz", -1, deadline)
    t1 = time.monotonic()
    replaced(out / "checkpoint.npz", first, deadline)
    time.sleep(phase * (time.monotonic() - t1))
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), err
    resume(out)
    assert_same_run(out, big_reference)
