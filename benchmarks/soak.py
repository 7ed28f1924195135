"""Soak: 100,000 training steps on the book's spiral classifier, with the process's resident
memory (RSS) read at the start and the end. Memory must not grow beyond noise.

Two loops, one after the other, each 100,000 steps:

- the hand-written nnfs loop over the public API (2 -> 64 -> 3, full batch of 300, SGD with
  decay and momentum, as in the book's chapter 10);
- ``Model.train`` with mini-batches of 3 (100 steps an epoch, 1,000 epochs), so the per-step
  machinery of the Model (batching, device-side metrics, label and checkpoint paths) runs
  100,000 times.

RSS is read from /proc/self/status after a warm-up of 1,000 steps and at the end; the
allowed growth is 2 MiB per loop. Prints one line per loop and exits 1 if either grows more.

    python benchmarks/soak.py [--steps 100000] [--backend auto|numpy|cupy]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backprop_gpu as bg
from backprop_gpu.datasets import spiral_data

ALLOWED_GROWTH_MIB = 2.0


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def sync() -> None:
    bg.get_backend().synchronize()


def hand_loop(steps: int, warmup: int) -> tuple[float, float, float, float]:
    """The book's loop; returns (rss after warm-up, rss at end, seconds, final loss)."""
    X, y = spiral_data(samples=100, classes=3, seed=0)
    X, y = bg.asarray(X), bg.asarray(y)
    dense1, relu, dense2 = bg.Dense(2, 64, seed=0), bg.ReLU(), bg.Dense(64, 3, seed=1)
    loss_fn = bg.SoftmaxCrossEntropy()
    optimizer = bg.SGD(learning_rate=1.0, decay=1e-3, momentum=0.9)
    start_rss, start = 0.0, 0.0
    loss = None
    for step in range(steps):
        if step == warmup:
            sync()
            start_rss, start = rss_mib(), time.perf_counter()
        loss = loss_fn.forward(dense2.forward(relu.forward(dense1.forward(X))), y)
        dense1.backward(relu.backward(dense2.backward(loss_fn.backward(loss_fn.output, y))))
        optimizer.step([dense1, dense2])
    sync()
    return start_rss, rss_mib(), time.perf_counter() - start, float(loss)  # type: ignore[arg-type]


def model_loop(steps: int, warmup: int) -> tuple[float, float, float, float]:
    """Model.train with batches of 3: 100 steps an epoch."""
    X, y = spiral_data(samples=100, classes=3, seed=0)
    model = bg.Model([bg.Dense(2, 64, seed=0, init="he"), bg.ReLU(), bg.Dense(64, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(learning_rate=1e-3)).finalize()
    steps_per_epoch = 100
    model.train(X, y, epochs=warmup // steps_per_epoch, batch_size=3, print_every=0, seed=0)
    sync()
    start_rss, start = rss_mib(), time.perf_counter()
    history = model.train(
        X, y, epochs=(steps - warmup) // steps_per_epoch, batch_size=3, print_every=0, seed=0
    )
    sync()
    return start_rss, rss_mib(), time.perf_counter() - start, history[-1]["loss"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--backend", default="auto", choices=["auto", "numpy", "cupy"])
    args = parser.parse_args()
    backend = bg.set_backend(args.backend)
    warmup = 1_000
    print(f"soak: {args.steps} steps a loop on {backend.name}; RSS after {warmup} warm-up steps")
    ok = True
    for name, loop in (("hand-written nnfs loop", hand_loop), ("Model.train, batch 3", model_loop)):
        before, after, seconds, loss = loop(args.steps, warmup)
        growth = after - before
        ok &= growth <= ALLOWED_GROWTH_MIB
        verdict = "ok" if growth <= ALLOWED_GROWTH_MIB else f"GROWS (> {ALLOWED_GROWTH_MIB} MiB)"
        print(
            f"{name:24s} RSS {before:7.1f} -> {after:7.1f} MiB ({growth:+.2f} MiB), "
            f"{(args.steps - warmup) / seconds:8.0f} steps/s, final loss {loss:.4f}: {verdict}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
