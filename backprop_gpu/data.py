"""Data from files: the loaders a run on the user's own data uses (``datasets`` keeps the
book's toy sets).

``load(path, ...)`` reads one of these and returns host arrays with a ``Description``:

- ``.npz`` holding ``X`` and ``y``, or ``X_train``, ``y_train``, ``X_val``, ``y_val``;
- ``.npy``: the inputs, with ``labels=`` the targets' ``.npy`` or IDX file;
- CSV (``.csv``) or TSV (``.tsv``) with a header line and a named ``target=`` column, read
  with the standard library's ``csv`` (every other column a number); ``.parquet`` through
  pandas and pyarrow (the ``parquet`` extra);
- MNIST / Fashion-MNIST IDX files, gzipped or not (``train-images-idx3-ubyte.gz``, with
  ``labels=`` its ``train-labels-idx1-ubyte.gz``), pixels scaled to [0, 1];
- a folder of images laid out as ``root/<class>/*.png`` (the book's chapter 19 layout;
  Pillow, the ``images`` extra), pixels scaled to [0, 1].

Class labels (strings, or integers) become indices ``0..C-1`` in sorted order, named by
``Description.class_names``; without a validation set a seeded, stratified ``val_split`` of
the training rows is held out; ``scale`` ("standard", "minmax", "none") is fitted on the
training rows only and kept in the description (``Scaler``), which ``prepare_inputs``
applies to raw inputs at prediction (``read_inputs`` for a file). The task is inferred
(integer or string labels: classification; float targets: regression) unless ``task=``
says.

Bad input raises ``DataError`` (a ``ValueError``) naming the file and what was wrong (line
and column of a CSV cell); a wrong combination of arguments raises ``DataUsageError``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import gzip
import hashlib
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

TASKS = ("classification", "regression")
PIXEL_MAX = 255.0  # uint8 pixels (IDX files, images) are divided by it: to [0, 1]
SCALES = ("none", "standard", "minmax")
DEFAULT_VAL_SPLIT = 0.2
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IMAGE_MODES = ("L", "LA", "RGB", "RGBA")  # 8 bits a channel
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")
_KIND_NAMES = {"npz": "an .npz", "npy": "an .npy", "table": "a table", "parquet": "a table",
               "image": "an image", "images": "an image folder", "idx": "an IDX file"}  # fmt: skip
KINDS = (
    ".npz, .npy (with --labels), .csv / .tsv (with --target), .parquet (with --target), "
    "IDX files (with --labels) or a folder of images, root/<class>/*.png"
)


class DataError(ValueError):
    """Data that cannot be used: a file that is missing, malformed or holds bad values."""


class DataUsageError(ValueError):
    """A combination of arguments that cannot work (a usage error): a CSV without a target
    column named, a .npy without its labels, a validation split beside a validation set."""


# --- the description ------------------------------------------------------------------------


@dataclasses.dataclass
class Scaler:
    """Inputs mapped to ``(X - offset) / scale``, feature by feature, with float64 ``offset``
    and ``scale`` fitted on the training rows: ``standard`` (mean and standard deviation)
    or ``minmax`` (minimum and range, to [0, 1]). A constant feature gets scale 1."""

    kind: str
    offset: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, kind: str, X: np.ndarray) -> Scaler:
        X64 = X.astype(np.float64)
        if kind == "standard":
            offset, scale = X64.mean(axis=0), X64.std(axis=0)
        elif kind == "minmax":
            offset, scale = X64.min(axis=0), np.ptp(X64, axis=0)
        else:
            raise DataUsageError(f"scale: unknown scaling {kind!r}; valid: {', '.join(SCALES)}")
        # constant by its range (a column of 0.1s has a std of float noise, ~1e-17, not 0)
        constant = np.ptp(X64, axis=0) == 0
        offset = np.where(constant, X64[0], offset)  # (its value: 0 once scaled, exactly)
        return cls(kind, offset, np.where(constant, 1.0, scale))

    def apply(self, X: np.ndarray) -> np.ndarray:
        """``X`` scaled, as float32."""
        scaled: np.ndarray = (X.astype(np.float64) - self.offset) / self.scale
        return scaled.astype(np.float32)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Scaler:
        offset = np.asarray(saved["offset"], dtype=np.float64)
        scale = np.asarray(saved["scale"], dtype=np.float64)
        return cls(str(saved["kind"]), offset, scale)


@dataclasses.dataclass
class Description:
    """What a loaded data set is: ``feature_names`` (CSV columns, ``pixel_<row>_<col>``),
    ``class_names`` (index ``i`` is class ``class_names[i]``; None for regression),
    ``task``, ``source`` (where it was read from), ``input_shape`` (one sample's shape in the
    file: images keep theirs, the model sees them flattened), ``scaler`` (None: unscaled),
    ``files`` (each file read, as given, with the SHA-256 of its contents), ``validation``
    (where the validation rows came from) and ``val_split`` (the fraction held out, or None
    when a validation set was given)."""

    feature_names: list[str]
    class_names: list[str] | None
    task: str
    source: str
    input_shape: tuple[int, ...]
    scaler: Scaler | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    validation: str = ""
    val_split: float | None = None
    target: str | None = None  # the target column of a table
    pixel_max: float | None = None  # uint8 pixels were divided by it (255); None: not pixels

    @property
    def n_outputs(self) -> int | None:
        """The model's outputs for classification (one per class); None for regression."""
        return None if self.class_names is None else len(self.class_names)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able (the run folder's data.json, a checkpoint's metadata)."""
        return {
            "task": self.task,
            "class_names": self.class_names,
            "feature_names": self.feature_names,
            "input_shape": list(self.input_shape),
            "scaler": None if self.scaler is None else self.scaler.as_dict(),
            "source": self.source,
            "files": self.files,
            "validation": self.validation,
            "val_split": self.val_split,
            "target": self.target,
            "pixel_max": self.pixel_max,
        }

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> Description:
        scaler = saved.get("scaler")
        return cls(
            feature_names=list(saved["feature_names"]),
            class_names=None if saved.get("class_names") is None else list(saved["class_names"]),
            task=str(saved["task"]),
            source=str(saved.get("source", "")),
            input_shape=tuple(int(d) for d in saved.get("input_shape") or ()),
            scaler=None if scaler is None else Scaler.from_dict(scaler),
            files=dict(saved.get("files") or {}),
            validation=str(saved.get("validation", "")),
            val_split=saved.get("val_split"),
            target=saved.get("target"),
            pixel_max=saved["pixel_max"] if "pixel_max" in saved else _old_pixel_max(saved),
        )


def _old_pixel_max(saved: dict[str, Any]) -> float | None:
    """A description saved before ``pixel_max`` was: image folders and IDX files had their
    uint8 pixels divided by ``PIXEL_MAX`` (the only inputs it applies to are uint8)."""
    if str(saved.get("source", "")).endswith("/<class>/*"):
        return PIXEL_MAX
    first = next(iter(saved.get("files") or {}), None)
    try:
        return PIXEL_MAX if first is not None and kind_of(Path(first)) == "idx" else None
    except DataUsageError:
        return None


@dataclasses.dataclass
class Data:
    """A loaded data set: float32 inputs ``X`` (samples, features) and targets ``y`` (int64
    class indices, or float32 (samples, outputs) for regression), the validation rows
    ``X_val`` and ``y_val``, and the ``description``."""

    X: np.ndarray
    y: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    description: Description


# --- reading files --------------------------------------------------------------------------


@dataclasses.dataclass
class Table:
    """One file's contents before labels, splits and scaling: float64 inputs ``X`` (samples,
    ...), the raw targets ``y`` (strings or numbers; None when the file has none), the
    feature names and, for an .npz holding both, its validation part."""

    X: np.ndarray
    y: np.ndarray | None
    feature_names: list[str]
    source: str
    files: dict[str, str]
    val: Table | None = None
    row_names: list[str] | None = None  # the files of an image folder, one a row
    labels: str = ""  # where the targets came from, for messages ("labels y.npy", ...)
    pixel_max: float | None = None  # uint8 pixels divided by it (IDX files, images)


def kind_of(path: Path) -> str:
    """``"npz"``, ``"npy"``, ``"table"``, ``"parquet"``, ``"image"``, ``"images"`` (a folder)
    or ``"idx"`` (by the file's first bytes, gzipped or not); a ``DataUsageError`` else."""
    if path.is_dir():
        return "images"
    suffix = path.suffix.lower()
    if suffix == ".gz":
        inner = Path(path.stem).suffix.lower()
        if inner in (".npz", ".npy", *TABLE_SUFFIXES, *PARQUET_SUFFIXES, *IMAGE_SUFFIXES):
            raise DataUsageError(
                f"{path}: a gzipped {inner} file; only IDX files are read gzipped (gunzip it)"
            )
        suffix = ".gz"
    if suffix in (".npz", ".npy"):
        return suffix[1:]
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if "idx" in path.name.lower() or suffix in (".gz", ".idx", ".ubyte", ""):
        return "idx"
    raise DataUsageError(f"{path}: unknown kind of data file ({suffix}); expected {KINDS}")


def read(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    where: str = "data",
) -> Table:
    """The contents of the data file (or image folder) ``path``: see the module's docstring.
    ``target`` names a table's label column; ``labels`` the file of an .npy's or IDX file's
    targets. ``where`` names the argument in messages (``--data``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{where} {path}: no such file or folder")
    kind = kind_of(path)
    if kind == "table" or kind == "parquet":
        if labels is not None:
            raise DataUsageError(
                f"{where} {path}: a table names its target column (target), not a labels file"
            )
        if target is None:
            raise DataUsageError(
                f"{where} {path}: name the table's target column (--target COLUMN); its "
                f"columns: {', '.join(_columns(path, kind))}"
            )
        return _read_table(path, target) if kind == "table" else _read_parquet(path, target)
    if target is not None:
        raise DataUsageError(
            f"{where} {path}: target names a column of a CSV, TSV or Parquet table, and this "
            f"is no table ({kind})"
        )
    if kind == "npz":
        if labels is not None:
            raise DataUsageError(f"{where} {path}: an .npz holds its own y; no labels file")
        return _read_npz(path)
    if kind == "images":
        if labels is not None:
            raise DataUsageError(
                f"{where} {path}: an image folder's classes are its subfolders; no labels file"
            )
        return _read_image_folder(path)
    if kind == "image":
        raise DataUsageError(
            f"{where} {path}: one image is no training set; pass the folder, root/<class>/*.png"
        )
    X = _read_npy(path) if kind == "npy" else read_idx(path)
    if X.ndim < 2:
        raise DataError(f"{where} {path}: an array of shape {X.shape}; expected (samples, "
                        "features) or images (samples, rows, columns)")  # fmt: skip
    if labels is None:
        flag = "--val-labels" if where == "val_data" else "--labels"
        raise DataUsageError(
            f"{where} {path}: {'an .npy' if kind == 'npy' else 'an IDX file'} holds the inputs "
            f"only; pass the targets' file too ({flag} FILE)"
        )
    labels = Path(labels)
    named = f"{'val_labels' if where == 'val_data' else 'labels'} {labels}"
    if not labels.exists():
        raise DataError(f"{named}: no such file")
    try:
        labels_kind = kind_of(labels)
    except DataUsageError as e:
        raise DataUsageError(f"{named.split()[0]} {e}") from None
    if labels_kind not in ("npy", "idx"):
        flag = "--val-labels" if where == "val_data" else "--labels"
        raise DataUsageError(f"{named}: {flag} takes an .npy or an IDX file of the targets, one "
                             f"a sample, not {_KIND_NAMES[labels_kind]}")  # fmt: skip
    y = _read_npy(labels, labels=True) if labels_kind == "npy" else read_idx(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if len(y) != len(X):
        raise DataError(f"{named}: {len(y)} targets for the {len(X)} samples of {path}")
    _check_finite(y, named)
    pixels = kind == "idx" and X.dtype == np.uint8
    X = X.astype(np.float64) / PIXEL_MAX if pixels else X
    return Table(X, y, _pixel_names(X.shape[1:]), f"{path} (labels {labels})",
                 {str(path): file_hash(path), str(labels): file_hash(labels)},
                 labels=named, pixel_max=PIXEL_MAX if pixels else None)  # fmt: skip


def file_hash(path: Path) -> str:
    """The SHA-256 of a file's contents; of a folder, over its files' relative paths and
    contents, in sorted order."""
    digest = hashlib.sha256()
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(bytes.fromhex(file_hash(file)))
        return digest.hexdigest()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_finite(values: np.ndarray, where: str) -> None:
    """A ``DataError`` naming the first value that is NaN or infinite (of text labels: the
    first that reads as one, "nan", "inf", ...)."""
    if values.dtype.kind == "f" and not np.all(np.isfinite(values)):
        bad = np.argwhere(~np.isfinite(values))[0]
        at = ", ".join(map(str, bad))
        raise DataError(f"{where}: holds {values[tuple(bad)]} at index [{at}]; every value "
                        "must be a finite number")  # fmt: skip
    if values.dtype.kind in "US" and (first := _first_nonfinite_text(values)) is not None:
        at = ", ".join(map(str, np.unravel_index(first, values.shape)))
        raise DataError(f"{where}: holds {str(values.flat[first])!r} at index [{at}]; every "
                        "value must be a finite number or a class name")  # fmt: skip


def _first_nonfinite_text(values: np.ndarray) -> int | None:
    """The flat index of the first text value that reads as NaN or an infinity, else None."""
    flat = values.ravel().astype(str)
    bad = []
    for text in np.unique(flat).tolist():  # (labels: few distinct values)
        try:
            number = float(text)
        except ValueError:
            continue
        if not math.isfinite(number):
            bad.append(text)
    if not bad:
        return None
    return int(np.flatnonzero(np.isin(flat, bad))[0])


def _check_numbers(values: np.ndarray, where: str, name: str) -> None:
    if values.dtype.kind not in "biuf" and not (name == "y" and values.dtype.kind in "US"):
        raise DataError(f"{where}: {name} holds {values.dtype} values, not numbers")


NPY_MAGIC = b"\x93NUMPY"  # how every .npy file starts
_KINDS = {"U": "strings", "S": "bytes", "c": "complex numbers", "O": "objects",
          "V": "records", "M": "dates", "m": "time spans"}  # fmt: skip


def read_npy(
    path: str | os.PathLike[str], where: str | None = None, text: bool = False
) -> np.ndarray:
    """The array of real numbers (``text``: or strings, labels) in the .npy file ``path``,
    else a ``DataError`` saying what the file is. Its header is read first: a file of
    another kind, or an array of Python objects, is refused before its data is read (and
    never unpickled). ``where`` names it in messages (``--input x.npy``)."""
    path = Path(path)
    where = where or str(path)
    try:
        with path.open("rb") as f:
            start = f.read(6)
            if start[:4] == b"PK\x03\x04":  # (np.load would open it as an NpzFile)
                raise DataError(f"{where}: a .npz archive, not a .npy array (np.save)")
            if start != NPY_MAGIC:
                what = f"it starts with {start!r}, not {NPY_MAGIC!r}" if start else "empty"
                raise DataError(f"{where}: not a .npy file ({what}); save the array with np.save")
            f.seek(0)
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
            if header is not None:  # (3.0, for field names that are not ASCII: records)
                _check_real(header(f)[2], where, text)
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{where}: a folder, not a .npy file") from None
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        said = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise DataError(f"{where}: cannot read a .npy array ({said})") from None
    _check_real(array.dtype, where, text)
    return np.asarray(array)


def _check_real(dtype: np.dtype[Any], where: str, text: bool = False) -> None:
    if dtype.kind not in ("biufUS" if text else "biuf"):
        raise DataError(
            f"{where}: expected an array of real numbers, got dtype {dtype} "
            f"({_KINDS.get(dtype.kind, 'not numbers')})"
        )


def _read_npy(path: Path, labels: bool = False, where: str | None = None) -> np.ndarray:
    array = read_npy(path, where, text=labels)
    _check_finite(array, where or str(path))
    if array.ndim < (1 if labels else 2) and where is None:
        expected = "(samples,)" if labels else "(samples, features)"
        raise DataError(f"{path}: an array of shape {array.shape}; expected {expected}")
    return array


def _read_npz(path: Path) -> Table:
    try:
        archive = np.load(path, allow_pickle=False)
        if isinstance(archive, np.ndarray):
            raise DataError(f"{path}: a .npy array, not an .npz archive")
        with archive:
            arrays = {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz archive ({e})") from None
    names = sorted(arrays)
    if {"X", "y"} <= set(arrays):
        pairs = [("X", "y")]
    elif {"X_train", "y_train"} <= set(arrays):
        pairs = [("X_train", "y_train")]
        if {"X_val", "y_val"} <= set(arrays):
            pairs.append(("X_val", "y_val"))
        elif "X_val" in arrays or "y_val" in arrays:
            raise DataError(f"{path}: holds {', '.join(names)}; X_val and y_val go together")
    else:
        raise DataError(
            f"{path}: expected arrays X and y, or X_train and y_train (and X_val, y_val); it "
            f"holds {', '.join(names) or 'none'}"
        )
    tables = []
    for x_name, y_name in pairs:
        X, y = arrays[x_name], arrays[y_name]
        _check_numbers(X, f"{path}", x_name)
        _check_numbers(y, f"{path}", "y")
        if X.ndim < 2:
            raise DataError(f"{path}: {x_name} has shape {X.shape}; expected (samples, features)")
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if len(y) != len(X):
            raise DataError(f"{path}: {y_name} has {len(y)} targets for the {len(X)} rows "
                            f"of {x_name}")  # fmt: skip
        _check_finite(X, f"{path} {x_name}")
        _check_finite(y, f"{path} {y_name}")
        names = _pixel_names(X.shape[1:]) if X.ndim > 2 else [f"x{i}" for i in range(X.shape[1])]
        tables.append(
            Table(X, y, names, str(path), {str(path): file_hash(path)}, labels=f"{path} {y_name}")
        )
    if len(tables) == 2:
        train, val = tables
        if train.X.shape[1:] != val.X.shape[1:]:
            raise DataError(f"{path}: X_val's samples have shape {val.X.shape[1:]}, "
                            f"X_train's {train.X.shape[1:]}")  # fmt: skip
        train.val = val
    return tables[0]


def _pixel_names(shape: tuple[int, ...]) -> list[str]:
    if len(shape) == 1:
        return [f"x{i}" for i in range(shape[0])]
    return ["pixel_" + "_".join(map(str, index)) for index in np.ndindex(*shape)]


# --- tables ---------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOWrapper:
    return open(path, newline="", encoding="utf-8-sig")  # (utf-8-sig: Excel's BOM)


def _columns(path: Path, kind: str) -> list[str]:
    """A table's column names (its header line)."""
    if kind == "parquet":  # (its schema only: the columns are not read)
        _pandas(path)
        import pyarrow.parquet

        try:
            schema = pyarrow.parquet.read_schema(path)
        except Exception as e:  # (pyarrow's errors have no common public base)
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        index = (schema.pandas_metadata or {}).get("index_columns", [])  # (pandas' index)
        return [str(name) for name in schema.names if name not in index]
    with _open_text(path) as f:
        reader = csv.reader(f, delimiter=TABLE_SUFFIXES[path.suffix.lower()],
                            skipinitialspace=True)  # fmt: skip
        return [name.strip() for name in next(reader, [])]


def _check_header(path: Path, header: list[str]) -> None:
    twice = sorted({name for name in header if header.count(name) > 1})
    if twice:
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, twice))} appear more than "
                        "once; each column needs a name of its own")  # fmt: skip


