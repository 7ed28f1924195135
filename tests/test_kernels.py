"""Each backend's fast ops against the reference ``Ops``. GPU: the CUDA source compiles (no
GPU needed) without fused multiply-adds, the per-element twins equal the plain xp reference,
and on a GPU the kernels themselves do too. CPU: the C extension's loops equal the reference
on the same inputs (the reference runs as its own backend: ``with_reference_ops()``)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.backend import Ops, cuda_source, numpy_backend
from backprop_gpu.backend.numpy_backend import NumpyBackend

from .conftest import gpu_only

RNG = np.random.default_rng(5)
FAST, REFERENCE = NumpyBackend(), NumpyBackend(fast_ops=False)


def takes(function, *args) -> bool:  # type: ignore[no-untyped-def]
    """Whether a C function of the extension takes these arrays (it raises TypeError, before
    writing anything, when it does not: the override then runs the reference)."""
    try:
        function(*args)
    except TypeError:
        return False
    return True


# --- the CUDA source, compiled to PTX without a GPU -----------------------------------------


# the 16-bit kernels that round computed values to their dtype (take_batch copies, unscale
# writes float32)
STORING = ("relu_backward", "bias_relu", "relu_backward_bias_gradient")


def _ptx(arch: str, *options: str) -> tuple[str, tuple[str, ...]]:
    """The module's PTX for ``arch`` (with its NVRTC options, as CupyOps compiles it, and
    ``options``) and its kernel names; skips without CuPy and NVRTC (CI sets
    BACKPROP_GPU_REQUIRE_NVRTC=1 and installs them, so it never skips there)."""
    required = os.environ.get("BACKPROP_GPU_REQUIRE_NVRTC") == "1"
    try:
        import cupy

        nvrtc = cupy.cuda.nvrtc
        source, names = cuda_source.module()  # (the kernels and Dropout's Philox, as built)
        program = nvrtc.createProgram(source, "kernels.cu", [], [])
    except Exception as e:  # CuPy or the NVRTC library itself is missing
        if required:
            raise
        pytest.skip(f"needs CuPy and NVRTC (pip install cupy-cuda12x nvidia-cuda-nvrtc-cu12): {e}")
    try:
        nvrtc.compileProgram(program, [f"-arch={arch}", *cuda_source.NVRTC_OPTIONS, *options])
    except Exception as e:
        pytest.fail(f"the CUDA source does not compile for {arch}: {e}\n"
                    f"{nvrtc.getProgramLog(program)}")  # fmt: skip
    return nvrtc.getPTX(program).decode(), names


@pytest.mark.parametrize(
    ("arch", "options"),
    [
        ("compute_70", ()),
        ("compute_80", ()),
        ("compute_90", ()),
        ("compute_90", ("-DBF16_ROUND_BITS",)),
    ],
    ids=["sm_70", "sm_80", "sm_90", "sm_90-bf16-bits"],
)
def test_cuda_source_compiles_to_ptx(arch: str, options: tuple[str, ...]) -> None:
    """Every kernel compiles, for Volta (sm_70), Ampere (sm_80) and Hopper (sm_90), with no
    float operation that may be fused or flushed, and (16-bit kernels) no 16-bit
    arithmetic and every conversion to a 16-bit type rounded to nearest. bfloat16 is stored
    with ``cvt.rn.bf16.f32`` from sm_80, and by rounding its bits before (or anywhere with
    ``-DBF16_ROUND_BITS``, how the GPU tests run Volta's path on a newer GPU)."""
    ptx, names = _ptx(arch, *options)
    for name in names:
        assert f".entry {name}(" in ptx, name
    # --fmad=false: no multiply and add is contracted into one rounding (FFMA), so the kernels
    # round as the reference does. In PTX, a float add/sub/mul without a rounding modifier
    # may be fused by ptxas (what NVRTC emits by default: add.f32, mul.f32); one with .rn
    # may not (the PTX ISA, "mul": "mul/add sequences with no rounding modifiers may be
    # optimized to use fused-multiply-add instructions").
    # The softmax's exp and log are CUDA's own math functions, which use fma on purpose (and
    # are held to a tolerance, not bit for bit): fma is allowed in that kernel only.
    entries = re.split(r"(?=\.visible \.entry )", ptx)[1:]
    assert len(entries) == len(names)
    for entry in entries:
        name = re.match(r"\.visible \.entry (\w+)\(", entry).group(1)  # type: ignore[union-attr]
        arithmetic = re.findall(r"\b(?:fma|mad|add|sub|mul)(?:\.\w+)*\.f(?:32|64)\b", entry)
        libm = name.startswith("softmax_ce_rows")
        fused = {op for op in arithmetic if op.startswith(("fma", "mad"))}
        loose = sorted(
            {op for op in arithmetic if ".rn." not in op} - fused | (set() if libm else fused)
        )
        assert not loose, f"{name}: float arithmetic that ptxas may contract into FMA: {loose}"
        # IEEE division and square root (-prec-div=true -prec-sqrt=true), as CuPy's kernels
        assert not re.findall(r"\b(?:div|sqrt)\.(?:approx|full)", entry), name
        # subnormals kept (no -ftz=true): bfloat16's subnormals are float32's (CUDA's expf
        # has its own ex2.approx.ftz, on a range where it is exact enough: not the kernels')
        assert libm or ".ftz" not in entry, name
        # 16-bit values are computed in float: no f16/bf16 arithmetic, and every conversion
        # to a 16-bit type rounds to nearest even (cvt.rn), once, from float
        half = re.findall(r"\b(?:add|sub|mul|fma|div|min|max|neg|abs)(?:\.\w+)*\.b?f16(?:x2)?\b",
                          entry)  # fmt: skip
        assert not half, f"{name}: 16-bit arithmetic {half}"
        to_half = re.findall(r"\bcvt(?:\.\w+)*\.b?f16\.\w+", entry)
        assert all(re.fullmatch(r"cvt\.rn\.b?f16\.f32", c) for c in to_half), (name, to_half)
        base, _, suffix = name.rpartition("_")
        if base in STORING and suffix == "f16":
            assert "cvt.rn.f16.f32" in to_half, name
        if base in STORING and suffix == "bf16":
            # cvt.rn.bf16.f32 needs sm_80; Volta rounds the bits (cuda_source.bfloat16_bits_rn)
            assert ("cvt.rn.bf16.f32" in to_half) == (arch != "compute_70" and not options), name
        if suffix in ("f32", "f64", "bf16"):
            assert not re.search(r"\bcvt(?:\.\w+)*\.f16\b", entry), name  # (f16 stays in f16's)
        if base == "unscale":  # the division in float32, the flag set by an atomic OR
            assert re.search(r"\bdiv\.rn\.f32\b", entry) and "atom.global.or.b32" in entry, name
    assert re.search(r"\bdiv\.rn\.f32\b", ptx) and re.search(r"\bsqrt\.rn\.f32\b", ptx)
    assert set(cuda_source.HALF_KERNELS) == {*STORING, "take_batch", "unscale"}


# --- the twins: the kernels' per-element arithmetic, against the reference ---------------


def test_relu_backward_twin_equals_the_reference(backend: bg.Backend) -> None:
    bg.set_backend(backend.with_reference_ops())  # (inside the fixture's block: undone after)
    x = RNG.standard_normal((6, 5)).astype(np.float32)
    x[0, :2] = 0.0  # the kink: gradient 0 there
    d = RNG.standard_normal((6, 5)).astype(np.float32)
    relu = bg.ReLU()
    relu.forward(x)
    expected = bg.to_numpy(relu.backward(d))
    twin = np.vectorize(cuda_source.relu_backward_element, otypes=[np.float32])(d, x)
    assert np.array_equal(twin, expected)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_twin_equals_the_reference(backend: bg.Backend, nesterov: bool) -> None:
    bg.set_backend(backend.with_reference_ops())
    w, g, v = (RNG.standard_normal((4, 3)) for _ in range(3))
    layer = bg.Dense(4, 3, weights=w)
    layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(np.zeros((1, 3)))
    layer.weight_momentums = bg.asarray(v.copy())
    bg.SGD(0.3, momentum=0.8, nesterov=nesterov).update_params(layer)
    twin = np.vectorize(cuda_source.sgd_momentum_element)(w, v, g, 0.3, 0.8, nesterov)
    assert np.array_equal(twin[0], bg.to_numpy(layer.weights))
    assert np.array_equal(twin[1], bg.to_numpy(layer.weight_momentums))


EDGES = [0.0, -0.0, np.nan, np.inf, -np.inf, 1.5, -2.25, 1e-3, 3.0, -1e-5]


def _edge_array(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Normal values with every edge value of ``EDGES`` at the start."""
    a = RNG.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    flat[: len(EDGES)] = EDGES[: flat.size]
    return a


def _twin(function, dtype: str, n_out: int = 1):  # type: ignore[no-untyped-def]
    """``function`` over arrays element by element, each element a NumPy scalar of the
    array's dtype (not np.vectorize: it passes Python floats, so float32 arithmetic would
    run in double); ``biases`` (1, C) broadcast over rows as numpy does."""

    def run(*args):  # type: ignore[no-untyped-def]
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
        flat = [np.broadcast_to(a, shape).reshape(-1) if isinstance(a, np.ndarray) else a
                for a in args]  # fmt: skip
        out = [np.empty(shape, dtype) for _ in range(n_out)]
        for i in range(int(np.prod(shape))):
            result = function(*(a[i] if isinstance(a, np.ndarray) else a for a in flat))
            for o, value in zip(out, result if n_out > 1 else (result,), strict=True):
                o.reshape(-1)[i] = value
        return out if n_out > 1 else out[0]

    return run


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape
    assert got.tobytes() == want.tobytes(), (got, want)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, as the reference
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_elementwise_twins_equal_the_reference_bit_for_bit(dtype: str) -> None:
    """Each ``*_element`` twin against the reference ``Ops`` on NumPy, with 0, -0.0, NaN and
    +-inf among the inputs (bytes compared: a NaN, and the sign of a zero, must match too)."""
    ref, scalars = REFERENCE.ops, cuda_source.optimizer_scalars
    z, biases = _edge_array((4, 10), dtype), _edge_array((1, 10), dtype)[:, ::-1].copy()
    _same_bits(_twin(cuda_source.bias_relu_element, dtype)(z, biases),
               ref.bias_relu(z.copy(), biases))  # fmt: skip
    d, x = _edge_array((4, 10), dtype), _edge_array((4, 10), dtype)[::-1].copy()
    _same_bits(_twin(cuda_source.relu_backward_element, dtype)(d, x), ref.relu_backward(d, x))
    w, g = _edge_array((3, 10), dtype), _edge_array((3, 10), dtype)[::-1].copy()
    cache = np.abs(RNG.standard_normal((3, 10))).astype(dtype)
    m = RNG.standard_normal((3, 10)).astype(dtype)

    w_ref = w.copy()
    ref.sgd(w_ref, g, 0.1)
    _same_bits(_twin(cuda_source.sgd_element, dtype)(w, g, scalars(dtype, lr=0.1)["lr"]), w_ref)

    for nesterov in (False, True):
        w_ref, v_ref = w.copy(), m.copy()
        ref.sgd_momentum(w_ref, v_ref, g, 0.1, 0.9, nesterov)
        k = scalars(dtype, lr=0.1, momentum=0.9)
        got = _twin(cuda_source.sgd_momentum_element, dtype, 2)(w, m, g, k["lr"], k["momentum"],
                                                                 nesterov)  # fmt: skip
        _same_bits(got[0], w_ref)
        _same_bits(got[1], v_ref)

    w_ref, c_ref = w.copy(), cache.copy()
    ref.adagrad(w_ref, c_ref, g, 0.1, 1e-7)
    k = scalars(dtype, lr=0.1, epsilon=1e-7)
    got = _twin(cuda_source.adagrad_element, dtype, 2)(w, cache, g, k["lr"], k["epsilon"])
    _same_bits(got[0], w_ref)
    _same_bits(got[1], c_ref)

    w_ref, c_ref = w.copy(), cache.copy()
    ref.rmsprop(w_ref, c_ref, g, 0.01, 0.9, 1e-7)
    k = scalars(dtype, lr=0.01, rho=0.9, one_minus_rho=1 - 0.9, epsilon=1e-7)
    got = _twin(cuda_source.rmsprop_element, dtype, 2)(
        w, cache, g, k["lr"], k["rho"], k["one_minus_rho"], k["epsilon"]
    )
    _same_bits(got[0], w_ref)
    _same_bits(got[1], c_ref)

    for t in (1, 7):
        w_ref, m_ref, c_ref = w.copy(), m.copy(), cache.copy()
        ref.adam(w_ref, m_ref, c_ref, g, lr=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, t=t)
        k = scalars(dtype, lr=0.001, beta_1=0.9, one_minus_beta_1=1 - 0.9, beta_2=0.999,
                    one_minus_beta_2=1 - 0.999, correction_1=1 - 0.9**t,
                    correction_2=1 - 0.999**t, epsilon=1e-7)  # fmt: skip
        got = _twin(cuda_source.adam_element, dtype, 3)(w, m, cache, g, *k.values())
        for a, b in zip(got, (w_ref, m_ref, c_ref), strict=True):
            _same_bits(a, b)


def _column_sums_in_kernel_order(values: np.ndarray, accumulate: object = None) -> np.ndarray:
    """An independent loop: per column, thread t (0..ROW_THREADS-1) adds rows t, t + 8, ...
    from 0 in the dtype ``accumulate`` (default: the values'), then the partial sums are
    added pairwise (half = 4, 2, 1); each sum stored in the values' dtype at the end."""
    rows, cols = values.shape
    threads = cuda_source.ROW_THREADS
    dtype = values.dtype.type if accumulate is None else np.dtype(accumulate).type  # type: ignore[call-overload]
    sums = np.empty((1, cols), values.dtype)
    for c in range(cols):
        partial = [dtype(0)] * threads
        for r in range(rows):
            partial[r % threads] = dtype(partial[r % threads] + dtype(values[r, c]))
        half = threads // 2
        while half:
            for t in range(half):
                partial[t] = dtype(partial[t] + partial[t + half])
            half //= 2
        sums[0, c] = partial[0]
    return sums


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (37, 1), (300, 70), (0, 3)])
def test_column_sum_twin_is_the_kernels_order(dtype: str, shape: tuple[int, int]) -> None:
    """``relu_backward_bias_gradient_twin``: dinputs bit for bit the reference; the column
    sums equal a plain loop in the kernel's order, and within N eps sum|column| of the
    reference's (a sum in another order, Higham)."""
    d, output = RNG.standard_normal(shape).astype(dtype), RNG.standard_normal(shape).astype(dtype)
    dinputs, dbiases = cuda_source.relu_backward_bias_gradient_twin(d, output)
    ref_dinputs, ref_dbiases = REFERENCE.ops.relu_backward_bias_gradient(d, output)
    _same_bits(dinputs, ref_dinputs)
    _same_bits(dbiases, _column_sums_in_kernel_order(ref_dinputs))
    eps = float(np.finfo(dtype).eps)
    bound = shape[0] * eps * np.abs(ref_dinputs).sum(axis=0, keepdims=True)
    assert np.all(np.abs(dbiases.astype(np.float64) - ref_dbiases) <= bound)


