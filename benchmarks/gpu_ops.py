"""Device operations per training step on the CuPy path, counted without a GPU.

    python -m benchmarks.gpu_ops [--verbose] [--steps 3] [--epochs 2]

``Model.train`` runs a few epochs on ``benchmarks.trace.EmulatedCupyBackend`` (the package's
CuPy code, ``CupyOps`` included, over NumPy arrays posing as CuPy's; each CUDA kernel launch
runs its CPU computation), with the data already on the device, shuffled and in order, for
an MLP of sizes [784, 1024, 1024, 10] at batch 512 and [2, 64, 3] at batch 300, each with
SGD(momentum=0.9) and Adam. Every device operation is counted by the rules in
``benchmarks/trace.py``: GEMMs, the package's own kernels, CuPy's other kernels,
memsets/copies, host<->device transfers. Printed per step (the first step, which creates
the optimizer state, and the steady one after it) against the target of at most 8 GEMMs and
10 other operations a step for a 3-layer MLP, and per epoch the operations outside the
steps (the shuffle order's copy and the snapshot at the start; the metrics read and the
finiteness checks at the end). ``--verbose`` lists which layer and op issued what. Then,
for the ops a mixed-precision step runs on float16/bfloat16 arrays, the device operations of
one call with ``CupyOps``' 16-bit kernel and with the reference ops (``half_op_counts``).

The counts depend on the operations, not on the array sizes (checked: ``--check-sizes``
counts each model again at a quarter of its widths and batch and requires equal counts).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backprop_gpu as bg
from benchmarks.trace import (
    KINDS,
    EmulatedCupyBackend,
    Event,
    Segment,
    breakdown,
    tally,
    trace_training,
)

TARGET_GEMMS = 8  # a 3-layer MLP: 3 forward products, 3 weight gradients, 2 input gradients
# the ops of a mixed step that have float16/bfloat16 kernels (cuda_source.HALF_KERNELS)
HALF_OPS = ("bias_relu", "relu_backward", "relu_backward_bias_gradient", "take_batch", "unscale")
TARGET_OTHERS = 10
CASES = (((784, 1024, 1024, 10), 512), ((2, 64, 3), 300))
OPTIMIZERS = ("sgd_momentum", "adam")


@dataclass(frozen=True)
class Count:
    """The counted run of one configuration: each segment of ``trace_training``."""

    sizes: tuple[int, ...]
    batch: int
    optimizer: str
    shuffle: bool
    segments: list[Segment]

    @property
    def steps(self) -> list[Segment]:
        return [s for s in self.segments if s.label == "step"]

    def step(self, which: int) -> dict[str, int]:
        """The tally of step ``which`` (0: the first; -1: the last, the steady state)."""
        return tally(self.steps[which].events)

    def epoch(self, label: str, epoch: int) -> list[Event]:
        return [e for s in self.segments if s.label == label and s.epoch == epoch for e in s.events]


def make_optimizer(name: str) -> Any:
    if name == "sgd_momentum":
        return bg.SGD(0.01, momentum=0.9)
    if name == "adam":
        return bg.Adam(0.001)
    raise ValueError(f"gpu_ops: optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


def count(
    sizes: Sequence[int],
    batch: int,
    optimizer: str,
    *,
    shuffle: bool = True,
    steps: int = 3,
    epochs: int = 2,
    backend: EmulatedCupyBackend | None = None,
) -> Count:
    """Train an MLP of ``sizes`` (Dense+ReLU, the last Dense then softmax cross-entropy) for
    ``epochs`` epochs of ``steps`` batches of ``batch`` on an emulated CuPy backend, with the
    data on the device, and return what each part of the run issued."""
    backend = EmulatedCupyBackend() if backend is None else backend
    rng = np.random.default_rng(0)
    n = steps * batch
    X = rng.standard_normal((n, sizes[0])).astype(np.float32)
    y = rng.integers(0, sizes[-1], n)
    with bg.use_backend(backend):
        layers: list[Any] = []
        for i, (a, b) in enumerate(pairwise(sizes)):
            layers += [bg.Dense(a, b, init="he", seed=i), bg.ReLU()]
        model = bg.Model(layers[:-1])
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=make_optimizer(optimizer),
                  accuracy=bg.Accuracy())  # fmt: skip
        model.finalize()
        X_dev, y_dev = backend.asarray(X), backend.asarray(y)
        segments = trace_training(model, X_dev, y_dev, epochs=epochs, batch_size=batch,
                                  shuffle=shuffle, seed=0, print_every=0)  # fmt: skip
    return Count(tuple(sizes), batch, optimizer, shuffle, segments)


def others(t: dict[str, int]) -> int:
    """Every counted operation but the GEMMs."""
    return t["total"] - t["gemm"]


HEADER = f"{'':34}" + "".join(f"{k:>12}" for k in KINDS) + f"{'total':>8}"


def row(label: str, t: dict[str, int]) -> str:
    return f"{label:34}" + "".join(f"{t[k]:>12}" for k in KINDS) + f"{t['total']:>8}"


def report(c: Count, verbose: bool) -> list[str]:
    """The lines printed for one configuration."""
    order = "shuffled" if c.shuffle else "in order"
    lines = [f"MLP {list(c.sizes)} batch {c.batch}, {c.optimizer}, data on the device, {order}:"]
    first, steady = c.step(0), c.step(-1)
    lines.append(row("  first step (state created)", first))
    lines.append(row("  each step after", steady))
    if any(c.step(i) != steady for i in range(1, len(c.steps))):
        lines.append("  (the steps after the first differ: " + ", ".join(
            str(c.step(i)["total"]) for i in range(len(c.steps))) + ")")  # fmt: skip
    if len(c.sizes) == 4:
        ok = steady["gemm"] <= TARGET_GEMMS and others(steady) <= TARGET_OTHERS
        lines.append(
            f"  target <= {TARGET_GEMMS} GEMMs + {TARGET_OTHERS} others a step: "
            f"{steady['gemm']} + {others(steady)}: {'MET' if ok else 'NOT MET'}"
        )
    last_epoch = c.segments[-1].epoch - 1
    lines.append(row(f"  epoch {last_epoch} start", tally(c.epoch("start", last_epoch))))
    lines.append(row(f"  epoch {last_epoch} end", tally(c.epoch("epoch end", last_epoch))))
    if verbose:
        for title, events in (
            ("each step after the first", c.steps[-1].events),
            (f"epoch {last_epoch} start", c.epoch("start", last_epoch)),
            (f"epoch {last_epoch} end", c.epoch("epoch end", last_epoch)),
        ):
            lines.append(f"  {title}, by site:")
            for site, kind, op, n in breakdown(events):
                lines.append(f"    {n:>3} x {kind:<11} {op:<34} {site}")
    return lines


def half_op_counts(
    dtype: Any = np.float16, backend: EmulatedCupyBackend | None = None
) -> dict[str, tuple[int, int]]:
    """For each op of ``HALF_OPS``, the device operations of one call on ``dtype`` arrays
    (float16, or ml_dtypes.bfloat16) on the CuPy path: (with CupyOps' kernel, with the
    reference ops). The arrays are a (64, 32) layer's activations and gradients, its biases,
    a batch of 16 rows gathered from them, and (``unscale``) the float32 master gradient and
    the step's finiteness flag."""
    backend = EmulatedCupyBackend() if backend is None else backend
    rng = np.random.default_rng(0)
    with backend.xp.paused():  # (the copies to the device are not what is counted)
        z, d, grad = (backend.asarray(rng.standard_normal((64, 32)).astype(dtype)) for _ in "zdg")
        biases = backend.asarray(rng.standard_normal((1, 32)).astype(dtype))
        master = backend.asarray(np.zeros((64, 32), np.float32))
        flag = backend.asarray(np.zeros(1, np.int32))
        y, rows = (
            backend.asarray(rng.integers(0, 10, 64)),
            backend.asarray(rng.permutation(64)[:16]),
        )
    calls = {
        "bias_relu": lambda ops: ops.bias_relu(z, biases),
        "relu_backward": lambda ops: ops.relu_backward(d, z),
        "relu_backward_bias_gradient": lambda ops: ops.relu_backward_bias_gradient(d, z),
        "take_batch": lambda ops: ops.take_batch(z, y, rows),
        "unscale": lambda ops: ops.unscale(grad, master, 1024.0, flag),
    }
    counts = {}
    for name in HALF_OPS:
        totals = []
        for ops in (backend.ops, backend.with_reference_ops().ops):
            start = len(backend.events)
            calls[name](ops)
            totals.append(tally(backend.events[start:])["total"])
        counts[name] = (totals[0], totals[1])
    return counts


