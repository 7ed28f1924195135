"""Your own layers, first class: the ``bg.Layer`` contract, the one registry (``@bg.register``)
that checkpoints and the command line share, and ``check_layer`` on every backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import checkpoint, experiment, registry
from backprop_gpu.datasets import spiral_data
from backprop_gpu.testing import check_layer

RNG = np.random.default_rng(14)


@pytest.fixture(autouse=True)
def clean_registry() -> Iterator[None]:
    """Each test's registrations are undone after it (the registry is process-wide)."""
    classes, names = dict(registry._CLASSES), dict(registry._NAMES)
    yield
    registry._CLASSES.clear()
    registry._CLASSES.update(classes)
    registry._NAMES.clear()
    registry._NAMES.update(names)


def leaky_relu_class() -> type:
    """A LeakyReLU written as the README says: xp only, alpha kept as self.alpha."""

    class LeakyReLU(bg.Layer):
        def __init__(self, alpha: float = 0.01) -> None:
            super().__init__()
            self.alpha = alpha
            self.seen: list[Any] = []  # every inputs and dvalues it was given (tested below)

        def forward(self, inputs: Any, training: bool = True) -> Any:
            self.seen.append(inputs)
            self.inputs = inputs
            self.output = self.backend.xp.where(inputs > 0, inputs, self.alpha * inputs)
            return self.output

        def backward(self, dvalues: Any) -> Any:
            self.seen.append(dvalues)
            xp = self.backend.xp
            self.dinputs = xp.where(self.inputs > 0, dvalues, self.alpha * dvalues)
            return self.dinputs

    return LeakyReLU


def scale_class() -> type:
    """A layer with a parameter: ``output = inputs * gamma``, gamma (1, features), built as
    ones; its constructor does not take ``gamma`` (Model.load assigns it after building)."""

    class Scale(bg.Layer):
        params = ("gamma",)

        def __init__(self, features: int, dtype: str = "float32") -> None:
            super().__init__()
            self.features, self.dtype = features, dtype
            self.gamma = self.backend.asarray(np.ones((1, features)), self.backend.dtype(dtype))
            self.dgamma: Any = None

        def forward(self, inputs: Any, training: bool = True) -> Any:
            self.inputs = inputs
            self.output = inputs * self.gamma
            return self.output

        def backward(self, dvalues: Any) -> Any:
            xp = self.backend.xp
            self.dgamma = xp.sum(dvalues * self.inputs, axis=0, keepdims=True)
            self.dinputs = dvalues * self.gamma
            return self.dinputs

    return Scale


# --- the base class ------------------------------------------------------------------------


def test_every_built_in_layer_is_a_registered_layer() -> None:
    for layer in (bg.Dense(2, 3), bg.Dropout(0.5), bg.ReLU(), bg.Softmax(), bg.Sigmoid()):
        assert isinstance(layer, bg.Layer)
        assert registry.lookup(type(layer).__name__, "layer") is type(layer)
    assert isinstance(bg.Linear(), bg.Layer) and repr(bg.ReLU()) == "ReLU()"
    assert registry.names("layer") == ("ReLU", "Softmax", "Sigmoid", "Linear", "Dense", "Dropout")


def test_a_layer_without_backward_cannot_be_built() -> None:
    class Half(bg.Layer):
        def forward(self, inputs: Any, training: bool = True) -> Any:
            return inputs

    with pytest.raises(TypeError, match="abstract method.*backward"):
        Half()  # type: ignore[abstract]


def test_get_config_reads_the_constructor_arguments(backend: bg.Backend) -> None:
    layer = leaky_relu_class()(alpha=np.float64(0.25))
    assert layer.backend is backend
    config = layer.get_config()
    assert config == {"alpha": 0.25} and type(config["alpha"]) is float  # JSON, not numpy
    assert repr(layer) == "LeakyReLU(alpha=0.25)"
    assert scale_class()(3).get_config() == {"features": 3, "dtype": "float32"}


