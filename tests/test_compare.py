"""``backprop-gpu compare`` and ``backprop_gpu.compare``: the table's values against each
run's own metrics.csv (read here with the csv module), its CSV, the plot, sweep folders and
the refusals of paths that hold no runs."""

from __future__ import annotations

import csv
import io
import json
import shutil
import struct
from pathlib import Path

import pytest

from backprop_gpu import cli, compare, experiment
from backprop_gpu.experiment import Config

TINY = {"dataset": "spiral", "samples": 150, "batch_size": 32, "backend": "numpy"}


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Four tiny runs: three in a sweep folder (one nested a level deeper), differing in lr
    and hidden; one alone, differing from the first in epochs."""
    root = tmp_path_factory.mktemp("compare")
    made = {
        "a": (root / "sweep" / "a", {"lr": 0.02, "hidden": (8,), "epochs": 4}),
        "b": (root / "sweep" / "b", {"lr": 0.05, "hidden": (8, 8), "epochs": 4}),
        "c": (root / "sweep" / "more" / "c", {"lr": 0.005, "hidden": (8,), "epochs": 4}),
        "d": (root / "d", {"lr": 0.02, "hidden": (8,), "epochs": 3}),
    }
    for out, settings in made.values():
        config = Config(**TINY, **settings, out=str(out))  # type: ignore[arg-type]
        experiment.run(config, report=None, plots=False)
    return {name: out for name, (out, _) in made.items()}


def csv_rows(run: Path) -> list[dict[str, str]]:
    with (run / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def best_by_hand(run: Path) -> tuple[str, str, int, int]:
    """metrics.csv's lowest val_loss and highest val_accuracy (as the file's text), the first
    epoch of that loss and the last epoch."""
    rows = csv_rows(run)
    loss = min(rows, key=lambda r: float(r["val_loss"]))
    accuracy = max(rows, key=lambda r: float(r["val_accuracy"]))
    return loss["val_loss"], accuracy["val_accuracy"], int(loss["epoch"]), int(rows[-1]["epoch"])


def test_the_table_holds_the_differing_settings_and_the_best_metrics(
    runs: dict[str, Path],
) -> None:
    loaded = compare.load_runs([runs["a"], runs["b"], runs["c"]])
    table = compare.Table.of(loaded)
    # the three share every setting but out, lr and hidden
    assert table.columns == ["run", "hidden", "lr", "best_val_loss", "best_val_accuracy",
                             "best_epoch", "epochs_trained"]  # fmt: skip
    expected = sorted(
        ((str(runs[n]), best_by_hand(runs[n])) for n in "abc"), key=lambda e: float(e[1][0])
    )
    assert [row[0] for row in table.rows] == [run for run, _ in expected]  # by best val_loss
    settings = {str(runs["a"]): ([8], 0.02), str(runs["b"]): ([8, 8], 0.05),
                str(runs["c"]): ([8], 0.005)}  # fmt: skip
    for row, (run, (loss, accuracy, epoch, epochs)) in zip(table.rows, expected, strict=True):
        assert (row[1], row[2]) == settings[run]
        assert row[3:] == [float(loss), float(accuracy), epoch, epochs]
        assert epochs == 4
    assert [run.path for run in table.runs] == [Path(run) for run, _ in expected]


def test_compare_prints_the_table_and_writes_the_same_csv_and_the_plot(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, alone = runs["a"].parent, runs["d"]
    table_csv, png = tmp_path / "compare.csv", tmp_path / "compare.png"
    args = ["compare", str(sweep), str(alone), "--csv", str(table_csv), "--output", str(png)]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.splitlines()

    names = ["a", "b", "c", "d"]  # the sweep's runs (by path: c is in more/), then d
    order = sorted(names, key=lambda n: float(best_by_hand(runs[n])[0]))
    with table_csv.open(newline="") as f:
        written = list(csv.reader(f))
    assert written[0] == ["run", "hidden", "lr", "epochs", "best_val_loss",
                          "best_val_accuracy", "best_epoch", "epochs_trained"]  # fmt: skip
    settings = {"a": ("[8]", "0.02", "4"), "b": ("[8, 8]", "0.05", "4"),
                "c": ("[8]", "0.005", "4"), "d": ("[8]", "0.02", "3")}  # fmt: skip
    for row, name in zip(written[1:], order, strict=True):
        loss, accuracy, epoch, epochs = best_by_hand(runs[name])
        # the metrics exactly as metrics.csv writes them
        assert row == [str(runs[name]), *settings[name], loss, accuracy, str(epoch), str(epochs)]

    # the terminal: a header, then a row a run in the same order, numbers to 4 places
    assert out[0].split() == written[0]
    for line, name in zip(out[1:5], order, strict=True):
        loss, accuracy, epoch, epochs = best_by_hand(runs[name])
        hidden = {"[8]": "8", "[8, 8]": "8,8"}[settings[name][0]]
        assert line.split() == [str(runs[name]), hidden, f"{float(settings[name][1]):g}",
                                settings[name][2], f"{float(loss):.4f}",
                                f"{float(accuracy):.4f}", str(epoch), str(epochs)]  # fmt: skip
    assert out[5:] == [f"wrote {table_csv}", f"wrote {png}"]
    assert png_size(png) == (1280, 480)


def test_plot_runs_writes_one_png_for_the_sweep(runs: dict[str, Path], tmp_path: Path) -> None:
    path = compare.plot_runs([runs["a"], runs["b"]], tmp_path / "best.png", labels=["x", "y"])
    assert path == tmp_path / "best.png" and png_size(path) == (1280, 480)
    with pytest.raises(ValueError, match="plot_runs: 1 labels for 2 runs"):
        compare.plot_runs([runs["a"], runs["b"]], tmp_path / "p.png", labels=["x"])
    with pytest.raises(compare.CompareError, match="not a run folder"):
        compare.plot_runs([runs["a"].parent], tmp_path / "p.png")


def test_one_run_shows_no_settings(runs: dict[str, Path]) -> None:
    table = compare.Table.of(compare.load_runs([runs["d"], runs["d"]]))  # (given twice: once)
    assert table.columns == ["run", "best_val_loss", "best_val_accuracy", "best_epoch",
                             "epochs_trained"]  # fmt: skip
    loss, accuracy, epoch, epochs = best_by_hand(runs["d"])
    assert table.rows == [[str(runs["d"]), float(loss), float(accuracy), epoch, epochs]]


def test_a_sweep_leaves_out_a_run_with_no_epoch_yet_and_says_so(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(runs["a"].parent, sweep)
    waiting = sweep / "waiting"  # (a child that has written its config.json only)
    waiting.mkdir()
    shutil.copy(runs["a"] / "config.json", waiting / "config.json")
    (sweep / "notes").mkdir()  # (a folder without runs: not a run)
    found, skipped = compare.find_runs([sweep])
    assert found == [sweep / "a", sweep / "b", sweep / "more" / "c"] and skipped == [waiting]
    assert cli.main(["compare", str(sweep)]) == 0
    captured = capsys.readouterr()
    assert f"backprop-gpu: note: left out {waiting}: no metrics yet" in captured.err
    assert len(captured.out.splitlines()) == 4  # the header and three runs


def test_a_row_being_written_is_left_out(runs: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs["d"], run)
    with (run / "metrics.csv").open("a") as f:
        f.write("4,0.01,0,0.99,0.02,0.001")  # (torn: no newline yet)
    table = compare.Table.of(compare.load_runs([run]))
    loss, accuracy, epoch, _ = best_by_hand(runs["d"])
    assert table.rows == [[str(run), float(loss), float(accuracy), epoch, 3]]


def bad(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """compare's message for ``args``, which it refuses as a usage error (exit 2)."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(["compare", *args])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("backprop-gpu: error: ") and err.count("\n") == 1, err
    return err.removeprefix("backprop-gpu: error: ").strip()


