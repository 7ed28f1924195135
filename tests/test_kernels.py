"""The fused kernels. GPU: the CUDA source compiles (no GPU needed), the per-element twins
equal the plain xp reference path, and on a GPU the kernels themselves do too. CPU: the C
extension's loops equal the reference on the same inputs."""

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


def test_no_kernel_on_the_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """array-api-strict runs the reference code: every kernel declines."""
    with bg.use_backend("array_api_strict") as backend:
        x = bg.asarray(RNG.standard_normal((4, 4)).astype(np.float32))
        y = bg.asarray(np.array([0, 1, 2, 3]))
        assert kernels.relu_forward(backend, x) is None
        assert kernels.relu_backward(backend, x, x) is None
        assert kernels.softmax_cross_entropy(backend, x, y, 1e-7) is None
        assert kernels.softmax_cross_entropy_backward(backend, x, y) is None
        assert not kernels.sgd_momentum(backend, x, x, x, 0.1, 0.9, False)
        assert not kernels.sgd(backend, x, x, 0.1)
        assert not kernels.adam(
            backend, x, x, x, x, lr=0.1, beta_1=0.9, beta_2=0.99, epsilon=1e-7, t=1
        )


# --- the C extension, on NumPy ----------------------------------------------------------------

REQUIRE_EXT = os.environ.get("BACKPROP_GPU_REQUIRE_EXT") == "1"
needs_ext = pytest.mark.skipif(
    not kernels.HAVE_C and not REQUIRE_EXT,
    reason="backprop_gpu._cpu is not built here (no C compiler at install, or not installed -e)",
)