# --- the 16-bit kernels' twins: float16 and bfloat16 -----------------------------------------

HALF_DTYPES = ["float16", "bfloat16"]


def _half(name: str) -> np.dtype:
    """The NumPy dtype of a 16-bit name (bfloat16: ml_dtypes', as CuPy 14 uses)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _half_edges(dtype: np.dtype) -> list[float]:
    """Values where a 16-bit operation can go wrong: zeros of both signs, NaN, +-inf, the
    largest finite value, the smallest subnormal and the largest one, 1 and its next value
    up (the ties of z + bias round to even from there), and ordinary values."""
    info = np.finfo(dtype)
    tiny, big, eps = float(info.smallest_subnormal), float(info.max), float(info.eps)
    largest_subnormal = float(info.smallest_normal) - tiny
    return [0.0, -0.0, np.nan, np.inf, -np.inf, big, -big, tiny, -tiny, largest_subnormal,
            1.0, 1.0 + eps, eps / 2, -1.5, 3.0, 1e-3]  # fmt: skip


def _pairs(dtype: np.dtype, rows: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Two (rows + E*E / cols, cols) arrays holding every pair of ``_half_edges`` at the
    same position (then normal draws), in ``dtype``."""
    edges = np.array(_half_edges(dtype), np.float32)
    a, b = np.repeat(edges, edges.size), np.tile(edges, edges.size)
    extra = RNG.standard_normal((2, rows * a.size)).astype(np.float32)
    first, second = (
        np.concatenate([e, x]).reshape(-1, a.size) for e, x in zip((a, b), extra, strict=True)
    )
    return first.astype(dtype), second.astype(dtype)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0, inf - inf
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("name", [*HALF_DTYPES, "float32", "float64"])
def test_array_twins_equal_the_reference_bit_for_bit(name: str) -> None:
    """``relu_backward_twin`` and ``bias_relu_twin`` (each operation in float32, rounded once
    to the 16-bit type; the dtype itself for float32/float64) against the reference ``Ops``
    on NumPy, which computes in NumPy's float16 and ml_dtypes' bfloat16 loops, on every pair
    of edge values: NaN, +-inf, -0.0, subnormals, z + bias overflowing to inf, ties. Bytes
    compared (NaN payloads and zero signs too), with one stated exception: NumPy's float16
    ``maximum(-0.0, 0)`` keeps -0.0 (its loop returns the first operand of equals), where
    the kernel's ``max`` in float, as CuPy's own float16 maximum (and NumPy's for the other
    dtypes), gives +0.0."""
    dtype = _half(name)
    ref = REFERENCE.ops
    z, biases_rows = _pairs(dtype)
    # bias_relu: each pair as (z, bias): biases are per column, so one row of z a bias row
    for row in range(z.shape[0] if name in HALF_DTYPES else 1):
        biases = biases_rows[row : row + 1]
        got = cuda_source.bias_relu_twin(z, biases)
        want = ref.bias_relu(z.copy(), biases.copy())
        assert got.dtype == want.dtype == dtype
        if name == "float16":
            both_negative_zero = (np.signbit(z) & (z == 0)) & (np.signbit(biases) & (biases == 0))
            assert both_negative_zero.any() or row > 0  # (row 0 holds every pair of edges)
            assert np.all(np.signbit(want[both_negative_zero]))  # NumPy's -0.0 ...
            assert not np.any(np.signbit(got[both_negative_zero]))  # ... the kernel's +0.0
            want[both_negative_zero] = 0.0
        _same_bits(got, want)
    d, x = _pairs(dtype)
    _same_bits(cuda_source.relu_backward_twin(d, x), ref.relu_backward(d, x))
    if name in HALF_DTYPES:  # the edges that matter were there
        info = np.finfo(dtype)
        total = cuda_source.bias_relu_twin(np.array([[float(info.max)]], dtype),
                                           np.array([[float(info.max)]], dtype))  # fmt: skip
        assert np.isposinf(total).all()  # max + max overflows to inf, then ReLU keeps it


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")  # max + ulp/2: inf, on purpose
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0
@pytest.mark.parametrize("name", HALF_DTYPES)
def test_half_twin_known_values(name: str) -> None:
    """Hand-derived 16-bit results: 1 + eps/2 is a tie and rounds to even (1); 1 + eps +
    eps/2 too, to 1 + 2 eps; max + ulp/2 rounds to inf (max's last bit is odd), max + ulp/2
    less a bit stays max; subnormals add exactly; a negative sum gives 0."""
    dtype = _half(name)
    info = np.finfo(dtype)
    eps, big, tiny = float(info.eps), float(info.max), float(info.smallest_subnormal)
    half_ulp = big * eps / (2 * (2 - eps))  # (max = (2 - eps) 2**e: its ulp is eps 2**e)
    z = np.array([[1.0, 1.0 + eps, big, big, tiny, 3 * tiny, -2.0]], dtype)
    b = np.array([[eps / 2, eps / 2, half_ulp, half_ulp * (1 - eps), tiny, -tiny, 1.0]], dtype)
    assert float(b[0, 3]) < half_ulp  # (the 16-bit number just below the tie)
    want = [1.0, 1.0 + 2 * eps, np.inf, big, 2 * tiny, 2 * tiny, 0.0]
    got = cuda_source.bias_relu_twin(z, b)
    assert got.astype(np.float64).tolist() == [want]
    d = np.array([[np.inf, np.inf, -3.0, 2.5, -tiny]], dtype)
    x = np.array([[0.0, 1.0, 2.0, -0.0, tiny]], dtype)
    dx = cuda_source.relu_backward_twin(d, x).astype(np.float64)
    assert np.isnan(dx[0, 0]) and dx[0, 1:].tolist() == [np.inf, -3.0, 0.0, -tiny]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # ml_dtypes' cast of NaN
