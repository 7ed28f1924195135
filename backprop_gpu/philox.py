"""Philox4x32-10, the counter-based generator of Dropout's masks: the same bits on every backend.

Philox (Salmon, Moraes, Dror and Shaw, "Parallel random numbers: as easy as 1, 2, 3", SC 2011;
the Random123 library) maps a 128-bit counter and a 64-bit key to 128 random bits through 10
rounds of 32x32->64-bit multiplications, XORs and key bumps. Nothing is carried from one draw
to the next, so draw ``i`` of stream ``s`` under seed ``k`` is a pure function of ``(k, s, i)``:
any device computes any part of it without the rest, and no generator state exists to build,
keep or checkpoint.

The word stream of ``(seed, stream)``: word ``4 b + j`` is output ``j`` of Philox with counter
``(b mod 2**32, b // 2**32, stream[0], stream[1])`` and key ``(seed mod 2**32, seed // 2**32)``.
All four outputs of a block are used (not one per element): a quarter of the rounds for the
same number of words, and a slice of elements still starts at any word. A float32 element
takes one word, ``(w >> 8) * 2**-24`` (24 bits); a float64 element two, ``((w0 >> 5) * 2**26 +
(w1 >> 6)) * 2**-53`` (53 bits, as NumPy's and the Mersenne Twister's ``random()``). Both are
exact integer-to-float conversions times a power of two, so every device rounds them alike:
the uniforms are bit-equal on NumPy, CuPy and array-api-strict.

Three implementations with one signature: ``uniform_reference`` (plain ``xp`` integer
arithmetic, any backend), ``uniform_c`` (the C extension, NumPy) and ``uniform_cuda``
(``PHILOX_CUDA_SOURCE`` through ``cupy.RawModule``, CuPy); ``uniform`` picks one.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import Backend, dtype_name

try:
    from . import _cpu

    HAVE_C = True
except ImportError:  # installed without a C compiler
    HAVE_C = False

__all__ = [
    "PHILOX_CUDA_SOURCE",
    "philox4x32",
    "uniform",
    "uniform_c",
    "uniform_cuda",
    "uniform_reference",
]

M0, M1 = 0xD2511F53, 0xCD9E8D57  # the round multipliers
W0, W1 = 0x9E3779B9, 0xBB67AE85  # the key bumps (golden ratio, sqrt(3) - 1, as 32-bit fractions)
MASK32 = 0xFFFFFFFF
ROUNDS = 10
_WORDS = {"float32": 1, "float64": 2}  # 32-bit words per element


def philox4x32(
    backend: Backend, counter: tuple[Any, Any, Any, Any], key: tuple[int, int]
) -> tuple[Any, Any, Any, Any]:
    """Philox4x32-10 of each counter: ``counter`` is 4 unsigned-integer arrays of one shape
    (values below 2**32), ``key`` 2 ints in [0, 2**32). Returns 4 uint32 arrays of that shape.

    The words are held in uint64, so a 32x32-bit product is exact: hi = p >> 32, lo = p & MASK.
    """
    xp = backend.xp
    k0, k1 = (_word(k, f"key[{i}]") for i, k in enumerate(key))
    c0, c1, c2, c3 = (xp.astype(c, xp.uint64) for c in counter)
    for r in range(ROUNDS):
        if r:
            k0, k1 = (k0 + W0) & MASK32, (k1 + W1) & MASK32
        p0, p1 = c0 * M0, c2 * M1
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & MASK32
    return (
        xp.astype(c0, xp.uint32),
        xp.astype(c1, xp.uint32),
        xp.astype(c2, xp.uint32),
        xp.astype(c3, xp.uint32),
    )


def uniform_reference(
    backend: Backend,
    seed: int,
    stream: tuple[int, int],
    shape: tuple[int, ...],
    dtype: Any,
    rows: tuple[int, int, int] | None = None,
) -> Any:
    """Uniforms in [0, 1) of ``shape`` and ``dtype`` (float32 or float64) on ``backend``'s
    device: element ``i`` (C order) is element ``i`` of the ``(seed, stream)`` sequence (see the
    module docstring). ``seed`` is an int in [0, 2**64), ``stream`` two ints in [0, 2**32).

    ``rows=(total, lo, hi)``: rows ``lo:hi`` of the draw of a ``(total, *shape[1:])`` array
    (so ``shape[0]`` must be ``hi - lo``), computed without the other rows: what one rank of a
    distributed step needs of the whole batch's mask.

    Plain ``xp`` integer arithmetic (the reference the C and CUDA versions equal bit for bit).
    """
    shape, name, start = _draw(seed, stream, shape, dtype, rows)
    xp, per = backend.xp, _WORDS[name]
    count = math.prod(shape)
    first, end = start * per, (start + count) * per  # the words wanted: [first, end)
    block = first // 4
    with backend.on_device():
        b = xp.astype(backend.arange(-(-end // 4) - block), xp.uint64) + block
        s0, s1 = xp.full_like(b, stream[0]), xp.full_like(b, stream[1])
        out = philox4x32(backend, (b & MASK32, b >> 32, s0, s1), (seed & MASK32, seed >> 32))
        words = xp.reshape(xp.stack(out, axis=1), (-1,))  # word 4 b + j = output j of block b
        words = words[first - 4 * block : end - 4 * block]
        if name == "float32":
            u = xp.astype(words >> 8, xp.float32) * 2.0**-24
        else:
            pairs = xp.astype(xp.reshape(words, (-1, 2)), xp.uint64)
            bits = ((pairs[:, 0] >> 5) << 26) | (pairs[:, 1] >> 6)  # 27 + 26 = 53 bits
            u = xp.astype(bits, xp.float64) * 2.0**-53
        return xp.reshape(u, shape)


def uniform_c(
    backend: Backend,
    seed: int,
    stream: tuple[int, int],
    shape: tuple[int, ...],
    dtype: Any,
    rows: tuple[int, int, int] | None = None,
) -> np.ndarray:
    """``uniform_reference``'s draw (bit for bit) from the C extension, on the NumPy backend.
    Raises RuntimeError when ``backprop_gpu._cpu`` is not built."""
    if not HAVE_C:
        raise RuntimeError("uniform_c needs the C extension backprop_gpu._cpu, not built here")
    shape, name, start = _draw(seed, stream, shape, dtype, rows)
    out = np.empty(shape, dtype=name)
    _cpu.philox_uniform(out, seed, stream[0], stream[1], start)
    return out


PHILOX_CUDA_SOURCE = r"""
/* Philox4x32-10 in place on c[0..3] with key (k0, k1): as backprop_gpu.philox.philox4x32 */
__device__ __forceinline__ void philox4x32_10(unsigned int c[4], unsigned int k0,
                                              unsigned int k1) {
    for (int r = 0; r < 10; r++) {
        if (r) {
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        unsigned int hi0 = __umulhi(0xD2511F53u, c[0]), lo0 = 0xD2511F53u * c[0];
        unsigned int hi1 = __umulhi(0xCD9E8D57u, c[2]), lo1 = 0xCD9E8D57u * c[2];
        unsigned int c1 = c[1], c3 = c[3];
        c[0] = hi1 ^ c1 ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c3 ^ k1;
        c[3] = lo0;
    }
}

/* One thread per Philox block b = start / per + thread (per = elements a block gives: 4
   float32, 2 float64); out[i] is element start + i of the (key, stream) sequence. */
__device__ __forceinline__ void block_words(unsigned int c[4], unsigned long long b,
                                            unsigned int k0, unsigned int k1, unsigned int s0,
                                            unsigned int s1) {
    c[0] = (unsigned int)b;
    c[1] = (unsigned int)(b >> 32);
    c[2] = s0;
    c[3] = s1;
    philox4x32_10(c, k0, k1);
}

extern "C" {
__global__ void philox_uniform_f32(float* out, long long n, unsigned long long start,
                                   unsigned int k0, unsigned int k1, unsigned int s0,
                                   unsigned int s1) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    unsigned long long b = (start >> 2) + t;
    long long base = (long long)(4 * b - start);  /* out index of the block's word 0 */
    if (base >= n) return;
    unsigned int c[4];
    block_words(c, b, k0, k1, s0, s1);
    for (int j = 0; j < 4; j++) {
        long long i = base + j;
        if (i >= 0 && i < n) out[i] = (float)(c[j] >> 8) * 5.9604644775390625e-08f; /* 2^-24 */
    }
}
__global__ void philox_uniform_f64(double* out, long long n, unsigned long long start,
                                   unsigned int k0, unsigned int k1, unsigned int s0,
                                   unsigned int s1) {
    long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    unsigned long long b = (start >> 1) + t;
    long long base = (long long)(2 * b - start);
    if (base >= n) return;
    unsigned int c[4];
    block_words(c, b, k0, k1, s0, s1);
    for (int j = 0; j < 2; j++) {
        long long i = base + j;
        unsigned long long bits =
            ((unsigned long long)(c[2 * j] >> 5) << 26) | (c[2 * j + 1] >> 6);
        if (i >= 0 && i < n) out[i] = (double)bits * 1.1102230246251565e-16; /* 2^-53 */
    }
}
}
"""
PHILOX_KERNEL_NAMES = ("philox_uniform_f32", "philox_uniform_f64")
_THREADS = 256


def uniform_cuda(
    backend: Backend,
    seed: int,
    stream: tuple[int, int],
    shape: tuple[int, ...],
    dtype: Any,
    rows: tuple[int, int, int] | None = None,
) -> Any:
    """``uniform_reference``'s draw (bit for bit) from one CUDA kernel, on the CuPy backend:
    one thread per Philox block, no temporaries."""
    shape, name, start = _draw(seed, stream, shape, dtype, rows)
    per, count = 4 // _WORDS[name], math.prod(shape)
    with backend.on_device():
        out = backend.xp.empty(shape, dtype=name)
        threads = -(-(start + count) // per) - start // per if count else 0
        if threads:
            from .backend.cupy_backend import _function  # (compiled once, cached per GPU)

            kernel = _function(backend.device.id, f"philox_uniform_{name[0]}{name[-2:]}")
            args = (out, np.int64(count), np.uint64(start), np.uint32(seed & MASK32),
                    np.uint32(seed >> 32), np.uint32(stream[0]), np.uint32(stream[1]))  # fmt: skip
            kernel((-(-threads // _THREADS),), (_THREADS,), args)
    return out


def uniform(
    backend: Backend,
    seed: int,
    stream: tuple[int, int],
    shape: tuple[int, ...],
    dtype: Any,
    rows: tuple[int, int, int] | None = None,
) -> Any:
    """``uniform_reference``'s draw (see there), computed the fastest way the backend has
    (``backend.ops.uniform``: the C extension on NumPy, the CUDA kernel on CuPy, plain ``xp``
    otherwise or with the reference ops). Every way gives the same bits."""
    return backend.ops.uniform(seed, stream, shape, dtype, rows)


# --- argument checks --------------------------------------------------------------------


def _word(value: Any, what: str, bits: int = 32) -> int:
    """``value`` as an int in [0, 2**bits), or TypeError/ValueError naming ``what``."""
    if not isinstance(value, int | np.integer) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int in [0, 2**{bits}), got {value!r}")
    if not 0 <= int(value) < 2**bits:
        raise ValueError(f"{what} must be an int in [0, 2**{bits}), got {value}")
    return int(value)


def _draw(
    seed: Any, stream: Any, shape: Any, dtype: Any, rows: Any
) -> tuple[tuple[int, ...], str, int]:
    """Checked (shape, dtype name, index of the first element) of a draw."""
    _word(seed, "seed", 64)
    if not isinstance(stream, tuple | list) or len(stream) != 2:
        raise TypeError(f"stream must be a tuple of 2 ints in [0, 2**32), got {stream!r}")
    for i, s in enumerate(stream):
        _word(s, f"stream[{i}]")
    name = dtype_name(dtype)
    if name not in _WORDS:
        raise TypeError(f"dtype must be float32 or float64, got {name}")
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise TypeError(f"shape must be a tuple of ints >= 0, got {shape!r}")
    start = 0
    if rows is not None:
        if not (
            isinstance(rows, tuple)
            and len(rows) == 3
            and all(isinstance(r, int) for r in rows)
            and 0 <= rows[1] <= rows[2] <= rows[0]
        ):
            raise ValueError(
                f"rows must be (total, lo, hi) with 0 <= lo <= hi <= total, got {rows!r}"
            )
        total, lo, hi = rows
        if not shape or shape[0] != hi - lo:
            raise ValueError(f"rows {rows!r} give {hi - lo} rows but shape is {shape!r}")
        start = lo * math.prod(shape[1:])
        if total * math.prod(shape[1:]) * _WORDS[name] > 2**64:
            raise ValueError(f"a draw of {total} rows of shape {shape[1:]} exceeds 2**64 words")
    elif math.prod(shape) * _WORDS[name] > 2**64:
        raise ValueError(f"a draw of shape {shape} exceeds 2**64 words")
    return shape, name, start
