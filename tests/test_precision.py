"""Precision policies (backprop_gpu.precisions): the policy API, the loss scaler's state
machine, mixed float16 / bfloat16 training with float32 master weights, and checkpoints of
mixed runs. The mixed policies run on NumPy; the array-api-strict stand-in has neither
float16 nor bfloat16 (the array API standard defines no 16-bit floats), so there the test
is that the policy is refused with that reason."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import precisions
from backprop_gpu.datasets import load_digits
from backprop_gpu.state import walk

from .conftest import gpu_only

ml_dtypes = pytest.importorskip("ml_dtypes")  # (the bf16 extra)
MIXED = ["mixed16", "mixed_bf16"]


def digits_model(seed: int = 0, precision: str = "float32") -> bg.Model:
    """examples/train_digits.py's model (>= 0.97 test accuracy in float32 at 60 epochs)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    return example.build(seed, precision)  # type: ignore[no-any-return]


def host_params(model: bg.Model) -> list[np.ndarray]:
    return [
        bg.to_numpy(s.value) for s in walk(model.layers, model.optimizer) if s.value is not None
    ]


# --- the policy ----------------------------------------------------------------------------


def test_default_is_float32_and_set_precision_and_the_scope_change_it() -> None:
    assert bg.get_precision() == "float32"
    assert bg.Model([bg.Dense(2, 2)]).precision == "float32"
    with bg.precision("mixed_bf16"):
        assert bg.Model([bg.Dense(2, 2)]).precision == "mixed_bf16"
        assert bg.Model([bg.Dense(2, 2)], precision="mixed16").precision == "mixed16"
    assert bg.get_precision() == "float32"
    bg.set_precision("tf32")
    try:
        assert bg.Model([bg.Dense(2, 2)]).precision == "tf32"
    finally:
        bg.set_precision("float32")
    model = bg.Model([bg.Dense(2, 2)]).set(precision="mixed16")
    assert model.set(loss=bg.MeanSquaredError()).precision == "mixed16"  # (kept)


@pytest.mark.parametrize(
    "call",
    [
        lambda: bg.Model([bg.Dense(2, 2)], precision="fp16"),
        lambda: bg.Model([bg.Dense(2, 2)]).set(precision="fp16"),
        lambda: bg.set_precision("fp16"),
        lambda: bg.precision("fp16").__enter__(),
    ],
)
def test_an_unknown_policy_lists_the_valid_ones(call: object) -> None:
    with pytest.raises(ValueError, match="float32, tf32, mixed16, mixed_bf16, got 'fp16'"):
        call()  # type: ignore[operator]
    assert bg.get_precision() == "float32"


def test_set_refuses_a_bad_policy_before_changing_anything() -> None:
    model = bg.Model([bg.Dense(2, 2)])
    with pytest.raises(ValueError, match="Model.set: precision"):
        model.set(loss=bg.MeanSquaredError(), precision="half")
    assert model.loss is None and model.precision == "float32"


def test_mixed_bf16_without_ml_dtypes_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)  # (import fails)
    model = bg.Model([bg.Dense(2, 2)], precision="mixed_bf16").set(loss=bg.MeanSquaredError())
    with pytest.raises(ValueError, match=r"ml_dtypes .*bf16 extra"):
        model.finalize()


def test_the_stand_in_refuses_the_mixed_policies_saying_why(backend: bg.Backend) -> None:
    if backend.name != "array_api_strict":
        pytest.skip(f"{backend.name} runs the mixed policies (the tests below)")
    for name in MIXED:
        model = bg.Model([bg.Dense(2, 2)], precision=name).set(loss=bg.MeanSquaredError())
        why = "array API has no"
        with pytest.raises(ValueError, match=f"{name}.*{backend.name} backend: .*{why}"):
            model.finalize()


