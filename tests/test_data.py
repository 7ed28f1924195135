"""``backprop_gpu.data``: the loaders of the user's own data files, their labels, splits and
scaling, and a clear ``DataError`` (or ``DataUsageError``) for each kind of bad input.

The IDX tests read files written here, byte by byte, to the format's spec (and the example
files ``examples/data/make_examples.py`` writes the same way): the real MNIST cannot be
downloaded where these tests run.
"""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from backprop_gpu import data
from backprop_gpu.data import DataError, DataUsageError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
IRIS = EXAMPLES / "iris-like.csv"


def make_examples() -> object:
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def csv_rows(path: Path, delimiter: str = ",") -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f, delimiter=delimiter))


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- the example files ----------------------------------------------------------------------


def test_the_example_files_are_what_their_script_writes(tmp_path: Path) -> None:
    make_examples().main(tmp_path)  # type: ignore[attr-defined]
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(EXAMPLES) for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix != ".py"
    )
    assert written == committed
    for name in written:
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
    assert sum((EXAMPLES / name).stat().st_size for name in written) < 40_000


# --- CSV and TSV ----------------------------------------------------------------------------


def test_csv_string_labels_sorted_and_every_row_kept_once() -> None:
    loaded = data.load(IRIS, target="species")
    info = loaded.description
    assert info.class_names == ["setosa", "versicolor", "virginica"]
    assert info.task == "classification"
    assert info.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert info.input_shape == (4,) and info.scaler is None and info.val_split == 0.2
    assert loaded.X.dtype == np.float32 and loaded.y.dtype == np.int64
    # train and validation together are the file's rows, each once, with its own label
    rows = csv_rows(IRIS)
    expected = sorted(
        (*(float(r[c]) for c in info.feature_names), info.class_names.index(r["species"]))
        for r in rows
    )
    X = np.concatenate([loaded.X, loaded.X_val]).astype(np.float64)
    y = np.concatenate([loaded.y, loaded.y_val])
    got = sorted((*map(float, np.float32(x)), int(label)) for x, label in zip(X, y, strict=True))
    assert got == sorted((*map(float, np.float32(e[:4])), e[4]) for e in expected)
    assert len(rows) == 120


def test_the_split_is_stratified_seeded_and_disjoint() -> None:
    a = data.load(IRIS, target="species", seed=3)
    assert np.bincount(a.y).tolist() == [32, 32, 32]  # 40 a class, 20 % = 8 held out of each
    assert np.bincount(a.y_val).tolist() == [8, 8, 8]
    b = data.load(IRIS, target="species", seed=3)
    c = data.load(IRIS, target="species", seed=4)
    assert np.array_equal(a.X_val, b.X_val) and not np.array_equal(a.X_val, c.X_val)
    train, held = data.stratified_split(np.repeat(np.arange(3), [10, 5, 1]), 16, 0.5, 0)
    assert sorted([*train, *held]) == list(range(16))
    y = np.repeat(np.arange(3), [10, 5, 1])
    assert np.bincount(y[held], minlength=3).tolist() == [5, 2, 0]  # round(2.5) = 2; one stays
    assert data.load(IRIS, target="species", val_split=0.5).X_val.shape == (60, 4)


