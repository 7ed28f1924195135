"""The ``backend`` fixture: every numeric test runs on NumPy, on array-api-strict's fake
device (the GPU stand-in: no implicit host copies, no mixing devices) and, where a CUDA GPU
works, on CuPy (marked ``gpu``).

Without a GPU the CuPy cases skip and say why. With ``BACKPROP_GPU_REQUIRE_GPU=1`` (set by
``nox -s tests_gpu``) they are never skipped: a missing GPU fails them.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator

import pytest

import backprop_gpu as bg
from backprop_gpu.backend import detect_gpu

REQUIRE_GPU = os.environ.get("BACKPROP_GPU_REQUIRE_GPU") == "1"
_cupy, GPU_REASON = detect_gpu()
GPU_OK = _cupy is not None


def cause(reason: str, width: int = 120) -> str:
    """The cause in a ``detect_gpu`` reason, without the advice after it (its first "; "
    outside parentheses), shortened to ``width`` characters: pytest repeats a skip reason on
    every SKIPPED line."""
    depth = 0
    for i, char in enumerate(reason):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == ";" and depth == 0:
            reason = reason[:i]
            break
    return textwrap.shorten(reason, width, placeholder=" ...")


SKIP_REASON = f"needs a working CUDA GPU: {cause(GPU_REASON)}"
_gpu_marks = [pytest.mark.gpu]
if not GPU_OK and not REQUIRE_GPU:
    _gpu_marks.append(pytest.mark.skip(reason=SKIP_REASON))


def gpu_only(test):  # type: ignore[no-untyped-def]
    """Mark a test that needs CuPy on a GPU (skips with the reason, or fails if required)."""
    for mark in _gpu_marks:
        test = mark(test)
    return test


BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("array_api_strict", id="strict"),
    pytest.param("cupy", id="cupy", marks=_gpu_marks),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[bg.Backend]:
    """The backend under test, active for the test's duration."""
    with bg.use_backend(request.param) as b:
        yield b


def pytest_sessionstart(session: pytest.Session) -> None:
    if REQUIRE_GPU and not GPU_OK:
        pytest.exit(f"BACKPROP_GPU_REQUIRE_GPU=1 but no usable GPU: {GPU_REASON}", returncode=1)