def same_counts(a: Count, b: Count) -> bool:
    """Whether two runs issued the same operations in every segment, from the same sites
    (the layers' sizes in the sites' names aside)."""

    def key(c: Count) -> list[tuple[str, list[tuple[str, str, str]]]]:
        return [(s.label, [(e.kind, e.op, re.sub(r"\(\d+, \d+\)", "", e.site))
                           for e in s.events]) for s in c.segments]  # fmt: skip

    return key(a) == key(b)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="which layer/op issued what")
    parser.add_argument("--steps", type=int, default=3, help="batches an epoch (default 3)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs (default 2)")
    parser.add_argument("--check-sizes", action="store_true",
                        help="count again at a quarter of the widths and batch")  # fmt: skip
    args = parser.parse_args(argv)
    print("Device operations per step on the CuPy path (emulated on the CPU: benchmarks/trace.py)")
    print(HEADER)
    failed = False
    for sizes, batch in CASES:
        for optimizer in OPTIMIZERS:
            for shuffle in (True, False):
                c = count(sizes, batch, optimizer, shuffle=shuffle, steps=args.steps,
                          epochs=args.epochs)  # fmt: skip
                print("\n".join(report(c, args.verbose)))
                if args.check_sizes:
                    small = tuple([sizes[0], *(max(2, s // 4) for s in sizes[1:-1]), sizes[-1]])
                    other = count(small, max(1, batch // 4), optimizer, shuffle=shuffle,
                                  steps=args.steps, epochs=args.epochs)  # fmt: skip
                    same = same_counts(c, other)
                    failed |= not same
                    print(f"  the same operations at sizes {list(small)} batch {other.batch}: "
                          f"{'yes' if same else 'NO'}")  # fmt: skip
    print("\nThe 16-bit ops of a mixed step, device operations of one call (float16; bfloat16")
    print("the same; unscale: once a gradient):")
    print(f"{'':34}{'kernel':>12}{'reference':>12}")
    for name, (kernel, reference) in half_op_counts().items():
        print(f"  {name:32}{kernel:>12}{reference:>12}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
