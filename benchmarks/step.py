"""How close is one backprop_gpu training step to the cost of its matrix products alone?

What is measured
----------------
*step*: one full float32 training step of an MLP through backprop_gpu's public API, the nnfs
loop: ``forward`` of every Dense / ReLU layer, ``SoftmaxCrossEntropy.forward(logits, y)``,
``loss.backward(loss.output, y)``, ``backward`` of every layer in reverse, then
``SGD(momentum=0.9)``: ``pre_update_params``, ``update_params`` on each Dense,
``post_update_params``. The data (random float32 X, int64 labels) is moved to the device once
with ``bg.asarray`` before timing, so the clock sees the step and not the transfer.

*floor*: the same step's matrix products alone, in plain NumPy float32 on preallocated
arrays (``out=``) and with no elementwise work: ``A @ W`` per layer forward, and per layer
backward ``dW = A.T @ G`` and ``dX = G @ W.T`` (including the first layer's ``dX``, which
``Dense.backward`` computes too). It is what the step would cost if everything but the BLAS
calls were free. On the CuPy backend the floor is still NumPy on the CPU.

*ratio* = step / floor. The target is ratio <= 1.5 for [784, 256, 256, 10] at batch 1024
(PASS / MISS is printed for that row); the other rows are reported only. At small batches the
matrix products are tiny and the Python overhead per call dominates, so their ratio is large.

How
---
A few warm-up steps, then the number of calls N per round is calibrated so a round takes about
0.2 s (separately for step and floor). Then 7 rounds of step and 7 of floor are run
interleaved (step, floor, floor, step, ...) so machine noise hits both; each round gives a time
per call and a ratio. The table shows the medians and the min / max of the per-round ratio.
The garbage collector is paused while a round runs (as ``timeit`` does). On CuPy the device
is synchronized before each clock read.

Run from the repository root::

    python benchmarks/step.py                  # full run (about 15 s on 2 cores)
    python -m benchmarks.step --quick          # fewer, shorter rounds: a CI smoke run
    python benchmarks/step.py --backend numpy --json step.json

Thread count and BLAS matter: NumPy's BLAS and its threads are printed (through threadpoolctl
when installed), as are OPENBLAS_CORETYPE and the backend.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as `python benchmarks/step.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import backprop_gpu as bg

LEARNING_RATE = 0.01
MOMENTUM = 0.9
SEED = 0
TARGET_RATIO = 1.5
NOISY_SPREAD = 1.25  # max / min of the per-round ratios above which a row is flagged as noisy


@dataclass(frozen=True)
class Case:
    """One benchmark row: layer sizes (inputs, hidden..., classes) and the batch size."""

    sizes: tuple[int, ...]
    batch: int
    target: float | None = None  # ratio to meet, or None when the row is only reported

    @property
    def model(self) -> str:
        return "-".join(map(str, self.sizes))


CASES = (
    Case((784, 256, 256, 10), 32),
    Case((784, 256, 256, 10), 128),
    Case((784, 256, 256, 10), 1024, target=TARGET_RATIO),
    Case((2, 64, 3), 300),
)


@dataclass(frozen=True)
class Settings:
    rounds: int  # timed rounds of step and of floor each
    round_seconds: float  # calibrated length of one round
    warmup: int  # untimed steps before calibrating


FULL = Settings(rounds=7, round_seconds=0.2, warmup=5)
QUICK = Settings(rounds=3, round_seconds=0.05, warmup=2)


@dataclass
class Result:
    model: str
    batch: int
    step_ms: float  # median over rounds of the time per step
    floor_ms: float  # median over rounds of the time per floor (matmuls only)
    ratio: float  # median over rounds of step / floor
    ratio_min: float
    ratio_max: float
    step_calls: int  # calls per round
    floor_calls: int
    final_loss: float
    target: float | None
    status: str  # "PASS", "MISS" or "-" (no target)


# --- what is timed -----------------------------------------------------------------------


def make_data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs and int64 class labels on the host."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((case.batch, case.sizes[0]), dtype=np.float32)
    y = rng.integers(0, case.sizes[-1], size=case.batch, dtype=np.int64)
    return X, y


def build_step(case: Case) -> tuple[Callable[[], None], Callable[[], float]]:
    """The training step as a no-argument callable, and a function reading the last loss.

    Layers, loss and optimizer are built once on the active backend; the data is put on the
    device here, once.
    """
    X_host, y_host = make_data(case)
    X, y = bg.asarray(X_host), bg.asarray(y_host)
    layers: list[Any] = []
    for i, (n_in, n_out) in enumerate(pairwise(case.sizes)):
        layers.append(bg.Dense(n_in, n_out, init="he", seed=SEED + i))
        if i < len(case.sizes) - 2:
            layers.append(bg.ReLU())
    dense = [layer for layer in layers if isinstance(layer, bg.Dense)]
    loss = bg.SoftmaxCrossEntropy()
    optimizer = bg.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    last: list[Any] = [None]  # the 0-d loss array; read only after timing (a sync on GPU)

    def step() -> None:
        out = X
        for layer in layers:
            out = layer.forward(out)
        last[0] = loss.forward(out, y)
        loss.backward(loss.output, y)
        grad = loss.dinputs
        for layer in reversed(layers):
            grad = layer.backward(grad)
        optimizer.pre_update_params()
        for layer in dense:
            optimizer.update_params(layer)
        optimizer.post_update_params()

    def check() -> float:
        """The last loss; raises if any array of the step is not float32 (a silent upcast
        would make the step slower for the wrong reason)."""
        arrays = {"loss.dinputs": loss.dinputs, "loss.output": loss.output}
        for i, layer in enumerate(layers):
            arrays[f"layers[{i}].output"] = layer.output
            arrays[f"layers[{i}].dinputs"] = layer.dinputs
        for i, layer in enumerate(dense):
            for name in ("weights", "biases", "dweights", "dbiases", "weight_momentums"):
                arrays[f"dense[{i}].{name}"] = getattr(layer, name)
        wrong = {k: str(a.dtype) for k, a in arrays.items() if str(a.dtype) != "float32"}
        if wrong:
            raise AssertionError(f"{case.model}: arrays not float32 after a step: {wrong}")
        return float(bg.to_numpy(last[0]))

    return step, check


def build_floor(case: Case) -> Callable[[], None]:
    """The step's matrix products alone, float32, into preallocated arrays, no elementwise
    work, on the active backend's device (NumPy on the CPU, CuPy on the GPU)."""
    xp = bg.get_backend().xp
    rng = np.random.default_rng(SEED)
    X, _ = make_data(case)
    pairs = list(pairwise(case.sizes))
    weights = [
        bg.asarray((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32))
        for n_in, n_out in pairs
    ]
    # acts[i] is layer i's input; acts[i + 1] its output (the next layer's input, no ReLU)
    acts = [bg.asarray(X)] + [xp.empty((case.batch, n_out), dtype=xp.float32) for _, n_out in pairs]
    grads = [
        bg.asarray(rng.standard_normal((case.batch, n_out), dtype=np.float32)) for _, n_out in pairs
    ]
    dweights = [xp.empty_like(w) for w in weights]
    dinputs = [xp.empty((case.batch, n_in), dtype=xp.float32) for n_in, _ in pairs]
    layers = range(len(pairs))

    def floor() -> None:
        for i in layers:
            xp.matmul(acts[i], weights[i], out=acts[i + 1])
        for i in reversed(layers):
            xp.matmul(acts[i].T, grads[i], out=dweights[i])
            xp.matmul(grads[i], weights[i].T, out=dinputs[i])  # also for the first layer

    return floor


