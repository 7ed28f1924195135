"""Hyper-parameter sweeps: many runs of ``experiment.run``, each in its own worker process,
recorded in one parent folder (``backprop-gpu sweep`` and ``experiment.sweep``).

The settings are a ``train`` config (every key of ``experiment.Config``, data files
included) and a ``[sweep]`` table::

    epochs = 40
    samples = 300

    [sweep]
    metric = "val_loss"            # the column that ranks the children (default val_loss);
    goal = "min"                   # min or max (default: min for a loss, max for an accuracy)
    repeats = 3                    # seeds: seed, seed + 1, seed + 2 (or a list, [0, 7, 9])

    [sweep.grid]                   # lists: every combination (the cartesian product)
    lr = [0.005, 0.02]
    hidden = [[16], [64, 64]]

    [sweep.random]                 # distributions: `trials` draws, crossed with the grid
    l2 = { distribution = "loguniform", low = 1e-6, high = 1e-3 }
    dropout = { distribution = "uniform", low = 0.0, high = 0.3 }
    batch_size = { distribution = "int", low = 16, high = 128 }   # both ends included
    activation = { distribution = "choice", values = ["relu", "sigmoid"] }

Other ``[sweep]`` keys: ``method`` (``grid``; ``random`` when there are distributions;
``optuna``), ``trials`` (random and optuna: how many draws), ``seed`` (of the draws), and for
``optuna``: ``pruner`` (``median``, the default, ``hyperband`` or ``none``),
``startup_trials`` (median: trials that finish before any is pruned, default 5) and
``warmup_epochs`` (the epochs a child trains at least before it may be pruned: median's
``n_warmup_steps``, default 0; hyperband's ``min_resource``, default 1; Optuna's steps are
the epochs, counted from 1 as in metrics.csv). ``method = "optuna"`` searches the
``[sweep.random]`` space with Optuna's TPE sampler (seeded) and stops unpromising children
early: each child reports its metric every epoch through a callback (after the epoch is
committed to its run folder) and stops when the pruner says so; it is then ``pruned``.

The parent folder holds ``sweep.json`` (the settings, and every child: its overrides,
status, error, backend, seconds), ``results.csv`` and ``results.md`` (every child's
settings and the metrics of its best epoch, ranked by the goal; with repeats also each
setting's mean ± standard deviation over its seeds; rewritten as each child ends),
``logs/<child>.log`` (each child's output) and, for Optuna, ``optuna.journal`` (the study,
shared by the worker processes); then one ordinary run folder per child, named by its index
and overrides (``003-lr=0.02,hidden=64-64,seed=1``), which ``train --resume``,
``evaluate`` and ``predict`` take as any other.

Each child runs in a worker process (``python -m backprop_gpu.sweep SWEEP_DIR INDEX``),
``parallel`` at a time, each with ``cores // parallel`` BLAS threads (at least one); on a
machine with several GPUs and the backend ``auto`` or ``cupy``, worker slot ``s`` gets GPU
``s % gpus`` (``cupy:N``). A child that fails is recorded with its error and the others go
on. Ctrl-C or SIGTERM stops every child cleanly (each finishes its epoch's commit);
``resume`` skips the finished children (``done`` and ``pruned``) and runs the others again,
from their checkpoints when they have one.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import datetime as dt
import importlib.util
import io
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from . import experiment, run_folder
from .backend import detect_gpu, gpu_count
from .callbacks import Callback
from .checkpoint import atomic_write
from .experiment import Config, ConfigError, RunError, RunInterrupted

SWEEP_KEYS = (
    "method",
    "grid",
    "random",
    "trials",
    "seed",
    "repeats",
    "metric",
    "goal",
    "pruner",
    "startup_trials",
    "warmup_epochs",
)
METHODS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice")
PRUNERS = ("median", "hyperband", "none")
METRICS = ("val_loss", "val_accuracy", "loss", "accuracy")  # a child's best epoch shows these
GOALS = ("min", "max")
MAX_RUNS = 1000  # the most children a sweep starts unless told otherwise (--max-runs)

FINISHED = ("done", "pruned")  # a resume skips these; it runs pending, running (a sweep
# killed outright), interrupted and failed children again
EXIT_PRUNED = 3  # a worker's exit status when the pruner stopped its child
PARENT_VAR = "BACKPROP_GPU_SWEEP_PARENT"  # the parent's process id, in a worker's environment
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
STUDY = "sweep"  # the Optuna study's name in optuna.journal
POLL = 0.02  # seconds between the parent's looks at its workers
FOLDER_WAIT = 60.0  # seconds a worker waits for its run folder held by a stopping one
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])  # (the workers import this package)


class SweepInterrupted(KeyboardInterrupt):
    """A sweep stopped by Ctrl-C or SIGTERM (``signum``) after its running children stopped
    cleanly; ``sweep(out=sweep_dir, resume=True)`` continues it."""

    def __init__(self, sweep_dir: Path, signum: int, results: dict[str, Any]) -> None:
        super().__init__(f"{sweep_dir}: interrupted")
        self.sweep_dir = sweep_dir
        self.signum = signum
        self.results = results


# --- the [sweep] table ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One setting's distribution in ``[sweep.random]``: ``uniform`` and ``loguniform``
    between ``low`` and ``high``, ``int`` from ``low`` to ``high`` (both included), or a
    ``choice`` of ``values``."""

    kind: str
    low: float = 0.0  # (an int for int)
    high: float = 0.0
    values: tuple[Any, ...] = ()

    def sample(self, rng: np.random.Generator) -> Any:
        """One draw from ``rng`` (a plain Python number, or one of the values)."""
        if self.kind == "choice":
            return self.values[int(rng.integers(len(self.values)))]
        if self.kind == "int":
            return int(rng.integers(int(self.low), int(self.high), endpoint=True))
        if self.kind == "loguniform":
            return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))
        return float(rng.uniform(self.low, self.high))

    def extremes(self) -> list[Any]:
        """The values at the edges of the distribution (checked against the settings before
        an Optuna study, whose draws come later)."""
        return list(self.values) if self.kind == "choice" else [self.low, self.high]

    def to_optuna(self) -> Any:
        """The Optuna distribution of the same values (a choice of non-scalars, such as
        layer sizes, as their JSON text: Optuna's categories are scalars)."""
        import optuna

        if self.kind == "choice":
            return optuna.distributions.CategoricalDistribution(
                [self.encode(v) for v in self.values]
            )
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        log = self.kind == "loguniform"
        return optuna.distributions.FloatDistribution(float(self.low), float(self.high), log=log)

    def encode(self, value: Any) -> Any:
        """``value`` as Optuna holds it (``to_optuna``)."""
        return value if self._scalar_choices() else json.dumps(value)

    def decode(self, value: Any) -> Any:
        """A value Optuna drew, as the setting takes it."""
        return value if self._scalar_choices() else json.loads(value)

    def _scalar_choices(self) -> bool:
        return self.kind != "choice" or all(
            v is None or isinstance(v, bool | int | float | str) for v in self.values
        )

    def as_dict(self) -> dict[str, Any]:
        if self.kind == "choice":
            return {"distribution": "choice", "values": list(self.values)}
        return {"distribution": self.kind, "low": self.low, "high": self.high}


