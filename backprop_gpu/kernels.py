"""Fused kernels: the hot spots of a training step in one pass, on the GPU and on the CPU.

Each function here does in one pass what the plain ``xp`` reference code in the layers does in
several (compare, cast, multiply, ...), and returns ``None`` (or ``False``) when it has no
kernel for the backend and arrays, so the caller runs its reference code instead.

- GPU: CUDA C (``CUDA_SOURCE``, run through ``cupy.RawModule``), compiled by CuPy on first use;
  CI compiles the same source to PTX with NVRTC on a machine with no GPU. The per-element
  arithmetic of every CUDA kernel is also written as a plain Python function (``*_element``),
  the "twin" that the CPU tests hold against the reference path.
- CPU: ``backprop_gpu._cpu``, a small C extension (``_cpu.c``) built at install time when a
  C compiler is there (the package works without it). Its loops follow the reference's
  arithmetic in the same order and dtype (exp and log stay NumPy's), so their results equal
  the reference's bit for bit and training is the same with or without them (tested). It
  pays where NumPy needs several passes or many calls: softmax cross-entropy (forward and
  gradient), the ReLU gradient and the optimizer updates (``python -m benchmarks``
  measures the step with and without it: ``BACKPROP_GPU_KERNELS=0``).

``BACKPROP_GPU_KERNELS=0`` (or ``kernels.enabled = False``) turns every kernel off.

A Numba build of the CPU kernels was measured too ([784, 256, 256, 10]: 5-15 % faster per
step) but costs 127 MiB more resident memory (LLVM), so the C extension was chosen instead.
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import numpy as np

from .backend import Backend, dtype_name

try:
    from . import _cpu

    HAVE_C = True
except ImportError:  # installed without a C compiler: the reference code runs
    HAVE_C = False

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


def _on_cpu(backend: Backend) -> bool:
    """The C extension may apply: it is built and on, and the backend is NumPy."""
    return HAVE_C and enabled and backend.name == "numpy"


def _c(function: Any, *args: Any) -> Any:
    """``function(*args)`` from the C extension, or ``DECLINED`` when it cannot take the
    arrays: it checks their type (exactly numpy.ndarray), dtype (float32 or float64, all
    alike), layout (C-contiguous, aligned) and shapes first, and raises TypeError before it
    writes anything. (Checking all that here too cost 1.8 us for three arrays.)"""
    try:
        return function(*args)
    except TypeError:
        return DECLINED


DECLINED = object()


# --- the fast paths ---------------------------------------------------------------------------


def all_finite(backend: Backend, arrays: list[Any]) -> bool | None:
    """Whether no array of ``arrays`` holds a NaN or an infinity, in one call over them all
    (the reference, a min and a max per array, costs two NumPy calls an array: 30 us an
    epoch for a small model's 8 parameter and state arrays); None without a kernel."""
    if not _on_cpu(backend):
        return None
    result = _c(_cpu.all_finite, arrays)
    return None if result is DECLINED else bool(result)


def add_bias(backend: Backend, out: Any, biases: Any) -> bool:
    """``out += biases`` in place, (N, C) + (1, C), on the CPU; False without a kernel.
    (NumPy's broadcast add runs its inner loop over C only: slow when C is small.)"""
    if (
        not _on_cpu(backend)
        or out.ndim != 2
        or biases.shape not in ((out.shape[1],), (1, out.shape[1]))
    ):
        return False  # (other bias shapes: the reference broadcasts them, or refuses them)
    return _c(_cpu.add_bias, out, biases) is not DECLINED


def column_sums(backend: Backend, values: Any) -> Any:
    """``sum(values, axis=0, keepdims=True)``, (N, C) -> (1, C), adding row after row as
    NumPy does, on the CPU; None without a kernel."""
    if not _on_cpu(backend) or values.ndim != 2 or values.shape[1] == 1:
        return None  # one column: NumPy sums it pairwise (contiguous), not row after row
    out = np.empty((1, values.shape[1]), values.dtype)
    return None if _c(_cpu.column_sums, values, out) is DECLINED else out


def relu_forward(backend: Backend, inputs: Any) -> Any:
    """``max(inputs, 0)`` (NaN stays NaN) on the CPU; None without a kernel."""
    if not _on_cpu(backend):
        return None
    out = np.empty_like(inputs)
    return None if _c(_cpu.relu_forward, inputs, out) is DECLINED else out


def relu_backward(backend: Backend, dvalues: Any, inputs: Any) -> Any:
    """``dvalues`` where ``inputs > 0``, else 0, in one pass; None without a kernel."""
    if dvalues.dtype != inputs.dtype:
        return None
    if _on_cpu(backend):
        out = np.empty_like(dvalues)
        return None if _c(_cpu.relu_backward, dvalues, inputs, out) is DECLINED else out
    if not _on_gpu(backend, dvalues, inputs):
        return None
    out = backend.xp.empty_like(dvalues)
    _launch(f"relu_backward_{_SUFFIX[dtype_name(out.dtype)]}", out.size, dvalues, inputs, out)
    return out


def softmax_cross_entropy(backend: Backend, logits: Any, y: Any, eps: float) -> Any:
    """``(probabilities, mean loss, correct)`` of softmax + cross-entropy over class indices
    ``y`` (int64 (N,)), equal bit for bit to the reference (``Softmax.forward`` and the mean
    of ``-log(clip(p[range(N), y], eps, 1 - eps))``), in four calls instead of about ten:

    - C: each row minus its maximum, and the count of rows whose ``argmax`` is the true class
      (``correct``, for the accuracy, free here);
    - NumPy's own ``exp``, in place (a C loop's ``exp`` rounds differently from NumPy's SIMD
      one: up to 3 ulp in float32, which training amplifies);
    - C: each row divided by its sum, added in NumPy's pairwise order, and the true class's
      probability clipped;
    - NumPy's ``log`` and ``sum`` of those, as the reference.

    None without a kernel."""
    if not _on_cpu(backend):
        return None
    probabilities = np.empty_like(logits)
    correct = _c(_cpu.softmax_shift, logits, y, probabilities)
    if correct is DECLINED:
        return None
    np.exp(probabilities, out=probabilities)
    picked = np.empty(logits.shape[0], dtype=logits.dtype)
    _cpu.softmax_normalize(probabilities, y, picked, eps, 1 - eps)  # (the arrays fit: as above)
    loss = -np.add.reduce(np.log(picked, out=picked)) / logits.shape[0]  # (np.sum, sooner)
    return probabilities, loss, correct


def softmax_cross_entropy_backward(backend: Backend, probabilities: Any, y: Any) -> Any:
    """``(probabilities - onehot(y)) / N`` for int64 class indices ``y``; None without a
    kernel."""
    if not _on_cpu(backend):
        return None
    out = np.empty_like(probabilities)
    return None if _c(_cpu.softmax_ce_backward, probabilities, y, out) is DECLINED else out


def sgd_momentum(
    backend: Backend, param: Any, velocity: Any, grad: Any, lr: float, momentum: float,
    nesterov: bool,
) -> bool:  # fmt: skip
    """Update ``param`` and ``velocity`` in place in one pass; False without a kernel."""
    if _on_cpu(backend):
        args = (param, velocity, grad, lr, momentum, nesterov)
        return _c(_cpu.sgd_momentum, *args) is not DECLINED
    if not _on_gpu(backend, param, velocity, grad):
        return False
    scalar = np.dtype(dtype_name(param.dtype)).type  # lr and momentum in the parameters' dtype
    _launch(
        f"sgd_momentum_{_SUFFIX[dtype_name(param.dtype)]}", param.size,
        param, velocity, grad, scalar(lr), scalar(momentum), np.int32(nesterov),
    )  # fmt: skip
    return True


def sgd(backend: Backend, param: Any, grad: Any, lr: float) -> bool:
    """``param -= lr * grad`` in place on the CPU; False without a kernel."""
    return _on_cpu(backend) and _c(_cpu.sgd, param, grad, lr) is not DECLINED


def adam(
    backend: Backend, param: Any, momentums: Any, cache: Any, grad: Any, *, lr: float,
    beta_1: float, beta_2: float, epsilon: float, t: int,
) -> bool:  # fmt: skip
    """Adam's update of ``param``, ``momentums`` and ``cache`` in place, in one pass on the
    CPU (the scalars computed as the reference computes them); False without a kernel."""
    if not _on_cpu(backend):
        return False
    return _c(
        _cpu.adam, param, momentums, cache, grad, lr, beta_1, 1 - beta_1, beta_2, 1 - beta_2,
        1 - beta_1**t, 1 - beta_2**t, epsilon,
    ) is not DECLINED  # fmt: skip
