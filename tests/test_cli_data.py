"""``backprop-gpu train --data ...`` on the user's own files, driven as a user would: train,
resume (exactly), evaluate and predict (with class names) on each kind of file, from the
example files that ``examples/data/make_examples.py`` writes; and the refusals (exit 2 for
usage, 1 for bad data, no run folder left behind)."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import cli, data, experiment

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
E = str(EXAMPLES)
QUICK = ["--hidden", "16", "--batch-size", "16", "--backend", "numpy", "--quiet", "--no-plots"]
IDX = ["--data", f"{E}/bars-train-images-idx3-ubyte.gz",
       "--labels", f"{E}/bars-train-labels-idx1-ubyte.gz",
       "--val-data", f"{E}/bars-t10k-images-idx3-ubyte.gz",
       "--val-labels", f"{E}/bars-t10k-labels-idx1-ubyte.gz"]  # fmt: skip

# each kind of file: the train flags, a file to predict on, and whether it needs Pillow
KINDS = {
    "csv": (["--data", f"{E}/iris-like.csv", "--target", "species", "--scale", "standard"],
            f"{E}/iris-like-new.csv"),
    "tsv-regression": (["--data", f"{E}/wave.tsv", "--target", "y", "--scale", "minmax"],
                       f"{E}/wave.tsv"),
    "npz": (["--data", f"{E}/blobs.npz"], f"{E}/blobs.npz"),
    "idx": (IDX, f"{E}/bars-t10k-images-idx3-ubyte.gz"),
    "images": (["--data", f"{E}/shapes", "--val-split", "0.25"], f"{E}/shapes/vertical"),
}  # fmt: skip


def exit_code(argv: list[str]) -> int:
    """``backprop-gpu argv``'s exit status (usage errors exit through argparse: 2)."""
    try:
        return cli.main(argv)
    except SystemExit as e:
        return int(e.code or 0)


def rows_without_seconds(run: Path) -> list[dict[str, float]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in experiment.read_metrics(run)]


