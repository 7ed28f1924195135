"""The emulated CuPy backend of ``benchmarks/trace.py``: its counting rules on small cases,
its kernels' CPU computations against the twins, training to the stand-in's values, and
``python -m benchmarks.gpu_ops`` printing what it counts."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.backend import Ops, cuda_source
from backprop_gpu.backend.numpy_backend import NumpyBackend
from backprop_gpu.backend.strict_backend import StrictBackend
from benchmarks import gpu_ops
from benchmarks.trace import (
    KERNELS,
    KINDS,
    DeviceArray,
    EmulatedCupy,
    EmulatedCupyBackend,
    kernel_entry,
    tally,
)

from .conftest import gpu_only


def counted(backend: EmulatedCupyBackend, action: Callable[[], Any]) -> dict[str, int]:
    """The device operations ``action`` issues on ``backend``, by kind (zeros left out)."""
    start = len(backend.events)
    action()
    return {k: v for k, v in tally(backend.events[start:]).items() if v or k == "total"}


@pytest.fixture
def emulated() -> EmulatedCupyBackend:
    return EmulatedCupyBackend()


def arrays(backend: EmulatedCupyBackend, *shapes: tuple[int, ...], dtype: Any = np.float32):
    rng = np.random.default_rng(0)
    with backend.xp.paused():  # (the copies to the device are not what is counted)
        return [backend.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]


def test_counting_rules(emulated: EmulatedCupyBackend) -> None:
    xp = emulated.xp
    a, b, w = arrays(emulated, (4, 3), (4, 3), (3, 5))
    assert counted(emulated, lambda: a + b) == {"cupy": 1, "total": 1}
    assert counted(emulated, lambda: a.__iadd__(b)) == {"cupy": 1, "total": 1}
    assert counted(emulated, lambda: -xp.sum(a) / 4) == {"cupy": 3, "total": 3}  # 0-d ops too
    assert counted(emulated, lambda: a @ w) == {"gemm": 1, "total": 1}
    assert counted(emulated, lambda: xp.matmul(a.T, b)) == {"gemm": 1, "total": 1}
    assert counted(emulated, lambda: (a[1:3, ...], a.T, a[0], xp.reshape(a, (12,)))) == {"total": 0}
    assert counted(emulated, lambda: xp.empty_like(a)) == {"total": 0}
    assert counted(emulated, lambda: xp.zeros_like(a)) == {"memset/copy": 1, "total": 1}
    assert counted(emulated, lambda: xp.astype(a, xp.float64)) == {"cupy": 1, "total": 1}
    assert counted(emulated, lambda: xp.astype(a, xp.float32, copy=False)) == {"total": 0}
    assert counted(emulated, lambda: a.__setitem__(..., b)) == {"memset/copy": 1, "total": 1}
    assert counted(emulated, lambda: a.__setitem__(..., a)) == {"total": 0}
    assert counted(emulated, lambda: float(xp.sum(a))) == {"cupy": 1, "d2h": 1, "total": 2}
    assert counted(emulated, lambda: emulated.asarray(np.ones(3))) == {"h2d": 1, "total": 1}
    assert counted(emulated, lambda: bg.to_numpy(a)) == {"d2h": 1, "total": 1}
    rows, y = emulated.arange(4), emulated.asarray(np.array([0, 2, 1, 2]))
    assert counted(emulated, lambda: xp.take(a, rows, axis=0)) == {"cupy": 1, "total": 1}
    picked = counted(emulated, lambda: a[rows, y])  # a memset, one pass an index array, a take
    assert picked == {"cupy": 3, "memset/copy": 1, "total": 4}
    scalars = [xp.sum(a) for _ in range(9)]
    assert counted(emulated, lambda: xp.stack(scalars[:8])) == {"memset/copy": 8, "total": 8}
    assert counted(emulated, lambda: xp.stack(scalars)) == {"h2d": 1, "cupy": 1, "total": 2}


def test_values_are_numpys(emulated: EmulatedCupyBackend) -> None:
    a, b = arrays(emulated, (4, 3), (4, 3))
    host_a, host_b = bg.to_numpy(a), bg.to_numpy(b)
    np.testing.assert_array_equal(bg.to_numpy((a - b) * 2), (host_a - host_b) * 2)
    np.testing.assert_array_equal(bg.to_numpy(a[emulated.arange(2), 1]), host_a[[0, 1], 1])
    with pytest.raises(TypeError, match="Implicit conversion to a NumPy array"):
        np.asarray(a)  # as CuPy: no silent copy to the host
    with pytest.raises(TypeError, match="host array"):
        a + host_b


def test_a_kernel_launch_is_one_operation(emulated: EmulatedCupyBackend) -> None:
    d, x = arrays(emulated, (5, 4), (5, 4))
    out = counted(emulated, lambda: emulated.ops.relu_backward(d, x))
    assert out == {"kernel": 1, "total": 1}  # (empty_like is free: CuPy's pool)
    assert [e.op for e in emulated.events[-1:]] == ["relu_backward_f32"]  # type: ignore[union-attr]
    # float16 has its kernel too (a mixed step's); mixed dtypes fall back to the reference
    # (>, astype, *)
    d16, x16 = arrays(emulated, (5, 4), (5, 4), dtype=np.float16)
    assert counted(emulated, lambda: emulated.ops.relu_backward(d16, x16)) == {
        "kernel": 1,
        "total": 1,
    }
    assert [e.op for e in emulated.events[-1:]] == ["relu_backward_f16"]  # type: ignore[union-attr]
    assert counted(emulated, lambda: emulated.ops.relu_backward(d16, x)) == {
        "cupy": 3,
        "total": 3,
    }
    reference = emulated.with_reference_ops()  # the same xp: the same record
    assert counted(reference, lambda: reference.ops.softmax(d)) == {"cupy": 5, "total": 5}


def test_an_unknown_kernel_fails_saying_what_to_add(emulated: EmulatedCupyBackend) -> None:
    (a,) = arrays(emulated, (3,))
    with pytest.raises(KeyError, match="add 'softmax_rows' to KERNELS in benchmarks/trace.py"):
        emulated.ops._launch("softmax_rows_f32", 3, a)
    assert counted(emulated, lambda: emulated.ops._launch("softmax_rows_f32", 0, a)) == {
        "total": 0  # an empty launch is skipped before the lookup, as CupyOps._launch does
    }


def test_every_cuda_kernel_has_a_table_entry() -> None:
    for name in cuda_source.KERNEL_NAMES:
        assert kernel_entry(name) in KERNELS.values()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("nesterov", [False, True])
def test_table_references_equal_the_twins(dtype: Any, nesterov: bool) -> None:
    """Each kernel's vectorised reference and its per-element twin, on the same launch."""
    results = {}
    for twins in (False, True):
        backend = EmulatedCupyBackend(EmulatedCupy(twins=twins))
        d, x, w, v, g = arrays(backend, *[(7, 5)] * 5, dtype=dtype)
        dinputs = backend.ops.relu_backward(d, x)
        backend.ops.sgd_momentum(w, v, g, 0.3, 0.8, nesterov)
        results[twins] = [bg.to_numpy(a) for a in (dinputs, w, v)]
    for reference, twin in zip(results[False], results[True], strict=True):
        assert reference.dtype == dtype
        np.testing.assert_array_equal(reference, twin)


