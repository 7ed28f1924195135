"""Scripted experiments: one function, ``run(config)``, trains a model on a built-in data set
or on the user's files (``Config.data``, read by :mod:`backprop_gpu.data`) and records the
run in a folder; ``sweep(config)`` runs many of them (:mod:`backprop_gpu.sweep`), and the
``backprop-gpu`` command calls both.

A run folder holds:

- ``config.json``: every resolved setting, the backend and why it was chosen, package
  versions, the command line and the start time;
- ``metrics.csv`` and ``metrics.jsonl``: one row per epoch, synced to disk as each epoch ends
  (a killed run keeps its history);
- ``checkpoint.npz``: the whole model after the last epoch (atomic; ``resume`` continues from
  it) and ``best.npz`` when the validation loss was lowest;
- ``loss.png``, ``accuracy.png`` and, for 2-D data, ``decision_boundary.png`` (``plot`` extra);
- for data from files, ``data.json``: the class names, the scaler and the files read (the
  checkpoints hold the same in their metadata, so the model file alone can predict), and in
  config.json each file's SHA-256 (``data_files``: a resume or evaluate refuses a changed one)
  and each path setting made absolute (``data_paths``: where a resume or evaluate from any
  folder reads them; a moved file is pointed at again with the same setting);
- ``summary.json``: final and best metrics, wall time and samples per second, written last,
  after the plots, when a run (or a resumed run) ends: a folder without it holds a run that
  has not finished, and ``resume`` finishes it (trains what is left, or makes the plots and
  the summary that a stop after the last epoch left unmade).

How the folder is written, repaired after a kill, locked and stopped by Ctrl-C or SIGTERM
is ``run_folder``'s (see ``run_folder.commit``): after any interruption, ``resume`` leaves
every epoch in both metrics files exactly once, as an uninterrupted run would have written
them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import inspect
import itertools
import json
import math
import os
import platform
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, data, datasets, precisions, registry, run_folder, state, writers
from .activations import Linear
from .backend import (
    BACKEND_NAMES,
    ENV_VAR,
    Backend,
    fast_ops_enabled,
    gpu_index,
    numpy_backend,
    to_numpy,
    use_backend,
)
from .callbacks import Callback, EarlyStopping, LambdaCallback, NonFiniteLossError, ProgressBar
from .distributed import Context, check_batch, on_every_rank, on_root, transport
from .distributed import info as distributed_info
from .layers import Dense, Dropout
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .metrics import Accuracy, RegressionAccuracy
from .model import Model
from .run_folder import RunError as RunError  # (re-exported: part of this API)
from .run_folder import RunInterrupted as RunInterrupted
from .run_folder import read_metrics as read_metrics

DATASETS = ("spiral", "vertical", "sine", "digits")
# The hidden activations and the optimizers a run takes, by their command-line names: the
# registered classes' names in lower case (registry.lookup finds them: "adam" is Adam).
ACTIVATIONS = ("relu", "sigmoid", "linear")
# Each optimizer's learning rate when --lr is not given: the class's own default, except
# Adam's. Adam(learning_rate=0.001) is Kingma & Ba's default (torch's and Keras's too); the
# runs here are small (the default: 300 epochs of 16 steps on 1000 spiral points), where
# 0.001 is still descending at the end (best validation loss 0.312, at epoch 300) and 0.02,
# the nnfs book's rate for its spiral models, reaches 0.222 by epoch 171.
DEFAULT_LR = {
    "sgd": 1.0,
    "adam": 0.02,
    "adamw": 0.02,  # (AdamW: Adam's reason)
    "rmsprop": 0.001,
    "adagrad": 1.0,
}
OPTIMIZERS = tuple(DEFAULT_LR)
BACKENDS = ("auto", "numpy", "cupy")  # the backends a run takes, and cupy:N (GPU N)
DEFAULT_DECAY = 1e-4  # the book's learning-rate decay, when no --schedule is given
# --schedule's names and the registered schedule classes they build (schedules.py); a run's
# schedule counts epochs, converted to optimizer steps (one a global batch: ceil(n / batch))
SCHEDULES = {
    "step": "StepDecay",
    "exponential": "ExponentialDecay",
    "cosine": "CosineDecay",
    "onecycle": "OneCycle",
}
# each schedule's settings (the others are refused with it); every one takes learning_rate
SCHEDULE_SETTINGS = {
    None: (),
    "step": ("step_size", "gamma"),
    "exponential": ("gamma",),
    "cosine": ("warmup", "min_lr"),
    "onecycle": ("warmup",),
}
WEIGHT_DECAY = ("sgd", "adamw")  # the optimizers with a weight_decay argument


class ConfigError(ValueError):
    """A setting that is unknown or of the wrong type or value (a usage error)."""


FLOAT32_MAX = float(np.finfo(np.float32).max)
# the settings of data from files (Config.data and those that go with it)
DATA_SETTINGS = ("data", "target", "labels", "val_data", "val_labels", "val_split", "scale",
                 "task")  # fmt: skip
# the settings that are paths: a resume or evaluate may point them at the same files elsewhere
DATA_PATHS = ("data", "labels", "val_data", "val_labels")


@dataclasses.dataclass
class Config:
    """Every setting of a run. ``lr=None`` takes the optimizer's default (``DEFAULT_LR``);
    ``decay=None`` the book's ``DEFAULT_DECAY`` without a schedule, none with one;
    ``weight_decay=None`` the optimizer's own default (AdamW's 0.01, SGD's 0).

    The training controls: ``schedule`` (``SCHEDULES``; None: the book's decay) with, in
    epochs, ``warmup`` (cosine: a linear warmup from 0; onecycle: the rise to the peak,
    default 30 % of the epochs), ``step_size`` and ``gamma`` (step: the rate times gamma,
    default 0.1, every step_size epochs; exponential: times gamma each epoch) and ``min_lr``
    (cosine's floor, default 0); ``early_stopping`` (patience in epochs: stop when val_loss
    has not improved for that many, and end with the best epoch's weights); ``clip_norm`` /
    ``clip_value`` (gradient clipping); ``weight_decay`` (sgd and adamw).

    The user's own data, instead of a built-in ``dataset``: ``data`` (a file or image folder,
    see :mod:`backprop_gpu.data`) with ``target`` (a table's label column) or ``labels`` (the
    targets' file of an .npy or IDX file), ``val_data`` (and ``val_labels``) or ``val_split``
    (the fraction held out, default 0.2), ``scale`` (``SCALES``, fitted on the training rows)
    and ``task`` (``TASKS``; None: inferred, and recorded once known).

    ``log``: metric writers beside metrics.csv (``writers.WRITERS``: "tensorboard", "mlflow";
    a comma-separated string or a list), each an optional extra (:mod:`backprop_gpu.writers`)."""

    dataset: str | None = None  # None: "spiral", unless data names files
    hidden: tuple[int, ...] = (64, 64)
    activation: str = "relu"
    optimizer: str = "adam"
    lr: float | None = None
    decay: float | None = None
    momentum: float = 0.0
    l2: float = 0.0
    dropout: float = 0.0
    epochs: int = 300
    batch_size: int = 64
    samples: int = 1000
    seed: int = 0
    schedule: str | None = None
    warmup: int | None = None
    step_size: int | None = None
    gamma: float | None = None
    min_lr: float | None = None
    early_stopping: int | None = None
    clip_norm: float | None = None
    clip_value: float | None = None
    weight_decay: float | None = None
    precision: str = "float32"  # the model's precision policy (precisions.POLICIES)
    data: str | None = None
    target: str | None = None
    labels: str | None = None
    val_data: str | None = None
    val_labels: str | None = None
    val_split: float | None = None
    scale: str = "none"
    task: str | None = None
    log: tuple[str, ...] = ()  # metric writers (writers.WRITERS), beside metrics.csv
    # the environment variable, as everywhere in backprop_gpu; --backend / the file override it
    backend: str = dataclasses.field(
        default_factory=lambda: os.environ.get("BACKPROP_GPU_BACKEND", "").strip().lower() or "auto"
    )
    out: str | None = None

    def __post_init__(self) -> None:
        if self.dataset is None and self.data is None:
            self.dataset = "spiral"
        self.log = parse_log(self.log)
        self.validate()

    def validate(self) -> None:
        self._validate_data()
        choices = {
            "dataset": DATASETS if self.data is None else (None,),
            "activation": tuple(ACTIVATIONS),
            "optimizer": tuple(OPTIMIZERS),
            "backend": BACKENDS,
            "precision": precisions.POLICIES,
        }
        for key, valid in choices.items():
            value = getattr(self, key)
            if key == "backend" and isinstance(value, str) and gpu_index(value) is not None:
                continue  # "cupy:N"
            if value not in valid:
                source = " (from BACKPROP_GPU_BACKEND?)" if key == "backend" else ""
                names = (*valid, "cupy:N") if key == "backend" else [v for v in valid if v]
                raise ConfigError(
                    f"{key}: unknown {key} {value!r}{source}; valid: {', '.join(names)}"
                )
        if not self.hidden or any(not isinstance(h, int) or h < 1 for h in self.hidden):
            raise ConfigError(f"hidden: expected positive layer sizes, got {self.hidden!r}")
        for key in ("epochs", "batch_size", "samples"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key}: must be >= 1, got {getattr(self, key)}")
        for key in ("decay", "momentum", "l2", "dropout", "min_lr", "weight_decay"):
            value = getattr(self, key)
            if value is not None and (not math.isfinite(value) or value < 0):
                raise ConfigError(f"{key}: must be a finite number >= 0, got {value}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"lr: must be a positive finite number, got {self.lr}")
        if self.lr is not None and self.lr > FLOAT32_MAX:  # (the models are float32)
            raise ConfigError(
                f"lr: {self.lr:g} overflows float32, the models' dtype (largest "
                f"{FLOAT32_MAX:.4g}); every update would be infinite"
            )
        for key in ("dropout", "momentum"):
            if getattr(self, key) >= 1:
                raise ConfigError(f"{key}: must be < 1, got {getattr(self, key)}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be an integer >= 0, got {self.seed}")
        for name in self.log:
            if name not in writers.WRITERS:
                raise ConfigError(
                    f"log: unknown writer {name!r}; valid: {', '.join(writers.WRITERS)}"
                )
        if self.momentum and self.optimizer != "sgd":
            raise ConfigError(
                f"momentum: only the sgd optimizer has momentum, not {self.optimizer}"
            )
        self._validate_controls()

    def _validate_data(self) -> None:
        """The user's data: ``data`` or a built-in ``dataset``, and the settings of files."""
        if self.data is not None and self.dataset is not None:
            raise ConfigError(
                f"dataset and data: {self.dataset!r} is a built-in data set, {self.data!r} "
                "your files; pass one of them"
            )
        if self.data is None:
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for key in DATA_SETTINGS:
                if getattr(self, key) != defaults[key]:
                    raise ConfigError(
                        f"{key}: a setting of data from files, which needs data (--data PATH); "
                        f"this run uses the built-in {self.dataset}"
                    )
        try:  # (the checks data.load makes of its arguments: one place)
            data.check_settings(
                val_data=self.val_data, val_labels=self.val_labels, val_split=self.val_split,
                scale=self.scale, task=self.task, target=self.target, labels=self.labels,
            )  # fmt: skip
        except data.DataUsageError as e:
            raise ConfigError(str(e)) from None

    def _validate_controls(self) -> None:
        """The training controls: schedule, early stopping, clipping, weight decay."""
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise ConfigError(
                f"schedule: unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)} "
                "(none: the book's decay, 1 / (1 + decay * step))"
            )
        if self.schedule is not None and self.decay:
            raise ConfigError(
                f"decay: {self.decay:g} and schedule {self.schedule!r} are two learning-rate "
                "schedules; pass one (decay is the default schedule, lr / (1 + decay * step); "
                "drop decay from the config file or pass --decay 0)"
            )
        used = SCHEDULE_SETTINGS[self.schedule]
        for key in ("warmup", "step_size", "gamma", "min_lr"):
            if getattr(self, key) is not None and key not in used:
                takers = [n for n, keys in SCHEDULE_SETTINGS.items() if key in keys]
                which = " and ".join(f"--schedule {n}" for n in takers)
                now = f"--schedule {self.schedule}" if self.schedule else "no --schedule"
                verb = "takes" if len(takers) == 1 else "take"
                raise ConfigError(f"{key}: only {which} {verb} it, not {now}")
        for key, least in (("warmup", 0), ("step_size", 1), ("early_stopping", 1)):
            value = getattr(self, key)
            if value is not None and value < least:
                raise ConfigError(f"{key}: must be an integer >= {least}, got {value}")
        if self.warmup is not None and self.warmup >= self.epochs:
            raise ConfigError(
                f"warmup: {self.warmup} epochs, but the run has {self.epochs}; the warmup is "
                "part of the schedule's epochs, so it must be fewer"
            )
        if self.schedule == "onecycle" and self.warmup == 0:
            raise ConfigError("warmup: onecycle rises to its peak for >= 1 epoch, got 0")
        if self.schedule == "step" and self.step_size is None:
            raise ConfigError("step_size: --schedule step needs --step-size E, the epochs "
                              "between the rate's drops")  # fmt: skip
        if self.schedule == "exponential" and self.gamma is None:
            raise ConfigError("gamma: --schedule exponential needs --gamma, the rate's factor "
                              "each epoch, in (0, 1]")  # fmt: skip
        if self.gamma is not None and not (math.isfinite(self.gamma) and 0 < self.gamma <= 1):
            raise ConfigError(f"gamma: must be a number in (0, 1], got {self.gamma}")
        for key in ("clip_norm", "clip_value"):
            value = getattr(self, key)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{key}: must be a positive finite number, got {value}")
        if self.clip_norm is not None and self.clip_value is not None:
            raise ConfigError(
                "clip_norm and clip_value: pass one of them (the result would depend on the "
                "order they are applied in)"
            )
        if self.weight_decay is not None and self.optimizer not in WEIGHT_DECAY:
            raise ConfigError(
                f"weight_decay: only the {' and '.join(WEIGHT_DECAY)} optimizers take weight "
                f"decay, not {self.optimizer} (L2 regularisation for any optimizer: l2)"
            )

    def resolved(self) -> Config:
        """This config with the defaults that depend on other settings filled in (what a
        run records in config.json): ``lr``, ``decay`` and ``weight_decay``."""
        lr = self.lr if self.lr is not None else DEFAULT_LR[self.optimizer]
        decay = self.decay
        if decay is None:
            decay = DEFAULT_DECAY if self.schedule is None else 0.0
        weight_decay = self.weight_decay
        if weight_decay is None and self.optimizer in WEIGHT_DECAY:
            cls = registry.lookup(self.optimizer, "optimizer")
            weight_decay = inspect.signature(cls).parameters["weight_decay"].default
        return dataclasses.replace(self, lr=lr, decay=decay, weight_decay=weight_decay)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], where: str = "config") -> Config:
        """Build from a dict (a TOML file, JSON, flags), checking every key and type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values = {key.replace("-", "_"): value for key, value in values.items()}  # batch-size
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(fields)}"
            )
        kwargs = {key: _coerce(key, value, where) for key, value in values.items()}
        return cls(**kwargs)

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "hidden": list(self.hidden), "log": list(self.log)}


_TYPES: dict[str, tuple[type, ...]] = {
    "data": (str,), "target": (str,), "labels": (str,), "val_data": (str,),
    "val_labels": (str,), "val_split": (int, float), "scale": (str,), "task": (str,),
    "dataset": (str,), "activation": (str,), "optimizer": (str,), "backend": (str,),
    "precision": (str,),
    "out": (str,), "lr": (int, float), "decay": (int, float), "momentum": (int, float),
    "l2": (int, float), "dropout": (int, float), "epochs": (int,), "batch_size": (int,),
    "samples": (int,), "seed": (int,), "schedule": (str,), "warmup": (int,),
    "step_size": (int,), "gamma": (int, float), "min_lr": (int, float),
    "early_stopping": (int,), "clip_norm": (int, float), "clip_value": (int, float),
    "weight_decay": (int, float),
}  # fmt: skip
# the settings whose None means a default (config.json holds null for them)
_OPTIONAL = frozenset(f.name for f in dataclasses.fields(Config) if f.default is None)


def parse_hidden(value: Any) -> tuple[int, ...]:
    """``"64,64"``, ``[64, 64]`` or ``64`` -> ``(64, 64)``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, str):
        try:  # (every part a size: "128,,64" is a typo, not two layers)
            return tuple(int(part) for part in value.split(","))
        except ValueError:
            raise ConfigError(
                f"hidden: expected comma-separated layer sizes such as 64,64; got {value!r}"
            ) from None
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return tuple(value)
    raise ConfigError(f"hidden: expected layer sizes such as [64, 64] or '64,64'; got {value!r}")