@pytest.mark.parametrize("kind", KINDS)
def test_train_resume_evaluate_predict(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flags, inputs = KINDS[kind]
    if kind == "images":
        pytest.importorskip("PIL")
    full, part = tmp_path / "full", tmp_path / "part"
    assert cli.main(["train", *flags, *QUICK, "--epochs", "4", "--out", str(full)]) == 0
    assert cli.main(["train", *flags, *QUICK, "--epochs", "2", "--out", str(part)]) == 0
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(part), "--quiet"]) == 0
    assert rows_without_seconds(part) == rows_without_seconds(full)  # resumed exactly
    # config.json: the paths as given, the content hash of each file read
    recorded = json.loads((part / "config.json").read_text())
    given = flags[flags.index("--data") + 1]
    assert recorded["config"]["data"] == given and recorded["config"]["dataset"] is None
    digests = recorded["data_files"]
    assert digests[given] == data.file_hash(Path(given)) and len(digests) in (1, 2, 4)
    # the class names and scaler: in data.json and in the model file's own metadata
    described = json.loads((part / "data.json").read_text())
    saved = bg.Model.load(part / "best.npz").saved_extra["data"]
    assert saved == described
    regression = kind == "tsv-regression"
    assert described["task"] == ("regression" if regression else "classification")
    # evaluate: the best epoch's validation numbers
    capsys.readouterr()
    assert cli.main(["evaluate", str(part)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    best = min(experiment.read_metrics(part), key=lambda r: r["val_loss"])
    assert metrics["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    assert metrics["accuracy"] == pytest.approx(best["val_accuracy"], rel=1e-6)
    # predict: names printed; the same as the model file alone gives on the scaled inputs
    assert cli.main(["predict", str(part), "--input", inputs]) == 0
    printed = capsys.readouterr().out.splitlines()
    model = bg.Model.load(part / "best.npz")
    X, names = model_inputs(kind, inputs)  # (read here with NumPy and Pillow, not data.py)
    if described["scaler"] is not None:
        X = (X - np.array(described["scaler"]["offset"])) / np.array(described["scaler"]["scale"])
    outputs = bg.to_numpy(model.predict(X.astype(np.float32)))
    if regression:
        np.testing.assert_allclose(np.array(printed, dtype=float), outputs[:, 0], rtol=1e-5)
        return
    expected = [described["class_names"][i] for i in outputs.argmax(axis=1)]
    if names is not None:
        expected = [f"{n}\t{c}" for n, c in zip(names, expected, strict=True)]
    assert printed == expected and len(printed) == len(X)


def model_inputs(kind: str, path: str) -> tuple[np.ndarray, list[str] | None]:
    """The raw inputs of the file ``path`` of ``kind`` as the model takes them, read by the
    files' own formats (not by backprop_gpu.data), and the image file of each row."""
    if kind == "csv":
        return np.loadtxt(path, delimiter=",", skiprows=1), None
    if kind == "tsv-regression":  # (x1, x2, then the target y)
        return np.loadtxt(path, delimiter="\t", skiprows=1)[:, :2], None
    if kind == "npz":
        with np.load(path) as archive:
            return archive["X_val"].astype(np.float64), None
    if kind == "idx":  # 16 header bytes (magic, 3 sizes), then the uint8 pixels
        raw = gzip.decompress(Path(path).read_bytes())
        count = int.from_bytes(raw[4:8], "big")
        return np.frombuffer(raw, np.uint8, offset=16).reshape(count, -1) / 255.0, None
    from PIL import Image

    files = sorted(Path(path).glob("*.png"))
    pixels = np.stack([np.asarray(Image.open(f), dtype=np.float64) for f in files])
    return pixels.reshape(len(files), -1) / 255.0, [f.name for f in files]


@pytest.mark.parametrize("kind", ["npy", "parquet"])
def test_npy_pairs_and_parquet(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The iris-like table as an .npy pair (string labels) or a Parquet file trains as the
    CSV does: the same split, scaling and metrics, resumed exactly."""
    table = data.read(EXAMPLES / "iris-like.csv", target="species")
    if kind == "npy":
        np.save(tmp_path / "X.npy", table.X)
        np.save(tmp_path / "y.npy", table.y)
        flags = ["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy")]
        new = tmp_path / "new.npy"
        np.save(new, np.genfromtxt(f"{E}/iris-like-new.csv", delimiter=",", skip_header=1))
    else:
        pandas = pytest.importorskip("pandas")
        pytest.importorskip("pyarrow")
        frame = pandas.DataFrame(table.X, columns=table.feature_names)
        frame["species"] = table.y
        frame.to_parquet(tmp_path / "iris.parquet")
        flags = ["--data", str(tmp_path / "iris.parquet"), "--target", "species"]
        new = tmp_path / "new.parquet"
        pandas.read_csv(f"{E}/iris-like-new.csv").to_parquet(new)
    csv_flags = [*KINDS["csv"][0][:4], "--scale", "standard"]
    run, part, reference = tmp_path / "run", tmp_path / "part", tmp_path / "csv"
    for out, epochs, given in ((run, "4", flags), (part, "2", flags), (reference, "4", csv_flags)):
        given = given if given is csv_flags else [*given, "--scale", "standard"]
        assert cli.main(["train", *given, *QUICK, "--epochs", epochs, "--out", str(out)]) == 0
    assert cli.main(["train", "--resume", "--epochs", "4", "--out", str(part), "--quiet"]) == 0
    assert rows_without_seconds(run) == rows_without_seconds(part)
    assert rows_without_seconds(run) == rows_without_seconds(reference)
    capsys.readouterr()
    assert cli.main(["predict", str(run), "--input", str(new)]) == 0
    assert cli.main(["predict", str(reference), "--input", f"{E}/iris-like-new.csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:6] == lines[6:] and set(lines) <= {"setosa", "versicolor", "virginica"}


def test_predict_names_the_right_classes_and_takes_raw_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Trained long enough, the iris-like model names the 6 new rows' species as they were
    drawn (setosa, versicolor, virginica, twice); raw inputs from a CSV, an .npy or an array
    are scaled by the saved scaler alike."""
    flags = KINDS["csv"][0]
    out = tmp_path / "run"
    assert cli.main(["train", *flags, *QUICK, "--epochs", "60", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", f"{E}/iris-like-new.csv"]) == 0
    species = ["setosa", "versicolor", "virginica"] * 2
    assert capsys.readouterr().out.splitlines() == species
    raw = np.genfromtxt(f"{E}/iris-like-new.csv", delimiter=",", skip_header=1)
    assert experiment.predictions(out, raw).classes == species
    np.save(tmp_path / "raw.npy", raw)
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "raw.npy")]) == 0
    assert capsys.readouterr().out.splitlines() == species
    np.testing.assert_array_equal(
        experiment.predict(out, raw), experiment.predict(out, f"{E}/iris-like-new.csv")
    )
    assert cli.main(["predict", str(out), "--input", f"{E}/wave.tsv"]) == 1
    assert "no column(s) 'sepal_length'" in capsys.readouterr().err


def test_regression_from_a_file_learns(tmp_path: Path) -> None:
    """Float targets train with MSE and the regression accuracy, as the built-in sine."""
    out = tmp_path / "run"
    flags = ["--data", f"{E}/wave.tsv", "--target", "y", "--scale", "standard"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "150", "--out", str(out)]) == 0
    model = bg.Model.load(out / "best.npz")
    assert type(model.loss).__name__ == "MeanSquaredError"
    assert type(model.accuracy).__name__ == "RegressionAccuracy"
    best = min(experiment.read_metrics(out), key=lambda r: r["val_loss"])
    assert best["val_loss"] < 0.05 and best["val_accuracy"] > 0.2  # (y's variance: ~1.2)


def test_a_changed_file_is_refused_by_resume_and_evaluate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "iris.csv"
    shutil.copy(EXAMPLES / "iris-like.csv", path)
    out = tmp_path / "run"
    flags = ["--data", str(path), "--target", "species"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "2", "--out", str(out)]) == 0
    path.write_text(path.read_text().replace("5.9,3.0", "5.9,3.1", 1))
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--epochs", "3", "--out", str(out), "--quiet"]) == 1
    said = capsys.readouterr().err
    assert f"{path} has changed since the run in {out} started" in said
    assert len(experiment.read_metrics(out)) == 2
    assert cli.main(["evaluate", str(out)]) == 1
    assert "has changed since the run" in capsys.readouterr().err


def test_a_file_changed_in_place_is_named_so_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A relative path, resumed from elsewhere: the file changed where the run read it, which
    is what the message says (no flag was given to blame)."""
    shutil.copy(EXAMPLES / "iris-like.csv", tmp_path / "iris.csv")
    monkeypatch.chdir(tmp_path)
    flags = ["--data", "iris.csv", "--target", "species"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "2", "--out", "run"]) == 0
    (tmp_path / "iris.csv").write_text((tmp_path / "iris.csv").read_text().replace(
        "5.9,3.0", "5.9,3.1", 1))  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--epochs", "3", "--out", "../run", "--quiet"]) == 1
    assert "iris.csv has changed since the run in ../run started" in capsys.readouterr().err


def test_an_older_run_resumed_records_where_its_files_are(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run folder from before data_paths were recorded (its paths as given, relative):
    resumed from its folder, it records them absolute, so a later resume works anywhere."""
    shutil.copy(EXAMPLES / "iris-like.csv", tmp_path / "iris.csv")
    monkeypatch.chdir(tmp_path)
    flags = ["--data", "iris.csv", "--target", "species"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "2", "--out", "run"]) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    del recorded["data_paths"]
    (tmp_path / "run" / "config.json").write_text(json.dumps(recorded))
    assert cli.main(["train", "--resume", "--epochs", "3", "--out", "run", "--quiet"]) == 0
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())
    assert recorded["data_paths"] == {"data": str(tmp_path / "iris.csv")}
    monkeypatch.chdir(tmp_path.parent)
    assert cli.main(["evaluate", str(tmp_path / "run")]) == 0


