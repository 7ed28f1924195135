"""A sweep's children in parallel against the same children one by one.

``backprop-gpu sweep`` of 8 spiral children (a grid of 2 learning rates x 4 seeds, NumPy,
no plots) with ``--parallel 2`` and with ``--parallel 1``, in turn (rounds alternate which
goes first, so machine noise hits both), each in a fresh folder; the wall time of each whole
command (worker start-up included). With ``--parallel N`` each child gets cores // N BLAS
threads, so one by one a child has all the cores.

    python -m benchmarks.sweep              # about 30 s on 2 cores; target ratio <= 0.65
    python -m benchmarks.sweep --rounds 3 --epochs 150 --json sweep.json

The ratio printed is the parallel sweep's time over the one-by-one sweep's (the best round's
of each); on 2 cores the ideal is 0.5.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.65
CHILDREN = 8
TOML = """
dataset = "spiral"
samples = 600
hidden = [64, 64]
epochs = {epochs}
backend = "numpy"

[sweep]
repeats = 4

[sweep.grid]
lr = [0.01, 0.02]
"""


def timed_sweep(toml: Path, out: Path, parallel: int) -> float:
    """Seconds ``backprop-gpu sweep`` takes with ``--parallel`` children at a time."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}  # fmt: skip
    command = [sys.executable, "-m", "backprop_gpu", "sweep", "--config", str(toml), "--out",
               str(out), "--parallel", str(parallel), "--no-plots", "--quiet"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"benchmarks.sweep: the --parallel {parallel} sweep failed:\n{result.stderr}")
    done = [c["status"] for c in json.loads((out / "sweep.json").read_text())["children"]]
    if done != ["done"] * CHILDREN:
        sys.exit(f"benchmarks.sweep: the --parallel {parallel} sweep ended with {done}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sweep",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each (default 1)")
    parser.add_argument("--epochs", type=int, default=100, help="of each child (default 100)")
    parser.add_argument("--parallel", type=int, default=2, help="children at a time (default 2)")
    parser.add_argument("--json", type=Path, help="write the timings here")
    args = parser.parse_args(argv)
    times: dict[int, list[float]] = {1: [], args.parallel: []}
    with tempfile.TemporaryDirectory(prefix="sweep-bench-") as tmp:
        toml = Path(tmp) / "sweep.toml"
        toml.write_text(TOML.format(epochs=args.epochs))
        for round_ in range(args.rounds):
            order = (args.parallel, 1) if round_ % 2 == 0 else (1, args.parallel)
            for parallel in order:
                out = Path(tmp) / f"round{round_}-parallel{parallel}"
                times[parallel].append(timed_sweep(toml, out, parallel))
                print(f"round {round_ + 1}: --parallel {parallel}: {times[parallel][-1]:.1f} s",
                      flush=True)  # fmt: skip
    one, many = min(times[1]), min(times[args.parallel])
    ratio = many / one
    verdict = "PASS" if ratio <= TARGET else "MISS"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{CHILDREN} spiral children of {args.epochs} epochs on {cores} cores: one by one "
          f"{one:.1f} s, --parallel {args.parallel} {many:.1f} s; ratio {ratio:.2f} "
          f"(target <= {TARGET} {verdict})")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"children": CHILDREN, "epochs": args.epochs,
                                         "cores": cores, "times": times, "ratio": ratio},
                                        indent=2) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