def _no_column(path: Path, name: str, header: list[str]) -> DataError:
    """The error for a table without the column ``name``, with a hint when its header is one
    cell holding another delimiter."""
    hint = ""
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        other = "';'" if ";" in header[0] else "tabs"
        hint = (f" (one column: is the file delimited by {other}? a .csv is read with ',', a "
                ".tsv with tabs)")  # fmt: skip
    return DataError(f"{path}: no column {name!r}; its columns: {', '.join(header)}{hint}")


ROWS_A_BLOCK = 1 << 14  # a table's cells are converted to numbers a block of rows at a time


class _Hashing(io.RawIOBase):
    """A binary file read through, its bytes hashed into ``digest`` as they go by (one
    read of a table: its SHA-256 and its contents)."""

    def __init__(self, raw: io.BufferedReader, digest: Any) -> None:
        super().__init__()
        self.raw, self.digest = raw, digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.raw.readinto(buffer)
        if count:
            self.digest.update(memoryview(buffer)[:count])
        return count


def _read_table(path: Path, target: str | None, only: Sequence[str] | None = None) -> Table:
    """A CSV or TSV file with a header line: every column but ``target`` a number (or, for
    prediction inputs, the columns ``only``, the others not read); ``target`` kept as
    strings, interpreted later. Read once (hashed on the way), its cells converted a block
    of rows at a time: the memory it takes is the float64 array's and one block's strings."""
    delimiter = TABLE_SUFFIXES[path.suffix.lower()]
    digest = hashlib.sha256()
    blocks: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    try:
        with path.open("rb") as raw:
            buffered = io.BufferedReader(_Hashing(raw, digest))
            text = io.TextIOWrapper(buffered, encoding="utf-8-sig", newline="")  # (Excel's BOM)
            reader = csv.reader(text, delimiter=delimiter, skipinitialspace=True)
            header = next(reader, None)
            if header is None or not any(cell.strip() for cell in header):
                raise DataError(f"{path}: empty file (expected a header line of column names)")
            header = [name.strip() for name in header]
            _check_header(path, header)
            if target is not None and target not in header:
                raise _no_column(path, target, header)
            features = [i for i, name in enumerate(header) if name != target]
            if only is not None:
                features = [header.index(name) for name in only]
            column = None if target is None else header.index(target)
            rows: list[list[str]] = []
            lines: list[int] = []

            def convert() -> None:
                blocks.append(_numbers(rows, features, header, lines, path))
                if column is not None:
                    targets.append(_target_cells(rows, column, lines, path, header[column]))
                rows.clear()
                lines.clear()

            for row in reader:
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(header):
                    raise DataError(
                        f"{path}: line {reader.line_num} has {len(row)} cells, the header "
                        f"has {len(header)} columns"
                    )
                rows.append(row)
                lines.append(reader.line_num)
                if len(rows) == ROWS_A_BLOCK and features:
                    convert()
            if rows and features:
                convert()
            while buffered.read(1 << 20):  # (the rest, if any, for the hash)
                pass
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except csv.Error as e:
        kind = "TSV" if delimiter == "\t" else "CSV"
        raise DataError(f"{path}: not a readable {kind} file ({e})") from None
    if not blocks and not rows:
        raise DataError(f"{path}: no data rows after the header line")
    if not features:
        raise DataError(f"{path}: no feature columns beside the target {target!r}")
    X = np.concatenate(blocks)
    y = None if column is None else np.concatenate(targets)
    return Table(X, y, [header[i] for i in features], str(path), {str(path): digest.hexdigest()},
                 labels=f"{path} column {target!r}")  # fmt: skip


