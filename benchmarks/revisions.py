"""Is ``Model.train`` in this tree slower than in an earlier revision? Side by side, one run.

What is measured
----------------
The seconds of one ``Model.train(X, y, epochs=E, batch_size=B)`` call (float32, SGD with
momentum, shuffled, NumPy backend) in three worker processes that run at the same time on
the same machine, each importing a different ``backprop_gpu``:

- ``base``: the package at ``--base`` (a git revision; default: before the fit loop left
  ``Model``, issue 14), checked out into a temporary folder with its own C extension built;
- ``head``: the package of this working tree;
- ``head+cb``: this tree with epoch-level callbacks that decide (EarlyStopping,
  ReduceLROnPlateau, a LambdaCallback): they must cost nothing per step. (CSVLogger is left
  out: its cost is one ``fsync`` an epoch, the disk's, not the loop's.)

The workers take turns (base, head, head+cb, head+cb, head, base, ...), so machine noise
hits all three; each round's times give the ratios ``head / base`` and ``head+cb / base``, and
the table prints their medians and min-max. Target: both medians <= 1.02 (``--strict`` exits 1
when missed).

Run from the repository root::

    python -m benchmarks.revisions                 # about a minute on 2 cores
    python -m benchmarks.revisions --base HEAD~5 --rounds 11
    python -m benchmarks.revisions --rounds 20 --fresh 2   # new processes every 2 rounds
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = "2f6c216"  # the last commit before issue 14 moved the fit loop out of Model
TARGET = 1.02
CASES = {  # name: (layer sizes, samples, batch, epochs per call)
    "784-1024-1024-10@1024": ((784, 1024, 1024, 10), 8192, 1024, 1),
    "2-64-3@128": ((2, 64, 3), 3072, 128, 10),
}

# One worker: builds each case's model once, then times a train() call per line it reads.
WORKER = textwrap.dedent(
    """
    import gc, sys, time
    import numpy as np
    import backprop_gpu as bg

    CASES = {cases!r}
    callbacks = {callbacks!r}
    bg.set_backend("numpy")
    built = {{}}
    for name, (sizes, n, batch, epochs) in CASES.items():
        rng = np.random.default_rng(0)
        X = rng.standard_normal((n, sizes[0]), dtype=np.float32)
        y = rng.integers(0, sizes[-1], n)
        layers = []
        for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
            layers.append(bg.Dense(a, b, seed=i))
            if i < len(sizes) - 2:
                layers.append(bg.ReLU())
        model = bg.Model(layers).set(loss=bg.SoftmaxCrossEntropy(),
                                     optimizer=bg.SGD(0.01, momentum=0.9)).finalize()
        kwargs = dict(epochs=epochs, batch_size=batch, print_every=0, seed=0,
                      validation_data=(X[:256], y[:256]))
        if callbacks:
            kwargs["callbacks"] = [
                bg.EarlyStopping("val_loss", patience=10**6),
                bg.ReduceLROnPlateau("val_loss", patience=10**6),
                bg.LambdaCallback(on_epoch_end=lambda epoch, logs: None),
            ]
        model.train(X, y, **kwargs)  # (warm-up: buffers, caches)
        built[name] = (model, X, y, kwargs)
    from backprop_gpu.backend import numpy_backend
    print("ready", "C" if numpy_backend.HAVE_C else "no-C", flush=True)
    for line in sys.stdin:
        model, X, y, kwargs = built[line.strip()]
        gc.collect(); gc.disable()
        start = time.perf_counter()
        model.train(X, y, **kwargs)
        seconds = time.perf_counter() - start
        gc.enable()
        print(seconds, flush=True)
    """
)


def checkout(revision: str, into: Path) -> Path:
    """The package at ``revision`` in ``into``, with its C extension built."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision], check=True,
                             capture_output=True).stdout  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=into,
                   check=True, capture_output=True)  # fmt: skip
    return into


class Worker:
    def __init__(self, tree: Path, callbacks: bool) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get(
            "OMP_NUM_THREADS", str(os.cpu_count() or 1))}  # fmt: skip
        env.pop("OPENBLAS_CORETYPE", None)  # (as users run: see benchmarks/suite.py)
        env.pop("OPENBLAS_L2_SIZE", None)
        code = WORKER.format(cases=CASES, callbacks=callbacks)
        self.process = subprocess.Popen([sys.executable, "-c", code], cwd=tree, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True)  # fmt: skip
        assert self.process.stdout is not None and self.process.stdin is not None
        ready = self.process.stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"the worker in {tree} did not start")
        self.kernels = ready[1]  # (whether its C extension was built and loaded)

    def time(self, case: str) -> float:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(case + "\n")
        self.process.stdin.flush()
        return float(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=BASE, help=f"git revision to compare (default {BASE})")
    parser.add_argument("--rounds", type=int, default=9, help="rounds per case (default 9)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--fresh", type=int, default=0, metavar="K",
                        help="new worker processes every K rounds (a process's own layout of "
                        "memory can bias it by a few percent; default 0: never)")  # fmt: skip
    args = parser.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bg-base-"))
    workers: dict[str, Worker] = {}
    try:
        base_tree = checkout(args.base, tmp)
        trees = {"base": (base_tree, False), "head": (ROOT, False), "head+cb": (ROOT, True)}

        def start() -> None:
            for name, (tree, callbacks) in trees.items():
                if name in workers:
                    workers[name].close()
                workers[name] = Worker(tree, callbacks)

        start()
        kernels = {worker.kernels for worker in workers.values()}
        if kernels != {"C"}:
            print(f"warning: not every worker has the C kernels: {kernels} (build them with "
                  "`python setup.py build_ext --inplace`)")  # fmt: skip
        print(
            f"Model.train, NumPy, {os.cpu_count()} cores; base = {args.base}, head = {ROOT}; "
            f"kernels: {', '.join(f'{n} {w.kernels}' for n, w in workers.items())}"
        )
        print(f"{'case':24} {'base s':>9} {'head/base':>18} {'head+cb/base':>18}")
        missed = False
        for case in CASES:
            times: dict[str, list[float]] = {name: [] for name in workers}
            order = list(workers)
            for r in range(args.rounds):
                if args.fresh and r and r % args.fresh == 0:
                    start()
                for name in order if r % 2 == 0 else order[::-1]:
                    times[name].append(workers[name].time(case))
            cells = []
            for name in ("head", "head+cb"):
                ratios = [t / b for t, b in zip(times[name], times["base"], strict=True)]
                median = statistics.median(ratios)
                missed |= median > TARGET
                cells.append(f"{median:.3f} ({min(ratios):.2f}-{max(ratios):.2f})")
            base_s = statistics.median(times["base"])
            print(f"{case:24} {base_s:9.4f} {cells[0]:>18} {cells[1]:>18}")
        print(f"target: medians <= {TARGET} -> {'MISS' if missed else 'PASS'}")
        return 1 if missed and args.strict else 0
    finally:
        for worker in workers.values():
            worker.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