def test_evaluate_with_a_flag_for_a_file_the_run_has_not_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    flags = ["--data", str(EXAMPLES / "iris-like.csv"), "--target", "species"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["evaluate", str(out), "--labels", str(tmp_path / "y.npy")])
    assert exit_info.value.code == 2
    said = capsys.readouterr().err
    assert f"--labels: the run in {out} has no such file (its data: data " in said


def test_the_settings_from_a_toml_file(tmp_path: Path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{E}/iris-like.csv"\ntarget = "species"\nscale = "minmax"\n'
                    'val_split = 0.25\nepochs = 2\nhidden = [8]\nbackend = "numpy"\n')  # fmt: skip
    assert cli.main(["train", "--config", str(toml), "--out", str(tmp_path / "a"), "--quiet",
                     "--no-plots"]) == 0  # fmt: skip
    flags = ["--data", f"{E}/iris-like.csv", "--target", "species", "--scale", "minmax",
             "--val-split", "0.25", "--epochs", "2", "--hidden", "8"]  # fmt: skip
    flags += ["--backend", "numpy"]
    assert cli.main(["train", *flags, "--out", str(tmp_path / "b"), "--quiet", "--no-plots"]) == 0
    a, b = (json.loads((tmp_path / n / "config.json").read_text()) for n in "ab")
    assert a["config"] | {"out": ""} == b["config"] | {"out": ""}
    assert a["config"]["val_split"] == 0.25 and a["config"]["scale"] == "minmax"
    assert rows_without_seconds(tmp_path / "a") == rows_without_seconds(tmp_path / "b")


