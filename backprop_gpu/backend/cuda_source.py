"""The CUDA C of ``CupyOps``' kernels, and their arithmetic as Python/NumPy "twins".

Each kernel does in one pass what the reference ``Ops`` method does in several CuPy calls.
Its arithmetic is also written in Python or NumPy (the ``*_element`` and ``*_twin``
functions), in the kernel's order of operations; the CPU tests hold each twin equal to the
reference, and ``gpu``-marked tests hold the kernels themselves equal.

Elementwise kernels (ReLU, bias + ReLU, the optimizer updates) equal the reference bit for
bit on CuPy: CuPy runs each of the reference's operations as its own kernel, rounding once
to the array's dtype, and the kernel rounds every operation once in the same order:

- compiled with ``--fmad=false``: NVRTC otherwise contracts ``momentum * v - lr * g`` into one
  fused multiply-add (FFMA), rounded once instead of twice (CI compiles this source to PTX
  and checks that every float add/sub/mul carries ``.rn``, which ptxas may not fuse);
- division and ``sqrt`` are IEEE (NVRTC's defaults ``-prec-div=true -prec-sqrt=true``, as for
  CuPy's own kernels; CI checks for ``div.rn``/``sqrt.rn`` in the PTX);
- Python scalars are cast as CuPy 14 casts them (NEP 50: a Python float is "weak" and takes
  the array's dtype): ``1 - beta_1`` and ``1 - beta_1**t`` are computed in Python (double)
  and then rounded to the dtype once, as CuPy passes them to its kernel. ``grad**2`` is
  CuPy's ``square`` (``x * x``: ``ndarray.__pow__`` special-cases the exponent 2).

The reductions (column sums, softmax row sums, the mean loss) add in a fixed order, stated
with each kernel, which is not CuPy's: they differ from the reference by the rounding of a
sum, and the softmax also by ``exp``'s rounding (tolerances in ``softmax_tolerances``).

float16 and bfloat16 (the mixed policies' compute dtypes, ``backprop_gpu/precisions.py``):
the kernels a mixed step runs on 16-bit arrays (``HALF_KERNELS``: the ReLU's backward, bias +
ReLU, ReLU backward + bias sums, the batch gather, and ``unscale``, the hand-off of a 16-bit
gradient to its float32 master) have "_f16" and "_bf16" variants. They need no CUDA header
(NVRTC has none here): an element is a 16-bit pattern (``float16_bits``, ``bfloat16_bits``),
widened to float exactly, every operation is done in float (``.rn``, as for float32), and
each stored result is rounded once to the 16-bit type, to nearest even (``cvt.rn.f16.f32``;
``cvt.rn.bf16.f32`` from sm_80, and below that the same rounding in integer arithmetic, as
cuda_bf16.h does). That is CuPy's own float16/bfloat16 arithmetic (``cupy/float16.cuh``,
``cupy/bfloat16.cuh``: an operand converts to float, the float result converts back with
``__float2half_rn`` / ``__float2bfloat16_rn``), and NumPy's and ml_dtypes': float32 holds the
exact sum, difference and product of two 16-bit values or rounds them innocuously (24 >= 2 *
11 + 2 bits), so the elementwise kernels equal the reference bit for bit on CuPy, and their
twins (``relu_backward_twin``, ``bias_relu_twin``, ``unscale_twin``) equal it on NumPy.
bfloat16's subnormals are float32's: they survive because nothing is compiled with
``-ftz=true`` (NVRTC's default, and CuPy's). The column sums accumulate in float and round
once at the end, as CuPy's ``sum`` of float16/bfloat16 does (a float accumulator), in the
kernel's order; NumPy's axis-0 sum rounds to the 16-bit type after every row instead
(``half_sum_tolerance`` bounds both differences). The rest of a mixed step has no kernel
to vary: ReLU alone and the bias gradient are CuPy's own ``maximum`` and ``sum``, Dropout's
mask is CuPy arithmetic on float32 uniforms (the Philox kernel), and the softmax, the loss
and the optimizer updates run in float32.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

NVRTC_OPTIONS = ("-std=c++14", "--fmad=false")

COL_TILE, ROW_THREADS = 32, 8  # relu_backward_bias_gradient's block: (columns, row threads)
REDUCE_THREADS = 256  # softmax_ce_reduce's one block

# --- the elementwise arithmetic (the twins), in the dtype of their NumPy scalar arguments -


def relu_backward_element(d: float, x: float) -> float:
    """ReLU's gradient: ``d`` times the 0/1 mask of positive inputs (so, like the reference,
    an infinite ``d`` on a masked input gives NaN rather than 0)."""
    return d * (1.0 if x > 0 else 0.0)


def relu_element(x: Any) -> Any:
    """CuPy's ``maximum(x, 0)``: NaN stays NaN; otherwise the larger of ``x`` and 0 (the
    kernel calls the same ``max`` as CuPy's ``maximum``, so even the sign of a -0.0 input's
    result is CuPy's; here +0.0)."""
    if x != x:
        return x
    return x if x > 0 else type(x)(0)


