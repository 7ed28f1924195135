"""The ``backprop-gpu`` command: ``info``, ``train``, ``evaluate``, ``predict``, ``compare``,
``sweep``.

Exit codes: 0 ok, 2 usage errors (unknown flags, shown with their command's usage and the
closest real flag; unknown names, malformed values, bad config files), 1 failures (a run
folder that exists or is training, a path that is no run folder, an unwritable folder, no GPU
for ``--backend cupy``, a damaged checkpoint, an ``--input`` that is no .npy array of numbers,
data files that cannot be used (a missing column, a cell that is no number, ... : a
``data.DataError``; a combination of data flags that cannot work is a usage error, 2), a
data file changed since the run started, a loss or model that is not finite, a data set too
large for the memory; ``info`` when
BACKPROP_GPU_BACKEND names no backend a run takes, or one that cannot run here), 130 after
Ctrl-C and 143 after SIGTERM (both stop a run cleanly; ``--resume`` continues it), 141 when
the reader of the output goes away (``predict ... | head -1``: quietly, as SIGPIPE). Errors
and warnings are one line on stderr, ``backprop-gpu: ...``. ``compare`` exits with 2 for a
path that is no run or sweep folder and for a run without metrics yet (1 when it cannot write
its files, or matplotlib is missing for ``--output``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import json
import logging
import os
import signal
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import compare as comparing
from . import data, experiment, precisions, writers
from .backend import ENV_VAR, BackendUnavailableError
from .checkpoint import CheckpointError, atomic_write
from .experiment import Config, ConfigError, RunError, RunInterrupted
from .sweep import MAX_RUNS, SweepInterrupted

D = Config(backend="auto")  # the defaults, shown in --help (not read from the environment)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="backprop-gpu", description="Train and use backprop_gpu models from the shell."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = commands.add_parser("info", help="versions, and the backend auto picks and why")
    info.add_argument("--json", action="store_true", help="print JSON")

    train = commands.add_parser(
        "train",
        help="train on a built-in data set or your files and record the run in a folder",
        description="Train on a built-in data set (--dataset) or on your own files (--data); "
        "flags override --config, which overrides the defaults shown.",
    )
    add = train.add_argument
    add("--config", type=Path, metavar="FILE.toml", help="settings file (same keys as the flags)")
    add("--dataset", choices=experiment.DATASETS, help=f"a built-in data set, without --data "
        f"(default: {D.dataset})")  # fmt: skip
    add("--data", metavar="PATH", help="train on your data: a .csv/.tsv/.parquet table (with "
        "--target), an .npz (X, y or X_train, y_train, X_val, y_val), an .npy or IDX file "
        "(with --labels) or a folder of images, root/<class>/*.png")  # fmt: skip
    add("--target", metavar="COLUMN", help="the label column of a --data table")
    add("--labels", metavar="FILE", help="the targets of an .npy or IDX --data file")
    add("--val-data", metavar="PATH", help="validation data of the same kind as --data "
        "(default: a stratified --val-split of it)")  # fmt: skip
    add("--val-labels", metavar="FILE", help="the targets of an .npy or IDX --val-data file")
    add("--val-split", type=float, metavar="F", help="the fraction of --data held out for "
        f"validation, seeded by --seed (default: {data.DEFAULT_VAL_SPLIT})")  # fmt: skip
    add("--scale", choices=data.SCALES, help="scale the inputs, fitted on the training rows and "
        f"saved with the model (default: {D.scale})")  # fmt: skip
    add("--task", choices=data.TASKS, help="(default: inferred from the targets: integers or "
        "text classify, floats regress)")  # fmt: skip
    add("--hidden", metavar="SIZES", help="hidden layer sizes, e.g. 128,64 (default: 64,64)")
    add("--activation", choices=experiment.ACTIVATIONS, help=f"(default: {D.activation})")
    add("--optimizer", choices=experiment.OPTIMIZERS, help=f"(default: {D.optimizer})")
    add("--lr", type=float, help="learning rate (default: per optimizer, "
        f"{experiment.DEFAULT_LR}: the classes' defaults but Adam's, 0.02 for these small runs "
        "instead of Adam's 0.001, which has not converged on spiral in 300 epochs)")  # fmt: skip
    add("--decay", type=float, help="the book's learning-rate decay, lr / (1 + decay * step) "
        f"(default: {experiment.DEFAULT_DECAY}; none with --schedule)")  # fmt: skip
    add("--momentum", type=float, help=f"SGD momentum (default: {D.momentum})")
    add("--l2", type=float, help=f"L2 weight regularisation (default: {D.l2})")
    add(
        "--dropout", type=float, help=f"dropout rate after each hidden layer (default: {D.dropout})"
    )
    add("--schedule", choices=experiment.SCHEDULES, help="learning-rate schedule over the "
        "epochs, instead of --decay: step (times --gamma every --step-size epochs), "
        "exponential (times --gamma each epoch), cosine (down to --min-lr, after --warmup "
        "epochs of linear warmup), onecycle (up to --lr over --warmup epochs, default 30 %%, "
        "then down)")  # fmt: skip
    add("--warmup", type=int, metavar="E", help="epochs of warmup (cosine, onecycle)")
    add("--step-size", type=int, metavar="E", help="epochs between the rate's drops (step)")
    add("--gamma", type=float, help="the rate's factor, in (0, 1] (step: default 0.1; "
        "exponential: each epoch)")  # fmt: skip
    add("--min-lr", type=float, help="cosine's final learning rate (default: 0)")
    add("--early-stopping", type=int, metavar="N", help="stop when val_loss has not improved "
        "for N epochs, and end with the best epoch's weights")  # fmt: skip
    add("--clip-norm", type=float, metavar="X", help="clip the gradients' global norm to X")
    add("--clip-value", type=float, metavar="X", help="clip each gradient to [-X, X]")
    add("--weight-decay", type=float, metavar="X", help="sgd: L2 in the gradient (torch's); "
        "adamw: decoupled (default: the optimizer's, adamw 0.01, sgd 0)")  # fmt: skip
    add("--precision", choices=precisions.POLICIES, help="the precision policy: float32, or "
        "mixed16 / mixed_bf16 (float32 master weights, 16-bit compute), tf32 (TF32 tensor-core "
        f"matmuls on a GPU that has them) (default: {D.precision})")  # fmt: skip
    add("--epochs", type=int, help=f"(default: {D.epochs})")
    add("--batch-size", type=int, dest="batch_size", help=f"(default: {D.batch_size})")
    add("--samples", type=int, help=f"samples for generated data sets (default: {D.samples})")
    add("--seed", type=int, help=f"(default: {D.seed})")
    add("--backend", metavar="{auto,numpy,cupy,cupy:N}",
        help=f"cupy:N is GPU N; under --distributed, auto and cupy give each rank on a machine "
        f"its own GPU (default: {D.backend})")  # fmt: skip
    add("--out", metavar="RUN_DIR", help="run folder (default: runs/<dataset>-<date>-<time>)")
    add("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    add("--quiet", action="store_true", help="no progress output")
    add("--no-plots", action="store_true", help="skip the PNG plots")
    add("--log", metavar="WRITERS", help="also log each epoch's metrics to "
        f"{' and/or '.join(writers.WRITERS)} (comma-separated): event files in "
        "RUN_DIR/tensorboard, an MLflow run in RUN_DIR/mlruns or $MLFLOW_TRACKING_URI; "
        "extras tensorboard, mlflow")  # fmt: skip
    add(
        "--distributed",
        action="store_true",
        help="data-parallel over MPI: start with mpiexec -n RANKS (needs the mpi extra)",
    )

    evaluate = commands.add_parser("evaluate", help="a run's model on its validation data")
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument("--last", action="store_true", help="checkpoint.npz, not best.npz")
    for flag in ("--data", "--labels", "--val-data", "--val-labels"):
        evaluate.add_argument(flag, metavar="PATH", help=f"the run's {flag[2:]} file, moved "
                              "here (the same contents: checked by its SHA-256)")  # fmt: skip

    predict = commands.add_parser(
        "predict",
        help="a run's model on inputs from a file",
        description="Print a run's predictions for the inputs in a file: for a run on your "
        "data, the class names (after the file of each image), and any kind of file --data "
        "takes (a table without its target column, .npy, .npz, IDX images, an image folder or "
        "one image); for a built-in data set, the outputs for a .npy array.",
    )
    predict.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    predict.add_argument("--input", type=Path, required=True, metavar="FILE")
    predict.add_argument("--output", type=Path, metavar="FILE.npy", help="save outputs here")
    predict.add_argument("--force", action="store_true", help="overwrite an existing --output")
    predict.add_argument("--last", action="store_true", help="checkpoint.npz, not best.npz")

    compare = commands.add_parser(
        "compare",
        help="compare runs: the settings that differ, the best metrics, their curves",
        description="A table of the runs (a sweep folder: the run folders in it), sorted by "
        "the best validation loss: the settings whose values differ, the best value of each "
        "validation metric, the epoch of the lowest val_loss and the epochs trained.",
    )
    compare.add_argument("paths", nargs="+", type=Path, metavar="RUN_OR_SWEEP")
    compare.add_argument("--output", type=Path, metavar="FILE.png", help="overlay the runs' "
                         "loss and accuracy curves in this image (the plot extra)")  # fmt: skip
    compare.add_argument("--csv", type=Path, metavar="FILE", help="write the table as CSV")
    compare.add_argument("--sort", metavar="METRIC", help="rank by this validation metric's "
                         "best value, e.g. val_accuracy (default: a sweep's own metric, else "
                         "val_loss)")  # fmt: skip

    sweep = commands.add_parser(
        "sweep",
        help="many runs from one settings file (a grid, random draws or an Optuna study), in "
        "parallel, ranked in one folder",
        description="Run every child of the sweep in --config (train's keys, and a [sweep] table: "
        "grid, random, repeats, metric, goal, method, trials, seed, pruner) as a run folder in "
        "--out, --parallel at a time, and rank them in results.csv and results.md.",
    )
    add = sweep.add_argument
    add("--config", type=Path, metavar="FILE.toml", help="the run settings and the [sweep] table "
        "(with --resume: optional, and then the sweep's own)")  # fmt: skip
    add("--out", metavar="SWEEP_DIR", help="the sweep's folder (default: runs/sweep-<date>-<time>)")
    add("--parallel", type=int, metavar="N", help="children at a time, each in its own "
        "process with cores / N BLAS threads (default: one per GPU when there are several, "
        "else 1)")  # fmt: skip
    add("--max-runs", type=int, default=MAX_RUNS, metavar="N", help="refuse a sweep of more "
        f"children (default: {MAX_RUNS}; not checked again on --resume)")  # fmt: skip
    add("--resume", action="store_true", help="continue the sweep in --out: its finished "
        "children are kept, the others run (from their checkpoints)")  # fmt: skip
    add("--quiet", action="store_true", help="no progress output")
    add("--no-plots", action="store_true", help="the children make no PNG plots, nor the sweep "
        "its compare.png (on --resume: as the sweep started)")  # fmt: skip
    return parser


SETTINGS = [f.name for f in dataclasses.fields(Config)]

# flags of other tools (Keras, PyTorch scripts) that a newcomer types: what to type here
_OTHER_NAMES = {
    "--learning-rate": ("--lr", "the learning rate is --lr"),
    "--device": ("--backend", "the device is chosen with --backend (auto, numpy, cupy, cupy:N)"),
}


def _parse(argv: list[str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """The parser and the parsed ``argv``. Usage errors exit with 2, an unknown argument of a
    command with that command's usage and, for a misspelt flag, the closest real one."""
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # (argparse has no public way to the subparsers: _actions, in every version)
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command: argparse.ArgumentParser = commands.choices[args.command]
        hints = [_hint(arg, command, args.command) for arg in unknown if arg.startswith("--")]
        said = "".join(f"; {hint}" for hint in hints if hint)
        command.error(f"unrecognized arguments: {' '.join(unknown)}{said}")
    return parser, args