def _target_cells(
    rows: list[list[str]], column: int, lines: list[int], path: Path, name: str
) -> np.ndarray:
    """The target cells of ``rows`` as text; a ``DataError`` for one that is empty or reads
    as NaN or an infinity, by its line."""
    y = np.array([row[column].strip() for row in rows])
    if (empty := np.flatnonzero(y == "")).size:
        raise DataError(f"{path}: line {lines[empty[0]]}, column {name!r}: empty cell")
    if (bad := _first_nonfinite_text(y)) is not None:
        raise DataError(f"{path}: line {lines[bad]}, column {name!r}: {str(y[bad])!r} is not a "
                        "finite number")  # fmt: skip
    return y


def _numbers(
    rows: list[list[str]], columns: list[int], header: list[str], lines: list[int], path: Path
) -> np.ndarray:
    """The cells of ``columns`` as float64; a ``DataError`` naming the first cell that is no
    finite number by its line and column."""
    try:
        X = np.array([[row[i] for i in columns] for row in rows], dtype=np.float64)
    except ValueError:
        X = None
    if X is not None and np.all(np.isfinite(X)):
        return X
    for row, line in zip(rows, lines, strict=True):
        for i in columns:
            cell = row[i].strip()
            try:
                value = float(cell)
            except ValueError:
                what = "empty cell" if not cell else f"{cell!r} is not a number"
                raise DataError(f"{path}: line {line}, column {header[i]!r}: {what}") from None
            if not math.isfinite(value):
                raise DataError(f"{path}: line {line}, column {header[i]!r}: {cell!r} is not "
                                "a finite number")  # fmt: skip
    raise AssertionError("unreachable: a cell failed as a whole but not alone")