def test_c_extension_is_built_where_required() -> None:
    """CI sets BACKPROP_GPU_REQUIRE_EXT=1: an install that silently skipped the C build fails."""
    if not REQUIRE_EXT:
        pytest.skip("BACKPROP_GPU_REQUIRE_EXT is not set")
    where = os.path.dirname(kernels.__file__)
    assert kernels.HAVE_C, (
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


def _both(monkeypatch: pytest.MonkeyPatch, run):  # type: ignore[no-untyped-def]
    """``run()`` with the kernels (checking they ran) and then as the reference."""
    fast = run()
    monkeypatch.setattr(kernels, "enabled", False)
    ref = run()
    monkeypatch.setattr(kernels, "enabled", True)
    return fast, ref


@needs_ext
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the reference
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_relu_equals_the_reference(dtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with bg.use_backend("numpy") as backend:
        x, d = _awkward((37, 19), dtype), _awkward((37, 19), dtype)[::-1].copy()
        assert kernels.relu_forward(backend, x) is not None
        assert kernels.relu_backward(backend, d, x) is not None

        def run() -> tuple[np.ndarray, np.ndarray]:
            relu = bg.ReLU()
            return relu.forward(x), relu.backward(d)

        (out, dx), (out_ref, dx_ref) = _both(monkeypatch, run)
        assert out.dtype == dx.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(out, out_ref)  # NaN where the reference has NaN
        np.testing.assert_array_equal(dx, dx_ref)
        assert np.isnan(dx).any()  # inf * 0 at a masked input: NaN, as the reference


@needs_ext
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # inf * 0 in the product
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(1, 8), (300, 3), (1000, 64), (37, 1), (1000, 1)])
def test_c_dense_bias_add_and_sum_equal_the_reference(
    dtype: str, shape: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dense.forward's ``+ biases`` and backward's column sums, bit for bit (NaN and inf too)."""
    n, c = shape
    with bg.use_backend("numpy") as backend:
        x, dv = RNG.standard_normal((n, 4)).astype(dtype), _awkward((n, c), dtype) * 1e3
        if n == 1000 and c == 1:
            dv = RNG.standard_normal((n, c)).astype(dtype) * 1e3  # finite: sums comparable
        biases = RNG.standard_normal((1, c))
        # one column is summed pairwise by NumPy (it is contiguous): the kernel leaves it
        assert (kernels.column_sums(backend, dv) is None) == (c == 1)
        assert kernels.add_bias(backend, dv.copy(), biases.astype(dtype))

        def run() -> tuple[np.ndarray, ...]:
            layer = bg.Dense(4, c, biases=biases, dtype=dtype, seed=0)
            out = layer.forward(x).copy()
            layer.backward(dv)
            return out, layer.dbiases, layer.dweights

        (out, db, dw), (out_ref, db_ref, dw_ref) = _both(monkeypatch, run)
        np.testing.assert_array_equal(out, out_ref)
        np.testing.assert_array_equal(db, db_ref)
        np.testing.assert_array_equal(dw, dw_ref)
        assert db.shape == (1, c) and db.dtype == np.dtype(dtype)
        # the sum itself, against an independent float64 sum
        finite = np.nan_to_num(dv, nan=0.0, posinf=0.0, neginf=0.0)
        sums = kernels.column_sums(backend, finite)
        if c > 1:
            np.testing.assert_allclose(sums[0], finite.astype(np.float64).sum(0), rtol=1e-4,
                                       atol=1e-2)  # fmt: skip


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("classes", [1, 3, 7, 8, 10, 129, 257, 1000])
def test_c_softmax_cross_entropy_equals_the_reference(
    dtype: str, classes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loss, probabilities and gradient bit for bit: the row sums follow NumPy's pairwise
    order (8 or more classes, where a plain loop's sum differs) and exp is NumPy's own."""
    with bg.use_backend("numpy") as backend:
        logits = (RNG.standard_normal((200, classes)) * 30).astype(dtype)
        logits[0] = 1e4  # ties and a huge shift
        logits[1, 0] = -1e4  # a probability that underflows: the clip matters
        logits[2, -1] = np.nan  # a NaN row, as the reference: NaN loss and probabilities
        y = RNG.integers(0, classes, 200)
        y[1] = 0
        assert kernels.softmax_cross_entropy(backend, logits, y, 1e-7) is not None

        def run() -> tuple[object, np.ndarray, np.ndarray]:
            loss = bg.SoftmaxCrossEntropy()
            value = loss.forward(logits, y)
            return value, loss.output, loss.backward(loss.output, y)

        with np.errstate(invalid="ignore"):  # the reference's NaN - NaN
            (value, p, dz), (value_ref, p_ref, dz_ref) = _both(monkeypatch, run)
            assert type(value) is type(value_ref) is np.dtype(dtype).type
            np.testing.assert_array_equal(p, p_ref, strict=True)
            np.testing.assert_array_equal(dz, dz_ref, strict=True)
            np.testing.assert_array_equal(dz, (p - np.eye(classes, dtype=dtype)[y]) / 200)
            assert np.isnan(value) and np.isnan(value_ref)  # (the NaN row)
            finite = slice(3, None)
            value, value_ref = bg.SoftmaxCrossEntropy().forward(logits[finite], y[finite]), None
            monkeypatch.setattr(kernels, "enabled", False)
            value_ref = bg.SoftmaxCrossEntropy().forward(logits[finite], y[finite])
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
def test_training_with_and_without_the_c_kernels_is_bit_identical(
    dtype: str, make: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """30 epochs on the spiral (ReLU, biases, softmax cross-entropy over 3 classes, and a
    10-class head): every history value and every parameter equal bit for bit, on and off.
    (Before the softmax followed NumPy's exp and summation order, weights had drifted apart
    by up to 6e-5 here in float32.)"""
    from backprop_gpu.datasets import spiral_data

    X, y = spiral_data(50, 10, seed=0)

    def run() -> tuple[list[dict[str, float]], list[bytes]]:
        with bg.use_backend("numpy"):
            model = bg.Model([bg.Dense(2, 64, seed=0, dtype=dtype), bg.ReLU(),
                              bg.Dense(64, 32, seed=1, dtype=dtype, weight_regularizer_l2=1e-4),
                              bg.ReLU(), bg.Dense(32, 10, seed=2, dtype=dtype)])  # fmt: skip
            model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=make())  # type: ignore[operator]
            history = model.finalize().train(X, y, epochs=30, batch_size=32, print_every=0, seed=0)
            assert (model.loss.correct is not None) == kernels.enabled  # the kernels ran
            return history, [bg.to_numpy(p).tobytes() for p in _parameters(model)]

    (history, params), (history_ref, params_ref) = _both(monkeypatch, run)
    assert history == history_ref
    assert params == params_ref


def _parameters(model: bg.Model) -> list[object]:
    return [getattr(layer, name) for layer in model.trainable_layers for name in layer.params]


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_softmax_cross_entropy_counts_argmax_hits_as_numpy(dtype: str) -> None:
    """The fused forward also counts rows whose argmax is the label: ties go to the first
    largest logit and a NaN row to its first NaN, as numpy.argmax."""
    with bg.use_backend("numpy") as backend:
        logits = RNG.integers(-2, 3, (500, 4)).astype(dtype)  # many ties
        logits[:7, 1] = np.nan
        logits[7:9] = [[np.nan, 0, np.nan, 1], [np.inf, np.inf, 0, -np.inf]]
        y = RNG.integers(0, 4, 500)
        y[:9] = [1, 1, 1, 0, 1, 2, 3, 0, 1]
        fused = kernels.softmax_cross_entropy(backend, logits, y, 1e-7)
        assert fused is not None
        assert fused[2] == int(np.sum(np.argmax(logits, axis=1) == y))


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_accuracy_from_the_fused_loss_equals_accuracy_calculate(
    dtype: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Model.train reads its accuracy off the fused loss kernel: the history is the same, bit
    for bit, as with Accuracy.calculate on the reference path."""
    X = RNG.standard_normal((96, 5)).astype(dtype)
    y = RNG.integers(0, 4, 96)

    def run() -> list[float]:
        with bg.use_backend("numpy"):
            model = bg.Model([bg.Dense(5, 16, seed=0, dtype=dtype), bg.ReLU(),
                              bg.Dense(16, 4, seed=1, dtype=dtype)])  # fmt: skip
            model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5, momentum=0.9))
            history = model.finalize().train(X, y, epochs=4, batch_size=10, print_every=0, seed=1)
            assert (model.loss.correct is not None) == kernels.enabled
            return [row["accuracy"] for row in history]

    fast, ref = _both(monkeypatch, run)
    assert fast == ref and len(set(fast)) > 1


@needs_ext
def test_c_softmax_cross_entropy_keeps_nan_and_refuses_bad_labels() -> None:
    """A NaN logit gives a NaN loss and NaN row (as the reference), and the C loop checks the
    labels' range itself, since a wrong index would read outside the row."""
    from backprop_gpu import _cpu

    with bg.use_backend("numpy") as backend:
        logits = RNG.standard_normal((3, 4)).astype(np.float32)
        logits[1, 2] = np.nan
        fused = kernels.softmax_cross_entropy(backend, logits, np.array([0, 1, 2]), 1e-7)
        assert fused is not None
        p, loss, _ = fused
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
    make,
    monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
) -> None:
    """Three steps (so momentum, cache and bias correction all matter), bit for bit."""
    w0 = RNG.standard_normal((31, 7))
    grads = [RNG.standard_normal((31, 7)).astype(dtype) for _ in range(3)]

    def run() -> list[np.ndarray]:
        with bg.use_backend("numpy"):
            layer = bg.Dense(31, 7, weights=w0, dtype=dtype)
            optimizer = make()
            for g in grads:
                layer.dweights, layer.dbiases = g, g[:1].copy()
                optimizer.step([layer])
            state = [getattr(layer, k, None) for k in ("weight_momentums", "weight_cache")]
            return [layer.weights, layer.biases, *(s for s in state if s is not None)]

    fast, ref = _both(monkeypatch, run)
    assert len(fast) == len(ref)
    for a, b in zip(fast, ref, strict=True):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(a, b)


@needs_ext
def test_c_relu_gives_positive_zero_and_declines_swapped_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """-0.0 comes out as +0.0 (as np.maximum), and big-endian arrays, which the C loops would
    misread, are left to the reference: the layers give the reference's values."""
    with bg.use_backend("numpy") as backend:
        x = np.array([[-0.0, 1.5, -2.0, 3.0, np.nan]], np.float32)
        out = kernels.relu_forward(backend, x)
        assert out is not None and not np.signbit(out).any()
        swapped = np.array([[1.5, -2.0, 3.0]], ">f4")
        assert kernels.relu_forward(backend, swapped) is None
        logits = np.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]], ">f8")

        def run() -> tuple[np.ndarray, object, np.ndarray]:
            relu, loss = bg.ReLU(), bg.SoftmaxCrossEntropy(validate=False)
            value = loss.forward(logits, np.array([1, 2], ">i8"))
            return relu.forward(swapped), value, loss.backward(loss.output, np.array([1, 2]))

        (r, v, d), (r_ref, v_ref, d_ref) = _both(monkeypatch, run)
        np.testing.assert_array_equal(r, [[1.5, 0.0, 3.0]])
        np.testing.assert_array_equal(r, r_ref)
        assert v == v_ref
        np.testing.assert_array_equal(d, d_ref)


