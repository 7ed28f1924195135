"""Numerics that hold at the extremes, property tests of the update rules and checkpoints,
checkpoints that survive a killed process, and runs that repeat bit for bit."""

from __future__ import annotations

import hashlib
import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import backprop_gpu as bg
from backprop_gpu import checkpoint

from .conftest import BACKENDS

PROPERTY = settings(max_examples=20, deadline=None)
SEEDS = st.integers(0, 2**32 - 1)


# --- numerics ---------------------------------------------------------------------------


def skip_unless_supported(backend: bg.Backend, dtype: str) -> None:
    if not hasattr(backend.xp, dtype):  # the array API standard has no float16
        pytest.skip(f"{backend.name} has no {dtype}")


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_softmax_cross_entropy_at_plus_minus_1e4(backend: bg.Backend, dtype: str) -> None:
    skip_unless_supported(backend, dtype)
    logits = np.array([[1e4, -1e4, 0], [-1e4, -1e4, 1e4], [0, 0, 0], [-1e4, 1e4, -1e4]], dtype)
    y = np.array([1, 2, 0, 0])  # a hopeless, a sure, a uniform and a hopeless sample
    loss = bg.SoftmaxCrossEntropy()
    value = float(loss.forward(logits, y))
    grad = bg.to_numpy(loss.backward(loss.output, y))
    probs = bg.to_numpy(loss.output)
    assert probs.dtype == dtype and grad.dtype == dtype
    assert np.isfinite(value) and value >= 0 and np.all(np.isfinite(grad))
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-3 if dtype == "float16" else 1e-6)
    # the gradient of the mean loss is (p - onehot) / N: bounded by 1 / N
    assert np.abs(grad).max() <= 1 / 4 + 1e-3


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_binary_cross_entropy_and_sigmoid_at_the_extremes(backend: bg.Backend, dtype: str) -> None:
    skip_unless_supported(backend, dtype)
    z = np.array([[-1e4], [-50.0], [0.0], [50.0], [1e4]], dtype)
    sigmoid, bce = bg.Sigmoid(), bg.BinaryCrossEntropy()
    p = sigmoid.forward(z)
    assert np.all(np.isfinite(bg.to_numpy(p))) and bg.to_numpy(p)[2, 0] == 0.5
    value = float(bce.forward(p, np.array([[1.0], [0], [1], [0], [1]], dtype)))
    assert np.isfinite(value) and value >= 0
    assert np.all(
        np.isfinite(bg.to_numpy(sigmoid.backward(bce.backward(p, np.ones((5, 1), dtype)))))
    )


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(
    n=st.integers(1, 8),
    c=st.integers(2, 10),
    scale=st.sampled_from([1.0, 30.0, 1e3, 1e4]),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=SEEDS,
)
def test_softmax_rows_sum_to_one_and_loss_is_nonnegative(
    name: str, n: int, c: int, scale: float, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    with bg.use_backend(name):
        loss = bg.SoftmaxCrossEntropy()
        value = float(loss.forward(logits, rng.integers(0, c, n)))
        probs = bg.to_numpy(loss.output)
    assert np.isfinite(value) and value >= 0
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-6)
    assert probs.min() >= 0