@dataclasses.dataclass(frozen=True)
class Spec:
    """The ``[sweep]`` table, checked (see the module docstring); ``repeats`` is the list of
    seeds, or None."""

    method: str
    grid: dict[str, list[Any]]
    random: dict[str, Distribution]
    trials: int | None
    seed: int
    repeats: list[int] | None
    metric: str
    goal: str
    pruner: str | None
    startup_trials: int | None
    warmup_epochs: int | None

    def size(self) -> int:
        """How many children the sweep has (an Optuna study: its trials)."""
        grid = math.prod(len(values) for values in self.grid.values())
        return grid * (self.trials or 1) * len(self.repeats or [None])

    def better(self, a: float, b: float) -> bool:
        """Whether ``a`` beats ``b`` for the goal."""
        return a < b if self.goal == "min" else a > b

    def as_dict(self) -> dict[str, Any]:
        """The table as sweep.json keeps it (``parse_spec`` reads it back)."""
        found = {key: getattr(self, key) for key in SWEEP_KEYS}
        found["random"] = {key: d.as_dict() for key, d in self.random.items()}
        if self.method == "grid":
            del found["seed"]  # (it draws nothing)
        return {key: value for key, value in found.items() if value is not None}


def parse_spec(table: Any, base: Mapping[str, Any]) -> Spec:
    """The ``[sweep]`` table checked, every problem a ``ConfigError`` naming its key; ``base``
    is the run settings (their seed starts the repeats)."""
    if not isinstance(table, Mapping):
        raise ConfigError(f"[sweep]: expected a table, got {type(table).__name__} {table!r}")
    table = {str(key).replace("-", "_"): value for key, value in table.items()}
    unknown = sorted(set(table) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(
            f"[sweep]: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SWEEP_KEYS)}"
        )
    grid = _parse_grid(table.get("grid", {}))
    space = _parse_space(table.get("random", {}))
    both = sorted(set(grid) & set(space))
    if both:
        raise ConfigError(f"[sweep]: {', '.join(both)} in both grid and random; keep one")
    method = table.get("method", "random" if space else "grid")
    if method not in METHODS:
        raise ConfigError(f"[sweep] method: expected one of {', '.join(METHODS)}, got {method!r}")
    metric = table.get("metric", "val_loss")
    if metric not in METRICS:
        raise ConfigError(f"[sweep] metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    goal = table.get("goal", "min" if metric.endswith("loss") else "max")
    if goal not in GOALS:
        raise ConfigError(f"[sweep] goal: expected min or max, got {goal!r}")
    trials = _count(table, "trials", 1)
    seed = _count(table, "seed", 0)
    repeats = _parse_repeats(table.get("repeats"), base)
    _check_method(method, grid, space, trials, seed, repeats)
    pruner, startup, warmup = _parse_pruner(table, method)
    if not grid and not space and repeats is None:
        raise ConfigError("[sweep]: nothing to sweep; give a grid, random distributions or repeats")
    return Spec(
        method,
        grid,
        space,
        trials,
        seed if seed is not None else 0,
        repeats,
        metric,
        goal,
        pruner,
        startup,
        warmup,
    )


def _parse_grid(grid: Any) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping):
        raise ConfigError(f"[sweep] grid: expected a table of lists, got {grid!r}")
    found = {}
    for key, values in grid.items():
        key = _setting(key, "grid")
        if not isinstance(values, list) or not values:
            raise ConfigError(
                f"[sweep.grid] {key}: expected a non-empty list of values, got {values!r}"
            )
        found[key] = list(values)
    return found


def _parse_space(space: Any) -> dict[str, Distribution]:
    if not isinstance(space, Mapping):
        raise ConfigError(f"[sweep] random: expected a table of distributions, got {space!r}")
    return {
        _setting(key, "random"): _parse_distribution(_setting(key, "random"), value)
        for key, value in space.items()
    }


def _setting(key: str, table: str) -> str:
    """``key`` as a setting's name, refused unless it is one a child may take."""
    key = str(key).replace("-", "_")
    fields = [f.name for f in dataclasses.fields(Config) if f.name != "out"]
    if key == "out":
        raise ConfigError(f"[sweep.{table}] out: the children's folders are made in the sweep's")
    if key not in fields:
        raise ConfigError(
            f"[sweep.{table}]: unknown setting {key!r}; valid settings: {', '.join(fields)}"
        )
    return key


_EXAMPLE = '{ distribution = "loguniform", low = 0.001, high = 0.1 }'


def _parse_distribution(key: str, value: Any) -> Distribution:
    where = f"[sweep.random] {key}"
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a distribution such as {_EXAMPLE}, got {value!r}")
    kind = value.get("distribution")
    if kind not in DISTRIBUTIONS:
        raise ConfigError(
            f"{where}: distribution must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}"
        )
    allowed = ("distribution", "values") if kind == "choice" else ("distribution", "low", "high")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} for a {kind} "
            f"distribution; it takes {', '.join(allowed)}"
        )
    if kind == "choice":
        values = value.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: a choice needs values, a non-empty list; got {values!r}")
        return Distribution("choice", values=tuple(values))
    bounds: list[float] = []
    for name in ("low", "high"):
        bound: Any = value.get(name)
        number = isinstance(bound, int) if kind == "int" else isinstance(bound, int | float)
        if isinstance(bound, bool) or not number or not math.isfinite(bound):
            expected = "an integer" if kind == "int" else "a finite number"
            raise ConfigError(f"{where}: {name} must be {expected}, got {bound!r}")
        bounds.append(bound)
    low, high = bounds
    if not low < high:
        raise ConfigError(f"{where}: low must be below high, got low={low!r}, high={high!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: a loguniform distribution needs low > 0, got low={low!r}")
    return Distribution(kind, low, high)


def _count(table: Mapping[str, Any], key: str, least: int) -> int | None:
    value = table.get(key)
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int) or value < least
    ):
        raise ConfigError(f"[sweep] {key}: must be an integer >= {least}, got {value!r}")
    return value


def _parse_repeats(repeats: Any, base: Mapping[str, Any]) -> list[int] | None:
    """``repeats = N`` (the seeds from the run's seed on) or a list of seeds."""
    if repeats is None:
        return None
    if isinstance(repeats, int) and not isinstance(repeats, bool):
        if repeats < 1:
            raise ConfigError(f"[sweep] repeats: must be >= 1 seeds, got {repeats}")
        first = base.get("seed", 0)
        first = first if isinstance(first, int) and not isinstance(first, bool) else 0
        return list(range(first, first + repeats))
    if (
        not isinstance(repeats, list)
        or not repeats
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in repeats)
    ):
        raise ConfigError(
            f"[sweep] repeats: expected a number of seeds or a list of seeds "
            f"(integers >= 0), got {repeats!r}"
        )
    if len(set(repeats)) != len(repeats):
        raise ConfigError(f"[sweep] repeats: a seed is repeated in {repeats}")
    return list(repeats)


def _check_method(
    method: str,
    grid: Mapping[str, Any],
    space: Mapping[str, Any],
    trials: int | None,
    seed: int | None,
    repeats: list[int] | None,
) -> None:
    """The keys each method takes and needs."""
    if repeats is not None and ("seed" in grid or "seed" in space):
        raise ConfigError("[sweep] repeats: the seed is also swept (grid or random); keep one")
    if method == "grid":
        if space:
            raise ConfigError(
                "[sweep] random: method grid takes no distributions (method "
                "random crosses the grid with random draws)"
            )
        for key, value in (("trials", trials), ("seed", seed)):
            if value is not None:
                raise ConfigError(
                    f"[sweep] {key}: only methods random and optuna draw "
                    "(the runs' own seed is a setting, or repeats)"
                )
        return
    if not space:
        raise ConfigError(
            f"[sweep] random: method {method} needs distributions, such as lr = {_EXAMPLE}"
        )
    if trials is None:
        raise ConfigError(f"[sweep] trials: method {method} needs the number of draws")
    if method == "optuna":
        if grid:
            raise ConfigError(
                "[sweep] grid: method optuna searches [sweep.random]; give a "
                'list there as { distribution = "choice", values = [...] }'
            )
        if repeats is not None:
            raise ConfigError(
                "[sweep] repeats: method optuna runs one child a trial; sweep "
                "the best trial's settings with repeats afterwards"
            )
        _import_optuna()