def test_tf32_on_numpy_is_float32_with_a_warning_once(backend: bg.Backend) -> None:
    X = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    models = []
    precisions._tf32_warned.clear()
    for name in ("float32", "tf32", "tf32"):
        model = bg.Model([bg.Dense(3, 4, seed=0), bg.ReLU(), bg.Dense(4, 2, seed=1)])
        model.set(precision=name, loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.finalize()
        assert len(caught) == (name == "tf32" and len(models) == 1)
        model.train(X, y, epochs=3, batch_size=8, print_every=0, seed=0)
        models.append(host_params(model))
    for a, b in zip(models[0], models[1], strict=True):
        np.testing.assert_array_equal(a, b)


class FakeLinalg:
    """CuPy's ``_routines_linalg`` compute-type switch, recording each setting."""

    COMPUTE_TYPE_DEFAULT, COMPUTE_TYPE_TF32 = 1, 7

    def __init__(self) -> None:
        self.current, self.calls = self.COMPUTE_TYPE_DEFAULT, []

    def get_compute_type(self, dtype: object) -> int:
        assert dtype is np.float32
        return self.current

    def set_compute_type(self, dtype: object, compute_type: int) -> None:
        assert dtype is np.float32
        self.current = compute_type
        self.calls.append(compute_type)


def test_tf32_sets_cupys_compute_type_for_the_passes_and_puts_it_back() -> None:
    """``TF32`` (what a tf32 model gets on an Ampere or later GPU) sets CuPy's float32
    compute type to TF32 around each step and each evaluate / predict, once for nested
    blocks, and puts the previous one back after, also when the pass raises. (Here on NumPy,
    with CuPy's switch recorded: the values are float32's.)"""
    X = np.random.default_rng(0).random((40, 3)).astype(np.float32)
    y = np.arange(40) % 2
    linalg = FakeLinalg()
    seen: list[int] = []

    class Spy(bg.Callback):
        def on_batch_end(self, batch: int, logs: dict | None = None) -> None:
            seen.append(linalg.current)

    model = bg.Model([bg.Dense(3, 4, seed=0), bg.ReLU(), bg.Dense(4, 2, seed=1)])
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5)).finalize()
    model._policy = precisions.TF32(model.backend, linalg)
    plain = bg.Model([bg.Dense(3, 4, seed=0), bg.ReLU(), bg.Dense(4, 2, seed=1)])
    plain.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5)).finalize()
    for m in (model, plain):
        m.train(X, y, epochs=2, batch_size=10, print_every=0, seed=0,
                validation_data=(X, y), callbacks=[Spy()] if m is model else None)  # fmt: skip
    # 8 steps, each set and put back; the 2 validations' and this evaluate's once each
    model.evaluate(X, y, batch_size=10)
    assert linalg.calls == [7, 1] * 11 and linalg.current == 1
    assert seen == [1] * 8  # (between the steps, the default again)
    for a, b in zip(host_params(model), host_params(plain), strict=True):
        np.testing.assert_array_equal(a, b)
    linalg.calls.clear()
    with model._policy.computing(model), model._policy.computing(model):
        assert linalg.current == 7
    assert linalg.calls == [7, 1]
    with pytest.raises(RuntimeError, match="boom"), model._policy.computing(model):
        raise RuntimeError("boom")
    assert linalg.current == 1


class FakeDevice:
    def __init__(self, capability: str) -> None:
        self.id, self.compute_capability = 0, capability


class FakeCupy:
    name = "cupy"

    def __init__(self, capability: str) -> None:
        self.device = FakeDevice(capability)