def _pandas(path: Path) -> Any:
    try:
        import pandas
    except ImportError:
        raise ImportError(
            f"{path}: Parquet files need pandas and pyarrow: install the parquet extra (pip "
            "install '.[parquet]' in a checkout of backprop_gpu, or pip install pandas pyarrow)"
        ) from None
    return pandas


def _read_parquet(path: Path, target: str | None, only: Sequence[str] | None = None) -> Table:
    pandas = _pandas(path)
    try:
        frame = pandas.read_parquet(path)
    except ImportError:
        raise
    except Exception as e:  # (pyarrow's errors have no common public base)
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    columns = [str(c) for c in frame.columns]
    _check_header(path, columns)
    frame.columns = columns
    if target is not None and target not in columns:
        raise _no_column(path, target, columns)
    if len(frame) == 0:
        raise DataError(f"{path}: no data rows")
    features = [c for c in columns if c != target] if only is None else list(only)
    if not features:
        raise DataError(f"{path}: no feature columns beside the target {target!r}")
    for name in features:
        if frame[name].dtype.kind not in "biuf":
            raise DataError(f"{path}: column {name!r} holds {frame[name].dtype} values, not "
                            "numbers")  # fmt: skip
    X = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.all(np.isfinite(X)):
        row, col = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{path}: row {row}, column {features[col]!r}: {X[row, col]} is not a "
                        "finite number")  # fmt: skip
    y = None
    if target is not None:
        column = frame[target]
        if column.isna().any():
            raise DataError(f"{path}: row {int(np.flatnonzero(column.isna())[0])}, column "
                            f"{target!r}: missing value")  # fmt: skip
        y = column.to_numpy()
        y = y.astype(str) if y.dtype.kind == "O" else y
        bad: int | None = None
        if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
            bad = int(np.flatnonzero(~np.isfinite(y))[0])
        elif y.dtype.kind in "US":
            bad = _first_nonfinite_text(y)
        if bad is not None:
            raise DataError(f"{path}: row {bad}, column {target!r}: {y[bad]} is not a finite "
                            "number")  # fmt: skip
    return Table(
        X, y, features, str(path), {str(path): file_hash(path)}, labels=f"{path} column {target!r}"
    )


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------------