def _parse_pruner(
    table: Mapping[str, Any], method: str
) -> tuple[str | None, int | None, int | None]:
    """``pruner``, ``startup_trials`` and ``warmup_epochs`` (Optuna's only)."""
    keys = [key for key in ("pruner", "startup_trials", "warmup_epochs") if key in table]
    if method != "optuna":
        if keys:
            raise ConfigError(f"[sweep] {keys[0]}: only method optuna prunes")
        return None, None, None
    pruner = table.get("pruner", "median")
    if pruner not in PRUNERS:
        raise ConfigError(f"[sweep] pruner: expected one of {', '.join(PRUNERS)}, got {pruner!r}")
    startup, warmup = _count(table, "startup_trials", 0), _count(table, "warmup_epochs", 0)
    if startup is not None and pruner != "median":
        raise ConfigError(f"[sweep] startup_trials: the median pruner's, not {pruner}'s")
    if warmup is not None and pruner == "none":
        raise ConfigError("[sweep] warmup_epochs: pruner none prunes nothing")
    return pruner, startup, warmup


def split(values: Mapping[str, Any]) -> tuple[dict[str, Any], Spec]:
    """A sweep's settings, the run settings and the ``[sweep]`` table, checked: the run
    settings' keys are ``Config``'s (``out`` excepted), data paths made absolute (the
    workers, and a resume from another folder, read them there)."""
    values = {str(key).replace("-", "_"): value for key, value in values.items()}
    if "sweep" not in values:
        raise ConfigError(
            "[sweep]: missing; a sweep needs a [sweep] table (grid, random or "
            "repeats) after its run settings"
        )
    table = values.pop("sweep")
    if "out" in values:
        raise ConfigError(
            "out: a sweep makes its children's run folders in its own folder "
            "(--out names the sweep's)"
        )
    fields = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(
            f"config: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(fields))}"
            " and the [sweep] table"
        )
    for key in experiment.DATA_PATHS:
        if isinstance(values.get(key), str):
            values[key] = os.path.abspath(values[key])
    table = _absolute_paths(table)
    values.setdefault("backend", Config(dataset="spiral").backend)  # (the environment's)
    return values, parse_spec(table, values)


def _absolute_paths(table: Any) -> Any:
    """The ``[sweep]`` table with the data paths among its grid values and choices made
    absolute (as the run settings' are), so a resume from another folder finds them."""
    if not isinstance(table, dict):
        return table
    table = dict(table)

    def absolute(key: str, value: Any) -> Any:
        wanted = key.replace("-", "_") in experiment.DATA_PATHS and isinstance(value, str)
        return os.path.abspath(value) if wanted else value

    if isinstance(table.get("grid"), dict):
        table["grid"] = {key: [absolute(key, v) for v in options] if isinstance(options, list)
                         else options for key, options in table["grid"].items()}  # fmt: skip
    if isinstance(table.get("random"), dict):
        space = {}
        for key, d in table["random"].items():
            if isinstance(d, dict) and isinstance(d.get("values"), list):
                d = {**d, "values": [absolute(key, v) for v in d["values"]]}
            space[key] = d
        table["random"] = space
    return table


# --- the children --------------------------------------------------------------------------


@dataclasses.dataclass
class Child:
    """One run of the sweep: its settings (``overrides`` of the run settings), its run folder
    ``name`` and what became of it (``status``: pending, running, done, pruned, failed,
    interrupted). ``group`` names its settings but the seed of the repeats."""

    index: int
    name: str
    overrides: dict[str, Any]
    group: str
    status: str = "pending"
    error: str | None = None
    backend: str | None = None  # the GPU it was given (cupy:N), else None: the settings'
    seconds: float = 0.0  # its workers' wall time, every call together
    trial: int | None = None  # the Optuna trial's number
    trial_id: int | None = None  # (and its id in the storage)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan(base: Mapping[str, Any], spec: Spec) -> list[Child]:
    """Every child of a grid or random sweep, in order: the grid's combinations (its keys'
    order, the last changing fastest), for each the random draws (seeded by ``spec.seed``),
    for each the repeats' seeds. Each child's settings are checked (a ``ConfigError`` names
    the first child that has a bad one)."""
    rng = np.random.default_rng(spec.seed)
    draws = [
        {key: d.sample(rng) for key, d in spec.random.items()} for _ in range(spec.trials or 0)
    ] or [{}]
    seeds: list[int | None] = list(spec.repeats) if spec.repeats is not None else [None]
    children: list[Child] = []
    width = index_width(spec.size())
    for combination in itertools.product(*spec.grid.values()):
        for draw in draws:
            for seed in seeds:
                overrides = dict(zip(spec.grid, combination, strict=True)) | draw
                children.append(new_child(len(children), overrides, seed, width))
    for child in children:
        check_settings(base, child)
    return children


def new_child(index: int, overrides: dict[str, Any], seed: int | None, width: int) -> Child:
    """The child ``index`` with these settings (and, for repeats, ``seed``)."""
    group = label(overrides)
    if seed is not None:
        overrides = {**overrides, "seed": seed}
    return Child(index, child_name(index, overrides, width), overrides, group)


def index_width(total: int) -> int:
    """Digits of the children's index in their folder names: 000 to 999 for up to 1000."""
    return max(3, len(str(total - 1)))


def child_name(index: int, overrides: Mapping[str, Any], width: int = 3) -> str:
    """The run folder's name: ``003-lr=0.02,hidden=64-64,seed=1`` (characters that a file
    name should not hold replaced by ``_``, at most 120 in all)."""
    parts = [f"{key}={_short(value)}" for key, value in overrides.items()]
    name = f"{index:0{width}d}" + (f"-{','.join(parts)}" if parts else "")
    safe = "".join(c if c.isalnum() or c in "._=,+-" else "_" for c in name)
    return safe[:120]


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return "-".join(_short(v) for v in value)
    if isinstance(value, str):
        return Path(value).name or value  # (a data file: its name)
    return str(value)


def label(settings: Mapping[str, Any]) -> str:
    """``lr=0.02, hidden=[64, 64]``: settings for people (``"(base)"`` when none)."""
    return ", ".join(f"{key}={_shown(value)}" for key, value in settings.items()) or "(base)"


