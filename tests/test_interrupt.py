"""Interrupting ``backprop-gpu train`` at any moment, with real signals (SIGKILL, SIGTERM,
SIGINT) sent to a real process, then ``--resume``: every epoch is in metrics.csv and
metrics.jsonl exactly once, and the folder equals an uninterrupted run's (but ``seconds``).

The process is stopped at named points of an epoch's commit (each row, the checkpoint's
temporary file, its rename, best.npz) and inside training: a driver wraps ``os.fsync``,
``os.replace``, ``numpy.savez`` and ``Dense.forward`` so that the n-th call on a given file
prints PAUSED and waits there for the signal. Then runs with big layers are killed after
varied delays, landing wherever the run happens to be (often inside a checkpoint's write).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from backprop_gpu import checkpoint, cli

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="the driver reads file names from /proc/self/fd"
)

# the interrupted process: `backprop-gpu train ARGS`, paused at the event PAUSE_AT
# ("kind:file:n", the n-th such call on that file) for PAUSE_FOR seconds, announced on stdout
DRIVER = r"""
import os, sys, time
import numpy as np
from backprop_gpu import cli, layers

kind, name, n = os.environ["PAUSE_AT"].split(":")
hold, seen = float(os.environ["PAUSE_FOR"]), {}

def reached(event, fd=None, path=None, label=None):
    if event != kind:
        return
    if label is None:
        label = os.path.basename(path if path is not None else os.readlink(f"/proc/self/fd/{fd}"))
    if name not in label:
        return
    seen[label] = count = seen.get(name, 0) + 1
    seen[name] = count
    if count == int(n):
        print("PAUSED", flush=True)
        time.sleep(hold)

fsync, replace, savez, forward = os.fsync, os.replace, np.savez, layers.Dense.forward

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

os.fsync, os.replace, np.savez, layers.Dense.forward = (
    paused_fsync, paused_replace, paused_savez, paused_forward)