def _hint(arg: str, command: argparse.ArgumentParser, name: str) -> str | None:
    """What ``arg``, an unknown flag of ``command``, was probably meant to be."""
    flag = arg.partition("=")[0]
    flags = [s for action in command._actions for s in action.option_strings]
    if flag in flags:  # (given before the command, where the top-level parser took it)
        return f"{flag}: put it after the command, {name}"
    others = [other for other, (ours, _) in _OTHER_NAMES.items() if ours in flags]
    match = difflib.get_close_matches(flag, flags + others, n=1, cutoff=0.75)
    if not match:
        return None
    if match[0] in _OTHER_NAMES:
        return f"{flag}: {_OTHER_NAMES[match[0]][1]}"
    return f"{flag}: did you mean {match[0]}?"


def _read_toml(path: Path, overridden: Iterable[str] = ()) -> dict[str, Any]:
    try:
        import tomllib  # type: ignore[import-not-found,unused-ignore]
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef,unused-ignore]
        except ImportError:
            raise ConfigError("--config needs Python >= 3.11 or `pip install tomli`") from None
    try:
        with path.open("rb") as f:
            values: dict[str, Any] = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"--config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # (TOML files are UTF-8)
        raise ConfigError(
            f"--config {path}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    return _paths_from(path, values, overridden)


def _paths_from(
    toml: Path, values: dict[str, Any], overridden: Iterable[str] = ()
) -> dict[str, Any]:
    """``values`` with the data paths of the TOML file ``toml`` resolved against its folder
    (as paths in a config file are); a ``data.DataError`` for one that is not there, unless
    a flag overrides it (``overridden``: flags win over the file)."""
    values = {key.replace("-", "_"): value for key, value in values.items()}
    flags = {key.replace("-", "_") for key in overridden}
    for key in experiment.DATA_PATHS:
        given = values.get(key)
        if not isinstance(given, str) or Path(given).is_absolute():
            continue
        values[key] = str(toml.parent / given)
        if key not in flags and not Path(values[key]).exists():
            raise data.DataError(f"{key} {os.path.abspath(values[key])}: no such file or "
                                 f"folder (from --config {toml}, {given!r} relative to its "
                                 "folder)")  # fmt: skip
    return values


def _train(args: argparse.Namespace, argv: list[str]) -> int:
    given = {k: getattr(args, k) for k in SETTINGS if getattr(args, k, None) is not None}
    interactive = sys.stdout.isatty() and not args.quiet
    options: dict[str, Any] = {
        "report": None if args.quiet else print,
        "progress": interactive,
        "plots": not args.no_plots,
        "command": ["backprop-gpu", *argv],
        "distributed": args.distributed,
    }
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR, the run to continue")
        file_values = _read_toml(args.config, given) if args.config else {}
        summary = experiment.resume(args.out, {**file_values, **given}, **options)
    else:
        values = _read_toml(args.config, given) if args.config else {}
        where = f"--config {args.config}" if args.config else "flags"
        values = {key.replace("-", "_"): value for key, value in {**values, **given}.items()}
        if values.get("data") is not None and "samples" in values:
            raise ConfigError("samples: the size of a generated data set; --data reads its "
                              "samples from your files")  # fmt: skip
        config = Config.from_mapping(values, where=where)
        summary = experiment.run(config, **options)
    final = summary["final"]
    if summary.get("rank", 0) != 0:
        return 0  # rank 0 reports for the whole job
    run, total = summary["epochs_run"], summary["epochs"]
    stopping = summary.get("early_stopping") or {}
    stopped = ""
    if stopping.get("stopped_epoch"):
        stopped = (
            f" (early stopping: no better val_loss in the {_epochs(stopping['patience'])} "
            f"after epoch {stopping['best_epoch']}, whose weights it keeps)"
        )
    if run:
        print(
            f"done: {_epochs(run)}{f' ({total} in all)' if total != run else ''}{stopped} in "
            f"{summary['wall_seconds']:.1f} s, "
            f"val_loss {final['val_loss']:.4f}, val_acc {final['val_accuracy']:.4f}; "
            f"run folder: {summary['run']}"
        )
        return 0
    made = ""
    if summary.get("finished"):  # (stopped after its last epoch, before its end)
        made = f"; wrote the {'plots and ' * ('plots' in summary)}summary.json it lacked"
    if stopped:  # (a resume of a run that early stopping ended: it would stop there again)
        print(f"nothing to do: {summary['run']} has ended after {_epochs(total)}{stopped}{made}")
    else:  # (a resume whose target the run has reached: success, as for make)
        more = f"backprop-gpu train --resume --out {summary['run']} --epochs {2 * total}"
        schedule = experiment.saved_config(Path(summary["run"])).schedule
        if schedule in experiment.SPANS_THE_RUN:
            more = f"its {schedule} schedule spans these epochs, so start a new run"
        print(
            f"nothing to do: {summary['run']} already has {_epochs(total)}{made} (--epochs is "
            f"the total to reach); to train more: {more}"
        )
    return 0


def _compare(args: argparse.Namespace) -> int:
    found, skipped = comparing.find_runs(args.paths)
    for run in skipped:
        _say(f"backprop-gpu: note: left out {run}: no metrics yet")
    for path, flag in ((args.output, "--output"), (args.csv, "--csv")):
        if path is not None and path.is_dir():  # (checked first: a refusal costs nothing)
            raise comparing.CompareError(f"{flag} {path}: is a folder; name a file in it")
    by = args.sort if args.sort is not None else comparing.sweep_metric(args.paths)
    table = comparing.Table.of([comparing.load_run(path) for path in found], by)
    print(table.text())
    if args.csv is not None:
        table.write_csv(args.csv)
        print(f"wrote {args.csv}")
    if args.output is not None:
        comparing.plot_runs([run.path for run in table.runs], args.output)
        print(f"wrote {args.output}")
    return 0


def _sweep(args: argparse.Namespace, argv: list[str]) -> int:
    """``backprop-gpu sweep``: 0 when every child finished (done or pruned), 1 when one
    failed or was interrupted (after all the others ran)."""
    if args.config is None and not args.resume:
        raise ConfigError("sweep needs --config FILE.toml, the run settings and a [sweep] table")
    values = None
    if args.config is not None:
        values = _sweep_paths(args.config, _read_toml(args.config))
    results = experiment.sweep(
        values, out=args.out, parallel=args.parallel, resume=args.resume,
        max_runs=args.max_runs, plots=not args.no_plots,
        report=None if args.quiet else print, command=["backprop-gpu", *argv],
    )  # fmt: skip
    counts = results["counts"]
    unfinished = counts["failed"] + counts["interrupted"]
    if unfinished:
        which = " and ".join(f"{counts[s]} {s}" for s in ("failed", "interrupted") if counts[s])
        _say(
            f"backprop-gpu: {which} of {results['total']} children (their errors: "
            f"{results['sweep']}/results.md); backprop-gpu sweep --resume --out "
            f"{results['sweep']} runs them again"
        )
        return 1
    return 0


def _sweep_paths(toml: Path, values: dict[str, Any]) -> dict[str, Any]:
    """The data paths among a sweep's grid values and choices resolved against the TOML
    file's folder, as its run settings' are (``_read_toml``)."""
    table = values.get("sweep")
    if not isinstance(table, dict):
        return values

    def resolved(key: str, value: Any) -> Any:
        key = key.replace("-", "_")
        if (
            key in experiment.DATA_PATHS
            and isinstance(value, str)
            and not Path(value).is_absolute()
        ):
            return str(toml.parent / value)
        return value

    grid = table.get("grid")
    if isinstance(grid, dict):
        for key, options in grid.items():
            if isinstance(options, list):
                grid[key] = [resolved(key, value) for value in options]
    space = table.get("random")
    if isinstance(space, dict):
        for key, distribution in space.items():
            if isinstance(distribution, dict) and isinstance(distribution.get("values"), list):
                distribution["values"] = [resolved(key, v) for v in distribution["values"]]
    return values


def _epochs(count: int) -> str:
    """``"1 epoch"``, ``"3 epochs"``."""
    return f"{count} epoch{'' if count == 1 else 's'}"


def _info(args: argparse.Namespace) -> int:
    # exit 1 when BACKPROP_GPU_BACKEND names a backend that cannot run: every train without
    # --backend would fail, and `backprop-gpu info` is how a script checks its environment
    found = experiment.info()
    if args.json:
        print(json.dumps(found, indent=2))
        return 0 if found.get("env_backend", {}).get("usable", True) else 1
    for name, version in found["versions"].items():
        print(f"{name}: {version}")
    backend = found["backend"]
    print(f"backend (auto): {backend['name']} on {backend['device']}")
    if backend["reason"]:
        print(f"why: {backend['reason']}")
    print(f"CPU kernels (C extension): {found['cpu']['c_kernels']}")
    mpi = found["mpi"]
    if mpi["available"]:
        print(
            f"MPI: {mpi['library']} (mpi4py {mpi['mpi4py']}); CuPy arrays: {mpi['cupy_transport']}"
        )
    else:
        print(f"MPI: not available ({mpi['why']})")
    env = found.get("env_backend", {})
    usable = env.get("usable", True)
    if found["env"] and usable:
        print(f"{ENV_VAR}={found['env']}: train uses it unless --backend says otherwise")
    elif found["env"] and not env["known"]:
        print(
            f"{ENV_VAR}={found['env']}: {env['why']}, so train fails unless --backend says "
            f"otherwise (or unset {ENV_VAR})"
        )
    elif found["env"]:
        print(
            f"{ENV_VAR}={found['env']}: CANNOT RUN on this machine, so train fails unless "
            f"--backend says otherwise (or unset {ENV_VAR}): {found['env_backend']['why']}"
        )
    for device in found.get("devices", []):
        total = f"{device['memory_total'] / 2**30:.1f} GiB"
        free = device["memory_free"]  # (the backend's GPU only: no context on the others)
        memory = total if free is None else f"{free / 2**30:.1f} GiB free of {total}"
        print(f"GPU {device['id']}: {device['name']}, {memory}")
    return 0 if usable else 1


def _predict(args: argparse.Namespace) -> int:
    output = None
    if args.output is not None:  # checked first: a refusal costs no prediction
        output = args.output if args.output.suffix == ".npy" else Path(f"{args.output}.npy")
        if args.output.is_dir() or output.is_dir():
            raise RunError(f"--output {args.output}: is a folder; name a file in it, such as "
                           f"{args.output / 'outputs.npy'}")  # fmt: skip
        if output.exists() and not args.force:
            raise RunError(f"--output {output} exists; pass --force to overwrite it")
    inputs: np.ndarray | Path
    if experiment.saved_config(args.run_dir).data is None:  # (a built-in data set: .npy)
        inputs = data.read_npy(args.input, f"--input {args.input}")
    else:
        inputs = args.input  # (read as the run's data were: data.read_inputs)
    found = experiment.predictions(args.run_dir, inputs, best=not args.last)
    if found.ignored:
        _say(f"backprop-gpu: note: ignored column(s) {', '.join(found.ignored)} of "
             f"{args.input} (not features of the model)")  # fmt: skip
    outputs = found.outputs
    if output is not None:
        _save_npy(output, outputs)
        print(f"wrote {output} {outputs.shape}")
    elif found.classes is not None:
        rows: list[str | None] = [None] * len(found.classes)
        if found.rows is not None:
            rows = list(found.rows)
        for row, name in zip(rows, found.classes, strict=True):
            print(name if row is None else f"{row}\t{name}")
    else:
        np.savetxt(sys.stdout, outputs, fmt="%.6g")
    return 0


def _save_npy(path: Path, array: np.ndarray) -> None:
    """np.save, atomically (``checkpoint.atomic_write``), with the umask's mode as np.save."""
    atomic_write(path, lambda f: np.save(f, array))


def _pipe_closed() -> int:
    """What a Unix tool does when the reader of its output goes away: stop quietly, with
    the status of a process that SIGPIPE ended (128 + 13). stdout goes to /dev/null, so that
    flushing it at the interpreter's exit raises nothing (Python's "Note on SIGPIPE")."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # (not a file: a test's)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


def _say(message: str) -> None:
    """``message`` on stderr in one write (print writes its end apart, and the lines of the
    ranks of an MPI job, which share the terminal, could then run into each other)."""
    sys.stderr.write(f"{message}\n")
    sys.stderr.flush()


def _interrupted(e: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """The message after Ctrl-C or SIGTERM, naming the folder to resume (and the output flags
    given, which are not settings, so the folder does not keep them); 128 + the signal."""
    signum = e.signum if isinstance(e, RunInterrupted | SweepInterrupted) else signal.SIGINT
    message = f"backprop-gpu: interrupted ({signal.Signals(signum).name})"
    if isinstance(e, SweepInterrupted):
        counts = e.results["counts"]
        quiet = " --quiet" if getattr(args, "quiet", False) else ""
        message += (
            f"; {e.sweep_dir} keeps its {counts['done'] + counts['pruned']} finished children "
            f"and the checkpoints of {counts['interrupted']} stopped ones: continue with "
            f"backprop-gpu sweep --resume --out {e.sweep_dir}{quiet}"
        )
    if isinstance(e, RunInterrupted):
        flags = [f for f in ("quiet", "no_plots") if getattr(args, f, False)]
        again = "".join(f" --{f.replace('_', '-')}" for f in flags)
        resume = f"continue with backprop-gpu train --resume --out {e.run_dir}{again}"
        if (e.run_dir / "checkpoint.npz").is_file() and e.epochs != 0:
            after = "" if e.epochs is None else f" after epoch {e.epochs}"
            message += f"{after}; {e.run_dir} keeps its metrics and checkpoint: {resume}"
        elif (e.run_dir / "config.json").is_file():
            message += f" in epoch 1; {e.run_dir} holds no epoch yet: {resume} (from epoch 1)"
        else:
            message += " before the run started; nothing was recorded"
    _say(f"\n{message}")
    return 128 + signum


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = _parse(argv)  # exits with 2 on usage errors
    with warnings.catch_warnings(), _library_log_in_one_line():
        warnings.showwarning = _show_warning  # (catch_warnings puts Python's back at the end)
        return _run(parser, args, argv)


class _OneLine(logging.Handler):
    """The library's log warnings (``auto`` falling back to NumPy although CuPy is installed,
    say) as the CLI's other warnings: one line on stderr, ``backprop-gpu: warning: ...``."""

    def emit(self, record: logging.LogRecord) -> None:
        _say(f"backprop-gpu: warning: {record.getMessage().removeprefix('backprop_gpu: ')}")