def bias_relu_element(z: Any, bias: Any) -> Any:
    """One element of ``bias_relu``: ``max(z + bias, 0)`` (the sum rounded to the dtype)."""
    return relu_element(z + bias)


def sgd_element(w: Any, g: Any, lr: Any) -> Any:
    """``w - lr * g`` (``lr`` already in the dtype)."""
    return w - lr * g


def sgd_momentum_element(
    w: float, v: float, g: float, lr: float, momentum: float, nesterov: bool
) -> tuple[float, float]:
    """One parameter's SGD step: ``v = momentum * v - lr * g``; ``w += v`` (Nesterov: ``w +=
    momentum * v - lr * g``). Returns the new (w, v)."""
    v = momentum * v - lr * g
    return (w + (momentum * v - lr * g if nesterov else v)), v


def adagrad_element(w: Any, cache: Any, g: Any, lr: Any, epsilon: Any) -> tuple[Any, Any]:
    """``cache + g * g``, then ``w - (lr * g) / (sqrt(cache) + epsilon)``: (new w, new cache)."""
    cache = cache + g * g
    return w - (lr * g) / (np.sqrt(cache) + epsilon), cache


def rmsprop_element(
    w: Any, cache: Any, g: Any, lr: Any, rho: Any, one_minus_rho: Any, epsilon: Any
) -> tuple[Any, Any]:
    """``cache * rho + (1 - rho) * (g * g)``, then ``w - (lr * g) / (sqrt(cache) +
    epsilon)``: (new w, new cache)."""
    cache = cache * rho + one_minus_rho * (g * g)
    return w - (lr * g) / (np.sqrt(cache) + epsilon), cache


def adam_element(
    w: Any, m: Any, cache: Any, g: Any, lr: Any, beta_1: Any, one_minus_beta_1: Any,
    beta_2: Any, one_minus_beta_2: Any, correction_1: Any, correction_2: Any, epsilon: Any,
) -> tuple[Any, Any, Any]:  # fmt: skip
    """``m * beta_1 + (1 - beta_1) * g``, ``cache * beta_2 + (1 - beta_2) * (g * g)``, then
    ``w - (lr * (m / correction_1)) / (sqrt(cache / correction_2) + epsilon)`` with
    ``correction_k = 1 - beta_k**t``: (new w, new m, new cache)."""
    m = m * beta_1 + one_minus_beta_1 * g
    cache = cache * beta_2 + one_minus_beta_2 * (g * g)
    return w - (lr * (m / correction_1)) / (np.sqrt(cache / correction_2) + epsilon), m, cache


def optimizer_scalars(dtype: Any, **scalars: float) -> dict[str, Any]:
    """The Python scalars of an update as CuPy 14 passes them to a kernel on ``dtype``
    arrays: each rounded once from its Python (double) value."""
    cast = np.dtype(dtype).type
    return {name: cast(value) for name, value in scalars.items()}


# --- the array twins: every dtype, float16 and bfloat16 included -------------------------

HALF = ("float16", "bfloat16")  # the 16-bit dtypes, computed in float32


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype a kernel computes in for ``dtype`` arrays: float32 for float16 and bfloat16
    (``Num<T>::C`` in the CUDA source), the dtype itself for float32 and float64."""
    dtype = np.dtype(dtype)
    return np.dtype(np.float32) if dtype.name in HALF else dtype


def narrow(values: np.ndarray, dtype: Any) -> np.ndarray:
    """Values in the compute dtype stored as ``dtype`` arrays: rounded once, to nearest even
    (the kernels' ``Num<T>::store``; NumPy's and ml_dtypes' casts round the same way). NaN
    payloads aside: a GPU's conversions give the canonical NaN, on both sides of a test."""
    return values.astype(dtype)


def bfloat16_bits_rn(values: np.ndarray) -> np.ndarray:
    """The bfloat16 store of a GPU before sm_80 (no ``cvt.rn.bf16.f32``), in NumPy: float32
    ``values`` rounded to nearest even on their bits, ``(u + 0x7fff + ((u >> 16) & 1)) >> 16``
    (a carry out of the mantissa steps the exponent, up to infinity), NaN as 0x7fff; the bit
    patterns as uint16."""
    u = np.ascontiguousarray(values, np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FFF), rounded)