def test_bfloat16_store_before_sm80_rounds_as_cvt_rn() -> None:
    """``bfloat16_bits_rn``, the twin of the kernels' bfloat16 store on GPUs before sm_80
    (integer rounding on the bits), against ml_dtypes' cast (round to nearest even, as
    ``cvt.rn.bf16.f32``) on every float32 exponent and mantissa top with the low halves
    that decide the rounding: 0, 1, just below, at and above the tie, the largest; so every
    tie, every carry into the exponent and every overflow to inf. NaN gives 0x7fff."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    high = np.arange(1 << 16, dtype=np.uint32) << 16
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)
    bits = (high[:, None] | low[None, :]).reshape(-1)
    values = bits.view(np.float32)
    got = cuda_source.bfloat16_bits_rn(values)
    want = values.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(values)
    # NaN: exponent all ones and a mantissa not 0 (of the 2 * 128 such tops, the 2 of
    # infinity are NaN only with a low half not 0: 5 of the 6)
    assert nan.sum() == 2 * (127 * 6 + 5)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.all(got[nan] == 0x7FFF)
    largest = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max], np.float32)
    assert cuda_source.bfloat16_bits_rn(largest).tolist() == [0x7F80, 0xFF80]  # +-inf


@pytest.mark.parametrize("name", HALF_DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (37, 1), (300, 70), (0, 3), (3000, 5)])
def test_half_column_sum_twin(name: str, shape: tuple[int, int]) -> None:
    """``relu_backward_bias_gradient_twin`` on 16-bit arrays: dinputs bit for bit the
    reference; the column sums bit for bit a plain loop in the kernel's order accumulating
    in float32 and rounding once; within ``half_sum_tolerance`` of NumPy's reference (which
    rounds to the 16-bit type after every row) and of a float32-accumulated sum (CuPy's
    ``sum``, in NumPy's order)."""
    dtype = _half(name)
    d = RNG.standard_normal(shape).astype(dtype)
    output = np.maximum(RNG.standard_normal(shape), 0).astype(dtype)
    dinputs, dbiases = cuda_source.relu_backward_bias_gradient_twin(d, output)
    ref_dinputs, ref_dbiases = REFERENCE.ops.relu_backward_bias_gradient(d, output)
    _same_bits(dinputs, ref_dinputs)
    _same_bits(dbiases, _column_sums_in_kernel_order(ref_dinputs, np.float32))
    assert dbiases.dtype == dtype and dbiases.shape == (1, shape[1])
    bound = cuda_source.half_sum_tolerance(ref_dinputs, ref_dbiases, dtype)
    assert np.all(np.abs(dbiases.astype(np.float64) - ref_dbiases.astype(np.float64)) <= bound)
    cupy_like = ref_dinputs.astype(np.float32).sum(axis=0, keepdims=True).astype(dtype)
    bound = cuda_source.half_sum_tolerance(ref_dinputs, cupy_like, np.float32)
    assert np.all(np.abs(dbiases.astype(np.float64) - cupy_like.astype(np.float64)) <= bound)


@pytest.mark.parametrize("name", HALF_DTYPES)
def test_half_column_sums_accumulate_in_float32(name: str) -> None:
    """4096 ones: in float32 the sum is exact, 4096; NumPy's 16-bit axis-0 sum stops where
    adding 1 is a tie that rounds back down (float16: 2048; bfloat16: 256), which the
    tolerance for NumPy's reference covers. A NaN or inf in a column: NaN or inf there."""
    dtype = _half(name)
    ones = np.ones((4096, 2), dtype)
    _, sums = cuda_source.relu_backward_bias_gradient_twin(ones, ones)
    assert sums.astype(np.float64).tolist() == [[4096.0, 4096.0]]
    ref = REFERENCE.ops.bias_gradient(ones)
    assert ref.astype(np.float64).tolist() == [[2048.0] * 2 if name == "float16" else [256.0] * 2]
    assert np.all(np.abs(sums.astype(np.float64) - ref.astype(np.float64))
                  <= cuda_source.half_sum_tolerance(ones, ref, dtype))  # fmt: skip
    special = np.ones((20, 3), dtype)
    special[5, 0], special[7, 1] = np.nan, np.inf
    _, sums = cuda_source.relu_backward_bias_gradient_twin(special, special)
    assert np.isnan(float(sums[0, 0])) and np.isposinf(float(sums[0, 1])) and sums[0, 2] == 20


def _softmax_twins(logits: np.ndarray, y: np.ndarray, eps: float = 1e-7):  # type: ignore[no-untyped-def]
    p, dinputs, logp, hit = cuda_source.softmax_ce_rows_twin(logits, y, eps, 1 - eps)
    loss, correct, errors = cuda_source.softmax_ce_reduce_twin(logp, hit)
    return p, dinputs, loss, correct, errors, hit


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (300, 1), (37, 10), (600, 3)])
def test_softmax_twins_within_the_tolerances(dtype: str, shape: tuple[int, int]) -> None:
    """The row twin + the reduction twin against the reference's softmax cross-entropy
    (forward and backward) on NumPy, within ``softmax_tolerances``; correct is the number
    of argmax hits."""
    rows, cols = shape
    logits = (3 * RNG.standard_normal(shape)).astype(dtype)
    y = RNG.integers(0, cols, rows)
    p, dinputs, loss, correct, errors, _ = _softmax_twins(logits, y)
    ref_p, ref_loss, _, ref_d = REFERENCE.ops.softmax_cross_entropy_forward_backward(
        logits, y, 1e-7
    )
    p_tol, d_tol, loss_tol = cuda_source.softmax_tolerances(ref_p, ref_d, float(ref_loss))
    assert p.dtype == dinputs.dtype == np.asarray(loss).dtype == np.dtype(dtype)
    assert np.all(np.abs(p - ref_p) <= p_tol)
    assert np.all(np.abs(dinputs - ref_d) <= d_tol)
    assert abs(float(loss) - float(ref_loss)) <= loss_tol
    assert correct.dtype == np.float32 and errors == 0
    assert correct == (np.argmax(logits, axis=1) == y).sum()


