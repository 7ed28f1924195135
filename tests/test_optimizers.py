"""SGD: the book's decay and momentum rules against hand-computed updates, and bad settings."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import registry
from backprop_gpu.optimizers import Optimizer, state_name

W0 = np.array([[0.5, -1.0], [2.0, 0.25]])
B0 = np.array([[0.1, -0.2]])
GRADS = [  # three steps of fixed gradients (dweights, dbiases)
    (np.array([[1.0, 2.0], [-1.0, 0.5]]), np.array([[0.5, -0.5]])),
    (np.array([[0.2, -0.4], [3.0, 1.0]]), np.array([[-1.0, 2.0]])),
    (np.array([[-2.0, 0.0], [0.5, -0.5]]), np.array([[0.0, 1.0]])),
]


def _run(optimizer: Optimizer, dtype: str = "float64") -> tuple[bg.Dense, list[float]]:
    layer = bg.Dense(2, 2, weights=W0, biases=B0, dtype=dtype)
    rates = []
    for dw, db in GRADS:
        layer.dweights, layer.dbiases = bg.asarray(dw, layer.dtype), bg.asarray(db, layer.dtype)
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


# --- Adagrad, RMSprop, Adam and Nesterov: the book's rules by hand over three steps ---------

DECAY = 0.1
RATES = [0.5 / (1 + DECAY * t) for t in range(3)]  # lr_t = lr / (1 + decay * t), lr = 0.5


def _hand_adagrad(p0: np.ndarray, i: int, eps: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p, cache = p0.copy(), np.zeros_like(p0)
    for lr, grads in zip(RATES, GRADS, strict=True):
        g = grads[i]
        cache = cache + g**2
        p = p - lr * g / (np.sqrt(cache) + eps)
    return p, {"cache": cache}


def _hand_rmsprop(
    p0: np.ndarray, i: int, eps: float, rho: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p, cache = p0.copy(), np.zeros_like(p0)
    for lr, grads in zip(RATES, GRADS, strict=True):
        g = grads[i]
        cache = rho * cache + (1 - rho) * g**2
        p = p - lr * g / (np.sqrt(cache) + eps)
    return p, {"cache": cache}


def _hand_adam(
    p0: np.ndarray, i: int, eps: float, b1: float, b2: float
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p, m, c = p0.copy(), np.zeros_like(p0), np.zeros_like(p0)
    for t, (lr, grads) in enumerate(zip(RATES, GRADS, strict=True), start=1):
        g = grads[i]
        m = b1 * m + (1 - b1) * g
        c = b2 * c + (1 - b2) * g**2
        m_hat, c_hat = m / (1 - b1**t), c / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(c_hat) + eps)  # epsilon after the square root
    return p, {"momentums": m, "cache": c}


def _hand_nesterov(p0: np.ndarray, i: int, mu: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    p, v = p0.copy(), np.zeros_like(p0)
    for lr, grads in zip(RATES, GRADS, strict=True):
        g = grads[i]
        v = mu * v - lr * g
        p = p + mu * v - lr * g  # look ahead with the new velocity
    return p, {"momentums": v}


# (optimizer, hand rule); eps = 0.1 so epsilon visibly changes every update
HAND_RULES = [
    pytest.param(
        lambda: bg.Adagrad(learning_rate=0.5, decay=DECAY, epsilon=0.1),
        lambda p0, i: _hand_adagrad(p0, i, 0.1),
        id="adagrad",
    ),
    pytest.param(
        lambda: bg.RMSprop(learning_rate=0.5, decay=DECAY, epsilon=0.1, rho=0.8),
        lambda p0, i: _hand_rmsprop(p0, i, 0.1, 0.8),
        id="rmsprop",
    ),
    pytest.param(
        lambda: bg.Adam(learning_rate=0.5, decay=DECAY, epsilon=0.1, beta_1=0.8, beta_2=0.9),
        lambda p0, i: _hand_adam(p0, i, 0.1, 0.8, 0.9),
        id="adam",
    ),
    pytest.param(
        lambda: bg.SGD(learning_rate=0.5, decay=DECAY, momentum=0.7, nesterov=True),
        lambda p0, i: _hand_nesterov(p0, i, 0.7),
        id="nesterov",
    ),
]


@pytest.mark.parametrize(("make", "hand"), HAND_RULES)
def test_rule_matches_hand_computed_updates(backend: bg.Backend, make: Any, hand: Any) -> None:
    opt = make()
    layer, rates = _run(opt)
    assert opt.iterations == 3
    assert rates == pytest.approx(RATES, rel=1e-15)
    for i, (p0, param) in enumerate([(W0, "weights"), (B0, "biases")]):
        expected, states = hand(p0, i)
        got = getattr(layer, param)
        assert backend.owns(got) and got.dtype == backend.xp.float64
        np.testing.assert_allclose(bg.to_numpy(got), expected, rtol=1e-13, atol=1e-15)
        assert set(states) == set(opt.state_kinds)
        for kind, value in states.items():
            state = getattr(layer, state_name(param, kind))  # e.g. weight_cache, bias_momentums
            assert backend.owns(state)  # optimizer state stays on the device
            np.testing.assert_allclose(bg.to_numpy(state), value, rtol=1e-13, atol=1e-15)


def test_first_steps_in_closed_form(backend: bg.Backend) -> None:
    """Step 1 by hand, no loop: Adagrad and Adam move each weight by lr * g / (|g| + eps)
    (Adam's corrected m / sqrt(c) is g / |g|); RMSprop by lr * g / (sqrt(1 - rho) |g| + eps)."""
    g = GRADS[0][0]
    cases = [
        (bg.Adagrad(learning_rate=0.3, epsilon=0.01), 0.3 * g / (np.abs(g) + 0.01)),
        (bg.Adam(learning_rate=0.3, epsilon=0.01), 0.3 * g / (np.abs(g) + 0.01)),
        (
            bg.RMSprop(learning_rate=0.3, epsilon=0.01, rho=0.75),
            0.3 * g / (0.5 * np.abs(g) + 0.01),
        ),
    ]
    for opt, step in cases:
        layer = bg.Dense(2, 2, weights=W0, biases=B0)
        layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(GRADS[0][1])
        opt.step([layer])
        np.testing.assert_allclose(bg.to_numpy(layer.weights), W0 - step, rtol=1e-12)


def test_adam_bias_correction_uses_the_step_count(backend: bg.Backend) -> None:
    """A constant gradient g: the corrected m and c are g and g**2 at every step t, so each
    update is exactly lr * g / (|g| + eps); without bias correction (or with t off by one) the
    steps would differ."""
    opt = bg.Adam(learning_rate=0.1, epsilon=0.5, beta_1=0.5, beta_2=0.75)
    layer = bg.Dense(2, 2, weights=W0, biases=B0)
    g = np.array([[1.0, -2.0], [0.5, 4.0]])
    step = 0.1 * g / (np.abs(g) + 0.5)
    for t in range(1, 4):
        layer.dweights, layer.dbiases = bg.asarray(g), bg.asarray(np.zeros((1, 2)))
        opt.step([layer])
        np.testing.assert_allclose(bg.to_numpy(layer.weights), W0 - t * step, rtol=1e-13)
        np.testing.assert_allclose(bg.to_numpy(layer.weight_momentums), (1 - 0.5**t) * g)
        np.testing.assert_allclose(bg.to_numpy(layer.weight_cache), (1 - 0.75**t) * g**2)
    np.testing.assert_array_equal(bg.to_numpy(layer.biases), B0)  # zero gradient, no move


@pytest.mark.parametrize(("make", "hand"), HAND_RULES)
def test_float32_parameters_and_state_stay_float32(
    backend: bg.Backend, make: Any, hand: Any
) -> None:
    opt = make()
    layer, _ = _run(opt, dtype="float32")
    for i, param in enumerate(("weights", "biases")):
        got = getattr(layer, param)
        assert got.dtype == backend.xp.float32
        for kind in opt.state_kinds:
            state = getattr(layer, state_name(param, kind))
            assert state.dtype == backend.xp.float32 and backend.owns(state)
        expected, _ = hand((W0, B0)[i], i)
        np.testing.assert_allclose(bg.to_numpy(got), expected, rtol=1e-5, atol=1e-6)


def test_nesterov_matches_pytorch() -> None:
    """With decay 0, ``nesterov=True`` is PyTorch's ``SGD(nesterov=True)``."""
    try:
        import torch
    except (ImportError, OSError) as e:  # OSError: a half-installed torch
        pytest.skip(f"PyTorch is not importable here: {e}")
    w, b = torch.tensor(W0, requires_grad=True), torch.tensor(B0, requires_grad=True)
    opt_t = torch.optim.SGD([w, b], lr=0.3, momentum=0.9, nesterov=True)
    layer, _ = _run(bg.SGD(learning_rate=0.3, momentum=0.9, nesterov=True))
    for dw, db in GRADS:
        w.grad, b.grad = torch.tensor(dw), torch.tensor(db)
        opt_t.step()
    np.testing.assert_allclose(bg.to_numpy(layer.weights), w.detach().numpy(), rtol=1e-13)
    np.testing.assert_allclose(bg.to_numpy(layer.biases), b.detach().numpy(), rtol=1e-13)
    plain, _ = _run(bg.SGD(learning_rate=0.3, momentum=0.9))  # nesterov really changes things
    assert not np.allclose(bg.to_numpy(plain.weights), w.detach().numpy())


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (bg.Adagrad, {"epsilon": 0}, "Adagrad: epsilon must be a positive finite number, got 0"),
        (bg.Adagrad, {"epsilon": -1e-7}, "Adagrad: epsilon must be a positive finite number"),
        (bg.RMSprop, {"epsilon": math.nan}, "RMSprop: epsilon must be a positive .*got nan"),
        (bg.Adam, {"epsilon": 0.0}, "Adam: epsilon must be a positive finite number, got 0.0"),
        (bg.Adam, {"epsilon": math.inf}, "Adam: epsilon must be a positive .*got inf"),
        (bg.RMSprop, {"rho": 1.0}, r"RMSprop: rho must be in \[0.0, 1.0\), got 1.0"),
        (bg.RMSprop, {"rho": -0.1}, r"RMSprop: rho must be in \[0.0, 1.0\), got -0.1"),
        (bg.RMSprop, {"rho": math.nan}, r"RMSprop: rho must be in \[0.0, 1.0\), got nan"),
        (bg.Adam, {"beta_1": 1.0}, r"Adam: beta_1 must be in \[0.0, 1.0\), got 1.0"),
        (bg.Adam, {"beta_1": -0.5}, r"Adam: beta_1 must be in \[0.0, 1.0\), got -0.5"),
        (bg.Adam, {"beta_2": 1.0}, r"Adam: beta_2 must be in \[0.0, 1.0\), got 1.0"),
        (bg.Adam, {"beta_2": 1.5}, r"Adam: beta_2 must be in \[0.0, 1.0\), got 1.5"),
        (bg.Adam, {"learning_rate": 0}, "Adam: learning_rate must be a positive finite"),
        (bg.Adagrad, {"decay": -1.0}, "Adagrad: decay must be a finite number >= 0"),
        (bg.SGD, {"nesterov": True}, "SGD: nesterov=True needs a momentum > 0, got momentum=0"),
        (bg.SGD, {"nesterov": True, "momentum": 0.0}, "nesterov=True needs a momentum > 0"),
    ],
)
def test_bad_settings_of_every_optimizer_are_named(
    cls: type, kwargs: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


NO_CLIP = {"clip_norm": None, "clip_value": None}


@pytest.mark.parametrize(
    ("opt", "config"),
    [
        (
            bg.SGD(0.5, decay=0.01, momentum=0.9, nesterov=True),
            {"learning_rate": 0.5, "decay": 0.01, **NO_CLIP, "momentum": 0.9, "nesterov": True,
             "weight_decay": 0.0},
        ),
        (
            bg.SGD(0.5, momentum=0.9, weight_decay=1e-3, clip_norm=2.0),
            {"learning_rate": 0.5, "decay": 0.0, "clip_norm": 2.0, "clip_value": None,
             "momentum": 0.9, "nesterov": False, "weight_decay": 1e-3},
        ),
        (
            bg.Adagrad(0.25, decay=1e-4, epsilon=1e-6, clip_value=0.5),
            {"learning_rate": 0.25, "decay": 1e-4, "clip_norm": None, "clip_value": 0.5,
             "epsilon": 1e-6},
        ),
        (
            bg.RMSprop(0.02, decay=1e-5, epsilon=1e-6, rho=0.95),
            {"learning_rate": 0.02, "decay": 1e-5, **NO_CLIP, "epsilon": 1e-6, "rho": 0.95},
        ),
        (
            bg.Adam(0.05, decay=5e-7, epsilon=1e-8, beta_1=0.8, beta_2=0.99),
            {"learning_rate": 0.05, "decay": 5e-7, **NO_CLIP, "epsilon": 1e-8, "beta_1": 0.8,
             "beta_2": 0.99},
        ),
        (
            bg.AdamW(0.05, epsilon=1e-8, weight_decay=0.1, clip_norm=1.0),
            {"learning_rate": 0.05, "decay": 0.0, "clip_norm": 1.0, "clip_value": None,
             "epsilon": 1e-8, "beta_1": 0.9, "beta_2": 0.999, "weight_decay": 0.1},
        ),
    ],
    ids=["sgd", "sgd-decay-clip", "adagrad-clip", "rmsprop", "adam", "adamw"],
)  # fmt: skip
def test_config_and_repr_round_trip(opt: Optimizer, config: dict[str, object]) -> None:
    assert opt.get_config() == config
    rebuilt = type(opt)(**opt.get_config())
    assert rebuilt.get_config() == config
    assert repr(rebuilt) == repr(opt)
    args = ", ".join(f"{k}={v!r}" for k, v in config.items())
    assert repr(opt) == f"{type(opt).__name__}({args})"
    optimizers = {n: registry.lookup(n, "optimizer") for n in registry.names("optimizer")}
    evaluated = eval(repr(opt), optimizers)
    assert type(evaluated) is type(opt) and evaluated.get_config() == config


# --- a step applies to every layer or to none -----------------------------------------------


def _two_layers(make: Any) -> tuple[Optimizer, bg.Dense, bg.Dense]:
    """Two float32 layers with fixed gradients and one step taken, so state exists."""
    l1, l2 = bg.Dense(2, 3, seed=0), bg.Dense(3, 2, seed=1)
    for layer in (l1, l2):
        layer.dweights = bg.asarray(np.full(tuple(layer.weights.shape), 0.5, np.float32))
        layer.dbiases = bg.asarray(np.full(tuple(layer.biases.shape), -0.5, np.float32))
    opt = make()
    opt.step([l1, l2])
    return opt, l1, l2


def _everything(opt: Optimizer, *layers: bg.Dense) -> dict[str, Any]:
    """Every parameter and state attribute (None when absent) of ``layers``, and counters."""
    kinds = ("momentums", "cache")
    names = [a for p in ("weights", "biases") for a in (p, *(state_name(p, k) for k in kinds))]
    out: dict[str, Any] = {"counters": (opt.iterations, opt.current_learning_rate)}
    for i, layer in enumerate(layers):
        for attr in names:
            value = getattr(layer, attr, None)
            out[f"{i}.{attr}"] = None if value is None else bg.to_numpy(value)
    return out


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


OPTIMIZER_MAKERS = [
    pytest.param(lambda: bg.Adam(0.1), id="adam"),
    pytest.param(lambda: bg.SGD(0.1, momentum=0.9), id="sgd-momentum"),
    pytest.param(lambda: bg.SGD(0.1), id="sgd"),
    pytest.param(lambda: bg.RMSprop(0.1), id="rmsprop"),
]


@pytest.mark.parametrize("make", OPTIMIZER_MAKERS)
@pytest.mark.parametrize("attr", ["weights", "biases", "weight_momentums", "bias_cache"])
def test_a_read_only_array_in_the_last_layer_changes_nothing(make: Any, attr: str) -> None:
    """The issue's case: l2.weights read-only made Adam.step change l1 and l2's momentums
    before failing with NumPy's "output array is read-only"."""
    with bg.use_backend("numpy"):
        opt, l1, l2 = _two_layers(make)
    if getattr(l2, attr, None) is None:
        pytest.skip(f"{opt!r} keeps no {attr}")
    getattr(l2, attr).flags.writeable = False
    before = _everything(opt, l1, l2)
    match = (
        rf"{type(opt).__name__}.step: Dense\(3, 2, dtype=float32, backend=numpy\) {attr} "
        r".*is read-only .*nothing was changed"
    )
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1, l2))
    with pytest.raises(ValueError, match=rf"update_params: .* {attr} .*is read-only"):
        opt.update_params(l2)
    _assert_unchanged(before, _everything(opt, l1, l2))
    getattr(l2, attr).flags.writeable = True  # fixed: the step goes through
    opt.step([l1, l2])
    assert opt.iterations == 2


