"""Training on data larger than memory: ``Model.train`` streaming a memory-mapped ``.npy``.

Three measurements, each in a child process of its own:

- ``memory``: a float32 ``.npy`` of at least 4x the anonymous memory the training may hold
  (the budget below) is written into a temporary folder (in chunks), opened with
  ``np.load(path, mmap_mode="r")`` and trained on for an epoch (NumPy, streamed: the default
  for a memory-mapped file). The parent samples the child's ``RssAnon`` (private memory: what
  the process holds, unlike the file's pages, ``RssFile``, which the kernel may drop) from
  ``/proc/PID/status`` every few milliseconds. Budget and target: peak anonymous memory
  above the child's own after importing the package and building the model (the
  interpreter's, NumPy's and BLAS's) <= model + optimizer state (parameters, gradients,
  Adam's two moments, and the copy TerminateOnNaN keeps each epoch) + 4 batches + 64 MiB.
  The file is removed afterwards.
- ``speed``: a data set that fits, in memory, trained with ``data_on_device=True`` (the
  batches gathered from the arrays in place) and ``False`` (streamed from the host through
  the reused buffers), the two alternating in one process; target: streamed <= 1.15x the
  in-memory step time (the median over rounds of the per-round ratio).
- ``gpu``: the same on CuPy at batch 1024 (data copied to the device once, against streamed
  from pinned buffers on a second stream); target 1.10x; "needs a GPU" without one.

    python -m benchmarks.streaming           # about a minute on 2 cores
    python -m benchmarks.streaming --quick   # seconds: a small file (the 4x is not met)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (784, 256, 10)
BATCH = 1024
SLACK_MIB = 64
MIB = 1 << 20
ROOT = Path(__file__).resolve().parent.parent  # (the children run ``-m benchmarks.streaming``)


def rss(pid: int | str = "self") -> dict[str, int]:
    """``RssAnon`` and ``RssFile`` of a process, in bytes (``/proc/PID/status``)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                key, value, _unit = line.split()
                out[key[:-1]] = int(value) * 1024
    return out


def build(sizes: tuple[int, ...] = SIZES) -> Any:
    import backprop_gpu as bg

    layers: list[Any] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers += [bg.Dense(a, b, init="he", seed=i)] + ([bg.ReLU()] if i < len(sizes) - 2 else [])
    model = bg.Model(layers)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(1e-3))
    return model.finalize()


def state_bytes(sizes: tuple[int, ...] = SIZES) -> int:
    """Parameters, gradients, Adam's two moments and TerminateOnNaN's epoch copy of the
    parameters and moments, float32: 7 floats a parameter."""
    params = sum(a * b + b for a, b in itertools.pairwise(sizes))
    return 7 * 4 * params


def batch_bytes(batch: int, features: int) -> int:
    return batch * (features * 4 + 8)  # float32 X rows and int64 labels


def budget(batch: int, sizes: tuple[int, ...] = SIZES) -> int:
    return state_bytes(sizes) + 4 * batch_bytes(batch, sizes[0]) + SLACK_MIB * MIB


# --- the data file ---------------------------------------------------------------------------


