"""Gradient clipping (``clip_norm``, ``clip_value``) and weight decay (SGD's coupled
``weight_decay``, ``AdamW``'s decoupled one): hand formulas on every backend, PyTorch's
``clip_grad_norm_``, ``clip_grad_value_``, ``SGD(weight_decay=...)`` and ``AdamW`` over several
steps of a small float64 Dense model when torch imports, the hand loop's calls, bad settings
and checkpoints."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.optimizers import Optimizer

W1 = np.array([[0.5, -1.0, 0.25], [2.0, 0.25, -0.5]])
B1 = np.array([[0.1, -0.2, 0.3]])
W2 = np.array([[1.0, -0.5], [0.75, 0.2], [-1.5, 0.4]])
B2 = np.array([[0.05, -0.1]])
# three steps of fixed gradients for the two layers: (dW1, dB1, dW2, dB2) each
STEPS = [[np.random.default_rng(s).standard_normal(p.shape) * 2 for p in (W1, B1, W2, B2)]
         for s in range(3)]  # fmt: skip


def _layers(dtype: str = "float64") -> list[bg.Dense]:
    return [bg.Dense(2, 3, weights=W1, biases=B1, dtype=dtype),
            bg.Dense(3, 2, weights=W2, biases=B2, dtype=dtype)]  # fmt: skip


def _set_gradients(layers: list[bg.Dense], grads: list[np.ndarray]) -> None:
    """Copies of ``grads`` as the layers' gradients (clipping writes into them)."""
    for layer, (dw, db) in zip(layers, (grads[:2], grads[2:]), strict=True):
        layer.dweights = bg.asarray(dw.copy(), layer.dtype)
        layer.dbiases = bg.asarray(db.copy(), layer.dtype)


def _params(layers: list[bg.Dense]) -> list[np.ndarray]:
    return [bg.to_numpy(a) for layer in layers for a in (layer.weights, layer.biases)]


def _run_steps(optimizer: Optimizer, flat: bool, dtype: str = "float64") -> list[np.ndarray]:
    """Three ``step`` calls on the two layers with STEPS' gradients; the parameters after.
    ``flat``: the layers' arrays are views of flat buffers (as in a Model)."""
    layers = _layers(dtype)
    if flat:
        bg.flat.FlatParameters(layers, optimizer.state_kinds)
    for grads in STEPS:
        _set_gradients(layers, grads)
        optimizer.step(layers)
    if flat:
        assert bg.flat.flat_of(layers) is not None  # (still on the buffers)
    return _params(layers)


def _hand_sgd(clip: Any) -> list[np.ndarray]:
    """Plain SGD (lr 0.1) after ``clip`` (a function of the list of gradients)."""
    params = [p.copy() for p in (W1, B1, W2, B2)]
    for grads in STEPS:
        params = [p - 0.1 * g for p, g in zip(params, clip(grads), strict=True)]
    return params


def _by_norm(grads: list[np.ndarray], max_norm: float) -> list[np.ndarray]:
    norm = math.sqrt(sum(float(np.sum(g**2)) for g in grads))
    return [g * min(max_norm / (norm + 1e-6), 1.0) for g in grads]


def _assert_close(got: list[np.ndarray], expected: list[np.ndarray], rtol: float) -> None:
    for i, (a, b) in enumerate(zip(got, expected, strict=True)):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-15, err_msg=f"parameter {i}")


# --- hand formulas, every backend ----------------------------------------------------------


@pytest.mark.parametrize("flat", [False, True], ids=["layers", "flat"])
@pytest.mark.parametrize("max_norm", [1.0, 100.0], ids=["clipped", "below"])
def test_clip_norm_scales_all_gradients_by_their_global_norm(
    backend: bg.Backend, flat: bool, max_norm: float
) -> None:
    """g *= min(max_norm / (||all g|| + 1e-6), 1), the norm over both layers together (each
    step's is about 5 here: 1.0 clips every step, 100 none)."""
    got = _run_steps(bg.SGD(0.1, clip_norm=max_norm), flat)
    _assert_close(got, _hand_sgd(lambda gs: _by_norm(gs, max_norm)), rtol=1e-13)
    if max_norm == 100.0:  # below the limit: the factor is exactly 1, the plain SGD bits
        plain = _run_steps(bg.SGD(0.1), flat)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(got, plain, strict=True))