def test_softmax_twin_counts_argmax_hits_with_ties_and_nan() -> None:
    """``correct``: the first maximal logit (a NaN first, as numpy.argmax) at y."""
    logits = np.array(
        [[1.0, 3.0, 3.0], [1.0, 3.0, 3.0], [np.nan, 5.0, 1.0], [0.0, np.nan, np.nan],
         [2.0, 2.0, 2.0], [-np.inf, np.inf, 0.0]], np.float32,
    )  # fmt: skip
    y = np.array([1, 2, 0, 2, 0, 1])
    *_, correct, errors, hit = _softmax_twins(logits, y)
    expected = np.argmax(logits, axis=1) == y
    assert hit.tolist() == expected.astype(int).tolist() == [1, 0, 1, 0, 1, 1]
    assert correct == 4 and errors == 0


@pytest.mark.parametrize("bad", [-1, 3, 2**40])
def test_softmax_twin_bad_label_gives_nan_and_one_error(bad: int) -> None:
    logits = RNG.standard_normal((4, 3)).astype(np.float32)
    y = np.array([0, bad, 2, 1])
    p, dinputs, loss, correct, errors, hit = _softmax_twins(logits, y)
    assert np.isnan(p[1]).all() and np.isnan(dinputs[1]).all() and np.isnan(loss)
    assert not np.isnan(np.delete(p, 1, axis=0)).any()
    assert not np.isnan(np.delete(dinputs, 1, axis=0)).any()
    assert hit[1] == -1 and errors == 1
    good = np.array([0, 2, 3])
    assert correct == (np.argmax(logits[good], axis=1) == y[good]).sum()