def test_a_first_step_that_fails_creates_no_state() -> None:
    """State that does not exist yet is created only once every check has passed."""
    with bg.use_backend("numpy"):
        l1, l2 = bg.Dense(2, 3, seed=0), bg.Dense(3, 2, seed=1)
    for layer in (l1, l2):
        layer.dweights = np.ones((layer.n_inputs, layer.n_neurons), np.float32)
        layer.dbiases = np.ones((1, layer.n_neurons), np.float32)
    l2.biases.flags.writeable = False
    opt = bg.Adam()
    before = _everything(opt, l1, l2)
    with pytest.raises(ValueError, match=r"Adam.step: Dense\(3, 2.* biases is read-only"):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1, l2))
    assert all(getattr(l1, a, None) is None for a in ("weight_momentums", "weight_cache"))


BAD_STATES: list[Any] = [
    pytest.param(
        lambda: bg.asarray(np.zeros((3,), np.float32)), r"shape \(3,\), float32", id="shape"
    ),
    pytest.param(lambda: bg.asarray(np.zeros((3, 2))), r"shape \(3, 2\), float64", id="dtype"),
    pytest.param(lambda: [[0.0, 0.0]] * 3, "a list, not an array", id="list"),
]


@pytest.mark.parametrize(("make_state", "got"), BAD_STATES)
def test_a_bad_optimizer_state_is_named_and_changes_nothing(
    backend: bg.Backend, make_state: Any, got: str
) -> None:
    opt, l1, l2 = _two_layers(lambda: bg.Adam(0.1))
    l2.weight_cache = make_state()
    before = _everything(opt, l1) | {"l2.weights": bg.to_numpy(l2.weights)}
    match = (
        r"Adam.step: Dense\(3, 2.*\) weight_cache \(the state of weights\) must match weights: "
        rf"expected shape \(3, 2\), float32 on .*; got {got}( from .*)?; nothing was changed"
    )
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])
    after = _everything(opt, l1) | {"l2.weights": bg.to_numpy(l2.weights)}
    _assert_unchanged(before, after)


