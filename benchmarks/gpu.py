"""The training step on a CUDA GPU under each precision policy: step time, achieved TFLOP/s,
and how it compares with a GEMM of the same dtype measured here (no spec sheet needed).

    python -m benchmarks.gpu [--sizes 784,1024,1024,10] [--batch 4096] [--steps 50]
                             [--policies float32,tf32,mixed16,mixed_bf16]

For each policy: ``Model.train`` over ``--steps`` batches of data already on the device
(shuffled gather, forward, softmax cross-entropy, backward, SGD with momentum; the policy's
casts, loss scaling and float32 update included), timed with CUDA events after a warm-up
epoch; its matrix products alone at the step's shapes in the policy's GEMM dtype (the
floor); and a large GEMM in that dtype (the dtype's measured rate). The goals of issue 16
on an H100/H200-class GPU: tf32 >= 3x the float32 step, mixed16 >= 4x, and every step at
least 50 % of its dtype's GEMM rate.

Needs CuPy and a working GPU (``pip install '.[cuda12]'``; mixed_bf16 also ml_dtypes);
elsewhere it exits with status 2 and says why.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backprop_gpu as bg
from backprop_gpu import precisions

GOALS = {"tf32": 3.0, "mixed16": 4.0}  # speed-up over the float32 step
GEMM_SHARE = 0.5  # of the dtype's measured GEMM rate, for the whole step


def step_flops(sizes: list[int], batch: int) -> float:
    """Matrix-product FLOPs of one step: forward, dW and dX for every layer but the first's
    dX (2*m*n*k each), as the model computes them."""
    layers = list(pairwise(sizes))
    return sum(2 * batch * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(layers))


def timed(cupy: Any, fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call, measured with CUDA events (after one untimed call)."""
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    fn()
    start.record()
    for _ in range(repeats):
        fn()
    stop.record()
    stop.synchronize()
    return float(cupy.cuda.get_elapsed_time(start, stop)) / 1e3 / repeats


def gemm_dtype(cupy: Any, policy: str) -> Any:
    """The dtype of the policy's matrix products (bfloat16 only asked for when needed: it
    needs ml_dtypes)."""
    if policy == "mixed_bf16":
        return precisions.compute_dtype("mixed_bf16", bg.get_backend(), "benchmarks.gpu")
    return cupy.float16 if policy == "mixed16" else cupy.float32


def build(sizes: list[int], policy: str) -> bg.Model:
    layers: list[Any] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers += [bg.Dense(a, b, init="he", seed=i), bg.ReLU()]
    layers.pop()
    model = bg.Model(layers, precision=policy)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.01, momentum=0.9))
    return model.finalize()


def measure(cupy: Any, policy: str, sizes: list[int], batch: int, steps: int,
            X: Any, y: Any) -> dict[str, float]:  # fmt: skip
    """One policy's step time, its GEMM floor and its dtype's GEMM rate."""
    model = build(sizes, policy)

    def epoch() -> None:
        model.train(X, y, epochs=1, batch_size=batch, print_every=0, seed=0)

    step = timed(cupy, epoch, 2) / steps
    dtype = gemm_dtype(cupy, policy)
    policy_passes = model._policy if isinstance(model._policy, precisions.TF32) else None
    rng = np.random.default_rng(0)
    operands = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        x = cupy.asarray(rng.standard_normal((batch, a))).astype(dtype)
        w = cupy.asarray(rng.standard_normal((a, b))).astype(dtype)
        d = cupy.asarray(rng.standard_normal((batch, b))).astype(dtype)
        operands.append((i, x, w, d))

    def gemms() -> None:
        for i, x, w, d in operands:
            x @ w  # forward
            x.T @ d  # dweights
            if i:
                d @ w.T  # dinputs (not for the first layer)

    n = 8192
    big = cupy.ones((n, n), dtype=dtype)
    if policy_passes is not None:  # (tf32: CuPy's float32 compute type set to TF32)
        with policy_passes.computing(model):
            floor, rate = timed(cupy, gemms, 20), 2 * n**3 / timed(cupy, lambda: big @ big, 10)
    else:
        floor, rate = timed(cupy, gemms, 20), 2 * n**3 / timed(cupy, lambda: big @ big, 10)
    return {"step": step, "floor": floor, "rate": rate,
            "achieved": step_flops(sizes, batch) / step}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,1024,1024,10")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=50, help="batches an epoch (timed)")
    parser.add_argument("--policies", default=",".join(precisions.POLICIES))
    args = parser.parse_args()
    try:
        backend = bg.set_backend("cupy")
    except RuntimeError as e:
        print(f"benchmarks.gpu: no GPU to measure: {e}", file=sys.stderr)
        return 2
    cupy = backend.xp
    if os.environ.get("CUPY_TF32", "0") != "0":  # (else the float32 row would be TF32 too)
        from cupy._core import _routines_linalg as linalg

        linalg.set_compute_type(np.float32, linalg.COMPUTE_TYPE_DEFAULT)
        print("note: CUPY_TF32 is set; float32 is set back to float32 here (tf32 is its row)")
    sizes = [int(s) for s in args.sizes.split(",")]
    policies = [precisions.check(p, "--policies") for p in args.policies.split(",")]
    rows = args.batch * args.steps
    rng = np.random.default_rng(0)
    X = bg.asarray(rng.standard_normal((rows, sizes[0]), np.float32))
    y = bg.asarray(rng.integers(0, sizes[-1], rows))
    name = cupy.cuda.runtime.getDeviceProperties(backend.device.id)["name"].decode()
    print(f"device: {name}; MLP {sizes} batch {args.batch}, {args.steps} steps an epoch")
    results: dict[str, dict[str, float]] = {}
    failed = False
    for policy in policies:
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results[policy] = r = measure(cupy, policy, sizes, args.batch, args.steps, X, y)
        except Exception as e:  # (a policy this GPU or CuPy cannot run: say so, go on)
            print(f"{policy:>10}: failed: {type(e).__name__}: {e}")
            failed = True
            continue
        share = r["achieved"] / r["rate"]
        verdict = "PASS" if share >= GEMM_SHARE else "FAIL"
        failed |= share < GEMM_SHARE
        print(
            f"{policy:>10}: {r['step'] * 1e3:7.3f} ms a step, {r['achieved'] / 1e12:6.1f} "
            f"TFLOP/s; its GEMMs alone {r['floor'] * 1e3:7.3f} ms (step/floor "
            f"{r['step'] / r['floor']:.2f}); dtype's GEMM rate {r['rate'] / 1e12:6.1f} "
            f"TFLOP/s: {share:.0%} of it (goal >= {GEMM_SHARE:.0%}) {verdict}"
        )
        for w in caught:
            print(f"{'':>12}note: {w.message}")
    base = results.get("float32")
    for policy, goal in GOALS.items():
        if base is not None and policy in results:
            speedup = base["step"] / results[policy]["step"]
            verdict = "PASS" if speedup >= goal else "FAIL"
            failed |= speedup < goal
            print(f"{policy} / float32 step: {speedup:.2f}x faster (goal >= {goal:.0f}x) {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