def _train(backend: bg.Backend, optimizer: Any, shuffle: bool) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((40, 2)).astype(np.float32)
    y = rng.integers(0, 3, 40)
    with bg.use_backend(backend):
        model = bg.Model([bg.Dense(2, 8, init="he", seed=0), bg.ReLU(),
                          bg.Dense(8, 8, init="he", seed=1), bg.ReLU(),
                          bg.Dense(8, 3, seed=2)])  # fmt: skip
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=optimizer, accuracy=bg.Accuracy())
        model.finalize()
        history = model.train(backend.asarray(X), backend.asarray(y), epochs=3,
                              batch_size=16, shuffle=shuffle, seed=3, print_every=0)  # fmt: skip
        params = [bg.to_numpy(getattr(layer, name)) for layer in model.trainable_layers
                  for name in layer.params]  # fmt: skip
    return history, params


@pytest.mark.parametrize("twins", [False, True])
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_the_emulated_cupy_path_trains_like_the_stand_in(
    optimizer: str, shuffle: bool, twins: bool
) -> None:
    """The CuPy path against the stand-in's reference ops. With the kernels' reference
    computations: the same losses, accuracies and parameters, bit for bit. With their twins
    (the kernels' own arithmetic and order): the elementwise twins are the reference's
    arithmetic, but the column sums and the softmax add in the kernels' order, so the losses
    are compared within ``cuda_source.softmax_tolerances``' loss bound and the parameters
    within that bound's per-step relative error of p, (C + 8) eps, times the number of steps
    (each step's difference adding to the parameters; a test bound, not a proof)."""
    emulated = EmulatedCupyBackend(EmulatedCupy(twins=twins))
    history, params = _train(emulated, gpu_ops.make_optimizer(optimizer), shuffle)
    kernels = {
        e.op.rsplit("_", 1)[0] for e in emulated.events if getattr(e, "kind", "") == "kernel"
    }
    assert {"bias_relu", "relu_backward_bias_gradient", "softmax_ce_rows", "softmax_ce_reduce",
            optimizer} <= kernels  # fmt: skip
    reference, expected = _train(StrictBackend(), gpu_ops.make_optimizer(optimizer), shuffle)
    if not twins:
        assert history == reference
        for got, want in zip(params, expected, strict=True):
            np.testing.assert_array_equal(got, want)
        return
    eps, classes, steps = float(np.finfo(np.float32).eps), 3, 3 * 3  # 3 epochs of 3 batches
    for got_row, want_row in zip(history, reference, strict=True):
        assert got_row.keys() == want_row.keys()
        assert got_row["accuracy"] == want_row["accuracy"]
        p = np.full((16, classes), 1 / classes, np.float32)  # (the loss is float32)
        d = np.zeros_like(p)
        loss_tol = cuda_source.softmax_tolerances(p, d, want_row["loss"])[2]
        assert abs(got_row["loss"] - want_row["loss"]) <= loss_tol
    for got, want in zip(params, expected, strict=True):
        atol = steps * (classes + 8) * eps * float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=0, atol=atol)