@pytest.mark.parametrize("kind", ["standard", "minmax"])
def test_scaling_is_fitted_on_the_training_rows_only(kind: str) -> None:
    raw = data.load(IRIS, target="species", seed=1)
    scaled = data.load(IRIS, target="species", seed=1, scale=kind)
    X, X_val = raw.X.astype(np.float64), raw.X_val.astype(np.float64)
    if kind == "standard":
        offset, scale = X.mean(0), X.std(0)
    else:
        offset, scale = X.min(0), X.max(0) - X.min(0)
    np.testing.assert_allclose(scaled.X, (X - offset) / scale, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(scaled.X_val, (X_val - offset) / scale, rtol=1e-6, atol=1e-6)
    if kind == "minmax":
        assert scaled.X.min() == 0 and scaled.X.max() == 1
    saver = scaled.description.scaler
    assert saver is not None
    back = data.Scaler.from_dict(json.loads(json.dumps(saver.as_dict())))
    assert np.array_equal(back.offset, saver.offset) and np.array_equal(back.scale, saver.scale)
    table = data.read(IRIS, target="species").X  # (float64, as training read them)
    assert np.array_equal(back.apply(table), saver.apply(table))


def test_a_constant_feature_is_scaled_by_one(tmp_path: Path) -> None:
    path = write(tmp_path / "c.csv", "a,b,label\n" + "".join(f"{i},5,{i % 2}\n" for i in range(10)))
    loaded = data.load(path, target="label", scale="standard")
    assert np.all(loaded.X[:, 1] == 0) and np.all(np.isfinite(loaded.X))


def test_tsv_float_targets_are_regression() -> None:
    path = EXAMPLES / "wave.tsv"
    loaded = data.load(path, target="y", val_split=0.1)
    info = loaded.description
    assert info.task == "regression" and info.class_names is None and info.n_outputs is None
    assert loaded.y.shape == (135, 1) and loaded.y.dtype == np.float32
    rows = csv_rows(path, "\t")
    by_input = {(float(r["x1"]), float(r["x2"])): float(r["y"]) for r in rows}
    for x, target in zip(loaded.X_val, loaded.y_val, strict=True):
        key = min(by_input, key=lambda k: abs(k[0] - x[0]) + abs(k[1] - x[1]))
        assert target[0] == np.float32(by_input[key])
    np.testing.assert_allclose(loaded.y[:, 0], np.sin(loaded.X[:, 0]) + loaded.X[:, 1] / 2,
                               atol=1e-3)  # fmt: skip


def test_integer_labels_classify_and_the_task_can_be_overridden(tmp_path: Path) -> None:
    path = write(
        tmp_path / "t.csv", "x,k\n" + "".join(f"{i / 10},{i % 3 * 5}\n" for i in range(30))
    )
    loaded = data.load(path, target="k")
    assert loaded.description.class_names == ["0", "5", "10"]  # numerical order, not text's
    assert loaded.y.max() == 2
    as_numbers = data.load(path, target="k", task="regression")
    assert as_numbers.description.task == "regression"
    assert sorted(set(np.concatenate([as_numbers.y, as_numbers.y_val]).ravel())) == [0, 5, 10]
    floats = write(tmp_path / "f.csv", "x,v\n" + "".join(f"{i},{i % 2}.5\n" for i in range(10)))
    assert data.load(floats, target="v").description.task == "regression"
    forced = data.load(floats, target="v", task="classification")
    assert forced.description.class_names == ["0.5", "1.5"]
    with pytest.raises(
        DataUsageError, match="task regression needs numeric targets, got 'versicolor'"
    ):
        data.load(IRIS, target="species", task="regression")


def test_a_validation_file_and_quoted_cells(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", 'x,"y y",c\n1,2,a\n3,4,b\n5,6,a\n7,8,b\n')
    val = write(tmp_path / "b.csv", 'x,"y y",c\n9,10,b\n"11",12,a\n')
    loaded = data.load(train, target="c", val_data=val)
    assert loaded.X.tolist() == [[1, 2], [3, 4], [5, 6], [7, 8]]  # no split: all in training
    assert loaded.X_val.tolist() == [[9, 10], [11, 12]] and loaded.y_val.tolist() == [1, 0]
    assert loaded.description.feature_names == ["x", "y y"]
    assert loaded.description.val_split is None
    assert set(loaded.description.files) == {str(train), str(val)}


def test_inputs_to_predict_are_read_by_column_name(tmp_path: Path) -> None:
    loaded = data.load(IRIS, target="species", scale="standard")
    info = loaded.description
    rows = csv_rows(EXAMPLES / "iris-like-new.csv")
    X, names, _ = data.read_inputs(EXAMPLES / "iris-like-new.csv", info)
    assert names is None and X.shape == (6, 4)
    raw = np.array([[float(r[c]) for c in info.feature_names] for r in rows])
    assert info.scaler is not None
    np.testing.assert_array_equal(X, info.scaler.apply(raw))
    # columns in another order, the target column still there: the same inputs
    shuffled = tmp_path / "s.csv"
    order = ["species", "petal_width", "sepal_length", "petal_length", "sepal_width"]
    with shuffled.open("w", newline="") as f:
        writer = csv.DictWriter(f, order)
        writer.writeheader()
        writer.writerows({**r, "species": "?"} for r in rows)
    np.testing.assert_array_equal(data.read_inputs(shuffled, info)[0], X)
    np.save(tmp_path / "raw.npy", raw)
    np.testing.assert_array_equal(data.read_inputs(tmp_path / "raw.npy", info)[0], X)
    with pytest.raises(DataError, match=r"no column\(s\) 'petal_width'; the model takes"):
        data.read_inputs(write(tmp_path / "m.csv", "sepal_length,sepal_width,petal_length\n"), info)


def test_parquet(tmp_path: Path) -> None:
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pandas.DataFrame({"a": [0.5, 1.5, 2.5, 3.5] * 5, "b": np.arange(20),
                              "label": ["cat", "dog"] * 10})  # fmt: skip
    frame.to_parquet(tmp_path / "t.parquet")
    loaded = data.load(tmp_path / "t.parquet", target="label", val_split=0.2)
    assert loaded.description.class_names == ["cat", "dog"]
    X = np.concatenate([loaded.X, loaded.X_val])
    y = np.concatenate([loaded.y, loaded.y_val])
    assert sorted(map(tuple, np.column_stack([X, y]).tolist())) == sorted(
        (a, float(b), float(label == "dog")) for a, b, label in frame.itertuples(index=False)
    )
    frame.loc[3, "a"] = np.nan
    frame.to_parquet(tmp_path / "nan.parquet")
    with pytest.raises(DataError, match=r"nan.parquet: row 3, column 'a': nan is not a finite"):
        data.load(tmp_path / "nan.parquet", target="label")
    frame["a"] = "text"
    frame.to_parquet(tmp_path / "s.parquet")
    with pytest.raises(DataError, match=r"column 'a' holds .* values, not numbers"):
        data.load(tmp_path / "s.parquet", target="label")


def test_parquet_without_pandas_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # (import pandas raises ImportError)
    (tmp_path / "t.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"install the parquet extra \(pip install '.\[parquet"):
        data.load(tmp_path / "t.parquet", target="label")


# --- NumPy files ----------------------------------------------------------------------------


def test_npz_with_its_validation_set() -> None:
    loaded = data.load(EXAMPLES / "blobs.npz")
    with np.load(EXAMPLES / "blobs.npz") as archive:
        assert np.array_equal(loaded.X, archive["X_train"])
        assert np.array_equal(loaded.y_val, archive["y_val"])
    assert loaded.description.class_names == ["0", "1", "2", "3"]
    assert loaded.description.val_split is None
    with pytest.raises(DataUsageError, match=r"val_split: 0.3 and a validation set"):
        data.load(EXAMPLES / "blobs.npz", val_split=0.3)


def test_npz_x_y_of_images_and_npy_pairs(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.random((30, 3, 2))
    y = np.arange(30) % 3
    np.savez(tmp_path / "d.npz", X=X, y=y.reshape(-1, 1))
    loaded = data.load(tmp_path / "d.npz", seed=2)
    assert loaded.X.shape == (24, 6) and loaded.description.input_shape == (3, 2)
    assert loaded.description.feature_names[:3] == ["pixel_0_0", "pixel_0_1", "pixel_1_0"]
    np.save(tmp_path / "X.npy", X.reshape(30, 6))
    np.save(tmp_path / "y.npy", y)
    pair = data.load(tmp_path / "X.npy", labels=tmp_path / "y.npy", seed=2)
    assert np.array_equal(pair.X, loaded.X) and np.array_equal(pair.y, loaded.y)
    assert np.array_equal(pair.X_val, X.reshape(30, 6)[np.isin(np.arange(30), _held(y, 2))]
                          .astype(np.float32))  # fmt: skip


def _held(y: np.ndarray, seed: int) -> np.ndarray:
    return data.stratified_split(y, len(y), 0.2, seed)[1]


# --- IDX ------------------------------------------------------------------------------------


def test_idx_read_by_the_spec(tmp_path: Path) -> None:
    """Files written here to the IDX spec: 00 00, type code, dimensions; big-endian int32
    sizes; the values in C order, big-endian (the real MNIST cannot be downloaded here)."""
    images = bytes([0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3, *range(12)])
    (tmp_path / "images-idx3-ubyte").write_bytes(images)
    assert data.read_idx(tmp_path / "images-idx3-ubyte").tolist() == [
        [[0, 1, 2], [3, 4, 5]], [[6, 7, 8], [9, 10, 11]]
    ]  # fmt: skip
    (tmp_path / "g-idx3-ubyte.gz").write_bytes(gzip.compress(images))
    assert np.array_equal(
        data.read_idx(tmp_path / "g-idx3-ubyte.gz"), np.arange(12).reshape(2, 2, 3)
    )
    shorts = bytes([0, 0, 0x0B, 1, 0, 0, 0, 2]) + struct.pack(">hh", -2, 513)
    (tmp_path / "s.idx").write_bytes(shorts)
    assert data.read_idx(tmp_path / "s.idx").tolist() == [-2, 513]
    floats = bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + struct.pack(">f", 1.5)
    (tmp_path / "f.idx").write_bytes(floats)
    assert data.read_idx(tmp_path / "f.idx").tolist() == [1.5]
    labels = bytes([0, 0, 0x08, 1, 0, 0, 0, 2, 7, 3])
    (tmp_path / "labels-idx1-ubyte").write_bytes(labels)
    loaded = data.load(tmp_path / "images-idx3-ubyte", labels=tmp_path / "labels-idx1-ubyte",
                       val_data=tmp_path / "images-idx3-ubyte",
                       val_labels=tmp_path / "labels-idx1-ubyte")  # fmt: skip
    assert loaded.description.class_names == ["3", "7"] and loaded.y.tolist() == [1, 0]
    np.testing.assert_array_equal(loaded.X, np.arange(12, dtype=np.float32).reshape(2, 6) / 255)


def test_the_example_idx_files() -> None:
    maker = make_examples()
    images, labels = maker.bar_images(60, 3)  # type: ignore[attr-defined]
    read = data.read_idx(EXAMPLES / "bars-train-images-idx3-ubyte.gz")
    assert read.dtype == np.uint8 and np.array_equal(read, images)
    assert np.array_equal(data.read_idx(EXAMPLES / "bars-train-labels-idx1-ubyte.gz"), labels)


# --- images ---------------------------------------------------------------------------------


def test_image_folder_classes_and_pixels() -> None:
    pytest.importorskip("PIL")
    images, labels = make_examples().bar_images(48, 5)  # type: ignore[attr-defined]
    loaded = data.load(EXAMPLES / "shapes", val_split=0.25)
    info = loaded.description
    assert info.class_names == ["diagonal", "horizontal", "vertical"]
    assert info.input_shape == (8, 8) and loaded.X.shape == (36, 64)
    table = data.read(EXAMPLES / "shapes")
    assert table.row_names is not None
    for name, pixels in zip(table.row_names, table.X, strict=True):  # file i is image i
        i = int(Path(name).stem)
        assert np.array_equal(pixels, images[i] / 255.0)
        assert Path(name).parent.name == ("horizontal", "vertical", "diagonal")[labels[i]]
    X, names, _ = data.read_inputs(EXAMPLES / "shapes" / "vertical" / "001.png", info)
    assert names == ["001.png"] and np.array_equal(X, (images[1] / 255.0).reshape(1, 64)
                                                   .astype(np.float32))  # fmt: skip


def test_images_without_pillow_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"install the images extra \(pip install '.\[images"):
        data.load(EXAMPLES / "shapes")


# --- bad input ------------------------------------------------------------------------------


def test_a_missing_target_column_lists_the_columns(tmp_path: Path) -> None:
    columns = "sepal_length, sepal_width, petal_length, petal_width, species"
    with pytest.raises(DataError, match=rf"csv: no column 'label'; its columns: {columns}$"):
        data.load(IRIS, target="label")
    with pytest.raises(DataUsageError, match=r"name the table's target column \(--target "
                       r"COLUMN\); its columns: sepal_length, .*, species"):  # fmt: skip
        data.load(IRIS)


def test_a_non_numeric_cell_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", 'a,b,label\n1,2,x\n3,"4\nfour",y\n5,abc,x\n')
    with pytest.raises(DataError, match=r"bad.csv: line 4, column 'b': '4\\nfour' is not a num"):
        data.load(path, target="label")  # (a quoted cell spans lines 3 and 4: line_num)
    path = write(tmp_path / "e.csv", "a,b,label\n1,2,x\n3,,y\n")
    with pytest.raises(DataError, match=r"e.csv: line 3, column 'b': empty cell"):
        data.load(path, target="label")
    path = write(tmp_path / "l.csv", "a,b,label\n1,2,x\n3,4,\n")
    with pytest.raises(DataError, match=r"l.csv: line 3, column 'label': empty cell"):
        data.load(path, target="label")


@pytest.mark.parametrize("cell", ["nan", "inf", "-Infinity"])
def test_nan_and_inf_cells_are_refused(tmp_path: Path, cell: str) -> None:
    path = write(tmp_path / "n.csv", f"a,b,label\n1,2,x\n3,{cell},y\n")
    with pytest.raises(DataError, match=rf"n.csv: line 3, column 'b': '{cell}' is not a finite"):
        data.load(path, target="label")


def test_nan_in_arrays_is_refused(tmp_path: Path) -> None:
    X = np.ones((10, 2))
    X[7, 1] = np.inf
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    with pytest.raises(DataError, match=r"X.npy: holds inf at index \[7, 1\]"):
        data.load(tmp_path / "X.npy", labels=tmp_path / "y.npy")
    np.savez(tmp_path / "d.npz", X=np.ones((4, 2)), y=np.array([0.0, np.nan, 1, 2]))
    with pytest.raises(DataError, match=r"d.npz y: holds nan at index \[1\]"):
        data.load(tmp_path / "d.npz")


def test_ragged_rows_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"r.csv: line 3 has 2 cells, the header has 3 columns"):
        data.load(write(tmp_path / "r.csv", "a,b,label\n1,2,x\n3,y\n"), target="label")
    with pytest.raises(DataError, match=r"empty.csv: empty file \(expected a header line"):
        data.load(write(tmp_path / "empty.csv", ""), target="label")
    with pytest.raises(DataError, match=r"h.csv: no data rows after the header line"):
        data.load(write(tmp_path / "h.csv", "a,label\n\n"), target="label")
    with pytest.raises(DataError, match=r"only.csv: no feature columns beside the target"):
        data.load(write(tmp_path / "only.csv", "label\nx\ny\n"), target="label")
    (tmp_path / "z.npz").write_bytes(b"")
    with pytest.raises(DataError, match=r"z.npz: not a readable .npz archive"):
        data.load(tmp_path / "z.npz")
    (tmp_path / "e-idx3-ubyte").write_bytes(b"")
    with pytest.raises(DataError, match=r"0 bytes, too short for an IDX file's header"):
        data.load(tmp_path / "e-idx3-ubyte", labels=tmp_path / "e-idx3-ubyte")


def test_a_class_only_in_validation(tmp_path: Path) -> None:
    train = write(tmp_path / "a.csv", "x,c\n1,cat\n2,dog\n3,cat\n")
    val = write(tmp_path / "b.csv", "x,c\n4,cat\n5,bird\n")
    with pytest.raises(DataError, match=r"b.csv: class\(es\) 'bird' not in the training data "
                       r"\(its classes: cat, dog\)"):  # fmt: skip
        data.load(train, target="c", val_data=val)


def test_wrong_idx_files(tmp_path: Path) -> None:
    (tmp_path / "bad-idx3-ubyte").write_bytes(b"\x1f\x00\x08\x03" + bytes(12))
    with pytest.raises(DataError, match=r"not an IDX file \(magic number 1f 00 08 03; expected"):
        data.read_idx(tmp_path / "bad-idx3-ubyte")
    (tmp_path / "t-idx1-ubyte").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(DataError, match=r"magic number 00 00 07 01"):
        data.read_idx(tmp_path / "t-idx1-ubyte")
    (tmp_path / "cut-idx1-ubyte").write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 5, 6]))
    with pytest.raises(DataError, match=r"10 bytes, but its header says \(3,\) values of 1"):
        data.read_idx(tmp_path / "cut-idx1-ubyte")
    (tmp_path / "z-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(20))[:-6])
    with pytest.raises(DataError, match=r"a damaged gzip file"):
        data.read_idx(tmp_path / "z-idx1-ubyte.gz")
    images = tmp_path / "i-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 1, 2]))
    labels = tmp_path / "l-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 0, 1, 0]))
    with pytest.raises(DataError, match=r"l-idx1-ubyte: 3 targets for the 2 samples of"):
        data.load(images, labels=labels)
    with pytest.raises(DataError, match=r"an array of shape \(3,\); expected \(samples, feat"):
        data.load(labels, labels=images)  # (the two files swapped)
    with pytest.raises(DataUsageError, match=r"an IDX file holds the inputs only; pass the "):
        data.load(images)


def test_images_of_mixed_sizes_or_modes(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    for name, size, mode in (("a/1.png", (4, 4), "L"), ("a/2.png", (4, 4), "L"),
                             ("b/1.png", (5, 4), "L")):  # fmt: skip
        (tmp_path / "sizes" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, size).save(tmp_path / "sizes" / name)
    with pytest.raises(DataError, match=r"b/1.png has size 5x4, .*a/1.png 4x4; the images of"):
        data.load(tmp_path / "sizes")
    for name, mode in (("a/1.png", "L"), ("b/1.png", "RGB")):
        (tmp_path / "modes" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (4, 4)).save(tmp_path / "modes" / name)
    with pytest.raises(DataError, match=r"b/1.png has mode RGB, .*a/1.png mode L"):
        data.load(tmp_path / "modes")
    (tmp_path / "odd" / "a").mkdir(parents=True)
    Image.new("I;16", (4, 4)).save(tmp_path / "odd" / "a" / "1.png")
    with pytest.raises(DataError, match=r"1.png: image mode I;16; expected 8-bit L, LA, RGB"):
        data.load(tmp_path / "odd")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty/a: no images"):
        data.load(tmp_path / "empty")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match=r"flat: no class folders in it"):
        data.load(tmp_path / "flat")
    (tmp_path / "broken" / "a").mkdir(parents=True)
    (tmp_path / "broken" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1.png: not a readable image"):
        data.load(tmp_path / "broken")


def test_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data nope.csv: no such file or folder"):
        data.load("nope.csv", target="x")
    with pytest.raises(DataUsageError, match=r"unknown kind of data file \(.json\); expected"):
        data.load(write(tmp_path / "a.json", "{}"))
    with pytest.raises(DataUsageError, match=r"an .npy holds the inputs only; pass the targets"):
        np.save(tmp_path / "X.npy", np.ones((3, 2)))
        data.load(tmp_path / "X.npy")
    with pytest.raises(DataUsageError, match=r"a gzipped .csv file; only IDX files are read gz"):
        data.load(write(tmp_path / "t.csv.gz", ""), target="x")
    with pytest.raises(DataUsageError, match=r"target names a column of a CSV"):
        data.load(EXAMPLES / "blobs.npz", target="y")
    with pytest.raises(DataUsageError, match=r"scale: unknown scaling 'z'; valid: none, stan"):
        data.load(IRIS, target="species", scale="z")
    with pytest.raises(DataUsageError, match=r"task: unknown task 'clustering'"):
        data.load(IRIS, target="species", task="clustering")
    with pytest.raises(DataUsageError, match=r"val_split: must be a fraction in \(0, 1\), got 1"):
        data.load(IRIS, target="species", val_split=1.0)
    with pytest.raises(
        DataError,
        match=r"two.csv: every one of its 2 classes has fewer than 3 "
        "samples, too few to hold out 0.2 of any for validation; add samples or",
    ):
        data.load(write(tmp_path / "two.csv", "a,c\n1,x\n2,y\n"), target="c")
    with pytest.raises(DataError, match=r"wave.tsv: 2 samples are too few to hold out 0.2 for"):
        data.load(write(tmp_path / "wave.tsv", "a\ty\n1\t0.5\n2\t1.5\n"), target="y")


def test_file_hash_follows_the_contents(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", "a,c\n1,x\n")
    first = data.file_hash(path)
    assert first == data.file_hash(write(tmp_path / "b.csv", "a,c\n1,x\n"))
    assert data.file_hash(write(path, "a,c\n2,x\n")) != first
    folder = data.file_hash(EXAMPLES / "shapes")
    assert len(folder) == 64 and folder != data.file_hash(EXAMPLES / "shapes" / "vertical")


# --- targets: not finite, beyond int64, of several dimensions --------------------------------


@pytest.mark.parametrize(
    ("targets", "task", "bad"),
    [
        (["0.5", "1.5", "nan"], None, "nan"),  # float targets: a regression
        (["0", "1", "inf"], None, "inf"),  # integer labels and one inf
        (["0", "1", "-Infinity"], "classification", "-Infinity"),  # not a class named -inf
        (["a", "b", "NaN"], None, "NaN"),  # text labels
    ],
)
def test_a_target_that_is_not_finite_names_its_line(
    tmp_path: Path, targets: list[str], task: str | None, bad: str
) -> None:
    rows = "".join(f"{i},{targets[i % 2]}\n" for i in range(20))
    path = write(tmp_path / "t.csv", f"x,y\n{rows}7,{bad}\n8,{targets[0]}\n")
    with pytest.raises(DataError, match=rf"t.csv: line 22, column 'y': '{bad}' is not a finite"):
        data.load(path, target="y", task=task)


def test_a_target_that_is_not_finite_in_arrays_and_parquet(tmp_path: Path) -> None:
    np.savez(tmp_path / "s.npz", X=np.ones((4, 2)), y=np.array(["a", "b", "inf", "a"]))
    with pytest.raises(DataError, match=r"s.npz y: holds 'inf' at index \[2\]; every value"):
        data.load(tmp_path / "s.npz")
    pandas = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    frame = pandas.DataFrame({"a": np.arange(6.0), "y": [0.5, 1.0, np.inf, 2.0, 3.0, 1.0]})
    frame.to_parquet(tmp_path / "inf.parquet")
    with pytest.raises(DataError, match=r"inf.parquet: row 2, column 'y': inf is not a finite"):
        data.load(tmp_path / "inf.parquet", target="y")


def test_standard_scaling_of_a_constant_column_of_tenths(tmp_path: Path) -> None:
    """0.1 is no binary fraction: the mean of 100 of them differs from 0.1 by float noise
    and their std is ~1e-17, not 0; the column is constant all the same, scaled by 1."""
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=100), np.full(100, 0.1)])
    assert X[:, 1].std() > 0  # (the noise the scaler must not divide by)
    np.savez(tmp_path / "c.npz", X=X, y=np.arange(100) % 2)
    for kind in ("standard", "minmax"):
        loaded = data.load(tmp_path / "c.npz", scale=kind)
        scaler = loaded.description.scaler
        assert scaler is not None and scaler.scale[1] == 1.0 and scaler.offset[1] == 0.1
        assert np.all(loaded.X[:, 1] == 0) and np.all(loaded.X_val[:, 1] == 0)
        assert scaler.apply(np.array([[0.0, 0.2]]))[0, 1] == np.float32(0.2 - 0.1)