def _shown(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else json.dumps(value)


def check_settings(base: Mapping[str, Any], child: Child) -> None:
    """Refuse a child whose settings are no valid run (a ``ConfigError`` naming it)."""
    try:
        Config.from_mapping({**base, **child.overrides}, where="[sweep]")
    except ConfigError as e:
        raise ConfigError(f"[sweep] child {child.name}: {e}") from None


def check_space(base: Mapping[str, Any], spec: Spec) -> None:
    """Refuse a distribution whose edges (or choices) are no valid setting, naming it: a
    draw may come as near to either as a run can tell apart (and an Optuna study draws
    later, as it goes)."""
    combos = [dict(zip(spec.grid, values, strict=True))
              for values in itertools.product(*spec.grid.values())]  # fmt: skip
    for key, distribution in spec.random.items():
        for value in distribution.extremes():
            errors = []  # (valid with one grid combination at least: with another it may not)
            for combo in combos:
                try:
                    Config.from_mapping({**base, **combo, key: value}, where="[sweep]")
                    break
                except ConfigError as e:
                    errors.append(e)
            else:
                raise ConfigError(f"[sweep.random] {key}: the value {value!r}: {errors[0]}")


# --- the sweep folder ----------------------------------------------------------------------


@dataclasses.dataclass
class SweepFolder:
    """The parent folder and its manifest, ``sweep.json``: the run settings (``base``), the
    ``[sweep]`` table, the children and how they are run. Only the parent process writes
    it (``save``, atomically); the workers read it."""

    path: Path
    base: dict[str, Any]
    spec: Spec
    children: list[Child]
    plots: bool = True
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # command, times, ...

    @property
    def manifest(self) -> Path:
        return self.path / "sweep.json"

    def run_dir(self, child: Child) -> Path:
        return self.path / child.name

    def log(self, child: Child) -> Path:
        return self.path / "logs" / f"{child.name}.log"

    def config_of(self, child: Child, backend: str | None = None) -> Config:
        """The child's settings as its run takes them (``backend``: the GPU it is given)."""
        values = {**self.base, **child.overrides, "out": str(self.run_dir(child))}
        if backend is not None:
            values["backend"] = backend
        return Config.from_mapping(values, where=f"{self.manifest} child {child.name}")

    def save(self) -> None:
        run_folder.write_json(
            self.manifest,
            {
                "format": 1,
                "base": self.base,
                "sweep": self.spec.as_dict(),
                "total": self.spec.size(),
                "plots": self.plots,
                **self.record,
                "children": [child.as_dict() for child in self.children],
            },
        )

    @classmethod
    def open(cls, path: Path) -> SweepFolder:
        """The sweep recorded in ``path`` (a ``RunError`` when it holds none)."""
        manifest = path / "sweep.json"
        if not manifest.is_file():
            what = "no such folder" if not path.exists() else "not a sweep folder (no sweep.json)"
            raise RunError(f"{path}: {what}")
        try:
            saved = json.loads(manifest.read_text())
            children = [Child(**child) for child in saved["children"]]
            base, spec = saved["base"], parse_spec(saved["sweep"], saved["base"])
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"{manifest}: damaged ({type(e).__name__}: {e})") from None
        record = {
            key: value
            for key, value in saved.items()
            if key not in ("format", "base", "sweep", "total", "plots", "children")
        }
        return cls(path, base, spec, children, saved.get("plots", True), record)


def default_out() -> Path:
    """``runs/sweep-<date>-<time>`` (with a suffix when taken)."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path, suffix = Path("runs") / f"sweep-{stamp}", 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"sweep-{stamp}-{suffix}"
    return path


def make_folder(path: Path) -> None:
    """Make the new sweep folder, refusing one that exists and holds anything."""
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise RunError(
            f"{path} already exists; pass --resume to continue the sweep in it or "
            "choose another --out"
        )
    try:
        (path / "logs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunError(f"cannot make the sweep folder {path}: {e.strerror or e}") from e


# --- results -------------------------------------------------------------------------------


def best_row(
    rows: Sequence[Mapping[str, float]], metric: str, goal: str
) -> Mapping[str, float] | None:
    """The first epoch's row with the best ``metric`` for ``goal``, or None (no rows)."""
    best = None
    for row in rows:
        value = row.get(metric)
        if value is None:
            continue
        if best is None or (value < best[metric] if goal == "min" else value > best[metric]):
            best = row
    return best


def child_result(folder: SweepFolder, child: Child) -> dict[str, Any]:
    """A child's line of the results: its settings, status and the metrics of its best
    epoch (by the sweep's metric) from its run folder's metrics."""
    rows: list[dict[str, float]] = []
    if folder.run_dir(child).is_dir():
        try:
            rows = run_folder.read_metrics(folder.run_dir(child))
        except RunError:  # (a damaged file: shown as no metrics, the error says why)
            rows = []
    best = best_row(rows, folder.spec.metric, folder.spec.goal)
    result: dict[str, Any] = {
        "rank": None,
        "index": child.index,
        "run": str(folder.run_dir(child)),
        "status": child.status,
        "settings": dict(child.overrides),
        "group": child.group,
        "epochs": len(rows),
        "best_epoch": None if best is None else int(best["epoch"]),
        "value": None if best is None else best[folder.spec.metric],
    }
    for metric in METRICS:
        result[metric] = None if best is None else best.get(metric)
    result |= {"seconds": round(child.seconds, 3), "trial": child.trial, "error": child.error}
    return result