def write_data(folder: Path, samples: int, features: int, classes: int) -> tuple[Path, Path]:
    """``X.npy`` (samples, features) float32 and ``y.npy`` int64 labels (a linear rule of
    the features), written in chunks so the writer never holds the set."""
    x_path, y_path = folder / "X.npy", folder / "y.npy"
    X = np.lib.format.open_memmap(x_path, mode="w+", dtype=np.float32, shape=(samples, features))
    y = np.lib.format.open_memmap(y_path, mode="w+", dtype=np.int64, shape=(samples,))
    rng = np.random.default_rng(0)
    rule = rng.standard_normal((features, classes)).astype(np.float32)
    step = max(1, (16 * MIB) // (features * 4))
    for start in range(0, samples, step):
        part = rng.standard_normal((min(step, samples - start), features), dtype=np.float32)
        X[start : start + len(part)] = part
        y[start : start + len(part)] = (part @ rule).argmax(axis=1)
    X.flush()
    y.flush()
    del X, y
    return x_path, y_path


# --- the children ----------------------------------------------------------------------------


def child_memory(folder: str, batch: int, epochs: int) -> dict[str, Any]:
    import backprop_gpu as bg

    bg.set_backend("numpy")
    model = build()
    baseline = rss()["RssAnon"]
    X = np.load(Path(folder) / "X.npy", mmap_mode="r")
    y = np.load(Path(folder) / "y.npy", mmap_mode="r")
    start = time.perf_counter()
    history = model.train(X, y, epochs=epochs, batch_size=batch, print_every=0, seed=0)
    seconds = time.perf_counter() - start
    steps = epochs * -(-len(X) // batch)
    return {"baseline": baseline, "seconds": seconds, "steps": steps, "loss": history[-1]["loss"]}


def _timed(model: Any, X: Any, y: Any, batch: int, on_device: bool, sync: Any) -> float:
    """Seconds a step over one epoch, timed from the epoch's start to its end (callbacks,
    the device synchronized at both): not the call's checks of the whole data, nor the
    copy of it to the device, which an on-device run pays once, not every epoch."""
    import backprop_gpu as bg

    steps = -(-len(X) // batch)
    clock: list[float] = []

    def stamp(*_: Any) -> None:
        sync()
        clock.append(time.perf_counter())

    timer = bg.LambdaCallback(on_epoch_begin=stamp, on_epoch_end=stamp)
    model.train(X, y, epochs=1, batch_size=batch, print_every=0, seed=0, data_on_device=on_device,
                callbacks=[timer])  # fmt: skip
    return (clock[1] - clock[0]) / steps


def child_speed(backend: str, samples: int, batch: int, rounds: int) -> dict[str, Any]:
    import backprop_gpu as bg

    b = bg.set_backend(backend)
    rng = np.random.default_rng(1)
    X = rng.standard_normal((samples, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], samples)
    model = build()
    for on_device in (True, False):  # warm up both (buffers, BLAS threads, kernels)
        _timed(model, X, y, batch, on_device, b.synchronize)
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(rounds):
        for on_device in (True, False) if r % 2 == 0 else (False, True):
            times[on_device].append(_timed(model, X, y, batch, on_device, b.synchronize))
    ratios = [s / d for s, d in zip(times[False], times[True], strict=True)]
    return {"device": statistics.median(times[True]), "streamed": statistics.median(times[False]),
            "ratio": statistics.median(ratios), "lo": min(ratios), "hi": max(ratios)}  # fmt: skip


def _child(args: argparse.Namespace) -> None:
    if args.child == "memory":
        result = child_memory(args.folder, args.batch, args.epochs)
    else:
        result = child_speed(args.child_backend, args.samples, args.batch, args.rounds)
    print(json.dumps(result), flush=True)


def _spawn(*extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.streaming", *extra]


def run_sampled(command: list[str], every: float = 0.005) -> tuple[dict[str, Any], dict[str, int]]:
    """Run a child, sampling its RssAnon and RssFile; its JSON line and the peaks."""
    env = os.environ | {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=env, cwd=ROOT)  # fmt: skip
    peaks = {"RssAnon": 0, "RssFile": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                now = rss(child.pid)
            except (OSError, ValueError):
                return
            for key in peaks:
                peaks[key] = max(peaks[key], now.get(key, 0))
            time.sleep(every)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = child.communicate()
    done.set()
    sampler.join()
    if child.returncode != 0:
        raise RuntimeError(f"benchmarks.streaming child failed ({child.returncode}):\n{err}")
    return json.loads(out.strip().splitlines()[-1]), peaks


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def memory(quick: bool, batch: int, file_mib: int | None, epochs: int) -> None:
    allowed = budget(batch)
    size = file_mib * MIB if file_mib else (32 * MIB if quick else 4 * allowed)
    features = SIZES[0]
    samples = max(batch, size // (features * 4))
    data_bytes = samples * (features * 4 + 8)
    folder = Path(tempfile.mkdtemp(prefix="bg-streaming-"))
    try:
        free = shutil.disk_usage(folder).free
        batches = 4 * batch_bytes(batch, features)
        print(f"memory: budget {allowed / MIB:.1f} MiB = model + optimizer state "
              f"{state_bytes() / MIB:.1f} MiB + 4 batches {batches / MIB:.1f} MiB + {SLACK_MIB} "
              f"MiB; {free / MIB / 1024:.1f} GiB free in {folder.parent}")  # fmt: skip
        if data_bytes > free // 2:
            print(
                f"memory: not run: {data_bytes / MIB:.0f} MiB of data would leave too little disk"
            )
            return
        start = time.perf_counter()
        write_data(folder, samples, features, SIZES[-1])
        written = time.perf_counter() - start
        times = data_bytes / allowed
        print(f"memory: X.npy + y.npy {data_bytes / MIB:.0f} MiB ({samples} x {features} float32,"
              f" int64 labels) = {times:.1f}x the budget, written in {written:.1f} s")  # fmt: skip
        command = _spawn("--child", "memory", "--folder", str(folder), "--batch", str(batch),
                         "--epochs", str(epochs))  # fmt: skip
        result, peaks = run_sampled(command)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    held = peaks["RssAnon"] - result["baseline"]
    print(
        f"memory: {result['steps']} steps of {batch} in {result['seconds']:.1f} s "
        f"({result['steps'] / result['seconds']:.1f} steps/s), last loss {result['loss']:.4f}"
    )
    print(f"memory: peak RssAnon {peaks['RssAnon'] / MIB:.1f} MiB (the process after import and "
          f"model: {result['baseline'] / MIB:.1f} MiB; held by training {held / MIB:.1f} MiB); "
          f"peak RssFile {peaks['RssFile'] / MIB:.1f} MiB (the file's pages)")  # fmt: skip
    small = times < 4
    for what, value in (("held by training", held), ("of the whole process", peaks["RssAnon"])):
        verdict = (
            "not checked (the file is under 4x the budget)" if small else _mark(value <= allowed)
        )
        print(f"target: peak anonymous memory {what} {value / MIB:.1f} MiB <= budget "
              f"{allowed / MIB:.1f} MiB: {verdict}")  # fmt: skip


def speed(quick: bool, batch: int, rounds: int) -> None:
    samples = 8 * batch if quick else 32 * batch
    result, _ = run_sampled(_spawn("--child", "speed", "--child-backend", "numpy",
                                   "--samples", str(samples), "--batch", str(batch),
                                   "--rounds", str(rounds)))  # fmt: skip
    print(
        f"speed (NumPy, {samples} samples in memory, batch {batch}, {SIZES}): in memory "
        f"{result['device'] * 1e3:.2f} ms/step ({1 / result['device']:.1f} steps/s), streamed "
        f"{result['streamed'] * 1e3:.2f} ms/step ({1 / result['streamed']:.1f} steps/s)"
    )
    print(
        f"target: streamed / in-memory step time {result['ratio']:.3f} (min {result['lo']:.3f}, "
        f"max {result['hi']:.3f}, {rounds} rounds) <= 1.15: {_mark(result['ratio'] <= 1.15)}"
    )


def gpu(batch: int, rounds: int) -> None:
    from backprop_gpu.backend import detect_gpu

    cupy, reason = detect_gpu()
    if cupy is None:
        print(
            f"target: GPU streamed / on-device step time <= 1.10 at batch >= 1024: needs a GPU "
            f"({reason.split(';')[0]})"
        )
        return
    batch = max(batch, 1024)
    result, _ = run_sampled(_spawn("--child", "speed", "--child-backend", "cupy",
                                   "--samples", str(64 * batch), "--batch", str(batch),
                                   "--rounds", str(rounds)))  # fmt: skip
    print(
        f"gpu (CuPy, batch {batch}): on device {result['device'] * 1e3:.3f} ms/step, streamed "
        f"{result['streamed'] * 1e3:.3f} ms/step"
    )
    print(
        f"target: GPU streamed / on-device step time {result['ratio']:.3f} <= 1.10: "
        f"{_mark(result['ratio'] <= 1.10)}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small file and few rounds")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--rounds", type=int, default=None, help="speed rounds (default 7)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs over the file")
    parser.add_argument("--file-mib", type=int, default=None, help="data file size (default 4x)")
    parser.add_argument("--gpu-only", action="store_true",
                        help="only the GPU target (benchmarks/gpu_check.sh's phase)")  # fmt: skip
    parser.add_argument("--child", choices=("memory", "speed"), help=argparse.SUPPRESS)
    parser.add_argument("--child-backend", default="numpy", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--samples", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.rounds = args.rounds or 1
        _child(args)
        return 0
    rounds = args.rounds or (2 if args.quick else 7)
    if not args.gpu_only:
        memory(args.quick, args.batch, args.file_mib, args.epochs)
        speed(args.quick, args.batch, rounds)
    gpu(args.batch, rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