def test_integer_labels_beyond_int64_are_text_labels(tmp_path: Path) -> None:
    big = [99999999999999999999, 100000000000000000000]
    rows = "".join(f"{i},{big[i % 2]}\n" for i in range(20))
    loaded = data.load(write(tmp_path / "b.csv", f"x,y\n{rows}"), target="y")
    assert loaded.description.task == "classification"
    assert sorted(loaded.description.class_names or []) == sorted(map(str, big))
    y = np.concatenate([loaded.y, loaded.y_val])
    names = loaded.description.class_names or []
    X = np.concatenate([loaded.X, loaded.X_val])[:, 0].astype(int)
    assert all(names[label] == str(big[x % 2]) for x, label in zip(X, y, strict=True))
    np.savez(tmp_path / "u.npz", X=np.ones((6, 1)), y=np.array([2**64 - 1, 2**64 - 2] * 3,
                                                                  dtype=np.uint64))  # fmt: skip
    assert data.load(tmp_path / "u.npz").description.class_names == [str(2**64 - 2), str(2**64 - 1)]


def test_labels_of_several_dimensions_do_not_classify(tmp_path: Path) -> None:
    images = tmp_path / "i-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2, *range(40)]))
    with pytest.raises(DataError, match=r"labels .*i-idx3-ubyte: targets of shape \(10, 2, 2\); "
                       r"a classification takes one label a sample"):  # fmt: skip
        data.load(images, labels=images)
    np.save(tmp_path / "X.npy", np.ones((10, 2)))
    np.save(tmp_path / "y.npy", np.arange(30).reshape(10, 3))
    with pytest.raises(DataError, match=r"labels .*y.npy: targets of shape \(10, 3\); a class"):
        data.load(tmp_path / "X.npy", labels=tmp_path / "y.npy")
    # several float outputs: a regression, as before
    np.save(tmp_path / "f.npy", np.arange(30.0).reshape(10, 3) / 7)
    assert data.load(tmp_path / "X.npy", labels=tmp_path / "f.npy").y.shape == (8, 3)