def test_the_benchmark_prints_what_it_counts(capsys: pytest.CaptureFixture[str]) -> None:
    assert gpu_ops.main(["--steps", "2", "--check-sizes"]) == 0  # sizes do not change counts
    out = capsys.readouterr().out
    checks = re.findall(r"the same operations at sizes .*: (\w+)\n", out)
    assert checks == ["yes"] * 8  # 2 models x 2 optimizers x shuffled or not
    half = out.split("The 16-bit ops of a mixed step", 1)[1]
    for name, (kernel, reference) in gpu_ops.half_op_counts().items():
        assert re.search(rf"\n  {name} +{kernel} +{reference}\n", half), name
    for sizes, batch in gpu_ops.CASES:
        for optimizer in gpu_ops.OPTIMIZERS:
            c = gpu_ops.count(sizes, batch, optimizer, shuffle=True, steps=2)
            title = f"MLP {list(sizes)} batch {batch}, {optimizer}, data on the device, shuffled:"
            block = out.split(title, 1)[1]
            printed = re.search(r"each step after +([\d ]+)\n", block)
            assert printed is not None
            numbers = [int(v) for v in printed.group(1).split()]
            steady = c.step(-1)
            assert numbers == [steady[k] for k in (*KINDS, "total")]
            in_order = gpu_ops.count(sizes, batch, optimizer, shuffle=False, steps=2)
            # shuffled, each step gathers its batch: one kernel for X and y
            assert steady["kernel"] - in_order.step(-1)["kernel"] == 1
            assert steady["cupy"] == in_order.step(-1)["cupy"]
            assert steady["gemm"] == 3 * (len(sizes) - 1) - 1  # forward, dW, dX but the first