def parse_log(value: Any) -> tuple[str, ...]:
    """``"tensorboard,mlflow"`` or ``["tensorboard", "mlflow"]`` -> ``("tensorboard",
    "mlflow")`` (names lower-cased, each once; ``""`` or ``[]``: none). The names are checked
    by ``Config.validate``."""
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            f"log: expected writer names such as 'tensorboard,mlflow' or ['tensorboard'], got "
            f"{value!r}"
        )
    names = [v.strip().lower() for v in value]
    return tuple(dict.fromkeys(name for name in names if name))


def _coerce(key: str, value: Any, where: str) -> Any:
    if key == "hidden":
        return parse_hidden(value)
    if key == "log":
        return parse_log(value)
    if value is None and key in _OPTIONAL:
        return None
    types = _TYPES[key]
    if isinstance(value, bool) or not isinstance(value, types):
        expected = " or ".join(t.__name__ for t in types)
        raise ConfigError(
            f"{where}: {key} must be {expected}, got {type(value).__name__} {value!r}"
        )
    return float(value) if float in types else value  # type: ignore[arg-type]


# --- data and model ------------------------------------------------------------------------


# bytes a generated sample takes while its data set is made: float64 X, int64 or float32 y,
# the float32 copy of X (a lower bound: training needs more)
_BYTES_PER_SAMPLE = {"spiral": 32, "vertical": 32, "sine": 16}


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # (not on Windows)
        return None


