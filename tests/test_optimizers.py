"""SGD: the book's decay and momentum rules against hand-computed updates, and bad settings."""

from __future__ import annotations

import math

import numpy as np
import pytest

import backprop_gpu as bg

W0 = np.array([[0.5, -1.0], [2.0, 0.25]])
B0 = np.array([[0.1, -0.2]])
GRADS = [  # three steps of fixed gradients (dweights, dbiases)
    (np.array([[1.0, 2.0], [-1.0, 0.5]]), np.array([[0.5, -0.5]])),
    (np.array([[0.2, -0.4], [3.0, 1.0]]), np.array([[-1.0, 2.0]])),
    (np.array([[-2.0, 0.0], [0.5, -0.5]]), np.array([[0.0, 1.0]])),
]


def _run(optimizer: bg.SGD) -> tuple[bg.Dense, list[float]]:
    layer = bg.Dense(2, 2, weights=W0, biases=B0)
    rates = []
    for dw, db in GRADS:
        layer.dweights, layer.dbiases = bg.asarray(dw), bg.asarray(db)
        optimizer.pre_update_params()
        rates.append(optimizer.current_learning_rate)
        optimizer.update_params(layer)
        optimizer.post_update_params()
    return layer, rates


def test_plain_sgd_with_decay(backend: bg.Backend) -> None:
    layer, rates = _run(bg.SGD(learning_rate=0.5, decay=0.1))
    # lr_t = 0.5 / (1 + 0.1 t): 0.5, 0.5/1.1, 0.5/1.2
    assert rates == [0.5, 0.5 / 1.1, 0.5 / 1.2]
    w = W0 - 0.5 * GRADS[0][0] - 0.5 / 1.1 * GRADS[1][0] - 0.5 / 1.2 * GRADS[2][0]
    b = B0 - 0.5 * GRADS[0][1] - 0.5 / 1.1 * GRADS[1][1] - 0.5 / 1.2 * GRADS[2][1]
    np.testing.assert_allclose(bg.to_numpy(layer.weights), w, rtol=1e-14)
    np.testing.assert_allclose(bg.to_numpy(layer.biases), b, rtol=1e-14)


def test_sgd_with_momentum_and_decay(backend: bg.Backend) -> None:
    opt = bg.SGD(learning_rate=1.0, decay=1e-2, momentum=0.9)
    layer, rates = _run(opt)
    assert opt.iterations == 3
    assert rates == pytest.approx([1.0, 1 / 1.01, 1 / 1.02], rel=1e-15)
    # v1 = -lr0 g1; v2 = 0.9 v1 - lr1 g2; v3 = 0.9 v2 - lr2 g3; w = w0 + v1 + v2 + v3
    for i, (p0, state) in enumerate([(W0, "weight_momentums"), (B0, "bias_momentums")]):
        v1 = -1.0 * GRADS[0][i]
        v2 = 0.9 * v1 - GRADS[1][i] / 1.01
        v3 = 0.9 * v2 - GRADS[2][i] / 1.02
        param = layer.weights if i == 0 else layer.biases
        np.testing.assert_allclose(bg.to_numpy(param), p0 + v1 + v2 + v3, rtol=1e-13)
        velocity = getattr(layer, state)
        assert backend.owns(velocity)  # optimizer state stays on the device
        np.testing.assert_allclose(bg.to_numpy(velocity), v3, rtol=1e-13)


def test_momentum_matches_pytorch() -> None:
    """With decay 0 the book's momentum rule is PyTorch's SGD (independent implementation)."""
    try:
        import torch
    except (ImportError, OSError) as e:  # OSError: a half-installed torch
        pytest.skip(f"PyTorch is not importable here: {e}")
    w = torch.tensor(W0, requires_grad=True)
    opt_t = torch.optim.SGD([w], lr=0.3, momentum=0.9)
    layer, _ = _run(bg.SGD(learning_rate=0.3, momentum=0.9))
    for dw, _db in GRADS:
        w.grad = torch.tensor(dw)
        opt_t.step()
    np.testing.assert_allclose(bg.to_numpy(layer.weights), w.detach().numpy(), rtol=1e-13)


