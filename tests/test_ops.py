"""Every backend's ops against the reference ``Ops`` on the same backend, op by op, and the
fused entry points (a Dense with its ReLU, softmax cross-entropy's forward with its backward)
against the separate calls they replace.

Bit for bit, except where a GPU kernel sums in another order than CuPy's reduction (the
column sums and the softmax's row sums): there the difference is bounded by the float
rounding of a sum, ``n * eps * sum(|x|)`` (Higham's bound for recursive summation).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg

RNG = np.random.default_rng(11)

# ops whose fast version may add in a different order from the reference on a GPU
SUMS = {"bias_gradient", "relu_backward_bias_gradient", "softmax_cross_entropy",
        "softmax_cross_entropy_forward_backward", "softmax", "cross_entropy"}  # fmt: skip


def _cases(dtype: str) -> dict[str, Callable[[], tuple[Any, ...]]]:
    """Fresh host inputs for each op (a fresh copy per call: some ops write in place)."""

    def floats(*shape: int, scale: float = 1.0) -> np.ndarray:
        a = (RNG.standard_normal(shape) * scale).astype(dtype)
        a.reshape(-1)[:2] = 0.0  # the ReLU's kink
        return a

    def special(*shape: int) -> np.ndarray:
        """Normal floats with NaN, +-inf and -0.0 among them."""
        a = floats(*shape)
        a.reshape(-1)[2:6] = [np.nan, np.inf, -np.inf, -0.0]
        return a

    def relu(a: np.ndarray) -> np.ndarray:
        return np.maximum(a, 0)

    n, c = 37, 11
    logits, y = floats(n, c, scale=5.0), RNG.integers(0, c, n)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    w, g, m, v = floats(5, 7), floats(5, 7), floats(5, 7), np.abs(floats(5, 7))
    return {
        "matmul": lambda: (floats(n, 6), floats(6, c)),
        "take_batch": lambda: (floats(n, 6), y.copy(), RNG.permutation(n)[:20]),
        "take_rows": lambda: (floats(n, c), RNG.permutation(n)[:20]),
        "take_rows_out": lambda: (floats(n, c), RNG.permutation(n)[:20], np.empty((20, c), dtype)),
        "add_bias": lambda: (floats(n, c), floats(1, c)),
        "bias_gradient": lambda: (floats(n, c),),
        "bias_relu": lambda: (floats(n, c), floats(1, c)),
        "relu": lambda: (floats(n, c),),
        "relu_backward": lambda: (floats(n, c), floats(n, c)),
        "relu_backward_bias_gradient": lambda: (floats(n, c), np.maximum(floats(n, c), 0)),
        # long columns (the summation order shows) and one column (which NumPy sums pairwise)
        "relu_backward_bias_gradient_tall": lambda: (floats(3000, 5), relu(floats(3000, 5))),
        "relu_backward_bias_gradient_one_column": lambda: (floats(3000, 1), relu(floats(3000, 1))),
        "relu_backward_bias_gradient_special": lambda: (special(n, c), relu(special(n, c))),
        "relu_backward_bias_gradient_out": lambda: (
            floats(n, c),
            relu(floats(n, c)),
            np.empty((n, c), dtype),
            np.empty((1, c), dtype),
        ),
        "bias_gradient_out": lambda: (floats(3000, c), np.empty((1, c), dtype)),
        "bias_relu_special": lambda: (special(n, c), floats(1, c)),
        "bias_relu_flat_biases": lambda: (floats(n, c), floats(c)),
        "softmax": lambda: (logits.copy(),),
        "softmax_cross_entropy": lambda: (logits.copy(), y.copy(), 1e-7),
        "softmax_cross_entropy_forward_backward": lambda: (logits.copy(), y.copy(), 1e-7),
        "softmax_cross_entropy_backward": lambda: (p.astype(dtype), y.copy()),
        "cross_entropy": lambda: (p.astype(dtype), y.copy(), 1e-7),
        "onehot": lambda: (y.copy(), p.astype(dtype)),
        "checked_labels": lambda: (np.concatenate([y, [-1, c, c + 5, 0]]), c),
        "sgd": lambda: (w.copy(), g.copy(), 0.3),
        "sgd_momentum": lambda: (w.copy(), m.copy(), g.copy(), 0.3, 0.9, False),
        "sgd_nesterov": lambda: (w.copy(), m.copy(), g.copy(), 0.3, 0.9, True),
        "adagrad": lambda: (w.copy(), v.copy(), g.copy(), 0.3, 1e-7),
        "rmsprop": lambda: (w.copy(), v.copy(), g.copy(), 0.3, 0.9, 1e-7),
        "adam": lambda: (w.copy(), m.copy(), v.copy(), g.copy()),
        # the gradients of two parameters, by their global norm: clipped (norm about 6) or not
        "clip_grad_norm": lambda: (g.copy(), floats(3, 4), 1.0),
        "clip_grad_norm_below": lambda: (g.copy(), floats(3, 4), 100.0),
        "clip_grad_norm_special": lambda: (special(5, 7), floats(3, 4), 1.0),
        "clip_grad_value": lambda: (floats(5, 7), 0.5),
        "clip_grad_value_special": lambda: (special(5, 7), 0.5),
        "weight_decay_gradient": lambda: (w.copy(), g.copy(), 0.01),
        "decoupled_weight_decay": lambda: (w.copy(), 0.3, 0.01),
    }


def _call(ops: bg.backend.Ops, name: str, args: tuple[Any, ...]) -> list[Any]:
    """Run op ``name``; what it returns and every array it may have written, on the host."""
    backend = ops.backend
    dev = [backend.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    if name == "sgd_nesterov":
        name = "sgd_momentum"
    if name == "relu_backward_bias_gradient_out":  # out= as the pair it is
        name, dev = "relu_backward_bias_gradient", [dev[0], dev[1], (dev[2], dev[3])]
    for variant in ("_tall", "_one_column", "_special", "_out", "_flat_biases", "_below"):
        name = name.removesuffix(variant)
    if name == "clip_grad_norm":  # (a list of gradients, then the limit)
        result = ops.clip_grad_norm(dev[:-1], dev[-1])
    elif name == "adam":
        result = ops.adam(*dev, lr=0.01, beta_1=0.8, beta_2=0.95, epsilon=1e-4, t=3)
    else:
        result = getattr(ops, name)(*dev)
    results = result if isinstance(result, tuple) else (result,)
    # bias_relu's z is scratch ("may be overwritten"): its contents afterwards are not compared
    written = dev[1:] if name == "bias_relu" else dev
    arrays = [a for a in written if not isinstance(a, tuple) and backend.owns(a)]
    return [bg.to_numpy(r) if r is not None else None for r in (*results, *arrays)]


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(_cases("float32")))
def test_each_op_equals_the_reference_on_its_backend(
    backend: bg.Backend, dtype: str, name: str
) -> None:
    """The backend's ops (C on NumPy, CUDA on CuPy, the reference on the stand-in) against
    the reference ops on the same arrays."""
    make = _cases(dtype)[name]
    args = make()
    fast = _call(backend.ops, name, tuple(a.copy() if hasattr(a, "copy") else a for a in args))
    ref = _call(backend.with_reference_ops().ops, name, args)
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        if a is None or b is None:  # (``correct``: only a fused kernel counts it)
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (name, i)
        if backend.name == "cupy" and name in SUMS:
            bound = a.size * np.finfo(dtype).eps * np.abs(b).sum()
            np.testing.assert_allclose(a, b, rtol=0, atol=bound, err_msg=f"{name}[{i}]")
        else:
            np.testing.assert_array_equal(a, b, strict=True, err_msg=f"{name}[{i}]")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dense_relu_fused_equals_the_two_layers(backend: bg.Backend, dtype: str) -> None:
    """``forward_relu``/``backward_relu`` (what Model.train runs) give the values of
    Dense.forward, ReLU.forward, ReLU.backward and Dense.backward called one by one."""
    x = RNG.standard_normal((20, 6)).astype(dtype)
    d = RNG.standard_normal((20, 9)).astype(dtype)
    biases = RNG.standard_normal((1, 9))
    results = []
    for fused in (False, True):
        dense, relu = bg.Dense(6, 9, seed=3, dtype=dtype, biases=biases), bg.ReLU()
        if fused:
            out = dense.forward_relu(x, relu)
            dx = dense.backward_relu(d, relu)
            assert dense.output is None and relu.output is out  # (the pre-activation is not kept)
        else:
            out = relu.forward(dense.forward(x))
            dx = dense.backward(relu.backward(d))
        results.append([bg.to_numpy(a) for a in (out, relu.dinputs, dx, dense.dweights,
                                                 dense.dbiases)])  # fmt: skip
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b, strict=True)
    assert (results[0][0] == 0).any() and (results[0][0] > 0).any()  # both sides of the kink


def test_relu_backward_needs_its_forward(backend: bg.Backend) -> None:
    with pytest.raises(RuntimeError, match=r"Dense\(2, 3\).backward_relu called before"):
        bg.Dense(2, 3).backward_relu(np.ones((1, 3)), bg.ReLU())


@pytest.mark.parametrize("labels", ["indices", "onehot"])
def test_softmax_cross_entropy_forward_backward_equals_the_two_calls(
    backend: bg.Backend, labels: str
) -> None:
    logits = (RNG.standard_normal((30, 5)) * 4).astype(np.float32)
    y = RNG.integers(0, 5, 30)
    y_true = y if labels == "indices" else np.eye(5)[y]
    one, two = bg.SoftmaxCrossEntropy(), bg.SoftmaxCrossEntropy()
    loss = one.forward_backward(logits, y_true)
    expected = two.forward(logits, y_true)
    two.backward(two.output, y_true)
    assert bg.to_numpy(loss).tobytes() == bg.to_numpy(expected).tobytes()
    np.testing.assert_array_equal(bg.to_numpy(one.output), bg.to_numpy(two.output), strict=True)
    np.testing.assert_array_equal(bg.to_numpy(one.dinputs), bg.to_numpy(two.dinputs), strict=True)
    # and the gradient is the book's (p - onehot) / N
    p = bg.to_numpy(one.output)
    np.testing.assert_allclose(bg.to_numpy(one.dinputs), (p - np.eye(5)[y]) / 30, rtol=1e-6)


def test_model_training_fuses_dense_and_relu_pairs() -> None:
    """The stages of the training pass: each Dense followed by a ReLU is one stage, any
    other layer (and a ReLU subclass) its own."""
    from backprop_gpu.model import _stages

    class MyReLU(bg.ReLU):
        pass

    d1, r1, d2, r2, drop, d3, r3 = (bg.Dense(2, 2), bg.ReLU(), bg.Dense(2, 2), MyReLU(),
                                    bg.Dropout(0.1), bg.Dense(2, 2), bg.ReLU())  # fmt: skip
    stages = _stages([d1, r1, d2, r2, drop, d3, r3])
    assert stages == [(d1, r1), (d2,), (r2,), (drop,), (d3, r3)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_clip_grad_norm_known_answer(backend: bg.Backend, dtype: str) -> None:
    """[3, 4] and [[12]] have the global norm 13: a limit of 6.5 halves them (the factor is
    6.5 / (13 + 1e-6), as torch's clip_grad_norm_), a limit of 14 leaves them as they are."""
    for limit, factor in ((6.5, 6.5 / (13 + 1e-6)), (14.0, 1.0)):
        a = backend.asarray(np.array([3.0, 4.0], dtype))
        b = backend.asarray(np.array([[12.0]], dtype))
        norm = backend.ops.clip_grad_norm([a, b], limit)
        assert backend.owns(norm) and float(bg.to_numpy(norm)) == 13.0
        rtol = 0 if factor == 1 else 1e-7
        np.testing.assert_allclose(bg.to_numpy(a), np.array([3, 4]) * factor, rtol=rtol)
        np.testing.assert_allclose(bg.to_numpy(b), [[12 * factor]], rtol=rtol)
        assert bg.to_numpy(a).dtype == dtype


# --- mixed precision: the 16-bit ops and the hand-off to float32 ------------------------------

HALF = ["float16", "bfloat16"]


def _dtype(name: str) -> np.dtype:
    """The NumPy dtype of ``name``; bfloat16 is ml_dtypes' (as CuPy 14's)."""
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _needs_16_bits(backend: bg.Backend, name: str) -> None:
    if backend.name == "array_api_strict" and name in HALF:
        pytest.skip(f"the array API has no {name} (the mixed policies run on numpy and cupy)")


@pytest.mark.parametrize("grad_dtype", [*HALF, "float32"])
def test_unscale_known_values(backend: bg.Backend, grad_dtype: str) -> None:
    """``Ops.unscale`` on hand-derived values: a power-of-two scale divides exactly (the
    16-bit subnormals and largest values included), 3.0 rounds each quotient once in float32
    (1 / 3 is 0x3EAAAAAB), 1.0 is the cast alone (-0.0 kept); ``nonfinite`` becomes 1 on
    inf, NaN, or a finite gradient whose quotient overflows float32, and is never reset to
    0 by a later finite gradient; an empty gradient changes nothing; a float64 ``out`` (the
    master of a float64 model) divides in float64."""
    _needs_16_bits(backend, grad_dtype)
    dtype = _dtype(grad_dtype)
    info = np.finfo(dtype)
    tiny, big = float(info.smallest_subnormal), float(info.max)
    values = np.array([1.0, -2.5, 0.0, -0.0, 3.0, tiny, big, -0.375])
    grad = backend.asarray(values.astype(dtype))
    flag = backend.asarray(np.zeros(1, np.int32))
    out = backend.asarray(np.full(values.shape, 7.0, np.float32))

    def run(g: object, scale: float, into: object = None) -> np.ndarray:
        target = out if into is None else into
        backend.ops.unscale(g, target, scale, flag)
        return bg.to_numpy(target)

    got = run(grad, 1024.0)
    want = np.array([2**-10, -2.5 * 2**-10, 0.0, -0.0, 3 * 2**-10, tiny * 2**-10, big * 2**-10,
                     -0.375 * 2**-10], np.float32)  # fmt: skip
    assert got.dtype == np.float32 and got.tobytes() == want.tobytes()
    got = run(grad, 3.0)
    assert got[0].view(np.uint32) == 0x3EAAAAAB  # float32(1 / 3), rounded to nearest
    assert (
        got.tobytes() == (values.astype(dtype).astype(np.float64) / 3).astype(np.float32).tobytes()
    )
    got = run(grad, 1.0)
    assert got.tobytes() == values.astype(dtype).astype(np.float32).tobytes()
    assert np.signbit(got[3]) and got[6] == big
    assert bg.to_numpy(flag).tolist() == [0]  # all finite so far
    wide = backend.asarray(np.zeros(values.shape, np.float64))
    got = run(grad, 3.0, wide)
    assert got.dtype == np.float64
    assert got.tolist() == (values.astype(dtype).astype(np.float64) / 3).tolist()

    cases = [
        (np.array([1.0, np.inf, 2.0]), 1024.0, 1),
        (np.array([0.5, 0.25, 4.0]), 1024.0, 1),  # finite: the flag stays 1 (never reset)
        (np.array([1.0, np.nan, 2.0]), 1.0, 1),
        (np.array([big, 1.0, -1.0]), 1e-35, 1),  # big / 1e-35 overflows float32
        (np.array([], np.float64), 8.0, 0),  # nothing to check
        (np.array([-big, 6.0, tiny]), 2.0, 0),
    ]
    for i, (host, scale, expected) in enumerate(cases):
        if i >= 2:
            flag = backend.asarray(np.zeros(1, np.int32))  # (the caller's once-a-step zeroing)
        g = backend.asarray(host.astype(dtype))
        dest = backend.asarray(np.empty(host.shape, np.float32))
        with np.errstate(over="ignore"):
            got = run(g, scale, dest)
            want = host.astype(dtype).astype(np.float32) / np.float32(scale)
        np.testing.assert_array_equal(got, want)
        assert bg.to_numpy(flag).tolist() == [expected], (i, host, scale)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("name", HALF)
@pytest.mark.parametrize(
    "op",
    [
        "bias_relu",
        "relu_backward",
        "relu_backward_bias_gradient",
        "bias_gradient",
        "take_batch",
        "add_bias",
        "relu",
        "unscale",
    ],
)
def test_16_bit_ops_equal_the_reference_on_their_backend(
    backend: bg.Backend, name: str, op: str
) -> None:
    """The ops a mixed step runs in float16/bfloat16 (CUDA kernels on CuPy; on NumPy the C
    extension declines 16-bit arrays, so the reference runs) against the reference ops on
    the same backend, with NaN, +-inf, -0.0, subnormals and values whose sum overflows:
    bit for bit, except CuPy's column sums, within ``cuda_source.half_sum_tolerance`` of
    CuPy's float32-accumulated sum."""
    from backprop_gpu.backend import cuda_source

    _needs_16_bits(backend, name)
    dtype = _dtype(name)
    info = np.finfo(dtype)

    def special(*shape: int) -> np.ndarray:
        a = RNG.standard_normal(shape).astype(dtype)
        a.reshape(-1)[:8] = [np.nan, np.inf, -np.inf, -0.0, 0.0, float(info.smallest_subnormal),
                             float(info.max), -float(info.max)]  # fmt: skip
        return a

    n, c = 37, 11
    z, d, biases = special(n, c), special(n, c)[::-1].copy(), special(1, c)[:, ::-1].copy()
    relu_out = np.maximum(special(n, c), np.array(0, dtype))
    args = {
        "bias_relu": (z, biases),
        "relu_backward": (d, z),
        "relu_backward_bias_gradient": (d, relu_out),
        "bias_gradient": (RNG.standard_normal((300, c)).astype(dtype),),
        "take_batch": (z, RNG.integers(0, 5, n), RNG.permutation(n)[:20]),
        "add_bias": (z, biases),
        "relu": (z,),
    }
    if op == "unscale":
        runs = []
        for ops in (backend.ops, backend.with_reference_ops().ops):
            flag = backend.asarray(np.zeros(1, np.int32))
            out = backend.asarray(np.empty((n, c), np.float32))
            ops.unscale(backend.asarray(z), out, 1024.0, flag)
            runs.append((bg.to_numpy(out).tobytes(), bg.to_numpy(flag).tolist()))
        assert runs[0] == runs[1] and runs[0][1] == [1]  # (z holds inf and NaN)
        return
    fast = _call(backend.ops, op, tuple(a.copy() for a in args[op]))
    ref = _call(backend.with_reference_ops().ops, op, args[op])
    assert len(fast) == len(ref)
    for i, (a, b) in enumerate(zip(fast, ref, strict=True)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (op, i)
        sums = op == "relu_backward_bias_gradient" and i == 1
        if backend.name == "cupy" and sums:
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            finite = np.isfinite(b.astype(np.float32))
            dinputs = np.nan_to_num(fast[0].astype(np.float32), nan=0, posinf=0, neginf=0)
            bound = cuda_source.half_sum_tolerance(dinputs.astype(dtype), b, np.float32)
            diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
            assert np.all((diff <= bound)[finite]), (op, i)
        else:
            assert a.tobytes() == b.tobytes(), (op, i)
