"""Data-parallel scaling over MPI: 2 ranks x 1 thread against 1 rank x 1 thread.

Model.train(distributed=True) on [784, 1024, 1024, 10], float32, SGD with momentum, global
batch 1024, 8 steps an epoch on random data, launched with ``mpiexec -n 1`` and
``mpiexec -n 2`` in turn (rounds alternate so machine noise hits both), every rank with one
BLAS thread. Each run trains one epoch to warm up, then ``--epochs`` timed epochs; rank 0
reports the time per step and the time spent in the gradient allreduce (one call a step),
apart from the time spent waiting for the slower rank before it (a barrier, timing only).

    python -m benchmarks.scaling             # about 1 min on 2 cores; target speedup >= 1.6
    python -m benchmarks.scaling --rounds 5 --json scaling.json

Needs the mpi extra (mpi4py and an mpiexec): pip install -e '.[mpi]' in this checkout.
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
import time
from pathlib import Path

SIZES = (784, 1024, 1024, 10)
BATCH, STEPS = 1024, 8
TARGET = 1.6


def child(epochs: int) -> None:
    """Under mpiexec: train and print rank 0's timings as JSON."""
    import numpy as np

    import backprop_gpu as bg
    from backprop_gpu import distributed

    rng = np.random.default_rng(0)
    X = rng.standard_normal((BATCH * STEPS, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], BATCH * STEPS)
    layers: list[object] = []
    for i, (a, b) in enumerate(itertools.pairwise(SIZES)):
        layers += [bg.Dense(a, b, seed=i, init="he"), bg.ReLU()]
    model = bg.Model(layers[:-1])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.01, momentum=0.9)).finalize()
    context = distributed.Context()
    spent = [0.0, 0.0]  # waiting for the other rank, then the allreduce itself
    allreduce = context._allreduce

    def timed(buffer: object) -> None:
        start = time.perf_counter()
        context.comm.Barrier()  # (timing only: splits load imbalance from the transfer)
        ready = time.perf_counter()
        allreduce(buffer)
        spent[0] += ready - start
        spent[1] += time.perf_counter() - ready

    context._allreduce = timed  # type: ignore[method-assign]
    train = {"batch_size": BATCH, "print_every": 0, "seed": 0, "distributed": context}
    model.train(X, y, epochs=1, **train)  # warm-up
    spent[:] = [0.0, 0.0]
    context.comm.Barrier()
    start = time.perf_counter()
    model.train(X, y, epochs=epochs, **train)
    context.comm.Barrier()
    seconds = time.perf_counter() - start
    if context.is_root:
        steps = epochs * STEPS
        wait, transfer = (t / steps for t in spent)
        print(json.dumps({"ranks": context.size, "step_s": seconds / steps, "wait_s": wait,
                          "allreduce_s": transfer}))  # fmt: skip


def mpiexec() -> list[str]:
    found = Path(sys.executable).with_name("mpiexec")
    path = str(found) if found.exists() else shutil.which("mpiexec")
    if path is None:
        sys.exit("benchmarks.scaling: no mpiexec: pip install '.[mpi]' (mpi4py and mpich)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    return [path, "--oversubscribe"] if "Open MPI" in version else [path]


def run(ranks: int, epochs: int) -> dict[str, float]:
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env = os.environ | threads | {"BACKPROP_GPU_BACKEND": "numpy"}
    command = [*mpiexec(), "-n", str(ranks), sys.executable, "-m", "benchmarks.scaling"]
    result = subprocess.run([*command, "--child", "--epochs", str(epochs)], env=env,
                            capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"benchmarks.scaling: the {ranks}-rank run failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs a run (8 steps each)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.epochs)
        return 0
    print(f"{list(SIZES)}, float32, global batch {BATCH}, 1 BLAS thread a rank; "
          f"{args.rounds} rounds of 1 rank then 2 ranks")  # fmt: skip
    one, two = [], []
    for r in range(args.rounds):
        one.append(run(1, args.epochs))
        two.append(run(2, args.epochs))
        print(f"  round {r + 1}: 1 rank {one[-1]['step_s'] * 1e3:7.1f} ms/step, "
              f"2 ranks {two[-1]['step_s'] * 1e3:7.1f} ms/step "
              f"(allreduce {two[-1]['allreduce_s'] * 1e3:.1f} ms, waiting for the other "
              f"rank {two[-1]['wait_s'] * 1e3:.1f} ms)")  # fmt: skip
    speedups = [a["step_s"] / b["step_s"] for a, b in zip(one, two, strict=True)]
    shares = [b["allreduce_s"] / b["step_s"] for b in two]
    speedup, share = statistics.median(speedups), statistics.median(shares)
    verdict = "PASS" if speedup >= TARGET else "MISS"
    print(f"speedup 2 ranks / 1 rank: {speedup:.2f} (min {min(speedups):.2f}, max "
          f"{max(speedups):.2f}; target >= {TARGET} {verdict})")  # fmt: skip
    wait = statistics.median(b["wait_s"] / b["step_s"] for b in two)
    print(f"allreduce share of the 2-rank step: {share:.1%} (plus {wait:.1%} waiting for the "
          "slower rank)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"one_rank": one, "two_ranks": two, "speedup": speedup,
                                         "allreduce_share": share}, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