# --- one optimizer step equals its formula ------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    lr=st.floats(1e-4, 1.0),
    momentum=st.sampled_from([0.0, 0.5, 0.9]),
    nesterov=st.booleans(),
    seed=SEEDS,
)
def test_one_sgd_step_is_the_formula(
    name: str, shape: tuple[int, int], lr: float, momentum: float, nesterov: bool, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    w, g = rng.standard_normal(shape), rng.standard_normal(shape)
    v0 = rng.standard_normal(shape)
    with bg.use_backend(name):
        layer = bg.Dense(*shape, weights=w)
        layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(np.zeros((1, shape[1])))
        if momentum:
            layer.weight_momentums = bg.asarray(v0.copy())
        bg.SGD(lr, momentum=momentum, nesterov=nesterov and momentum > 0).update_params(layer)
        got = bg.to_numpy(layer.weights)
    v = momentum * v0 - lr * g
    expected = w - lr * g if not momentum else w + (momentum * v - lr * g if nesterov else v)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", BACKENDS)
@PROPERTY
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 4)),
    lr=st.floats(1e-4, 0.1),
    iterations=st.integers(0, 50),
    seed=SEEDS,
)
def test_one_adam_step_is_the_formula(
    name: str, shape: tuple[int, int], lr: float, iterations: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    w, g = rng.standard_normal(shape), rng.standard_normal(shape)
    m0, c0 = rng.standard_normal(shape), rng.uniform(0, 2, shape)
    with bg.use_backend(name):
        layer = bg.Dense(*shape, weights=w)
        layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(np.zeros((1, shape[1])))
        layer.weight_momentums, layer.weight_cache = bg.asarray(m0.copy()), bg.asarray(c0.copy())
        opt = bg.Adam(learning_rate=lr)
        opt.iterations = iterations
        opt.update_params(layer)
        got = bg.to_numpy(layer.weights)
    t = iterations + 1
    m = 0.9 * m0 + 0.1 * g
    c = 0.999 * c0 + 0.001 * g**2
    expected = w - lr * (m / (1 - 0.9**t)) / (np.sqrt(c / (1 - 0.999**t)) + 1e-7)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


# --- checkpoints -----------------------------------------------------------------------


@pytest.mark.parametrize("name", BACKENDS)
@settings(max_examples=10, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=2, max_size=4),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=SEEDS,
)
def test_save_load_round_trip_is_bit_exact(
    name: str, sizes: list[int], dtype: str, seed: int, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = tmp_path_factory.mktemp("ckpt") / "m.npz"
    with bg.use_backend(name):
        layers: list[object] = []
        for i, (a, b) in enumerate(itertools.pairwise(sizes)):
            layers += [bg.Dense(a, b, dtype=dtype, seed=seed + i, init="glorot"), bg.ReLU()]
        model = bg.Model(layers[:-1]).set(loss=bg.MeanSquaredError(), optimizer=bg.Adam())
        model.finalize().save(path)
        loaded = bg.Model.load(path)
    for a, b in zip(model.trainable_layers, loaded.trainable_layers, strict=True):
        for p in ("weights", "biases"):
            x, y = bg.to_numpy(getattr(a, p)), bg.to_numpy(getattr(b, p))
            assert x.dtype == y.dtype == dtype and x.tobytes() == y.tobytes()


SAVE_FOREVER = textwrap.dedent(
    """
    import sys, numpy as np, backprop_gpu as bg
    path, = sys.argv[1:]
    model = bg.Model([bg.Dense(1500, 1500, seed=0)]).set(loss=bg.MeanSquaredError()).finalize()
    version = 0
    while True:
        model.layers[0].biases[...] = version
        model.save_parameters(path)
        print(version, flush=True)
        version += 1
    """
)


def test_a_process_killed_mid_save_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    """SIGKILL lands while the 9 MB checkpoint is being rewritten: the file is always a
    complete version, never a torn one."""
    path = tmp_path / "p.npz"
    for delay in (0.05, 0.13, 0.31):
        proc = subprocess.Popen(
            [sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "0"  # one complete save first
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        arrays, meta = checkpoint.load(path)  # complete and checksum-valid
        biases = arrays["layers.0.biases"]
        assert meta["kind"] == "parameters" and np.all(biases == biases[0, 0]) and biases[0, 0] >= 0
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "p.npz"]
    assert all(name.startswith(".p.npz.") and name.endswith(".tmp") for name in leftovers)


# --- determinism ---------------------------------------------------------------------------

TRAIN_AND_HASH = textwrap.dedent(
    """
    import hashlib, backprop_gpu as bg
    from backprop_gpu.datasets import spiral_data
    X, y = spiral_data(100, 3, seed=0)
    model = bg.Model([bg.Dense(2, 32, seed=0, init="he"), bg.ReLU(), bg.Dropout(0.1, seed=3),
                      bg.Dense(32, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(learning_rate=0.01)).finalize()
    history = model.train(X, y, epochs=5, batch_size=32, print_every=0, seed=11)
    digest = hashlib.sha256()
    for layer in model.trainable_layers:
        digest.update(bg.to_numpy(layer.weights).tobytes() + bg.to_numpy(layer.biases).tobytes())
    print(digest.hexdigest(), repr(history[-1]["loss"]))
    """
)


def test_same_seed_gives_bit_identical_training_in_two_processes() -> None:
    """The guarantee is for one machine, BLAS and thread count: a BLAS may add a product's
    terms in another order with another number of threads, so both processes pin it."""
    threads = {name: "1" for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env = os.environ | {"BACKPROP_GPU_BACKEND": "numpy"} | threads
    runs = [
        subprocess.run(
            [sys.executable, "-c", TRAIN_AND_HASH], capture_output=True, text=True, env=env,
            timeout=120, check=True,
        ).stdout
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1] and len(runs[0].split()) == 2


def test_weights_hash_differs_with_the_seed() -> None:
    digests = {
        hashlib.sha256(bg.to_numpy(bg.Dense(8, 8, seed=s).weights).tobytes()).hexdigest()
        for s in (0, 0, 1)
    }
    assert len(digests) == 2
