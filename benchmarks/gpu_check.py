"""The Python phases of ``benchmarks/gpu_check.sh``: backprop_gpu's CuPy path on a real GPU.

    python benchmarks/gpu_check.py preflight-cupy          # CuPy alone: exit 2 if no usable GPU
    python benchmarks/gpu_check.py preflight-project       # backend choice, host costs, 1st epoch
    python benchmarks/gpu_check.py timing --json T.json [--cases 784-1024-1024-10@4096,...]
        [--graph | --mpi | --step-only] [--dry-run]
    python benchmarks/gpu_check.py summary T.json ...      # the lines summary.txt gets

``timing`` cases use SoftmaxCrossEntropy and SGD momentum 0.9; per case (ms):
  first_train_s        first Model.train epoch from host data (H2D copy + NVRTC JIT)
  train_ms_step        Model.train on device data, CUDA events, per step (epoch overhead in)
  step_ms_pipelined    one training step back to back, events around R steps (no host wait)
  step_host_ms         host time to issue one step (cupyx.profiler.benchmark cpu time)
  step_device_ms       device time of one isolated step (cupyx.profiler.benchmark gpu time)
  gemm_ms              the step's matrix products alone (preallocated outputs): the floor
  sync_check           cupyx.allow_synchronize(False) around one step: "none detected" or why
  pool_*               CuPy memory-pool used/total bytes before and after the timed steps
``--step-only`` measures step_ms_pipelined alone (the script runs it again with
``BACKPROP_GPU_KERNELS=0``: the plain reference math on CuPy). ``--graph`` stream-captures one
step and times graph replays (a capture error means a sync or an H2D copy inside the step);
``--mpi`` times ``Model.train(distributed=...)`` as an MPI singleton. ``--dry-run`` uses NumPy
and perf_counter: it checks this code on a machine without a GPU.

Everything here uses the public API except what ``Internals`` (below, the one place) names.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

if not __package__:  # run as a script: make the checkout importable when it is not installed
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DEFAULT_CASES = "784-1024-1024-10@4096,784-1024-1024-10@512,784-256-256-10@128,2-64-3@300"
NO_GPU = 2  # exit status: no usable GPU


# --- internals (the ONE place this script reaches past the public API) ------------------------


class Internals:
    """Access to backprop_gpu internals the timings need (the names are tested by
    tests/test_gpu_check.py's dry run, so a rename fails CI, not a GPU run)."""

    @staticmethod
    def c_extension() -> str:
        """Whether the CPU C kernels are built (``backend.numpy_backend.HAVE_C``)."""
        from backprop_gpu.backend import numpy_backend

        return str(numpy_backend.HAVE_C)

    @staticmethod
    def train_step(model: Any, X: Any, y: Any) -> Callable[[], object]:
        """One training step on a device batch without the epoch around it
        (``Trainer._train_step``, with the ``_penalized`` list ``Trainer._epoch`` sets)."""
        from backprop_gpu.trainer import Trainer

        trainer = Trainer(model)
        trainer._penalized = []  # what Trainer._epoch sets first: build() has no L1/L2 penalty
        return lambda: trainer._train_step(X, y)

    @staticmethod
    def kernel_host_costs(backend: Any) -> dict[str, Callable[[], object]]:
        """Host cost probes of the CUDA kernel machinery: a kernel looked up
        (``cupy_backend._function``) and launched (``CupyOps._launch``)."""
        from backprop_gpu.backend import cupy_backend

        cupy = backend.xp
        x = cupy.ones((64, 64), cupy.float32)
        out = cupy.empty_like(x)
        name = "relu_backward_f32"
        ops, device_id = backend.ops, backend.device.id

        def lookup() -> object:
            return cupy_backend._function(device_id, name)

        def launch() -> None:
            ops._launch(name, x.size, x, x, out)

        t = time.perf_counter()
        lookup()
        print(f"CUDA module compiled and {name} loaded in {time.perf_counter() - t:.2f}s")
        return {f"kernel lookup ({name})": lookup, f"kernel launch ({name})": launch}


# --- preflight-cupy ---------------------------------------------------------------------------


def no_gpu(why: str) -> int:
    print(f"gpu-check: NO USABLE GPU: {why}", file=sys.stderr, flush=True)
    return NO_GPU


def preflight_cupy() -> int:
    """CuPy alone (not the library): a device, NVRTC (fill), cuBLAS, a RawKernel. Exit 2 with
    the reason when any is missing; quick on a machine with no driver."""
    t = time.perf_counter()
    try:
        import cupy
    except Exception as e:
        return no_gpu(f"CuPy does not import ({type(e).__name__}: {e})")
    print("cupy", cupy.__version__, "from", cupy.__file__)
    rt = cupy.cuda.runtime
    try:
        n = rt.getDeviceCount()
    except Exception as e:
        try:
            driver = rt.driverGetVersion()
        except Exception:
            driver = 0
        if driver == 0:
            return no_gpu(f"no NVIDIA driver ({type(e).__name__}: {e})")
        built = rt.runtimeGetVersion()
        return no_gpu(
            f"no device: getDeviceCount failed ({type(e).__name__}: {e}); "
            f"the driver supports CUDA {driver}, CuPy was built for {built}"
        )
    if n == 0:
        return no_gpu("no device: CUDA reports 0 devices")
    print("driver", rt.driverGetVersion(), "runtime", rt.runtimeGetVersion(), "devices", n)
    for i in range(n):
        p = rt.getDeviceProperties(i)
        print(f"GPU {i}: {p['name'].decode()} cc {p['major']}.{p['minor']}, "
              f"{p['multiProcessorCount']} SMs, {p['totalGlobalMem'] / 2**30:.1f} GiB")  # fmt: skip
    try:
        a = cupy.ones((256, 256), dtype=cupy.float32)  # fill: an NVRTC-compiled kernel
        s = float((a @ a).sum())  # cuBLAS, a reduction, a device-to-host copy
        assert s == 256.0**3, s
        src = r'extern "C" __global__ void f(float* x) { x[threadIdx.x] += 1.0f; }'
        x = cupy.zeros(32, dtype=cupy.float32)
        cupy.RawKernel(src, "f")((1,), (32,), (x,))
        assert float(x.sum()) == 32.0
        cupy.cuda.Device().synchronize()
    except Exception as e:
        return no_gpu(
            f"a device is there but CuPy cannot compute ({type(e).__name__}: {e}); "
            "NVRTC, the CUDA headers or cuBLAS missing? see cupy.show_config()"
        )
    print(f"preflight ok in {time.perf_counter() - t:.2f}s")
    return 0


# --- preflight-project --------------------------------------------------------------------------


def build(sizes: tuple[int, ...]) -> Any:
    """The timed model: Dense(he) + ReLU layers, SoftmaxCrossEntropy, SGD momentum 0.9."""
    import backprop_gpu as bg

    layers: list[Any] = []
    for i, (a, b) in enumerate(pairwise(sizes)):
        layers += [bg.Dense(a, b, init="he", seed=i), bg.ReLU()]
    layers.pop()
    model = bg.Model(layers)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.01, momentum=0.9))
    return model.finalize()