def rank(
    results: list[dict[str, Any]], spec: Spec
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The children's results sorted by the goal, each by its own best value (those with no
    metrics last), each ranked, and, for repeats, each group's mean and standard deviation
    over its seeds, sorted by the mean (ranked apart)."""
    sign = 1.0 if spec.goal == "min" else -1.0
    groups: list[dict[str, Any]] = []
    if spec.repeats is not None:
        groups = [
            _aggregate(name, [r for r in results if r["group"] == name])
            for name in dict.fromkeys(r["group"] for r in results)
        ]
        groups.sort(key=lambda g: (g["value_mean"] is None, sign * (g["value_mean"] or 0.0)))
        for i, group in enumerate(groups):
            group["rank"] = i + 1 if group["value_mean"] is not None else None
    ordered = sorted(
        results,
        key=lambda r: (
            r["value"] is None,
            sign * (r["value"] or 0.0),
            r["index"],
        ),
    )
    for i, result in enumerate(ordered):
        result["rank"] = i + 1 if result["value"] is not None else None
    return ordered, groups


def _aggregate(name: str, members: list[dict[str, Any]]) -> dict[str, Any]:
    """A group's mean ± standard deviation (the sample's, n - 1; 0 for one seed) of the
    metrics of its children that have metrics."""
    found: dict[str, Any] = {"rank": None, "group": name, "runs": [m["index"] for m in members]}
    measured = [m for m in members if m["value"] is not None]
    found["n"] = len(measured)
    for metric in ("value", *METRICS):
        values = [m[metric] for m in measured if m[metric] is not None]
        found[f"{metric}_mean"] = statistics.fmean(values) if values else None
        found[f"{metric}_std"] = (
            statistics.stdev(values) if len(values) > 1 else (0.0 if values else None)
        )
    return found


def results_of(
    folder: SweepFolder, cache: dict[int, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """What ``sweep`` returns: every child's result ranked (``children``), the groups of
    repeats (``groups``), the best child (``best``) and the count of each status.
    ``cache`` keeps the results of finished children (read once)."""
    cache = {} if cache is None else cache
    results = []
    for child in folder.children:
        result = cache.get(child.index)
        if result is None or result["status"] != child.status:
            result = child_result(folder, child)
            if child.status in (*FINISHED, "failed"):
                cache[child.index] = result
        results.append(dict(result))
    ordered, groups = rank(results, folder.spec)
    counts = {
        status: sum(r["status"] == status for r in ordered)
        for status in ("done", "pruned", "failed", "interrupted", "running", "pending")
    }
    best = next((r for r in ordered if r["value"] is not None and r["status"] in FINISHED), None)
    return {
        "sweep": str(folder.path),
        "metric": folder.spec.metric,
        "goal": folder.spec.goal,
        "total": folder.spec.size(),
        "counts": counts,
        "best": best,
        "children": ordered,
        "groups": groups,
    }


def best_runs(results: Mapping[str, Any], k: int) -> list[Path]:
    """The run folders of the ``k`` best finished children (for a comparison plot)."""
    ranked = [r for r in results["children"] if r["rank"] is not None and r["status"] in FINISHED]
    return [Path(r["run"]) for r in ranked[:k]]


BEST_K = 5  # the children the sweep's comparison plot overlays


def comparison_plot(folder: SweepFolder, results: Mapping[str, Any]) -> Path | None:
    """``compare.png`` in the sweep folder: the loss and accuracy curves of the ``BEST_K``
    best finished children (``compare.plot_runs``, as ``backprop-gpu compare --output``
    draws them). None, and no file, without plots, matplotlib or a finished child."""
    runs = best_runs(results, BEST_K)
    if not folder.plots or not runs or importlib.util.find_spec("matplotlib") is None:
        return None
    from . import compare

    labels = [f"#{i + 1} {run.name}" for i, run in enumerate(runs)]
    return compare.plot_runs(runs, folder.path / "compare.png", labels)


def write_results(folder: SweepFolder, results: Mapping[str, Any]) -> None:
    """results.csv and results.md, atomically."""
    for name, text in (("results.csv", results_csv(results)), ("results.md", results_md(results))):
        data = text.encode()
        atomic_write(folder.path / name, lambda f, data=data: f.write(data))  # type: ignore[misc]


def _setting_keys(results: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(key for r in results["children"] for key in r["settings"]))


def results_csv(results: Mapping[str, Any]) -> str:
    """One line a child, ranked: its settings, status, the metrics of its best epoch and,
    with repeats, its group's mean and standard deviation of the sweep's metric."""
    import csv

    keys = _setting_keys(results)
    metric = results["metric"]
    grouped = {g["group"]: g for g in results["groups"]}
    columns = ["rank", "index", "run", "status", *keys, "epochs", "best_epoch", *METRICS]
    if grouped:
        columns += ["group", f"{metric}_mean", f"{metric}_std", "n"]
    columns += ["seconds", "trial", "error"]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for r in results["children"]:
        row = {key: _cell(r.get(key)) for key in columns}
        row |= {key: _cell(r["settings"].get(key)) for key in keys}
        if grouped:
            group = grouped[r["group"]]
            row |= {
                f"{metric}_mean": _cell(group["value_mean"]),
                f"{metric}_std": _cell(group["value_std"]),
                "n": group["n"],
            }
        writer.writerow(row)
    return text.getvalue()


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    return value


def results_md(results: Mapping[str, Any]) -> str:
    """The results for people: the counts, the groups of repeats (mean ± std), then every
    child, best first."""
    metric, goal = results["metric"], results["goal"]
    counts = ", ".join(f"{n} {status}" for status, n in results["counts"].items() if n)
    lines = [
        f"# Sweep {results['sweep']}",
        "",
        f"{len(results['children'])} of {results['total']} children: {counts}. Ranked by "
        f"{metric} ({goal}); each child's metrics are those of its best epoch.",
        "",
    ]
    if results["groups"]:
        lines += ["## Settings over their seeds (mean ± std)", ""]
        lines += _table(
            ["rank", "settings", "n", *METRICS],
            [
                [
                    g["rank"],
                    g["group"],
                    g["n"],
                    *(_pm(g[f"{m}_mean"], g[f"{m}_std"]) for m in METRICS),
                ]
                for g in results["groups"]
            ],
        )
        lines.append("")
    keys = _setting_keys(results)
    lines += ["## Children", ""]
    rows = []
    for r in results["children"]:
        rows.append(
            [
                r["rank"],
                f"`{Path(r['run']).name}`",
                r["status"],
                *(_shown(r["settings"][k]) if k in r["settings"] else "" for k in keys),
                r["epochs"],
                r["best_epoch"],
                *(_number(r[m]) for m in METRICS),
                f"{r['seconds']:.1f}",
                r["error"] or "",
            ]
        )
    lines += _table(
        ["rank", "run", "status", *keys, "epochs", "best epoch", *METRICS, "seconds", "error"], rows
    )
    return "\n".join(lines) + "\n"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def line(cells: Sequence[Any]) -> str:
        shown = ["" if c is None else str(c).replace("|", "\\|").replace("\n", " ") for c in cells]
        return "| " + " | ".join(shown) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:.4f}"


def _pm(mean: float | None, std: float | None) -> str:
    return "" if mean is None else f"{mean:.4f} ± {std or 0.0:.4f}"


# --- running the children: worker processes ------------------------------------------------


def usable_gpus(backend: str) -> int:
    """How many GPUs the children spread over: with the backend ``auto`` (when CuPy works)
    or ``cupy`` and several GPUs, their count; else 0 (the children take ``backend``)."""
    if backend not in ("auto", "cupy"):
        return 0
    count = gpu_count()
    if count < 2:
        return 0
    if backend == "auto" and detect_gpu()[0] is None:
        return 0
    return count


def slot_backends(parallel: int, gpus: int) -> list[str | None]:
    """The backend of each worker slot: GPU ``slot % gpus`` when there are several GPUs,
    else None (the children's settings decide)."""
    return [f"cupy:{slot % gpus}" if gpus > 1 else None for slot in range(parallel)]


def cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not on macOS, Windows)
        return os.cpu_count() or 1


def threads_per_child(parallel: int) -> int:
    """BLAS threads each of ``parallel`` children gets, so that together they do not
    oversubscribe the cores (at least one)."""
    return max(1, cores() // parallel)


def worker_env(threads: int, sweep_dir: Path | None = None) -> dict[str, str]:
    """A worker's environment: this one, with its BLAS threads, this package first on the
    path (the workers run the parent's code) and the parent's process id; with
    ``sweep_dir``, unless set already, MLflow's store in ``sweep_dir/mlruns`` and its
    experiment named after the sweep (``--log mlflow``: every child a run of one experiment,
    side by side in ``mlflow ui``)."""
    path = os.pathsep.join(p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, PARENT_VAR: str(os.getpid())}
    env |= {name: str(threads) for name in THREAD_VARS}
    if sweep_dir is not None:
        env.setdefault("MLFLOW_TRACKING_URI", (sweep_dir.absolute() / "mlruns").as_uri())
        env.setdefault("MLFLOW_EXPERIMENT_NAME", sweep_dir.absolute().name)
    return env


@dataclasses.dataclass
class Running:
    """A child's worker process."""

    child: Child
    process: subprocess.Popen[bytes]
    slot: int
    started: float
    log: IO[bytes]


class Pool:
    """The worker processes, ``size`` at most at a time, one per slot. Each runs in its own
    session (a Ctrl-C at the terminal reaches the parent only, which passes it on once)."""

    def __init__(self, size: int, env: dict[str, str]) -> None:
        self.size = size
        self.env = env
        self.running: dict[int, Running] = {}

    def free_slot(self) -> int | None:
        return next((slot for slot in range(self.size) if slot not in self.running), None)

    def start(self, folder: SweepFolder, child: Child, slot: int, backend: str | None) -> None:
        """Start ``child``'s worker in ``slot`` (``backend``: its GPU), its output to its log."""
        command = [sys.executable, "-m", "backprop_gpu.sweep", str(folder.path), str(child.index)]
        if backend is not None:
            command += ["--backend", backend]
        folder.log(child).parent.mkdir(exist_ok=True)
        log = folder.log(child).open("ab")
        log.write(
            f"--- {dt.datetime.now().isoformat(timespec='seconds')}: {' '.join(command)}\n".encode()
        )
        log.flush()
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        except BaseException:
            log.close()
            raise
        self.running[slot] = Running(child, process, slot, time.perf_counter(), log)

    def ended(self) -> list[Running]:
        """The workers that have exited since the last call (their slots freed)."""
        gone = [r for r in self.running.values() if r.process.poll() is not None]
        for worker in gone:
            worker.log.close()
            del self.running[worker.slot]
        return gone

    def signal(self, signum: int) -> None:
        for worker in self.running.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signum)

    def wait(self) -> None:
        for worker in self.running.values():
            worker.process.wait()


