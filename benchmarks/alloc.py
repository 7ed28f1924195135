"""What fresh arrays cost a training step, against arrays reused from the previous step.

Two measurements, each way in a child process of its own (peak RSS belongs to a process), the
rounds alternating between the children so machine noise hits all of them:

- ``gemm``: the [784, 256, 256, 10] step's matrix products at batch 1024 in plain NumPy
  float32, *fresh* (``A @ W``: a new output every call, as a hand-written loop allocates
  ``output`` and ``dinputs``) and *reused* (``np.matmul(A, W, out=buf)``). With glibc's
  default malloc each multi-MiB array is ``mmap``-ed and unmapped, or trimmed, every step and
  its pages fault in again: the ratio fresh / reused is what allocation costs.
- ``model``: ``Model.train`` on [784, 1024, 1024, 10] at batch 512 (SGD with momentum), with
  its step buffers (the default on NumPy: each step writes into the previous step's arrays)
  and without (``NumpyBackend.reuses_step_buffers = False``: fresh arrays every step).

The package does not touch the allocator (an earlier version raised glibc's malloc
thresholds on import; a library must not retune its host process).

    python -m benchmarks.alloc            # about 30 s
    python -m benchmarks.alloc --rounds 3 # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np

SIZES = (784, 256, 256, 10)
BATCH = 1024
MODEL_SIZES = (784, 1024, 1024, 10)
MODEL_BATCH = 512


def _matmuls(fresh: bool, calls: int) -> float:
    """Seconds per step of forward + backward GEMMs (first layer's dX excluded)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, SIZES[0]), dtype=np.float32)
    ws = [rng.standard_normal((a, b), dtype=np.float32) for a, b in pairwise(SIZES)]
    acts = [x] + [np.empty((BATCH, b), np.float32) for b in SIZES[1:]]
    dws = [np.empty_like(w) for w in ws]
    dxs = [np.empty((BATCH, a), np.float32) for a in SIZES[:-1]]

    def step() -> None:
        a = x
        outs = [x]
        for i, w in enumerate(ws):
            a = a @ w if fresh else np.matmul(a, w, out=acts[i + 1])
            outs.append(a)
        g = outs[-1]
        for i in reversed(range(len(ws))):
            if fresh:
                _ = outs[i].T @ g
                g = g @ ws[i].T if i else g
            else:
                np.matmul(outs[i].T, g, out=dws[i])
                g = np.matmul(g, ws[i].T, out=dxs[i]) if i else g

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def _model(fresh: bool, calls: int) -> float:
    """Seconds per step of Model.train, with or without its step buffers."""
    import backprop_gpu as bg
    from backprop_gpu.backend.numpy_backend import NumpyBackend

    NumpyBackend.reuses_step_buffers = not fresh
    bg.set_backend("numpy")
    rng = np.random.default_rng(0)
    X = rng.standard_normal((MODEL_BATCH * 4, MODEL_SIZES[0]), dtype=np.float32)
    y = rng.integers(0, MODEL_SIZES[-1], len(X))
    layers: list[object] = []
    for i, (a, b) in enumerate(pairwise(MODEL_SIZES)):
        layers += [bg.Dense(a, b, init="he", seed=i)] + ([bg.ReLU()] if b != 10 else [])
    model = bg.Model(layers)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.01, momentum=0.9))
    model.finalize()
    model.train(X, y, epochs=1, batch_size=MODEL_BATCH, print_every=0, seed=0)
    epochs = max(1, calls // 4)
    start = time.perf_counter()
    model.train(X, y, epochs=epochs, batch_size=MODEL_BATCH, print_every=0, seed=0)
    return (time.perf_counter() - start) / (4 * epochs)


def _child(what: str, fresh: bool, calls: int) -> None:
    seconds = (_matmuls if what == "gemm" else _model)(fresh, calls)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_mib": peak}))


def _run(what: str, fresh: bool, calls: int) -> dict[str, float]:
    args = [sys.executable, "-m", "benchmarks.alloc", "--child", what, "--calls", str(calls)]
    if fresh:
        args.append("--fresh")
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--child", choices=("gemm", "model"), help=argparse.SUPPRESS)
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.fresh, args.calls)
        return
    runs: dict[tuple[str, bool], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for what in ("gemm", "model"):
            for fresh in (True, False):
                runs.setdefault((what, fresh), []).append(_run(what, fresh, args.calls))
    labels = {
        "gemm": f"{SIZES} batch {BATCH}, float32 GEMMs",
        "model": f"Model.train {MODEL_SIZES} batch {MODEL_BATCH}",
    }
    print(f"ms/step and peak RSS (medians of {args.rounds} rounds, a process each)")
    for what, label in labels.items():
        ms = {f: statistics.median(r["seconds"] for r in runs[what, f]) * 1e3 for f in (1, 0)}
        rss = {f: statistics.median(r["peak_mib"] for r in runs[what, f]) for f in (1, 0)}
        print(
            f"  {label}: fresh {ms[1]:6.2f} ms {rss[1]:6.1f} MiB   reused {ms[0]:6.2f} ms "
            f"{rss[0]:6.1f} MiB   fresh/reused {ms[1] / ms[0]:.2f} (time) "
            f"{rss[1] / rss[0]:.2f} (peak RSS)"
        )


if __name__ == "__main__":
    main()