@needs_ext
def test_c_path_declines_what_it_cannot_take() -> None:
    """Strided views, mixed dtypes and integer arrays go to the reference code."""
    with bg.use_backend("numpy") as backend:
        x = RNG.standard_normal((8, 6)).astype(np.float32)
        assert kernels.relu_forward(backend, x[:, ::2]) is None
        assert kernels.relu_backward(backend, x, x.astype(np.float64)) is None
        assert kernels.relu_forward(backend, x.astype(np.float16)) is None
        assert kernels.softmax_cross_entropy(backend, x, np.zeros(8, np.int32), 1e-7) is None
        assert not kernels.sgd(backend, x, x.T.copy().T, 0.1)
        assert kernels.column_sums(backend, x.T) is None
        assert not kernels.add_bias(backend, x, np.zeros((1, 6), np.float64))
        assert not kernels.add_bias(backend, x, np.zeros((1, 1), np.float32))  # broadcasts
        assert not kernels.add_bias(backend, x, np.zeros((6, 1), np.float32))


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


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_all_finite_equals_the_reference(dtype: str) -> None:
    """One call over many arrays, as NumPy's isfinite().all() over each: NaN, +-inf, the
    largest finite value, subnormals, -0.0, empty arrays, and arrays long enough to release
    the GIL; other dtypes and layouts are declined (the reference then runs)."""
    from backprop_gpu import _cpu

    info = np.finfo(dtype)
    special = [np.nan, np.inf, -np.inf, info.max, -info.max, info.smallest_subnormal, -0.0]
    with bg.use_backend("numpy") as backend:
        for size in (0, 1, 7, 33, 20000):
            for value in special:
                for at in {0, size // 2, size - 1} if size else {0}:
                    arrays = [RNG.standard_normal(5).astype(dtype), np.zeros(size, dtype)]
                    if size:
                        arrays[1][at] = value
                    expected = all(bool(np.isfinite(a).all()) for a in arrays)
                    assert kernels.all_finite(backend, arrays) is expected, (size, value, at)
        x = np.ones((4, 4), dtype)
        for declined in ([x.astype(np.int64)], [x[:, ::2]], [x.astype(np.float16)], [[1.0]]):
            assert kernels.all_finite(backend, declined) is None
        with pytest.raises(TypeError, match="sequence of arrays"):
            _cpu.all_finite(3)