def test_each_backend_runs_its_own_ops() -> None:
    """array-api-strict runs the reference; NumPy the C extension's ops when built;
    ``with_reference_ops()`` and BACKPROP_GPU_KERNELS=0 the reference on any backend."""
    with bg.use_backend("array_api_strict") as backend:
        assert type(backend.ops) is Ops and backend.ops.backend is backend
    with bg.use_backend("numpy") as backend:
        expected = numpy_backend.NumpyOps if numpy_backend.HAVE_C else Ops
        assert type(backend.ops) is expected
        reference = backend.with_reference_ops()
        assert type(reference.ops) is Ops and reference == backend
        assert type(bg.get_backend().ops) is expected  # (a new backend, not a changed one)


# --- the C extension, on NumPy ----------------------------------------------------------------

REQUIRE_EXT = os.environ.get("BACKPROP_GPU_REQUIRE_EXT") == "1"
needs_ext = pytest.mark.skipif(
    not numpy_backend.HAVE_C and not REQUIRE_EXT,
    reason="backprop_gpu._cpu is not built here (no C compiler at install, or not installed -e)",
)


def test_c_extension_is_built_where_required() -> None:
    """CI sets BACKPROP_GPU_REQUIRE_EXT=1: an install that silently skipped the C build fails."""
    if not REQUIRE_EXT:
        pytest.skip("BACKPROP_GPU_REQUIRE_EXT is not set")
    where = os.path.dirname(bg.__file__)
    assert numpy_backend.HAVE_C, (
        f"backprop_gpu._cpu is not in {where}: the C build failed at install time, or this"
        " checkout shadows a non-editable install (install with pip install -e)"
    )