# the IDX format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code, the number
# of dimensions, then each dimension as a big-endian int32, then the values, big-endian
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """The array in the IDX file ``path`` (gzipped or not, found by its first bytes)."""
    path = Path(path)
    with path.open("rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"{path}: a damaged gzip file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX file's header")
    zero, code, ndim = raw[:2], raw[2], raw[3]
    if zero != b"\x00\x00" or code not in IDX_TYPES or ndim == 0:
        raise DataError(
            f"{path}: not an IDX file (magic number {raw[:4].hex(' ')}; expected 00 00, a type "
            f"code ({', '.join(f'{c:02x}' for c in IDX_TYPES)}) and the dimensions, such as "
            "00 00 08 03 for MNIST images, 00 00 08 01 for labels)"
        )
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise DataError(f"{path}: the header is cut short ({len(raw)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(IDX_TYPES[code])
    expected = head + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: {len(raw)} bytes, but its header says {shape} values of "
                        f"{dtype.itemsize} byte(s) ({expected} bytes with the header)")  # fmt: skip
    values = np.frombuffer(raw, dtype, offset=head).reshape(shape)
    values = values.astype(dtype.newbyteorder("="))
    _check_finite(values, str(path))
    return values


# --- images ---------------------------------------------------------------------------------


def _pillow(path: Path) -> Any:
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(
            f"{path}: images need Pillow: install the images extra (pip install '.[images]' in "
            "a checkout of backprop_gpu, or pip install Pillow)"
        ) from None
    return Image


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )  # fmt: skip


