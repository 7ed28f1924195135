"""The contenders of the benchmark suite, and the worker process that runs one of them.

Each contender runs alone in its own process (two BLAS / OpenMP thread pools in one process
would steal each other's cores), started by :mod:`benchmarks.suite` as::

    python -m benchmarks.contenders NAME --threads N [--backend auto|numpy|cupy]

with OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and MKL_NUM_THREADS set to N in its environment;
inside, ``threadpoolctl.threadpool_limits(N)`` (and ``torch.set_num_threads(N)``) pin it again.

The worker reads one JSON command a line on stdin and answers one JSON line on stdout
(anything the libraries print goes to stderr):

- ``hello``: versions, BLAS and thread pools (threadpoolctl), the backprop_gpu backend;
- ``prepare`` {case, round_seconds, warmup_steps, quick}: build the contender for the case,
  warm it up, and calibrate the calls per round so a round takes about ``round_seconds``;
- ``round``: one timed round; returns the seconds per training step;
- ``finish``: the checks after the timed steps (dtypes, the last loss, notes) and cleanup;
- ``memory`` {case, steps}: run ``steps`` steps; peak RSS (``ru_maxrss``) of this process, so
  the suite sends it to a fresh worker;
- ``growth`` {case, steps, warmup_steps}: VmRSS after a warm-up and after ``steps`` steps;
- ``exit``.

One "call" of a contender is one training step, except for ``bg-model`` (one call is one
epoch, ``Model.train(epochs=n)`` running n of them) and ``sklearn`` (one ``fit``, one epoch):
they report ``steps_per_call`` = k, the steps of an epoch.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, TextIO

import numpy as np

if not __package__:  # run as a script: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cases import CONTENDERS, LEARNING_RATE, MOMENTUM, SEED, Case


@dataclass
class Bench:
    """A contender built for one case: ``run(n)`` makes n calls of ``steps_per_call`` steps."""

    run: Callable[[int], None]
    steps_per_call: int = 1
    check: Callable[[], dict[str, Any]] = field(default=lambda: {})
    sync: Callable[[], None] = field(default=lambda: None)


def make_data(case: Case, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs (samples, n_inputs) and int64 class labels, on the host."""
    rng = np.random.default_rng(SEED)
    X = rng.standard_normal((samples, case.sizes[0]), dtype=np.float32)
    y = rng.integers(0, case.sizes[-1], size=samples, dtype=np.int64)
    return X, y


# --- backprop_gpu -------------------------------------------------------------------------


def bg_layers(case: Case) -> list[Any]:
    """Dense(init="he") and ReLU layers for the case's sizes (no ReLU after the last Dense)."""
    import backprop_gpu as bg

    layers: list[Any] = []
    for i, (n_in, n_out) in enumerate(pairwise(case.sizes)):
        layers.append(bg.Dense(n_in, n_out, init="he", seed=SEED + i))
        if i < len(case.sizes) - 2:
            layers.append(bg.ReLU())
    return layers


def bg_sync() -> Callable[[], None]:
    """Wait for queued device work (CuPy); a no-op on host backends."""
    import backprop_gpu as bg

    return bg.get_backend().synchronize


def dtype_report(arrays: dict[str, Any], expected: str = "float32") -> dict[str, Any]:
    """Which of ``arrays`` are not of ``expected`` dtype (None entries: not computed)."""
    names = {k: str(a.dtype).removeprefix("torch.") for k, a in arrays.items() if a is not None}
    wrong = {k: name for k, name in names.items() if name != expected}
    missing = sorted(k for k, a in arrays.items() if a is None)
    return {
        "expected": expected,
        "checked": len(names),
        "not_computed": missing,
        "wrong": wrong,
        "ok": not wrong,
    }


