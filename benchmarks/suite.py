"""backprop_gpu's performance suite: one float32 training step against its matrix products
alone, against PyTorch and against scikit-learn; peak memory; memory growth; dtypes.

What is measured
----------------
One training step of an MLP (ReLU between the Dense layers): forward, softmax cross-entropy,
backward, and an SGD update with momentum 0.9 (learning rate 0.01), all float32, for
[2, 64, 3] at batch 300, [784, 256, 256, 10] at batch 32, 128, 1024 and 4096, and
[784, 1024, 1024, 10] at batch 512. The contenders (see :mod:`benchmarks.contenders`):

- ``bg-loop``: backprop_gpu's hand-written nnfs loop over the public API (layer ``forward``s,
  ``SoftmaxCrossEntropy``, layer ``backward``s in reverse, the first layer's dinputs included,
  ``SGD.pre_update_params`` / ``update_params`` / ``post_update_params``); data on the device
  once, before timing.
- ``bg-model``: ``Model.train(epochs=E, batch_size=B, shuffle=True)`` on B * k host samples
  (k = 20 steps an epoch; 8 at batch 4096), one call a round, divided by the steps: shuffling,
  batching and the call's own data checks included (the latter also shown apart).
- ``floor+dx1`` / ``floor``: the step's matrix products alone in NumPy, into preallocated
  arrays, no elementwise work, with / without the first layer's dX. What a step would cost if
  everything but BLAS were free.
- ``torch+dx1`` / ``torch``: eager PyTorch on the CPU (when torch imports), with / without
  the input requiring grad.
- ``jax+dx1`` / ``jax``: ``jax.jit`` of the whole step (forward, loss, ``jax.grad``, the
  momentum update) on the CPU (when jax imports), with / without the input's gradient; XLA
  fuses the elementwise work and runs it on its own thread pool.
- ``sklearn``: scikit-learn's ``MLPClassifier(solver="sgd")``, one epoch per ``fit`` (k
  batches), float32 input (the dtype it computes in is reported), for reference.

Ratios per size, each like with like: bg-loop / floor+dx1, bg-loop / torch+dx1, bg-model /
floor, bg-model / torch, bg-loop / jax+dx1, bg-model / jax (and bg-model / sklearn,
reported only), against the targets in
:mod:`benchmarks.cases` (PASS / MISS). Peak RSS (``ru_maxrss``) of 200 steps of
[784, 1024, 1024, 10]@512, each contender in a fresh process: bg-loop / floor+dx1 and
bg-model / floor, target <= 1.20 (bg-model trains on a one-batch data set there, so every
process holds the same data). RSS growth of bg-loop from after 500 warm-up steps to after
10,000 more of [2, 64, 3]@300, target <= 2 MiB. Every parameter, gradient, optimizer state and
output of the bg steps must stay float32. ``--quick``: 2 rounds of ~0.05 s, 20 memory steps,
1,000 growth steps.

How
---
Every contender runs in its own process, with the same thread count (OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS in its environment, threadpoolctl limits and
``torch.set_num_threads`` inside), so no two thread pools share the cores. OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE are removed from the workers' environment (some machines set them for old
OpenBLAS builds: ``OPENBLAS_CORETYPE=Haswell`` drops NumPy's GEMMs on an AVX-512 CPU to AVX2
kernels at about half speed, which users do not have); ``--openblas asis`` keeps them, for the
other figure. The header says which. JAX's XLA runs its own thread pool, which these limits do
not reach (it uses every core). Per size, each contender is built, warmed up and calibrated so
a round takes about 0.3 s; then 5 rounds are run round-robin, one contender at a time (the
starting one rotating). Before each turn the suite waits until the previous contender's process
burns no more CPU (read from /proc/PID/stat): OpenBLAS's threads spin for about 0.1 s after a
call and would otherwise steal the next contender's cores. A round gives a time per step; the
table shows the median and the min / max over rounds, and each ratio is the median of the
per-round ratios. The garbage collector is paused while a round runs (as ``timeit`` does).

Run from the repository root::

    python -m benchmarks                        # the full suite (a few minutes on 2 cores)
    python -m benchmarks --quick                # a CI smoke run (under a minute)
    python -m benchmarks --json bench.json      # also write every result as JSON
    python -m benchmarks --threads 1 --only bg-loop --only floor+dx1 --only '784-256-*'
    python -m benchmarks --strict               # exit 1 when a target is missed

The exit code is 0 when targets are missed (it is a report) unless ``--strict``; it is 1 when
a contender fails or a bg array is not float32.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.cases import (
    CASES,
    CONTENDERS,
    GROWTH_CASE,
    GROWTH_TARGET_MIB,
    MEMORY_CASE,
    MEMORY_RATIO_TARGET,
    OPTIONAL,
    RATIOS,
    Case,
    ratio_target,
)

ROOT = Path(__file__).resolve().parent.parent
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# removed from the workers' environment unless --openblas asis (see the module docstring)
OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
SECTIONS = ("timing", "memory", "growth")
MEMORY_PAIRS = (("bg-loop", "floor+dx1"), ("bg-model", "floor"))
NOISY_SPREAD = 1.25  # max / min of a ratio's rounds above which the row is flagged
IDLE_POLL = 0.03  # s between reads of a contender's CPU time, waiting for it to go idle
IDLE_TIMEOUT = 1.0  # s, at most
FALLBACK_SETTLE = 0.15  # s to sleep instead where /proc/PID/stat cannot be read
BUSY_WARNING = 0.05  # share of the CPUs used by other processes above which a size is flagged
CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Settings:
    rounds: int  # timed rounds per contender and size
    round_seconds: float  # calibrated length of one round
    warmup_steps: int  # untimed steps before calibrating
    memory_steps: int
    growth_steps: int
    growth_warmup_steps: int


FULL = Settings(
    rounds=5,
    round_seconds=0.3,
    warmup_steps=10,
    memory_steps=200,
    growth_steps=10_000,
    growth_warmup_steps=500,
)
QUICK = Settings(
    rounds=2,
    round_seconds=0.05,
    warmup_steps=2,
    memory_steps=20,
    growth_steps=1_000,
    growth_warmup_steps=100,
)


# --- the contender processes ----------------------------------------------------------------


class ContenderError(RuntimeError):
    """A contender failed: its process died, or a command raised (the child's traceback)."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class Process:
    """One contender's worker process (``python -m benchmarks.contenders NAME``), driven one
    JSON line at a time; its stderr goes to a temporary file, shown when it fails."""

    def __init__(self, name: str, threads: int, backend: str, unset: Sequence[str] = ()) -> None:
        self.name = name
        self.log: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in close())
        env = {k: v for k, v in os.environ.items() if k not in unset}
        env |= {var: str(threads) for var in THREAD_VARS}
        command = [sys.executable, "-m", "benchmarks.contenders", name]
        command += ["--threads", str(threads), "--backend", backend]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.dead: ContenderError | None = None

    def call(self, command: str, **arguments: Any) -> dict[str, Any]:
        """Send a command and wait for its reply."""
        self.send(command, **arguments)
        return self.receive()

    def send(self, command: str, **arguments: Any) -> None:
        if self.dead is not None:
            raise self.dead
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({"cmd": command, **arguments}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # receive() reports the exit

    def receive(self) -> dict[str, Any]:
        if self.dead is not None:
            raise self.dead
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            self.dead = ContenderError(f"{self.name}: the process exited ({code})", self.stderr())
            raise self.dead
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            last = reply["error"].strip().splitlines()[-1]
            raise ContenderError(f"{self.name}: {last}", reply["error"])
        return reply

    def cpu_ticks(self) -> int | None:
        """User + system CPU time of the process, all threads, in clock ticks (Linux)."""
        try:
            stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state is fields[0]
        return int(fields[11]) + int(fields[12])  # utime, stime

    def wait_idle(self) -> None:
        """Return once the process burns no CPU: after a BLAS call OpenBLAS's threads spin for
        about 0.1 s before they sleep, which would steal the next contender's cores."""
        last = self.cpu_ticks()
        if last is None:
            time.sleep(FALLBACK_SETTLE)
            return
        deadline = time.perf_counter() + IDLE_TIMEOUT
        while time.perf_counter() < deadline:
            time.sleep(IDLE_POLL)
            ticks = self.cpu_ticks()
            if ticks is None or ticks == last:
                return
            last = ticks

    def stderr(self, chars: int = 3000) -> str:
        self.log.seek(0)
        return self.log.read()[-chars:]

    def close(self) -> None:
        if self.dead is None and self.proc.poll() is None:
            with contextlib.suppress(ContenderError):
                self.call("exit")
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def start(
    names: Iterable[str], threads: int, backend: str, unset: Sequence[str] = ()
) -> dict[str, Process]:
    """Start the processes together, so their imports overlap (``greet`` waits for them);
    ``unset``: environment variables their environment goes without."""
    return {name: Process(name, threads, backend, unset) for name in names}


# --- results --------------------------------------------------------------------------------


@dataclass
class Timing:
    """One contender at one size: seconds per step in each round, and its checks."""

    contender: str
    case: str
    rounds_s: list[float] = field(default_factory=list)
    calls_per_round: int = 0
    steps_per_call: int = 1
    checks: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def median_ms(self) -> float:
        return 1e3 * statistics.median(self.rounds_s)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.rounds_s:
            data |= {
                "median_ms": self.median_ms,
                "min_ms": 1e3 * min(self.rounds_s),
                "max_ms": 1e3 * max(self.rounds_s),
            }
        return data


@dataclass
class Ratio:
    case: str
    numerator: str
    denominator: str
    median: float | None
    min: float | None
    max: float | None
    target: float | None
    verdict: str  # PASS, MISS, "-" (no target) or "n/a" (a contender missing)


def verdict(value: float | None, target: float | None) -> str:
    if value is None:
        return "n/a"
    if target is None:
        return "-"
    return "PASS" if value <= target else "MISS"


def ratio(case: Case, timings: dict[str, Timing], numerator: str, denominator: str) -> Ratio:
    """The median (and min / max) of the per-round ratios; rounds of the same index ran one
    after the other, so they saw the same machine."""
    target = ratio_target(case, numerator, denominator)
    a, b = timings.get(numerator), timings.get(denominator)
    if a is None or b is None or not a.rounds_s or not b.rounds_s:
        return Ratio(case.label, numerator, denominator, None, None, None, target, "n/a")
    per_round = [x / y for x, y in zip(a.rounds_s, b.rounds_s, strict=False)]
    value = statistics.median(per_round)
    return Ratio(
        case.label,
        numerator,
        denominator,
        value,
        min(per_round),
        max(per_round),
        target,
        verdict(value, target),
    )


# --- the runs -------------------------------------------------------------------------------


class LoadMeter:
    """How much CPU processes other than the suite's used since ``start()`` (Linux /proc):
    a busy machine makes timings slow and noisy, whatever the contender."""

    def __init__(self, procs: Iterable[Process]) -> None:
        self.procs = list(procs)
        self.start()

    @staticmethod
    def machine_ticks() -> int | None:
        """Busy CPU time of the whole machine (steal included), in clock ticks."""
        try:
            fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        return user + nice + system + irq + softirq + steal

    def our_ticks(self) -> int:
        times = os.times()
        own = round((times.user + times.system) * CLOCK_TICKS)
        return own + sum(p.cpu_ticks() or 0 for p in self.procs)

    def start(self) -> None:
        self.started = time.perf_counter()
        self.machine0, self.ours0 = self.machine_ticks(), self.our_ticks()

    def others_share(self) -> float | None:
        """CPU used by other processes, as a share of all CPUs over the time since start()."""
        machine = self.machine_ticks()
        if machine is None or self.machine0 is None:
            return None
        others = (machine - self.machine0) - (self.our_ticks() - self.ours0)
        capacity = (time.perf_counter() - self.started) * CLOCK_TICKS * (os.cpu_count() or 1)
        return max(0.0, others / capacity) if capacity > 0 else None


def turn(proc: Process, timing: Timing, command: str, **arguments: Any) -> dict[str, Any] | None:
    """One command to one contender, then wait until it is idle, so the next contender has
    the cores to itself. A failure is recorded in ``timing`` (later commands are skipped)."""
    if timing.error is not None:
        return None
    try:
        return proc.call(command, **arguments)
    except ContenderError as e:
        timing.error, timing.rounds_s = str(e), []
        print(f"\n    {e}\n{e.detail}", file=sys.stderr)
        return None
    finally:
        proc.wait_idle()


def run_timing(
    cases: Sequence[Case], procs: dict[str, Process], settings: Settings, quick: bool
) -> tuple[dict[str, dict[str, Timing]], dict[str, float | None]]:
    """Per size: build, warm up and calibrate every contender, then the rounds, round-robin;
    then each contender's checks. One contender works at a time. Also returns, per size, the
    share of the CPUs that other processes used meanwhile."""
    results: dict[str, dict[str, Timing]] = {}
    others: dict[str, float | None] = {}
    names = list(procs)
    meter = LoadMeter(procs.values())
    for case in cases:
        meter.start()
        print(f"  {case.label}: ", end="", flush=True)
        timings = results[case.label] = {name: Timing(name, case.label) for name in names}
        for name, timing in timings.items():
            reply = turn(
                procs[name],
                timing,
                "prepare",
                case=case.to_json(),
                round_seconds=settings.round_seconds,
                warmup_steps=settings.warmup_steps,
                quick=quick,
            )
            if reply is not None:
                timing.calls_per_round = reply["calls"]
                timing.steps_per_call = reply["steps_per_call"]
        for r in range(settings.rounds):
            shift = r % len(names)  # a different contender goes first each round
            for name in names[shift:] + names[:shift]:
                reply = turn(procs[name], timings[name], "round")
                if reply is not None:
                    timings[name].rounds_s.append(reply["step_s"])
            print(".", end="", flush=True)
        for name, timing in timings.items():
            reply = turn(procs[name], timing, "finish")
            if reply is not None:
                timing.checks = reply
        others[case.label] = share = meter.others_share()
        busy = share is not None and share > BUSY_WARNING
        print(f"  other processes used {share:.0%} of the CPUs" if busy else "")
    return results, others


def run_fresh(
    jobs: dict[str, tuple[str, str, dict[str, Any]]],
    threads: int,
    backend: str,
    unset: Sequence[str] = (),
) -> dict[str, dict[str, Any]]:
    """Each job, ``key: (contender, command, arguments)``, in a new process of its own (peak
    RSS belongs to a process), one after the other (thread pools that share the cores slow
    each other down badly). A failed job's result is ``{"error": ...}``."""
    results: dict[str, dict[str, Any]] = {}
    for key, (name, command, arguments) in jobs.items():
        proc = Process(name, threads, backend, unset)
        try:
            results[key] = proc.call(command, **arguments)
        except ContenderError as e:
            print(f"    {e}\n{e.detail}", file=sys.stderr)
            results[key] = {"error": str(e)}
        finally:
            proc.close()
    return results


def memory_jobs(names: Sequence[str], settings: Settings) -> dict[str, Any]:
    """Peak RSS of ``memory_steps`` steps of MEMORY_CASE, per contender (bg-model trains on a
    data set of one batch, so every process holds the same data)."""
    arguments = {"case": MEMORY_CASE.to_json(), "steps": settings.memory_steps}
    return {f"memory {name}": (name, "memory", arguments) for name in names}


def growth_job(settings: Settings) -> dict[str, Any]:
    """bg-loop's RSS after a warm-up and after ``growth_steps`` more steps of GROWTH_CASE."""
    arguments = {
        "case": GROWTH_CASE.to_json(),
        "steps": settings.growth_steps,
        "warmup_steps": settings.growth_warmup_steps,
    }
    return {"growth": ("bg-loop", "growth", arguments)}


def memory_report(runs: dict[str, dict[str, Any]], settings: Settings) -> dict[str, Any]:
    pairs = []
    for bg_name, floor_name in MEMORY_PAIRS:
        a, b = runs.get(bg_name), runs.get(floor_name)
        if a is None or b is None:
            continue
        value = a["peak_mib"] / b["peak_mib"] if "error" not in a and "error" not in b else None
        above = None
        if value is not None:
            floor_above = b["peak_mib"] - b["baseline_mib"]
            above = (a["peak_mib"] - a["baseline_mib"]) / floor_above if floor_above > 0 else None
        pairs.append(
            {
                "numerator": bg_name,
                "denominator": floor_name,
                "peak_ratio": value,
                "above_imports_ratio": above,
                "target": MEMORY_RATIO_TARGET,
                "verdict": verdict(value, MEMORY_RATIO_TARGET),
            }
        )
    return {
        "case": MEMORY_CASE.label,
        "steps": settings.memory_steps,
        "runs": runs,
        "ratios": pairs,
    }


def growth_report(result: dict[str, Any]) -> dict[str, Any]:
    result = result | {"case": GROWTH_CASE.label, "contender": "bg-loop"}
    result["target_mib"] = GROWTH_TARGET_MIB
    if "error" not in result:
        result["growth_mib"] = result["end_mib"] - result["after_warmup_mib"]
        result["verdict"] = verdict(result["growth_mib"], GROWTH_TARGET_MIB)
    else:
        result["verdict"] = "n/a"
    return result


# --- the report -----------------------------------------------------------------------------


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def fmt_ms(ms: float) -> str:
    """Four significant digits: 0.05123, 1.234, 123.4."""
    return f"{ms:#.4g}".rstrip(".")


def pools_line(pools: list[dict[str, Any]]) -> list[str]:
    lines = []
    for p in pools:
        detail = ", ".join(str(p[k]) for k in ("architecture", "threading_layer") if p.get(k))
        lines.append(
            f"{p.get('internal_api')} {p.get('version') or ''}".rstrip()
            + (f" ({detail})" if detail else "")
            + f": {p.get('num_threads')} threads [{p.get('filepath')}]"
        )
    return lines


def print_header(env: dict[str, Any], settings: Settings, quick: bool) -> None:
    hello: dict[str, Any] = env["contenders"]
    first: dict[str, Any] = next(iter(hello.values()), {})
    versions = [f"Python {env['python']}", f"NumPy {first.get('numpy', '?')}"]
    versions.append(f"torch {env['torch'] or 'not installed'}")
    versions.append(f"jax {env['jax'] or 'not installed'}")
    versions.append(f"scikit-learn {env['sklearn'] or 'not installed'}")
    print(f"backprop_gpu {first.get('backprop_gpu', '?')} benchmark suite: {', '.join(versions)}")
    print(f"  {env['platform']}; {env['cpu_count']} CPUs; {env['threads']} threads per contender")
    backend = next((h["backend"] for h in hello.values() if "backend" in h), None)
    if backend is not None:
        reason = f" ({backend['reason']})" if backend["reason"] else ""
        print(f"  backend: {backend['name']} on {backend['device']}{reason}")
    c = next((h["c_kernels"] for h in hello.values() if "c_kernels" in h), None)
    if c is not None:
        state = "built" if c["built"] else "NOT built (plain NumPy; install with pip install -e)"
        print(f"  C kernels (backprop_gpu._cpu): {state}, package at {c['package']}")
    if env["openblas"] == "unset":
        was = ", ".join(f"{k}={v}" for k, v in env["openblas_env"].items() if v is not None)
        print(
            f"  {' and '.join(OPENBLAS_VARS)}: unset in every worker (as users run; here "
            f"{was or 'neither was set'}; --openblas asis keeps them)"
        )
    else:
        kept = ", ".join(f"{k}={v or 'unset'}" for k, v in env["openblas_env"].items())
        print(f"  OpenBLAS variables as set (--openblas asis): {kept}")
    kernels = env["BACKPROP_GPU_KERNELS"]
    print(f"  BACKPROP_GPU_KERNELS (fused GPU kernels): {'unset' if kernels is None else kernels}")
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, info in hello.items():
        groups.setdefault(tuple(sorted(pools_line(info.get("threadpools", [])))), []).append(name)
    for lines, names in groups.items():
        print(f"  thread pools of {', '.join(names)}:")
        for line in lines:
            print(f"    {line}")
    for info in hello.values():
        if "torch_blas" in info:
            print(
                f"  torch: BLAS {info['torch_blas']} (linked into torch, unseen by threadpoolctl), "
                f"MKL {info['torch_mkl']}, torch.get_num_threads() {info['torch_threads']}"
            )
            break
    for name, reason in env["unavailable"].items():
        print(f"  {name}: not run ({reason})")
    mode = "quick" if quick else "full"
    print(
        f"  {mode}: {settings.rounds} rounds of ~{settings.round_seconds:g} s per contender "
        "and size, round-robin, each contender in its own process; medians per step\n"
    )


def print_case(
    case: Case, timings: dict[str, Timing], ratios: list[Ratio], others: float | None
) -> None:
    k = case.steps_per_epoch
    print(f"{case.label}   (bg-model and sklearn: {case.batch * k} samples, {k} steps an epoch)")
    if others is not None and others > BUSY_WARNING:
        print(
            f"  warning: other processes used {others:.0%} of the CPUs while this size was "
            "timed; rerun on a quiet machine before trusting it"
        )
    head = f"  {'contender':<12} {'ms/step':>10} {'min':>10} {'max':>10}  {'steps/round':>11}"
    print(head)
    for name, t in timings.items():
        if t.error is not None or not t.rounds_s:
            print(f"  {name:<12} {'ERROR':>10}  {t.error or 'no rounds'}")
            continue
        note = ""
        if name == "sklearn" and "dtype" in t.checks:
            note = f"  computes in {t.checks['dtype']}"
        if "train_call_overhead_ms" in t.checks:  # bg-model: one train() call a round
            note = f"  + {t.checks['train_call_overhead_ms']:.2f} ms a train() call"
        print(
            f"  {name:<12} {fmt_ms(t.median_ms):>10} {fmt_ms(1e3 * min(t.rounds_s)):>10} "
            f"{fmt_ms(1e3 * max(t.rounds_s)):>10}  {t.calls_per_round * t.steps_per_call:>11}"
            f"{note}"
        )
    if ratios:
        print(f"  {'ratio':<22} {'median':>7} {'min':>6} {'max':>6}  target")
    for r in ratios:
        target = "-" if r.target is None else f"<= {r.target:g}  {r.verdict}"
        if r.verdict == "n/a":
            target = "n/a"
        noisy = r.max is not None and r.min is not None and r.max > NOISY_SPREAD * r.min
        print(
            f"  {r.numerator + ' / ' + r.denominator:<22} {fmt(r.median):>7} {fmt(r.min):>6} "
            f"{fmt(r.max):>6}  {target}{'  (noisy)' if noisy else ''}"
        )
    print()


def print_memory(memory: dict[str, Any]) -> None:
    print(f"peak RSS, {memory['steps']} steps of {memory['case']}, each in a fresh process:")
    for name, run in memory["runs"].items():
        if "error" in run:
            print(f"  {name:<12} ERROR {run['error']}")
            continue
        print(
            f"  {name:<12} peak {run['peak_mib']:7.1f} MiB   after imports "
            f"{run['baseline_mib']:6.1f} MiB   above the imports "
            f"{run['peak_mib'] - run['baseline_mib']:6.1f} MiB"
        )
    for p in memory["ratios"]:
        print(
            f"  {p['numerator']} / {p['denominator']}: {fmt(p['peak_ratio'])} "
            f"(<= {p['target']:g}  {p['verdict']}); above the imports: "
            f"{fmt(p['above_imports_ratio'])}"
        )
    print()


def print_growth(growth: dict[str, Any]) -> None:
    if "error" in growth:
        print(f"memory growth: ERROR {growth['error']}\n")
        return
    print(
        f"memory growth, {growth['contender']} {growth['case']}: {growth['after_warmup_mib']:.1f}"
        f" MiB after {growth['warmup_steps']} warm-up steps -> {growth['end_mib']:.1f} MiB after "
        f"{growth['steps']} more ({growth['growth_mib']:+.2f} MiB; <= {growth['target_mib']:g}  "
        f"{growth['verdict']})\n"
    )


def dtype_summary(results: dict[str, dict[str, Timing]]) -> dict[str, Any]:
    """Per bg contender: were all arrays float32 at every size, and is the first layer's
    dinputs computed."""
    summary: dict[str, Any] = {}
    for name in ("bg-loop", "bg-model", "torch+dx1", "torch", "jax+dx1", "jax", "sklearn"):
        checks = {
            label: t[name].checks
            for label, t in results.items()
            if name in t and t[name].checks.get("dtypes")
        }
        if not checks:
            continue
        wrong = {label: c["dtypes"]["wrong"] for label, c in checks.items() if c["dtypes"]["wrong"]}
        summary[name] = {
            "float32": not wrong,
            "wrong": wrong,
            "arrays_checked": sum(c["dtypes"]["checked"] for c in checks.values()),
            "sizes": len(checks),
            "first_layer_dinputs": sorted({c.get("first_layer_dinputs") for c in checks.values()}),
        }
    return summary


def print_dtypes(summary: dict[str, Any]) -> None:
    print("float32 stays float32 end to end (every parameter, gradient, state and output):")
    for name, s in summary.items():
        state = "yes" if s["float32"] else f"NO: {s['wrong']}"
        dx1 = {(True,): "computed", (False,): "skipped"}.get(
            tuple(s["first_layer_dinputs"]), "varies"
        )
        print(
            f"  {name:<10} {state}  ({s['arrays_checked']} arrays over {s['sizes']} sizes; "
            f"first layer's dinputs {dx1})"
        )
    print()


# --- main -----------------------------------------------------------------------------------


def select(
    tokens: Sequence[str],
) -> tuple[list[str], list[Case], list[str]]:
    """Contenders, sizes and sections picked by ``--only`` (shell patterns; a category no
    pattern names is kept whole)."""
    contenders, cases, sections = list(CONTENDERS), list(CASES), list(SECTIONS)
    if not tokens:
        return contenders, cases, sections
    picked: dict[str, set[str]] = {"contenders": set(), "cases": set(), "sections": set()}
    for token in tokens:
        found = False
        for kind, names in (
            ("contenders", CONTENDERS),
            ("cases", [c.label for c in CASES]),
            ("sections", SECTIONS),
        ):
            hits = fnmatch.filter(names, token)
            picked[kind].update(hits)
            found = found or bool(hits)
        if not found:
            raise SystemExit(
                f"--only {token!r} matches nothing; contenders: {', '.join(CONTENDERS)}; sizes: "
                f"{', '.join(c.label for c in CASES)}; sections: {', '.join(SECTIONS)}"
            )
    if picked["contenders"]:
        contenders = [c for c in contenders if c in picked["contenders"]]
    if picked["cases"]:
        cases = [c for c in cases if c.label in picked["cases"]]
    if picked["sections"]:
        sections = [s for s in sections if s in picked["sections"]]
    return contenders, cases, sections


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="backprop_gpu's training step against its matmuls, PyTorch and "
        "scikit-learn; memory; dtypes. Each contender runs in its own process.",
    )
    parser.add_argument("--quick", action="store_true", help="a CI smoke run (under a minute)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every result to PATH")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    parser.add_argument(
        "--threads",
        type=int,
        default=cores or 1,
        metavar="N",
        help=f"BLAS / OpenMP threads of every contender (default: all cores, {cores})",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only these contenders, sizes (e.g. '784-256-256-10@128', shell patterns "
        "work) or sections (timing, memory, growth); repeat or separate with commas",
    )
    parser.add_argument(
        "--backend",
        choices=("auto", "numpy", "cupy"),
        default="auto",
        help="backprop_gpu backend of bg-loop and bg-model (default: auto)",
    )
    parser.add_argument(
        "--openblas",
        choices=("unset", "asis"),
        default="unset",
        help="OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the workers: unset (default, as "
        "users run) or as this environment sets them",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    args.only = [token for value in args.only for token in value.split(",") if token]
    return args


def package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(
    args: argparse.Namespace, hello: dict[str, Any], unavailable: dict[str, str]
) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "thread_env": THREAD_VARS,
        "openblas": args.openblas,
        "openblas_env": {var: os.environ.get(var) for var in OPENBLAS_VARS},
        "torch": package_version("torch"),
        "jax": package_version("jax"),
        "sklearn": package_version("scikit-learn"),
        "BACKPROP_GPU_KERNELS": os.environ.get("BACKPROP_GPU_KERNELS"),
        "argv": sys.argv,
        "contenders": hello,
        "unavailable": unavailable,
    }


def greet(procs: dict[str, Process]) -> tuple[dict[str, Any], dict[str, str]]:
    """Each process's ``hello`` (once its imports are done); the ones that fail (torch not
    installed, say) are closed and removed from ``procs``."""
    hello: dict[str, Any] = {}
    unavailable: dict[str, str] = {}
    for name, proc in list(procs.items()):
        try:
            hello[name] = proc.call("hello")
        except ContenderError as e:
            if name not in OPTIONAL:
                print(e.detail or str(e), file=sys.stderr)
            unavailable[name] = str(e)
            proc.close()
            del procs[name]
    return hello, unavailable


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = QUICK if args.quick else FULL
    contenders, cases, sections = select(args.only)
    started = time.perf_counter()
    phases: dict[str, float] = {}

    # timing: every contender's process alive at once, one of them working at a time
    unset = OPENBLAS_VARS if args.openblas == "unset" else ()
    names = contenders if "timing" in sections and cases else []
    procs = start(names, args.threads, args.backend, unset)
    results: dict[str, dict[str, Timing]] = {}
    others: dict[str, float | None] = {}
    try:
        hello, unavailable = greet(procs)
        if not hello:  # no timing: ask one process for the environment all the same
            hello = run_fresh({"floor": ("floor", "hello", {})}, args.threads, args.backend, unset)
        env = environment(args, hello, unavailable)
        print_header(env, settings, args.quick)
        wrong_threads = [
            f"{name}: {pool.get('internal_api')} {pool.get('num_threads')}"
            for name, info in hello.items()
            for pool in info.get("threadpools", [])
            if pool.get("num_threads") != args.threads
        ]
        if wrong_threads:
            print(f"warning: thread pools not at {args.threads} threads: {wrong_threads}\n")
        if procs:
            print("timing (one dot per round):")
            results, others = run_timing(cases, procs, settings, args.quick)
            print()
    finally:
        for proc in procs.values():
            proc.close()
    phases["timing"] = time.perf_counter() - started

    ratios: list[Ratio] = []
    by_label = {c.label: c for c in cases}
    for label, timings in results.items():
        case = by_label[label]
        case_ratios = [
            ratio(case, timings, a, b) for a, b in RATIOS if a in timings and b in timings
        ]
        ratios += case_ratios
        print_case(case, timings, case_ratios, others.get(label))

    # memory: a fresh process per run
    memory: dict[str, Any] | None = None
    growth: dict[str, Any] | None = None
    jobs: dict[str, Any] = {}
    memory_names = [n for n in contenders if any(n in pair for pair in MEMORY_PAIRS)]
    if "memory" in sections and memory_names:
        jobs |= memory_jobs(memory_names, settings)
    if "growth" in sections and "bg-loop" in contenders:
        jobs |= growth_job(settings)
    if jobs:
        print("memory runs, each in a fresh process ...", flush=True)
        memory_started = time.perf_counter()
        done = run_fresh(jobs, args.threads, args.backend, unset)
        phases["memory"] = time.perf_counter() - memory_started
        runs = {key.removeprefix("memory "): r for key, r in done.items() if key != "growth"}
        if runs:
            memory = memory_report(runs, settings)
            print_memory(memory)
        if "growth" in done:
            growth = growth_report(done["growth"])
            print_growth(growth)
    dtypes = dtype_summary(results)
    if dtypes:
        print_dtypes(dtypes)

    # verdicts
    verdicts = [(f"{r.numerator} / {r.denominator} {r.case}", r.verdict) for r in ratios]
    if memory is not None:
        verdicts += [
            (f"peak RSS {p['numerator']} / {p['denominator']}", p["verdict"])
            for p in memory["ratios"]
        ]
    if growth is not None:
        verdicts.append((f"RSS growth {growth['case']}", growth["verdict"]))
    missed = [what for what, v in verdicts if v == "MISS"]
    passed = sum(v == "PASS" for _, v in verdicts)
    errors = [e for name, e in unavailable.items() if name not in OPTIONAL]
    errors += [f"{t.case} {t.error}" for ts in results.values() for t in ts.values() if t.error]
    if memory is not None:
        errors += [f"memory {n}: {r['error']}" for n, r in memory["runs"].items() if "error" in r]
    if growth is not None and "error" in growth:
        errors.append(f"growth: {growth['error']}")
    errors += [f"{name}: not float32: {s['wrong']}" for name, s in dtypes.items() if s["wrong"]]
    elapsed = time.perf_counter() - started
    print(f"targets: {passed} PASS, {len(missed)} MISS", *missed, sep="\n  MISS ")
    if errors:
        print(f"errors: {len(errors)}", *errors, sep="\n  ")
    print(f"wall time {elapsed:.1f} s ({', '.join(f'{k} {v:.1f} s' for k, v in phases.items())})")

    if args.json is not None:
        report = {
            "environment": env,
            "settings": asdict(settings) | {"quick": args.quick, "only": args.only},
            "cases": [
                case.to_json() | {"label": case.label, "steps_per_epoch": case.steps_per_epoch}
                for case in cases
            ],
            "timing": {
                label: {name: t.to_json() for name, t in timings.items()}
                for label, timings in results.items()
            },
            "other_processes_cpu_share": others,
            "ratios": [asdict(r) for r in ratios],
            "memory": memory,
            "growth": growth,
            "dtypes": dtypes,
            "summary": {"pass": passed, "miss": missed, "errors": errors},
            "wall_s": elapsed,
            "phases_s": phases,
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    if errors:
        return 1
    return 1 if args.strict and missed else 0