def read_images(files: Sequence[Path], where: str) -> np.ndarray:
    """The images ``files`` as one uint8 array (images, height, width[, channels]); a
    ``DataError`` naming two files whose sizes or modes differ."""
    Image = _pillow(files[0])
    arrays = []
    first: tuple[Path, str, tuple[int, int]] | None = None
    for file in files:
        try:
            with Image.open(file) as image:
                if image.mode in ("P", "PA"):  # (a palette: its colours)
                    rgba = image.mode == "PA" or "transparency" in image.info
                    image = image.convert("RGBA" if rgba else "RGB")
                mode, size = image.mode, image.size
                if mode not in IMAGE_MODES:
                    raise DataError(f"{file}: image mode {mode}; expected 8-bit "
                                    f"{', '.join(IMAGE_MODES)} (convert it)")  # fmt: skip
                pixels = np.asarray(image)
        except OSError as e:
            raise DataError(f"{file}: not a readable image ({e})") from None
        if first is None:
            first = (file, mode, size)
        elif (mode, size) != first[1:]:
            said = f"mode {mode}" if mode != first[1] else f"size {size[0]}x{size[1]}"
            was = f"mode {first[1]}" if mode != first[1] else f"{first[2][0]}x{first[2][1]}"
            raise DataError(f"{where}: {file} has {said}, {first[0]} {was}; the images of a "
                            "data set must share their size and mode")  # fmt: skip
        arrays.append(pixels)
    return np.stack(arrays)


