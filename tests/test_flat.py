"""Flat parameter buffers (flat.py): the layers' arrays are views into one buffer per dtype,
an optimizer step is one update call per dtype, and the results are the bits of the
per-parameter updates."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import flat as flat_mod
from backprop_gpu.datasets import spiral_data
from backprop_gpu.flat import FlatParameters, state_name

X, Y = spiral_data(samples=60, classes=3, seed=2)  # 180 samples

OPTIMIZERS = {
    "sgd": lambda: bg.SGD(0.5, decay=1e-3),
    "momentum": lambda: bg.SGD(0.5, decay=1e-3, momentum=0.9),
    "nesterov": lambda: bg.SGD(0.5, momentum=0.9, nesterov=True),
    "adagrad": lambda: bg.Adagrad(0.5, decay=1e-3),
    "rmsprop": lambda: bg.RMSprop(0.01, decay=1e-3),
    "adam": lambda: bg.Adam(0.02, decay=1e-3),
}
UPDATE_OPS = ("sgd", "sgd_momentum", "adagrad", "rmsprop", "adam")


def layers(dtype: str = "float32") -> list[Any]:
    """2 -> 16 -> 3 with every kind of penalty on; the same seeds, the same start."""
    return [
        bg.Dense(2, 16, init="he", seed=0, dtype=dtype, weight_regularizer_l1=1e-4,
                 weight_regularizer_l2=1e-3, bias_regularizer_l1=1e-4, bias_regularizer_l2=1e-3),
        bg.ReLU(),
        bg.Dense(16, 3, init="glorot", seed=1, dtype=dtype, weight_regularizer_l2=5e-4),
    ]  # fmt: skip


def model(optimizer: str) -> bg.Model:
    m = bg.Model(layers())
    m.set(loss=bg.SoftmaxCrossEntropy(), optimizer=OPTIMIZERS[optimizer](), accuracy=bg.Accuracy())
    return m.finalize()


def arrays(layer_list: list[Any], kinds: tuple[str, ...]) -> list[np.ndarray]:
    """Every parameter and optimizer state of the layers, as host copies."""
    out = []
    for layer in layer_list:
        for name in getattr(layer, "params", ()):
            out.append(bg.to_numpy(getattr(layer, name)))
            out += [bg.to_numpy(getattr(layer, state_name(name, k))) for k in kinds]
    return out


def hand_steps(layer_list: list[Any], optimizer: Any, steps: int = 4) -> None:
    """The nnfs loop over batches of 64, each step ``optimizer.step``."""
    dense1, relu, dense2 = layer_list
    loss = bg.SoftmaxCrossEntropy()
    for i in range(steps):
        xb, yb = X[64 * i % 180 :][:64], Y[64 * i % 180 :][:64]
        loss.forward(dense2.forward(relu.forward(dense1.forward(xb))), yb)
        dense1.backward(relu.backward(dense2.backward(loss.backward(loss.output, yb))))
        optimizer.step([dense1, dense2])


@contextlib.contextmanager
def counted_ops(backend: bg.Backend) -> Iterator[dict[str, int]]:
    """Count the calls of each optimizer update op on ``backend`` for a block."""
    counts = dict.fromkeys(UPDATE_OPS, 0)
    real = backend.ops

    class Counting:
        def __getattr__(self, name: str) -> Any:
            attr = getattr(real, name)
            if name not in counts:
                return attr

            def counted(*args: Any, **kwargs: Any) -> Any:
                counts[name] += 1
                return attr(*args, **kwargs)

            return counted

    object.__setattr__(backend, "ops", Counting())  # (Backend is a frozen dataclass)
    try:
        yield counts
    finally:
        object.__setattr__(backend, "ops", real)


@pytest.fixture
def no_flat(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Returns a context in which models keep their arrays apart (no flat buffers)."""

    @contextlib.contextmanager
    def off() -> Iterator[None]:
        with monkeypatch.context() as m:
            m.setattr(FlatParameters, "packable", classmethod(lambda cls, layers: False))
            yield

    return off