def _awkward(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Normal draws with the edge cases the reference defines: exact zeros (the ReLU kink),
    +-inf and NaN."""
    a = RNG.standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    flat[:3] = 0.0
    flat[3:6] = [np.inf, -np.inf, np.nan]
    return a


def _both(run):  # type: ignore[no-untyped-def]
    """``run()`` on NumPy with the C ops, and then with the reference ops."""
    with bg.use_backend(FAST):
        fast = run()
    with bg.use_backend(REFERENCE):
        ref = run()
    return fast, ref


@needs_ext
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_relu_equals_the_reference(dtype: str) -> None:
    from backprop_gpu import _cpu

    x, d = _awkward((37, 19), dtype), _awkward((37, 19), dtype)[::-1].copy()
    assert takes(_cpu.relu_forward, x, np.empty_like(x))
    assert takes(_cpu.relu_backward, d, x, np.empty_like(x))

    def run() -> tuple[np.ndarray, np.ndarray]:
        relu = bg.ReLU()
        return relu.forward(x), relu.backward(d)

    (out, dx), (out_ref, dx_ref) = _both(run)
    assert out.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, out_ref)  # NaN where the reference has NaN
    np.testing.assert_array_equal(dx, dx_ref)
    assert np.isnan(dx).any()  # inf * 0 at a masked input: NaN, as the reference


@needs_ext
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the product
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 8), (300, 3), (1000, 64), (37, 1), (1000, 1)])
def test_c_dense_bias_add_and_sum_equal_the_reference(dtype: str, shape: tuple[int, int]) -> None:
    """Dense.forward's ``+ biases`` and backward's column sums, bit for bit (NaN and inf too)."""
    n, c = shape
    from backprop_gpu import _cpu

    x, dv = RNG.standard_normal((n, 4)).astype(dtype), _awkward((n, c), dtype) * 1e3
    if n == 1000 and c == 1:
        dv = RNG.standard_normal((n, c)).astype(dtype) * 1e3  # finite: sums comparable
    biases = RNG.standard_normal((1, c))
    assert takes(_cpu.column_sums, dv, np.empty((1, c), dtype))
    assert takes(_cpu.add_bias, dv.copy(), biases.astype(dtype))

    def run() -> tuple[np.ndarray, ...]:
        layer = bg.Dense(4, c, biases=biases, dtype=dtype, seed=0)
        out = layer.forward(x).copy()
        layer.backward(dv)
        return out, layer.dbiases, layer.dweights

    (out, db, dw), (out_ref, db_ref, dw_ref) = _both(run)
    np.testing.assert_array_equal(out, out_ref)
    np.testing.assert_array_equal(db, db_ref)
    np.testing.assert_array_equal(dw, dw_ref)
    assert db.shape == (1, c) and db.dtype == np.dtype(dtype)
    # the sum itself, against an independent float64 sum
    finite = np.nan_to_num(dv, nan=0.0, posinf=0.0, neginf=0.0)
    sums = FAST.ops.bias_gradient(finite)
    if c > 1:
        np.testing.assert_allclose(sums[0], finite.astype(np.float64).sum(0), rtol=1e-4,
                                   atol=1e-2)  # fmt: skip


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("classes", [1, 3, 7, 8, 10, 129, 257, 1000])
def test_c_softmax_cross_entropy_equals_the_reference(dtype: str, classes: int) -> None:
    """Loss, probabilities and gradient bit for bit: the row sums follow NumPy's pairwise
    order (8 or more classes, where a plain loop's sum differs) and exp is NumPy's own."""
    from backprop_gpu import _cpu

    logits = (RNG.standard_normal((200, classes)) * 30).astype(dtype)
    logits[0] = 1e4  # ties and a huge shift
    logits[1, 0] = -1e4  # a probability that underflows: the clip matters
    logits[2, -1] = np.nan  # a NaN row, as the reference: NaN loss and probabilities
    y = RNG.integers(0, classes, 200)
    y[1] = 0
    assert takes(_cpu.softmax_shift, logits, y, np.empty_like(logits))

    def run() -> tuple[object, np.ndarray, np.ndarray]:
        loss = bg.SoftmaxCrossEntropy()
        value = loss.forward(logits, y)
        return value, loss.output, loss.backward(loss.output, y)

    with np.errstate(invalid="ignore"):  # the reference's NaN - NaN
        (value, p, dz), (value_ref, p_ref, dz_ref) = _both(run)
        assert type(value) is type(value_ref) is np.dtype(dtype).type
        np.testing.assert_array_equal(p, p_ref, strict=True)
        np.testing.assert_array_equal(dz, dz_ref, strict=True)
        np.testing.assert_array_equal(dz, (p - np.eye(classes, dtype=dtype)[y]) / 200)
        assert np.isnan(value) and np.isnan(value_ref)  # (the NaN row)
        finite = slice(3, None)
        value, value_ref = _both(
            lambda: bg.SoftmaxCrossEntropy().forward(logits[finite], y[finite])
        )
    assert value.tobytes() == value_ref.tobytes()


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: bg.SGD(1.0, decay=1e-3, momentum=0.9),
        lambda: bg.SGD(0.5),
        lambda: bg.Adam(0.02, decay=1e-4),
        lambda: bg.RMSprop(0.01),
    ],
    ids=["sgd-momentum", "sgd", "adam", "rmsprop"],
)
def test_training_with_and_without_the_c_kernels_is_bit_identical(dtype: str, make: object) -> None:
    """30 epochs on the spiral (ReLU, biases, softmax cross-entropy over 3 classes, and a
    10-class head): every history value and every parameter equal bit for bit, on and off.
    (Before the softmax followed NumPy's exp and summation order, weights had drifted apart
    by up to 6e-5 here in float32.)"""
    from backprop_gpu.datasets import spiral_data

    X, y = spiral_data(50, 10, seed=0)

    def run() -> tuple[list[dict[str, float]], list[bytes]]:
        model = bg.Model([bg.Dense(2, 64, seed=0, dtype=dtype), bg.ReLU(),
                          bg.Dense(64, 32, seed=1, dtype=dtype, weight_regularizer_l2=1e-4),
                          bg.ReLU(), bg.Dense(32, 10, seed=2, dtype=dtype)])  # fmt: skip
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=make())  # type: ignore[operator]
        history = model.finalize().train(X, y, epochs=30, batch_size=32, print_every=0, seed=0)
        fast = type(bg.get_backend().ops) is not Ops
        assert (model.loss.correct is not None) == fast  # the kernels ran
        return history, [bg.to_numpy(p).tobytes() for p in _parameters(model)]

    (history, params), (history_ref, params_ref) = _both(run)
    assert history == history_ref
    assert params == params_ref


def _parameters(model: bg.Model) -> list[object]:
    return [getattr(layer, name) for layer in model.trainable_layers for name in layer.params]


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_softmax_cross_entropy_counts_argmax_hits_as_numpy(dtype: str) -> None:
    """The fused forward also counts rows whose argmax is the label: ties go to the first
    largest logit and a NaN row to its first NaN, as numpy.argmax."""
    logits = RNG.integers(-2, 3, (500, 4)).astype(dtype)  # many ties
    logits[:7, 1] = np.nan
    logits[7:9] = [[np.nan, 0, np.nan, 1], [np.inf, np.inf, 0, -np.inf]]
    y = RNG.integers(0, 4, 500)
    y[:9] = [1, 1, 1, 0, 1, 2, 3, 0, 1]
    fused = FAST.ops.softmax_cross_entropy(logits, y, 1e-7)
    assert fused[2] == int(np.sum(np.argmax(logits, axis=1) == y))


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_accuracy_from_the_fused_loss_equals_accuracy_calculate(
    dtype: str,
) -> None:
    """Model.train reads its accuracy off the fused loss kernel: the history is the same, bit
    for bit, as with Accuracy.calculate on the reference path."""
    X = RNG.standard_normal((96, 5)).astype(dtype)
    y = RNG.integers(0, 4, 96)

    def run() -> list[float]:
        model = bg.Model([bg.Dense(5, 16, seed=0, dtype=dtype), bg.ReLU(),
                          bg.Dense(16, 4, seed=1, dtype=dtype)])  # fmt: skip
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5, momentum=0.9))
        history = model.finalize().train(X, y, epochs=4, batch_size=10, print_every=0, seed=1)
        assert (model.loss.correct is not None) == (type(bg.get_backend().ops) is not Ops)
        return [row["accuracy"] for row in history]

    fast, ref = _both(run)
    assert fast == ref and len(set(fast)) > 1


@needs_ext
def test_c_softmax_cross_entropy_keeps_nan_and_refuses_bad_labels() -> None:
    """A NaN logit gives a NaN loss and NaN row (as the reference), and the C loop checks the
    labels' range itself, since a wrong index would read outside the row."""
    from backprop_gpu import _cpu

    logits = RNG.standard_normal((3, 4)).astype(np.float32)
    logits[1, 2] = np.nan
    p, loss, correct = FAST.ops.softmax_cross_entropy(logits, np.array([0, 1, 2]), 1e-7)
    assert correct is not None  # (the C loops ran)
    assert np.isnan(loss) and np.isnan(p[1]).all() and np.isfinite(p[[0, 2]]).all()
    out = np.empty_like(logits)
    with pytest.raises(ValueError, match=r"y_true\[2\] = 4 is not a class index in \[0, 4\)"):
        _cpu.softmax_shift(logits, np.array([0, 1, 4]), out)
    with pytest.raises(ValueError, match=r"y_true\[1\] = 3 is not a class index in \[0, 3\)"):
        _cpu.softmax_normalize(out.T.copy(), np.array([0, 3, 1, 2]), out[0], 1e-7, 1 - 1e-7)
    with pytest.raises(ValueError, match=r"y_true\[0\] = -1"):
        _cpu.softmax_ce_backward(logits, np.array([-1, 1, 2]), out)
    with pytest.raises(TypeError, match="y_true must be a C-contiguous.* int64"):
        _cpu.softmax_ce_backward(logits, np.array([0, 1, 2], dtype=np.int32), out)


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "make",
    [
        lambda: bg.SGD(0.3),
        lambda: bg.SGD(0.3, decay=0.1, momentum=0.8),
        lambda: bg.SGD(0.3, momentum=0.8, nesterov=True),
        lambda: bg.Adam(0.01, decay=0.1, beta_1=0.8, beta_2=0.95, epsilon=1e-4),
    ],
    ids=["sgd", "momentum", "nesterov", "adam"],
)
def test_c_optimizer_updates_equal_the_reference(
    dtype: str,
    make,  # type: ignore[no-untyped-def]
) -> None:
    """Three steps (so momentum, cache and bias correction all matter), bit for bit."""
    w0 = RNG.standard_normal((31, 7))
    grads = [RNG.standard_normal((31, 7)).astype(dtype) for _ in range(3)]

    def run() -> list[np.ndarray]:
        layer = bg.Dense(31, 7, weights=w0, dtype=dtype)
        optimizer = make()
        for g in grads:
            layer.dweights, layer.dbiases = g, g[:1].copy()
            optimizer.step([layer])
        state = [getattr(layer, k, None) for k in ("weight_momentums", "weight_cache")]
        return [layer.weights, layer.biases, *(s for s in state if s is not None)]

    fast, ref = _both(run)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


@needs_ext
def test_c_relu_gives_positive_zero_and_declines_swapped_bytes() -> None:
    """-0.0 comes out as +0.0 (as np.maximum), and big-endian arrays, which the C loops would
    misread, are left to the reference: the layers give the reference's values."""
    from backprop_gpu import _cpu

    x = np.array([[-0.0, 1.5, -2.0, 3.0, np.nan]], np.float32)
    out = np.empty_like(x)
    assert takes(_cpu.relu_forward, x, out) and not np.signbit(out).any()
    swapped = np.array([[1.5, -2.0, 3.0]], ">f4")
    assert not takes(_cpu.relu_forward, swapped, np.empty_like(swapped))
    logits = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]], ">f8")

    def run() -> tuple[np.ndarray, object, np.ndarray]:
        relu, loss = bg.ReLU(), bg.SoftmaxCrossEntropy(validate=False)
        value = loss.forward(logits, np.array([1, 2], ">i8"))
        return relu.forward(swapped), value, loss.backward(loss.output, np.array([1, 2]))

    (r, v, d), (r_ref, v_ref, d_ref) = _both(run)
    np.testing.assert_array_equal(r, [[1.5, 0.0, 3.0]])
    np.testing.assert_array_equal(r, r_ref)
    assert v == v_ref
    np.testing.assert_array_equal(d, d_ref)


