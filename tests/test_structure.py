"""The structure issue 14 asks for: imports point down only (the model never imports the fit
loop, its callbacks or distributed when imported; the layers never import the model) and
``Model`` stays readable in one sitting (at most ~300 lines)."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import backprop_gpu as bg

ROOT = Path(__file__).resolve().parents[1]

# imports ``backprop_gpu.<module>`` without running the package's __init__ (which imports
# everything for the public API) and prints the package modules that came with it
_IMPORT_ALONE = """
import importlib, importlib.util, json, sys, types
spec = importlib.util.find_spec("backprop_gpu")
package = types.ModuleType("backprop_gpu")
package.__path__ = list(spec.submodule_search_locations)
package.__spec__ = spec
sys.modules["backprop_gpu"] = package
importlib.import_module("backprop_gpu." + sys.argv[1])
print(json.dumps(sorted(name for name in sys.modules if name.startswith("backprop_gpu."))))
"""


def modules_imported_by(module: str) -> set[str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALONE, module],
        capture_output=True, text=True, check=True, cwd=ROOT, env=env, timeout=120,
    ).stdout  # fmt: skip
    return {name.removeprefix("backprop_gpu.") for name in json.loads(out.splitlines()[-1])}


def test_the_model_imports_neither_the_loop_nor_distributed() -> None:
    imported = modules_imported_by("model")
    assert "model" in imported and "layers" in imported  # (the check itself works)
    above = {"trainer", "callbacks", "strategy", "distributed", "experiment", "cli", "run_folder"}
    assert imported & above == set()


@pytest.mark.parametrize("module", ["layers", "activations", "losses", "metrics", "optimizers"])
def test_the_math_does_not_import_the_model(module: str) -> None:
    imported = modules_imported_by(module)
    assert module in imported
    assert imported & {"model", "trainer", "callbacks", "distributed"} == set()


def test_model_is_at_most_about_300_lines() -> None:
    lines = len(inspect.getsource(bg.Model).splitlines())
    assert lines <= 320, f"Model is {lines} lines; move what is not the model's out of it"