# --- prediction inputs: one way in -----------------------------------------------------------


def test_prediction_tables_ignore_the_target_and_other_columns(tmp_path: Path) -> None:
    """A table to predict on: its feature columns by name; the target column (blank: the
    labels are unknown) and columns the model never saw (an id, a note) are not read."""
    loaded = data.load(IRIS, target="species", scale="standard")
    info = loaded.description
    rows = csv_rows(EXAMPLES / "iris-like-new.csv")
    path = tmp_path / "p.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "species", *info.feature_names[::-1], "note"])
        writer.writeheader()
        writer.writerows({**r, "id": str(i), "species": "", "note": "x, y"}
                         for i, r in enumerate(rows))  # fmt: skip
    found = data.read_inputs(path, info)
    raw = np.array([[float(r[c]) for c in info.feature_names] for r in rows])
    assert info.scaler is not None
    np.testing.assert_array_equal(found.X, info.scaler.apply(raw))
    assert found.ignored == ["id", "note"] and found.rows is None


def test_raw_uint8_pixels_are_scaled_as_the_training_images_were(tmp_path: Path) -> None:
    """An IDX run given the same pixels as a uint8 .npy (or array) sees what it trained on:
    pixel / 255; floats are taken as already scaled."""
    images = tmp_path / "i-idx3-ubyte"
    pixels = np.arange(40, dtype=np.uint8).reshape(10, 2, 2) * 6
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2]) + pixels.tobytes())
    labels = tmp_path / "l-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10, *([0, 1] * 5)]))
    info = data.load(images, labels=labels, val_split=0.2).description
    expected = (pixels.reshape(10, 4) / 255.0).astype(np.float32)
    np.testing.assert_array_equal(data.read_inputs(images, info).X, expected)
    np.save(tmp_path / "raw.npy", pixels)
    np.testing.assert_array_equal(data.read_inputs(tmp_path / "raw.npy", info).X, expected)
    np.testing.assert_array_equal(data.prepare_inputs(pixels, info), expected)
    np.testing.assert_array_equal(data.prepare_inputs(pixels[3], info), expected[3:4])
    np.testing.assert_array_equal(data.prepare_inputs(pixels / 255.0, info), expected)
    saved = data.Description.from_dict(json.loads(json.dumps(info.as_dict())))
    np.testing.assert_array_equal(data.prepare_inputs(pixels, saved), expected)
    # a description saved before pixel_max was recorded (IDX and image runs divided by 255)
    old = {k: v for k, v in info.as_dict().items() if k != "pixel_max"}
    np.testing.assert_array_equal(data.prepare_inputs(pixels, data.Description.from_dict(old)),
                                  expected)  # fmt: skip
    folder = data.load(EXAMPLES / "shapes", val_split=0.25).description.as_dict()
    del folder["pixel_max"]
    assert data.Description.from_dict(folder).pixel_max == 255.0
    table = data.load(IRIS, target="species").description.as_dict()
    del table["pixel_max"]
    assert data.Description.from_dict(table).pixel_max is None


