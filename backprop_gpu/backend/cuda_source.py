"""The CUDA C of ``CupyOps``' kernels, and their per-element arithmetic as Python "twins".

Each kernel does in one pass what the reference ``Ops`` method does in several. Its
per-element arithmetic is also written as a plain Python function (``*_element``), which the
CPU tests hold equal to the reference; a ``gpu``-marked test holds the kernel itself equal.

Compiled with ``--fmad=false``: NVRTC otherwise contracts ``momentum * v - lr * g`` into one
fused multiply-add (FFMA), rounded once instead of twice, so the GPU's result would differ
from the reference's in the last bit (and, at cancellations, far more in relative terms). CI
compiles this source to PTX and checks that no ``fma`` instruction appears.
"""

from __future__ import annotations

NVRTC_OPTIONS = ("-std=c++14", "--fmad=false")

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
SUFFIX = {"float32": "f32", "float64": "f64"}