@contextlib.contextmanager
def _library_log_in_one_line() -> Any:
    """For the command's duration, warnings of the ``backprop_gpu`` logger go to ``_OneLine``
    (not to a handler of the caller's, nor to Python's last-resort one); a train that finds
    auto falling back says so in its first line, when the backend is chosen."""
    logger = logging.getLogger("backprop_gpu")
    handler = _OneLine(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """A warning (NumPy's, the library's) in one line, as the CLI's errors, not in Python's
    format with its source file and line."""
    _say(f"backprop-gpu: warning: {message}")


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    try:
        # NumPy's overflow warnings are left out: a loss or model that is not finite is
        # reported in one line (FloatingPointError below, or the run's checks); SIGTERM stops a
        # run as Ctrl-C does (experiment.run's handler)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if args.command == "info":
                return _info(args)
            if args.command == "train":
                return _train(args, argv)
            if args.command == "sweep":
                return _sweep(args, argv)
            if args.command == "evaluate":
                paths = {key: getattr(args, key) for key in experiment.DATA_PATHS}
                found = experiment.evaluate(args.run_dir, best=not args.last, paths=paths)
                print(json.dumps(found))
                return 0
            if args.command == "compare":
                return _compare(args)
            return _predict(args)
    except (ConfigError, data.DataUsageError, comparing.CompareError) as e:
        parser.exit(2, f"backprop-gpu: error: {e}\n")
    except BrokenPipeError:  # (predict ... | head -1: the reader is gone)
        return _pipe_closed()
    except (RunError, CheckpointError, RuntimeError, OSError, ValueError, ImportError,
            FloatingPointError, MemoryError) as e:  # fmt: skip
        hint = ""
        if isinstance(e, BackendUnavailableError) and not getattr(args, "resume", False):
            # (its advice, set_backend, is Python's): what to type here instead
            env = os.environ.get(ENV_VAR) and getattr(args, "backend", None) is None
            hint = f"; here: --backend numpy{f' or unset {ENV_VAR}' if env else ''}"
        elif isinstance(e, MemoryError):
            hint = " (out of memory)"
        _say(f"backprop-gpu: {e}{hint}")
        return 1
    except KeyboardInterrupt as e:
        return _interrupted(e, args)
    return 0