def test_state_from_another_device_is_named() -> None:
    with bg.use_backend("array_api_strict"):
        opt, l1, l2 = _two_layers(lambda: bg.SGD(0.1, momentum=0.9))
    l2.bias_momentums = np.zeros((1, 2), np.float32)  # a host array, not on device1
    match = (
        r"bias_momentums \(the state of biases\) must match biases: expected shape \(1, 2\), "
        r"float32 on .*device1.*; got shape \(1, 2\), float32 from numpy"
    )
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])


@pytest.mark.parametrize(
    ("value", "got"),
    [
        ([[1.0, 2.0]] * 3, "got a list, not an array"),
        (None, "got None"),
    ],
)
def test_a_parameter_that_is_not_an_array_is_named(
    backend: bg.Backend, value: Any, got: str
) -> None:
    opt, l1, l2 = _two_layers(lambda: bg.SGD(0.1))
    l2.weights = value
    before = _everything(opt, l1)
    match = (
        rf"SGD.step: Dense\(3, 2.*\) weights must be an array of the layer's {backend.name} "
        rf"backend on .*; {got}; nothing was changed"
    )
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1))


def test_a_list_gradient_gets_the_shape_dtype_device_error(backend: bg.Backend) -> None:
    """It used to raise AttributeError ('list' has no 'shape') while building the message."""
    opt, l1, l2 = _two_layers(lambda: bg.Adam(0.1))
    l2.dweights = [[1.0, 2.0]] * 3
    before = _everything(opt, l1, l2)
    match = (
        r"Adam.step: Dense\(3, 2.*\) dweights must match weights: expected shape \(3, 2\), "
        r"float32 on .*; got a list, not an array"
    )
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1, l2))