def bg_arrays(layers: Sequence[Any], loss: Any) -> dict[str, Any]:
    """Every parameter, gradient, optimizer state and output of a bg network after a step."""
    from backprop_gpu.optimizers import state_name

    arrays: dict[str, Any] = {"loss.output": loss.output, "loss.dinputs": loss.dinputs}
    for i, layer in enumerate(layers):
        arrays[f"layers[{i}].output"] = layer.output
        arrays[f"layers[{i}].dinputs"] = layer.dinputs
        for name in getattr(layer, "params", ()):
            for attr in (name, "d" + name, state_name(name, "momentums")):
                arrays[f"layers[{i}].{attr}"] = getattr(layer, attr, None)
    return arrays


def build_bg_loop(case: Case) -> Bench:
    """The book's hand-written loop over the public API; the data is put on the device once."""
    import backprop_gpu as bg

    X_host, y_host = make_data(case, case.batch)
    X, y = bg.asarray(X_host), bg.asarray(y_host)
    layers = bg_layers(case)
    dense = [layer for layer in layers if isinstance(layer, bg.Dense)]
    loss = bg.SoftmaxCrossEntropy()
    optimizer = bg.SGD(learning_rate=LEARNING_RATE, momentum=MOMENTUM)
    last: list[Any] = [None]  # the 0-d loss; read only after timing (a sync on a GPU)

    def run(n: int) -> None:
        for _ in range(n):
            out = X
            for layer in layers:
                out = layer.forward(out)
            last[0] = loss.forward(out, y)
            loss.backward(loss.output, y)
            grad = loss.dinputs
            for layer in reversed(layers):  # the first Dense's dinputs included
                grad = layer.backward(grad)
            optimizer.pre_update_params()
            for layer in dense:
                optimizer.update_params(layer)
            optimizer.post_update_params()

    def check() -> dict[str, Any]:
        arrays = bg_arrays(layers, loss) | {"loss value": last[0]}
        return {
            "dtypes": dtype_report(arrays),
            "final_loss": float(bg.to_numpy(last[0])),
            "first_layer_dinputs": layers[0].dinputs is not None,
        }

    return Bench(run, 1, check, bg_sync())


def build_bg_model(case: Case) -> Bench:
    """``Model.train`` on batch * k host samples: one call is one epoch of k steps."""
    import backprop_gpu as bg

    k = case.steps_per_epoch
    X, y = make_data(case, case.batch * k)
    model = bg.Model(bg_layers(case))
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(LEARNING_RATE, momentum=MOMENTUM))
    model.finalize()
    history: list[Any] = []

    def train(epochs: int) -> None:
        history[:] = model.train(
            X, y, epochs=epochs, batch_size=case.batch, print_every=0, shuffle=True, seed=0
        )

    def check() -> dict[str, Any]:
        assert model.loss is not None
        report = {
            "dtypes": dtype_report(bg_arrays(model.layers, model.loss)),
            "final_loss": history[-1]["loss"] if history else None,
            "first_layer_dinputs": model.layers[0].dinputs is not None,
            "steps_per_epoch": k,
        }
        # what one train() call costs besides its epochs: checking and copying the data
        sync = bg_sync()
        start = time.perf_counter()
        train(0)
        sync()
        return report | {"train_call_overhead_ms": 1e3 * (time.perf_counter() - start)}

    return Bench(train, k, check, bg_sync())


# --- the floor: matrix products alone -----------------------------------------------------