def test_step_updates_only_trainable_layers(backend: bg.Backend) -> None:
    dense, relu = bg.Dense(2, 2, weights=W0, biases=B0), bg.ReLU()
    relu.forward(dense.forward(np.ones((3, 2))))
    dense.backward(relu.backward(np.ones((3, 2))))
    expected = W0 - 0.1 * bg.to_numpy(dense.dweights)
    opt = bg.SGD(learning_rate=0.1)
    opt.step([dense, relu])
    assert opt.iterations == 1
    np.testing.assert_allclose(bg.to_numpy(dense.weights), expected, rtol=1e-15)


def test_update_before_backward_is_an_error(backend: bg.Backend) -> None:
    with pytest.raises(RuntimeError, match=r"Dense\(2, 2.*dweights is missing; call backward"):
        bg.SGD().update_params(bg.Dense(2, 2))


@pytest.mark.parametrize(
    ("grad", "match"),
    [
        (
            np.ones((1, 2), dtype=np.float32),
            r"expected shape \(2, 2\), float32.*got shape \(1, 2\)",
        ),
        (np.ones((2, 2), dtype=np.float64), r"float32 on .*got shape \(2, 2\), float64"),
    ],
)
def test_bad_gradients_change_nothing(backend: bg.Backend, grad: np.ndarray, match: str) -> None:
    """A wrong gradient is refused before any parameter, state or counter changes."""
    dense1, dense2 = bg.Dense(2, 2, seed=0), bg.Dense(2, 2, seed=1)
    for layer in (dense1, dense2):
        layer.dweights = bg.asarray(np.ones((2, 2), dtype=np.float32))
        layer.dbiases = bg.asarray(np.ones((1, 2), dtype=np.float32))
    dense2.dweights = bg.asarray(grad)
    before = [bg.to_numpy(p) for p in (dense1.weights, dense1.biases, dense2.weights)]
    opt = bg.SGD(learning_rate=0.1, momentum=0.9)
    with pytest.raises(ValueError, match=match):
        opt.step([dense1, dense2])
    after = [bg.to_numpy(p) for p in (dense1.weights, dense1.biases, dense2.weights)]
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert opt.iterations == 0 and getattr(dense1, "weight_momentums", None) is None


def test_gradient_from_another_device_is_named() -> None:
    with bg.use_backend("array_api_strict"):
        layer = bg.Dense(2, 2, seed=0)
    layer.dweights = np.ones((2, 2), dtype=np.float32)  # a host array, not on device1
    layer.dbiases = layer.biases
    with pytest.raises(ValueError, match=r"dweights must match weights.*from numpy"):
        bg.SGD().update_params(layer)


def test_float32_parameters_stay_float32(backend: bg.Backend) -> None:
    layer = bg.Dense(2, 2, seed=0)
    layer.dweights = bg.asarray(np.ones((2, 2), dtype=np.float32))
    layer.dbiases = bg.asarray(np.ones((1, 2), dtype=np.float32))
    bg.SGD(learning_rate=0.1, momentum=0.5).step([layer])
    assert layer.weights.dtype == backend.xp.float32
    assert layer.weight_momentums.dtype == backend.xp.float32


def test_numpy_scalars_are_accepted() -> None:
    opt = bg.SGD(learning_rate=np.float32(0.5), momentum=np.float64(0.9), decay=np.int64(0))
    assert (opt.learning_rate, opt.momentum, opt.decay) == (0.5, 0.9, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"learning_rate": 0}, "SGD: learning_rate must be a positive finite number, got 0"),
        ({"learning_rate": -0.1}, "learning_rate must be a positive finite number, got -0.1"),
        ({"learning_rate": math.nan}, "learning_rate must be a positive finite number, got nan"),
        ({"learning_rate": math.inf}, "learning_rate must be a positive finite number, got inf"),
        ({"learning_rate": "0.1"}, "learning_rate must be a positive finite number, got '0.1'"),
        ({"momentum": 1.0}, r"SGD: momentum must be in \[0.0, 1.0\), got 1.0"),
        ({"momentum": -0.1}, r"momentum must be in \[0.0, 1.0\), got -0.1"),
        ({"decay": -1e-3}, "SGD: decay must be a finite number >= 0, got -0.001"),
        ({"decay": math.nan}, "decay must be a finite number >= 0, got nan"),
        ({"learning_rate": True}, "learning_rate must be a positive finite number, got True"),
    ],
)
def test_bad_settings_are_named(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bg.SGD(**kwargs)  # type: ignore[arg-type]