def test_tf32_needs_a_gpu_of_compute_capability_8_and_a_float32_model(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert precisions.tf32_capable(FakeCupy("75")) == (
        "GPU 0 has compute capability 7.5, and TF32 tensor cores need 8.0 (Ampere) or later"
    )
    assert precisions.tf32_capable(FakeCupy("90"), np.float64) == (
        "the model computes in float64, and TF32 stands in for float32"
    )
    assert "numpy backend has no TF32" in str(precisions.tf32_capable(bg.get_backend()))
    # with CuPy's switch (CuPy installed, the GPU faked): Ampere and later run TF32
    _routines_linalg = pytest.importorskip("cupy._core._routines_linalg")
    assert precisions.tf32_capable(FakeCupy("80")) is None
    assert precisions.tf32_capable(FakeCupy("90")) is None
    # a CuPy whose private switch moved: float32 with that reason, not an ImportError

    monkeypatch.delattr(_routines_linalg, "set_compute_type")
    assert precisions.tf32_capable(FakeCupy("90")) == (
        "this CuPy has no compute-type switch (cupy._core._routines_linalg)"
    )


def test_the_tf32_warning_is_given_once_per_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    precisions._tf32_warned.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for why in ("reason a", "reason a", "reason b"):
            precisions._warn_tf32(why)
    assert [str(w.message) for w in caught] == [
        "precision 'tf32' computes in float32 here: reason a",
        "precision 'tf32' computes in float32 here: reason b",
    ]


def test_interleaved_tf32_passes_keep_tf32_until_the_last_ends_then_put_float32_back() -> None:
    """CuPy's switch is process-wide: two models' tf32 blocks that overlap (two threads)
    keep TF32 on until the last one ends, which puts back the type from before the first."""
    linalg = FakeLinalg()
    a = precisions.TF32(bg.get_backend(), linalg)
    b = precisions.TF32(bg.get_backend(), linalg)
    first, second = a.computing(None), b.computing(None)
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert linalg.current == linalg.COMPUTE_TYPE_TF32  # (b still runs)
    second.__exit__(None, None, None)
    assert linalg.current == linalg.COMPUTE_TYPE_DEFAULT and linalg.calls == [7, 1]


def test_mixed_bf16_is_refused_on_a_gpu_before_ampere() -> None:
    with pytest.raises(ValueError, match=r"'mixed_bf16' cannot run here: GPU 0 has compute "
                       r"capability 7\.5, and bfloat16 matrix products need 8\.0"):  # fmt: skip
        precisions.compute_dtype("mixed_bf16", FakeCupy("75"), "Model.finalize")
    assert precisions.compute_dtype("mixed_bf16", FakeCupy("80"), "x") == ml_dtypes.bfloat16


def test_evaluate_and_predict_cast_the_weights_once_not_once_a_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = digits_model(precision="mixed16")
    X = np.random.default_rng(0).random((100, 64)).astype(np.float32)
    y = np.arange(100) % 10
    casts: list[tuple[int, ...]] = []
    cast = precisions.Mixed.cast
    monkeypatch.setattr(
        precisions.Mixed, "cast", lambda self, a: casts.append(a.shape) or cast(self, a)
    )
    model.evaluate(X, y, batch_size=10)
    weights = [s for s in casts if s[0] != 10]
    n_params = sum(len(layer.params) for layer in model.trainable_layers)
    assert len(weights) == n_params and casts.count((10, 64)) == 10
    casts.clear()
    model.predict(X, batch_size=25)
    assert len([s for s in casts if s[0] != 25]) == n_params and casts.count((25, 64)) == 4


# --- the loss scaler -----------------------------------------------------------------------


def test_loss_scaler_follows_a_hand_written_trace() -> None:
    scaler = bg.LossScaler(scale=8.0, growth_interval=3)
    steps = [True, True, False, True, True, True, True, False, False]
    # (apply?, scale after, clean steps after, skipped after), worked out by hand
    expected = [(True, 8, 1, 0), (True, 8, 2, 0), (False, 4, 0, 1), (True, 4, 1, 1),
                (True, 4, 2, 1), (True, 8, 0, 1), (True, 8, 1, 1), (False, 4, 0, 2),
                (False, 2, 0, 3)]  # fmt: skip
    for finite, (apply, scale, clean, skipped) in zip(steps, expected, strict=True):
        assert scaler.update(finite) is apply
        assert (scaler.scale, scaler.clean_steps, scaler.skipped) == (scale, clean, skipped)


def test_loss_scaler_caps_at_65504_and_stops_halving_at_min_scale() -> None:
    scaler = bg.LossScaler(scale=2.0**15, growth_interval=1)
    assert scaler.update(True) and scaler.scale == 65504.0
    assert scaler.update(True) and scaler.scale == 65504.0
    low = bg.LossScaler(scale=2.0, min_scale=1.0)
    low.update(False)
    low.update(False)
    assert low.scale == 1.0 and low.skipped == 2


def test_loss_scaler_state_round_trips_and_bad_state_is_refused() -> None:
    a = bg.LossScaler(growth_interval=5)
    for finite in (True, False, True, True):
        a.update(finite)
    b = bg.LossScaler()
    b.set_state(a.get_state())
    assert b.get_state() == a.get_state() == {
        "scale": 2.0**14, "clean_steps": 2, "skipped": 1, "growth_interval": 5
    }  # fmt: skip
    with pytest.raises(ValueError, match="scale must be a finite number > 0, got -1"):
        b.set_state({"scale": -1, "clean_steps": 0, "skipped": 0})
    with pytest.raises(ValueError, match="growth_interval must be an integer >= 1"):
        bg.LossScaler(growth_interval=0)


def test_an_overflowing_step_is_skipped_and_halves_the_scale() -> None:
    X = np.ones((8, 2), np.float32)
    y = np.arange(8) % 2
    model = bg.Model([bg.Dense(2, 2, seed=0)], precision="mixed16")
    schedule = bg.ExponentialDecay(0.5)  # (0.1, then 0.05, ...)
    model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1, schedule=schedule))
    model.finalize()
    scaler = precisions.loss_scaler(model)
    assert scaler is not None and scaler.scale == 2.0**15
    scaler.scale = 2.0**40  # float16 overflows: the scaled gradient is inf
    before = host_params(model)
    model.train(X, y, epochs=1, batch_size=8, print_every=0)
    assert model.optimizer is not None and model.optimizer.iterations == 0
    assert model.optimizer.current_learning_rate == 0.1
    assert scaler.scale == 2.0**39 and scaler.skipped == 1 and scaler.clean_steps == 0
    for a, b in zip(before, host_params(model), strict=True):
        np.testing.assert_array_equal(a, b)
    scaler.scale = 2.0**10
    model.train(X, y, epochs=1, batch_size=8, print_every=0)
    assert model.optimizer.iterations == 1 and scaler.clean_steps == 1
    assert model.optimizer.current_learning_rate == pytest.approx(0.1)


