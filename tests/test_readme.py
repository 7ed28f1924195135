"""The README's API tour runs as written and trains."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import backprop_gpu as bg

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs_and_learns() -> None:
    tour = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    out = io.StringIO()
    with bg.use_backend("numpy"), contextlib.redirect_stdout(out):
        exec(compile(tour, str(README), "exec"), {})
    loss, acc, shape = out.getvalue().splitlines()[0].split() + out.getvalue().splitlines()[1:]
    assert float(loss) < 0.2 and float(acc) > 0.9
    assert shape == "(2, 64)"


def test_readme_model_section_runs(tmp_path: object, monkeypatch: object) -> None:
    block = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[1]
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    out = io.StringIO()
    with bg.use_backend("numpy"), contextlib.redirect_stdout(out):
        namespace: dict[str, object] = {}
        exec(compile(block, str(README), "exec"), namespace)
    val_accuracy, test_accuracy = map(float, out.getvalue().splitlines()[-1].split())
    assert val_accuracy == test_accuracy > 0.93
    assert namespace["probabilities"].shape == (5, 10)  # type: ignore[attr-defined]


def test_readme_training_controls_run(tmp_path: object, monkeypatch: object) -> None:
    """The callbacks example stops early, after the epoch it says, with the best weights."""
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                if "bg.EarlyStopping(patience=30" in b]  # fmt: skip
    out = io.StringIO()
    with bg.use_backend("numpy"), contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    assert out.getvalue().split() == ["275", "245", "0.6048", "0.6048"]
    assert "It stops after epoch 275 with the weights of epoch 245" in README.read_text()


def test_readme_sweep_runs(tmp_path: object, monkeypatch: object) -> None:
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
                if "experiment.sweep(" in b]  # fmt: skip
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    run, *children = out.getvalue().splitlines()
    assert 0.3 < float(run.split()[0]) <= 1 and Path(run.split()[1]).is_dir()
    assert sorted(line.split()[0] for line in children) == ["0.01", "0.02"]
    for line in children:  # each child's best epoch, in its run folder in the sweep's
        _, accuracy, where = line.split()
        assert 0.3 < float(accuracy) <= 1
        assert Path(where).parent.name == "lr-sweep" and (Path(where) / "metrics.csv").is_file()


def test_readme_streaming_section_runs(tmp_path: object, monkeypatch: object) -> None:
    """The memory-mapped example: streamed equals copied, and the model learns the rule."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    (block,) = [b for b in blocks if 'mmap_mode="r"' in b]
    monkeypatch.chdir(tmp_path)  # type: ignore[attr-defined]
    out = io.StringIO()
    with bg.use_backend("numpy"), contextlib.redirect_stdout(out):
        exec(compile(block, str(README), "exec"), {})
    same, accuracy = out.getvalue().split()
    assert same == "True" and float(accuracy) > 0.9