def outcome(returncode: int, log: Path, stopping: bool) -> tuple[str, str | None]:
    """A worker's status and error from its exit status and log: ``stopping`` when the
    parent had asked it to stop."""
    if returncode == 0:
        return "done", None
    if returncode == EXIT_PRUNED:
        return "pruned", None
    stopped = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}
    if returncode in stopped or (stopping and returncode == -signal.SIGKILL):
        return "interrupted", None  # (any other failure, even during a stop, is a failure)
    if returncode < 0:
        return "failed", f"killed by {signal.Signals(-returncode).name}"
    return "failed", last_error(log) or f"exit status {returncode}"


def last_error(log: Path) -> str | None:
    """The error line a worker writes last (``error: ...``), else its log's last line, of
    the log's last attempt (a retried child's log holds each, after a ``--- `` header)."""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return None
    starts = [i for i, line in enumerate(lines) if line.startswith("--- ")]
    lines = lines[starts[-1] + 1 :] if starts else lines
    errors = [line for line in lines if line.startswith("error: ")]
    found = errors[-1].removeprefix("error: ") if errors else (lines[-1] if lines else None)
    return None if found is None else found[:500]


# --- where the children come from: a plan, or an Optuna study ------------------------------


class Planned:
    """The children of a grid or random sweep, planned when it started: those not finished,
    in order."""

    def __init__(self, folder: SweepFolder) -> None:
        self.queue = deque(c for c in folder.children if c.status not in FINISHED)

    def next(self) -> Child | None:
        return self.queue.popleft() if self.queue else None

    def ended(self, child: Child) -> None:
        """(Nothing to tell anyone.)"""


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ImportError(
            "[sweep] method optuna needs Optuna: pip install 'backprop-gpu[optuna]'"
        ) from None
    return optuna


def _storage(path: Path) -> Any:
    """The Optuna study's storage: a journal file in the sweep folder, which every worker
    process opens (with a file lock: safe for several at once)."""
    optuna = _import_optuna()
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(str(path / "optuna.journal")))


def make_pruner(spec: Spec, base: Mapping[str, Any]) -> Any:
    """The Optuna pruner of ``spec``: median (``startup_trials``, ``warmup_epochs``),
    hyperband (from ``warmup_epochs`` to the most epochs a child can train) or none."""
    optuna = _import_optuna()
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=5 if spec.startup_trials is None else spec.startup_trials,
            n_warmup_steps=spec.warmup_epochs or 0,
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=max(spec.warmup_epochs or 1, 1), max_resource=most_epochs(spec, base)
        )
    return optuna.pruners.NopPruner()


def most_epochs(spec: Spec, base: Mapping[str, Any]) -> int:
    """The most epochs a child of the sweep can train (the top of a swept ``epochs``)."""
    epochs = spec.random.get("epochs")
    most = max(epochs.extremes()) if epochs is not None else Config.from_mapping(base).epochs
    return int(most)


def check_pruner(spec: Spec, base: Mapping[str, Any]) -> None:
    """Refuse a pruner that could never prune: ``warmup_epochs`` not below the most epochs
    a child trains (Optuna would silently stop nothing)."""
    if spec.method != "optuna" or spec.pruner in (None, "none") or not spec.warmup_epochs:
        return
    most = most_epochs(spec, base)
    if spec.warmup_epochs >= most:
        raise ConfigError(
            f"[sweep] warmup_epochs: {spec.warmup_epochs} is not below the most epochs a child "
            f"trains ({most}); the {spec.pruner} pruner would prune nothing"
        )


@contextlib.contextmanager
def quiet_optuna() -> Iterator[Any]:
    """Optuna, its per-trial INFO lines off for the block (the sweep reports its own)."""
    optuna = _import_optuna()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield optuna
    finally:
        optuna.logging.set_verbosity(verbosity)


def open_study(folder: SweepFolder) -> Any:
    """The sweep's Optuna study (made on the first call): TPE seeded by ``spec.seed`` (a
    resumed sweep's by the seed and the trials asked before, so that it does not draw its
    first trials again), the spec's pruner, its journal in the sweep folder."""
    optuna = _import_optuna()
    spec = folder.spec
    asked = len(folder.children)
    seed = (
        spec.seed
        if not asked
        else int(np.random.SeedSequence([spec.seed, asked]).generate_state(1)[0])
    )
    return optuna.create_study(
        storage=_storage(folder.path),
        study_name=STUDY,
        load_if_exists=True,
        direction="minimize" if spec.goal == "min" else "maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=make_pruner(spec, folder.base),
    )


class OptunaTrials:
    """The children of an Optuna study, one a trial, asked for as slots free up (TPE sees
    the trials that have finished by then): first those a resumed sweep had not finished
    (a failed one under a new trial with its settings), then new ones, up to ``trials``."""

    def __init__(self, folder: SweepFolder) -> None:
        self.folder = folder
        self.study = open_study(folder)
        self.space = {key: d.to_optuna() for key, d in folder.spec.random.items()}
        self.queue: deque[Child] = deque()
        states = {t.number: t.state.name for t in self.study.get_trials(deepcopy=False)}
        for child in folder.children:
            if child.status in FINISHED:
                continue
            state = states.get(child.trial) if child.trial is not None else None
            if state == "COMPLETE":  # (its worker told the study; the sweep stopped before
                child.status = "done"  # it heard)
            elif state == "PRUNED":
                child.status = "pruned"
            else:
                self.queue.append(child)

    def next(self) -> Child | None:
        if self.queue:
            child = self.queue.popleft()
            state = self.study.get_trials(deepcopy=False)[child.trial].state.name
            if state != "RUNNING":  # failed: its trial is over; the same settings again
                encoded = {
                    k: self.folder.spec.random[k].encode(v) for k, v in child.overrides.items()
                }
                self.study.enqueue_trial(encoded)
                self._assign(child, self.study.ask(self.space))
            return child
        while len(self.folder.children) < (self.folder.spec.trials or 0):
            trial = self.study.ask(self.space)
            space = self.folder.spec.random
            overrides = {key: space[key].decode(trial.params[key]) for key in space}
            width = index_width(self.folder.spec.size())
            child = new_child(len(self.folder.children), overrides, None, width)
            self._assign(child, trial)
            self.folder.children.append(child)
            try:
                check_settings(self.folder.base, child)
            except ConfigError as e:  # (a draw no run takes: that trial fails, the study goes on)
                child.status, child.error = "failed", str(e)
                self.ended(child)
                continue
            return child
        return None

    @staticmethod
    def _assign(child: Child, trial: Any) -> None:
        child.trial, child.trial_id = trial.number, trial._trial_id  # (Trial(study, id) in
        # the worker: Optuna keeps the id private, public only on its Trial objects)

    def ended(self, child: Child) -> None:
        """Tell the study how the child's trial ended (its worker has told it already when
        it finished or was pruned: then nothing changes; an interrupted one stays running,
        for the resume)."""
        optuna = _import_optuna()
        state = optuna.trial.TrialState
        if child.status == "done":
            value = child_value(self.folder, child)
            self.study.tell(child.trial, value, skip_if_finished=True)
        elif child.status == "pruned":
            self.study.tell(child.trial, state=state.PRUNED, skip_if_finished=True)
        elif child.status == "failed":
            self.study.tell(child.trial, state=state.FAIL, skip_if_finished=True)