def build_floor(case: Case, dx1: bool) -> Bench:
    """The step's matmuls in NumPy float32 into preallocated arrays, no elementwise work:
    ``A @ W`` forward, ``dW = A.T @ G`` and ``dX = G @ W.T`` backward (the first layer's dX
    only with ``dx1``)."""
    rng = np.random.default_rng(SEED)
    X, _ = make_data(case, case.batch)
    pairs = list(pairwise(case.sizes))
    weights = [
        (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)
        for n_in, n_out in pairs
    ]
    # acts[i] is layer i's input; acts[i + 1] its output (the next layer's input, no ReLU)
    acts = [X] + [np.empty((case.batch, n_out), dtype=np.float32) for _, n_out in pairs]
    grads = [rng.standard_normal((case.batch, n_out), dtype=np.float32) for _, n_out in pairs]
    dweights = [np.empty_like(w) for w in weights]
    dinputs = [np.empty((case.batch, n_in), dtype=np.float32) for n_in, _ in pairs]
    first = 0 if dx1 else 1
    layers = range(len(pairs))

    def run(n: int) -> None:
        for _ in range(n):
            for i in layers:
                np.matmul(acts[i], weights[i], out=acts[i + 1])
            for i in reversed(layers):
                np.matmul(acts[i].T, grads[i], out=dweights[i])
                if i >= first:
                    np.matmul(grads[i], weights[i].T, out=dinputs[i])

    def check() -> dict[str, Any]:
        arrays = {f"a{i}": a for i, a in enumerate(acts)} | {
            f"dW{i}": a for i, a in enumerate(dweights)
        }
        return {"dtypes": dtype_report(arrays), "first_layer_dinputs": dx1}

    return Bench(run, 1, check)


# --- PyTorch ------------------------------------------------------------------------------