@needs_ext
def test_c_path_declines_what_it_cannot_take() -> None:
    """Strided views, mixed dtypes and integer arrays: the C loops refuse them, and the
    ops give the reference's results."""
    from backprop_gpu import _cpu

    x = RNG.standard_normal((8, 6)).astype(np.float32)
    half, wide, low = x[:, ::2], x.astype(np.float64), x.astype(np.float16)
    assert not takes(_cpu.relu_forward, half, np.empty_like(half))
    assert not takes(_cpu.relu_backward, x, wide, np.empty_like(x))
    assert not takes(_cpu.relu_forward, low, np.empty_like(low))
    assert not takes(_cpu.softmax_shift, x, np.zeros(8, np.int32), np.empty_like(x))
    assert not takes(_cpu.sgd, x.copy(), x.T.copy().T, 0.1)
    assert not takes(_cpu.column_sums, x.T, np.empty((1, 8), np.float32))
    assert not takes(_cpu.add_bias, x.copy(), np.zeros((1, 6), np.float64))
    cases = [
        ("relu", half), ("relu", low), ("relu_backward", x, wide),
        ("softmax_cross_entropy", x, np.zeros(8, np.int32), 1e-7), ("bias_gradient", x.T),
        ("add_bias", x.copy(), np.zeros((1, 6), np.float64)),
        ("add_bias", x.copy(), np.zeros((1, 1), np.float32)),  # (broadcasts)
    ]  # fmt: skip
    for name, *args in cases:
        fast = getattr(FAST.ops, name)(*(a.copy() if hasattr(a, "copy") else a for a in args))
        ref = getattr(REFERENCE.ops, name)(*args)
        for a, b in zip(*(r if isinstance(r, tuple) else (r,) for r in (fast, ref)), strict=True):
            np.testing.assert_array_equal(a, b, strict=True, err_msg=name)