@pytest.mark.parametrize(
    ("flags", "code", "said"),
    [
        (["--data", f"{E}/blobs.npz", "--dataset", "spiral"], 2, "dataset and data: 'spiral'"),
        (["--target", "y"], 2, "target: a setting of data from files, which needs data"),
        (["--data", f"{E}/iris-like.csv"], 2, "name the table's target column (--target"),
        (["--data", f"{E}/iris-like.csv", "--target", "species", "--samples", "9"], 2,
         "samples: the size of a generated data set"),
        (["--data", f"{E}/blobs.npz", "--val-split", "0.1"], 2, "val_split: 0.1 and a valid"),
        (["--data", f"{E}/wave.tsv", "--target", "y", "--val-split", "2"], 2,
         "val_split: must be a fraction in (0, 1), got 2.0"),
        (["--data", f"{E}/iris-like.csv", "--target", "nope"], 1,
         "no column 'nope'; its columns: sepal_length, sepal_width"),
        (["--data", f"{E}/nope.csv", "--target", "y"], 1, "nope.csv: no such file or folder"),
        (["--data", f"{E}/bars-train-images-idx3-ubyte.gz",
          "--labels", f"{E}/bars-t10k-labels-idx1-ubyte.gz"], 1,
         "15 targets for the 60 samples of"),
    ],
)  # fmt: skip
def test_refusals_leave_no_run_folder(
    flags: list[str], code: int, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert exit_code(["train", *flags, *QUICK, "--epochs", "1", "--out", str(out)]) == code
    assert said in capsys.readouterr().err
    assert not out.exists()


def test_bad_data_cells_exit_1_without_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("a,b,label\n1,2,x\n3,abc,y\n")
    out = tmp_path / "runs" / "run"
    assert cli.main(["train", "--data", str(path), "--target", "label", *QUICK,
                     "--out", str(out)]) == 1  # fmt: skip
    assert f"{path}: line 3, column 'b': 'abc' is not a number" in capsys.readouterr().err
    assert not out.exists()


def test_predict_on_a_built_in_run_takes_npy_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", "--samples", "60", "--epochs", "1", *QUICK, "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", f"{E}/iris-like-new.csv"]) == 1
    assert "not a .npy file" in capsys.readouterr().err
    with pytest.raises(experiment.RunError, match="a run on a built-in data set takes its"):
        experiment.predictions(out, f"{E}/iris-like-new.csv")


def test_the_readme_commands_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's "Your own data" commands and Python, as written but for fewer epochs,
    from a folder holding the examples."""
    pytest.importorskip("PIL")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Your own data") : readme.index("## The GPU path")]
    (tmp_path / "examples").symlink_to(EXAMPLES.parent)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BACKPROP_GPU_BACKEND", "numpy")
    commands = re.findall(r"```bash\n(.*?)```", section, re.S)[0].replace("\\\n", " ")
    ran = []
    for line in commands.splitlines():
        argv = shlex.split(line, comments=True)
        if argv[0] != "backprop-gpu":
            continue
        if argv[1] == "train":
            epochs = "3" if "--resume" in argv else "2"
            argv += ["--epochs", epochs, "--quiet", "--no-plots", "--hidden", "8"]
            if "--resume" in argv:
                argv = argv[:-2]  # (a resume keeps its hidden sizes)
        capsys.readouterr()
        assert cli.main(argv[1:]) == 0, line
        ran.append(argv[1])
        if argv[1] == "predict":
            printed = capsys.readouterr().out.splitlines()
            assert printed and all(re.fullmatch(r"(\S+\t)?[a-z]+", p) for p in printed)
    assert ran.count("train") == 6 and ran.count("predict") == 2
    python = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    python = python.replace('"epochs": 60', '"epochs": 2')
    capsys.readouterr()
    exec(compile(python, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "(96, 4) ['setosa', 'versicolor', 'virginica']"
    assert len(eval(lines[1])) == 6


def _bad_files(folder: Path) -> dict[str, tuple[list[str], str]]:
    """Bad data of each kind, written into ``folder``: the train flags and what the error says."""
    (folder / "nan.csv").write_text("a,y\n" + "".join(f"{i},{i / 2}\n" for i in range(40))
                                    + "1,nan\n")  # fmt: skip
    (folder / "a.csv").write_text("x,c\n1,cat\n2,dog\n3,cat\n4,dog\n")
    (folder / "b.csv").write_text("x,c\n4,cat\n5,bird\n")
    images = bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 2, 0, 0, 0, 2, *range(40)])
    (folder / "im-idx3-ubyte").write_bytes(images)
    (folder / "bad-idx1-ubyte").write_bytes(b"\x00\x00\x07\x01" + bytes(14))
    cases = {
        "nan target": (["--data", f"{folder}/nan.csv", "--target", "y"],
                       "nan.csv: line 42, column 'y': 'nan' is not a finite number"),
        "class only in validation": (
            ["--data", f"{folder}/a.csv", "--target", "c", "--val-data", f"{folder}/b.csv"],
            "b.csv: class(es) 'bird' not in the training data"),
        "labels of 3 dimensions": (
            ["--data", f"{folder}/im-idx3-ubyte", "--labels", f"{folder}/im-idx3-ubyte"],
            "targets of shape (10, 2, 2); a classification takes one label a sample"),
        "bad IDX magic": (
            ["--data", f"{folder}/im-idx3-ubyte", "--labels", f"{folder}/bad-idx1-ubyte"],
            "bad-idx1-ubyte: not an IDX file (magic number 00 00 07 01"),
    }  # fmt: skip
    with contextlib.suppress(ImportError):
        from PIL import Image

        for name, mode in (("a/1.png", "L"), ("a/2.png", "L"), ("b/1.png", "RGB")):
            (folder / "mixed" / name).parent.mkdir(parents=True, exist_ok=True)
            Image.new(mode, (4, 4)).save(folder / "mixed" / name)
        cases["mixed image modes"] = (["--data", f"{folder}/mixed"], "b/1.png has mode RGB")
    return cases


def test_bad_data_of_each_kind_exits_1_without_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, (flags, said) in _bad_files(tmp_path).items():
        out = tmp_path / name.replace(" ", "-")
        assert exit_code(["train", *flags, *QUICK, "--epochs", "1", "--out", str(out)]) == 1, name
        err = capsys.readouterr().err
        assert said in err and err.count("\n") == 1, (name, err)
        assert not out.exists(), name


def test_relative_paths_resume_and_evaluate_from_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """config.json keeps the path as given and where it resolved to: a run trained with a
    relative path resumes and evaluates from any folder, as an uninterrupted run does."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir(), elsewhere.mkdir()
    shutil.copy(EXAMPLES / "iris-like.csv", project / "iris.csv")
    flags = ["--data", "iris.csv", "--target", "species", *QUICK]
    monkeypatch.chdir(project)
    assert cli.main(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "part")]) == 0
    assert cli.main(["train", *flags, "--epochs", "3", "--out", str(tmp_path / "full")]) == 0
    recorded = json.loads((tmp_path / "part" / "config.json").read_text())
    assert recorded["config"]["data"] == "iris.csv"
    assert recorded["data_paths"] == {"data": str(project / "iris.csv")}
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    part = str(tmp_path / "part")
    assert cli.main(["train", "--resume", "--out", part, "--epochs", "3", "--quiet"]) == 0
    assert rows_without_seconds(tmp_path / "part") == rows_without_seconds(tmp_path / "full")
    capsys.readouterr()
    assert cli.main(["evaluate", part]) == 0
    best = min(experiment.read_metrics(tmp_path / "part"), key=lambda r: r["val_loss"])
    assert json.loads(capsys.readouterr().out)["loss"] == pytest.approx(best["val_loss"])


