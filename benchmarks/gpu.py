"""One training step on a CUDA GPU: time, achieved TFLOP/s, and the share of the device's
matmul peak (measured here with a large float32 GEMM, so no spec sheet is needed).

    python benchmarks/gpu.py [--sizes 784,1024,1024,10] [--batch 4096] [--steps 200]

Needs CuPy and a working GPU (``pip install '.[cuda12]'``); elsewhere it exits with status 2
and says why. The step is the nnfs loop over the public API (forward, softmax cross-entropy,
backward, SGD with momentum), with CUDA events around many steps so the host never waits
inside the timed region.
"""

from __future__ import annotations

import argparse
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backprop_gpu as bg


def step_flops(sizes: list[int], batch: int) -> float:
    """Matrix-product FLOPs of one step: forward, dW and dX for every layer (2*m*n*k each)."""
    return sum(3 * 2 * batch * a * b for a, b in pairwise(sizes))


def timed(cupy: object, fn: object, repeats: int) -> float:
    """Seconds per call, measured with CUDA events."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()  # type: ignore[attr-defined]
    fn()  # type: ignore[operator]
    start.record()
    for _ in range(repeats):
        fn()  # type: ignore[operator]
    stop.record()
    stop.synchronize()
    return cupy.cuda.get_elapsed_time(start, stop) / 1e3 / repeats  # type: ignore[attr-defined]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,1024,1024,10")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    try:
        backend = bg.set_backend("cupy")
    except RuntimeError as e:
        print(f"gpu.py: no GPU to measure: {e}", file=sys.stderr)
        return 2
    cupy = backend.xp
    sizes = [int(s) for s in args.sizes.split(",")]
    rng = np.random.default_rng(0)
    X = bg.asarray(rng.standard_normal((args.batch, sizes[0])).astype(np.float32))
    y = bg.asarray(rng.integers(0, sizes[-1], args.batch))
    layers: list[object] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers += [bg.Dense(a, b, init="he", seed=i), bg.ReLU()]
    layers.pop()
    dense = [layer for layer in layers if isinstance(layer, bg.Dense)]
    loss, opt = bg.SoftmaxCrossEntropy(validate=False), bg.SGD(0.01, momentum=0.9)

    def step() -> None:
        out = X
        for layer in layers:
            out = layer.forward(out)  # type: ignore[attr-defined]
        loss.forward(out, y)
        grad = loss.backward(loss.output, y)
        for layer in reversed(layers):
            grad = layer.backward(grad)  # type: ignore[attr-defined]
        opt.step(dense)

    n = 8192
    a = cupy.ones((n, n), dtype=cupy.float32)
    peak = 2 * n**3 / timed(cupy, lambda: a @ a, 10)
    seconds = timed(cupy, step, args.steps)
    achieved = step_flops(sizes, args.batch) / seconds
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    print(f"device: {name}; float32 GEMM peak (measured, {n}^3): {peak / 1e12:.1f} TFLOP/s")
    print(
        f"MLP {sizes} batch {args.batch}: {seconds * 1e3:.3f} ms a step, "
        f"{achieved / 1e12:.2f} TFLOP/s = {achieved / peak:.0%} of the GEMM peak"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
