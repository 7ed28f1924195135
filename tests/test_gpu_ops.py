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
from backprop_gpu.backend import cuda_source
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
    # float16 has no kernel: CupyOps falls back to the reference (>, astype, *)
    d16, x16 = arrays(emulated, (5, 4), (5, 4), dtype=np.float16)
    assert counted(emulated, lambda: emulated.ops.relu_backward(d16, x16)) == {
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