def _read_image_folder(root: Path) -> Table:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class folders in it (expected root/<class>/*.png)")
    files, labels = [], []
    for name in classes:
        found = _image_files(root / name)
        if not found:
            raise DataError(f"{root / name}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
        files += found
        labels += [name] * len(found)
    pixels = read_images(files, str(root))
    X = pixels.astype(np.float64) / PIXEL_MAX
    return Table(X, np.array(labels), _pixel_names(X.shape[1:]), f"{root}/<class>/*",
                 {str(root): file_hash(root)}, row_names=[str(f.relative_to(root)) for f in files],
                 pixel_max=PIXEL_MAX)  # fmt: skip


# --- labels, splits, scaling ----------------------------------------------------------------


def infer_task(y: np.ndarray) -> str:
    """Classification for integer, boolean or string labels (text that is not all numbers:
    a table's labels come as text), regression for float targets."""
    if y.dtype.kind in "US":
        numbers = _as_numbers(y)
        if numbers is None:
            return "classification"
        y = numbers
    return "regression" if y.dtype.kind == "f" else "classification"


def _as_numbers(y: np.ndarray) -> np.ndarray | None:
    """Text labels as int64 when every one is an integer, as float64 when every one is a
    number, else None."""
    try:
        return y.astype(np.int64)
    except ValueError:
        pass
    except OverflowError:  # integers beyond int64: text labels (floats would merge them)
        return None
    try:
        return y.astype(np.float64)
    except ValueError:
        return None


def class_names_of(y: np.ndarray) -> list[str]:
    """The sorted distinct labels as text: numbers in numerical order, strings in
    lexicographic order."""
    numbers = _as_numbers(y) if y.dtype.kind in "US" else y
    if numbers is not None:
        return [_name(v) for v in np.unique(numbers)]
    return [str(v) for v in np.unique(y)]


def _name(value: Any) -> str:
    if isinstance(value, int | np.integer):  # (exactly: uint64 beyond float64's integers)
        return str(int(value))
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _label_text(y: np.ndarray) -> np.ndarray:
    """The labels as the text ``class_names_of`` names them by."""
    numbers = _as_numbers(y) if y.dtype.kind in "US" else y
    if numbers is None:
        return y.astype(str)
    return np.array([_name(v) for v in numbers.ravel()])


def encode(y: np.ndarray, class_names: list[str], where: str) -> np.ndarray:
    """Labels as int64 indices into ``class_names``; a ``DataError`` naming a label that is
    not one of them."""
    text = _label_text(y)
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(np.unique(text).tolist()) - set(index))
    if unknown:
        raise DataError(
            f"{where}: class(es) {', '.join(map(repr, unknown[:5]))} not in the training data "
            f"(its classes: {', '.join(class_names)})"
        )
    return np.array([index[t] for t in text.tolist()], dtype=np.int64)


def regression_targets(y: np.ndarray, where: str) -> np.ndarray:
    """Float targets as float32 (samples, outputs)."""
    numbers = _as_numbers(y) if y.dtype.kind in "US" else y
    if numbers is None and y.dtype.kind in "US":  # (integers beyond int64)
        with contextlib.suppress(ValueError):
            numbers = y.astype(np.float64)
    if numbers is None or numbers.dtype.kind not in "biuf":
        example = y.ravel()[0] if y.size else ""
        raise DataUsageError(
            f"{where}: task regression needs numeric targets, got {str(example)!r}; the task "
            "is classification"
        )
    values = numbers.astype(np.float32)
    return values.reshape(len(values), -1)


def stratified_split(
    y: np.ndarray | None, n: int, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation row indices, ``fraction`` of the rows held out at random from
    ``seed``: of each class in turn when ``y`` (class indices) is given, so both sets keep
    its proportions (at least one row of each class stays in training)."""
    rng = np.random.default_rng(seed)
    held = np.zeros(n, dtype=bool)
    groups = [np.arange(n)] if y is None else [np.flatnonzero(y == c) for c in np.unique(y)]
    for members in groups:
        members = rng.permutation(members)
        count = min(round(len(members) * fraction), len(members) - 1)
        held[members[:count]] = True
    return np.flatnonzero(~held), np.flatnonzero(held)


def load(
    path: str | os.PathLike[str],
    *,
    target: str | None = None,
    labels: str | os.PathLike[str] | None = None,
    val_data: str | os.PathLike[str] | None = None,
    val_labels: str | os.PathLike[str] | None = None,
    val_split: float | None = None,
    scale: str = "none",
    task: str | None = None,
    seed: int = 0,
) -> Data:
    """The data set in ``path`` ready to train on (see the module's docstring): validation
    from ``val_data`` (with ``val_labels``), from an .npz's ``X_val``/``y_val``, else a
    seeded stratified ``val_split`` (default 0.2) of the training rows."""
    check_settings(val_data=val_data, val_labels=val_labels, val_split=val_split, scale=scale,
                   task=task, target=target, labels=labels)  # fmt: skip
    table = read(path, target=target, labels=labels, where="data")
    val = table.val
    if val_data is not None:
        if val is not None:
            raise DataUsageError(f"val_data: {path} holds its own X_val and y_val")
        kinds = (_KIND_NAMES[kind_of(Path(path))], _KIND_NAMES[kind_of(Path(val_data))])
        if kinds[0] != kinds[1]:
            raise DataUsageError(f"val_data {val_data}: must be the same kind as --data "
                                 f"({kinds[0]}), not {kinds[1]}")  # fmt: skip
        val = read(val_data, target=target, labels=val_labels, where="val_data")
        if val.feature_names != table.feature_names and table.X.ndim == 2:
            raise DataError(f"val_data {val_data}: columns {', '.join(val.feature_names)}, but "
                            f"{path} has {', '.join(table.feature_names)}")  # fmt: skip
        if val.X.shape[1:] != table.X.shape[1:]:
            raise DataError(f"val_data {val_data}: samples of shape {val.X.shape[1:]}, but "
                            f"{path} has {table.X.shape[1:]}")  # fmt: skip
    if val is not None and val_split is not None:
        raise DataUsageError(
            f"val_split: {val_split:g} and a validation set ({val.source}); pass one of them"
        )
    assert table.y is not None
    task = task or infer_task(table.y)
    class_names = None
    if task == "classification":
        _check_one_label_a_sample(table)
        class_names = class_names_of(table.y)
        if len(class_names) < 2:
            raise DataError(f"{path}: one class only ({class_names[0]!r}); a classification "
                            "needs 2 or more (regression targets: --task regression)")  # fmt: skip
        y = encode(table.y, class_names, str(path))
    else:
        y = regression_targets(table.y, str(path))
    X = table.X.reshape(len(table.X), -1)
    if val is None:
        fraction = DEFAULT_VAL_SPLIT if val_split is None else val_split
        train, held = stratified_split(None if class_names is None else y, len(X), fraction, seed)
        if held.size == 0:
            raise DataError(_too_few(path, table.y, class_names, len(X), fraction))
        X, X_val, y, y_val = X[train], X[held], y[train], y[held]
        how = "stratified, " if class_names is not None else ""
        validation = f"{fraction:g} of {path} held out ({how}seed {seed})"
    else:
        fraction = None
        assert val.y is not None
        X_val = val.X.reshape(len(val.X), -1)
        if class_names is None:
            y_val = regression_targets(val.y, val.source)
        else:
            _check_one_label_a_sample(val)
            y_val = encode(val.y, class_names, val.source)
        validation = val.source
        if y_val.ndim == 2 and y_val.shape[1] != y.shape[1]:
            raise DataError(f"{val.source}: {y_val.shape[1]} targets a sample, {path} has "
                            f"{y.shape[1]}")  # fmt: skip
    scaler = None if scale == "none" else Scaler.fit(scale, X)
    files = {**table.files, **({} if val is None else val.files)}
    description = Description(
        feature_names=table.feature_names, class_names=class_names, task=task,
        source=table.source, input_shape=tuple(table.X.shape[1:]), scaler=scaler,
        files=files, validation=validation, val_split=fraction, target=target,
        pixel_max=table.pixel_max,
    )  # fmt: skip
    return Data(_inputs(X, scaler), y, _inputs(X_val, scaler), y_val, description)


def summary(description: Description, y: np.ndarray, n_val: int, inferred: bool = True) -> str:
    """One line of what the data are (printed as a run starts): the task and its classes or
    target range, the training, validation and feature counts; for whole-number float
    targets with few values taken as a regression (``inferred``), how to classify them."""
    n, width = len(y), len(description.feature_names)
    counts = f"{n} training and {n_val} validation samples, {width} feature{'s' * (width != 1)}"
    if description.class_names is not None:
        names = description.class_names
        listed = ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")
        return f"data: classification of {len(names)} classes ({listed}); {counts}"
    outputs = y.shape[1] if y.ndim == 2 else 1
    what = "a target" if outputs == 1 else f"{outputs} targets"
    line = f"data: regression of {what} in [{float(y.min()):.4g}, {float(y.max()):.4g}]; {counts}"
    if inferred and np.all(y == np.round(y)) and len(np.unique(y)) <= 20:
        line += " (whole-number targets: --task classification for classes)"
    return line


def _too_few(
    path: Any, y: np.ndarray, class_names: list[str] | None, n: int, fraction: float
) -> str:
    """Why no row could be held out for validation."""
    if class_names is None:
        return (f"{path}: {n} samples are too few to hold out {fraction:g} for validation; add "
                "samples or pass --val-data")  # fmt: skip
    least = max(2, math.floor(0.5 / fraction) + 1)  # (round(k * fraction) > 0 from k = least)
    numbers = _as_numbers(y) if y.dtype.kind in "US" else y
    integers = numbers is not None and numbers.dtype.kind in "biu"
    hint = "add samples or pass --val-data"
    if integers:
        hint = "integer targets: pass --task regression?"
    return (f"{path}: every one of its {len(class_names)} classes has fewer than {least} "
            f"samples, too few to hold out {fraction:g} of any for validation; {hint}")  # fmt: skip


def check_settings(
    *,
    val_data: Any = None,
    val_labels: Any = None,
    val_split: float | None = None,
    scale: str = "none",
    task: str | None = None,
    target: str | None = None,
    labels: Any = None,
) -> None:
    """A ``DataUsageError`` for settings of data from files that cannot work, whatever the
    files hold (``Config`` checks its settings with it too)."""
    if scale not in SCALES:
        raise DataUsageError(f"scale: unknown scaling {scale!r}; valid: {', '.join(SCALES)}")
    if task is not None and task not in TASKS:
        raise DataUsageError(f"task: unknown task {task!r}; valid: {', '.join(TASKS)}")
    if val_split is not None and not (math.isfinite(val_split) and 0 < val_split < 1):
        raise DataUsageError(f"val_split: must be a fraction in (0, 1), got {val_split}")
    if val_split is not None and val_data is not None:
        raise DataUsageError(
            f"val_split and val_data: {val_split:g} of the training rows, or the validation "
            f"set {str(val_data)!r}; pass one of them"
        )
    if val_labels is not None and val_data is None:
        raise DataUsageError("val_labels: the targets of val_data (--val-data), not given")
    if target is not None and labels is not None:
        raise DataUsageError(
            "target and labels: target names a table's label column, labels the targets' "
            "file of an .npy or IDX file; pass the one your data takes"
        )


def _check_one_label_a_sample(table: Table) -> None:
    assert table.y is not None
    if table.y.ndim != 1:
        raise DataError(
            f"{table.labels or table.source}: targets of shape {table.y.shape}; a "
            "classification takes one label a sample, (samples,) or (samples, 1) (several "
            "float outputs a sample: --task regression)"
        )


def _inputs(X: np.ndarray, scaler: Scaler | None) -> np.ndarray:
    return X.astype(np.float32) if scaler is None else scaler.apply(X)


# --- prediction inputs ----------------------------------------------------------------------


class Inputs(NamedTuple):
    """What ``read_inputs`` returns: ``X`` as the model takes it, the file of each row
    (``rows``: images; else None) and the columns of a table left out (``ignored``: neither
    features nor the target)."""

    X: np.ndarray
    rows: list[str] | None
    ignored: list[str]


def read_inputs(
    path: str | os.PathLike[str], description: Description, where: str | None = None
) -> Inputs:
    """The raw inputs in ``path`` as the model takes them (``prepare_inputs``), and for an
    image folder or image the name of each row's file: a table's feature columns by name
    (the others, the target column among them, are not read), an .npy or .npz (``X``,
    ``X_test``, ``X_val``, or its one array), IDX images, a folder of images (flat, or
    root/<class>/*) or one image. ``where`` names it in messages (``--input PATH``)."""
    path = Path(path)
    where = where or f"--input {path}"
    if not path.exists():
        raise DataError(f"{where}: no such file or folder")
    kind = kind_of(path)
    names, ignored = None, list[str]()
    if kind == "table" or kind == "parquet":
        X, ignored = _table_inputs(path, kind, description)
    elif kind == "npy":
        X = _read_npy(path, where=where)
    elif kind == "npz":
        X = _npz_inputs(path)
    elif kind == "idx":
        X = read_idx(path)
    else:
        files = [path] if kind == "image" else _image_files(path)
        root = path.parent if kind == "image" else path
        if not files and kind == "images":
            subfolders = sorted(p for p in path.iterdir() if p.is_dir())
            files = [f for folder in subfolders for f in _image_files(folder)]
        if not files:
            raise DataError(f"{where}: no images in it, nor in its subfolders")
        X = read_images(files, str(path))
        names = [str(f.relative_to(root)) for f in files]
    return Inputs(prepare_inputs(X, description, where), names, ignored)


def prepare_inputs(X: Any, description: Description, where: str = "inputs") -> np.ndarray:
    """Raw inputs ``X`` as the model described by ``description`` takes them: one sample
    or several, of the training samples' shape (or flat rows of as many values); uint8
    pixels divided as the training images were (``pixel_max``); scaled by the description's
    scaler; float32 (samples, features). A ``DataError`` naming ``where`` for inputs that
    are not finite numbers or of another shape."""
    X = np.asarray(X)
    _check_real(X.dtype, where)
    shape = description.input_shape
    if shape == (1,) and X.ndim == 1:  # (one feature: a 1-D array is one value a sample)
        X = X[:, None]
    elif X.shape == shape:  # (one sample)
        X = X[None]
    width = math.prod(shape)
    if X.ndim < 1 or (X.shape[1:] != shape and not (X.ndim == 2 and X.shape[1] == width)):
        if len(shape) == 1:
            names = description.feature_names
            listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            takes = f"{width} feature{'s' * (width != 1)} ({listed})"
        else:
            takes = f"{shape} (or flat rows of {width} values)"
        raise DataError(f"{where}: samples of shape {tuple(X.shape[1:])}; the model takes "
                        f"{takes}, as in {description.source}")  # fmt: skip
    _check_finite(X, where)
    if X.dtype == np.uint8 and description.pixel_max is not None:
        X = X.astype(np.float64) / description.pixel_max  # (as the training images were)
    return _inputs(X.reshape(len(X), -1), description.scaler)


def _table_inputs(path: Path, kind: str, description: Description) -> tuple[np.ndarray, list[str]]:
    """A table's feature columns, in the model's order, and the other columns but the
    target (not read)."""
    columns = _columns(path, kind)
    features = description.feature_names
    missing = [name for name in features if name not in columns]
    if missing:
        raise DataError(f"{path}: no column(s) {', '.join(map(repr, missing))}; the model takes "
                        f"{', '.join(features)}")  # fmt: skip
    read = _read_table if kind == "table" else _read_parquet
    table = read(path, None, only=features)
    ignored = [name for name in columns if name not in features and name != description.target]
    return table.X, ignored


def _npz_inputs(path: Path) -> np.ndarray:
    with contextlib.ExitStack() as stack:
        try:
            archive = stack.enter_context(np.load(path, allow_pickle=False))
        except (OSError, ValueError, EOFError) as e:
            raise DataError(f"{path}: not a readable .npz archive ({e})") from None
        for name in ("X", "X_test", "X_val"):
            if name in archive.files:
                X = archive[name]
                break
        else:
            if len(archive.files) != 1:
                raise DataError(f"{path}: expected an array X (or X_test, X_val, or one array "
                                f"alone); it holds {', '.join(archive.files)}")  # fmt: skip
            X = archive[archive.files[0]]
    _check_numbers(X, str(path), "X")
    _check_finite(X, str(path))
    return np.asarray(X)