def test_paths_that_hold_no_runs_exit_2_naming_them(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nothing"
    assert bad([str(runs["d"]), str(missing)], capsys) == f"{missing}: no such run or sweep folder"
    config = runs["d"] / "config.json"
    assert bad([str(config)], capsys) == (
        f"{config}: a file, not a run or sweep folder; pass its run folder {runs['d']}"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    assert bad([str(empty)], capsys) == (
        f"{empty}: not a run folder (no config.json) nor a sweep folder (no run folders in it)"
    )
    started = tmp_path / "started"  # config.json, no metrics.csv: no epoch finished
    started.mkdir()
    shutil.copy(config, started / "config.json")
    assert bad([str(started)], capsys) == (
        f"{started}: no metrics yet (no metrics.csv: no epoch has finished)"
    )
    (started / "metrics.csv").write_text("epoch,loss,val_loss\n")  # the header only
    assert bad([str(started)], capsys) == (
        f"{started}: no metrics yet (metrics.csv holds no epoch yet)"
    )
    sweep = tmp_path / "sweep_of_nothing"
    shutil.copytree(started, sweep / "child")
    assert bad([str(sweep)], capsys) == (
        f"{sweep}: its 1 run folder(s) have no metrics yet (no finished epoch), such as "
        f"{sweep / 'child'}"
    )
    damaged = tmp_path / "damaged"
    shutil.copytree(runs["d"], damaged)
    text = (damaged / "metrics.csv").read_text().splitlines()
    text[2] = text[2].replace(text[2].split(",")[1], "oops", 1)
    (damaged / "metrics.csv").write_text("\n".join(text) + "\n")
    message = bad([str(damaged)], capsys)
    assert message.startswith(f"{damaged / 'metrics.csv'}: line 3 holds a field that is no number")
    assert bad([str(runs["d"]), "--output", str(tmp_path)], capsys) == (
        f"--output {tmp_path}: is a folder; name a file in it"
    )


def test_the_csv_of_settings_that_differ_in_kind(runs: dict[str, Path], tmp_path: Path) -> None:
    """A setting one run's config.json lacks (an older version's) and a None (unset) one."""
    old = tmp_path / "old"
    shutil.copytree(runs["d"], old)
    path = old / "config.json"
    recorded = json.loads(path.read_text())
    del recorded["config"]["precision"]
    recorded["config"]["schedule"] = "cosine"
    path.write_text(json.dumps(recorded))
    table = compare.Table.of(compare.load_runs([runs["d"], old]))
    assert table.columns[:3] == ["run", "schedule", "precision"]
    rows = list(csv.reader(io.StringIO(table.csv_text())))
    by_run = {row[0]: row[1:3] for row in rows[1:]}
    assert by_run == {str(runs["d"]): ["", "float32"], str(old): ["cosine", ""]}


def test_sort_ranks_by_another_metric_and_a_sweep_by_its_own(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    loaded = compare.load_runs([runs["a"], runs["b"], runs["c"]])
    table = compare.Table.of(loaded, "val_accuracy")
    best = {str(runs[n]): float(best_by_hand(runs[n])[1]) for n in "abc"}
    # highest first; ties keep the order given (a, b, c)
    expected = sorted((str(runs[n]) for n in "abc"), key=lambda r: -best[r])
    assert [row[0] for row in table.rows] == expected
    assert [row[table.columns.index("best_epoch")] for row in table.rows] == [
        next(int(r["epoch"]) for r in csv_rows(Path(run))
             if float(r["val_accuracy"]) == best[run]) for run in expected
    ]  # fmt: skip
    with pytest.raises(compare.CompareError, match="--sort loss: not a validation metric"):
        compare.Table.of(loaded, "loss")
    sweep_dir = tmp_path / "s"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": {"metric": "val_accuracy"}}))
    assert compare.sweep_metric([sweep_dir]) == "val_accuracy"
    assert compare.sweep_metric([sweep_dir, sweep_dir]) is None
    (sweep_dir / "sweep.json").write_text(json.dumps({"sweep": {"metric": "loss"}}))
    assert compare.sweep_metric([sweep_dir]) is None  # (not a column compare ranks by)


def test_the_plot_draws_each_runs_curves_from_its_metrics(runs: dict[str, Path]) -> None:
    pytest.importorskip("matplotlib")
    loaded = compare.load_runs([runs["a"], runs["b"]])
    figure = compare.comparison_figure(loaded, ["first", "second"])
    loss_axes, accuracy_axes = figure.axes
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        lines = axes.get_lines()
        assert len(lines) == 4  # per run: validation (solid), training (dashed)
        for i, name in enumerate("ab"):
            rows = csv_rows(runs[name])
            val, train = lines[2 * i], lines[2 * i + 1]
            assert list(val.get_xdata()) == [int(r["epoch"]) for r in rows]
            assert list(val.get_ydata()) == [float(r[f"val_{metric}"]) for r in rows]
            assert list(train.get_ydata()) == [float(r[metric]) for r in rows]
            assert val.get_linestyle() == "-" and train.get_linestyle() == "--"
            assert val.get_color() == train.get_color()
    assert [t.get_text() for t in loss_axes.get_legend().get_texts()] == ["first", "second"]