def test_get_config_names_an_argument_it_cannot_find() -> None:
    class Shift(bg.Layer):
        def __init__(self, amount: float) -> None:
            super().__init__()
            self._amount = amount

        def forward(self, inputs: Any, training: bool = True) -> Any:
            return inputs + self._amount

        def backward(self, dvalues: Any) -> Any:
            return dvalues

    with pytest.raises(NotImplementedError, match=r"'amount' is not kept as self\.amount"):
        Shift(1.0).get_config()
    assert repr(Shift(1.0)) == "Shift(...)"


# --- check_layer on every backend ----------------------------------------------------------


def test_check_layer_gives_a_custom_layer_arrays_of_its_backend(backend: bg.Backend) -> None:
    """A layer that only uses self.backend.xp passes on every backend (on the strict
    stand-in, xp.where refuses the host arrays check_layer used to pass)."""
    layer = leaky_relu_class()(alpha=0.1)
    x = RNG.standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5
    errors = check_layer(layer, x)
    assert set(errors) == {"dinputs"} and errors["dinputs"] < 1e-8
    assert len(layer.seen) == 3 + 2 * x.size  # forward, forward, backward; 2 per difference
    for array in layer.seen:
        assert backend.owns(array) and bg.to_numpy(array).dtype == np.float64
    # the analytic gradient it checked (backward's): 1 where x > 0, alpha elsewhere, times R
    layer.forward(backend.asarray(x))
    r = bg.to_numpy(layer.seen[2])
    dinputs = bg.to_numpy(layer.backward(layer.seen[2]))
    np.testing.assert_array_equal(dinputs, np.where(x > 0, r, 0.1 * r))


def test_check_layer_checks_a_custom_parameter(backend: bg.Backend) -> None:
    layer = scale_class()(3, "float64")
    layer.gamma = backend.asarray(np.array([[0.5, -2.0, 3.0]]), backend.dtype("float64"))
    errors = check_layer(layer, RNG.standard_normal((6, 3)))
    assert set(errors) == {"dinputs", "dgamma"} and max(errors.values()) < 1e-8


# --- the registry --------------------------------------------------------------------------


def test_a_name_registered_twice_with_another_class_names_both() -> None:
    first, second = leaky_relu_class(), scale_class()
    second.__name__ = second.__qualname__ = "LeakyReLU"
    second.__module__ = "elsewhere"
    bg.register(first)
    bg.register(first)  # the same class again: fine
    with pytest.raises(ValueError) as error:
        bg.register(second)
    message = str(error.value)
    assert f"'LeakyReLU' is registered to {first.__module__}.{first.__qualname__}" in message
    assert "cannot register elsewhere.LeakyReLU too" in message
    assert "@register(name=...)" in message
    assert registry.lookup("LeakyReLU", "layer") is first  # unchanged


def test_names_differing_only_in_case_are_refused() -> None:
    class Relu(bg.ReLU):
        pass

    with pytest.raises(ValueError, match=r"'Relu' differs only in case from 'ReLU'"):
        bg.register(Relu)
    bg.register(Relu, name="PlainReLU")  # under another name it is fine
    assert registry.lookup("plainrelu", "layer") is Relu


def test_a_redefined_class_replaces_the_old_one() -> None:
    """Same module and qualified name (a re-run notebook cell, a reloaded module)."""
    old, new = leaky_relu_class(), leaky_relu_class()
    assert old is not new
    bg.register(old)
    bg.register(new)
    assert registry.lookup("LeakyReLU", "layer") is new
    assert registry.name_of(new(0.1)) == "LeakyReLU"
    with pytest.raises(ValueError, match="is not registered"):
        registry.name_of(old(0.1))


def test_register_refuses_what_no_checkpoint_could_hold() -> None:
    with pytest.raises(TypeError, match="register: expected a class, got 3"):
        bg.register(3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="is not a layer, loss, optimizer, accuracy or schedule"):
        bg.register(dict)
    with pytest.raises(ValueError, match="name must be a Python identifier, got 'a b'"):
        bg.register(name="a b")(bg.ReLU)