def test_layers_arrays_are_views_of_the_buffers(backend: bg.Backend) -> None:
    m = model("adam")
    m.train(X, Y, epochs=1, batch_size=64, print_every=0, seed=0)
    flat = m._flat
    assert flat is not None and list(flat.groups) == ["float32"]
    group = flat.groups["float32"]
    dense1, _, dense2 = m.layers
    # each slice starts 64 floats (256 bytes) after a boundary; the gaps are zeros
    starts = [slot.start for slot in group.slots]
    assert starts == [0, 64, 128, 192] and group.params.shape == (256,)
    total = bg.to_numpy(group.params)
    names = [(dense1, "weights"), (dense1, "biases"), (dense2, "weights"), (dense2, "biases")]
    for slot, (layer, attr) in zip(group.slots, names, strict=True):
        np.testing.assert_array_equal(
            total[slot.start : slot.stop], bg.to_numpy(getattr(layer, attr)).reshape(-1)
        )
        assert not total[slot.stop : slot.start + 64].any()
        for buffer, name in ((group.params, attr), (group.grads, "d" + attr),
                             (group.states["momentums"], state_name(attr, "momentums")),
                             (group.states["cache"], state_name(attr, "cache"))):  # fmt: skip
            view = getattr(layer, name)
            assert tuple(view.shape) == slot.shape
            # writing the buffer changes the layer's array, and the other way round
            buffer[slot.start : slot.start + 1] = 7.0
            assert float(bg.to_numpy(view).reshape(-1)[0]) == 7.0
            view[...] = 0.0
            assert not bg.to_numpy(buffer[slot.start : slot.stop]).any()


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_flat_step_gives_the_bits_of_per_parameter_steps(backend: bg.Backend, optimizer: str):
    """One update call over the whole buffer equals one call per parameter, bit for bit
    (the rules are elementwise), with L1/L2 penalties, for every optimizer."""
    plain, packed = layers(), layers()
    FlatParameters(packed, OPTIMIZERS[optimizer]().state_kinds)
    assert flat_mod.flat_of([packed[0], packed[2]]) is not None
    assert flat_mod.flat_of([plain[0], plain[2]]) is None
    opt_plain, opt_packed = OPTIMIZERS[optimizer](), OPTIMIZERS[optimizer]()
    hand_steps(plain, opt_plain)
    with counted_ops(backend) as counts:
        hand_steps(packed, opt_packed)
    assert sum(counts.values()) == 4  # four steps, one call each (not four: one per array)
    kinds = opt_plain.state_kinds
    for a, b in zip(arrays(plain, kinds), arrays(packed, kinds), strict=True):
        np.testing.assert_array_equal(a, b)
    assert packed[0].dweights is packed[0]._flat_views["dweights"]  # written in place


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_model_train_is_the_same_with_and_without_flat_buffers(
    backend: bg.Backend, optimizer: str, no_flat: Any
) -> None:
    with no_flat():
        reference = model(optimizer)
        ref_history = reference.train(X, Y, epochs=2, batch_size=50, print_every=0, seed=3)
        assert reference._flat is None
    m = model(optimizer)
    with counted_ops(backend) as counts:
        history = m.train(X, Y, epochs=2, batch_size=50, print_every=0, seed=3)
    assert sum(counts.values()) == m.optimizer.iterations == 8  # one update call a step
    assert history == ref_history
    kinds = m.optimizer.state_kinds
    for a, b in zip(arrays(m.layers, kinds), arrays(reference.layers, kinds), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_update_call_per_dtype(backend: bg.Backend) -> None:
    packed = [bg.Dense(2, 4, seed=0, dtype="float32"), bg.Dense(3, 2, seed=1, dtype="float64")]
    plain = [bg.Dense(2, 4, seed=0, dtype="float32"), bg.Dense(3, 2, seed=1, dtype="float64")]
    flat = FlatParameters(packed, ("momentums",))
    assert sorted(flat.groups) == ["float32", "float64"]
    for layer_list, opt in (
        (plain, bg.SGD(0.1, momentum=0.5)),
        (packed, bg.SGD(0.1, momentum=0.5)),
    ):
        for layer, n in zip(layer_list, (2, 3), strict=True):
            rng = np.random.default_rng(n)
            layer.forward(rng.standard_normal((5, n)))
            layer.backward(bg.asarray(rng.standard_normal((5, layer.n_neurons)), layer.dtype))
        with counted_ops(backend) as counts:
            opt.step(layer_list)
        assert counts["sgd_momentum"] == (2 if layer_list is packed else 4)
    for a, b in zip(arrays(plain, ("momentums",)), arrays(packed, ("momentums",)), strict=True):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_a_replaced_array_in_a_hand_loop_is_honoured(backend: bg.Backend) -> None:
    """``layer.weights = w`` takes that parameter off the buffers: the step updates ``w``
    itself (in place, as without buffers), never the stale view; a replaced gradient is
    used as given. ``Model.train`` then packs the arrays again."""
    m = model("adam")
    dense1, _, dense2 = m.layers
    plain = layers()
    opt_plain, opt = bg.Adam(0.02), bg.Adam(0.02)
    hand_steps(plain, opt_plain, steps=1)
    hand_steps(m.layers, opt, steps=1)
    new = bg.asarray(bg.to_numpy(dense1.weights) * 0.5, dense1.dtype)
    dense1.weights = new
    plain[0].weights = bg.asarray(bg.to_numpy(plain[0].weights) * 0.5, dense1.dtype)
    stale = bg.to_numpy(m._flat.groups["float32"].slots[0].param)
    with counted_ops(backend) as counts:
        hand_steps(plain, opt_plain, steps=1)
        hand_steps(m.layers, opt, steps=1)
    assert counts["adam"] == 8  # both loops one call per array now
    assert dense1.weights is new  # updated in place
    np.testing.assert_array_equal(bg.to_numpy(m._flat.groups["float32"].slots[0].param), stale)
    # a gradient replaced between backward and step is the one used
    for layer_list, optimizer in ((plain, opt_plain), (m.layers, opt)):
        layer_list[2].dbiases = bg.asarray(np.full((1, 3), 0.25), layer_list[2].dtype)
        optimizer.step([layer_list[0], layer_list[2]])
    for a, b in zip(arrays(plain, opt.state_kinds), arrays(m.layers, opt.state_kinds),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    m.train(X, Y, epochs=1, batch_size=60, print_every=0, seed=0)
    assert m._flat.intact(opt.state_kinds) and dense1.weights is not new
    assert dense2.weight_cache is m._flat.groups["float32"].slots[2].states["cache"]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # (the overflow the rollback undoes)
def test_loading_and_rolling_back_write_into_the_buffers(backend: bg.Backend, tmp_path) -> None:
    m = model("momentum")
    m.train(X, Y, epochs=1, batch_size=60, print_every=0, seed=0)
    flat = m._flat
    m.save(tmp_path / "m.npz")
    saved = arrays(m.layers, ("momentums",))
    m.train(X, Y, epochs=1, batch_size=60, print_every=0, seed=1)
    m.load_parameters(tmp_path / "m.npz")
    assert m._flat is flat and flat.intact(("momentums",))
    np.testing.assert_array_equal(bg.to_numpy(m.layers[0].weights), saved[0])
    loaded = bg.Model.load(tmp_path / "m.npz")
    loaded.train(X, Y, epochs=1, batch_size=60, print_every=0, seed=1)
    assert loaded._flat is not None and loaded._flat.intact(("momentums",))
    # the rollback after a non-finite epoch copies back into the same buffers
    before = arrays(m.layers, ("momentums",))
    m.optimizer.learning_rate = m.optimizer.current_learning_rate = 1e30
    with pytest.raises(bg.NonFiniteLossError):
        m.train(X, Y, epochs=1, batch_size=60, print_every=0, seed=2)
    assert m._flat is flat and flat.intact(("momentums",))
    for a, b in zip(before, arrays(m.layers, ("momentums",)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_assign_copies_into_a_view_and_sets_anything_else() -> None:
    (dense,) = packed = [bg.Dense(2, 3, seed=0)]
    FlatParameters(packed)
    view = dense.weights
    flat_mod.assign(dense, "weights", np.ones((2, 3), np.float32))
    assert dense.weights is view and (view == 1).all()
    other = np.zeros((2, 3), np.float64)  # another dtype: not for the buffer
    flat_mod.assign(dense, "weights", other)
    assert dense.weights is other
    flat_mod.assign(dense, "weight_momentums", None)
    assert dense.weight_momentums is None