sys.exit(cli.main(sys.argv[1:]))
"""

SMALL = ["--samples", "150", "--hidden", "16", "--batch-size", "16", "--lr", "0.05",
         "--epochs", "4", "--seed", "0", "--quiet", "--no-plots"]  # fmt: skip
BIG = ["--samples", "300", "--hidden", "512,512", "--batch-size", "100", "--epochs", "8",
       "--seed", "3", "--quiet", "--no-plots"]  # fmt: skip


def start(out: Path, settings: list[str], pause: str = "none:none:0", hold: float = 0.0) -> Any:
    env = {k: v for k, v in os.environ.items() if k != "BACKPROP_GPU_BACKEND"}
    env |= {"PAUSE_AT": pause, "PAUSE_FOR": str(hold)}
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, "train", *settings, "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


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


def points(reference: Path) -> list[tuple[str, str, str]]:
    """(where, PAUSE_AT, what SIGKILL there leaves) for every step of an improving epoch
    E's commit, of a commit that does not improve, and inside training."""
    improved, not_improved = improved_epochs(reference)
    e = improved[1]  # (epoch 1 always improves; this one follows a checkpoint)
    k = improved.index(e) + 1  # best.npz's k-th save
    q = not_improved[0]
    forwards = 2 * (150 // 16 + 1) + 2  # Dense.forward calls an epoch: 2 layers, 10 steps, val
    return [
        ("in epoch 1, before any checkpoint", "forward:Dense:5", AGREE),
        (f"training epoch {e}", f"forward:Dense:{forwards * (e - 1) + 7}", AGREE),
        ("csv row synced, jsonl row not flushed", f"fsync:metrics.csv:{e}", CSV_AHEAD),
        ("both rows written", f"fsync:metrics.jsonl:{e}", ROWS_AHEAD),
        ("checkpoint's temporary file created", f"savez:checkpoint.npz:{e}", ROWS_AHEAD_TMP),
        ("checkpoint's temporary file half-written", f"write:checkpoint.npz:{e}", ROWS_AHEAD_TMP),
        ("checkpoint's temporary file complete", f"fsync:checkpoint.npz:{e}", ROWS_AHEAD_TMP),
        ("before the checkpoint's rename", f"replace:checkpoint.npz:{e}", ROWS_AHEAD_TMP),
        ("checkpoint renamed, best.npz not started", f"savez:best.npz:{k}", BEST_BEHIND),
        ("before best.npz's rename", f"replace:best.npz:{k}", BEST_BEHIND),
        (f"epoch {q}'s commit, not improving", f"replace:checkpoint.npz:{q}", ROWS_AHEAD_TMP),
        ("after the commit, before the next epoch", f"forward:Dense:{forwards * e + 1}", AGREE),
        ("the last epoch done, before summary.json", "replace:summary.json:1", UNFINISHED),
    ]


def test_the_reference_has_the_epochs_the_points_need(reference: Path) -> None:
    improved, not_improved = improved_epochs(reference)
    assert len(improved) >= 2 and not_improved and not_improved[0] < 4
    assert_consistent(reference)


@pytest.mark.parametrize("index", range(13))
def test_sigkill_at_every_point_of_an_epoch_then_resume(
    reference: Path, tmp_path: Path, index: int
) -> None:
    where, pause, leaves = points(reference)[index]
    out = tmp_path / "run"
    process = start(out, SMALL, pause, hold=60)
    assert process.stdout.readline() == "PAUSED\n", process.communicate()[1]
    process.kill()
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    # the state the point is there for
    n = epochs_of(out / "checkpoint.npz") if (out / "checkpoint.npz").exists() else 0
    rows, lines = len(jsonl(out)), len(csv_rows(out)) if (out / "metrics.csv").exists() else 0
    temporaries = [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    if leaves == AGREE:
        assert rows == lines == n and not temporaries, where
    elif leaves == CSV_AHEAD:
        assert lines == n + 1 and rows == n, where
    elif leaves in (ROWS_AHEAD, ROWS_AHEAD_TMP):
        assert rows == lines == n + 1 and bool(temporaries) == (leaves == ROWS_AHEAD_TMP), where
    elif leaves == UNFINISHED:  # (then resume has nothing to do but write the summary)
        assert rows == lines == n == 4 and not (out / "summary.json").exists(), where
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
    where, pause, leaves = points(reference)[index]
    out = tmp_path / "run"
    process = start(out, SMALL, pause, hold=0.3)
    assert process.stdout.readline() == "PAUSED\n", process.communicate()[1]
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
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
        if leaves != AGREE:  # in the commit: it was finished, then the process stopped
            assert n == int(pause.split(":")[2]) or "best" in pause, where
    resume(out)
    assert_same_run(out, reference)


@pytest.fixture(scope="module")
def big_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("big") / "run"
    assert cli.main(["train", *BIG, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    ("signum", "delay"),
    [
        (signal.SIGKILL, 0.0),
        (signal.SIGKILL, 0.04),
        (signal.SIGKILL, 0.09),
        (signal.SIGKILL, 0.15),
        (signal.SIGTERM, 0.02),
        (signal.SIGTERM, 0.11),
    ],
)
def test_a_kill_at_a_random_moment_of_a_big_run_then_resume(
    big_reference: Path, tmp_path: Path, signum: int, delay: float
) -> None:
    """With 512x512 layers a checkpoint's save is a good part of an epoch: killed some time
    after the first checkpoint appears, the run stops wherever it is."""
    out = tmp_path / "run"
    process = start(out, BIG)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.npz").exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    if process.returncode == 0:
        pytest.fail(f"the run ended before the signal: make BIG longer ({err})")
    assert process.returncode == (-signum if signum == signal.SIGKILL else 128 + signum), err
    resume(out)
    assert_same_run(out, big_reference)