def relu_backward_twin(dvalues: np.ndarray, inputs: np.ndarray) -> np.ndarray:
    """``relu_backward``'s kernel on whole arrays: ``d * (x > 0 ? 1 : 0)`` in the compute
    dtype, stored in ``dvalues``' dtype."""
    c = compute_dtype(dvalues.dtype)
    mask = (inputs.astype(c) > 0).astype(c)
    return narrow(dvalues.astype(c) * mask, dvalues.dtype)


def bias_relu_twin(z: np.ndarray, biases: np.ndarray) -> np.ndarray:
    """``bias_relu``'s kernel on whole arrays: ``z + biases`` stored in the dtype (the
    reference's ``z += biases``), then ``relu_element`` of it (NaN stays NaN, otherwise
    ``max(s, 0)``: +0.0 for a zero of either sign), stored again (exactly)."""
    c = compute_dtype(z.dtype)
    total = narrow(z.astype(c) + biases.reshape(1, -1).astype(c), z.dtype).astype(c)
    relu = np.where(np.isnan(total) | (total > 0), total, c.type(0))
    return narrow(relu, z.dtype)


def unscale_twin(grad: np.ndarray, scale: float) -> tuple[np.ndarray, bool]:
    """``unscale``'s kernel: (``float32(grad) / float32(scale)``, or the cast alone when
    ``scale`` is 1.0, and whether any of it is not finite)."""
    out = grad.astype(np.float32)  # (exact from float16 and bfloat16)
    if scale != 1.0:
        out = out / np.float32(scale)
    return out, not bool(np.isfinite(out).all())


# --- the reductions' twins (NumPy, in the kernels' order) ---------------------------------


def _tree(partial: np.ndarray) -> np.ndarray:
    """Pairwise halving over axis 0, as the kernels' shared-memory loops:
    ``p[i] += p[i + half]`` for half = len / 2, ..., 1; returns p[0]."""
    half = partial.shape[0] // 2
    while half:
        partial[:half] = partial[:half] + partial[half : 2 * half]
        half //= 2
    return np.asarray(partial[0])