@pytest.mark.parametrize("flat", [False, True], ids=["layers", "flat"])
def test_clip_value_clips_each_element(backend: bg.Backend, flat: bool) -> None:
    got = _run_steps(bg.SGD(0.1, clip_value=0.75), flat)
    expected = _hand_sgd(lambda gs: [np.clip(g, -0.75, 0.75) for g in gs])
    _assert_close(got, expected, rtol=1e-15)
    assert any((np.abs(g) > 0.75).any() for grads in STEPS for g in grads)  # (it did clip)


def test_clip_norm_returns_the_norm_and_writes_the_layers_gradients(backend: bg.Backend) -> None:
    """``clip_gradients`` clips ``dweights``/``dbiases`` in place (as torch's ``*_`` do) and
    returns the norm before clipping, on the device."""
    layers = _layers()
    _set_gradients(layers, STEPS[0])
    opt = bg.SGD(0.1, clip_norm=1.0)
    norm = opt.clip_gradients(layers)
    assert backend.owns(norm)
    expected = math.sqrt(sum(float(np.sum(g**2)) for g in STEPS[0]))
    assert float(bg.to_numpy(norm)) == pytest.approx(expected, rel=1e-14)
    got = [bg.to_numpy(a) for layer in layers for a in (layer.dweights, layer.dbiases)]
    _assert_close(got, _by_norm(STEPS[0], 1.0), rtol=1e-14)
    clipped = math.sqrt(sum(float(np.sum(g**2)) for g in got))
    assert clipped == pytest.approx(1.0, rel=1e-6)


def test_clip_norm_over_float32_and_float64_layers() -> None:
    """Layers of two dtypes: one norm over all of them (summed in float64), each scaled in
    its own dtype."""
    layers = [bg.Dense(2, 3, weights=W1, biases=B1, dtype="float32"),
              bg.Dense(3, 2, weights=W2, biases=B2, dtype="float64")]  # fmt: skip
    _set_gradients(layers, STEPS[0])
    bg.SGD(0.1, clip_norm=1.0).clip_gradients(layers)
    grads32 = [g.astype(np.float32).astype(np.float64) for g in STEPS[0][:2]] + STEPS[0][2:]
    expected = _by_norm(grads32, 1.0)
    got = [bg.to_numpy(a) for layer in layers for a in (layer.dweights, layer.dbiases)]
    assert [a.dtype for a in got] == [np.float32, np.float32, np.float64, np.float64]
    _assert_close(got, expected, rtol=1e-6)


def test_a_non_finite_gradient_makes_the_norm_clip_non_finite(backend: bg.Backend) -> None:
    """As torch: an infinite gradient gives an infinite norm, a factor of 0, so the other
    gradients become 0 (and inf * 0 is NaN); the step's NaN check then sees it."""
    layers = _layers()
    grads = [g.copy() for g in STEPS[0]]
    grads[0][0, 0] = np.inf
    _set_gradients(layers, grads)
    with np.errstate(invalid="ignore"):
        bg.SGD(0.1, clip_norm=1.0).clip_gradients(layers)
    dw = bg.to_numpy(layers[0].dweights)
    assert np.isnan(dw[0, 0]) and (dw.reshape(-1)[1:] == 0).all()


def test_sgd_weight_decay_with_momentum_by_hand(backend: bg.Backend) -> None:
    """torch's rule, coupled L2 before the momentum: d = g + wd w; v = mu v - lr d; w += v."""
    got = _run_steps(bg.SGD(0.1, momentum=0.9, weight_decay=0.05), flat=True)
    params = [p.copy() for p in (W1, B1, W2, B2)]
    velocities = [np.zeros_like(p) for p in params]
    for grads in STEPS:
        for i, g in enumerate(grads):
            velocities[i] = 0.9 * velocities[i] - 0.1 * (g + 0.05 * params[i])
            params[i] = params[i] + velocities[i]
    _assert_close(got, params, rtol=1e-13)