def test_prediction_inputs_of_another_shape_are_refused(tmp_path: Path) -> None:
    images = data.Description(["p"] * 192, ["a", "b"], "classification", "imgs", (8, 8, 3))
    ok = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    assert data.prepare_inputs(ok, images).shape == (2, 192)
    assert data.prepare_inputs(ok.reshape(2, 192), images).shape == (2, 192)  # flat rows
    with pytest.raises(DataError, match=r"inputs: samples of shape \(16, 12\); the model takes "
                       r"\(8, 8, 3\) \(or flat rows of 192 values\)"):  # fmt: skip
        data.prepare_inputs(np.zeros((2, 16, 12)), images)
    table = data.load(IRIS, target="species").description
    np.save(tmp_path / "five.npy", np.ones((3, 5)))
    said = r"--input .*five.npy: samples of shape \(5,\); the model takes 4 features \(sepal_l"
    with pytest.raises(DataError, match=said):
        data.read_inputs(tmp_path / "five.npy", table)


# --- what a newcomer's files hit -----------------------------------------------------------


def test_integer_targets_with_a_class_a_sample_suggest_a_regression(tmp_path: Path) -> None:
    rows = "".join(f"{i},{1000 + 7 * i}\n" for i in range(500))  # prices: each value once
    path = write(tmp_path / "prices.csv", f"size,price\n{rows}")
    with pytest.raises(DataError, match=r"prices.csv: every one of its 500 classes has fewer "
                       r"than 3 samples, too few to hold out 0.2 of any for validation; integer "
                       r"targets: pass --task regression\?"):  # fmt: skip
        data.load(path, target="price")
    assert data.load(path, target="price", task="regression").y.shape == (400, 1)