@pytest.mark.parametrize("make", OPTIMIZER_MAKERS)
def test_a_big_endian_float32_gradient_is_float32(make: Any) -> None:
    """'>f4' holds float32 numbers: the update equals the one from the native gradient."""
    with bg.use_backend("numpy"):
        native = _two_layers(make)
        swapped = _two_layers(make)
    for layer in swapped[1:]:
        layer.dweights = layer.dweights.astype(">f4")
        layer.dbiases = layer.dbiases.astype(">f4")
    native[0].step(list(native[1:]))
    swapped[0].step(list(swapped[1:]))
    _assert_unchanged(_everything(*native), _everything(*swapped))
    assert swapped[1].weights.dtype == np.float32 and swapped[1].weights.dtype.isnative


def test_a_big_endian_gradient_of_another_dtype_names_the_byte_order() -> None:
    """It said 'expected float32 ... got float32' for '>f4' before; a wrong dtype in another
    byte order is named with it."""
    with bg.use_backend("numpy"):
        opt, l1, l2 = _two_layers(lambda: bg.SGD(0.1))
    l2.dweights = np.ones((3, 2), ">f8")
    match = r"expected shape \(3, 2\), float32 on cpu; got shape \(3, 2\), float64 \(big-endian\)"
    with pytest.raises(ValueError, match=match):
        opt.step([l1, l2])