def test_moved_data_can_be_pointed_at_when_its_contents_are_the_same(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    shutil.copy(EXAMPLES / "iris-like.csv", old / "iris.csv")
    out = tmp_path / "run"
    flags = ["--data", str(old / "iris.csv"), "--target", "species", *QUICK]
    assert cli.main(["train", *flags, "--epochs", "2", "--out", str(out)]) == 0
    old.rename(new)
    capsys.readouterr()
    resume = ["train", "--resume", "--out", str(out), "--epochs", "3", "--quiet"]
    assert cli.main(resume) == 1
    said = capsys.readouterr().err
    assert f"data {old / 'iris.csv'}: no such file or folder (from config.json of {out})" in said
    assert "moved? pass --data NEWPATH" in said
    assert cli.main(["evaluate", str(out)]) == 1
    assert "no such file or folder (from config.json of" in capsys.readouterr().err
    assert cli.main(["evaluate", str(out), "--data", str(new / "iris.csv")]) == 0
    capsys.readouterr()
    # another file at the new place: refused by its contents, naming the flag
    (tmp_path / "other.csv").write_text((new / "iris.csv").read_text().replace("5.9", "6.9", 1))
    assert cli.main([*resume, "--data", str(tmp_path / "other.csv")]) == 1
    said = capsys.readouterr().err
    assert f"--data {tmp_path / 'other.csv'}: not the file the run in {out} began with" in said
    assert len(experiment.read_metrics(out)) == 2
    assert cli.main([*resume, "--data", str(new / "iris.csv")]) == 0
    assert len(experiment.read_metrics(out)) == 3
    # the new place is remembered: evaluate needs no flag now
    assert cli.main(["evaluate", str(out)]) == 0


def test_toml_paths_are_relative_to_the_toml_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "configs" / "data").mkdir(parents=True)
    shutil.copy(EXAMPLES / "iris-like.csv", tmp_path / "configs" / "data" / "iris.csv")
    toml = tmp_path / "configs" / "run.toml"
    toml.write_text('data = "data/iris.csv"\ntarget = "species"\nepochs = 1\nhidden = [8]\n'
                    'backend = "numpy"\n')  # fmt: skip
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(toml), "--out", str(out), "--quiet",
                     "--no-plots"]) == 0  # fmt: skip
    recorded = json.loads((out / "config.json").read_text())
    assert recorded["data_paths"] == {"data": str(tmp_path / "configs" / "data" / "iris.csv")}
    toml.write_text(toml.read_text().replace("data/iris.csv", "data/nope.csv"))
    capsys.readouterr()
    assert cli.main(["train", "--config", str(toml), "--out", str(tmp_path / "b"), "--quiet"]) == 1
    said = capsys.readouterr().err
    assert f"data {tmp_path / 'configs' / 'data' / 'nope.csv'}: no such file or folder" in said
    assert f"(from --config {toml}, 'data/nope.csv' relative to its folder)" in said
    assert not (tmp_path / "b").exists()
    # a flag overrides the file's missing path (flags win over --config)
    flag = ["--data", str(tmp_path / "configs" / "data" / "iris.csv")]
    assert cli.main(["train", "--config", str(toml), *flag, "--out", str(tmp_path / "c"),
                     "--quiet", "--no-plots"]) == 0  # fmt: skip