def host_us(fn: Callable[[], object], sync: Callable[[], None], n: int = 2000) -> float:
    """Host microseconds to issue one call of fn (the device is left to run behind)."""
    fn()
    sync()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    host = (time.perf_counter() - t) / n * 1e6
    sync()
    return host


def preflight_project() -> int:
    """Backend selection, host cost per call, the cost of a CuPy generator, a cold-cache then
    warm first Model.train epoch."""
    import backprop_gpu as bg

    print("backprop_gpu", bg.__file__, "| C extension:", Internals.c_extension(),
          "| ops:", type(getattr(bg.get_backend(), "ops", None)).__name__,
          "| BACKPROP_GPU_KERNELS:", os.environ.get("BACKPROP_GPU_KERNELS", "unset"))  # fmt: skip
    t = time.perf_counter()
    with bg.use_backend("auto") as auto:
        print(f"auto -> {auto.name} {auto.device} {auto.reason!r} ({time.perf_counter() - t:.2f}s)")
    try:
        backend = bg.set_backend("cupy")
    except Exception as e:
        return no_gpu(f"set_backend('cupy'): {type(e).__name__}: {e}")
    print("set_backend('cupy') ->", backend)
    cupy = backend.xp
    sync = cupy.cuda.Device().synchronize

    x = cupy.ones((64, 64), cupy.float32)
    y = cupy.ones((64, 64), cupy.float32)
    relu = bg.ReLU()
    relu.forward(x)
    idx_i, idx_j = cupy.arange(64), cupy.zeros(64, cupy.int64)

    def on_device() -> None:
        with backend.on_device():
            pass

    costs: dict[str, Callable[[], object]] = {
        "x + y (64x64)": lambda: x + y,
        "cupy.sum(x, axis=0)": lambda: cupy.sum(x, axis=0),
        "x @ y (64x64, cuBLAS)": lambda: x @ y,
        "x.astype(float64)": lambda: x.astype(cupy.float64),
        "x[arange, idx] (fancy indexing)": lambda: x[idx_i, idx_j],
        "Backend.on_device() enter+exit": on_device,
        "ReLU.backward (checks + kernel)": lambda: relu.backward(y),
        **Internals.kernel_host_costs(backend),
    }
    for name, fn in costs.items():
        print(f"host cost per call: {name:38s} {host_us(fn, sync):7.1f} us")

    for label in ("first (JIT)", "again"):
        t = time.perf_counter()
        cupy.random.default_rng(1).random((4096, 1024), cupy.float32)
        sync()
        print(f"cupy.random.default_rng(seed) + one (4096, 1024) draw, {label}: "
              f"{(time.perf_counter() - t) * 1e3:.1f} ms")  # fmt: skip

    rng = np.random.default_rng(0)
    sizes, batch = (784, 1024, 1024, 10), 4096
    X = rng.standard_normal((batch * 2, sizes[0]), dtype=np.float32)
    Y = rng.integers(0, sizes[-1], batch * 2)
    model = build(sizes)
    for label in ("cold (JIT)", "warm"):  # CUPY_CACHE_DIR is fresh for this phase
        t = time.perf_counter()
        history = model.train(X, Y, epochs=1, batch_size=batch, print_every=0, seed=0)
        print(f"first Model.train epoch {label}: {time.perf_counter() - t:.2f}s, "
              f"loss {history[0]['loss']:.4f}")  # fmt: skip
    return 0