@pytest.mark.parametrize(
    ("make", "dtype", "match"),
    [
        (
            lambda: bg.SGD(1e39),
            "float32",
            r"SGD: learning_rate=1e\+39 overflows float32 \(largest 3.403e\+38\)",
        ),
        (
            lambda: bg.Adam(learning_rate=3.5e38),
            "float32",
            r"Adam: learning_rate=3.5e\+38 overflows float32",
        ),
        (lambda: bg.SGD(1e299), "float64", None),
        (lambda: bg.SGD(1e39), "float64", None),
    ],
)
def test_a_learning_rate_that_overflows_the_dtype_is_refused(
    backend: bg.Backend, make: Any, dtype: str, match: str | None
) -> None:
    opt = make()
    layer = bg.Dense(2, 2, seed=0, dtype=dtype)
    layer.dweights = bg.asarray(np.zeros((2, 2), dtype))
    layer.dbiases = bg.asarray(np.zeros((1, 2), dtype))
    before = bg.to_numpy(layer.weights)
    if match is None:
        opt.check_dtype(layer.dtype)
        opt.step([layer])
        assert opt.iterations == 1
        return
    with pytest.raises(ValueError, match=match):
        opt.check_dtype(layer.dtype)
    with pytest.raises(ValueError, match=match):
        opt.step([layer])
    assert opt.iterations == 0 and np.array_equal(bg.to_numpy(layer.weights), before)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("make", OPTIMIZER_MAKERS)
