"""Fused elementwise kernels for the GPU: the hot spots of a training step in one pass.

Each function here does in one pass what the plain ``xp`` reference code in the layers does in
several (compare, cast, multiply, ...), and returns ``None`` (or ``False``) when it has no
kernel for the backend, so the caller runs its reference code instead. The kernels are CUDA C
(``CUDA_SOURCE``, run through ``cupy.RawModule``), compiled by CuPy on first use; CI compiles
the same source to PTX with NVRTC on a machine with no GPU.

The per-element arithmetic of every kernel is also written as a plain Python function
(``*_element``), the "twin" that the CPU tests hold against the reference path.
``BACKPROP_GPU_KERNELS=0`` (or ``kernels.enabled = False``) turns the kernels off.

On NumPy there is no fused path: a Numba build of these kernels was measured (the benchmark
suite, [784, 256, 256, 10]) at 5-15 % faster per step but 127 MiB more resident memory
(LLVM), so it was not adopted.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from .backend import Backend, dtype_name

enabled = os.environ.get("BACKPROP_GPU_KERNELS", "1") != "0"

# --- the per-element arithmetic (the twins) -------------------------------------------------


def relu_backward_element(d: float, x: float) -> float:
    """ReLU's gradient: ``d`` times the 0/1 mask of positive inputs (so, like the reference,
    an infinite ``d`` on a masked input gives NaN rather than 0)."""
    return d * (1.0 if x > 0 else 0.0)


def sgd_momentum_element(
    w: float, v: float, g: float, lr: float, momentum: float, nesterov: bool
) -> tuple[float, float]:
    """One parameter's SGD step: ``v = momentum * v - lr * g``; ``w += v`` (Nesterov: ``w +=
    momentum * v - lr * g``). Returns the new (w, v)."""
    v = momentum * v - lr * g
    return (w + (momentum * v - lr * g if nesterov else v)), v


# --- CUDA ---------------------------------------------------------------------------------

CUDA_SOURCE = r"""
template <typename T>
__device__ void relu_backward(const T* d, const T* x, T* out, long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) out[i] = d[i] * (x[i] > T(0) ? T(1) : T(0));
}

template <typename T>
__device__ void sgd_momentum(T* w, T* v, const T* g, T lr, T momentum, int nesterov,
                             long long n) {
    long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    if (i < n) {
        T vi = momentum * v[i] - lr * g[i];
        v[i] = vi;
        w[i] += nesterov ? momentum * vi - lr * g[i] : vi;
    }
}

extern "C" {
__global__ void relu_backward_f32(const float* d, const float* x, float* out, long long n) {
    relu_backward<float>(d, x, out, n);
}
__global__ void relu_backward_f64(const double* d, const double* x, double* out,
                                  long long n) {
    relu_backward<double>(d, x, out, n);
}
__global__ void sgd_momentum_f32(float* w, float* v, const float* g, float lr,
                                 float momentum, int nesterov, long long n) {
    sgd_momentum<float>(w, v, g, lr, momentum, nesterov, n);
}
__global__ void sgd_momentum_f64(double* w, double* v, const double* g, double lr,
                                 double momentum, int nesterov, long long n) {
    sgd_momentum<double>(w, v, g, lr, momentum, nesterov, n);
}
}
"""
KERNEL_NAMES = ("relu_backward_f32", "relu_backward_f64", "sgd_momentum_f32", "sgd_momentum_f64")
_SUFFIX = {"float32": "f32", "float64": "f64"}
_THREADS = 256


@cache
def _cuda_module() -> Any:
    import cupy

    return cupy.RawModule(code=CUDA_SOURCE, options=("-std=c++14",))


def _launch(name: str, n: int, *args: Any) -> None:
    if n == 0:  # a grid of 0 blocks is an invalid launch
        return
    kernel = _cuda_module().get_function(name)
    kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,), (*args, np.int64(n)))


def _on_gpu(backend: Backend, *arrays: Any) -> bool:
    """A kernel applies: CuPy, float32/float64, C-contiguous arrays."""
    return (
        enabled
        and backend.name == "cupy"
        and dtype_name(arrays[0].dtype) in _SUFFIX
        and all(a.flags.c_contiguous for a in arrays)
    )


# --- the fast paths ---------------------------------------------------------------------------


def relu_backward(backend: Backend, dvalues: Any, inputs: Any) -> Any:
    """``dvalues`` where ``inputs > 0``, else 0, in one pass; None without a kernel."""
    if not _on_gpu(backend, dvalues, inputs) or dvalues.dtype != inputs.dtype:
        return None
    out = backend.xp.empty_like(dvalues)
    _launch(f"relu_backward_{_SUFFIX[dtype_name(out.dtype)]}", out.size, dvalues, inputs, out)
    return out


def sgd_momentum(
    backend: Backend, param: Any, velocity: Any, grad: Any, lr: float, momentum: float,
    nesterov: bool,
) -> bool:  # fmt: skip
    """Update ``param`` and ``velocity`` in place in one pass; False without a kernel."""
    if not _on_gpu(backend, param, velocity, grad):
        return False
    scalar = np.dtype(dtype_name(param.dtype)).type  # lr and momentum in the parameters' dtype
    _launch(
        f"sgd_momentum_{_SUFFIX[dtype_name(param.dtype)]}", param.size,
        param, velocity, grad, scalar(lr), scalar(momentum), np.int32(nesterov),
    )  # fmt: skip
    return True