def test_one_class_is_no_classification(tmp_path: Path) -> None:
    path = write(tmp_path / "one.csv", "x,c\n" + "".join(f"{i},cat\n" for i in range(20)))
    with pytest.raises(DataError, match=r"one.csv: one class only \('cat'\); a classification "
                       r"needs 2 or more"):  # fmt: skip
        data.load(path, target="c")


def test_the_labels_flags_take_npy_or_idx_files(tmp_path: Path) -> None:
    images = tmp_path / "i-idx3-ubyte"
    images.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2, *range(40)]))
    labels = tmp_path / "l-idx1-ubyte"
    labels.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 10, *([0, 1] * 5)]))
    np.savez(tmp_path / "y.npz", y=np.arange(10) % 2)
    for name in ("y.npz", "y.csv"):
        (tmp_path / "y.csv").write_text("y\n" + "0\n1\n" * 5)
        with pytest.raises(DataUsageError, match=rf"labels .*{name}: --labels takes an .npy or "
                           r"an IDX file of the targets"):  # fmt: skip
            data.load(images, labels=tmp_path / name)
    with pytest.raises(DataError, match=r"val_labels .*nope: no such file"):
        data.load(images, labels=labels, val_data=images, val_labels=tmp_path / "nope")
    short = tmp_path / "s-idx1-ubyte"
    short.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 0, 1, 0, 1, 0]))
    with pytest.raises(DataError, match=r"val_labels .*s-idx1-ubyte: 5 targets for the 10"):
        data.load(images, labels=labels, val_data=images, val_labels=short)