def test_predict_reads_only_the_features_and_says_what_it_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", *KINDS["csv"][0], *QUICK, "--epochs", "2", "--out", str(out)]) == 0
    lines = (EXAMPLES / "iris-like-new.csv").read_text().splitlines()
    with_more = tmp_path / "more.csv"  # an id, a blank species, a note with a comma
    rows = [f'{i},,{row},"a, b"' for i, row in enumerate(lines[1:])]
    with_more.write_text("\n".join([f"id,species,{lines[0]},note", *rows]))
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", f"{E}/iris-like-new.csv"]) == 0
    plain = capsys.readouterr()
    assert "note" not in plain.err
    assert cli.main(["predict", str(out), "--input", str(with_more)]) == 0
    more = capsys.readouterr()
    assert more.out == plain.out and len(more.out.splitlines()) == 6
    notes = [line for line in more.err.splitlines() if "note:" in line]
    assert notes == [f"backprop-gpu: note: ignored column(s) id, note of {with_more} (not "
                     "features of the model)"]  # fmt: skip
    np.save(tmp_path / "five.npy", np.ones((3, 5)))
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "five.npy")]) == 1
    assert (f"backprop-gpu: --input {tmp_path / 'five.npy'}: samples of shape (5,); the model "
            "takes 4 features (sepal_length") in capsys.readouterr().err  # fmt: skip