def underflow_run(scale: float | None, steps: int = 8) -> list[float]:
    """A float16 regression whose loss gradients (5e-3 / 512 outputs / 1024 samples, about
    1e-8) are below float16's smallest subnormal (6e-8): unscaled, they flush to zero."""
    n, outputs = 1024, 512
    X = np.ones((n, 1), np.float32)
    y = np.full((n, outputs), 5e-3, np.float32)
    precision = "float32" if scale is None else "mixed16"
    layer = bg.Dense(1, outputs, weights=np.zeros((1, outputs), np.float32))
    model = bg.Model([layer], precision=precision)
    model.set(loss=bg.MeanSquaredError(), optimizer=bg.SGD(64.0), accuracy=bg.RegressionAccuracy())
    model.finalize()
    scaler = precisions.loss_scaler(model)
    if scaler is not None:
        scaler.scale, scaler.growth_interval = scale, 10**9
    history = model.train(X, y, epochs=steps, batch_size=n, print_every=0, shuffle=False)
    return [row["loss"] for row in history]


def test_float16_gradients_that_underflow_learn_with_scaling_and_stall_without() -> None:
    assert np.float16(-2 * 5e-3 / (512 * 1024)) == 0  # (the premise)
    reference = underflow_run(None)
    scaled = underflow_run(2.0**15)
    unscaled = underflow_run(1.0)
    assert reference[-1] < 1e-3 * reference[0]  # float32 learns
    assert scaled[-1] < 1e-3 * scaled[0]
    np.testing.assert_allclose(scaled[:4], reference[:4], rtol=0.05)  # (then float16 rounds)
    assert unscaled == [unscaled[0]] * len(unscaled) and unscaled[0] == pytest.approx(2.5e-5)


# --- mixed training ------------------------------------------------------------------------