def child_value(folder: SweepFolder, child: Child) -> float | None:
    """The child's best value of the sweep's metric (None: no epoch finished)."""
    rows = run_folder.read_metrics(folder.run_dir(child))
    best = best_row(rows, folder.spec.metric, folder.spec.goal)
    return None if best is None else float(best[folder.spec.metric])


# --- the sweep -----------------------------------------------------------------------------


def sweep(
    config: Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    parallel: int | None = None,
    resume: bool = False,
    max_runs: int = MAX_RUNS,
    plots: bool = True,
    report: Callable[[str], None] | None = print,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Run the sweep that ``config`` describes (the run settings and a ``"sweep"`` table, as
    the TOML file holds them) in the folder ``out`` (default ``runs/sweep-<time>``), and
    return its results (``results_of``). ``parallel`` children at a time (default: one per
    GPU when there are several, else 1). ``resume=True`` continues the sweep in ``out``
    (``config``, if given, must be the one it started with). A sweep of more than
    ``max_runs`` children is refused, and so is an existing ``out`` without ``resume``.
    Ctrl-C or SIGTERM stops every child cleanly, then raises ``SweepInterrupted``."""
    if parallel is not None and (isinstance(parallel, bool) or parallel < 1):
        raise ConfigError(f"--parallel: must be an integer >= 1, got {parallel!r}")
    if isinstance(max_runs, bool) or not isinstance(max_runs, int) or max_runs < 1:
        raise ConfigError(f"--max-runs: must be an integer >= 1, got {max_runs!r}")
    if resume:
        if out is None:
            raise ConfigError("--resume needs --out SWEEP_DIR, the sweep to continue")
        path = Path(out)
        folder = SweepFolder.open(path)
    else:
        if config is None:
            raise ConfigError("config: a sweep needs its settings (--config FILE.toml)")
        base, spec = split(config)
        if spec.size() > max_runs:
            raise ConfigError(
                f"--max-runs: the sweep has {spec.size()} children, more than {max_runs}; "
                "sweep fewer settings or raise --max-runs"
            )
        check_space(base, spec)  # (the edges: a draw may come near either)
        check_pruner(spec, base)
        children = plan(base, spec) if spec.method != "optuna" else []
        path = Path(out) if out is not None else default_out()
        make_folder(path)
        folder = SweepFolder(path, base, spec, children, plots)
        folder.record = {"command": command if command is not None else sys.argv, "started": _now()}
    with run_folder.run_lock(path):
        if resume:
            folder = SweepFolder.open(path)  # (read again under the lock)
            if config is not None:
                _check_same_sweep(folder, config)
            folder.record.setdefault("resumed", []).append(
                {"command": command if command is not None else sys.argv, "at": _now()}
            )
        return _run(folder, parallel, report)


def _now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def _check_same_sweep(folder: SweepFolder, config: Mapping[str, Any]) -> None:
    """Refuse to resume a sweep with settings other than its own."""
    base, spec = split(config)
    for what, given, saved in (
        ("run settings", base, folder.base),
        ("[sweep] table", spec.as_dict(), folder.spec.as_dict()),
    ):
        if json.loads(json.dumps(given)) != json.loads(json.dumps(saved)):
            keys = sorted(k for k in set(given) | set(saved) if given.get(k) != saved.get(k))
            raise RunError(
                f"{folder.path}: its {what} differ from the config's ({', '.join(keys)}); "
                "resume it without --config, or start a new sweep with another --out"
            )


def _run(
    folder: SweepFolder, parallel: int | None, report: Callable[[str], None] | None
) -> dict[str, Any]:
    """Run the sweep's unfinished children in worker processes, recording each as it ends."""
    gpus = usable_gpus(str(folder.base.get("backend", "auto")))
    parallel = parallel or max(gpus, 1)
    threads = threads_per_child(parallel)
    folder.record |= {"parallel": parallel, "threads_per_child": threads, "gpus": gpus}
    with contextlib.ExitStack() as stack:
        if folder.spec.method == "optuna":
            stack.enter_context(quiet_optuna())
            source: Planned | OptunaTrials = OptunaTrials(folder)
        else:
            source = Planned(folder)
        cache: dict[int, dict[str, Any]] = {}
        folder.save()
        write_results(folder, results_of(folder, cache))
        if report is not None:
            report(_opening(folder, parallel, threads, gpus))
        started = time.perf_counter()
        pool = Pool(parallel, worker_env(threads, folder.path))
        drive(folder, source, pool, slot_backends(parallel, gpus), cache, report)
        results = results_of(folder, cache)
        plotted = comparison_plot(folder, results)
        if plotted is not None:
            results["plot"] = str(plotted)
        if report is not None:
            report(_closing(results, time.perf_counter() - started))
        return results


def drive(
    folder: SweepFolder,
    source: Planned | OptunaTrials,
    pool: Pool,
    backends: list[str | None],
    cache: dict[int, dict[str, Any]],
    report: Callable[[str], None] | None,
) -> None:
    """Keep ``pool`` full with ``source``'s children until none is left, recording each one
    that ends (sweep.json, then the results). Ctrl-C or SIGTERM: every running child is
    stopped (the same signal, so each finishes its epoch's commit; a second Ctrl-C kills
    them), recorded as interrupted, then ``SweepInterrupted``."""
    interrupts = run_folder.Interrupts()
    with interrupts.installed():
        try:
            while True:
                with interrupts.deferred():  # (the manifest matches the running workers)
                    _fill(folder, source, pool, backends)
                if not pool.running:
                    return
                time.sleep(POLL)
                with interrupts.deferred():  # (a worker that has ended is recorded)
                    for worker in pool.ended():
                        _record(folder, source, worker, False, cache, report)
        except KeyboardInterrupt:
            signum = interrupts.signum or signal.SIGINT
        stopping = list(pool.running.values())
        pool.signal(signum)
        try:
            pool.wait()
        except KeyboardInterrupt:  # (again: do not wait for the commits)
            pool.signal(signal.SIGKILL)
            pool.wait()
        with interrupts.deferred():
            for worker in stopping:
                worker.log.close()
                _record(folder, source, worker, True, cache, report)
            results = results_of(folder, cache)
        raise SweepInterrupted(folder.path, signum, results)


def _fill(
    folder: SweepFolder, source: Planned | OptunaTrials, pool: Pool, backends: list[str | None]
) -> None:
    """Start children in the free slots (and record them as running)."""
    started = False
    while (slot := pool.free_slot()) is not None:
        child = source.next()
        if child is None:
            break
        backend = backends[slot]
        if (folder.run_dir(child) / "config.json").is_file():
            backend = None  # (a resume keeps the run's own backend)
        child.status, child.error, child.backend = "running", None, backend or child.backend
        started = True
        try:
            pool.start(folder, child, slot, backend)
        except OSError as e:  # (no process could be made: too many, no memory, ...)
            child.status, child.error = "failed", f"cannot start its worker: {e.strerror or e}"
            source.ended(child)
    if started:
        folder.save()


def _record(
    folder: SweepFolder,
    source: Planned | OptunaTrials,
    worker: Running,
    stopping: bool,
    cache: dict[int, dict[str, Any]],
    report: Callable[[str], None] | None,
) -> None:
    """Record how a worker ended: the child's status and error in sweep.json, then the
    results files, then a line to ``report``."""
    child = worker.child
    returncode = worker.process.returncode
    child.status, child.error = outcome(returncode, folder.log(child), stopping)
    child.seconds += time.perf_counter() - worker.started
    source.ended(child)
    folder.save()
    results = results_of(folder, cache)
    write_results(folder, results)
    if report is not None:
        mine = next(r for r in results["children"] if r["index"] == child.index)
        report(_line(results, mine))


def _opening(folder: SweepFolder, parallel: int, threads: int, gpus: int) -> str:
    spec = folder.spec
    left = sum(c.status not in FINISHED for c in folder.children)
    if spec.method == "optuna":
        left += spec.size() - len(folder.children)
    where = f"{gpus} GPUs" if gpus > 1 else f"{_plural(threads, 'thread')} each"
    return (
        f"sweep {folder.path}: {_plural(spec.size(), 'child', 'children')} ({spec.method}"
        f"{', ' + str(left) + ' to run' if left != spec.size() else ''}), {parallel} at a "
        f"time, {where}"
    )


def _line(results: Mapping[str, Any], r: Mapping[str, Any]) -> str:
    ended = sum(c["status"] in (*FINISHED, "failed") for c in results["children"])
    head = f"[{ended}/{results['total']}] {r['status']:<11} {Path(r['run']).name}"
    if r["status"] == "failed":
        return f"{head}: {r['error']}"
    if r["value"] is None:
        return head
    return (
        f"{head}: {results['metric']} {r['value']:.4f} (epoch {r['best_epoch']} of "
        f"{r['epochs']}), {r['seconds']:.1f} s"
    )


def _closing(results: Mapping[str, Any], seconds: float) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in results["counts"].items() if n)
    best = results["best"]
    shown = ""
    if best is not None:
        shown = f"; best {Path(best['run']).name}: {results['metric']} {best['value']:.4f}"
    return f"sweep done in {seconds:.1f} s: {counts}{shown}; results: {results['sweep']}/results.md"


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else (many or one + 's')}"