@pytest.mark.parametrize("flat", [False, True], ids=["layers", "flat"])
def test_adamw_by_hand(backend: bg.Backend, flat: bool) -> None:
    """w *= 1 - lr wd, then the book's Adam step from the gradient alone."""
    lr, wd, b1, b2, eps = 0.01, 0.2, 0.8, 0.9, 1e-7
    got = _run_steps(bg.AdamW(lr, beta_1=b1, beta_2=b2, epsilon=eps, weight_decay=wd), flat)
    params = [p.copy() for p in (W1, B1, W2, B2)]
    m = [np.zeros_like(p) for p in params]
    c = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(STEPS, start=1):
        for i, g in enumerate(grads):
            params[i] = params[i] * (1 - lr * wd)
            m[i] = b1 * m[i] + (1 - b1) * g
            c[i] = b2 * c[i] + (1 - b2) * g**2
            params[i] -= lr * (m[i] / (1 - b1**t)) / (np.sqrt(c[i] / (1 - b2**t)) + eps)
    _assert_close(got, params, rtol=1e-13)


@pytest.mark.parametrize(
    "make",
    [lambda: bg.Adam(0.01), lambda: bg.SGD(0.1, momentum=0.9), lambda: bg.SGD(0.1)],
    ids=["adam", "momentum", "sgd"],
)
def test_no_decay_no_clip_is_the_old_rule_bit_for_bit(backend: bg.Backend, make: Any) -> None:
    """AdamW(weight_decay=0) is Adam, and zero decay / no clipping leave SGD's bits as they
    were (the settings' off values skip their ops)."""
    base = _run_steps(make(), flat=True)
    config = make().get_config()
    if "beta_1" in config:
        other = bg.AdamW(**config | {"weight_decay": 0.0})
    else:
        other = bg.SGD(**config | {"weight_decay": 0.0, "clip_norm": None})
    for a, b in zip(base, _run_steps(other, flat=True), strict=True):
        assert a.tobytes() == b.tobytes()


# --- the hand loop -------------------------------------------------------------------------


def test_update_params_with_clip_norm_needs_clip_gradients(backend: bg.Backend) -> None:
    """One layer cannot know the global norm: update_params refuses, naming the fix; after
    clip_gradients(layers) the nnfs loop equals step(layers)."""
    layers = _layers()
    _set_gradients(layers, STEPS[0])
    opt = bg.Adam(0.01, clip_norm=1.0)
    opt.pre_update_params()
    with pytest.raises(RuntimeError, match=r"Adam.update_params: clip_norm=1.0 .*clip_gradients"):
        opt.update_params(layers[0])
    assert opt.iterations == 0 and bg.to_numpy(layers[0].weights).tolist() == W1.tolist()
    for grads in STEPS:
        _set_gradients(layers, grads)
        opt.pre_update_params()
        opt.clip_gradients(layers)
        for layer in layers:
            opt.update_params(layer)
        opt.post_update_params()
    by_step = _run_steps(bg.Adam(0.01, clip_norm=1.0), flat=False)
    for a, b in zip(_params(layers), by_step, strict=True):
        assert a.tobytes() == b.tobytes()