def _check_fits(config: Config) -> None:
    """Refuse, before allocating anything, a generated data set larger than this machine's
    memory (say ``--samples 1000000000000``), naming the setting."""
    if config.dataset is None or config.dataset not in _BYTES_PER_SAMPLE:
        return
    need = config.samples * 6 // 5 * _BYTES_PER_SAMPLE[config.dataset]  # (+ a fifth: validation)
    memory = _physical_memory()
    if memory is not None and need > memory:
        raise RunError(
            f"samples: {config.samples} {config.dataset} samples need at least "
            f"{need / 2**30:,.1f} GiB of memory for the data alone, and this machine has "
            f"{memory / 2**30:,.1f} GiB; choose fewer samples"
        )


def load_data(config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``X_train, y_train, X_val, y_val`` for the configured data set (host arrays)."""
    return load_dataset(config)[:4]  # type: ignore[return-value]


def load_dataset(
    config: Config, paths: Mapping[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, data.Description | None]:
    """``X_train, y_train, X_val, y_val`` and, for data from files, its description (None
    for a built-in data set), read from ``paths`` (``DATA_PATHS`` keys: where a resumed run
    finds its files) or else the config's paths. A combination of file settings that cannot
    work is a ``ConfigError``; bad data a ``data.DataError``."""
    if config.data is not None:
        where = {key: getattr(config, key) for key in DATA_PATHS} | dict(paths or {})
        try:
            loaded = data.load(
                where["data"], target=config.target, labels=where["labels"],
                val_data=where["val_data"], val_labels=where["val_labels"],
                val_split=config.val_split, scale=config.scale, task=config.task,
                seed=config.seed,
            )  # fmt: skip
        except data.DataUsageError as e:
            raise ConfigError(str(e)) from None
        return loaded.X, loaded.y, loaded.X_val, loaded.y_val, loaded.description
    return (*_builtin_data(config), None)


def task_of(config: Config, described: data.Description | None) -> str:
    """ "classification" or "regression" (the built-in sine, float targets from files)."""
    if described is not None:
        return described.task
    return "regression" if config.dataset == "sine" else "classification"


def _builtin_data(config: Config) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    _check_fits(config)
    n, seed = config.samples, config.seed
    if config.dataset == "digits":
        return datasets.load_digits()
    if config.dataset == "sine":
        X, y = datasets.sine_data(n)
        X_val = np.random.default_rng(seed + 1).random((max(n // 5, 1), 1)).astype(np.float32)
        return X, y, X_val, np.sin(2 * np.pi * X_val).astype(np.float32)
    make = datasets.spiral_data if config.dataset == "spiral" else datasets.vertical_data
    per_class = max(n // 3, 1)
    X, y = make(per_class, 3, seed=seed)
    X_val, y_val = make(max(per_class // 5, 1), 3, seed=seed + 1)
    return X, y, X_val, y_val


def build_model(
    config: Config,
    n_inputs: int,
    n_outputs: int,
    n_train: int | None = None,
    task: str | None = None,
) -> Model:
    """Dense layers of ``hidden`` sizes with the activation (and dropout) after each, then a
    Dense output: logits with softmax cross-entropy, or, for ``task`` "regression" (default:
    sine's), a Linear output with MSE and the regression accuracy.
    The optimizer has the config's schedule (its epochs in steps of ``n_train`` samples,
    which a schedule needs), clipping and weight decay."""
    config = config.resolved()
    layers: list[Any] = []
    sizes = [n_inputs, *config.hidden]
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        init = "he" if config.activation == "relu" else "glorot"
        layers.append(Dense(a, b, init=init, seed=config.seed + i, weight_regularizer_l2=config.l2))
        layers.append(registry.lookup(config.activation, "layer")())
        if config.dropout:
            layers.append(Dropout(config.dropout, seed=config.seed + i))
    layers.append(Dense(sizes[-1], n_outputs, init="glorot", seed=config.seed + len(sizes)))
    kwargs: dict[str, Any] = {
        "learning_rate": config.lr,
        "decay": config.decay,
        "clip_norm": config.clip_norm,
        "clip_value": config.clip_value,
    }
    if config.optimizer == "sgd":
        kwargs["momentum"] = config.momentum
    if config.optimizer in WEIGHT_DECAY:
        kwargs["weight_decay"] = config.weight_decay
    if config.schedule is not None:
        if n_train is None:
            raise ValueError(f"build_model: schedule {config.schedule!r} needs n_train")
        kwargs["schedule"] = build_schedule(config, steps_per_epoch(n_train, config.batch_size))
    model = Model(layers, precision=config.precision)
    if (task or task_of(config, None)) == "regression":
        model.add(Linear())
        model.set(loss=MeanSquaredError(), accuracy=RegressionAccuracy())
    else:
        model.set(loss=SoftmaxCrossEntropy(), accuracy=Accuracy())
    model.set(optimizer=registry.lookup(config.optimizer, "optimizer")(**kwargs))
    return model.finalize()


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimizer steps an epoch: one a (global) batch, the last one partial. Distributed
    training splits each batch across the ranks and steps once for all of them."""
    return -(-n_train // batch_size)


def build_schedule(config: Config, steps: int) -> Any:
    """The ``Schedule`` of ``config.schedule``, its epochs converted to optimizer steps
    (``steps`` an epoch); a ``ConfigError`` naming the setting that it refuses."""
    assert config.schedule is not None
    cls = registry.lookup(SCHEDULES[config.schedule], "schedule")
    total = config.epochs * steps
    kwargs: dict[str, Any]
    if config.schedule == "step":
        assert config.step_size is not None
        gamma = 0.1 if config.gamma is None else config.gamma
        kwargs = {"step_size": config.step_size * steps, "gamma": gamma}
    elif config.schedule == "exponential":
        assert config.gamma is not None
        kwargs = {"gamma": config.gamma ** (1 / steps)}  # (gamma an epoch)
    elif config.schedule == "cosine":
        kwargs = {"total_steps": total, "warmup_steps": (config.warmup or 0) * steps,
                  "min_learning_rate": config.min_lr or 0.0}  # fmt: skip
    else:  # onecycle: max rate = lr
        pct = 0.3 if config.warmup is None else config.warmup / config.epochs
        kwargs = {"total_steps": total, "pct_start": pct}
    try:
        return cls(**kwargs)
    except ValueError as e:  # (a cycle too short for its steps, say)
        key = "warmup" if "pct_start" in str(e) else "schedule"  # (onecycle's peak: its warmup)
        raise ConfigError(
            f"{key}: --schedule {config.schedule} over {config.epochs} epochs of {steps} steps: {e}"
        ) from None


# --- the run's folder name and record (the folder itself: run_folder.py) ---------------------


def default_out(config: Config) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    name = config.dataset or Path(str(config.data)).name.split(".")[0] or "data"
    path = Path("runs") / f"{name}-{stamp}"
    suffix = 1
    while path.exists():
        suffix += 1
        path = Path("runs") / f"{name}-{stamp}-{suffix}"
    return path


def versions() -> dict[str, str]:
    found = {
        "backprop_gpu": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for name in ("cupy", "matplotlib", "tqdm", "sklearn"):
        module = sys.modules.get(name)
        if module is not None:
            found[name] = getattr(module, "__version__", "?")
    return found


# --- running -------------------------------------------------------------------------------


def run(
    config: Config | Mapping[str, Any],
    *,
    report: Callable[[str], None] | None = print,
    progress: bool = False,
    plots: bool = True,
    command: list[str] | None = None,
    distributed: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Train as ``config`` says (a ``Config`` or a dict of its keys), record the run in its
    folder (``config.out``, else a new ``runs/<dataset>-<time>``) and return the summary.

    An existing, non-empty folder is refused (``RunError``); use ``resume`` to continue it.
    ``report`` gets one line per epoch (None: silent); ``progress=True`` shows a tqdm bar
    instead when tqdm is installed; ``plots=False`` skips the PNG files.

    ``distributed=True``: data-parallel over MPI (started under ``mpiexec``); every rank
    trains, rank 0 alone names, writes and reports the run folder.

    ``callbacks``: more callbacks for the fit loop, called after the run folder's record of
    each epoch (so an epoch they see is already in metrics.csv and the checkpoint); one may
    end the run early by setting ``self.trainer.stop_training = True`` (the run then ends as
    a finished one, with its plots and summary.json). Their state is not in the checkpoint.

    Ctrl-C and SIGTERM stop the run cleanly, alike: an epoch's commit is finished first, then
    ``RunInterrupted`` (a ``KeyboardInterrupt``, with ``run_dir``, ``epochs`` and ``signum``)
    is raised; ``resume`` continues the run. For the call's duration the process's SIGINT and
    SIGTERM handlers are replaced, then put back: a signal set to be ignored stays ignored,
    and a Python handler of the caller's is called instead (after a commit). From a thread
    other than the main one no handler is set (Python allows it in the main thread only):
    the signals go to the main thread as usual, and the run's folder stays consistent
    whenever the process ends, as after a SIGKILL.
    """
    if not isinstance(config, Config):
        config = Config.from_mapping(config)
    settings = config
    dist = Context() if distributed else None
    root = dist is None or dist.is_root

    def prepare() -> Path:
        out = Path(settings.out) if settings.out else default_out(settings)
        run_folder.prepare_folder(out)
        return out

    if dist is not None:  # before any folder is made: a misuse leaves nothing behind
        check_batch(config.batch_size, dist.size, "--distributed")
    out = on_root(dist, prepare)
    config = dataclasses.replace(config.resolved(), out=str(out))  # config.json: values used
    try:
        return _execute(config, False, report, progress, plots, command, dist,
                        callbacks=callbacks)  # fmt: skip
    except BaseException:
        if root:  # failed before recording anything: leave no empty folder
            run_folder.discard_if_unused(out)
        raise


def resume(
    run_dir: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
    *,
    report: Callable[[str], None] | None = print,
    progress: bool = False,
    plots: bool = True,
    command: list[str] | None = None,
    distributed: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Continue the run in ``run_dir`` from its checkpoint, with its saved settings, up to
    ``epochs`` epochs in all (``overrides={"epochs": N}`` raises the target; any other setting
    that differs from the saved one is refused). The continued metrics equal those of an
    uninterrupted run: optimizer state, epoch count, shuffling and dropout all carry on.

    Whenever the run was killed, the metrics files are first brought back to the epochs of
    its checkpoint (a run killed in its first epoch, before any checkpoint, starts again
    from its seeded initial model). A run that already has ``epochs`` epochs trains no more
    (the summary has ``epochs_run`` 0); if it was stopped after its last epoch, before its
    end was recorded (no summary.json), its plots and summary.json are made now, else the
    folder is left as it is. ``distributed=True`` as in ``run`` (only rank 0 reads the
    folder); ``callbacks`` as in ``run``."""
    run_dir = Path(run_dir)
    dist = Context() if distributed else None
    config, paths = on_root(dist, lambda: _resumed_config(run_dir, overrides))
    return _execute(config, True, report, progress, plots, command, dist, paths, callbacks)


def sweep(
    config: Mapping[str, Any] | None = None,
    *,
    out: str | os.PathLike[str] | None = None,
    parallel: int | None = None,
    resume: bool = False,
    max_runs: int = 1000,
    plots: bool = True,
    report: Callable[[str], None] | None = print,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """A sweep, as ``backprop-gpu sweep`` runs it: ``config`` holds the run settings and a
    ``"sweep"`` table (``grid``, ``random``, ``repeats``, ``method``, ``metric``, ``goal``,
    ...: the TOML file's contents, ``tomllib.load`` of it), each child a run folder in
    ``out``, ``parallel`` worker processes at a time; ``resume=True`` continues the sweep in
    ``out``. Returns the results: ``children`` (each child's settings, status and best
    epoch's metrics, best first), ``groups`` (repeats: mean and std over the seeds),
    ``best``, ``counts``. See :mod:`backprop_gpu.sweep`."""
    from . import sweep as sweeps  # (not at import: the workers run that module as __main__)

    return sweeps.sweep(config, out=out, parallel=parallel, resume=resume, max_runs=max_runs,
                        plots=plots, report=report, command=command)  # fmt: skip


def _resumed_config(
    run_dir: Path, overrides: Mapping[str, Any] | None
) -> tuple[Config, dict[str, str]]:
    """The saved settings of the run in ``run_dir`` with ``overrides`` (only epochs may
    change, and the paths of its data files: see ``run_data_paths``), and where its data
    files are."""
    saved = saved_config(run_dir, resuming=True)
    overrides = dict(overrides or {})
    moved = {key: overrides.pop(key) for key in DATA_PATHS
             if getattr(saved, key) is not None and overrides.get(key) is not None}  # fmt: skip
    paths = run_data_paths(run_dir, saved, moved, "train --resume")
    for key, value in overrides.items():
        value = Config.from_mapping({**saved.as_dict(), key: value}).as_dict()[key]
        if key == "epochs" and value != saved.epochs and saved.schedule in SPANS_THE_RUN:
            raise RunError(
                f"{run_dir}: epochs={value!r} differs from the run's {saved.epochs}, which its "
                f"{saved.schedule} schedule spans (its rate ends at epoch {saved.epochs}), so "
                f"no uninterrupted run of {value} epochs would have trained as this one did; "
                "start a new run for that many"
            )
        if key == "epochs":
            saved = dataclasses.replace(saved, epochs=value)
        elif key != "out" and value != saved.as_dict()[key]:
            what = "a different setting"
            if key in ARCHITECTURE and key not in DATA_SETTINGS:
                what = "a different architecture"
            raise RunError(
                f"{run_dir}: {key}={value!r} is {what} from the run's {key}="
                f"{saved.as_dict()[key]!r}; a resumed run keeps its settings (only epochs may "
                "change)"
            )
    return dataclasses.replace(saved, out=str(run_dir)), paths


def absolute_data_paths(config: Config) -> dict[str, str]:
    """Each data path setting (``DATA_PATHS``) made absolute, against the working folder."""
    return {key: os.path.abspath(getattr(config, key)) for key in DATA_PATHS
            if getattr(config, key) is not None}  # fmt: skip


def run_data_paths(
    run_dir: Path, config: Config, moved: Mapping[str, Any], command: str
) -> dict[str, str]:
    """Where the data files of the run in ``run_dir`` are: each path setting as ``moved``
    says (a new place, given by the user: its contents are checked against the recorded
    SHA-256 once read), else where it resolved to when the run started (config.json's
    ``data_paths``; a run recorded without them: the path as given). A ``data.DataError``
    for one that is not there, saying where the path came from."""
    recorded = json.loads((run_dir / "config.json").read_text()).get("data_paths") or {}
    paths = {}
    for key in DATA_PATHS:
        given = getattr(config, key)
        if given is None:
            continue
        flag = f"--{key.replace('_', '-')}"
        if key in moved:
            path, origin = os.path.abspath(moved[key]), flag
        else:
            path, origin = os.path.abspath(recorded.get(key, given)), f"config.json of {run_dir}"
            if path != given:
                origin += f", given as {given!r}"
        if not Path(path).exists():
            hint = "" if key in moved else (
                f"; moved? pass {flag} NEWPATH to {command} (the same contents: its SHA-256 "
                "is checked)"
            )  # fmt: skip
            raise data.DataError(f"{key} {path}: no such file or folder (from {origin}){hint}")
        paths[key] = path
    return paths


ARCHITECTURE = ("dataset", "hidden", "activation", "dropout", "samples", *DATA_SETTINGS)
SPANS_THE_RUN = ("cosine", "onecycle")  # the schedules whose length is the run's epochs


def _execute(
    config: Config,
    resuming: bool,
    report: Callable[[str], None] | None,
    progress: bool,
    plots: bool,
    command: list[str] | None,
    dist: Context | None = None,
    paths: Mapping[str, str] | None = None,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    called = time.perf_counter()
    out = Path(str(config.out))
    root = dist is None or dist.is_root  # only rank 0 reads and writes the run folder
    # the epochs whose rows and checkpoint are on disk (resuming: unknown until loaded)
    committed: int | None = None if resuming else 0
    # distributed, each rank of a machine with several GPUs takes its own (and a rank that
    # cannot run the backend stops them all)
    name = dist.local_backend(config.backend) if dist is not None else config.backend
    interrupts = run_folder.Interrupts()
    try:
        on_root(dist, lambda: _require_writers(config.log))  # (before anything is written)
        with interrupts.installed(), use_backend(name) as backend, contextlib.ExitStack() as held:

            def load() -> tuple[Any, ...]:
                X, y, X_val, y_val, described = load_dataset(config, paths)
                task = task_of(config, described)
                if task == "regression":
                    n_outputs = y.shape[1]
                elif described is not None and described.class_names is not None:
                    n_outputs = len(described.class_names)
                else:
                    n_outputs = int(y.max()) + 1
                model = build_model(config, X.shape[1], n_outputs, len(X), task)
                return X, y, X_val, y_val, described, model

            # each rank loads; if one fails, all stop (none waits for it in a collective)
            X, y, X_val, y_val, described, model = on_every_rank(dist, load)
            task = task_of(config, described)
            inferred = config.task is None  # (the task was not given: say what was inferred)
            if described is not None:  # (recorded: a resume loads the data as this run did)
                config = dataclasses.replace(config, task=task, val_split=described.val_split)
            history: list[dict[str, float]] = []
            # the callbacks that decide (every rank), before the run folder's, whose checkpoint
            # then holds their state after the epoch it saves
            stopping = None
            if config.early_stopping is not None:
                stopping = EarlyStopping("val_loss", patience=config.early_stopping,
                                         restore_best_weights=True)  # fmt: skip
            deciding: list[Callback] = [] if stopping is None else [stopping]

            def open_run() -> tuple[int, dict[str, Any]]:
                """Take the run folder, load the checkpoint when resuming (and bring the
                metrics and best.npz back to it), record the run; the epochs done and the
                callbacks' states the checkpoint holds."""
                nonlocal model, history, committed
                held.enter_context(run_folder.run_lock(out))  # to the end: one writer per folder
                run_folder.remove_temporaries(out)
                if not resuming:  # (another run may have taken it since prepare_folder)
                    run_folder.refuse_a_used_folder(out)
                states: dict[str, Any] = {}
                if resuming:
                    if described is not None:
                        _check_same_files(out, described, config, paths or {})
                    if (out / "checkpoint.npz").is_file():
                        loaded = Model.load(out / "checkpoint.npz")
                        _check_same_architecture(loaded, model, out)
                        model = loaded
                        states = dict(loaded.saved_extra.get("callbacks") or {})
                    # (else killed in its first epoch: it starts again from the built model)
                    done = committed = int(model.epochs_trained)
                    history = run_folder.committed_history(out, done)
                    run_folder.restore_best(out, history, done)
                    set_states(deciding, states)
                    if stopping is not None:
                        _best_weights_back(stopping, out, history, model)
                    if done >= config.epochs or _stopped(stopping):
                        return done, states  # nothing to do: the folder stays as it is
                    recorded = json.loads((out / "config.json").read_text())
                    recorded["config"] = config.as_dict()  # the raised epoch target, if any
                    if paths:  # (where its files are now: a later resume finds them there)
                        recorded["data_paths"] = dict(paths)
                    recorded.setdefault("resumed", []).append({
                        "command": command if command is not None else sys.argv,
                        "at": dt.datetime.now().isoformat(timespec="seconds"),
                        "from_epoch": done,
                    })  # fmt: skip
                    run_folder.write_json(out / "config.json", recorded)
                    # it described the end of an earlier call; this one writes its own
                    (out / "summary.json").unlink(missing_ok=True)
                else:
                    run_folder.write_json(out / "config.json", {
                        "config": config.as_dict(),
                        "backend": {"name": backend.name, "device": str(backend.device),
                                    "reason": backend.reason},
                        "distributed": None if dist is None else {
                            "ranks": dist.size, "transport": transport(backend.name),
                            "processes": dist.processes},
                        "versions": versions(),
                        "command": command if command is not None else sys.argv,
                        "started": dt.datetime.now().isoformat(timespec="seconds"),
                        **({} if described is None else {
                            "data_files": described.files,
                            "data_paths": absolute_data_paths(config)}),
                    })  # fmt: skip
                    if described is not None:  # the classes' names and the scaler, for people
                        run_folder.write_json(out / "data.json", described.as_dict())
                return int(model.epochs_trained), states

            # rank 0's epoch count and callback states (the others get its parameters and
            # optimizer state in Model.train)
            done, states = on_root(dist, open_run)
            set_states(deciding, states)  # (again on rank 0: the same)
            remaining = 0 if _stopped(stopping) else max(config.epochs - done, 0)
            if root and report is not None and described is not None and remaining:
                # what it inferred (after the resume's checks: a refused run says only why)
                report(data.summary(described, y, len(X_val), inferred=inferred))
            best_row = run_folder.best_row(history)
            timing = _EpochTimes(history)  # every rank: the rows with their seconds
            loop: list[Any] = [timing, *deciding]
            folder = None
            logs: list[writers.MetricWriter] = []  # (rank 0's: --log's writers)
            if root:
                best = math.inf if best_row is None else best_row["val_loss"]
                extra = None if described is None else {"data": described.as_dict()}
                folder = run_folder.RunFolderLog(out, interrupts, best, extra)
                loop.append(folder)
                # after the folder's record: a writer logs only epochs already committed
                logs = writers.for_run(config.log, out, config.as_dict())
                loop.extend(logs)
                if logs and remaining and report is not None:
                    report(f"logging metrics to {', '.join(w.where() for w in logs)}")
                if progress and _tqdm_available():
                    loop.append(ProgressBar())
                elif report is not None:
                    say, total = report, config.epochs
                    show = LambdaCallback(on_epoch_end=lambda epoch, row: say(_line(row, total)))
                    loop.append(show)
            loop += callbacks  # the caller's, after the folder's: they see a committed epoch

            def catch_up() -> None:
                """Epochs committed but not logged (a stop between the two): logged now."""
                for writer in logs:
                    writer.catch_up(history)

            started = time.perf_counter()
            try:
                on_root(dist, catch_up)
                if remaining:
                    model.train(
                        X, y, epochs=remaining, batch_size=config.batch_size,
                        validation_data=(X_val, y_val), print_every=0, seed=config.seed,
                        callbacks=loop, distributed=dist or False,
                    )  # fmt: skip
            finally:
                for writer in logs:  # (closed by train too; here also when it did not train)
                    writer.close()
                if folder is not None:
                    folder.close()
                    if folder.committed is not None:
                        committed = folder.committed
            seconds = time.perf_counter() - started  # (this call's training)
            if not remaining and stopping is not None and stopping.best_weights is not None:
                # a resume with nothing to train: the model ends as training would have left it
                state.put_back(list(state.walk(model.layers)), stopping.best_weights)
            # the run's end: its plots, then summary.json, last, the mark that it finished (a
            # call stopped before it, even after the last epoch, leaves it to the next resume)
            finish = root and (remaining > 0 or not (out / "summary.json").exists())
            made = None
            if finish and plots:
                boundary = X.shape[1] == 2 and task == "classification"
                made = _plots(out, history, model if boundary else None, X, y, report)
            trained = int(model.epochs_trained) - done  # (fewer than remaining: stopped early)
            summary = _summary(config, history, trained, len(X) * trained, seconds,
                               time.perf_counter() - called, backend.name)  # fmt: skip
            if made is not None:
                summary["plots"] = made
            if stopping is not None:
                summary["early_stopping"] = _early_stopping_summary(stopping, done, remaining)
            if finish:
                run_folder.write_json(out / "summary.json", summary)
            summary["finished"] = finish  # (this call wrote summary.json; not in the file)
            summary["rank"] = 0 if dist is None else dist.rank  # (not in summary.json)
        return summary
    except NonFiniteLossError as e:
        # Model.train went back to the last finite epoch, on every rank: the one rank 0 has
        # committed (before any rank could see the next epoch's reduction)
        raise NonFiniteLossError(f"{e}; {run_folder.kept(out, model.epochs_trained)}") from e
    except RunInterrupted:
        raise
    except KeyboardInterrupt as e:
        raise RunInterrupted(out, committed, interrupts.signum or signal.SIGINT) from e


def _require_writers(names: tuple[str, ...]) -> None:
    """The packages of the metric writers ``names`` (``Config.log``): an ``ImportError``
    naming the extra to install for one that is missing."""
    for name in names:
        writers.require(name)


def set_states(callbacks: list[Callback], saved: Mapping[str, Any]) -> None:
    """Give each callback its state from ``saved`` (``Trainer.callback_states()``, keyed
    ``"<index>:<class>"``, as a checkpoint holds it): the states of a class in the order of
    their indices, to the callbacks of that class in the list's order, so what else the list
    held when they were saved (a progress bar, the run folder's log on rank 0 only) does not
    matter."""
    by_class: dict[str, list[Any]] = {}
    for key in sorted(saved, key=_index):
        by_class.setdefault(key.partition(":")[2], []).append(saved[key])
    for callback in callbacks:
        found = by_class.get(type(callback).__name__)
        if found:
            callback.set_state(found.pop(0))


def _index(key: str) -> int:
    head = key.partition(":")[0]
    return int(head) if head.isdigit() else -1


def _stopped(stopping: EarlyStopping | None) -> bool:
    """Whether early stopping has ended the run: ``patience`` epochs without improvement
    (what its state says after the epoch it stopped at, also in a checkpoint)."""
    return stopping is not None and stopping.wait >= max(stopping.patience, 1)


def _best_weights_back(
    stopping: EarlyStopping, out: Path, history: list[dict[str, float]], model: Model
) -> None:
    """A resumed run's early stopping gets the weights of its best epoch back from best.npz
    (the uninterrupted run kept them in memory; the checkpoint keeps the count): that file
    holds the first epoch of lowest val_loss, which is early stopping's best (``val_loss``,
    ``min_delta=0``), when the epochs agree."""
    best = run_folder.best_row(history)
    path = out / "best.npz"
    if best is None or int(best["epoch"]) != stopping.best_epoch or not path.is_file():
        return
    saved = Model.load(path)
    stopping.best_weights = state.copy_of(list(state.walk(saved.layers)), model.backend.xp)


def _early_stopping_summary(stopping: EarlyStopping, done: int, remaining: int) -> dict[str, Any]:
    """What summary.json says of early stopping: the best epoch (whose weights the run ends
    with) and the epoch it stopped after (None: the epoch limit came first)."""
    stopped = stopping.stopped_epoch or None
    if stopped is None and _stopped(stopping) and not remaining:
        stopped = done  # (a resume of a stopped run: it stopped at its last epoch)
    return {"patience": stopping.patience, "best_epoch": stopping.best_epoch,
            "stopped_epoch": stopped}  # fmt: skip


def _nonfinite(model: Model) -> str | None:
    """The first parameter of ``model`` holding a NaN or infinity, named, or None. (A run
    never saves one: ``Model.train`` checks every parameter at each epoch's end, before
    ``on_epoch_end``; a run folder of an earlier version might hold one.)"""
    for i, layer in enumerate(model.layers):
        for attr in ("weights", "biases"):
            values = getattr(layer, attr, None)
            if values is not None:
                xp = model.backend.xp
                if not bool(xp.all(xp.isfinite(values))):
                    return f"{attr} of layer {i} ({type(layer).__name__})"
    return None


def saved_config(run_dir: Path, resuming: bool = False) -> Config:
    """The settings in ``run_dir/config.json``; a ``RunError`` saying what ``run_dir`` is when
    it is not a run folder (missing, a file, a parent of run folders, ...)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise RunError(_not_a_run_folder(run_dir, resuming))
    return Config.from_mapping(json.loads(path.read_text())["config"], where=str(path))


def _not_a_run_folder(run_dir: Path, resuming: bool) -> str:
    """Why ``run_dir``, which has no config.json, is not a run folder."""
    if not run_dir.exists():
        return f"{run_dir}: no such folder"
    if not run_dir.is_dir():
        if (run_dir.parent / "config.json").is_file():
            return f"{run_dir} is a file; pass its run folder {run_dir.parent}"
        return f"{run_dir} is a file, not a run folder"
    if resuming and run_folder.unused(run_dir):
        return (
            f"{run_dir}: holds no run yet (no config.json: stopped before writing it?); "
            "train it again without --resume"
        )
    message = f"{run_dir}: not a run folder (no config.json in it)"
    runs = _runs_in(run_dir)
    if runs:
        examples = " and ".join(str(run) for run in runs[:2])
        which = {1: "the run folder", 2: "the run folders"}.get(
            len(runs), f"{len(runs)} run folders, such as"
        )
        message += f"; it holds {which} {examples}"
    return message


def _runs_in(folder: Path) -> list[Path]:
    """The run folders (holding a config.json) directly in ``folder``, newest first."""
    found = []
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            with contextlib.suppress(OSError):
                found.append(((path / "config.json").stat().st_mtime, path))
    return [path for _, path in sorted(found, key=lambda pair: (-pair[0], pair[1]))]


def _architecture(model: Model) -> list[tuple[str, Any, Any]]:
    return [
        (type(layer).__name__, getattr(layer, "n_inputs", None), getattr(layer, "n_neurons", None))
        for layer in model.layers
    ]


def _check_same_architecture(loaded: Model, expected: Model, out: Path) -> None:
    shapes, wanted = _architecture(loaded), _architecture(expected)
    if shapes != wanted:
        raise RunError(
            f"{out}: the checkpoint's architecture {shapes} differs from the config's {wanted}"
        )


def _tqdm_available() -> bool:
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class _EpochTimes(Callback):
    """Each epoch's row, with the seconds it took (every rank: the summary needs them)."""

    def __init__(self, history: list[dict[str, float]]) -> None:
        self.history = history

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        now = time.perf_counter()
        assert logs is not None
        logs["seconds"] = now - self.started  # (the row the callbacks after this one get)
        self.started = now
        self.history.append(logs)


def _line(row: dict[str, float], epochs: int) -> str:
    return (
        f"epoch {int(row['epoch'])}/{epochs}: loss {row['loss']:.4f}, acc {row['accuracy']:.4f}, "
        f"val_loss {row['val_loss']:.4f}, val_acc {row['val_accuracy']:.4f}, "
        f"lr {row['learning_rate']:.4g}"
    )


def _summary(
    config: Config,
    history: list[dict[str, float]],
    epochs_run: int,
    samples: int,
    train_seconds: float,
    wall_seconds: float,
    backend: str,
) -> dict[str, Any]:
    """summary.json: the run's epochs in all and its final and best rows (from ``history``,
    all its epochs), and this call's: ``epochs_run``, ``wall_seconds`` (the whole call) and
    ``samples_per_second`` (``samples`` trained in ``train_seconds``; None when it trained
    none)."""
    final = history[-1] if history else {}
    best = run_folder.best_row(history) or {}
    return {
        "run": config.out,
        "dataset": config.dataset,
        "data": config.data,
        "backend": backend,
        "epochs": int(final.get("epoch", 0)),  # in all, a resumed run's earlier ones too
        "epochs_run": epochs_run,  # by this call
        "final": final,
        "best": best,
        "wall_seconds": wall_seconds,
        "samples_per_second": samples / train_seconds if epochs_run else None,
    }


def _plots(
    out: Path,
    history: list[dict[str, float]],
    model: Model | None,
    X: np.ndarray,
    y: np.ndarray,
    report: Callable[[str], None] | None,
) -> list[str]:
    from . import plots

    try:
        written = plots.write_all(out, history, model, X, y)
    except ImportError:
        if report is not None:
            report(
                "note: plots skipped (matplotlib missing: the plot extra, pip install '.[plot]')"
            )
        return []
    return [p.name for p in written]


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def info() -> dict[str, Any]:
    """What ``backprop-gpu info`` prints: versions, the backend ``auto`` picks and why, whether
    the CPU's C kernels are in use, and the GPU's name and memory when
    there is one."""
    found: dict[str, Any] = {"versions": versions()}
    try:
        import cupy

        found["versions"]["cupy"] = cupy.__version__
    except Exception as e:
        found["versions"]["cupy"] = f"not importable ({type(e).__name__})"
    with use_backend("auto") as backend:
        pass
    found["backend"] = {"name": backend.name, "device": str(backend.device),
                        "reason": backend.reason}  # fmt: skip
    found["env"] = os.environ.get(ENV_VAR)
    if found["env"]:  # the backend train takes by default: is it one, and can it run here?
        found["env_backend"] = _env_backend(found["env"])
    found["cpu"] = {
        "c_kernels": ("on" if fast_ops_enabled() else "off (BACKPROP_GPU_KERNELS=0)")
        if numpy_backend.HAVE_C
        else f"not built: no _cpu module in {_PACKAGE_DIR} (no C compiler"
        " at install, or a checkout shadowing a non-editable install: use pip install -e);"
        " the plain NumPy code runs",
    }
    found["mpi"] = distributed_info()
    if backend.name == "cupy":
        found["devices"] = _gpus(backend)
    return found


def _gpus(backend: Backend) -> list[dict[str, Any]]:
    """Each GPU's id, name and memory, without a CUDA context on any GPU but the backend's:
    ``getDeviceProperties`` is a query of the driver, ``memGetInfo`` (the free memory) needs
    the GPU current, so only the backend's GPU has ``memory_free`` (None on the others)."""
    runtime = backend.xp.cuda.runtime
    with backend.on_device():
        free, _ = runtime.memGetInfo()
    gpus = []
    for i in range(runtime.getDeviceCount()):
        props = runtime.getDeviceProperties(i)
        gpus.append({"id": i, "name": props["name"].decode(), "memory_total":
                     int(props["totalGlobalMem"]), "memory_free":
                     free if i == backend.device.id else None})  # fmt: skip
    return gpus


def _env_backend(value: str) -> dict[str, Any]:
    """What ``info`` says of the backend BACKPROP_GPU_BACKEND names (``value``): ``known``,
    whether a run takes that name, ``usable``, whether it runs here, and ``why`` not."""
    name = value.strip().lower()  # (as Config reads it)
    try:
        Config(backend=name)
    except ConfigError:
        what = (
            "a test backend, not one a run takes" if name in BACKEND_NAMES else "not a backend name"
        )
        valid = f"{', '.join(BACKENDS)}, cupy:N"
        return {"name": value, "known": False, "usable": False, "why": f"{what} (valid: {valid})"}
    try:
        with use_backend(name) as chosen:
            return {"name": chosen.name, "known": True, "usable": True, "why": ""}
    except (ValueError, RuntimeError) as e:  # (no GPU, no GPU N, no CuPy)
        return {"name": value, "known": True, "usable": False, "why": str(e)}


def _check_same_files(
    run_dir: Path, described: data.Description, config: Config, paths: Mapping[str, str]
) -> None:
    """Refuse data files whose contents differ from those the run in ``run_dir`` started
    with (config.json's ``data_files``: each path as given and its SHA-256), read from
    ``paths`` (``run_data_paths``)."""
    saved = json.loads((run_dir / "config.json").read_text())
    recorded, places = saved.get("data_files") or {}, saved.get("data_paths") or {}
    for key in DATA_PATHS:
        given = getattr(config, key)
        digest = None if given is None else recorded.get(str(Path(given)))
        if digest is None:
            continue
        read = paths.get(key, given)
        if described.files.get(str(Path(read))) == digest:
            continue
        # where the run last read it (its recorded place): changed in place, not re-pointed
        if os.path.abspath(read) == os.path.abspath(places.get(key, given)):
            raise RunError(
                f"{read} has changed since the run in {run_dir} started (its SHA-256 differs "
                "from config.json's data_files); the run continues only on the data it began "
                "with: put that file back, or start a new run"
            )
        raise RunError(
            f"--{key.replace('_', '-')} {read}: not the file the run in {run_dir} began with "
            f"({given}: its SHA-256 differs from config.json's data_files); the run continues "
            "only on the data it began with"
        )


@dataclasses.dataclass
class Predictions:
    """What ``predictions`` returns: the model's ``outputs`` (probabilities, or regression
    values), the predicted class of each row by name (``classes``; None for regression and
    for the built-in data sets, whose classes have no names) and, for image files, the file
    of each row (``rows``)."""

    outputs: np.ndarray
    classes: list[str] | None = None
    rows: list[str] | None = None
    ignored: list[str] = dataclasses.field(default_factory=list)  # a table's other columns


def predictions(
    run_dir: str | os.PathLike[str],
    inputs: np.ndarray | str | os.PathLike[str],
    *,
    best: bool = True,
) -> Predictions:
    """A run's model (best.npz if present and ``best``, else checkpoint.npz) on ``inputs``:
    an array of raw inputs or a file of them (any kind ``data.read_inputs`` reads, for a run
    on data from files; an .npy for a built-in data set). A run on files scales them as its
    training data were (the scaler its checkpoint holds) and names the predicted classes."""
    model, _, _ = _load_run_model(Path(run_dir), best)
    saved = model.saved_extra.get("data")
    described = None if saved is None else data.Description.from_dict(saved)
    rows, ignored = None, list[str]()
    if isinstance(inputs, str | os.PathLike):
        if described is None:
            raise RunError(f"{run_dir}: a run on a built-in data set takes its inputs as an "
                           "array (a .npy file from the command line)")  # fmt: skip
        X, rows, ignored = data.read_inputs(inputs, described)
    elif described is not None:
        X = data.prepare_inputs(inputs, described)
    else:
        X = inputs
    outputs = to_numpy(model.predict(X))
    names = None if described is None else described.class_names
    classes = None if names is None else [names[i] for i in outputs.argmax(axis=1)]
    return Predictions(outputs, classes, rows, ignored)


def predict(
    run_dir: str | os.PathLike[str],
    inputs: np.ndarray | str | os.PathLike[str],
    *,
    best: bool = True,
) -> np.ndarray:
    """Outputs of a run's model (best.npz if present and ``best``, else checkpoint.npz) on
    raw ``inputs`` (see ``predictions``, which names the classes too)."""
    return predictions(run_dir, inputs, best=best).outputs


def evaluate(
    run_dir: str | os.PathLike[str],
    *,
    best: bool = True,
    paths: Mapping[str, str | os.PathLike[str]] | None = None,
) -> dict[str, float]:
    """The run's model on its validation data: ``{"loss": ..., "accuracy": ...}`` (data from
    files read again, and refused if changed since the run started; ``paths`` points
    ``data``, ``labels``, ``val_data`` or ``val_labels`` at the same files in another
    place). A model whose parameters or loss are not finite raises ``RunError``."""
    model, path, config = _load_run_model(Path(run_dir), best)
    moved = {key: value for key, value in (paths or {}).items() if value is not None}
    unknown = sorted(set(moved) - set(DATA_PATHS))
    if unknown or any(getattr(config, key) is None for key in moved):
        which = unknown or [k for k in moved if getattr(config, k) is None]
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in which)
        files = ", ".join(f"{key} {getattr(config, key)}" for key in DATA_PATHS
                          if getattr(config, key) is not None) or "a built-in data set"  # fmt: skip
        raise ConfigError(f"{flags}: the run in {run_dir} has no such file (its data: {files})")
    where = run_data_paths(Path(run_dir), config, moved, "evaluate") if config.data else {}
    _, _, X_val, y_val, described = load_dataset(config, where)
    if described is not None:
        _check_same_files(Path(run_dir), described, config, where)
    metrics = model.evaluate(X_val, y_val)
    for key, value in metrics.items():
        if not math.isfinite(value):
            raise RunError(f"{path}: the model's {key} on the validation data is {value}")
    return metrics


def _load_run_model(run_dir: Path, best: bool) -> tuple[Model, Path, Config]:
    """The model ``evaluate`` and ``predict`` use (best.npz if present and ``best``, else
    checkpoint.npz), its file and the run's settings; a ``RunError`` saying what ``run_dir``
    holds instead."""
    config = saved_config(run_dir)
    for name in ("best.npz", "checkpoint.npz") if best else ("checkpoint.npz",):
        path = run_dir / name
        if path.is_file():
            model = Model.load(path)
            bad = _nonfinite(model)
            if bad is not None:
                raise RunError(f"{path}: the {bad} hold NaN or infinite values; not usable")
            return model, path, config
    if run_folder.in_use(run_dir):
        raise RunError(
            f"{run_dir}: no finished epoch yet (another process is training in it now: wait "
            "for its first epoch to end)"
        )
    rows = run_folder.jsonl_rows(run_dir / "metrics.jsonl")
    if len(rows) > 1:  # (one: a run killed between its first row and checkpoint)
        raise RunError(
            f"{run_dir}: no checkpoint.npz, but metrics.jsonl holds {len(rows)} epochs; the "
            "run folder is damaged (a file removed?)"
        )
    raise RunError(
        f"{run_dir}: no finished epoch yet; continue with backprop-gpu train --resume --out "
        f"{run_dir}"
    )