def test_softmax_and_loss_are_float32_at_logits_of_1e4() -> None:
    weights = np.array([[1e4, 0.0, -1e4], [0.0, 3.0, 0.0]], np.float32)
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    y = np.array([0, 2, 1])
    results = {}
    for name in ["float32", *MIXED]:
        model = bg.Model([bg.Dense(2, 3, weights=weights)], precision=name)
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(1e-6)).finalize()
        results[name] = model.evaluate(X, y)["loss"]
        model.train(X, y, epochs=1, batch_size=3, print_every=0)  # finite: no error
        assert all(np.isfinite(a).all() for a in host_params(model))
    # per row, p clipped to [1e-7, 1 - 1e-7] in float32 (in float16 the clip would be 4.9e-4,
    # so the loss is float32's): -log(1 - 1e-7), -log(1e-7), log(1 + 2 e^-3)
    eps = 1e-7
    expected = (-np.log(np.float32(1 - eps)) - np.log(eps) + np.log1p(2 * np.exp(-3.0))) / 3
    for name, loss in results.items():
        assert loss == pytest.approx(expected, rel=1e-6), name


@pytest.mark.parametrize("name", MIXED)
def test_evaluate_and_predict_run_in_the_compute_dtype(name: str) -> None:
    X = load_digits()[0]
    model = digits_model(precision=name)
    reference = digits_model(precision="float32")
    probabilities = bg.to_numpy(model.predict(X[:50]))
    assert probabilities.dtype == np.float32
    compute = np.float16 if name == "mixed16" else ml_dtypes.bfloat16
    assert model.layers[0].output.dtype == model.layers[1].output.dtype == compute
    assert model.layers[0].weights.dtype == np.float32  # (back to the master)
    expected = bg.to_numpy(reference.predict(X[:50]))
    tolerance = 2e-2 if name == "mixed_bf16" else 3e-3
    np.testing.assert_allclose(probabilities, expected, atol=tolerance)
    assert not np.array_equal(probabilities, expected)  # (really computed in 16 bits)


def test_a_softmax_layer_runs_in_float32_in_training_and_inference() -> None:
    X, y, _, _ = load_digits()
    layers = [bg.Dense(64, 32, seed=0), bg.ReLU(), bg.Dense(32, 10, seed=1), bg.Softmax()]
    model = bg.Model(layers, precision="mixed16")
    model.set(loss=bg.CategoricalCrossEntropy(), optimizer=bg.Adam()).finalize()
    model.train(X[:256], y[:256], epochs=2, batch_size=64, print_every=0, seed=0)
    assert layers[-1].inputs.dtype == layers[-1].output.dtype == np.float32
    assert layers[2].output.dtype == np.float16
    probabilities = bg.to_numpy(model.predict(X[:20]))
    assert layers[-1].inputs.dtype == probabilities.dtype == np.float32
    assert layers[2].output.dtype == np.float16
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)  # (float16: 1e-3)


@pytest.fixture(scope="module")
def digits_runs() -> dict[str, tuple[float, bg.Model]]:
    X, y, X_test, y_test = load_digits()
    runs = {}
    with bg.use_backend("numpy"):
        for name in ["float32", *MIXED]:
            model = digits_model(precision=name)
            model.train(X, y, epochs=60, batch_size=32, print_every=0, seed=0)
            runs[name] = (model.evaluate(X_test, y_test)["accuracy"], model)
    return runs


@pytest.mark.parametrize("name", MIXED)
def test_mixed_digits_reach_float32_accuracy(name: str, digits_runs: dict) -> None:
    float32, _ = digits_runs["float32"]
    accuracy, _ = digits_runs[name]
    assert float32 >= 0.97
    assert accuracy >= 0.97 and abs(accuracy - float32) <= 0.005, (accuracy, float32)


@pytest.mark.parametrize("name", MIXED)
def test_master_weights_and_optimizer_state_stay_float32(name: str, digits_runs: dict) -> None:
    _, model = digits_runs[name]
    slots = [s for s in walk(model.layers, model.optimizer) if s.value is not None]
    assert len(slots) == 3 * 2 * 3  # (3 Dense, 2 parameters, each with Adam's 2 states)
    assert all(s.value.dtype == np.float32 for s in slots), [s.key for s in slots]
    grads = [getattr(layer, "d" + p) for layer in model.trainable_layers for p in layer.params]
    assert all(g.dtype == np.float32 for g in grads)
    assert model.optimizer.iterations == 60 * 45  # (no step skipped on digits)


