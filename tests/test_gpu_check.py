"""benchmarks/gpu_check.sh, the one-shot GPU verification, where no GPU is usable: it stops
after its preflight with exit 2 and the reason (on a GPU machine too: the runs here hide every
device with CUDA_VISIBLE_DEVICES=""), and its Python phases run on NumPy (--dry-run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CHECK = ROOT / "benchmarks" / "gpu_check.py"
REASONS = ("no NVIDIA driver", "no device", "CuPy does not import")
needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_script(
    script: Path, out: Path, *args: str
) -> tuple[subprocess.CompletedProcess[str], float]:
    env = os.environ | {
        "OUT": str(out),
        "PYTHON": sys.executable,
        "GPU_CHECK_BUDGET": "30",
        "CUDA_VISIBLE_DEVICES": "",  # CUDA shows this process no device, whatever the machine
    }
    for name in ("GPU_CHECK_SKIP_PREFLIGHT", "GPU_CHECK_WHEELS", "GPU_CHECK_INSTALL"):
        env.pop(name, None)
    started = time.monotonic()
    result = subprocess.run(["bash", str(script), *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    return result, time.monotonic() - started


@needs_bash
def test_the_script_parses() -> None:
    result = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@needs_bash
@pytest.mark.parametrize("copied", [False, True], ids=["benchmarks", "build-copy"])
def test_no_usable_gpu_exits_2_with_the_reason(tmp_path: Path, copied: bool) -> None:
    """The preflight stops the run within seconds, the reason in its output and summary.txt;
    a copy of the script elsewhere (build/gpu-check/gpu-check.sh) behaves the same."""
    script = SCRIPT
    if copied:
        script = tmp_path / "gpu-check" / "gpu-check.sh"
        script.parent.mkdir()
        shutil.copy(SCRIPT, script)
    out = tmp_path / "out"
    result, seconds = run_script(script, out)
    assert result.returncode == 2, result.stdout + result.stderr
    assert seconds < 30  # nothing past the preflight ran
    failed = [
        line for line in result.stdout.splitlines() if line.startswith("FAIL  preflight-cupy")
    ]
    assert len(failed) == 1 and "NO USABLE GPU" in failed[0], result.stdout
    assert any(reason in failed[0] for reason in REASONS), failed[0]
    summary = (out / "summary.txt").read_text()
    assert failed[0] in summary.splitlines()
    assert "stopping (exit 2)" in summary
    assert sorted(p.name for p in out.iterdir()) == ["env.log", "preflight-cupy.log", "summary.txt"]


@needs_bash
def test_outside_a_checkout_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT)], cwd=tmp_path, capture_output=True, text=True)
    assert (
        result.returncode == 2 and "run me from the backprop_gpu checkout's root" in result.stderr
    )
    result = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True)
    assert result.returncode == 2 and "unknown argument '--bogus'" in result.stderr
    result = subprocess.run(["bash", str(SCRIPT), "--help"], capture_output=True, text=True)
    assert (
        result.returncode == 0 and "--prepare" in result.stdout and "set -uo" not in result.stdout
    )


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CHECK), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=os.environ | (env or {}))  # fmt: skip


def test_timing_phases_run_on_numpy_and_summarise(tmp_path: Path) -> None:
    """--dry-run: the timing code against today's API (what breaks when internals move)."""
    on, off = tmp_path / "on.json", tmp_path / "off.json"
    cases = "2-16-3@32,4-8-8-2@16"
    result = check("timing", "--dry-run", "--cases", cases, "--steps", "3", "--json", str(on))
    assert result.returncode == 0, result.stdout + result.stderr
    result = check("timing", "--dry-run", "--step-only", "--cases", cases, "--steps", "3",
                   "--json", str(off), env={"BACKPROP_GPU_KERNELS": "0"})  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(on.read_text())["cases"]
    assert [(r["sizes"], r["batch"]) for r in rows] == [([2, 16, 3], 32), ([4, 8, 8, 2], 16)]
    for r in rows:
        assert r["loss_finite"] and r["step_ms_pipelined"] > 0 and r["gemm_ms"] > 0
        assert "internal gone" not in result.stdout
    # forward and dweights for each layer, dinputs for all but the first: 2*32*(2*16*2+16*3*3)
    assert rows[0]["step_gflop"] == pytest.approx(2 * 32 * (2 * 16 * 2 + 16 * 3 * 3) / 1e9)
    assert json.loads(off.read_text())["env"]["BACKPROP_GPU_KERNELS"] == "0"
    summary = check("summary", str(on), str(off), str(tmp_path / "missing.json"))
    assert summary.returncode == 0, summary.stderr
    lines = [line for line in summary.stdout.splitlines() if line.startswith("  2-16-3@32")]
    assert len(lines) == 1 and "kernels off " in lines[0] and "kernels off -" not in lines[0]


def test_bad_cases_are_refused_by_name() -> None:
    result = check("timing", "--dry-run", "--json", os.devnull, "--cases", "784-10")
    assert result.returncode != 0 and "--cases: each case is SIZES@BATCH" in result.stderr