def test_lookups_know_kinds_and_the_command_line_names() -> None:
    assert registry.lookup("adam", "optimizer") is bg.Adam
    assert registry.lookup("SGD", "optimizer") is bg.SGD
    assert registry.lookup("softmaxcrossentropy", "loss") is bg.SoftmaxCrossEntropy
    assert registry.lookup("RegressionAccuracy", "accuracy") is bg.RegressionAccuracy
    for name in experiment.ACTIVATIONS:
        assert registry.kind_of(registry.lookup(name, "layer")) == "layer"
    for name in experiment.OPTIMIZERS:  # each --optimizer has its default rate
        assert issubclass(registry.lookup(name, "optimizer"), bg.optimizers.Optimizer)
        assert experiment.DEFAULT_LR[name] > 0
    with pytest.raises(ValueError, match=r"'Adam' is registered as kind 'optimizer' \("):
        registry.lookup("Adam", "layer")
    with pytest.raises(ValueError, match="unknown optimizer class 'Lion'.*: SGD, Adagrad"):
        registry.lookup("Lion", "optimizer")
    assert registry.names("optimizer") == ("SGD", "Adagrad", "RMSprop", "Adam", "AdamW")
    assert registry.names("loss")[0] == "CategoricalCrossEntropy"


def test_the_cli_default_learning_rates_are_the_classes_but_adams() -> None:
    """DEFAULT_LR differs from a constructor's default only where experiment.py says why."""
    import inspect

    for name, lr in experiment.DEFAULT_LR.items():
        default = inspect.signature(registry.lookup(name, "optimizer")).parameters
        expected = 0.02 if name in ("adam", "adamw") else default["learning_rate"].default
        assert lr == expected, name
    assert inspect.signature(bg.Adam).parameters["learning_rate"].default == 0.001


# --- checkpoints ---------------------------------------------------------------------------