# --- the CUDA build, on a GPU ----------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_kernels_equal_the_reference(dtype: str) -> None:
    """Bit for bit (compiled with --fmad=false, each kernel rounds as the reference)."""
    with bg.use_backend("cupy") as backend:
        fast, ref = backend.ops, backend.with_reference_ops().ops
        assert type(fast) is not Ops
        x, d = (bg.asarray(a) for a in RNG.standard_normal((2, 300, 70)).astype(dtype))
        assert bg.to_numpy(fast.relu_backward(d, x)).tobytes() == (
            bg.to_numpy(ref.relu_backward(d, x)).tobytes()
        )
        for nesterov in (False, True):
            w, v, g = (bg.asarray(a) for a in RNG.standard_normal((3, 50, 40)).astype(dtype))
            w_ref, v_ref = w.copy(), v.copy()
            fast.sgd_momentum(w, v, g, 0.1, 0.9, nesterov)
            ref.sgd_momentum(w_ref, v_ref, g, 0.1, 0.9, nesterov)
            assert bg.to_numpy(w).tobytes() == bg.to_numpy(w_ref).tobytes()
            assert bg.to_numpy(v).tobytes() == bg.to_numpy(v_ref).tobytes()


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (300, 1), (513, 70)])
def test_new_cuda_kernels_equal_the_reference(dtype: str, shape: tuple[int, int]) -> None:
    """bias_relu and the optimizers bit for bit the reference on CuPy; the column sums within
    N eps sum|x| and bit for bit their twin; the softmax within ``softmax_tolerances``, its
    reduction bit for bit its twin on the kernel's own logp; a bad label counts 1 error."""
    with bg.use_backend("cupy") as backend:
        fast, ref = backend.ops, backend.with_reference_ops().ops
        host = [_edge_array(shape, dtype) for _ in range(4)]
        z, d, w, g = (bg.asarray(a) for a in host)
        biases = bg.asarray(_edge_array((1, shape[1]), dtype))
        got = bg.to_numpy(fast.bias_relu(z.copy(), biases))
        assert got.tobytes() == bg.to_numpy(ref.bias_relu(z.copy(), biases)).tobytes()
        dinputs, dbiases = fast.relu_backward_bias_gradient(d, z)
        ref_dinputs, ref_dbiases = ref.relu_backward_bias_gradient(d, z)
        assert bg.to_numpy(dinputs).tobytes() == bg.to_numpy(ref_dinputs).tobytes()
        twin = cuda_source.relu_backward_bias_gradient_twin(host[1], host[0])[1]
        np.testing.assert_array_equal(bg.to_numpy(dbiases), twin)  # (NaN payloads aside)
        finite = np.nan_to_num(bg.to_numpy(ref_dinputs), nan=0, posinf=0, neginf=0)
        bound = shape[0] * float(np.finfo(dtype).eps) * np.abs(finite).sum(0, keepdims=True)
        ok = np.isfinite(bg.to_numpy(ref_dbiases))
        assert np.all((np.abs(bg.to_numpy(dbiases - ref_dbiases)) <= bound)[ok])
        cache = bg.asarray(np.abs(RNG.standard_normal(shape)).astype(dtype))
        updates = [
            ("sgd", (), {"lr": 0.1}),
            ("sgd_momentum", (1,), {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
            ("adagrad", (1,), {"lr": 0.1, "epsilon": 1e-7}),
            ("rmsprop", (1,), {"lr": 0.01, "rho": 0.9, "epsilon": 1e-7}),
            ("adam", (1, 1), {"lr": 0.001, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7,
                              "t": 3}),
        ]  # fmt: skip
        for name, states, kwargs in updates:
            runs = []
            for ops in (fast, ref):
                arrays = [w.copy(), *(cache.copy() for _ in states)]
                getattr(ops, name)(*arrays, g, **kwargs)
                runs.append([bg.to_numpy(a).tobytes() for a in arrays])
            assert runs[0] == runs[1], name
        rows, cols = shape
        logits = bg.asarray((3 * RNG.standard_normal(shape)).astype(dtype))
        y_host = RNG.integers(0, cols, rows)
        p, loss, correct, dl = fast.softmax_cross_entropy_forward_backward(
            logits, bg.asarray(y_host), 1e-7
        )
        ref_p, ref_loss, _, ref_d = ref.softmax_cross_entropy_forward_backward(
            logits, bg.asarray(y_host), 1e-7
        )
        ref_p, ref_d = bg.to_numpy(ref_p), bg.to_numpy(ref_d)
        p_tol, d_tol, loss_tol = cuda_source.softmax_tolerances(ref_p, ref_d, float(ref_loss))
        assert np.all(np.abs(bg.to_numpy(p) - ref_p) <= p_tol)
        assert np.all(np.abs(bg.to_numpy(dl) - ref_d) <= d_tol)
        assert abs(float(loss) - float(ref_loss)) <= loss_tol
        assert float(correct) == (np.argmax(bg.to_numpy(logits), axis=1) == y_host).sum()
        # the reduction kernel alone, launched on given logp and hits: bit for bit its twin
        xp, suffix = backend.xp, cuda_source.SUFFIX[dtype]
        logp = RNG.standard_normal(rows).astype(dtype)
        hit = RNG.integers(-1, 2, rows).astype(np.int32)
        out_loss, out_correct = xp.empty((), dtype), xp.empty((), np.float32)
        errors = xp.zeros(1, np.int64)
        fast._run(f"softmax_ce_reduce_{suffix}", 1, (cuda_source.REDUCE_THREADS,),
                  xp.asarray(logp), xp.asarray(hit), out_loss, out_correct, errors,
                  np.dtype(dtype).type(rows), np.int64(rows))  # fmt: skip
        twin_loss, twin_correct, twin_errors = cuda_source.softmax_ce_reduce_twin(logp, hit)
        assert bg.to_numpy(out_loss).tobytes() == np.asarray(twin_loss, dtype).tobytes()
        assert float(out_correct) == twin_correct and int(errors[0]) == twin_errors
        assert int(fast.label_errors[0]) == 0
        y_host[0] = cols  # a bad label: NaN on its row, one error counted
        p, loss, _, dl = fast.softmax_cross_entropy_forward_backward(
            logits, bg.asarray(y_host), 1e-7
        )
        assert np.isnan(bg.to_numpy(p)[0]).all() and np.isnan(bg.to_numpy(dl)[0]).all()
        assert np.isnan(float(loss)) and int(fast.label_errors[0]) == 1


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_all_finite_equals_the_reference(dtype: str) -> None:
    """One call over many arrays, as NumPy's isfinite().all() over each: NaN, +-inf, the
    largest finite value, subnormals, -0.0, empty arrays, and arrays long enough to release
    the GIL; other dtypes and layouts are declined (the reference then runs)."""
    from backprop_gpu import _cpu

    info = np.finfo(dtype)
    special = [np.nan, np.inf, -np.inf, info.max, -info.max, info.smallest_subnormal, -0.0]
    for size in (0, 1, 7, 33, 20000):
        for value in special:
            for at in {0, size // 2, size - 1} if size else {0}:
                arrays = [RNG.standard_normal(5).astype(dtype), np.zeros(size, dtype)]
                if size:
                    arrays[1][at] = value
                expected = [bool(np.isfinite(a).all()) for a in arrays]
                assert _cpu.all_finite(tuple(arrays)) is all(expected), (size, value, at)
                assert FAST.ops.finite_flags(arrays) == expected, (size, value, at)
    x = np.ones((4, 4), dtype)
    for declined in ([x.astype(np.int64)], [x[:, ::2]], [x.astype(np.float16)]):
        assert not takes(_cpu.all_finite, tuple(declined))
        declined[0][0, 0] = np.inf if declined[0].dtype.kind == "f" else 0
        expected = [bool(np.isfinite(a).all()) for a in declined]
        assert FAST.ops.finite_flags(declined) == expected
    with pytest.raises(TypeError, match="sequence of arrays"):
        _cpu.all_finite(3)