def test_an_ndarray_subclass_gradient_is_used_as_a_plain_array(make: Any) -> None:
    """np.matrix makes ** a matrix power (Adam raised LinAlgError after changing the first
    layer; RMSprop gave another update silently): its numbers are used as a plain array."""
    with bg.use_backend("numpy"):
        opt, l1, l2 = _two_layers(make)
        ref_opt, r1, r2 = _two_layers(make)
    for layer in (l1, l2):
        layer.dweights = np.asmatrix(layer.dweights)
        layer.dbiases = np.asmatrix(layer.dbiases)
    opt.step([l1, l2])
    ref_opt.step([r1, r2])
    for a, b in ((l1, r1), (l2, r2)):
        assert type(a.weights) is np.ndarray
        np.testing.assert_array_equal(a.weights, b.weights, strict=True)
        np.testing.assert_array_equal(a.biases, b.biases, strict=True)


def test_a_masked_gradient_is_refused_naming_it() -> None:
    with bg.use_backend("numpy"):
        opt, l1, l2 = _two_layers(lambda: bg.Adam(0.1))
    l2.dweights = np.ma.masked_array(l2.dweights, mask=np.zeros_like(l2.dweights, bool))
    before = _everything(opt, l1, l2)
    with pytest.raises(ValueError, match=r"Adam.step: Dense\(3, 2.*\) dweights is a masked array"):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1, l2))


def test_a_learning_rate_raised_after_a_step_is_refused_at_the_next(backend: bg.Backend) -> None:
    """The dtype checks are kept once passed; a learning rate raised past the dtype's largest
    value later (a hand loop's schedule) is still caught."""
    opt, l1, l2 = _two_layers(lambda: bg.SGD(0.1))
    opt.step([l1, l2])
    opt.learning_rate = opt.current_learning_rate = 1e39
    before = _everything(opt, l1, l2)
    with pytest.raises(ValueError, match=r"SGD: learning_rate=1e\+39 overflows float32"):
        opt.step([l1, l2])
    _assert_unchanged(before, _everything(opt, l1, l2))
