"""Checkpoint integrity: saved files get the usual permissions, links and temporary files
behave as documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import checkpoint

from .test_checkpoint import X, Y, trained

# --- item 12: file modes, links and temporary files ----------------------------------------

MODES = textwrap.dedent(
    """
    import os, sys, stat
    import numpy as np
    import backprop_gpu as bg
    from backprop_gpu import checkpoint
    folder = sys.argv[1]
    model = bg.Model([bg.Dense(2, 3, seed=0)]).set(loss=bg.MeanSquaredError(),
                                                   optimizer=bg.SGD()).finalize()
    for umask in (0o022, 0o077, 0o002):
        os.umask(umask)
        for how in ("save", "save_parameters", "checkpoint"):
            path = os.path.join(folder, f"{how}-{umask:03o}.npz")
            if how == "checkpoint":
                checkpoint.save(path, {"a": np.zeros(2)}, {})
            else:
                getattr(model, how)(path)
            print(how, f"{umask:03o}", f"{stat.S_IMODE(os.stat(path).st_mode):03o}")
    """
)


def test_saved_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """0o666 less the umask, as numpy.save and open() give (run in a child process: the
    umask is process-wide)."""
    out = subprocess.run(
        [sys.executable, "-c", MODES, str(tmp_path)], capture_output=True, text=True,
        timeout=120, check=True, env=os.environ | {"BACKPROP_GPU_BACKEND": "numpy"},
    ).stdout.split()  # fmt: skip
    modes = {(out[i], out[i + 1]): out[i + 2] for i in range(0, len(out), 3)}
    expected = {"022": "644", "077": "600", "002": "664"}
    assert len(modes) == 9
    assert all(mode == expected[umask] for (_, umask), mode in modes.items()), modes


def test_saving_over_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    model = trained()
    model.save(path)
    for mode in (0o640, 0o600, 0o444):
        path.chmod(mode)
        model.save(path)
        assert path.stat().st_mode & 0o777 == mode
    bg.Model.load(path)


def test_saving_over_a_symlink_replaces_the_link(tmp_path: Path) -> None:
    """os.replace semantics, as documented in checkpoint.save: the link becomes the new file
    and the file it pointed to is left as it was."""
    target = tmp_path / "target.npz"
    model = trained()
    model.save_parameters(target)
    before = target.read_bytes()
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model.train(X, Y, epochs=1, print_every=0)
    model.save(link)
    assert not link.is_symlink() and target.read_bytes() == before
    assert bg.Model.load(link).epochs_trained == 3
    assert checkpoint.load(target)[1]["kind"] == "parameters"


def test_the_temporary_file_is_hidden_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.NAME.<random>.tmp`` in the same folder (what run folders clean up after a killed
    save), already with the final mode while it is written."""
    seen: list[tuple[str, int]] = []
    savez = np.savez

    def spy(f: Any, **arrays: Any) -> None:
        seen.extend((p.name, p.stat().st_mode & 0o777) for p in tmp_path.iterdir())
        savez(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", spy)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")
    path.chmod(0o640)
    trained().save(path)
    temporary = [(name, mode) for name, mode in seen if name != "checkpoint.npz"]
    assert len(temporary) == 1
    name, mode = temporary[0]
    assert re.fullmatch(r"\.checkpoint\.npz\.[0-9a-f]{12}\.tmp", name) and mode == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import backprop_gpu as bg
    path = sys.argv[1]
    model = bg.Model([bg.Dense(300, 300, seed=0)]).set(loss=bg.MeanSquaredError()).finalize()
    model.save_parameters(path)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    model.layers[0].biases[...] = 1
    try:
        model.save_parameters(path)
    except OSError as e:
        print("failed:", e.errno)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_write_error_mid_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The kernel refuses a write half-way (file size limit, as a full disk would): the save
    raises, its temporary file is gone and the previous file is intact."""
    path = tmp_path / "p.npz"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True,
        timeout=120, check=True, env=os.environ | {"BACKPROP_GPU_BACKEND": "numpy"},
    ).stdout  # fmt: skip
    assert out.split() == ["failed:", "27"]  # EFBIG
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    assert np.all(checkpoint.load(path)[0]["layers.0.biases"] == 0)


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "m.npz"
    (folder / "inside").mkdir(parents=True)  # a non-empty folder where the file should go
    with pytest.raises(OSError):
        trained().save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert [p.name for p in folder.iterdir()] == ["inside"]
