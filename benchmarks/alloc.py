"""Does glibc's malloc tuning (``backprop_gpu._malloc``) pay? Fresh arrays against reused ones.

The [784, 256, 256, 10] step's matrix products at batch 1024, in plain NumPy float32, two ways:
*fresh* (``A @ W``: a new output array every call, as a training step allocates ``output`` and
``dinputs``) and *reused* (``np.matmul(A, W, out=buf)`` on preallocated arrays). Each way runs
in a child process with ``BACKPROP_GPU_MALLOC=0`` (glibc defaults) and with ``=1`` (the
package's tuning, applied by importing it); rounds alternate between the four children so
machine noise hits all of them. The ratio fresh / reused is what allocation costs: with
glibc's defaults each multi-MiB array is mmap-ed and unmapped (or trimmed) every step and its
pages fault in again.

    python -m benchmarks.alloc            # about 20 s
    python -m benchmarks.alloc --rounds 3 # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from itertools import pairwise

import numpy as np

SIZES = (784, 256, 256, 10)
BATCH = 1024


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


def _child(fresh: bool, calls: int) -> None:
    import backprop_gpu  # noqa: F401  (applies the malloc tuning unless BACKPROP_GPU_MALLOC=0)
    from backprop_gpu import _malloc

    print(json.dumps({"seconds": _matmuls(fresh, calls), "tuned": _malloc.tuned}))


def _run(fresh: bool, tuned: bool, calls: int) -> float:
    env = dict(os.environ, BACKPROP_GPU_MALLOC="1" if tuned else "0")
    args = [sys.executable, "-m", "benchmarks.alloc", "--child", "--calls", str(calls)]
    if fresh:
        args.append("--fresh")
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    if result["tuned"] != tuned:
        sys.exit("malloc tuning is not available here (not glibc?): nothing to compare")
    return float(result["seconds"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fresh", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.fresh, args.calls)
        return
    times: dict[tuple[bool, bool], list[float]] = {}
    for _ in range(args.rounds):
        for tuned in (False, True):
            for fresh in (True, False):
                times.setdefault((tuned, fresh), []).append(_run(fresh, tuned, args.calls))
    print(f"{SIZES} batch {BATCH}, float32 GEMMs, ms/step (median of {args.rounds} rounds)")
    for tuned in (False, True):
        fresh = statistics.median(times[tuned, True]) * 1e3
        reused = statistics.median(times[tuned, False]) * 1e3
        label = "tuned (default)" if tuned else "glibc defaults "
        ratio = fresh / reused
        print(f"  {label}: fresh {fresh:6.2f}  reused {reused:6.2f}  fresh/reused {ratio:.2f}")


if __name__ == "__main__":
    main()
