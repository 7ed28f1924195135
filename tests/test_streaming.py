"""Data streamed from the host (``Model.train(data_on_device=False)``, memory-mapped files)
train exactly as data copied to the device: the same shuffle, bit for bit, on every backend,
with a partial last batch, Dropout, validation, one-hot and regression targets, a resume and
MPI ranks; the checks of a memory-mapped file run in chunks with the in-memory messages;
``data_on_device=None`` decides by the device's free memory; on the emulated CuPy the batches
come through pinned buffers copied on a second stream, ordered by events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import _checks, inputs, model_io
from benchmarks.trace import EmulatedCupy, EmulatedCupyBackend, tally

RNG = np.random.default_rng(4)
X = RNG.standard_normal((45, 5))  # float64: cast to the model's float32 batch by batch
Y = RNG.integers(0, 3, 45).astype(np.int32)
X_VAL, Y_VAL = RNG.standard_normal((11, 5)), RNG.integers(0, 3, 11)


def build(dropout: bool = False, loss: Any = None, outputs: int = 3) -> bg.Model:
    layers = [bg.Dense(5, 16, seed=0, init="he"), bg.ReLU()]
    if dropout:
        layers.append(bg.Dropout(0.3, seed=9))
    model = bg.Model([*layers, bg.Dense(16, outputs, seed=1)])
    model.set(loss=loss or bg.SoftmaxCrossEntropy(), optimizer=bg.Adam(0.02))
    if not isinstance(model.loss, bg.SoftmaxCrossEntropy):
        model.set(accuracy=bg.RegressionAccuracy())
    return model.finalize()


def train(model: bg.Model, X: Any, y: Any, **kwargs: Any) -> tuple[list[Any], dict[str, Any]]:
    settings = {"epochs": 3, "batch_size": 16, "print_every": 0, "seed": 5} | kwargs
    history = model.train(X, y, **settings)
    return history, {k: bg.to_numpy(v) for k, v in model_io.host_arrays(model, True).items()}


def assert_same_run(
    a: tuple[list[Any], dict[str, Any]], b: tuple[list[Any], dict[str, Any]]
) -> None:
    assert a[0] == b[0]  # every loss and accuracy, bit for bit
    assert a[1].keys() == b[1].keys()
    for key in a[1]:
        np.testing.assert_array_equal(a[1][key], b[1][key], err_msg=key)


def memmaps(tmp_path: Path, **arrays: np.ndarray) -> list[np.ndarray]:
    out = []
    for name, a in arrays.items():
        np.save(tmp_path / f"{name}.npy", a)
        out.append(np.load(tmp_path / f"{name}.npy", mmap_mode="r"))
    return out


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
def test_streamed_training_equals_in_memory(
    backend: bg.Backend, tmp_path: Path, shuffle: bool, dropout: bool
) -> None:
    """45 samples in batches of 16 (a last batch of 13), float64 data cast per batch, int32
    labels, validation streamed too: the same history and state as the data copied once."""
    val = (X_VAL, Y_VAL)
    copied = train(build(dropout), X, Y, shuffle=shuffle, validation_data=val,
                   data_on_device=True)  # fmt: skip
    streamed = train(build(dropout), X, Y, shuffle=shuffle, validation_data=val,
                     data_on_device=False)  # fmt: skip
    assert_same_run(copied, streamed)
    X_map, y_map, xv_map, yv_map = memmaps(tmp_path, X=X, y=Y, xv=X_VAL, yv=Y_VAL)
    mapped = train(build(dropout), X_map, y_map, shuffle=shuffle, validation_data=(xv_map, yv_map),
                   data_on_device=False)  # fmt: skip
    assert_same_run(copied, mapped)
    assert len(copied[0]) == 3 and "val_loss" in copied[0][0]


def test_one_hot_column_and_regression_targets_stream_alike(backend: bg.Backend) -> None:
    one_hot = np.eye(3)[Y]
    column = Y.reshape(-1, 1)
    for y in (one_hot, column):
        assert_same_run(train(build(), X, y, data_on_device=True),
                        train(build(), X, y, data_on_device=False))  # fmt: skip
    targets = X[:, :2] * 0.5 + 0.1  # (45, 2) float64 targets
    for t in (targets, targets[:, 0]):
        outputs = 1 if t.ndim == 1 else 2
        copied = train(build(loss=bg.MeanSquaredError(), outputs=outputs), X, t,
                       data_on_device=True)  # fmt: skip
        streamed = train(build(loss=bg.MeanSquaredError(), outputs=outputs), X, t,
                         data_on_device=False)  # fmt: skip
        assert_same_run(copied, streamed)


def test_a_resumed_streamed_run_equals_the_uninterrupted_one(
    backend: bg.Backend, tmp_path: Path
) -> None:
    X_map, y_map = memmaps(tmp_path, X=X, y=Y)
    whole = train(build(True), X, Y, epochs=4, data_on_device=True)
    first = build(True)
    train(first, X_map, y_map, epochs=2, data_on_device=False)
    first.save(tmp_path / "half.npz")
    resumed = bg.Model.load(tmp_path / "half.npz")
    rest = train(resumed, X_map, y_map, epochs=2, data_on_device=False)
    assert whole[0][2:] == rest[0]
    for key in whole[1]:
        np.testing.assert_array_equal(whole[1][key], rest[1][key], err_msg=key)


def test_evaluate_streams_alike(backend: bg.Backend, tmp_path: Path) -> None:
    model = build()
    train(model, X, Y)
    (X_map, y_map) = memmaps(tmp_path, X=X, y=Y)
    expected = model.evaluate(X, Y, batch_size=7, data_on_device=True)
    assert model.evaluate(X_map, y_map, batch_size=7) == expected
    assert model.evaluate(X, Y, batch_size=7, data_on_device=False) == expected


# --- NumPy: a memory-mapped file is used in place, each batch in the same buffer ---------


def test_numpy_streams_a_memmap_without_copying_it(tmp_path: Path) -> None:
    X_map, y_map = memmaps(tmp_path, X=X.astype(np.float32), y=Y)
    with bg.use_backend("numpy"):
        model = build(dropout=True)
        data = inputs.prepare(model, X_map, y_map, "Model.train")
        assert isinstance(data, inputs.HostData)
        assert np.shares_memory(data.X, X_map) and np.shares_memory(data.y, y_map)
        assert isinstance(inputs.prepare(model, X, Y, "Model.train"), inputs.DeviceData)
        seen: list[int] = []
        callback = bg.LambdaCallback(
            on_batch_end=lambda step, logs: seen.append(model.layers[0].inputs.ctypes.data)
        )
        model.train(X_map, y_map, epochs=2, batch_size=16, print_every=0, callbacks=[callback])
    assert len(seen) == 6 and len(set(seen)) == 1  # one reused buffer, partial batch too


def test_the_checks_of_a_memmap_run_in_chunks_with_the_same_messages(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """NaN/Inf counts and the labels' range, first bad index and count are those of the
    whole array when every chunk is 2 rows (so no scan holds more than that)."""
    bad_x = X.copy()
    bad_x[[3, 30, 31], 1] = [np.nan, np.inf, np.nan]
    bad_y = Y.copy()
    bad_y[[7, 40]] = [5, -1]
    one_hot = np.eye(3)[Y] * 1.0
    one_hot[[2, 44]] = 0.5
    cases = [(bad_x, Y), (X, bad_y), (X, one_hot)]
    with bg.use_backend("numpy"):
        model = build()
        expected = []
        for case in cases:
            with pytest.raises(ValueError) as error:
                model.train(*case, print_every=0)
            expected.append(str(error.value))
        assert "3 NaN or infinite values (2 NaN, 1 infinite)" in expected[0]
        assert "values from -1 to 5 (2 outside, the first y_true[7] = 5)" in expected[1]
        assert "2 rows are not, the first y_true[2]" in expected[2]
        monkeypatch.setattr(_checks, "CHUNK_BYTES", 2 * 5 * 8)  # (2 rows of X)
        scanned: list[int] = []
        original = _checks.host_chunks

        def counting(a: np.ndarray, chunk_bytes: int = 0) -> Any:
            for start, part in original(a, _checks.CHUNK_BYTES):
                scanned.append(part.nbytes)
                yield start, part

        monkeypatch.setattr(_checks, "host_chunks", counting)
        for (x, y), message in zip(cases, expected, strict=True):
            x_map, y_map = memmaps(tmp_path, X=x, y=y)
            with pytest.raises(ValueError) as error:
                model.train(x_map, y_map, print_every=0)
            assert str(error.value) == message
        assert scanned and max(scanned) <= 2 * 5 * 8


# --- where the data go ---------------------------------------------------------------------


def test_data_on_device_none_weighs_the_free_device_memory() -> None:
    emulated = EmulatedCupyBackend()
    with bg.use_backend(emulated):
        model = build()
        need = inputs.data_bytes(model, X, Y)
        assert need == 45 * 5 * 4 + 45 * 8
        emulated.xp.memory, emulated.xp.pool_free = (2 * need - 100, 1 << 30), 0
        assert isinstance(inputs.prepare(model, X, Y, "w"), inputs.HostData)  # half < need
        emulated.xp.pool_free = 100  # the pool's unused bytes count as free
        assert isinstance(inputs.prepare(model, X, Y, "w"), inputs.DeviceData)
        assert isinstance(inputs.prepare(model, X, Y, "w", False), inputs.HostData)
        emulated.xp.memory = (0, 1 << 30)
        assert isinstance(inputs.prepare(model, X, Y, "w", True), inputs.DeviceData)
    with bg.use_backend("array_api_strict"):  # (the stand-in cannot say: on the device)
        assert isinstance(inputs.prepare(build(), X, Y, "w"), inputs.DeviceData)


def test_bad_data_on_device_is_named(backend: bg.Backend) -> None:
    model = build()
    with pytest.raises(TypeError, match=r"Model.train: data_on_device must be None, True or Fa"):
        model.train(X, Y, data_on_device="yes", print_every=0)
    if backend.name != "numpy":  # (NumPy's arrays are host data)
        with pytest.raises(ValueError, match=r"data_on_device=False streams host data .* X or y"):
            model.train(backend.asarray(X), Y, data_on_device=False, print_every=0)


# --- CuPy: pinned buffers, a second stream, events (on the emulated CuPy) ----------------


def emulated_run(data_on_device: bool) -> tuple[EmulatedCupyBackend, Any]:
    emulated = EmulatedCupyBackend(EmulatedCupy())
    with bg.use_backend(emulated):
        run = train(build(), X, Y, validation_data=(X_VAL, Y_VAL),  # (no Philox emulated)
                    data_on_device=data_on_device)  # fmt: skip
    return emulated, run


def test_the_emulated_cupy_streams_to_the_in_memory_bits() -> None:
    (_, copied), (emulated, streamed) = emulated_run(True), emulated_run(False)
    assert_same_run(copied, streamed)
    with bg.use_backend("array_api_strict"):
        reference = train(build(), X, Y, validation_data=(X_VAL, Y_VAL))
    assert_same_run(reference, streamed)
    assert emulated.xp.pinned  # every async copy came from pinned memory (set checks it)


def test_a_streamed_step_on_cupy_copies_two_arrays_and_gathers_nothing_on_the_device() -> None:
    """A steady streamed step: the in-memory step without its gather kernel, plus two
    host-to-device copies (X and y) on the copy stream; nothing comes back to the host."""
    from benchmarks.trace import trace_training

    counts = {}
    for on_device in (True, False):
        emulated = EmulatedCupyBackend(EmulatedCupy())
        with bg.use_backend(emulated):
            model = build()
            segments = trace_training(model, X, Y, epochs=2, batch_size=16, print_every=0,
                                      seed=5, data_on_device=on_device)  # fmt: skip
        steps = [s for s in segments if s.label == "step"]
        counts[on_device] = tally(steps[-2].events)  # (a full batch of epoch 2)
    device, streamed = counts[True], counts[False]
    assert streamed["h2d"] == 2 and device["h2d"] == 0
    assert streamed["d2h"] == device["d2h"] == 0
    assert device["kernel"] - streamed["kernel"] == 1  # take_batch: no gather on the device
    for kind in ("gemm", "cupy", "memset/copy"):
        assert streamed[kind] == device[kind]


def test_the_copy_stream_and_the_compute_stream_are_ordered_by_events() -> None:
    """Three batches (16, 16, 13): each copy waits for the step that last used its slot,
    each step waits for its copy, the host waits only before refilling a pinned buffer,
    and the next batch's copy is queued before this batch's step waits."""
    emulated = EmulatedCupyBackend(EmulatedCupy())
    with bg.use_backend(emulated):
        model = build()
        model.train(X, Y, epochs=1, batch_size=16, print_every=0, data_on_device=False)
    log = emulated.xp.streams
    # slots 0 and 1: copied events 1, 2; consumed events 3, 4; the copy stream is stream 1
    copy, compute = "stream 1", "compute"
    expected = [
        ("copy", copy, ""), ("copy", copy, ""), ("record", copy, "event 1"),  # batch 0: X, y
        ("copy", copy, ""), ("copy", copy, ""), ("record", copy, "event 2"),  # batch 1
        ("wait", compute, "event 1"),                                         # step 0
        ("record", compute, "event 3"),                                       # step 0 queued
        ("host waits", "", "event 1"), ("wait", copy, "event 3"),             # batch 2 -> slot 0
        ("copy", copy, ""), ("copy", copy, ""), ("record", copy, "event 1"),
        ("wait", compute, "event 2"), ("record", compute, "event 4"),         # step 1
        ("wait", compute, "event 1"), ("record", compute, "event 3"),         # step 2
        ("wait", compute, "event 1"), ("wait", compute, "event 2"),           # settled: the
        ("host waits", copy, ""),                                             # pass is over
    ]  # fmt: skip
    assert log == expected
    # a blocking copy stream would serialise with the null stream the steps run on
    assert [(s.name, s.non_blocking) for s in emulated.xp.cuda.created] == [(copy, True)]


def test_a_pass_stopped_early_waits_for_the_copy_it_queued() -> None:
    """A callback raises at the first step, while the second batch's copy is queued: the
    compute stream waits for it and the host for the copy stream before the buffers go."""

    class Stop(bg.Callback):
        def on_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            raise RuntimeError("stop here")

    emulated = EmulatedCupyBackend(EmulatedCupy())
    with bg.use_backend(emulated):
        model = build()
        with pytest.raises(RuntimeError, match="stop here"):
            model.train(X, Y, epochs=1, batch_size=16, print_every=0, data_on_device=False,
                        callbacks=[Stop()])  # fmt: skip
    log = emulated.xp.streams
    assert ("record", "stream 1", "event 2") in log  # batch 1's copy was queued
    assert log[-3:] == [("wait", "compute", "event 1"), ("wait", "compute", "event 2"),
                        ("host waits", "stream 1", "")]  # fmt: skip


# --- the benchmark ---------------------------------------------------------------------------


def test_the_streaming_benchmark_prints_its_measurements_and_targets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``python -m benchmarks.streaming --quick``, small: every line it promises, numbers
    that add up (budget = parts), and the temporary data folder removed. (A script, not a
    timed test: only the format and the arithmetic are checked here.)"""
    import re
    import tempfile

    from benchmarks import streaming

    before = set(Path(tempfile.gettempdir()).glob("bg-streaming-*"))
    assert streaming.main(["--quick", "--file-mib", "4", "--batch", "128", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert set(Path(tempfile.gettempdir()).glob("bg-streaming-*")) == before
    parts = re.search(r"budget ([\d.]+) MiB = model \+ optimizer state ([\d.]+) MiB \+ 4 batches "
                      r"([\d.]+) MiB \+ 64 MiB", out)  # fmt: skip
    assert parts is not None
    total, state, batches = (float(v) for v in parts.groups())
    assert abs(total - (state + batches + 64)) <= 0.15
    assert abs(batches - 4 * 128 * (784 * 4 + 8) / 2**20) <= 0.05
    assert re.search(r"memory: \d+ steps of 128 in [\d.]+ s \([\d.]+ steps/s\)", out)
    assert re.search(r"peak RssAnon [\d.]+ MiB .* held by training -?[\d.]+ MiB", out)
    assert out.count("the file is under 4x the budget") == 2
    speed = re.search(
        r"target: streamed / in-memory step time ([\d.]+) .* <= 1.15: (PASS|MISS)", out
    )
    assert speed is not None
    assert (float(speed.group(1)) <= 1.15) == (speed.group(2) == "PASS")
    assert re.search(r"target: GPU streamed / on-device step time .*(needs a GPU|PASS|MISS)", out)


def test_regression_targets_in_a_memmap_are_not_read_whole(tmp_path: Path) -> None:
    """RegressionAccuracy learns its precision from std(y) in blocks when y is larger than
    one check block: the same value as NumPy's (to float64 rounding), with the traced memory
    held to a block's temporaries, not the whole targets'."""
    import tracemalloc

    from backprop_gpu import metrics

    rng = np.random.default_rng(0)
    path = tmp_path / "y.npy"
    np.save(path, (rng.standard_normal((300_000, 8)) * 3 + 1).astype(np.float32))  # 9.6 MB
    y = np.load(path, mmap_mode="r")
    chunk = 1 << 20  # (1 MiB blocks here, so that 9.6 MB is many of them)
    original = _checks.CHUNK_BYTES
    _checks.CHUNK_BYTES = chunk
    try:
        tracemalloc.start()
        value = metrics._std(y)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        _checks.CHUNK_BYTES = original
    assert value == pytest.approx(float(np.std(np.asarray(y, dtype=np.float64))), rel=1e-12)
    assert peak < 3 * chunk  # (a float64 copy of one block; y is 9.6 MB, 19 MB in float64)


def test_a_memmap_placed_on_the_device_is_copied_in_blocks(
    backend: bg.Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """data_on_device=True with a memory-mapped X: copied to the device a block at a time
    (here of 2 rows' bytes), and the same training as from the array in memory."""
    (X_map,) = memmaps(tmp_path, X=X)
    copies: list[int] = []
    real = inputs._to_device_in_blocks

    def counted(backend_: Any, x: np.ndarray, dtype: Any) -> Any:
        copies.append(x.shape[0])
        return real(backend_, x, dtype)

    monkeypatch.setattr(inputs, "_to_device_in_blocks", counted)
    monkeypatch.setattr(_checks, "CHUNK_BYTES", 2 * X.itemsize * X.shape[1])
    kwargs = {"epochs": 2, "batch_size": 16, "print_every": 0, "seed": 0}
    streamed = build().train(X_map, Y, data_on_device=True, **kwargs)
    in_memory = build().train(np.array(X), Y, **kwargs)
    assert streamed == in_memory
    assert copies == ([] if backend.host else [X.shape[0]])


def test_a_memmap_placed_on_the_emulated_gpu_is_copied_in_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same on the emulated CuPy (CupyBackend.empty and a copy a block): the training of
    the array in memory, bit for bit."""
    (X_map,) = memmaps(tmp_path, X=X)
    monkeypatch.setattr(_checks, "CHUNK_BYTES", 2 * X.itemsize * X.shape[1])
    kwargs = {"epochs": 2, "batch_size": 16, "print_every": 0, "seed": 0}
    results = []
    for source in (X_map, np.array(X)):
        with bg.use_backend(EmulatedCupyBackend(EmulatedCupy())):
            results.append(build().train(source, Y, data_on_device=True, **kwargs))
    assert results[0] == results[1]


@pytest.mark.parametrize("task", ["classes", "one-hot", "regression"])
def test_training_from_memmaps_holds_batches_not_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str
) -> None:
    """NumPy's buffers are traced by tracemalloc: training an epoch from memory-mapped files
    (2 MB of X, and 0.8-2.4 MB of y) holds a few batches, the checks' blocks and the shuffle
    (8 bytes a sample), never the files' size: a whole-array read or cast anywhere would
    show. (A first, small training warms up what is made once.)"""
    import tracemalloc

    n = 100_000
    rng = np.random.default_rng(1)
    y = {"classes": rng.integers(0, 3, n), "one-hot": np.eye(3)[rng.integers(0, 3, n)],
         "regression": rng.standard_normal((n, 3))}[task]  # fmt: skip
    X_map, y_map = memmaps(tmp_path, X=rng.standard_normal((n, 5)).astype(np.float32), y=y)
    assert X_map.nbytes == 2_000_000 and y_map.nbytes >= 800_000
    monkeypatch.setattr(_checks, "CHUNK_BYTES", 64 * 1024)
    loss = None if task != "regression" else bg.MeanSquaredError()
    with bg.use_backend("numpy"):
        build(loss=loss).train(X_map[:512], y_map[:512], epochs=1, batch_size=256, print_every=0)
        model = build(loss=loss)
        tracemalloc.start()
        model.train(X_map, y_map, epochs=1, batch_size=256, print_every=0, seed=0)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 8 * n + 500_000, peak  # the shuffle, plus batches and blocks
