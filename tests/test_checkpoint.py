"""Checkpoints: exact round trips across backends, exact resume, atomic writes, and files
that are damaged, hostile or mismatched."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import checkpoint
from backprop_gpu.datasets import spiral_data

from .test_model import classifier, params
from .tolerances import assert_within, matmul_difference, softmax_difference

X, Y = spiral_data(samples=50, classes=3, seed=0)


def trained(**kwargs: object) -> bg.Model:
    model = classifier(**kwargs)  # type: ignore[arg-type]
    model.train(X, Y, epochs=2, batch_size=32, print_every=0, seed=0)
    return model


def assert_refused_and_model_unchanged(path: Path, match: str) -> None:
    """Both loads refuse ``path`` with ``match``, and load_parameters leaves its model as it
    was."""
    with pytest.raises(bg.CheckpointError, match=match):
        bg.Model.load(path)
    model = classifier()
    before = params(model)
    with pytest.raises(bg.CheckpointError, match=match):
        model.load_parameters(path)
    assert all(np.array_equal(a, b) for a, b in zip(before, params(model), strict=True))


def test_parameters_round_trip_bit_exact(backend: bg.Backend, tmp_path: Path) -> None:
    source = trained()
    source.save_parameters(tmp_path / "p.npz")
    target = classifier()
    target.load_parameters(tmp_path / "p.npz")
    for a, b in zip(params(source), params(target), strict=True):
        assert np.array_equal(a, b) and a.dtype == b.dtype
    assert all(target.backend.owns(lyr.weights) for lyr in target.trainable_layers)


def test_whole_model_round_trip_across_backends(backend: bg.Backend, tmp_path: Path) -> None:
    source = trained(dropout=0.2)
    source.save(tmp_path / "m.npz")
    with bg.use_backend("numpy"):
        loaded = bg.Model.load(tmp_path / "m.npz")  # saved on `backend`, loaded on NumPy
    assert [type(lyr).__name__ for lyr in loaded.layers] == ["Dense", "ReLU", "Dropout", "Dense"]
    assert repr(loaded.optimizer) == repr(source.optimizer)
    assert loaded.optimizer.iterations == source.optimizer.iterations == 10  # 5 a epoch
    assert loaded.epochs_trained == 2 and loaded.layers[0].weight_regularizer_l2 == 1e-4
    for a, b in zip(params(source), params(loaded), strict=True):
        assert np.array_equal(a, b)
    assert np.array_equal(
        bg.to_numpy(source.layers[0].weight_cache), bg.to_numpy(loaded.layers[0].weight_cache)
    )
    on_gpu, on_cpu = bg.to_numpy(source.predict(X)), bg.to_numpy(loaded.predict(X))
    if backend.name == "cupy":  # cuBLAS against NumPy's BLAS: within float32's rounding
        assert_within(on_gpu, on_cpu, prediction_bound(loaded), "predictions GPU vs CPU")
    else:
        np.testing.assert_allclose(on_cpu, on_gpu, rtol=1e-6)


def prediction_bound(model: bg.Model) -> np.ndarray:
    """How far two float32 evaluations of the classifier's predictions for X may differ
    (tests/tolerances.py): each Dense's GEMM bound, carried through ReLU (1-Lipschitz; Dropout
    is off in predict) into the next layer, then through the softmax."""
    dense = [lyr for lyr in model.layers if isinstance(lyr, bg.Dense)]
    assert [type(lyr).__name__ for lyr in model.layers] == ["Dense", "ReLU", "Dropout", "Dense"]
    f32 = np.float32
    inputs = X.astype(f32).astype(np.float64)  # both sides cast X to float32 alike
    d_inputs: np.ndarray | float = 0.0
    for i, layer in enumerate(dense):
        weights, biases = bg.to_numpy(layer.weights), bg.to_numpy(layer.biases)
        d_out = matmul_difference(inputs, weights, f32, da=d_inputs, bias=biases)
        out = inputs @ weights.astype(np.float64) + biases
        inputs, d_inputs = (np.maximum(out, 0), d_out) if i + 1 < len(dense) else (out, d_out)
    logits = inputs
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return softmax_difference(e / e.sum(axis=1, keepdims=True), d_inputs, f32, logits=logits)


def test_resume_equals_an_uninterrupted_run(backend: bg.Backend, tmp_path: Path) -> None:
    """Optimizer state, epoch count, shuffling and dropout masks all continue exactly."""
    straight = classifier(dropout=0.3)
    full = straight.train(X, Y, epochs=4, batch_size=16, print_every=0, seed=9)

    first = classifier(dropout=0.3)
    head = first.train(X, Y, epochs=2, batch_size=16, print_every=0, seed=9)
    first.save(tmp_path / "m.npz")
    resumed = bg.Model.load(tmp_path / "m.npz")
    tail = resumed.train(X, Y, epochs=2, batch_size=16, print_every=0, seed=9)

    assert head + tail == full
    for a, b in zip(params(straight), params(resumed), strict=True):
        assert np.array_equal(a, b)


def test_save_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.npz"
    model = trained()
    model.save(path)
    before = path.read_bytes()

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(checkpoint.np, "savez", crash)
    model.train(X, Y, epochs=1, print_every=0)
    with pytest.raises(KeyboardInterrupt):
        model.save(path)
    assert path.read_bytes() == before  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]  # no temporary file left
    bg.Model.load(path)


def test_truncated_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(bg.CheckpointError, match="not a readable checkpoint"):
        bg.Model.load(path)


def test_altered_numbers_are_caught_by_the_checksum(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["layers.0.weights"] = arrays["layers.0.weights"] + np.float32(1e-3)
    np.savez(path, **arrays)  # a well-formed file whose numbers no longer match
    assert_refused_and_model_unchanged(path, "checksum mismatch")


def test_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "plain.npz").write_bytes(_npz({"weights": np.ones(3)}))
    with pytest.raises(bg.CheckpointError, match="no __meta__ entry"):
        bg.Model.load(tmp_path / "plain.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(bg.CheckpointError, match="not a readable checkpoint"):
        bg.Model.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        bg.Model.load(tmp_path / "missing.npz")


def test_mismatched_architecture_leaves_the_model_unchanged(tmp_path: Path) -> None:
    trained().save_parameters(tmp_path / "p.npz")
    other = bg.Model([bg.Dense(2, 16, seed=0), bg.ReLU(), bg.Dense(16, 3, seed=1)])
    other.set(loss=bg.SoftmaxCrossEntropy()).finalize()
    before = params(other)
    with pytest.raises(bg.CheckpointError, match=r"layers.0.weights has shape \(2, 32\)"):
        other.load_parameters(tmp_path / "p.npz")
    assert all(np.array_equal(a, b) for a, b in zip(before, params(other), strict=True))

    deeper = bg.Model([bg.Dense(2, 32), bg.ReLU(), bg.Dense(32, 3), bg.ReLU(), bg.Dense(3, 3)])
    deeper.set(loss=bg.SoftmaxCrossEntropy()).finalize()
    with pytest.raises(bg.CheckpointError, match="missing array 'layers.4.weights'"):
        deeper.load_parameters(tmp_path / "p.npz")


def test_parameters_file_is_not_a_whole_model(tmp_path: Path) -> None:
    trained().save_parameters(tmp_path / "p.npz")
    with pytest.raises(bg.CheckpointError, match="not a whole model; use load_parameters"):
        bg.Model.load(tmp_path / "p.npz")


def test_unknown_layer_class_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    arrays, meta = checkpoint.load(path)
    meta["layers"][1]["class"] = "Conv2D"
    checkpoint.save(path, arrays, meta)
    with pytest.raises(bg.CheckpointError) as error:
        bg.Model.load(path)
    assert "cannot rebuild layers[1] (Conv2D): unknown layer class 'Conv2D': if it is your " \
        "own, decorate it with @bg.register and import it before loading (registered " \
        "layers: " in str(error.value)  # fmt: skip
    assert "Dense" in str(error.value) and "Adam" not in str(error.value)


def test_checkpoint_metadata_is_plain_json(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    with zipfile.ZipFile(path) as z:
        assert "__meta__.npy" in z.namelist()
    with np.load(path, allow_pickle=False) as data:
        meta = json.loads(str(data["__meta__"]))
    assert meta["format"] == checkpoint.FORMAT and meta["kind"] == "model"
    assert meta["optimizer"]["class"] == "Adam" and meta["epochs_trained"] == 2


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def test_bad_optimizer_arrays_are_refused_before_anything_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    arrays, meta = checkpoint.load(path)
    cases = {
        "optimizer.0.weight_cache": np.ones((1, 3), np.float32),  # wrong shape
        "optimizer.7.weight_cache": np.ones((2, 32), np.float32),  # no such layer
        "optimizer.0.weights": np.ones((2, 32), np.float32),  # not a state slot
    }
    for key, value in cases.items():
        checkpoint.save(path, {**arrays, key: value}, meta)
        with pytest.raises(bg.CheckpointError, match="has shape|no matching slot"):
            bg.Model.load(path)
    del meta["epochs_trained"]
    checkpoint.save(path, arrays, meta)
    with pytest.raises(bg.CheckpointError, match="the metadata has no epochs_trained"):
        bg.Model.load(path)


def test_load_parameters_into_a_model_not_finalized(tmp_path: Path) -> None:
    trained().save_parameters(tmp_path / "p.npz")
    model = bg.Model([bg.Dense(2, 32), bg.ReLU(), bg.Dense(32, 3)])
    model.load_parameters(tmp_path / "p.npz")
    assert bg.to_numpy(model.layers[0].weights).std() > 0.05  # the trained he-init weights