def build_torch(case: Case, dx1: bool) -> Bench:
    """Eager PyTorch on the CPU: nn.Linear / nn.ReLU, F.cross_entropy, SGD(momentum=0.9).
    With ``dx1`` the input requires grad, so backward computes the first layer's dX too."""
    import torch
    from torch.nn import functional

    torch.manual_seed(SEED)
    modules: list[torch.nn.Module] = []
    for i, (n_in, n_out) in enumerate(pairwise(case.sizes)):
        modules.append(torch.nn.Linear(n_in, n_out))
        if i < len(case.sizes) - 2:
            modules.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*modules)
    optimizer = torch.optim.SGD(net.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)
    X_host, y_host = make_data(case, case.batch)
    X, y = torch.from_numpy(X_host), torch.from_numpy(y_host)
    if dx1:
        X.requires_grad_(True)
    last: list[Any] = [None]

    def run(n: int) -> None:
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            X.grad = None
            loss = functional.cross_entropy(net(X), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            last[0] = loss

    def check() -> dict[str, Any]:
        arrays: dict[str, Any] = {"loss": last[0], "X.grad": X.grad}
        for name, p in net.named_parameters():
            arrays[name] = p
            arrays[name + ".grad"] = p.grad
            arrays[name + ".momentum"] = optimizer.state[p].get("momentum_buffer")
        if not dx1:
            del arrays["X.grad"]
        return {
            "dtypes": dtype_report(arrays),
            "final_loss": float(last[0].detach()),
            "first_layer_dinputs": X.grad is not None,
        }

    return Bench(run, 1, check)


# --- JAX -----------------------------------------------------------------------------------


def build_jax(case: Case, dx1: bool) -> Bench:
    """``jax.jit`` of the whole step on the CPU, like for like with the bg step: He-initialised
    float32 weights, ReLU between the layers, mean softmax cross-entropy, ``jax.grad``, and
    SGD with momentum as bg's (``v = momentum * v - lr * g``, ``w += v``). Parameters and
    velocities are donated to the step (XLA updates them in place). With ``dx1`` the
    gradient w.r.t. the input is computed too and returned, so XLA cannot drop it."""
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(SEED)
    pairs = list(pairwise(case.sizes))
    params = [
        (
            jnp.asarray((rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype("f4")),
            jnp.zeros((1, n_out), jnp.float32),
        )
        for n_in, n_out in pairs
    ]
    velocities = jax.tree_util.tree_map(jnp.zeros_like, params)
    X_host, y_host = make_data(case, case.batch)
    X, y = jnp.asarray(X_host), jnp.asarray(y_host.astype(np.int32))

    def loss_fn(params: Any, X: Any, y: Any) -> Any:
        out = X
        for i, (w, b) in enumerate(params):
            out = out @ w + b
            if i < len(params) - 1:
                out = jax.nn.relu(out)
        logp = jax.nn.log_softmax(out, axis=1)
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

    def step(params: Any, velocities: Any, X: Any, y: Any) -> Any:
        argnums = (0, 1) if dx1 else 0
        loss, grads = jax.value_and_grad(loss_fn, argnums=argnums)(params, X, y)
        grads, dX = grads if dx1 else (grads, None)
        velocities = jax.tree_util.tree_map(
            lambda v, g: MOMENTUM * v - LEARNING_RATE * g, velocities, grads
        )
        params = jax.tree_util.tree_map(lambda w, v: w + v, params, velocities)
        return params, velocities, loss, dX

    jitted = jax.jit(step, donate_argnums=(0, 1))
    state: list[Any] = [params, velocities, None, None]

    def run(n: int) -> None:
        for _ in range(n):
            state[:] = jitted(state[0], state[1], X, y)

    def sync() -> None:
        jax.block_until_ready(state)

    def check() -> dict[str, Any]:
        arrays: dict[str, Any] = {"loss": state[2], "X.grad": state[3]}
        for i, (w, b) in enumerate(state[0]):
            arrays[f"weights[{i}]"], arrays[f"biases[{i}]"] = w, b
        if not dx1:
            del arrays["X.grad"]
        return {
            "dtypes": dtype_report(arrays),
            "final_loss": float(state[2]),
            "first_layer_dinputs": state[3] is not None,
        }

    return Bench(run, 1, check, sync)


# --- scikit-learn -------------------------------------------------------------------------


def build_sklearn(case: Case) -> Bench:
    """MLPClassifier(solver="sgd"), one epoch per ``fit`` (max_iter=1) over batch * k float32
    samples. ``warm_start=True`` keeps the weights between fits, so a round is epochs of
    training, not re-initialisation; sklearn still makes a new optimizer each fit."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    k = case.steps_per_epoch
    X, y = make_data(case, case.batch * k)
    clf = MLPClassifier(
        hidden_layer_sizes=case.sizes[1:-1],
        solver="sgd",
        momentum=MOMENTUM,
        nesterovs_momentum=False,
        batch_size=case.batch,
        max_iter=1,
        shuffle=True,
        learning_rate_init=LEARNING_RATE,
        alpha=0.0,
        tol=0.0,
        random_state=SEED,
        warm_start=True,
    )

    def run(n: int) -> None:
        for _ in range(n):
            clf.fit(X, y)

    def check() -> dict[str, Any]:
        arrays = {f"coefs_[{i}]": c for i, c in enumerate(clf.coefs_)}
        arrays |= {f"intercepts_[{i}]": b for i, b in enumerate(clf.intercepts_)}
        return {
            "dtypes": dtype_report(arrays),
            "dtype": str(clf.coefs_[0].dtype),
            "final_loss": float(clf.loss_),
            "first_layer_dinputs": False,
            "steps_per_epoch": k,
        }

    return Bench(run, k, check)


BUILDERS: dict[str, Callable[[Case], Bench]] = {
    "bg-loop": build_bg_loop,
    "bg-model": build_bg_model,
    "floor+dx1": lambda case: build_floor(case, dx1=True),
    "floor": lambda case: build_floor(case, dx1=False),
    "torch+dx1": lambda case: build_torch(case, dx1=True),
    "torch": lambda case: build_torch(case, dx1=False),
    "jax+dx1": lambda case: build_jax(case, dx1=True),
    "jax": lambda case: build_jax(case, dx1=False),
    "sklearn": build_sklearn,
}
assert tuple(BUILDERS) == CONTENDERS


def build_memory_bench(name: str, case: Case) -> Bench:
    """For the peak-RSS run: bg-model trains on a data set of exactly one batch (k = 1, one
    step an epoch), so it holds the same data as the floor and the loop."""
    if name != "bg-model":
        return BUILDERS[name](case)
    import backprop_gpu as bg

    X, y = make_data(case, case.batch)
    model = bg.Model(bg_layers(case))
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(LEARNING_RATE, momentum=MOMENTUM))
    model.finalize()

    def train(epochs: int) -> None:
        model.train(X, y, epochs=epochs, batch_size=case.batch, print_every=0, seed=0)

    return Bench(train, 1)


# --- the worker ---------------------------------------------------------------------------


def time_calls(bench: Bench, n: int) -> float:
    """Seconds for ``n`` back-to-back calls, the garbage collector paused (as ``timeit``)."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        bench.sync()
        start = time.perf_counter()
        bench.run(n)
        bench.sync()
        return time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(bench: Bench, round_seconds: float, quick: bool) -> int:
    """Calls per round so that a round takes about ``round_seconds``: double the calls until
    they take a quarter of a round, then (unless ``quick``) re-time that many twice and keep
    the fastest, so one stall of the machine does not shrink the rounds."""
    n = 1
    while (seconds := time_calls(bench, n)) < round_seconds / 4:
        n *= 2
    if not quick:
        seconds = min(seconds, *(time_calls(bench, n) for _ in range(2)))
    return max(1, round(round_seconds * n / seconds))


def rss_mib() -> float:
    """The current resident set size (VmRSS), MiB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def peak_rss_mib() -> float:
    """The process's peak resident set size so far (``ru_maxrss``, KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Worker:
    """One contender's process: imports its library, pins its threads, answers commands."""

    def __init__(self, name: str, threads: int, backend: str) -> None:
        self.name, self.threads = name, threads
        self.bench: Bench | None = None
        self.calls = 0
        self.case: Case | None = None
        self.uses_torch = name.startswith("torch")
        if self.uses_torch:
            import torch

            torch.set_num_threads(threads)
        elif name == "sklearn":
            import sklearn.neural_network  # noqa: F401  (loads its OpenMP before the limits)
        elif name.startswith("jax"):
            os.environ.setdefault("JAX_PLATFORMS", "cpu")
            import jax  # (XLA's thread pool is its own: threadpoolctl does not see it)

            jax.config.update("jax_platforms", "cpu")
        import backprop_gpu as bg  # every worker, so the memory runs share one baseline

        if name.startswith("bg-"):
            bg.set_backend(backend)
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

        self.limits = threadpool_limits(limits=threads)  # kept: the limits hold while alive

    def hello(self) -> dict[str, Any]:
        from threadpoolctl import threadpool_info

        import backprop_gpu as bg

        info: dict[str, Any] = {
            "contender": self.name,
            "pid": os.getpid(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "backprop_gpu": bg.__version__,
            "thread_env": {
                var: os.environ.get(var)
                for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
            },
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "openblas_l2_size": os.environ.get("OPENBLAS_L2_SIZE"),
            "threadpools": [
                {
                    key: pool.get(key)
                    for key in (
                        "user_api",
                        "internal_api",
                        "version",
                        "num_threads",
                        "architecture",
                        "threading_layer",
                        "filepath",
                    )
                }
                for pool in threadpool_info()
            ],
        }
        if self.name.startswith("bg-"):
            backend = bg.get_backend()
            info["backend"] = {
                "name": backend.name,
                "device": str(backend.device),
                "reason": backend.reason,
            }
            from backprop_gpu.backend import numpy_backend

            # a checkout's backprop_gpu/ shadows a non-editable install's: say which one runs
            info["c_kernels"] = {
                "built": numpy_backend.HAVE_C,
                "package": os.path.dirname(bg.__file__),
            }
        if self.uses_torch:
            import torch

            blas = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
            info["torch"] = torch.__version__
            info["torch_threads"] = torch.get_num_threads()
            info["torch_blas"] = blas.group(1) if blas else "unknown"
            info["torch_mkl"] = torch.backends.mkl.is_available()  # type: ignore[no-untyped-call]
        if self.name == "sklearn":
            import sklearn

            info["sklearn"] = sklearn.__version__
        if self.name.startswith("jax"):
            import jax

            info["jax"] = jax.__version__
            info["jax_devices"] = [str(d) for d in jax.devices()]
        return info

    def prepare(
        self, case: dict[str, Any], round_seconds: float, warmup_steps: int, quick: bool
    ) -> dict[str, Any]:
        self.bench = None
        gc.collect()
        self.case = Case.from_json(case)
        started = time.perf_counter()
        bench = self.bench = BUILDERS[self.name](self.case)
        warmup_calls = max(1, -(-warmup_steps // bench.steps_per_call))
        time_calls(bench, warmup_calls)
        self.calls = calibrate(bench, round_seconds, quick)
        return {
            "calls": self.calls,
            "steps_per_call": bench.steps_per_call,
            "prepare_s": time.perf_counter() - started,
        }

    def round(self) -> dict[str, Any]:
        assert self.bench is not None, "round before prepare"
        seconds = time_calls(self.bench, self.calls)
        return {"step_s": seconds / (self.calls * self.bench.steps_per_call)}

    def finish(self) -> dict[str, Any]:
        assert self.bench is not None, "finish before prepare"
        checks = self.bench.check()
        self.bench = None
        gc.collect()
        return checks

    def memory(self, case: dict[str, Any], steps: int) -> dict[str, Any]:
        gc.collect()
        baseline, peak_before = rss_mib(), peak_rss_mib()
        bench = build_memory_bench(self.name, Case.from_json(case))
        bench.run(-(-steps // bench.steps_per_call))
        bench.sync()
        return {
            "steps": steps,
            "baseline_mib": baseline,  # after the imports, before building anything
            "peak_before_mib": peak_before,
            "peak_mib": peak_rss_mib(),
            "end_mib": rss_mib(),
        }

    def growth(self, case: dict[str, Any], steps: int, warmup_steps: int) -> dict[str, Any]:
        bench = BUILDERS[self.name](Case.from_json(case))
        bench.run(warmup_steps)
        bench.sync()
        gc.collect()
        after_warmup = rss_mib()
        started = time.perf_counter()
        bench.run(steps)
        bench.sync()
        elapsed = time.perf_counter() - started
        gc.collect()
        return {
            "warmup_steps": warmup_steps,
            "steps": steps,
            "after_warmup_mib": after_warmup,
            "end_mib": rss_mib(),
            "seconds": elapsed,
        }

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        command = request.pop("cmd")
        if command == "hello":
            return self.hello()
        if command == "prepare":
            return self.prepare(**request)
        if command == "round":
            return self.round()
        if command == "finish":
            return self.finish()
        if command == "memory":
            return self.memory(**request)
        if command == "growth":
            return self.growth(**request)
        if command == "exit":
            return {}
        raise ValueError(f"unknown command {command!r}")


def serve(worker: Worker, requests: TextIO, replies: TextIO) -> None:
    """Answer each JSON line of ``requests`` with one of ``replies``; errors are answered as
    ``{"error": traceback}`` and the worker carries on."""
    for line in requests:
        request = json.loads(line)
        command = request.get("cmd")
        try:
            reply = worker.handle(request)
        except Exception:
            reply = {"error": traceback.format_exc()}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if command == "exit":
            return


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="One contender of `python -m benchmarks`.")
    parser.add_argument("name", choices=CONTENDERS)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--backend", default="auto", help="backprop_gpu backend (bg-* only)")
    args = parser.parse_args(argv)
    # the protocol keeps the real stdout; whatever the libraries print goes to stderr
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        worker = Worker(args.name, args.threads, args.backend)
    except Exception:  # e.g. torch not installed: say so on the first command
        error = traceback.format_exc()
        for _ in sys.stdin:
            replies.write(json.dumps({"error": error}) + "\n")
            replies.flush()
            return 1
        return 1
    serve(worker, sys.stdin, replies)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