def _strided_sums(values: np.ndarray, threads: int) -> np.ndarray:
    """Thread t's sum of rows t, t + threads, ... of ``values`` (rows first), in increasing
    order starting from 0; (threads, ...) partial sums. (Padding with zero rows adds +0.0,
    which changes no sum: a sum that starts at +0.0 is never -0.0.)"""
    rows = values.shape[0]
    padded = -(-rows // threads) * threads
    steps = np.zeros((padded, *values.shape[1:]), values.dtype)
    steps[:rows] = values
    acc = np.zeros((threads, *values.shape[1:]), values.dtype)
    for chunk in steps.reshape(-1, threads, *values.shape[1:]):
        acc = acc + chunk
    return acc


def relu_backward_bias_gradient_twin(
    dvalues: np.ndarray, output: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``relu_backward_bias_gradient``'s kernel in NumPy: (dinputs (N, C), column sums (1, C))
    with each column summed as the kernel does (ROW_THREADS strided partial sums, then
    pairwise), in the compute dtype (float32 for float16 and bfloat16: the stored dinputs
    widened, the sums rounded to the dtype once, at the end)."""
    dinputs = relu_backward_twin(dvalues, output)
    sums = _tree(_strided_sums(dinputs.astype(compute_dtype(dinputs.dtype)), ROW_THREADS))
    return dinputs, narrow(sums, dinputs.dtype)[None, :]


def half_sum_tolerance(values: np.ndarray, reference: np.ndarray, accumulate: Any) -> np.ndarray:
    """How far the 16-bit column sums of ``relu_backward_bias_gradient``'s kernel may be from
    a reference's, ``reference`` (1, C), for the (N, C) 16-bit ``values`` they sum, when the
    reference adds them in the dtype ``accumulate`` (float32: CuPy's ``sum``, which rounds to
    the 16-bit type once at the end as the kernel does; the 16-bit dtype itself: NumPy's
    axis-0 sum, rounded after each row). The kernel's float32 sum is within (N - 1) eps32
    sum(|column|) of the exact one and the reference's within (N - 1) eps_acc sum(|column|)
    (Higham's bound with eps for the unit roundoff eps / 2: a factor 2 spare, which also
    covers the second-order terms); the two roundings to the 16-bit type at the end (one
    where the reference accumulates in it) add at most eps16 (|reference| + that error);
    roundings to subnormals at most half the smallest subnormal each, (N + 1) of them.
    Absolute bounds, (1, C)."""
    n = values.shape[0]
    wide = np.abs(values.astype(np.float64)).sum(axis=0, keepdims=True)
    eps32 = float(np.finfo(np.float32).eps)
    eps_acc, info = float(np.finfo(accumulate).eps), np.finfo(values.dtype)
    err: np.ndarray = max(n - 1, 0) * (eps32 + eps_acc) * wide
    ref = np.abs(reference.astype(np.float64))
    bound: np.ndarray = (
        err + float(info.eps) * (ref + err) + (n + 1) * float(info.smallest_subnormal)
    )
    return bound


def softmax_ce_rows_twin(
    logits: np.ndarray, y: np.ndarray, lo: float, hi: float, grad: bool = True
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray]:
    """``softmax_ce_rows`` in NumPy, every row at once but each row in the kernel's column
    order: (probabilities, dinputs or None, logp = log(clip(p[y], lo, hi)), hit) with hit 1
    where the first maximal logit (a NaN first) is at ``y``, 0 where not, -1 where ``y`` is
    outside [0, C) (p, dinputs and logp NaN on that row). NumPy's ``exp`` and ``log`` stand
    in for CUDA's (a few ulp apart: see ``softmax_tolerances``)."""
    dtype = logits.dtype.type
    rows, cols = logits.shape
    m, arg = logits[:, 0].copy(), np.zeros(rows, np.int64)
    with np.errstate(invalid="ignore", over="ignore"):
        for j in range(1, cols):
            v = logits[:, j]
            new = (v > m) | (np.isnan(v) & ~np.isnan(m))
            m[new], arg[new] = v[new], j
        e = np.exp(logits - m[:, None])
        s = np.zeros(rows, logits.dtype)
        for j in range(cols):
            s = s + e[:, j]
        p = e / s[:, None]
        bad = (y < 0) | (y >= cols)
        label = np.where(bad, 0, y)
        p[bad] = np.nan
        dinputs = None
        if grad:
            onehot = (np.arange(cols)[None, :] == label[:, None]).astype(logits.dtype)
            dinputs = (p - onehot) / dtype(rows)
        picked = p[np.arange(rows), label]
        picked = np.where(
            picked < dtype(lo), dtype(lo), np.where(picked > dtype(hi), dtype(hi), picked)
        )
        logp = np.log(picked)
    hit = np.where(bad, -1, (arg == label).astype(np.int32)).astype(np.int32)
    return p, dinputs, logp, hit


def softmax_ce_reduce_twin(logp: np.ndarray, hit: np.ndarray) -> tuple[Any, np.float32, int]:
    """``softmax_ce_reduce`` in NumPy: (mean loss ``-sum(logp) / N`` with the sum in the
    kernel's order, correct rows as float32, rows with a bad label)."""
    total = _tree(_strided_sums(logp, REDUCE_THREADS))
    loss = -total / logp.dtype.type(logp.shape[0])
    return loss, np.float32((hit == 1).sum()), int((hit == -1).sum())


def softmax_tolerances(p: np.ndarray, d: np.ndarray, loss: float) -> tuple[Any, Any, float]:
    """How far the CUDA softmax cross-entropy may be from the reference's on CuPy, as absolute
    bounds (for p, for dinputs, for the loss), from the reference's p (N, C), dinputs and
    loss. With eps the dtype's machine epsilon and C the classes: ``x - max`` is the same
    rounding in both; each ``exp`` is within 2 ulp of exact in both (CUDA's expf/exp, the
    latter 1 ulp), so 4 eps apart; each row sum, C - 1 additions of positive terms in
    another order, is within (C - 1) eps relative (plus the exps' 4 eps); the division, half
    an ulp in each: p within (C + 8) eps relative. dinputs ``(p - onehot) / N``: p's error,
    plus the subtraction's and the division's roundings (2 eps relative to the result in each
    of the two). The loss: each row's log within (C + 8) eps absolute from p, plus log's
    rounding (2 eps relative); the mean, N additions in another order, within (N + 1) eps
    relative to the sum of |log p|. Subnormal results may differ by a few of the smallest
    subnormals."""
    info = np.finfo(p.dtype)
    eps, rows, cols = float(info.eps), p.shape[0], p.shape[1]
    tiny = 8 * float(info.smallest_subnormal)
    p_tol = (cols + 8) * eps * np.abs(p) + tiny
    d_tol = ((cols + 8) * eps * np.abs(p) + 4 * eps * np.abs(d) * rows) / rows + tiny
    loss_tol = eps * (cols + 8 + (rows + 3) * abs(loss))
    return p_tol, d_tol, loss_tol


# --- CUDA ---------------------------------------------------------------------------------

_TEMPLATES = r"""
#ifndef NAN
#define NAN __int_as_float(0x7fffffff)
#endif

// Every elementwise kernel walks the array in a grid-stride loop: any n fits any grid.
#define GRID_STRIDE(i, n)                                                            \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n);     \
         i += (long long)blockDim.x * gridDim.x)

// --- element types ------------------------------------------------------------------
// Num<T>: how a kernel reads and writes T arrays. T = float, double: as they are. The 16-bit
// types are their bit patterns (no cuda_fp16.h / cuda_bf16.h needed), computed in C = float:
// load widens exactly, store rounds once to nearest even, with the instructions those
// headers use on each architecture (CuPy's float16/bfloat16 classes: operator float(), and
// back through __float2half_rn / __float2bfloat16_rn), so even a NaN's bits are CuPy's.
struct float16_bits { unsigned short bits; };
struct bfloat16_bits { unsigned short bits; };
static_assert(sizeof(float16_bits) == 2 && sizeof(bfloat16_bits) == 2, "16-bit elements");

template <typename T>
struct Num {
    typedef T C;
    static __device__ T load(T x) { return x; }
    static __device__ T store(C x) { return x; }
};

template <>
struct Num<float16_bits> {
    typedef float C;
    static __device__ float load(float16_bits x) {
        float f;
        asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
        return f;
    }
    static __device__ float16_bits store(float f) {
        float16_bits x;
        asm("cvt.rn.f16.f32 %0, %1;" : "=h"(x.bits) : "f"(f));
        return x;
    }
};

template <>
struct Num<bfloat16_bits> {
    typedef float C;
    static __device__ float load(bfloat16_bits x) {  // (exact: bfloat16 is float's top half)
#if __CUDA_ARCH__ >= 900  // (as cuda_bf16.h: so a NaN's bits are CuPy's too)
        float f;
        asm("cvt.f32.bf16 %0, %1;" : "=f"(f) : "h"(x.bits));
        return f;
#else
        return __uint_as_float((unsigned int)x.bits << 16);
#endif
    }
    static __device__ bfloat16_bits store(float f) {
        bfloat16_bits x;
#if __CUDA_ARCH__ >= 800 && !defined(BF16_ROUND_BITS)
        asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(x.bits) : "f"(f));
#else  // cvt to bf16 needs sm_80: below, the same rounding on the bits (NaN as 0x7fff, as
       // cuda_bf16.h); -DBF16_ROUND_BITS takes this path anywhere (the GPU tests run it)
        unsigned int u = __float_as_uint(f);
        x.bits = isnan(f) ? (unsigned short)0x7fff
                          : (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
#endif
        return x;
    }
};

// --- ReLU -----------------------------------------------------------------------------

template <typename T>
__device__ void relu_backward(const T* d, const T* x, T* out, long long n) {
    typedef Num<T> N;
    typedef typename N::C C;
    GRID_STRIDE(i, n) out[i] = N::store(N::load(d[i]) * (N::load(x[i]) > C(0) ? C(1) : C(0)));
}

// CuPy's maximum(x, 0) (for float16 and bfloat16 too, on the value widened to float): NaN
// stays NaN (as CuPy's own NAN), else max(x, 0).
template <typename C>
__device__ C relu_value(C x) {
    return isnan(x) ? C(NAN) : C(max(x, C(0)));
}

// z = max(z + biases, 0) in place: z (rows, cols), biases (cols,); the sum stored in T
// first, as the reference's z += biases
template <typename T>
__device__ void bias_relu(T* z, const T* biases, long long cols, long long n) {
    typedef Num<T> N;
    GRID_STRIDE(i, n) {
        T total = N::store(N::load(z[i]) + N::load(biases[i % cols]));
        z[i] = N::store(relu_value(N::load(total)));
    }
}

// dinputs = d * (output > 0) and the column sums of dinputs, deterministic: block
// (COL_TILE, ROW_THREADS) takes COL_TILE columns; thread (tx, ty) adds rows ty, ty +
// ROW_THREADS, ... of column tx in increasing order, starting from 0; then the ROW_THREADS
// partial sums of a column are added pairwise, p[ty] += p[ty + half] for half = 4, 2, 1.
// The sums are in C (float for the 16-bit types), stored in T once, at the end.
#define COL_TILE 32
#define ROW_THREADS 8
template <typename T>
__device__ void relu_backward_bias_gradient(const T* d, const T* out, T* dinputs,
                                            T* dbiases, long long rows, long long cols) {
    typedef Num<T> N;
    typedef typename N::C C;
    __shared__ C partial[ROW_THREADS][COL_TILE + 1];
    long long tiles = (cols + COL_TILE - 1) / COL_TILE;
    for (long long tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
        long long c = tile * COL_TILE + threadIdx.x;
        C acc = C(0);
        if (c < cols) {
            for (long long r = threadIdx.y; r < rows; r += ROW_THREADS) {
                long long i = r * cols + c;
                T v = N::store(N::load(d[i]) * (N::load(out[i]) > C(0) ? C(1) : C(0)));
                dinputs[i] = v;
                acc = acc + N::load(v);
            }
        }
        partial[threadIdx.y][threadIdx.x] = acc;
        __syncthreads();
        for (int half = ROW_THREADS / 2; half > 0; half /= 2) {
            if (threadIdx.y < half)
                partial[threadIdx.y][threadIdx.x] =
                    partial[threadIdx.y][threadIdx.x] + partial[threadIdx.y + half][threadIdx.x];
            __syncthreads();
        }
        if (threadIdx.y == 0 && c < cols) dbiases[c] = N::store(partial[0][threadIdx.x]);
        __syncthreads();  // (partial is reused by the next tile)
    }
}

// --- the mixed step's hand-off: a 16-bit gradient to its float32 master ------------------

// out = float(g) / scale (divide != 0) or float(g), the reference's astype then "/ scale"
// (scale already float32, as CuPy casts a Python float); nonfinite[0] = 1 when any result is
// not finite, one atomic a block at most (never reset here: the caller zeroes it).
template <typename T>
__device__ void unscale(const T* g, float* out, float scale, int divide, int* nonfinite,
                        long long n) {
    int bad = 0;
    GRID_STRIDE(i, n) {
        float v = Num<T>::load(g[i]);
        if (divide) v = v / scale;
        out[i] = v;
        bad |= !isfinite(v);
    }
    if (__syncthreads_or(bad) && threadIdx.x == 0) atomicOr(nonfinite, 1);
}

// --- softmax cross-entropy --------------------------------------------------------------

// One thread a row (grid-stride over rows), each row in three passes in column order:
// the maximum and the first index holding it (a NaN is the maximum, the first NaN its index,
// as numpy.argmax); e_j = exp(x_j - max) summed left to right from 0; p_j = e_j / sum and,
// with grad, dinputs_j = (p_j - [j == y]) / n. Per row: log(clip(p_y, lo, hi)) in logp and
// hit = 1 if the argmax is y, 0 if not, -1 if y is outside [0, cols) (that row's p,
// dinputs and logp are NaN then, and nothing is read at y).
template <typename T>
__device__ void softmax_ce_rows(const T* logits, const long long* y, T* p, T* dinputs,
                                T* logp, int* hit, T lo, T hi, T n_rows, int grad,
                                long long rows, long long cols) {
    GRID_STRIDE(r, rows) {
        const T* x = logits + r * cols;
        T* pr = p + r * cols;
        T* dr = dinputs + r * cols;
        long long label = y[r];
        if (label < 0 || label >= cols) {
            for (long long j = 0; j < cols; ++j) {
                pr[j] = T(NAN);
                if (grad) dr[j] = T(NAN);
            }
            logp[r] = T(NAN);
            hit[r] = -1;
            continue;
        }
        T m = x[0];
        long long arg = 0;
        for (long long j = 1; j < cols; ++j) {
            T v = x[j];
            if (v > m || (isnan(v) && !isnan(m))) {
                m = v;
                arg = j;
            }
        }
        T s = T(0);
        for (long long j = 0; j < cols; ++j) {
            T e = exp(x[j] - m);
            pr[j] = e;
            s = s + e;
        }
        for (long long j = 0; j < cols; ++j) {
            T pj = pr[j] / s;
            pr[j] = pj;
            if (grad) dr[j] = (pj - (j == label ? T(1) : T(0))) / n_rows;
        }
        T picked = pr[label];
        picked = picked < lo ? lo : (picked > hi ? hi : picked);  // CuPy's clip
        logp[r] = log(picked);
        hit[r] = arg == label ? 1 : 0;
    }
}

// The one reduction after softmax_ce_rows, in one block of REDUCE_THREADS threads: thread t
// adds logp[t], logp[t + REDUCE_THREADS], ... in increasing order from 0, then the partial
// sums are added pairwise (p[t] += p[t + half], half = REDUCE_THREADS / 2, ..., 1).
// loss = -sum / n_rows (the reference's -sum(log p) / N); correct = the rows with hit 1 (as
// float32); errors[0] += the rows with hit -1 (a cumulative count: CupyOps.label_errors).
#define REDUCE_THREADS 256
template <typename T>
__device__ void softmax_ce_reduce(const T* logp, const int* hit, T* loss, float* correct,
                                  long long* errors, T n_rows, long long rows) {
    __shared__ T partial[REDUCE_THREADS];
    __shared__ long long hits[REDUCE_THREADS];
    __shared__ long long bad[REDUCE_THREADS];
    T acc = T(0);
    long long h = 0, b = 0;
    for (long long r = threadIdx.x; r < rows; r += REDUCE_THREADS) {
        acc = acc + logp[r];
        h += hit[r] == 1;
        b += hit[r] == -1;
    }
    partial[threadIdx.x] = acc;
    hits[threadIdx.x] = h;
    bad[threadIdx.x] = b;
    __syncthreads();
    for (int half = REDUCE_THREADS / 2; half > 0; half /= 2) {
        if (threadIdx.x < half) {
            partial[threadIdx.x] = partial[threadIdx.x] + partial[threadIdx.x + half];
            hits[threadIdx.x] += hits[threadIdx.x + half];
            bad[threadIdx.x] += bad[threadIdx.x + half];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        loss[0] = -partial[0] / n_rows;
        correct[0] = (float)hits[0];
        errors[0] += bad[0];
    }
}

// --- optimizer updates: each the reference's CuPy ops in order, one rounding each -------

template <typename T>
__device__ void sgd(T* w, const T* g, T lr, long long n) {
    GRID_STRIDE(i, n) w[i] = w[i] - lr * g[i];
}

template <typename T>
__device__ void sgd_momentum(T* w, T* v, const T* g, T lr, T momentum, int nesterov,
                             long long n) {
    GRID_STRIDE(i, n) {
        T vi = momentum * v[i] - lr * g[i];
        v[i] = vi;
        w[i] = w[i] + (nesterov ? momentum * vi - lr * g[i] : vi);
    }
}

template <typename T>
__device__ void adagrad(T* w, T* cache, const T* g, T lr, T epsilon, long long n) {
    GRID_STRIDE(i, n) {
        T gi = g[i];
        T c = cache[i] + gi * gi;
        cache[i] = c;
        w[i] = w[i] - (lr * gi) / (sqrt(c) + epsilon);
    }
}

template <typename T>
__device__ void rmsprop(T* w, T* cache, const T* g, T lr, T rho, T one_minus_rho,
                        T epsilon, long long n) {
    GRID_STRIDE(i, n) {
        T gi = g[i];
        T c = cache[i] * rho + one_minus_rho * (gi * gi);
        cache[i] = c;
        w[i] = w[i] - (lr * gi) / (sqrt(c) + epsilon);
    }
}

template <typename T>
__device__ void adam(T* w, T* m, T* cache, const T* g, T lr, T beta_1, T one_minus_beta_1,
                     T beta_2, T one_minus_beta_2, T correction_1, T correction_2, T epsilon,
                     long long n) {
    GRID_STRIDE(i, n) {
        T gi = g[i];
        T mi = m[i] * beta_1 + one_minus_beta_1 * gi;
        T ci = cache[i] * beta_2 + one_minus_beta_2 * (gi * gi);
        m[i] = mi;
        cache[i] = ci;
        w[i] = w[i] - (lr * (mi / correction_1)) / (sqrt(ci / correction_2) + epsilon);
    }
}

/* A shuffled batch in one launch: xo = x[idx] (rows of cols elements) and yo = y[idx]
 * (int64 labels). Copies only: bit for bit two takes. */
template <typename T>
__device__ void take_batch(const T* x, const long long* y, const long long* idx, T* xo,
                           long long* yo, long long rows, long long cols, long long n) {
    const long long xs = rows * cols;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)blockDim.x * gridDim.x) {
        if (i < xs) xo[i] = x[idx[i / cols] * cols + i % cols];
        else yo[i - xs] = y[idx[i - xs]];
    }
}
"""

# The exported kernels: each template above instantiated for the dtypes it serves, "_f32"
# (float32), "_f64" (float64), "_f16" (float16), "_bf16" (bfloat16); T in a signature is the
# element type. The 16-bit variants are those a mixed step runs (precisions.py): its layers
# in float16/bfloat16, its loss and softmax, and the optimizer's float32 masters, in float32.
WIDE, HALF_SUFFIXES = ("f32", "f64"), ("f16", "bf16")
ALL = WIDE + HALF_SUFFIXES
_ENTRIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "relu_backward": ("const T* d, const T* x, T* out, long long n", ALL),
    "bias_relu": ("T* z, const T* biases, long long cols, long long n", ALL),
    "relu_backward_bias_gradient": (
        "const T* d, const T* out, T* dinputs, T* dbiases, long long rows, long long cols",
        ALL,
    ),
    "softmax_ce_rows": (
        "const T* logits, const long long* y, T* p, T* dinputs, T* logp, int* hit, T lo, T hi,"
        " T n_rows, int grad, long long rows, long long cols",
        WIDE,
    ),
    "softmax_ce_reduce": (
        "const T* logp, const int* hit, T* loss, float* correct, long long* errors, T n_rows,"
        " long long rows",
        WIDE,
    ),
    "take_batch": (
        "const T* x, const long long* y, const long long* idx, T* xo, long long* yo,"
        " long long rows, long long cols, long long n",
        ALL,
    ),
    "unscale": (
        "const T* g, float* out, float scale, int divide, int* nonfinite, long long n",
        HALF_SUFFIXES,
    ),
    "sgd": ("T* w, const T* g, T lr, long long n", WIDE),
    "sgd_momentum": ("T* w, T* v, const T* g, T lr, T momentum, int nesterov, long long n", WIDE),
    "adagrad": ("T* w, T* cache, const T* g, T lr, T epsilon, long long n", WIDE),
    "rmsprop": (
        "T* w, T* cache, const T* g, T lr, T rho, T one_minus_rho, T epsilon, long long n",
        WIDE,
    ),
    "adam": (
        "T* w, T* m, T* cache, const T* g, T lr, T beta_1, T one_minus_beta_1, T beta_2,"
        " T one_minus_beta_2, T correction_1, T correction_2, T epsilon, long long n",
        WIDE,
    ),
}
SUFFIX = {"float32": "f32", "float64": "f64", "float16": "f16", "bfloat16": "bf16"}
_C_TYPES = {"f32": "float", "f64": "double", "f16": "float16_bits", "bf16": "bfloat16_bits"}
# each kernel's suffixes ("bias_relu" -> ("f32", "f64", "f16", "bf16")); those with 16-bit ones
SUFFIXES = {name: suffixes for name, (_, suffixes) in _ENTRIES.items()}
HALF_KERNELS = tuple(name for name, suffixes in SUFFIXES.items() if "f16" in suffixes)


def _entry(name: str, params: str, suffix: str) -> str:
    c_type = _C_TYPES[suffix]
    args = ", ".join(p.split()[-1].lstrip("*") for p in params.split(","))
    typed = re.sub(r"\bT\b", c_type, params)
    return f"__global__ void {name}_{suffix}({typed}) {{ {name}<{c_type}>({args}); }}"


CUDA_SOURCE = (
    _TEMPLATES
    + 'extern "C" {\n'
    + "\n".join(_entry(n, p, s) for n, (p, suffixes) in _ENTRIES.items() for s in suffixes)
    + "\n}\n"
)
KERNEL_NAMES = tuple(f"{n}_{s}" for n, (_, suffixes) in _ENTRIES.items() for s in suffixes)


def module() -> tuple[str, tuple[str, ...]]:
    """The source of the one CUDA module CupyOps compiles (these kernels and Dropout's
    Philox generator, ``backprop_gpu/philox.py``) and the names of its kernels."""
    from ..philox import PHILOX_CUDA_SOURCE, PHILOX_KERNEL_NAMES  # (philox imports backend)

    return CUDA_SOURCE + PHILOX_CUDA_SOURCE, (*KERNEL_NAMES, *PHILOX_KERNEL_NAMES)
