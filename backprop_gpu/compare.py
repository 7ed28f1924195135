"""Comparing runs: ``backprop-gpu compare RUN_OR_SWEEP...``.

    runs = load_runs(["runs/a", "runs/b", "sweeps/lr"])   # a sweep folder: its run folders
    table = Table.of(runs)          # the settings that differ, the best metrics, the epochs
    print(table.text())
    table.write_csv("compare.csv")
    plot_runs([run.path for run in runs], "compare.png")  # loss and accuracy curves (plot extra)

A run folder is a folder holding config.json (its settings under ``"config"``) and
metrics.csv (one row per finished epoch); a sweep folder is any other folder with run folders
inside it, at any depth. The table has a row per run, sorted by the best validation loss, and
as columns the run, only the settings whose values differ across the runs, the best value of
each validation metric metrics.csv holds (the lowest loss, the highest accuracy: Keras's rule,
"acc" in the name grows), the epoch of the lowest validation loss and the epochs trained.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write

FIGURE_SIZE = (12.8, 4.8)  # inches; at 100 dpi, 1280 x 480 pixels: loss left, accuracy right
DPI = 100


# settings that do not change what a run learns: where it is (the run column says) and where
# else its metrics go
NOT_COMPARED = ("out", "log")


class CompareError(ValueError):
    """A path that is no run or sweep folder, or a run without metrics yet (a usage error)."""


@dataclasses.dataclass
class Run:
    """A run folder's settings (config.json's ``"config"``) and metrics (metrics.csv's
    ``columns`` and its ``rows``, one dict of numbers per epoch)."""

    path: Path
    settings: dict[str, Any]
    columns: tuple[str, ...]
    rows: list[dict[str, float]]

    @property
    def epochs(self) -> int:
        """The last epoch in metrics.csv."""
        return int(self.rows[-1]["epoch"])

    def best(self, metric: str) -> float | None:
        """The best value of ``metric`` over the epochs (the highest for an accuracy, else
        the lowest), None if metrics.csv has no such column."""
        values = [row[metric] for row in self.rows if metric in row]
        if not values:
            return None
        return max(values) if grows(metric) else min(values)

    def best_epoch(self, metric: str) -> int | None:
        """The first epoch of ``metric``'s best value."""
        value = self.best(metric)
        if value is None:
            return None
        return next(int(row["epoch"]) for row in self.rows if row.get(metric) == value)


def grows(metric: str) -> bool:
    """Whether larger is better for ``metric`` (Keras's rule: accuracies grow)."""
    return "acc" in metric


def is_run(folder: Path) -> bool:
    """``folder`` holds a run: a config.json."""
    return (folder / "config.json").is_file()