def test_duplicate_column_names_are_refused(tmp_path: Path) -> None:
    for header in ("a,a,y", "a,y,y"):
        path = write(tmp_path / "d.csv", f"{header}\n1,2,3\n4,5,6\n")
        twice = "'a'" if header == "a,a,y" else "'y'"
        with pytest.raises(DataError, match=rf"d.csv: column name\(s\) {twice} appear more than "
                           "once"):  # fmt: skip
            data.load(path, target="y")


def test_csv_dialects_bom_crlf_spaces_and_tsv(tmp_path: Path) -> None:
    """Excel's BOM and CRLF line ends, spaces after the commas (quoted cells too), blank
    lines at the end, and a TSV: all read as the plain CSV."""
    rows = [(i / 4, i % 3, "ab"[i % 2]) for i in range(12)]
    plain = write(tmp_path / "p.csv", "a,b,c\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    expected = data.load(plain, target="c", val_split=0.25)
    variants = {
        "excel.csv": ("\ufeffa,b,c\r\n" + "".join(f"{a},{b},{c}\r\n" for a, b, c in rows)
                      + "\r\n\r\n"),
        "spaced.csv": "a, b, c\n" + "".join(f'{a}, "{b}", {c}\n' for a, b, c in rows),
        "tabs.tsv": "a\tb\tc\n" + "".join(f"{a}\t{b}\t{c}\n" for a, b, c in rows),
    }  # fmt: skip
    for name, text in variants.items():
        (tmp_path / name).write_bytes(text.encode())
        loaded = data.load(tmp_path / name, target="c", val_split=0.25)
        assert loaded.description.feature_names == ["a", "b"], name
        assert np.array_equal(loaded.X, expected.X) and np.array_equal(loaded.y, expected.y)
        assert np.array_equal(loaded.X_val, expected.X_val), name
    path = write(tmp_path / "eu.csv", "a;b;y\n1;2;3\n")
    with pytest.raises(DataError, match=r"no column 'y'; its columns: a;b;y \(one column: is "
                       r"the file delimited by ';'\? a .csv is read with ','"):  # fmt: skip
        data.load(path, target="y")


def test_palette_images_are_read_as_rgb(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    colours = [(255, 0, 0), (0, 0, 255)]
    for label, colour in zip("ab", colours, strict=True):
        (tmp_path / "pal" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (3, 2), colour).convert("P").save(
                tmp_path / "pal" / label / f"{i}.png"
            )
    loaded = data.load(tmp_path / "pal", val_split=0.25)
    assert loaded.description.input_shape == (2, 3, 3)
    X = np.concatenate([loaded.X, loaded.X_val]).reshape(-1, 6, 3)
    y = np.concatenate([loaded.y, loaded.y_val])
    for pixels, label in zip(X, y, strict=True):
        assert np.all(pixels == np.array(colours[label]) / 255.0)


def test_a_validation_set_of_another_kind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataUsageError, match=r"val_data .*blobs.npz: must be the same kind as "
                       r"--data \(a table\), not an .npz"):  # fmt: skip
        data.load(IRIS, target="species", val_data=EXAMPLES / "blobs.npz")


def test_a_table_read_a_block_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Converted block by block (here of 4 rows), a table reads as it does whole, hashed in
    the same read, and a bad cell in a later block is found by its own line."""
    rows = [(i / 8, i % 5, "abc"[i % 3]) for i in range(30)]
    path = write(tmp_path / "t.csv", "a,b,c\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    whole = data.read(path, target="c")
    monkeypatch.setattr(data, "ROWS_A_BLOCK", 4)
    blocks = data.read(path, target="c")
    assert np.array_equal(blocks.X, np.array([r[:2] for r in rows], dtype=np.float64))
    assert blocks.y is not None and blocks.y.tolist() == [r[2] for r in rows]
    assert np.array_equal(blocks.X, whole.X) and blocks.files == whole.files
    assert blocks.files == {str(path): data.file_hash(path)}
    bad = write(tmp_path / "bad.csv", path.read_text().replace("\n2.5,0,c\n", "\n2.5,x,c\n"))
    with pytest.raises(DataError, match=r"bad.csv: line 22, column 'b': 'x' is not a number"):
        data.read(bad, target="c")
    bad = write(tmp_path / "nan.csv", path.read_text().replace("\n2.5,0,c\n", "\n2.5,0,nan\n"))
    with pytest.raises(DataError, match=r"nan.csv: line 22, column 'c': 'nan' is not a finite"):
        data.read(bad, target="c")


def test_a_one_feature_model_takes_a_1d_array_of_samples() -> None:
    one = data.Description(["x"], None, "regression", "wave.tsv", (1,))
    np.testing.assert_array_equal(data.prepare_inputs(np.array([0.1, 0.2, 0.3]), one),
                                  np.array([[0.1], [0.2], [0.3]], dtype=np.float32))  # fmt: skip
    assert data.prepare_inputs(np.array([0.5]), one).shape == (1, 1)


def test_labels_errors_name_their_flag(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.ones((10, 2)))
    np.save(tmp_path / "y.npy", np.arange(10) % 2)
    (tmp_path / "y.txt").write_text("0\n1\n")
    with pytest.raises(DataUsageError, match=r"labels .*y\.txt: unknown kind of data file"):
        data.load(tmp_path / "x.npy", labels=tmp_path / "y.txt")
    with pytest.raises(DataUsageError, match=r"holds the inputs only; pass the targets' file too "
                                             r"\(--val-labels FILE\)"):  # fmt: skip
        data.load(tmp_path / "x.npy", labels=tmp_path / "y.npy", val_data=tmp_path / "x.npy")