def test_update_params_clips_by_value_itself(backend: bg.Backend) -> None:
    layers = _layers()
    opt = bg.SGD(0.1, clip_value=0.75)
    for grads in STEPS:
        _set_gradients(layers, grads)
        opt.pre_update_params()
        for layer in layers:
            opt.update_params(layer)
        opt.post_update_params()
    by_step = _run_steps(bg.SGD(0.1, clip_value=0.75), flat=False)
    for a, b in zip(_params(layers), by_step, strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_read_only_gradient_is_clipped_as_a_copy() -> None:
    layers = _layers()
    _set_gradients(layers, STEPS[0])
    frozen = layers[0].dweights
    frozen.flags.writeable = False
    before = frozen.copy()
    bg.SGD(0.1, clip_norm=1.0).step(layers)
    np.testing.assert_array_equal(frozen, before)  # untouched
    expected = _by_norm(STEPS[0], 1.0)
    np.testing.assert_allclose(layers[0].weights, W1 - 0.1 * expected[0], rtol=1e-14)


# --- against PyTorch: a small float64 Dense model, several full-batch steps -----------------

X = np.random.default_rng(3).standard_normal((24, 4))
Y = np.random.default_rng(4).integers(0, 3, 24)


def _bg_model(optimizer: Optimizer) -> bg.Model:
    layers = [bg.Dense(4, 8, seed=1, dtype="float64"), bg.ReLU(),
              bg.Dense(8, 3, seed=2, dtype="float64")]  # fmt: skip
    return bg.Model(layers).set(loss=bg.SoftmaxCrossEntropy(), optimizer=optimizer).finalize()


def _torch_run(model: bg.Model, make_opt: Any, clip: Any, steps: int) -> list[np.ndarray]:
    """The same network in torch (weights copied from ``model`` before training), trained on
    the full batch ``steps`` times with ``clip`` applied to the gradients before each step;
    the parameters in this library's layout (weights (in, out), biases (1, out))."""
    torch = pytest.importorskip("torch")
    dense = [layer for layer in model.layers if isinstance(layer, bg.Dense)]
    linears = []
    for layer in dense:
        linear = torch.nn.Linear(*layer.weights.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(bg.to_numpy(layer.weights).T))
            linear.bias.copy_(torch.tensor(bg.to_numpy(layer.biases)[0]))
        linears.append(linear)
    net = torch.nn.Sequential(linears[0], torch.nn.ReLU(), linears[1])
    opt = make_opt(net.parameters())
    x, y = torch.tensor(X), torch.tensor(Y)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x), y).backward()
        clip(list(net.parameters()))
        opt.step()
    out = []
    for linear in linears:
        out += [linear.weight.detach().numpy().T, linear.bias.detach().numpy()[None, :]]
    return out


def _no_clip(params: list[Any]) -> None:
    pass


def _torch_cases() -> list[Any]:
    def norm(max_norm: float) -> Any:
        def clip(params: list[Any]) -> None:
            import torch

            total = torch.nn.utils.clip_grad_norm_(params, max_norm)
            assert total > max_norm  # (the limit is active in every step)

        return clip

    def value(limit: float) -> Any:
        def clip(params: list[Any]) -> None:
            import torch

            torch.nn.utils.clip_grad_value_(params, limit)

        return clip

    sgd = lambda **kw: lambda p: __import__("torch").optim.SGD(p, **kw)  # noqa: E731
    adamw = lambda **kw: lambda p: __import__("torch").optim.AdamW(p, **kw)  # noqa: E731
    return [
        pytest.param(bg.SGD(0.5, clip_norm=0.01), sgd(lr=0.5), norm(0.01), id="clip_norm"),
        pytest.param(bg.SGD(0.5, clip_value=0.02), sgd(lr=0.5), value(0.02), id="clip_value"),
        pytest.param(
            bg.SGD(0.5, momentum=0.9, weight_decay=0.1),
            sgd(lr=0.5, momentum=0.9, weight_decay=0.1), _no_clip, id="sgd_weight_decay",
        ),
        pytest.param(
            bg.SGD(0.5, momentum=0.9, nesterov=True, weight_decay=0.1, clip_norm=0.01),
            sgd(lr=0.5, momentum=0.9, nesterov=True, weight_decay=0.1), norm(0.01),
            id="nesterov_weight_decay_clip_norm",
        ),
        pytest.param(
            bg.AdamW(0.05, epsilon=1e-8, weight_decay=0.5),
            adamw(lr=0.05, eps=1e-8, weight_decay=0.5), _no_clip, id="adamw",
        ),
        pytest.param(
            bg.AdamW(0.05, epsilon=1e-8, beta_1=0.8, beta_2=0.95, weight_decay=0.5,
                     clip_norm=0.01),
            adamw(lr=0.05, eps=1e-8, betas=(0.8, 0.95), weight_decay=0.5), norm(0.01),
            id="adamw_clip_norm",
        ),
    ]  # fmt: skip


@pytest.mark.parametrize(("optimizer", "make_torch", "clip"), _torch_cases())
def test_training_equals_pytorch(optimizer: Optimizer, make_torch: Any, clip: Any) -> None:
    """Model.train (flat buffers, one full batch an epoch) for 6 steps equals torch's loop:
    ``clip_grad_norm_``/``clip_grad_value_`` then ``SGD``/``AdamW.step``."""
    pytest.importorskip("torch")
    model = _bg_model(optimizer)
    expected = _torch_run(model, make_torch, clip, steps=6)
    model.train(X, Y, epochs=6, shuffle=False, print_every=0)
    got = [bg.to_numpy(a) for layer in model.trainable_layers for a in (layer.weights,
                                                                         layer.biases)]  # fmt: skip
    _assert_close(got, expected, rtol=1e-10)
    start = _params_of(_bg_model(bg.SGD()))
    assert not any(np.allclose(a, b) for a, b in zip(got, start, strict=True))  # (it trained)


