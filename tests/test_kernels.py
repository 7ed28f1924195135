"""The fused GPU kernels: their CUDA source compiles (no GPU needed), their per-element twins
equal the plain xp reference path, and on a GPU the kernels themselves do too."""

from __future__ import annotations

import os

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import kernels

from .conftest import gpu_only

RNG = np.random.default_rng(5)


def reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the plain xp code: every fast path off."""
    monkeypatch.setattr(kernels, "enabled", False)


# --- the CUDA source, compiled to PTX without a GPU -----------------------------------------


def test_cuda_source_compiles_to_ptx() -> None:
    """CI sets BACKPROP_GPU_REQUIRE_NVRTC=1 and installs CuPy and NVRTC, so this never skips
    there; elsewhere it skips, saying what is missing."""
    required = os.environ.get("BACKPROP_GPU_REQUIRE_NVRTC") == "1"
    try:
        import cupy

        nvrtc = cupy.cuda.nvrtc
        program = nvrtc.createProgram(kernels.CUDA_SOURCE, "kernels.cu", [], [])
    except Exception as e:  # CuPy or the NVRTC library itself is missing
        if required:
            raise
        pytest.skip(f"needs CuPy and NVRTC (pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12): {e}")
    try:
        nvrtc.compileProgram(program, ["-arch=compute_90", "-std=c++14"])
    except Exception as e:
        pytest.fail(f"the CUDA source does not compile: {e}\n{nvrtc.getProgramLog(program)}")
    ptx = nvrtc.getPTX(program).decode()
    for name in kernels.KERNEL_NAMES:
        assert f".entry {name}(" in ptx, name


# --- the twins: the kernels' per-element arithmetic, against the reference ---------------


def test_relu_backward_twin_equals_the_reference(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    reference(monkeypatch)
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    x[0, :2] = 0.0  # the kink: gradient 0 there
    d = RNG.standard_normal((6, 5)).astype(np.float32)
    relu = bg.ReLU()
    relu.forward(x)
    expected = bg.to_numpy(relu.backward(d))
    twin = np.vectorize(kernels.relu_backward_element, otypes=[np.float32])(d, x)
    assert np.array_equal(twin, expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_twin_equals_the_reference(
    backend: bg.Backend, monkeypatch: pytest.MonkeyPatch, nesterov: bool
) -> None:
    reference(monkeypatch)
    w, g, v = (RNG.standard_normal((4, 3)) for _ in range(3))
    layer = bg.Dense(4, 3, weights=w)
    layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(np.zeros((1, 3)))
    layer.weight_momentums = bg.asarray(v.copy())
    bg.SGD(0.3, momentum=0.8, nesterov=nesterov).update_params(layer)
    twin = np.vectorize(kernels.sgd_momentum_element)(w, v, g, 0.3, 0.8, nesterov)
    assert np.array_equal(twin[0], bg.to_numpy(layer.weights))
    assert np.array_equal(twin[1], bg.to_numpy(layer.weight_momentums))


def test_no_kernel_off_the_gpu(backend: bg.Backend) -> None:
    """NumPy and the stand-in run the reference code: the kernels decline."""
    x = bg.asarray(RNG.standard_normal((4, 4)).astype(np.float32))
    assert kernels.relu_backward(backend, x, x) is None
    assert not kernels.sgd_momentum(backend, x, x, x, 0.1, 0.9, False)


# --- the CUDA build, on a GPU ----------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_kernels_equal_the_reference(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with bg.use_backend("cupy") as backend:
        x, d = (bg.asarray(a) for a in RNG.standard_normal((2, 300, 70)).astype(dtype))
        fast = kernels.relu_backward(backend, d, x)
        w, v, g = (bg.asarray(a) for a in RNG.standard_normal((3, 50, 40)).astype(dtype))
        w_ref, v_ref = w.copy(), v.copy()
        assert kernels.sgd_momentum(backend, w, v, g, 0.1, 0.9, True)
        reference(monkeypatch)
        relu = bg.ReLU()
        relu.forward(x)
        assert bg.to_numpy(fast).tolist() == bg.to_numpy(relu.backward(d)).tolist()
        v_ref = 0.9 * v_ref - 0.1 * g
        w_ref += 0.9 * v_ref - 0.1 * g
        np.testing.assert_allclose(bg.to_numpy(w), bg.to_numpy(w_ref), rtol=1e-6)
        np.testing.assert_allclose(bg.to_numpy(v), bg.to_numpy(v_ref), rtol=1e-6)