# --- the worker: one child in its own process ----------------------------------------------


class OptunaPruning(Callback):
    """Report each epoch's ``metric`` to the Optuna ``trial`` and stop training when the
    pruner says so (``pruned_at``: that epoch). On the run's callbacks after its folder's
    record, so the epoch it stops at is already in metrics.csv."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.pruned_at: int | None = None

    def report(self, rows: Sequence[Mapping[str, float]]) -> None:
        """Report these epochs' rows (one a resumed child had committed but not reported,
        stopped between the two, is reported so; a step reported already is ignored)."""
        with warnings.catch_warnings():  # (Optuna warns of a step reported twice)
            warnings.simplefilter("ignore")
            for row in rows:
                self.trial.report(float(row[self.metric]), int(row["epoch"]))

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert logs is not None
        self.report([logs])
        if self.trial.should_prune():
            self.pruned_at = int(logs["epoch"])
            self.trainer.stop_training = True


def die_with_parent() -> None:
    """Linux: have the kernel send this worker SIGTERM when the sweep's process dies (even
    by SIGKILL), so no orphan goes on writing its run folder; the worker then stops as after
    Ctrl-C, its folder consistent for the resume."""
    parent = os.environ.get(PARENT_VAR)
    if parent is None or not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # (it died before the call)
        raise SystemExit(128 + signal.SIGTERM)


def work(sweep_dir: Path, index: int, backend: str | None) -> int:
    """Run (or resume, when its folder holds a run) child ``index`` of the sweep in
    ``sweep_dir``; the exit status: 0 done, ``EXIT_PRUNED``, 128 + the signal that stopped
    it, 1 failed (the traceback, then ``error: ...`` last, in the output)."""
    try:
        die_with_parent()
        folder = SweepFolder.open(sweep_dir)
        child = folder.children[index]
        with contextlib.ExitStack() as stack:
            pruning = None
            if folder.spec.method == "optuna":
                stack.enter_context(quiet_optuna())
                study = open_study(folder)
                pruning = OptunaPruning(_trial(study, child), folder.spec.metric)
                if folder.run_dir(child).is_dir():  # (resumed: its epochs so far)
                    pruning.report(run_folder.read_metrics(folder.run_dir(child)))
            _train_child(folder, child, backend, [] if pruning is None else [pruning])
            return 0 if pruning is None else _tell(study, folder, child, pruning)
    except RunInterrupted as e:
        print(f"interrupted ({signal.Signals(e.signum).name}) after epoch {e.epochs}", flush=True)
        return 128 + e.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as e:
        traceback.print_exc()
        print(f"error: {type(e).__name__}: {e}", flush=True)
        return 1


def _train_child(
    folder: SweepFolder, child: Child, backend: str | None, callbacks: list[Callback]
) -> None:
    """Train the child in its run folder: resumed when the folder holds its run, else new
    (``backend``: its GPU)."""
    out = folder.run_dir(child)
    deadline = time.monotonic() + FOLDER_WAIT
    while run_folder.in_use(out) and time.monotonic() < deadline:
        time.sleep(0.1)  # (a worker of a killed sweep, stopping after its commit)
    command = [sys.executable, "-m", "backprop_gpu.sweep", str(folder.path), str(child.index)]
    options: dict[str, Any] = {"report": print, "plots": folder.plots, "command": command,
                               "callbacks": callbacks}  # fmt: skip
    if (out / "config.json").is_file():
        experiment.resume(out, **options)
    else:
        experiment.run(folder.config_of(child, backend), **options)


def _trial(study: Any, child: Child) -> Any:
    optuna = _import_optuna()
    return optuna.trial.Trial(study, child.trial_id)


def _tell(study: Any, folder: SweepFolder, child: Child, pruning: OptunaPruning) -> int:
    """Tell the study how the child's trial ended (here, so that it is on record even if the
    sweep's process is gone before it hears); the worker's exit status."""
    optuna = _import_optuna()
    if pruning.pruned_at is not None:
        study.tell(child.trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        print(f"pruned after epoch {pruning.pruned_at}", flush=True)
        return EXIT_PRUNED
    study.tell(child.trial, child_value(folder, child), skip_if_finished=True)
    return 0


def worker_main(argv: Sequence[str] | None = None) -> int:
    """``python -m backprop_gpu.sweep SWEEP_DIR INDEX [--backend NAME]``: a sweep's worker."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m backprop_gpu.sweep", description="Run one child of a sweep (its worker)."
    )
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("index", type=int)
    parser.add_argument("--backend", help="the child's backend (its GPU, cupy:N)")
    args = parser.parse_args(argv)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # (as the CLI's runs)
        return work(args.sweep_dir, args.index, args.backend)


if __name__ == "__main__":
    raise SystemExit(worker_main())