def test_clipping_applies_to_the_unscaled_gradient() -> None:
    X, y, _, _ = load_digits()
    updates = {}
    for name in ("float32", "mixed16"):
        model = bg.Model([bg.Dense(64, 10, init="he", seed=0, weight_regularizer_l2=1e-2)],
                         precision=name)  # fmt: skip
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.5, clip_norm=5.0))
        model.finalize()
        before = host_params(model)[0]
        model.train(X[:64], y[:64], epochs=1, batch_size=64, print_every=0, shuffle=False)
        updates[name] = host_params(model)[0] - before
        grad_norm = np.sqrt(sum((bg.to_numpy(g) ** 2).sum() for g in (
            model.layers[0].dweights, model.layers[0].dbiases)))  # fmt: skip
        assert 0.1 < grad_norm < 5.0  # (not clipped; the scaled gradient would be)
    np.testing.assert_allclose(updates["mixed16"], updates["float32"], atol=2e-3)
    assert np.abs(updates["float32"]).max() > 1e-2


# --- checkpoints ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", MIXED)
def test_a_mixed_run_resumes_exactly_from_its_checkpoint(name: str, tmp_path: Path) -> None:
    X, y, _, _ = load_digits()
    X, y = X[:400], y[:400]
    whole = digits_model(precision=name)
    scaler = precisions.loss_scaler(whole)
    if scaler is not None:
        scaler.growth_interval = 7  # (the scale changes within the run)
    whole.train(X, y, epochs=4, batch_size=32, print_every=0, seed=3)
    first = digits_model(precision=name)
    if scaler is not None:
        precisions.loss_scaler(first).growth_interval = 7  # type: ignore[union-attr]
    first.train(X, y, epochs=2, batch_size=32, print_every=0, seed=3)
    first.save(tmp_path / "run.npz")
    resumed = bg.Model.load(tmp_path / "run.npz")
    assert resumed.precision == name
    if scaler is not None:
        assert (
            precisions.loss_scaler(resumed).get_state()
            == precisions.loss_scaler(  # type: ignore[union-attr]
                first
            ).get_state()
        )  # type: ignore[union-attr]
    resumed.train(X, y, epochs=2, batch_size=32, print_every=0, seed=3)
    for a, b in zip(host_params(whole), host_params(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    if scaler is not None:
        assert precisions.loss_scaler(resumed).get_state() == scaler.get_state()  # type: ignore[union-attr]
        assert scaler.scale == 65504.0  # (doubled at step 7: 2**16 capped)


def test_a_float32_checkpoint_loads_into_a_mixed_model(tmp_path: Path) -> None:
    X, y, X_test, y_test = load_digits()
    trained = digits_model()
    trained.train(X, y, epochs=20, batch_size=32, print_every=0, seed=0)
    trained.save(tmp_path / "f32.npz")
    float32 = trained.evaluate(X_test, y_test)["accuracy"]
    loaded = bg.Model.load(tmp_path / "f32.npz")
    assert loaded.precision == "float32"
    loaded.set(precision="mixed16").finalize()
    into = digits_model(seed=5, precision="mixed_bf16")
    into.load_parameters(tmp_path / "f32.npz")
    for model in (loaded, into):
        assert abs(model.evaluate(X_test, y_test)["accuracy"] - float32) <= 0.005
    loaded.train(X, y, epochs=1, batch_size=32, print_every=0, seed=0)
    assert all(a.dtype == np.float32 for a in host_params(loaded))


def test_a_checkpoint_with_an_unknown_policy_is_refused(tmp_path: Path) -> None:
    model = digits_model()
    model.precision = "float8"
    model.save(tmp_path / "bad.npz")
    with pytest.raises(bg.CheckpointError, match="bad.npz: precision must be one of"):
        bg.Model.load(tmp_path / "bad.npz")


def test_a_checkpoint_with_a_bad_loss_scaler_state_is_refused(tmp_path: Path) -> None:
    model = digits_model(precision="mixed16")
    scaler = precisions.loss_scaler(model)
    assert scaler is not None
    scaler.clean_steps = -3  # (as a damaged file would hold it)
    model.save(tmp_path / "bad.npz")
    with pytest.raises(bg.CheckpointError, match="loss_scaler is not a loss scaler's state"):
        bg.Model.load(tmp_path / "bad.npz")
    plain = digits_model()
    plain.save(tmp_path / "plain.npz")
    assert bg.Model.load(tmp_path / "plain.npz")._policy is None


# --- on the GPU ------------------------------------------------------------------------------


@gpu_only
@pytest.mark.parametrize("name", MIXED)
def test_mixed_digits_on_cupy_reach_float32_accuracy_with_float32_masters(name: str) -> None:
    """On CuPy the mixed step runs the 16-bit CUDA kernels (bias + ReLU, its backward with
    the bias gradient, the unscale into the float32 gradients): digits within 0.5 points of
    float32's accuracy on the same GPU, every parameter and optimizer state float32."""
    X, y, X_test, y_test = load_digits()
    accuracies = {}
    with bg.use_backend("cupy"):
        for policy in ("float32", name):
            model = digits_model(precision=policy)
            model.train(X, y, epochs=60, batch_size=32, print_every=0, seed=0)
            accuracies[policy] = model.evaluate(X_test, y_test)["accuracy"]
            assert all(a.dtype == np.float32 for a in host_params(model))
    assert accuracies[name] >= 0.97
    assert accuracies[name] >= accuracies["float32"] - 0.005


@gpu_only
def test_tf32_on_cupy_sets_tf32_gemms_where_the_gpu_has_them() -> None:
    from cupy._core import _routines_linalg as linalg

    with bg.use_backend("cupy") as backend:
        precisions._tf32_warned.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = digits_model(precision="tf32")
        why = precisions.tf32_capable(backend)
        if why is not None:  # an older GPU: float32, with a warning saying why
            assert model._policy is None and why in str(caught[0].message)
            return
        assert not caught and isinstance(model._policy, precisions.TF32)
        xp = backend.xp
        a = xp.asarray(np.random.default_rng(0).standard_normal((512, 512), np.float32))
        exact = bg.to_numpy(a.astype(xp.float64) @ a.astype(xp.float64))
        before = linalg.get_compute_type(np.float32)
        plain = bg.to_numpy(a @ a)
        with model._policy.computing(model):
            assert linalg.get_compute_type(np.float32) == linalg.COMPUTE_TYPE_TF32
            fast = bg.to_numpy(a @ a)
        assert linalg.get_compute_type(np.float32) == before
        error = lambda r: float(np.abs(r - exact).max() / np.abs(exact).max())  # noqa: E731
        assert error(plain) < 1e-5 < error(fast) < 1e-2  # TF32: a 10-bit mantissa's rounding


@gpu_only
def test_mixed16_on_cupy_skips_overflowing_steps_and_resumes_exactly(tmp_path: Path) -> None:
    """On CuPy the loss scaler's decision comes from the unscale kernels' one device flag:
    from a scale of 2**30 the first steps overflow and are skipped (no update, no
    iteration), and a checkpoint taken midway resumes to the uninterrupted run's bits."""
    X, y, _, _ = load_digits()
    X, y = X[:400], y[:400]
    with bg.use_backend("cupy"):

        def model() -> bg.Model:
            m = digits_model(precision="mixed16")
            scaler = precisions.loss_scaler(m)
            assert scaler is not None
            scaler.scale, scaler.growth_interval = 2.0**30, 7
            return m

        whole = model()
        whole.train(X, y, epochs=4, batch_size=32, print_every=0, seed=3)
        scaler = precisions.loss_scaler(whole)
        assert scaler is not None and scaler.skipped >= 10  # 2**30 down to 2**16 or less
        assert whole.optimizer.iterations == 4 * 13 - scaler.skipped
        first = model()
        first.train(X, y, epochs=2, batch_size=32, print_every=0, seed=3)
        first.save(tmp_path / "run.npz")
        resumed = bg.Model.load(tmp_path / "run.npz")
        resumed.train(X, y, epochs=2, batch_size=32, print_every=0, seed=3)
        for a, b in zip(host_params(whole), host_params(resumed), strict=True):
            np.testing.assert_array_equal(a, b)
        assert precisions.loss_scaler(resumed).get_state() == scaler.get_state()  # type: ignore[union-attr]