def test_device_array_is_taken_for_cupy(emulated: EmulatedCupyBackend) -> None:
    (a,) = arrays(emulated, (2, 2))
    assert bg.backend.array_library(a) == "cupy" and isinstance(a, DeviceArray)
    assert emulated.owns(a) and emulated.name == "cupy"


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("optimizer", ["sgd_momentum", "adam"])
def test_a_three_layer_step_meets_the_launch_target(optimizer: str, shuffle: bool) -> None:
    """The issue's target for [784, 1024, 1024, 10]: at most 8 GEMMs + 10 other device
    operations a step. Today 9 in order: 2 bias+ReLU kernels, the last layer's bias add, the
    softmax-CE row and reduce kernels, its bias sum, 2 ReLU-backward+bias-sum kernels and one
    update over the flat buffer (the accuracy is divided on the host, with the epoch's read);
    shuffled, one more kernel gathers the batch's X and y."""
    steady = gpu_ops.count((784, 1024, 1024, 10), 512, optimizer, shuffle=shuffle, steps=2)
    steady = steady.step(-1)
    assert steady["gemm"] == 8
    assert gpu_ops.others(steady) == (10 if shuffle else 9), steady
    assert steady["h2d"] == steady["d2h"] == 0  # nothing crosses to or from the host a step


CLIPPED = {
    "sgd_clip_norm_weight_decay": lambda: bg.SGD(0.1, momentum=0.9, weight_decay=1e-3,
                                                 clip_norm=0.5),
    "adamw_clip_value": lambda: bg.AdamW(0.01, weight_decay=0.1, clip_value=0.05),
}  # fmt: skip


@pytest.mark.parametrize("optimizer", CLIPPED)
def test_the_emulated_cupy_path_clips_and_decays_like_the_stand_in(optimizer: str) -> None:
    """Clipping and weight decay on the CuPy path (the reference ops as CuPy kernels, and
    CupyOps.clip_grad_value) train to the stand-in's bits."""
    history, params = _train(EmulatedCupyBackend(), CLIPPED[optimizer](), shuffle=True)
    reference, expected = _train(StrictBackend(), CLIPPED[optimizer](), shuffle=True)
    assert history == reference
    for got, want in zip(params, expected, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("make", "extra"),
    [
        # the norm: one dot product (cuBLAS) per dtype, then sqrt, + 1e-6, max_norm / it and
        # the clamp on 0-d arrays, and the scaling of the gradient buffer
        (lambda: bg.SGD(0.01, momentum=0.9, clip_norm=1.0), {"gemm": 1, "cupy": 5}),
        (lambda: bg.SGD(0.01, momentum=0.9, clip_value=1.0), {"cupy": 1}),  # one clip
        (lambda: bg.SGD(0.01, momentum=0.9, weight_decay=1e-4), {"cupy": 2}),  # wd * w, + g
        (lambda: bg.AdamW(0.001), {"cupy": 1}),  # w *= 1 - lr * wd
    ],
    ids=["clip_norm", "clip_value", "sgd_weight_decay", "adamw"],
)
def test_what_clipping_and_weight_decay_add_to_a_step(
    monkeypatch: pytest.MonkeyPatch, make: Any, extra: dict[str, int]
) -> None:
    """The device operations each setting adds to a steady [784, 1024, 1024, 10] step over
    the flat buffers (one dtype), whatever the number of layers."""
    base = "adam" if "AdamW" in repr(make()) else "sgd_momentum"
    plain = gpu_ops.count((784, 1024, 1024, 10), 512, base, shuffle=False, steps=2).step(-1)
    monkeypatch.setattr(gpu_ops, "make_optimizer", lambda name: make())
    got = gpu_ops.count((784, 1024, 1024, 10), 512, base, shuffle=False, steps=2).step(-1)
    added = {k: got[k] - plain[k] for k in got if got[k] != plain[k] and k != "total"}
    assert added == extra