def test_an_image_run_predicts_raw_uint8_pixels_as_its_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Image = pytest.importorskip("PIL.Image")
    out = tmp_path / "run"
    flags, folder = KINDS["images"]
    assert cli.main(["train", *flags, *QUICK, "--epochs", "3", "--out", str(out)]) == 0
    files = sorted(Path(folder).glob("*.png"))
    np.save(tmp_path / "raw.npy", np.stack([np.asarray(Image.open(f)) for f in files]))
    capsys.readouterr()
    assert cli.main(["predict", str(out), "--input", folder]) == 0
    from_files = [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()]
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "raw.npy")]) == 0
    assert capsys.readouterr().out.splitlines() == from_files
    np.save(tmp_path / "wide.npy", np.zeros((2, 4, 16), dtype=np.uint8))  # 64 pixels, not 8x8
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "wide.npy")]) == 1
    assert "samples of shape (4, 16); the model takes (8, 8)" in capsys.readouterr().err


def test_a_run_says_what_it_inferred_from_the_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quick = [f for f in QUICK if f != "--quiet"]
    assert cli.main(["train", *KINDS["csv"][0], *quick, "--epochs", "1",
                     "--out", str(tmp_path / "a")]) == 0  # fmt: skip
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("data: classification of 3 classes (setosa, versicolor, virginica); 96 "
                     "training and 24 validation samples, 4 features")  # fmt: skip
    whole = tmp_path / "whole.csv"  # float labels that are classes in disguise
    whole.write_text("x,y\n" + "".join(f"{i},{i % 3}.0\n" for i in range(30)))
    assert cli.main(["train", "--data", str(whole), "--target", "y", *quick, "--epochs", "1",
                     "--out", str(tmp_path / "b")]) == 0  # fmt: skip
    first = capsys.readouterr().out.splitlines()[0]
    assert first == ("data: regression of a target in [0, 2]; 24 training and 6 validation "
                     "samples, 1 feature (whole-number targets: --task classification for "
                     "classes)")  # fmt: skip
    assert cli.main(["train", "--data", str(whole), "--target", "y", "--task", "regression",
                     *quick, "--epochs", "1", "--out", str(tmp_path / "c")]) == 0  # fmt: skip
    assert "whole-number" not in capsys.readouterr().out


def test_predict_into_a_pipe_closed_early_stops_quietly(tmp_path: Path) -> None:
    """``backprop-gpu predict ... | head -1``: no "Broken pipe" error, SIGPIPE's status."""
    out = tmp_path / "run"
    assert cli.main(["train", "--samples", "60", "--epochs", "1", *QUICK, "--out", str(out)]) == 0
    np.save(tmp_path / "many.npy", np.zeros((200_000, 2), dtype=np.float32))  # (MBs of text)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "BACKPROP_GPU_BACKEND": "numpy"}  # fmt: skip
    command = [sys.executable, "-m", "backprop_gpu", "predict", str(out), "--input",
               str(tmp_path / "many.npy")]  # fmt: skip
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as p:
        assert p.stdout is not None and p.stderr is not None
        assert len(p.stdout.readline().split()) == 3  # (three class probabilities)
        p.stdout.close()
        err = p.stderr.read().decode()
        assert p.wait(timeout=120) == 141
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err


def test_a_resume_keeps_the_settings_of_its_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    assert cli.main(["train", *KINDS["csv"][0], *QUICK, "--epochs", "1", "--out", str(out)]) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", "--out", str(out), "--scale", "minmax"]) == 1
    assert ("scale='minmax' is a different setting from the run's scale='standard'; a resumed "
            "run keeps its settings") in capsys.readouterr().err  # fmt: skip