def spiral_model(*middle: Any) -> tuple[bg.Model, np.ndarray, np.ndarray]:
    X, y = spiral_data(30, 3, seed=0)
    model = bg.Model([bg.Dense(2, 8, seed=0), *middle, bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(0.02))
    model.finalize().train(X, y, epochs=5, batch_size=30, print_every=0, seed=0)
    return model, X, y


def test_a_registered_custom_layer_round_trips_with_its_config(
    backend: bg.Backend, tmp_path: Path
) -> None:
    leaky = bg.register(leaky_relu_class())
    model, X, _ = spiral_model(leaky(alpha=0.3))
    model.save(tmp_path / "m.npz")
    _, meta = checkpoint.load(tmp_path / "m.npz")
    assert meta["layers"][1] == {"class": "LeakyReLU", "config": {"alpha": 0.3}}
    loaded = bg.Model.load(tmp_path / "m.npz")
    assert type(loaded.layers[1]) is leaky and loaded.layers[1].alpha == 0.3
    np.testing.assert_array_equal(bg.to_numpy(loaded.predict(X)), bg.to_numpy(model.predict(X)))


def test_a_custom_parameter_trains_saves_and_loads(backend: bg.Backend, tmp_path: Path) -> None:
    scale = bg.register(scale_class())
    model, X, y = spiral_model(bg.ReLU(), scale(8))
    gamma = bg.to_numpy(model.layers[2].gamma)
    assert not np.array_equal(gamma, np.ones((1, 8)))  # the optimizer updated it
    model.save(tmp_path / "m.npz")
    loaded = bg.Model.load(tmp_path / "m.npz")  # Scale(8), then gamma assigned from the file
    np.testing.assert_array_equal(bg.to_numpy(loaded.layers[2].gamma), gamma)
    np.testing.assert_array_equal(
        bg.to_numpy(loaded.layers[2].gamma_momentums), bg.to_numpy(model.layers[2].gamma_momentums)
    )
    np.testing.assert_array_equal(bg.to_numpy(loaded.predict(X)), bg.to_numpy(model.predict(X)))
    # and resumes as the uninterrupted model: one more epoch each, the same history
    assert loaded.train(X, y, epochs=1, batch_size=30, print_every=0, seed=0) == model.train(
        X, y, epochs=1, batch_size=30, print_every=0, seed=0
    )


def test_saving_an_unregistered_layer_says_how_to_fix_it(tmp_path: Path) -> None:
    model, _, _ = spiral_model(leaky_relu_class()(alpha=0.3))
    with pytest.raises(ValueError) as error:
        model.save(tmp_path / "m.npz")
    assert "LeakyReLU is not registered, so Model.load could not rebuild it" in str(error.value)
    assert "decorate it with @bg.register (and import it before loading)" in str(error.value)
    assert not (tmp_path / "m.npz").exists()


def test_loading_an_unregistered_layer_says_how_to_fix_it(tmp_path: Path) -> None:
    """The file was saved where LeakyReLU was registered; the loading process has not
    imported it."""
    leaky = bg.register(leaky_relu_class())
    model, _, _ = spiral_model(leaky(alpha=0.3))
    model.save(tmp_path / "m.npz")
    del registry._CLASSES["LeakyReLU"]
    with pytest.raises(bg.CheckpointError) as error:
        bg.Model.load(tmp_path / "m.npz")
    assert (
        "cannot rebuild layers[1] (LeakyReLU): unknown layer class 'LeakyReLU': if it is your "
        "own, decorate it with @bg.register and import it before loading" in str(error.value)
    )


def test_the_metadata_of_a_custom_layer_is_plain_json(tmp_path: Path) -> None:
    model, _, _ = spiral_model(bg.register(leaky_relu_class())(alpha=np.float32(0.5)))
    model.save(tmp_path / "m.npz")
    _, meta = checkpoint.load(tmp_path / "m.npz")
    assert json.loads(json.dumps(meta))["layers"][1]["config"] == {"alpha": 0.5}


# --- schedules: the same registry ----------------------------------------------------------


def test_schedules_are_in_the_one_registry() -> None:
    built_in = ("InverseTimeDecay", "StepDecay", "ExponentialDecay", "CosineDecay", "OneCycle")
    assert registry.names("schedule")[:5] == built_in  # (then those the test modules define)
    assert registry.lookup("cosinedecay", "schedule") is bg.CosineDecay
    with pytest.raises(ValueError, match=r"'Dense' is registered as kind 'layer'"):
        registry.lookup("Dense", "schedule")
    with pytest.raises(ValueError, match=r"SGD: schedule: unknown schedule class 'Dense'"):
        bg.SGD(schedule={"class": "Dense", "config": {}})  # a layer is no schedule


def test_a_schedule_registered_with_register_is_found_by_the_checkpoint_loader(
    backend: bg.Backend, tmp_path: Path
) -> None:
    """Saved under the name @bg.register gave it; Model.load finds the class by that name
    (and by nothing else: with the name gone from the registry, the load is refused)."""

    @bg.register(name="HalvingEvery")
    class Halve(bg.Schedule):
        def __init__(self, every: int) -> None:
            self.every = every

        def __call__(self, learning_rate: float, iteration: int) -> float:
            return learning_rate * 0.5 ** (iteration // self.every)

        def get_config(self) -> dict[str, Any]:
            return {"every": self.every}

    X, y = spiral_data(30, 3, seed=0)
    model = bg.Model([bg.Dense(2, 8, seed=0), bg.ReLU(), bg.Dense(8, 3, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5, schedule=Halve(every=3)))
    model.finalize().train(X, y, epochs=2, batch_size=30, print_every=0, seed=0)  # 3 steps each
    model.save(tmp_path / "m.npz")
    _, meta = checkpoint.load(tmp_path / "m.npz")
    assert meta["optimizer"]["config"]["schedule"] == {"class": "HalvingEvery",
                                                       "config": {"every": 3}}  # fmt: skip
    loaded = bg.Model.load(tmp_path / "m.npz")
    assert loaded.optimizer is not None and type(loaded.optimizer.schedule) is Halve
    # step 6, the next epoch's first: 6 // 3 = 2 halvings; steps 7, 8 too (the row's rate: 8's)
    history = loaded.train(X, y, epochs=1, batch_size=30, print_every=0, seed=0)
    assert history[0]["learning_rate"] == 0.5 / 2**2
    del registry._CLASSES["HalvingEvery"]
    with pytest.raises(bg.CheckpointError, match="unknown schedule class 'HalvingEvery'"):
        bg.Model.load(tmp_path / "m.npz")