# --- timing ---------------------------------------------------------------------------------


def parse_cases(text: str) -> list[tuple[tuple[int, ...], int]]:
    """``"784-1024-10@4096,2-64-3@300"`` -> ``[((784, 1024, 10), 4096), ((2, 64, 3), 300)]``."""
    out = []
    for item in text.split(","):
        sizes, _, batch = item.strip().partition("@")
        if not batch:
            raise ValueError(f"--cases: each case is SIZES@BATCH (784-1024-10@4096), got {item!r}")
        out.append((tuple(int(s) for s in sizes.split("-")), int(batch)))
    return out


def step_flops(sizes: tuple[int, ...], batch: int) -> int:
    """Matrix-product FLOPs of one step: forward and dweights for every layer, dinputs for all
    but the first (the Model skips the first layer's dinputs)."""
    return sum(2 * batch * a * b * (2 if i == 0 else 3) for i, (a, b) in enumerate(pairwise(sizes)))


class Clock:
    """Milliseconds per call: CUDA events on CuPy, perf_counter without it (--dry-run)."""

    def __init__(self, cupy: Any | None, stream: Any | None = None) -> None:
        self.cupy, self.stream = cupy, stream

    def time(self, fn: Callable[[], object], repeats: int) -> float:
        """Calls of fn() issued back to back, one wait at the end."""
        if self.cupy is None:
            t = time.perf_counter()
            for _ in range(repeats):
                fn()
            return (time.perf_counter() - t) * 1e3 / repeats
        start, stop = self.cupy.cuda.Event(), self.cupy.cuda.Event()
        start.record(self.stream)
        for _ in range(repeats):
            fn()
        stop.record(self.stream)
        stop.synchronize()
        return float(self.cupy.cuda.get_elapsed_time(start, stop)) / repeats


def pool_bytes(cupy: Any | None) -> dict[str, int]:
    if cupy is None:
        return {}
    pool = cupy.get_default_memory_pool()
    return {"used": int(pool.used_bytes()), "total": int(pool.total_bytes())}