# --- the 16-bit kernels of a mixed step -----------------------------------------------------

HALF = ["float16", "bfloat16"]


def _dtype(name: str) -> np.dtype:
    """The NumPy dtype of a 16-bit name; bfloat16 is ml_dtypes' (CuPy 14's bfloat16)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


@pytest.mark.parametrize("name", HALF)
def test_each_16_bit_op_of_a_mixed_step_is_one_kernel(name: str) -> None:
    """On the CuPy path a float16/bfloat16 bias + ReLU, ReLU backward (with or without the
    bias sums), batch gather and unscale are one launch each, of their "_f16"/"_bf16"
    kernel; the reference issues 2, 3, 4, 2 and 9 device operations (unscale: cast,
    division, copy, isfinite, not, any, cast, maximum, copy)."""
    dtype = _dtype(name)
    counts = gpu_ops.half_op_counts(dtype)
    assert counts == {"bias_relu": (1, 2), "relu_backward": (1, 3),
                      "relu_backward_bias_gradient": (1, 4), "take_batch": (1, 2),
                      "unscale": (1, 9)}  # fmt: skip
    emulated = EmulatedCupyBackend()
    gpu_ops.half_op_counts(dtype, emulated)
    suffix = cuda_source.SUFFIX[dtype.name]
    launched = [e.op for e in emulated.events if e.kind == "kernel"]
    assert launched == [f"{op}_{suffix}" for op in gpu_ops.HALF_OPS]
    # a kernel without a 16-bit variant, and mixed dtypes, leave 16-bit arrays to the reference
    w, g = arrays(emulated, (4, 3), (4, 3), dtype=dtype)
    assert counted(emulated, lambda: emulated.ops.sgd(w, g, 0.1)).get("kernel", 0) == 0
    (g32,) = arrays(emulated, (4, 3))
    flag = emulated.asarray(np.zeros(1, np.int32))
    assert "kernel" not in counted(emulated, lambda: emulated.ops.unscale(g32, g32, 2.0, flag))


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("name", HALF)
def test_emulated_16_bit_kernels_with_their_twins_equal_the_reference(name: str) -> None:
    """The emulated CuPy path running the kernels' twins (element by element for bias + ReLU
    and ReLU backward, the column sums in the kernel's order in float32) against the
    reference ops on NumPy, on 16-bit arrays with NaN, +-inf and zeros: the elementwise
    results bit for bit, the column sums within ``half_sum_tolerance`` of NumPy's (which
    rounds to the 16-bit type after every row) and equal to ``relu_backward_bias_gradient_twin``;
    unscale bit for bit, its flag raised by the inf."""
    dtype = _dtype(name)
    rng = np.random.default_rng(2)
    host = [rng.standard_normal((40, 9)).astype(dtype) for _ in range(3)]
    host[0].reshape(-1)[:5] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    host[1].reshape(-1)[-5:] = [np.nan, np.inf, -np.inf, -0.0, 0.0]
    host[2].reshape(-1)[7] = np.inf
    biases = rng.standard_normal((1, 9)).astype(dtype)
    emulated = EmulatedCupyBackend(EmulatedCupy(twins=True))
    with emulated.xp.paused():
        z, d, grad = (emulated.asarray(a) for a in host)
        b = emulated.asarray(biases)
    ref = NumpyBackend(fast_ops=False).ops
    got = bg.to_numpy(emulated.ops.bias_relu(z, b))
    assert got.tobytes() == ref.bias_relu(host[0].copy(), biases).tobytes()
    np.testing.assert_array_equal(
        got.astype(np.float32), cuda_source.bias_relu_twin(host[0], biases).astype(np.float32)
    )
    relu = np.maximum(host[0], np.array(0, dtype))  # (the ReLU output as the mask, no -0.0)
    with emulated.xp.paused():
        out = emulated.asarray(relu)
    got = bg.to_numpy(emulated.ops.relu_backward(d, out))
    assert got.tobytes() == ref.relu_backward(host[1], relu).tobytes()
    dinputs, dbiases = (bg.to_numpy(a) for a in emulated.ops.relu_backward_bias_gradient(d, out))
    ref_dinputs, ref_dbiases = ref.relu_backward_bias_gradient(host[1], relu)
    assert dinputs.tobytes() == ref_dinputs.tobytes()
    twin = cuda_source.relu_backward_bias_gradient_twin(host[1], relu)[1]
    assert dbiases.tobytes() == twin.tobytes()
    finite = np.isfinite(ref_dbiases.astype(np.float32))
    values = np.where(np.isfinite(ref_dinputs.astype(np.float32)), ref_dinputs, 0).astype(dtype)
    bound = cuda_source.half_sum_tolerance(values, ref_dbiases, dtype)
    diff = np.abs(dbiases.astype(np.float64) - ref_dbiases.astype(np.float64))
    assert np.all((diff <= bound)[finite]) and finite.sum() >= 6
    flag = emulated.asarray(np.zeros(1, np.int32))
    master = emulated.asarray(np.zeros((40, 9), np.float32))
    emulated.ops.unscale(grad, master, 512.0, flag)
    want, bad = cuda_source.unscale_twin(host[2], 512.0)
    assert bg.to_numpy(master).tobytes() == want.tobytes()
    assert bad and bg.to_numpy(flag).tolist() == [1]


def _half_edges(dtype: np.dtype, shape: tuple[int, int], flip: bool = False) -> np.ndarray:
    """Normal draws in ``dtype`` with the 16-bit edge values first (reversed with ``flip``):
    NaN, +-inf, -0.0, 0, the smallest subnormal (+-), the largest finite value (+-), 1 + eps."""
    info = np.finfo(dtype)
    a = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    edges = [np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.smallest_subnormal),
             -float(info.smallest_subnormal), float(info.max), -float(info.max),
             1.0 + float(info.eps)]  # fmt: skip
    flat = a.reshape(-1)
    n = min(len(edges), flat.size)
    flat[:n] = (edges[::-1] if flip else edges)[:n]
    return a


def _same_values(got: np.ndarray, want: np.ndarray) -> None:
    """Equal values, NaN where NaN (the GPU's NaN is canonical, a NumPy twin's is not), and
    the sign of every zero."""
    a, b = got.astype(np.float32), want.astype(np.float32)
    np.testing.assert_array_equal(a, b)
    assert np.array_equal(np.signbit(a) & ~np.isnan(a), np.signbit(b) & ~np.isnan(b))


@gpu_only
@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning", "ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (300, 1), (513, 70)])
def test_16_bit_cuda_kernels_equal_the_reference(name: str, shape: tuple[int, int]) -> None:
    """On a GPU, each 16-bit kernel against the reference ops on CuPy (CuPy's own float16 and
    bfloat16 kernels, each operation in float and rounded once), with NaN, +-inf, -0.0 (and
    -0.0 + -0.0), subnormals and sums that overflow: bias + ReLU, ReLU backward and the
    fused dinputs, the batch gather and unscale (values and flag) bit for bit; the column
    sums within ``half_sum_tolerance`` of CuPy's float32-accumulated sum. The kernels also
    equal their NumPy twins, NaN payloads aside (the GPU's NaN is canonical): elementwise,
    and the column sums in the kernel's order."""
    dtype = _dtype(name)
    with bg.use_backend("cupy") as backend:
        fast, ref = backend.ops, backend.with_reference_ops().ops
        assert type(fast) is not Ops
        rows, cols = shape
        z_host, d_host = _half_edges(dtype, shape), _half_edges(dtype, shape, flip=True)
        b_host = _half_edges(dtype, (1, cols), flip=True)
        z_host[0, 0], b_host[0, 0] = -0.0, -0.0  # -0.0 + -0.0: max(-0.0, 0) in float
        if cols > 1:
            z_host[0, -1] = b_host[0, -1] = np.finfo(dtype).max  # the sum overflows to inf
        z, d, biases = (backend.asarray(a) for a in (z_host, d_host, b_host))
        assert z.dtype == dtype  # (CuPy 14 holds bfloat16 as ml_dtypes' dtype)

        got = fast.bias_relu(z.copy(), biases)
        assert bg.to_numpy(got).tobytes() == bg.to_numpy(ref.bias_relu(z.copy(), biases)).tobytes()
        _same_values(bg.to_numpy(got), cuda_source.bias_relu_twin(z_host, b_host))

        out = ref.relu(z)  # a ReLU's output: the mask
        out_host = bg.to_numpy(out)
        got = fast.relu_backward(d, out)
        assert bg.to_numpy(got).tobytes() == bg.to_numpy(ref.relu_backward(d, out)).tobytes()
        _same_values(bg.to_numpy(got), cuda_source.relu_backward_twin(d_host, out_host))

        dinputs, dbiases = fast.relu_backward_bias_gradient(d, out)
        ref_dinputs, ref_dbiases = ref.relu_backward_bias_gradient(d, out)
        assert bg.to_numpy(dinputs).tobytes() == bg.to_numpy(ref_dinputs).tobytes()
        sums, ref_sums = bg.to_numpy(dbiases), bg.to_numpy(ref_dbiases)
        assert sums.dtype == dtype and sums.shape == (1, cols)
        _same_values(sums, cuda_source.relu_backward_bias_gradient_twin(d_host, out_host)[1])
        wide = bg.to_numpy(ref_dinputs).astype(np.float32)
        finite_in = np.where(np.isfinite(wide), wide, 0).astype(dtype)
        bound = cuda_source.half_sum_tolerance(finite_in, ref_sums, np.float32)
        ok = np.isfinite(ref_sums.astype(np.float32))
        diff = np.abs(sums.astype(np.float64) - ref_sums.astype(np.float64))
        assert np.all((diff <= bound)[ok])
        np.testing.assert_array_equal(np.isnan(sums.astype(np.float32)),
                                      np.isnan(ref_sums.astype(np.float32)))  # fmt: skip

        y = backend.asarray(np.arange(rows, dtype=np.int64))
        order = backend.asarray(np.random.default_rng(4).permutation(rows))
        x_got, y_got = fast.take_batch(z, y, order)
        x_ref, y_ref = ref.take_batch(z, y, order)
        assert bg.to_numpy(x_got).tobytes() == bg.to_numpy(x_ref).tobytes()
        assert bg.to_numpy(y_got).tolist() == bg.to_numpy(y_ref).tolist()

        for scale in (1.0, 1024.0, 3.0):
            runs = []
            for ops in (fast, ref):
                flag = backend.asarray(np.zeros(1, np.int32))
                master = backend.asarray(np.full(shape, 7.0, np.float32))
                ops.unscale(d, master, scale, flag)
                runs.append((bg.to_numpy(master), bg.to_numpy(flag).tolist()))
            assert runs[0][0].tobytes() == runs[1][0].tobytes() and runs[0][1] == runs[1][1]
            want, bad = cuda_source.unscale_twin(d_host, scale)
            _same_values(runs[0][0], want)
            assert runs[0][1] == [int(bad)] and bad == (d_host.size > 1)  # (inf and NaN)
        finite = backend.asarray(np.ones(shape, dtype))
        flag = backend.asarray(np.array([1], np.int32))
        fast.unscale(finite, master, 2.0, flag)
        assert bg.to_numpy(flag).tolist() == [1]  # never reset by the kernel
        flag = backend.asarray(np.zeros(1, np.int32))
        fast.unscale(finite, master, 2.0, flag)
        assert bg.to_numpy(flag).tolist() == [0] and np.all(bg.to_numpy(master) == 0.5)


@gpu_only
@pytest.mark.parametrize("rows", [1, 300, 4099])
def test_bfloat16_rounding_of_pre_sm80_gpus_equals_cvt_rn(rows: int) -> None:
    """The bfloat16 store that GPUs before sm_80 run (the bits rounded to nearest even in
    integer arithmetic: ``-DBF16_ROUND_BITS`` compiles it here) against the module CupyOps
    uses (``cvt.rn.bf16.f32`` on this GPU), on sums that round in every way: bias + ReLU of
    values over many magnitudes (ties included: 1 + 2**-8) and float32 column sums of 4099
    rows. Equal bits, NaN where NaN; and the sums equal ``relu_backward_bias_gradient_twin``."""
    import cupy

    dtype = _dtype("bfloat16")
    rng = np.random.default_rng(5)
    cols = 70
    # sums of values of like magnitudes (many low bits to round) and of very unlike ones
    scale = np.concatenate(
        [
            2.0 ** rng.integers(-12, 12, (rows, cols // 2)),
            10.0 ** rng.integers(-30, 30, (rows, cols - cols // 2)),
        ],
        axis=1,
    )
    z_host = (rng.standard_normal((rows, cols)) * scale).astype(dtype)
    z_host.reshape(-1)[:4] = [1.0, 1.0, np.nan, np.inf][: z_host.size]
    b_host = rng.standard_normal((1, cols)).astype(dtype)
    b_host[0, :4] = [2.0**-8, 3 * 2.0**-8, 1.0, -np.inf]  # ties; NaN; inf - inf
    source, _ = cuda_source.module()
    bits = cupy.RawModule(code=source, options=(*cuda_source.NVRTC_OPTIONS, "-DBF16_ROUND_BITS"))
    with bg.use_backend("cupy") as backend:
        fast = backend.ops
        z, biases = backend.asarray(z_host), backend.asarray(b_host)
        want = fast.bias_relu(z.copy(), biases)
        got = z.copy()
        n = got.size
        blocks = max(1, min((n + 255) // 256, 4096))
        bits.get_function("bias_relu_bf16")((blocks,), (256,), (got, biases, np.int64(cols),
                                                                 np.int64(n)))  # fmt: skip
        _same_values(bg.to_numpy(got), bg.to_numpy(want))
        d_host = rng.standard_normal((rows, cols)).astype(dtype)
        d, out = backend.asarray(d_host), backend.asarray(np.ones((rows, cols), dtype))
        want_d, want_sums = fast.relu_backward_bias_gradient(d, out)
        got_d, got_sums = cupy.empty_like(d), cupy.empty((1, cols), dtype)
        grid = max(1, min(-(-cols // cuda_source.COL_TILE), 4096))
        bits.get_function("relu_backward_bias_gradient_bf16")(
            (grid,),
            (cuda_source.COL_TILE, cuda_source.ROW_THREADS),
            (d, out, got_d, got_sums, np.int64(rows), np.int64(cols)),
        )
        assert bg.to_numpy(got_d).tobytes() == bg.to_numpy(want_d).tobytes()
        assert bg.to_numpy(got_sums).tobytes() == bg.to_numpy(want_sums).tobytes()
        twin = cuda_source.relu_backward_bias_gradient_twin(d_host, np.ones((rows, cols), dtype))
        assert bg.to_numpy(got_sums).tobytes() == twin[1].tobytes()  # (finite: no NaN payload)