# --- timing -------------------------------------------------------------------------------


def device_sync() -> Callable[[], None]:
    """Wait for queued device work (CuPy); a no-op on host backends."""
    return bg.get_backend().synchronize


def time_calls(fn: Callable[[], None], n: int, sync: Callable[[], None]) -> float:
    """Seconds per call of ``fn`` over ``n`` back-to-back calls."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        sync()
        start = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        return (time.perf_counter() - start) / n
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(fn: Callable[[], None], sync: Callable[[], None], seconds: float) -> int:
    """Calls per round so that a round takes about ``seconds``.

    Doubles the calls until they take a quarter of a round, then re-times that many twice and
    keeps the fastest, so one stall of the machine does not shrink the rounds.
    """
    n = 1
    while (per_call := time_calls(fn, n, sync)) * n < seconds / 4:
        n *= 2
    per_call = min(per_call, *(time_calls(fn, n, sync) for _ in range(2)))
    return max(1, round(seconds / per_call))


def verdict(ratio: float, target: float | None) -> str:
    """ "PASS" or "MISS" against ``target``; "-" for a row without one."""
    if target is None:
        return "-"
    return "PASS" if ratio <= target else "MISS"


def run_case(case: Case, settings: Settings, sync: Callable[[], None]) -> Result:
    step, check = build_step(case)
    floor = build_floor(case)
    for _ in range(settings.warmup):
        step()
        floor()
    check()
    n_step = calibrate(step, sync, settings.round_seconds)
    n_floor = calibrate(floor, sync, settings.round_seconds)
    step_times: list[float] = []
    floor_times: list[float] = []
    for r in range(settings.rounds):  # interleaved, alternating which goes first
        order = ("step", "floor") if r % 2 == 0 else ("floor", "step")
        for which in order:
            if which == "step":
                step_times.append(time_calls(step, n_step, sync))
            else:
                floor_times.append(time_calls(floor, n_floor, sync))
    final_loss = check()
    ratios = [s / f for s, f in zip(step_times, floor_times, strict=True)]
    ratio = statistics.median(ratios)
    return Result(
        model=case.model,
        batch=case.batch,
        step_ms=1e3 * statistics.median(step_times),
        floor_ms=1e3 * statistics.median(floor_times),
        ratio=ratio,
        ratio_min=min(ratios),
        ratio_max=max(ratios),
        step_calls=n_step,
        floor_calls=n_floor,
        final_loss=final_loss,
        target=case.target,
        status=verdict(ratio, case.target),
    )


# --- environment report -----------------------------------------------------------------


def blas_info() -> list[str]:
    """One line per BLAS library NumPy has loaded, with its thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        lines = [
            f"{p.get('internal_api')} {p.get('version')} "
            f"({p.get('architecture', '?')}, {p.get('threading_layer', '?')}): "
            f"{p.get('num_threads')} threads [{Path(p.get('filepath', '?')).name}]"
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
        return lines or ["no BLAS found by threadpoolctl"]
    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        summary = f"{blas.get('name')} {blas.get('version')}"
    except Exception as e:  # older NumPy without mode="dicts", or another layout
        summary = f"unknown ({type(e).__name__}: {e})"
    threads = ", ".join(
        f"{var}={os.environ[var]}"
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        if var in os.environ
    )
    return [
        f"{summary}: threads unknown (install threadpoolctl){'; ' + threads if threads else ''}"
    ]


def environment(backend: bg.Backend) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "backprop_gpu": bg.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "blas": blas_info(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
        "backend": backend.name,
        "device": str(backend.device),
        "backend_reason": backend.reason,
    }


# --- output -------------------------------------------------------------------------------


def print_header(env: dict[str, Any], settings: Settings) -> None:
    print(
        f"backprop_gpu {env['backprop_gpu']} step benchmark: Python {env['python']}, "
        f"NumPy {env['numpy']}, {env['cpu_count']} CPUs"
    )
    for line in env["blas"]:
        print(f"  BLAS: {line}")
    print(f"  OPENBLAS_CORETYPE: {env['openblas_coretype'] or 'unset'}")
    reason = f" ({env['backend_reason']})" if env["backend_reason"] else ""
    print(f"  backend: {env['backend']} on {env['device']}{reason}")
    if env["backend"] != "numpy":
        print("  note: the floor is NumPy matmuls on the CPU")
    print(
        f"  {settings.rounds} rounds of ~{settings.round_seconds:g} s each for step and floor, "
        "interleaved; times are medians per call, ratio = median of per-round step/floor"
    )
    print(f"  target: ratio <= {TARGET_RATIO:g} at batch 1024; other rows are reported only\n")


def print_table(results: Sequence[Result]) -> None:
    head = (
        f"{'model':<16} {'batch':>5} {'step ms':>9} {'floor ms':>9} {'ratio':>6} "
        f"{'min':>6} {'max':>6}  target"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        target = f"<= {r.target:g} {r.status}" if r.target is not None else "-"
        print(
            f"{r.model:<16} {r.batch:>5} {r.step_ms:>9.3f} {r.floor_ms:>9.3f} {r.ratio:>6.2f} "
            f"{r.ratio_min:>6.2f} {r.ratio_max:>6.2f}  {target}"
        )
    noisy = [f"{r.model}@{r.batch}" for r in results if r.ratio_max > NOISY_SPREAD * r.ratio_min]
    if noisy:
        print(
            f"\nwarning: the per-round ratio varied by more than {NOISY_SPREAD:g}x for "
            f"{', '.join(noisy)}: the machine was busy or throttled; rerun before trusting those"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one backprop_gpu float32 training step against its matmuls alone."
    )
    parser.add_argument(
        "--backend",
        choices=("numpy", "cupy", "auto"),
        default="auto",
        help="backprop_gpu backend (default: auto, CuPy when a GPU works)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer, shorter rounds (a CI smoke run)"
    )
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    try:
        backend = bg.set_backend(args.backend)
    except RuntimeError as e:
        print(f"step.py: {e}", file=sys.stderr)
        return 2
    env = environment(backend)
    print_header(env, settings)
    sync = device_sync()
    started = time.perf_counter()
    results = [run_case(case, settings, sync) for case in CASES]
    elapsed = time.perf_counter() - started
    print_table(results)
    print(f"\nmeasured in {elapsed:.1f} s")
    if args.json is not None:
        report = {
            "environment": env,
            "settings": asdict(settings) | {"quick": args.quick},
            "target_ratio": TARGET_RATIO,
            "elapsed_s": elapsed,
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    missed = [r for r in results if r.status == "MISS"]
    if missed and not args.quick:  # a quick (CI smoke) run is too short to judge
        print(f"step.py: {len(missed)} target(s) missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