def _params_of(model: bg.Model) -> list[np.ndarray]:
    return [bg.to_numpy(a) for layer in model.trainable_layers for a in (layer.weights,
                                                                         layer.biases)]  # fmt: skip


# --- settings and checkpoints --------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (bg.SGD, {"clip_norm": 0.0}, "SGD: clip_norm must be a positive finite number, got 0.0"),
        (bg.Adam, {"clip_norm": -1.0}, "Adam: clip_norm must be a positive finite number, got -1"),
        (bg.RMSprop, {"clip_norm": math.nan}, "RMSprop: clip_norm must be a positive finite .*nan"),
        (bg.Adagrad, {"clip_value": math.inf}, "Adagrad: clip_value must be a positive .*inf"),
        (bg.AdamW, {"clip_value": -0.5}, "AdamW: clip_value must be a positive .*got -0.5"),
        (bg.SGD, {"clip_value": "1"}, "SGD: clip_value must be a positive finite number, got '1'"),
        (bg.SGD, {"clip_norm": 1.0, "clip_value": 0.5},
         r"SGD: set clip_norm or clip_value, not both \(got clip_norm=1.0, clip_value=0.5\)"),
        (bg.SGD, {"weight_decay": -0.1}, "SGD: weight_decay must be a finite number >= 0, "
                                          "got -0.1"),
        (bg.SGD, {"weight_decay": math.nan}, "SGD: weight_decay must be a finite .*got nan"),
        (bg.AdamW, {"weight_decay": math.inf}, "AdamW: weight_decay must be a finite .*got inf"),
        (bg.AdamW, {"weight_decay": -1e-3}, "AdamW: weight_decay must be a finite .*got -0.001"),
    ],
)  # fmt: skip
def test_bad_settings_are_named(cls: type, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


@pytest.mark.parametrize(
    "optimizer",
    [bg.AdamW(0.01, weight_decay=0.1, clip_norm=0.5), bg.SGD(0.2, momentum=0.9,
                                                            weight_decay=1e-3, clip_value=0.1)],
    ids=["adamw", "sgd"],
)  # fmt: skip
def test_save_and_load_keep_the_settings_and_resume_exactly(
    tmp_path: Any, optimizer: Optimizer
) -> None:
    """Model.save stores the clip and decay settings; the loaded model trains on as the
    uninterrupted one (the same bits)."""
    config = optimizer.get_config()
    straight = _bg_model(type(optimizer)(**config))
    straight.train(X, Y, epochs=4, shuffle=False, print_every=0)
    first = _bg_model(optimizer)
    first.train(X, Y, epochs=2, shuffle=False, print_every=0)
    first.save(tmp_path / "m.npz")
    loaded = bg.Model.load(tmp_path / "m.npz")
    assert type(loaded.optimizer) is type(optimizer)
    assert loaded.optimizer is not None and loaded.optimizer.get_config() == config
    loaded.train(X, Y, epochs=2, shuffle=False, print_every=0)
    for a, b in zip(_params_of(loaded), _params_of(straight), strict=True):
        assert a.tobytes() == b.tobytes()


def test_adamw_is_registered_and_exported() -> None:
    from backprop_gpu import registry

    assert registry.lookup("AdamW", "optimizer") is bg.AdamW and "AdamW" in bg.__all__
    assert issubclass(bg.AdamW, bg.Adam)


def test_clip_gradients_across_ranks_is_refused() -> None:
    """A DistributedOptimizer's global norm needs the summed gradients: its step clips after
    the allreduce; clip_gradients alone (before any sum) is refused, saying so."""
    pytest.importorskip("mpi4py")  # (a DistributedOptimizer needs MPI)
    from backprop_gpu.distributed import DistributedOptimizer

    opt = DistributedOptimizer(bg.SGD(0.1, clip_norm=1.0))
    with pytest.raises(RuntimeError, match=r"DistributedOptimizer.clip_gradients: .*step"):
        opt.clip_gradients(_layers())