def gemm_floor(xp: Any, sizes: tuple[int, ...], batch: int, clock: Clock, repeats: int) -> float:
    """The step's products with preallocated outputs (what no library can go below)."""
    f32 = np.float32
    acts = [xp.ones((batch, s), dtype=f32) for s in sizes]
    ws = [xp.ones((a, b), dtype=f32) * f32(0.01) for a, b in pairwise(sizes)]
    dws = [xp.empty_like(w) for w in ws]
    dxs = [xp.empty_like(a) for a in acts]

    def step() -> None:
        for i in range(len(ws)):
            xp.matmul(acts[i], ws[i], out=acts[i + 1])
        for i in reversed(range(len(ws))):
            xp.matmul(acts[i].T, acts[i + 1], out=dws[i])
            if i > 0:
                xp.matmul(acts[i + 1], ws[i].T, out=dxs[i])

    step()
    return clock.time(step, repeats)


def case_data(sizes: tuple[int, ...], n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, sizes[0]), dtype=np.float32), rng.integers(0, sizes[-1], n)


def run_case(
    sizes: tuple[int, ...], batch: int, cupy: Any | None, clock: Clock, steps: int, step_only: bool
) -> dict[str, object]:
    import backprop_gpu as bg

    r: dict[str, object] = {"sizes": list(sizes), "batch": batch}
    backend = bg.get_backend()
    k = max(4, min(20, 32768 // batch))  # steps per epoch
    X, y = case_data(sizes, batch * k)
    model = build(sizes)
    flops = step_flops(sizes, batch)
    r["step_gflop"] = flops / 1e9
    X_dev, y_dev = bg.asarray(X), bg.asarray(y)
    Xb, yb = X_dev[:batch], y_dev[:batch]
    if not step_only:
        t = time.perf_counter()
        history = model.train(X, y, epochs=1, batch_size=batch, print_every=0, seed=0)
        backend.synchronize()
        r["first_train_s"] = time.perf_counter() - t
        r["first_loss"] = history[0]["loss"]
        epochs = max(1, math.ceil(steps / k))
        timed: list[Any] = []
        wall = time.perf_counter()
        ms = clock.time(lambda: timed.append(model.train(X_dev, y_dev, epochs=epochs,
                        batch_size=batch, print_every=0, seed=1)), 1)  # fmt: skip
        r["train_ms_step"] = ms / (epochs * k)
        r["train_wall_ms_step"] = (time.perf_counter() - wall) * 1e3 / (epochs * k)
        r["loss_finite"] = all(math.isfinite(row["loss"]) for row in history + timed[0])
    with backend.on_device():
        step = Internals.train_step(model, Xb, yb)
        step()
        r["pool_before"] = pool_bytes(cupy)
        r["step_ms_pipelined"] = clock.time(step, steps)
        r["pool_after"] = pool_bytes(cupy)
        if cupy is not None and not step_only:
            import cupyx  # type: ignore[import-untyped]
            import cupyx.profiler  # type: ignore[import-untyped]

            res = cupyx.profiler.benchmark(step, (), n_repeat=50, n_warmup=3)
            r["step_host_ms"] = float(np.mean(res.cpu_times)) * 1e3
            r["step_device_ms"] = float(np.mean(res.gpu_times)) * 1e3
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with cupyx.allow_synchronize(False):
                        step()
                r["sync_check"] = "none detected"
            except Exception as e:  # cupyx.DeviceSynchronized, or the API is gone
                r["sync_check"] = f"{type(e).__name__}: {e}"[:300]
    if not step_only:
        r["gemm_ms"] = gemm_floor(backend.xp, sizes, batch, clock, max(20, steps // 2))
        r["tflops_gemm"] = flops / (float(r["gemm_ms"]) * 1e-3) / 1e12  # type: ignore[arg-type]
        r["gemm_share_of_step"] = float(r["gemm_ms"]) / float(r["step_ms_pipelined"])  # type: ignore[arg-type]
    r["tflops_step"] = flops / (float(r["step_ms_pipelined"]) * 1e-3) / 1e12  # type: ignore[arg-type]
    return r


def graph_case(sizes: tuple[int, ...], batch: int, cupy: Any, steps: int) -> dict[str, object]:
    """Stream-capture one step and replay it: what CUDA graphs would save."""
    import backprop_gpu as bg

    r: dict[str, object] = {"sizes": list(sizes), "batch": batch}
    model = build(sizes)
    X, y = case_data(sizes, batch)
    Xb, yb = bg.asarray(X), bg.asarray(y)
    stream = cupy.cuda.Stream(non_blocking=True)
    clock = Clock(cupy, stream)
    with bg.get_backend().on_device(), stream:
        step = Internals.train_step(model, Xb, yb)
        for _ in range(3):  # warm the pool's blocks for this stream, compile everything
            step()
        stream.synchronize()
        r["eager_ms_step"] = clock.time(step, steps)
        stream.begin_capture()
        try:
            step()
        finally:
            graph = stream.end_capture()
        graph.launch(stream)
        stream.synchronize()
        r["graph_ms_step"] = clock.time(lambda: graph.launch(stream), steps)
        first = next(iter(model.trainable_layers))
        r["weights_finite"] = bool(cupy.isfinite(first.weights).all())
    return r


def mpi_case(sizes: tuple[int, ...], batch: int, clock: Clock) -> dict[str, object]:
    """Model.train(distributed=Context()) as an MPI singleton, against the plain Model.train."""
    import backprop_gpu as bg
    from backprop_gpu.distributed import Context

    ctx = Context()
    k = 8
    X, y = case_data(sizes, batch * k)
    X_dev, y_dev = bg.asarray(X), bg.asarray(y)
    out: dict[str, object] = {"sizes": list(sizes), "batch": batch,
                              "transport": ctx.transport, "ranks": ctx.size}  # fmt: skip
    for kind, dist in (("distributed", ctx), ("plain", None)):
        model = build(sizes)
        kw: dict[str, Any] = {"distributed": dist} if dist is not None else {}
        model.train(X_dev, y_dev, epochs=1, batch_size=batch, print_every=0, seed=0, **kw)

        def four_epochs(model: Any = model, kw: dict[str, Any] = kw) -> object:
            return model.train(X_dev, y_dev, epochs=4, batch_size=batch, print_every=0, seed=1,
                               **kw)  # fmt: skip

        out[f"train_ms_step_{kind}"] = clock.time(four_epochs, 1) / (4 * k)
    return out


def device_info(cupy: Any, backend: Any) -> dict[str, object]:
    props = cupy.cuda.runtime.getDeviceProperties(backend.device.id)
    return {"name": props["name"].decode(), "sms": props["multiProcessorCount"],
            "cc": f"{props['major']}.{props['minor']}",
            "memory_gib": props["totalGlobalMem"] / 2**30}  # fmt: skip


def timing(args: argparse.Namespace) -> int:
    import backprop_gpu as bg

    out: dict[str, object] = {"argv": sys.argv[1:], "env": {k: v for k, v in os.environ.items()
                              if k.startswith(("CUPY_", "BACKPROP_GPU_", "CUDA_"))}}  # fmt: skip

    def save() -> None:  # after every case: a kill keeps what was measured
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))

    cupy: Any | None = None
    if args.dry_run:
        bg.set_backend("numpy")
    else:
        try:
            backend = bg.set_backend("cupy")
        except Exception as e:
            out["error"] = f"{type(e).__name__}: {e}"
            save()
            return no_gpu(f"set_backend('cupy'): {out['error']}")
        cupy = backend.xp
        out["device"] = device_info(cupy, backend)
        out["versions"] = {"cupy": cupy.__version__, "numpy": np.__version__,
                           "cuda_runtime": cupy.cuda.runtime.runtimeGetVersion(),
                           "driver": cupy.cuda.runtime.driverGetVersion()}  # fmt: skip
        if not (args.graph or args.mpi or args.step_only):
            nn = 8192
            a = cupy.ones((nn, nn), dtype=cupy.float32)
            c = cupy.empty_like(a)
            ms = Clock(cupy).time(lambda: cupy.matmul(a, a, out=c), 10)
            out["sgemm_8192_tflops"] = 2 * nn**3 / (ms * 1e-3) / 1e12
            del a, c
    clock = Clock(cupy)
    results: list[dict[str, object]] = []
    out["cases"] = results
    status = 0
    for sizes, batch in parse_cases(args.cases):
        try:
            if args.graph:
                if cupy is None:
                    print("--graph needs CuPy: skipped in --dry-run")
                    break
                results.append(graph_case(sizes, batch, cupy, args.steps))
            elif args.mpi:
                results.append(mpi_case(sizes, batch, clock))
            else:
                results.append(run_case(sizes, batch, cupy, clock, args.steps, args.step_only))
        except Exception as e:
            status = 1
            results.append({"sizes": list(sizes), "batch": batch,
                            "error": f"{type(e).__name__}: {e}",
                            "traceback": traceback.format_exc()[-3000:]})  # fmt: skip
        print(json.dumps(results[-1], default=str), flush=True)
        save()
        if args.mpi:
            break  # one case is enough
    save()
    return status


# --- summary ---------------------------------------------------------------------------------


def label(row: dict[str, Any]) -> str:
    return f"{'-'.join(map(str, row['sizes']))}@{row['batch']}"


def summary(paths: list[str]) -> int:
    """The timing lines of summary.txt, from the JSON files the timing phases wrote; the
    kernels-off step time comes from a file whose env has BACKPROP_GPU_KERNELS=0."""
    files = {p: json.loads(Path(p).read_text()) for p in paths if Path(p).is_file()}
    off: dict[str, float] = {}
    for d in files.values():
        if d.get("env", {}).get("BACKPROP_GPU_KERNELS") == "0":
            off |= {
                label(r): r["step_ms_pipelined"] for r in d.get("cases", []) if "error" not in r
            }
    print("--- timing (ms per step; pipelined = steps back to back; host/device = one step alone)")
    for path, d in files.items():
        env = d.get("env", {})
        if env.get("BACKPROP_GPU_KERNELS") == "0":
            continue
        print(f"{Path(path).name} ({d.get('device', {}).get('name', '?')}, "
              f"CUPY_TF32={env.get('CUPY_TF32', '0')}, "
              f"SGEMM 8192^3 {d.get('sgemm_8192_tflops', 0):.1f} TFLOP/s)")  # fmt: skip
        if "error" in d:
            print(f"  ERROR {d['error']}")
        for r in d.get("cases", []):
            if "error" in r:
                print(f"  {label(r):22s} ERROR {r['error']}")
            elif "step_ms_pipelined" in r:
                kernels_off = off.get(label(r))
                print(
                    f"  {label(r):22s} step {r['step_ms_pipelined']:.3f} (host "
                    f"{r.get('step_host_ms', 0):.3f}, device {r.get('step_device_ms', 0):.3f}, "
                    f"kernels off {'-' if kernels_off is None else f'{kernels_off:.3f}'}) "
                    f"train {r.get('train_ms_step', 0):.3f} gemm {r.get('gemm_ms', 0):.3f} "
                    f"[{r.get('gemm_share_of_step', 0):.0%}] {r['tflops_step']:.1f} TF/s; first "
                    f"epoch {r.get('first_train_s', 0):.2f}s; sync: {r.get('sync_check', '-')}; "
                    f"pool {r.get('pool_before', {}).get('total', 0) >> 20}->"
                    f"{r.get('pool_after', {}).get('total', 0) >> 20} MiB"
                )
            else:
                print(f"  {label(r):22s} {json.dumps(r, default=str)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("preflight-cupy", help="CuPy alone: exit 2 with the reason if no usable GPU")
    sub.add_parser("preflight-project", help="backend choice, host costs, first Model.train")
    t = sub.add_parser("timing", help="Model.train and one step timed with CUDA events")
    t.add_argument("--json", required=True, help="where the results go")
    t.add_argument("--cases", default=DEFAULT_CASES, help=f"default: {DEFAULT_CASES}")
    t.add_argument("--steps", type=int, default=200, help="timed steps per measurement")
    mode = t.add_mutually_exclusive_group()
    mode.add_argument("--graph", action="store_true", help="CUDA-graph replay of one step")
    mode.add_argument("--mpi", action="store_true", help="distributed=True as an MPI singleton")
    mode.add_argument("--step-only", action="store_true", help="the pipelined step time alone")
    t.add_argument("--dry-run", action="store_true", help="NumPy and perf_counter: no GPU")
    s = sub.add_parser("summary", help="summary.txt's timing lines from timing JSON files")
    s.add_argument("paths", nargs="*")
    args = p.parse_args(argv)
    if args.command == "preflight-cupy":
        return preflight_cupy()
    if args.command == "preflight-project":
        return preflight_project()
    if args.command == "timing":
        return timing(args)
    return summary(args.paths)


if __name__ == "__main__":
    raise SystemExit(main())
