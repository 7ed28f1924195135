"""What a Dropout mask's uniforms cost on the NumPy backend: ms per (1024, 1024) float32 draw.

Side by side, in one run: NumPy's ``default_rng().random`` (what Dropout used before), the
plain-xp Philox4x32-10 reference (``philox.uniform_reference``) and the C extension's
(``philox.uniform_c``, what Dropout uses on NumPy when it is built). The best of ``--repeat``
timings of ``--number`` draws each.

    python -m benchmarks.dropout_rng            # a few seconds
"""

from __future__ import annotations

import argparse
import timeit

import numpy as np

import backprop_gpu as bg
from backprop_gpu import philox

SHAPE = (1024, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=10, help="draws a timing")
    parser.add_argument("--repeat", type=int, default=7, help="timings (the best is shown)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    args = parser.parse_args()
    with bg.use_backend("numpy") as backend:
        generator = np.random.default_rng(0)
        contenders = {
            "numpy default_rng().random": lambda: generator.random(SHAPE, dtype=args.dtype),
            "Philox, plain xp": lambda: philox.uniform_reference(
                backend, 1, (0, 0), SHAPE, args.dtype
            ),
        }
        if philox.HAVE_C:
            contenders["Philox, C"] = lambda: philox.uniform_c(
                backend, 1, (0, 0), SHAPE, args.dtype
            )
        print(f"ms per {SHAPE} {args.dtype} draw (best of {args.repeat} x {args.number}):")
        for name, draw in contenders.items():
            best = min(timeit.repeat(draw, number=args.number, repeat=args.repeat))
            print(f"  {name:28s} {best / args.number * 1e3:7.2f}")
        if not philox.HAVE_C:
            print("  (Philox, C: backprop_gpu._cpu is not built here)")


if __name__ == "__main__":
    main()