def find_runs(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """The run folders ``paths`` name, each once, in order: a run folder as it is, a sweep
    folder as the run folders in it (by path); and the runs of sweeps left out because they
    have no finished epoch yet. A ``CompareError`` names a path that is neither, or a run
    given by itself that has no metrics yet."""
    found: list[Path] = []
    skipped: list[Path] = []
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            found.append(path)

    for given in paths:
        path = Path(given)
        if is_run(path):
            _check_has_metrics(path)
            add(path)
            continue
        if not path.exists():
            raise CompareError(f"{path}: no such run or sweep folder")
        if not path.is_dir():
            where = ""
            if is_run(path.parent):
                where = f"; pass its run folder {path.parent}"
            raise CompareError(f"{path}: a file, not a run or sweep folder{where}")
        children = _runs_below(path)
        if not children:
            raise CompareError(
                f"{path}: not a run folder (no config.json) nor a sweep folder (no run "
                "folders in it)"
            )
        ready = [child for child in children if _metrics_problem(child) is None]
        if not ready:
            raise CompareError(
                f"{path}: its {len(children)} run folder(s) have no metrics yet (no finished "
                f"epoch), such as {children[0]}"
            )
        skipped.extend(child for child in children if _metrics_problem(child) is not None)
        for child in ready:
            add(child)
    return found, skipped


def _runs_below(folder: Path) -> list[Path]:
    """The run folders inside ``folder``, at any depth (not inside a run folder), by path."""
    runs = []
    for top, dirs, _ in os.walk(folder):
        here = Path(top)
        if here != folder and is_run(here):
            runs.append(here)
            dirs.clear()  # (a run folder holds no runs: its tensorboard/, mlruns/ are skipped)
        else:
            dirs.sort()
    return sorted(runs)


def _metrics_problem(run: Path) -> str | None:
    """Why ``run`` has no metrics to compare, or None."""
    path = run / "metrics.csv"
    if not path.is_file():
        return "no metrics.csv: no epoch has finished"
    text = _complete_lines(path.read_text())
    if sum(1 for line in text.splitlines() if line.strip()) < 2:  # (the header and a row)
        return "metrics.csv holds no epoch yet"
    return None


def _complete_lines(text: str) -> str:
    """``text`` without a last line that has no newline (one a run is writing now)."""
    return text if text.endswith("\n") else text[: text.rfind("\n") + 1]


def _check_has_metrics(run: Path) -> None:
    problem = _metrics_problem(run)
    if problem is not None:
        raise CompareError(f"{run}: no metrics yet ({problem})")


def load_run(path: str | os.PathLike[str]) -> Run:
    """The run in the folder ``path``: its settings and every finished epoch's row."""
    path = Path(path)
    if not is_run(path):
        raise CompareError(f"{path}: not a run folder (no config.json)")
    _check_has_metrics(path)
    config = path / "config.json"
    try:
        recorded = json.loads(config.read_text())
        settings = recorded["config"]
        if not isinstance(settings, dict):
            raise TypeError(f"its config is a {type(settings).__name__}")
    except (ValueError, KeyError, TypeError) as e:
        raise CompareError(f"{config}: not a run's config.json ({e!r})") from None
    columns, rows = read_metrics_csv(path / "metrics.csv")
    return Run(path, settings, columns, rows)


def read_metrics_csv(path: Path) -> tuple[tuple[str, ...], list[dict[str, float]]]:
    """metrics.csv's header and rows (numbers; an empty cell is left out of its row). A last
    line without its newline is one a run is writing now: left out."""
    text = _complete_lines(path.read_text())
    reader = csv.reader(io.StringIO(text))
    header = tuple(next(reader, ()))
    if "epoch" not in header:
        raise CompareError(f"{path}: no epoch column in its header {list(header)}")
    rows = []
    for number, cells in enumerate(reader, 2):
        if not cells:
            continue
        if len(cells) != len(header):
            raise CompareError(
                f"{path}: line {number} has {len(cells)} fields, the header {len(header)}"
            )
        try:
            row = {key: float(cell) for key, cell in zip(header, cells, strict=True) if cell}
        except ValueError:
            raise CompareError(f"{path}: line {number} holds a field that is no number: "
                               f"{','.join(cells)[:80]!r}") from None  # fmt: skip
        if "epoch" not in row:
            raise CompareError(f"{path}: line {number} has no epoch")
        rows.append(row)
    if not rows:
        raise CompareError(f"{path.parent}: no metrics yet (metrics.csv holds no epoch yet)")
    return header, rows


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> list[Run]:
    """The runs ``paths`` name (``find_runs``), loaded."""
    return [load_run(path) for path in find_runs(paths)[0]]


# --- the table -----------------------------------------------------------------------------


def differing_settings(runs: Sequence[Run]) -> list[str]:
    """The settings whose values are not the same in every run (one missing from a run's
    config.json counts as a value), in config.json's order; ``NOT_COMPARED`` left out."""
    keys: list[str] = []
    for run in runs:
        keys.extend(key for key in run.settings if key not in keys)
    missing = object()
    values = {key: {_key(run.settings.get(key, missing)) for run in runs} for key in keys}
    return [key for key in keys if key not in NOT_COMPARED and len(values[key]) > 1]


def _key(value: Any) -> str:
    """A hashable stand-in for a setting's value (lists are JSON lists)."""
    return json.dumps(value, sort_keys=True, default=repr)


def metric_columns(runs: Sequence[Run]) -> list[str]:
    """The metrics whose best values the table shows: the validation ones metrics.csv holds
    (``val_*``), in its order; a run without validation: its training loss and accuracy."""
    found: list[str] = []
    for run in runs:
        found.extend(c for c in run.columns if c.startswith("val_") and c not in found)
    if not found:
        for run in runs:
            found.extend(c for c in ("loss", "accuracy") if c in run.columns and c not in found)
    return found


@dataclasses.dataclass
class Table:
    """``columns`` and one row of values per run (``runs``, in the rows' order)."""

    columns: list[str]
    rows: list[list[Any]]
    runs: list[Run]

    @classmethod
    def of(cls, runs: Sequence[Run], by: str | None = None) -> Table:
        """The comparison of ``runs``: a row each, sorted by the best value of the metric
        ``by`` (default: the first metric column, the validation loss; losses lowest first,
        accuracies highest first; a run without it last)."""
        settings = differing_settings(runs)
        metrics = metric_columns(runs)
        if by is not None and by not in metrics:
            raise CompareError(
                f"--sort {by}: not a validation metric of these runs ({', '.join(metrics)})"
            )
        by = by if by is not None else (metrics[0] if metrics else None)

        def order(run: Run) -> float:
            value = None if by is None else run.best(by)
            if value is None:
                return math.inf
            return -value if by is not None and grows(by) else value

        ordered = sorted(runs, key=order)  # (stable: ties keep the order given)
        columns = ["run", *settings, *(f"best_{m}" for m in metrics)]
        columns += [*(["best_epoch"] if by is not None else []), "epochs_trained"]
        rows = []
        for run in ordered:
            row: list[Any] = [str(run.path)]
            row += [run.settings.get(key) for key in settings]
            row += [run.best(metric) for metric in metrics]
            if by is not None:
                row.append(run.best_epoch(by))
            rows.append([*row, run.epochs])
        return cls(columns, rows, ordered)

    def text(self) -> str:
        """The table for a terminal: aligned columns, numbers right-aligned."""
        cells = [self.columns] + [[_shown(c, v) for c, v in zip(self.columns, row, strict=True)]
                                  for row in self.rows]  # fmt: skip
        widths = [max(len(line[i]) for line in cells) for i in range(len(self.columns))]
        numeric = [
            all(isinstance(row[i], int | float) or row[i] is None for row in self.rows)
            for i in range(len(self.columns))
        ]
        lines = []
        for line in cells:
            parts = [
                cell.rjust(width) if right else cell.ljust(width)
                for cell, width, right in zip(line, widths, numeric, strict=True)
            ]
            lines.append("  ".join(parts).rstrip())
        return "\n".join(lines)

    def csv_text(self) -> str:
        """The table as CSV: numbers exact (Python's shortest repr, as in metrics.csv),
        a list setting as its JSON, an unset one empty."""
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(self.columns)
        for row in self.rows:
            writer.writerow([_csv_cell(value) for value in row])
        return text.getvalue()

    def write_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write ``csv_text()`` to ``path`` (atomically)."""
        data = self.csv_text().encode()
        return atomic_write(path, lambda f: f.write(data))


def _shown(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if column.startswith("best_") else f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    return str(value)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | dict):
        return json.dumps(value)
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


# --- the plot ------------------------------------------------------------------------------


def plot_runs(
    run_dirs: Sequence[str | os.PathLike[str]],
    path: str | os.PathLike[str],
    labels: Sequence[str] | None = None,
) -> Path:
    """Overlay the loss (left) and accuracy (right) curves of the runs in ``run_dirs`` (run
    folders) in one PNG at ``path`` (1280 x 480 pixels): one colour a run, validation solid,
    training dashed. ``labels``: a legend entry a run (default: each folder's name, or its
    path when two share a name). Returns ``path``. Needs matplotlib (the ``plot`` extra)."""
    runs = [load_run(run_dir) for run_dir in run_dirs]
    if labels is None:
        names = [run.path.name for run in runs]
        labels = names if len(set(names)) == len(names) else [str(run.path) for run in runs]
    if len(labels) != len(runs):
        raise ValueError(f"plot_runs: {len(labels)} labels for {len(runs)} runs")
    if not runs:
        raise ValueError("plot_runs: no runs to plot")
    path = Path(path)
    if path.is_dir():
        raise CompareError(f"{path}: a folder; name a file in it, such as {path / 'compare.png'}")
    figure = comparison_figure(runs, labels)
    image = io.BytesIO()
    figure.savefig(image, format="png")
    atomic_write(path, lambda f: f.write(image.getvalue()))  # (never a half-written PNG)
    return path


def comparison_figure(runs: Sequence[Run], labels: Sequence[str]) -> Any:
    """``plot_runs``' matplotlib Figure: axes 0 loss, axes 1 accuracy; per run, its
    validation curve (solid, labelled) then its training curve (dashed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(
            "the comparison plot needs matplotlib: pip install 'backprop_gpu[plot]'"
        ) from None
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, 2)
    for ax, metric in zip(axes, ("loss", "accuracy"), strict=True):
        for run, label in zip(runs, labels, strict=True):
            epochs = [row["epoch"] for row in run.rows]
            color = None
            if f"val_{metric}" in run.columns:
                values = [row.get(f"val_{metric}", math.nan) for row in run.rows]
                (line,) = ax.plot(epochs, values, label=label)
                color = line.get_color()
            if metric in run.columns:
                values = [row.get(metric, math.nan) for row in run.rows]
                own = {"label": label} if color is None else {}
                ax.plot(epochs, values, linestyle="--", color=color, alpha=0.7, **own)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} (solid: validation, dashed: training)", fontsize="medium")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    figure.tight_layout()
    return figure


def sweep_metric(paths: Sequence[str | os.PathLike[str]]) -> str | None:
    """The validation metric a sweep ranks its children by (its ``sweep.json``), when
    ``paths`` is one sweep folder; else None."""
    if len(paths) != 1:
        return None
    try:
        manifest = json.loads((Path(paths[0]) / "sweep.json").read_text())
        metric = manifest["sweep"]["metric"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return metric if isinstance(metric, str) and metric.startswith("val_") else None
