"""Backend selection, device transfer and the errors that keep devices apart."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu.backend import detect as detect_mod
from backprop_gpu.backend import select as backend_mod
from backprop_gpu.backend.cupy_backend import CupyBackend
from backprop_gpu.backend.numpy_backend import NumpyBackend

from .conftest import GPU_OK, GPU_REASON, gpu_only


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (the env var is read at import time)."""
    full_env = {k: v for k, v in os.environ.items() if k != backend_mod.ENV_VAR} | env
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_unknown_name_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'torch'.*auto, numpy, cupy"):
        bg.set_backend("torch")
    with pytest.raises(ValueError, match="valid names"), bg.use_backend("jax"):
        pass


def test_auto_without_cupy_falls_back_to_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)  # makes `import cupy` raise ImportError
    with bg.use_backend("auto") as b:
        assert b.name == "numpy" and b.xp is np
        assert "CuPy is not importable" in b.reason and "'.[cuda12]'" in b.reason
        assert bg.get_backend() is b


def test_explicit_cupy_without_cupy_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(RuntimeError, match=r"'cupy' was requested.*not importable.*pip install"):
        bg.set_backend("cupy")


class _FakeDevice:
    """CuPy's Device as far as backprop_gpu uses it: an id and PCI bus id, ``use()``,
    ``synchronize()``, and a context manager that makes it current and restores the previous
    one. As in CUDA, the current device is per thread; as in CuPy, the devices to restore are
    kept on the Device object."""

    threads = threading.local()

    def __init__(self, syncs: list[int], index: int | None = None) -> None:
        self.id = _FakeDevice.current() if index is None else index
        self.pci_bus_id = f"0000:{self.id + 0x17:02x}:00.0"
        self.syncs, self.before = syncs, []

    @staticmethod
    def current() -> int:
        return getattr(_FakeDevice.threads, "current", 0)

    def use(self) -> None:
        _FakeDevice.threads.current = self.id

    def synchronize(self) -> None:
        self.syncs.append(1)

    def __enter__(self) -> _FakeDevice:
        self.before.append(_FakeDevice.current())
        self.use()
        return self

    def __exit__(self, *exc: object) -> None:
        _FakeDevice.threads.current = self.before.pop()

    def __str__(self) -> str:
        return f"<CUDA Device {self.id}>"


def _fake_cupy(
    *, available: bool, matmul_fails: bool = False, driver: int = 0, gpus: int = 0
) -> object:
    class Runtime:
        @staticmethod
        def driverGetVersion() -> int:
            return driver

        @staticmethod
        def runtimeGetVersion() -> int:
            return 12090

        @staticmethod
        def getDeviceCount() -> int:
            if driver and driver < 12000:
                raise RuntimeError("cudaErrorInsufficientDriver")
            return gpus

    tested_on: list[int] = []  # the GPU current at each test matmul of the detection

    def ones(shape: tuple[int, ...], dtype: object) -> np.ndarray:
        tested_on.append(_FakeDevice.current())
        if matmul_fails:
            raise RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")
        return np.ones(shape)

    syncs: list[int] = []
    _FakeDevice.threads.current = 0
    cuda = types.SimpleNamespace(runtime=Runtime, Device=lambda i=None: _FakeDevice(syncs, i))
    return types.SimpleNamespace(
        is_available=lambda: available,
        ones=ones,
        tested_on=tested_on,
        ndarray=np.ndarray,
        asarray=np.asarray,
        float32=np.float32,
        cuda=cuda,
        syncs=syncs,
    )


@pytest.fixture(autouse=True)
def _no_cached_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test detects afresh (a fake CuPy must not leak a cached detection)."""
    monkeypatch.setattr(backend_mod, "_detected", None)


def test_auto_picks_a_working_cupy_and_detects_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_cupy(available=True)
    monkeypatch.setitem(sys.modules, "cupy", fake)  # type: ignore[arg-type]
    with bg.use_backend("auto") as b:
        assert b.name == "cupy" and b.xp is fake and b.reason == "auto: CUDA device works"
    assert fake.syncs == [1]  # the test matmul was synchronised
    for name in ("cupy", "auto", "cupy"):
        with bg.use_backend(name) as b:
            assert b.name == "cupy"
    assert fake.syncs == [1]  # detected once per process, not at every scope


def test_cupy_n_names_a_gpu_and_makes_it_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "cupy:N" is GPU N: the backend's device, current inside use_backend (the previous GPU
    back after it) and made current by set_backend, as torch.cuda.set_device does; CuPy is
    detected on GPU N (its test matmul runs there)."""
    fake = _fake_cupy(available=True, gpus=2)
    monkeypatch.setitem(sys.modules, "cupy", fake)  # type: ignore[arg-type]
    current = _FakeDevice.current
    with bg.use_backend("cupy:1") as second:
        assert second.name == "cupy" and second.device.id == 1 and current() == 1
    assert fake.tested_on == [1] and current() == 0  # type: ignore[attr-defined]
    with bg.use_backend("cupy") as first:
        assert first.device.id == 0 and current() == 0
        with bg.use_backend("cupy:1") as second:
            assert second != first and second == bg.get_backend() and current() == 1
        assert current() == 0
        assert bg.set_backend("cupy:1").device.id == 1 and current() == 1
    assert current() == 0  # the block's set_backend ends with the block
    with pytest.raises(
        ValueError, match=r"'cupy:2': there is no GPU 2; this machine has 2 \(cupy:0 to cupy:1\)"
    ):
        bg.use_backend("cupy:2").__enter__()
    for bad in ("cupy:", "cupy:x", "numpy:1", "cupy:-1", "cupy:\u00b2"):
        with pytest.raises(ValueError, match=r"unknown backend .*cupy:N \(GPU N\)"):
            bg.use_backend(bad).__enter__()
    assert fake.tested_on == [1]  # type: ignore[attr-defined]  # detected once


def test_threads_in_cupy_blocks_keep_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads in use_backend("cupy") blocks at once each get their own previous GPU back
    (CuPy keeps the device to restore on the Device object: a shared one would swap them)."""
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=True, gpus=2))  # type: ignore[arg-type]
    with bg.use_backend("cupy"):  # detected here, in this thread: the threads share it
        pass
    steps = [threading.Barrier(2) for _ in range(3)]
    after: dict[str, int] = {}

    def work(name: str, start: int, exit_first: bool) -> None:
        _FakeDevice.threads.current = start
        with bg.use_backend("cupy"):
            steps[0].wait()  # both inside
            if not exit_first:
                steps[1].wait()
        if exit_first:
            steps[1].wait()
        steps[2].wait()
        after[name] = _FakeDevice.current()

    threads = [threading.Thread(target=work, args=("a", 1, True)),
               threading.Thread(target=work, args=("b", 0, False))]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert after == {"a": 1, "b": 0}


def test_cupy_n_without_a_gpu_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=False))  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="backend 'cupy:1' was requested but cannot run: CuPy"):
        bg.set_backend("cupy:1")


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        (dict(available=False, driver=0), "no NVIDIA driver"),
        (dict(available=False, driver=11040), r"driver supports CUDA 11\.4.*built for 12\.9"),
        (dict(available=False, driver=12090), "reports no CUDA device"),
        (dict(available=True, matmul_fails=True), "test matmul failed.*NO_BINARY"),
    ],
)
def test_auto_explains_each_fallback(
    monkeypatch: pytest.MonkeyPatch, fake: dict[str, object], reason: str
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(**fake))  # type: ignore[arg-type]
    with bg.use_backend("auto") as b:
        assert b.name == "numpy"
        assert b.reason.startswith("auto: ")
        assert __import__("re").search(reason, b.reason), b.reason
    with pytest.raises(RuntimeError, match=reason):
        bg.set_backend("cupy")


def test_auto_with_the_real_cupy_install() -> None:
    """CI installs cupy-cuda12x: no driver or device here must give NumPy, quietly and fast."""
    pytest.importorskip("cupy")
    result = _run(
        "import time, warnings; warnings.simplefilter('error'); t = time.perf_counter();"
        "import backprop_gpu as bg; b = bg.get_backend();"
        "print(b.name, round(time.perf_counter() - t, 3)); print(b.reason)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # quiet: the fallback is logged at INFO, not printed
    name, seconds = result.stdout.splitlines()[0].split()
    reason = result.stdout.splitlines()[1]
    if GPU_OK:
        assert name == "cupy"
    else:
        assert name == "numpy" and reason == f"auto: {GPU_REASON}"
        assert float(seconds) < 10


@pytest.mark.skipif(GPU_OK, reason="this machine has a GPU")
def test_explicit_cupy_without_gpu_raises_with_cause_and_fix() -> None:
    pytest.importorskip("cupy")
    with pytest.raises(RuntimeError, match="'cupy' was requested but cannot run") as err:
        bg.set_backend("cupy")
    assert GPU_REASON in str(err.value)


@pytest.mark.parametrize(("value", "expected"), [("numpy", "numpy"), ("auto", None)])
def test_environment_variable(value: str, expected: str | None) -> None:
    result = _run(
        "import backprop_gpu as bg; print(bg.get_backend().name)", **{backend_mod.ENV_VAR: value}
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (expected or ("cupy" if GPU_OK else "numpy"))


def test_environment_variable_errors_name_the_variable() -> None:
    bad = _run("import backprop_gpu as bg; bg.get_backend()", BACKPROP_GPU_BACKEND="gpu")
    assert bad.returncode != 0
    assert "BACKPROP_GPU_BACKEND='gpu'" in bad.stderr and "valid names" in bad.stderr
    if not GPU_OK:
        forced = _run("import backprop_gpu as bg; bg.Dense(2, 2)", BACKPROP_GPU_BACKEND="cupy")
        assert forced.returncode != 0 and "'cupy' was requested" in forced.stderr
        assert "BACKPROP_GPU_BACKEND='cupy'" in forced.stderr and "or unset" in forced.stderr


def test_import_touches_no_backend() -> None:
    result = _run(
        "import sys, backprop_gpu; print('cupy' in sys.modules, 'array_api_strict' in sys.modules)",
        BACKPROP_GPU_BACKEND="auto",
    )
    assert result.stdout.split() == ["False", "False"], result.stderr


def test_import_leaves_out_what_only_checkpoints_and_mpi_use() -> None:
    """hashlib (OpenSSL), zipfile and tempfile are imported when a checkpoint or MPI needs them:
    at import they cost about 5 MiB of resident memory in every process (every MPI rank)."""
    result = _run(
        "import sys, backprop_gpu, backprop_gpu.distributed; "
        "print([m for m in ('_hashlib', 'zipfile', 'tempfile') if m in sys.modules])"
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_auto_without_a_driver_does_not_import_cupy() -> None:
    """No CUDA driver library: ``auto`` says so without importing CuPy (16 MiB, 0.1 s)."""
    if detect_mod._driver_library_present():
        pytest.skip("this machine has a CUDA driver library")
    result = _run(
        "import sys, backprop_gpu as bg; b = bg.get_backend(); "
        "print(b.name, 'cupy' in sys.modules); print(b.reason)",
        BACKPROP_GPU_BACKEND="auto",
    )
    first, reason = result.stdout.splitlines()
    assert first == "numpy False", result.stderr
    installed = importlib.util.find_spec("cupy") is not None
    assert ("no NVIDIA driver was found" if installed else "CuPy is not installed") in reason


def test_the_package_leaves_the_host_allocator_alone() -> None:
    """A library must not retune the process's malloc on import (it reuses its own step
    buffers instead): no source file of the package calls mallopt, and importing it loads
    no module that does."""
    package = os.path.dirname(bg.__file__)
    sources = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(package)
        for name in names
        if name.endswith((".py", ".c"))
    ]
    assert len(sources) > 20  # the walk found the package
    callers = [path for path in sources if "mallopt" in Path(path).read_text(encoding="utf-8")]
    assert callers == []
    code = "import sys, backprop_gpu; print([m for m in sys.modules if m.endswith('_malloc')])"
    assert _run(code).stdout.strip() == "[]"


def test_use_backend_restores_on_exit_and_on_error() -> None:
    before = bg.get_backend()
    with bg.use_backend("array_api_strict") as b:
        assert bg.get_backend() is b and b.name == "array_api_strict"
        with bg.use_backend("numpy"):
            assert bg.get_backend().name == "numpy"
        assert bg.get_backend() is b
    assert bg.get_backend() is before
    with pytest.raises(ZeroDivisionError), bg.use_backend("array_api_strict"):
        1 / 0  # noqa: B018
    assert bg.get_backend() is before


def test_set_backend_inside_a_scope_stays_in_that_scope() -> None:
    before = bg.get_backend()
    with bg.use_backend("numpy"):
        assert bg.set_backend("array_api_strict").name == "array_api_strict"
        assert bg.get_backend().name == "array_api_strict"
    assert bg.get_backend() is before


def test_set_backend_changes_the_process_default() -> None:
    before = backend_mod._default
    try:
        b = bg.set_backend("array_api_strict")
        assert bg.get_backend() is b
        seen: list[str] = []
        t = threading.Thread(target=lambda: seen.append(bg.get_backend().name))
        t.start()
        t.join()
        assert seen == ["array_api_strict"]  # a default, so other threads see it too
    finally:
        backend_mod._default = before


def test_threads_get_their_own_scoped_backend() -> None:
    barrier = threading.Barrier(2)
    seen: dict[str, list[str]] = {}

    def work(name: str) -> None:
        with bg.use_backend(name):
            barrier.wait()  # both scopes are open at once
            layer = bg.Dense(3, 2, seed=0)
            seen[name] = [bg.get_backend().name, layer.backend.name]
            barrier.wait()

    threads = [threading.Thread(target=work, args=(n,)) for n in ("numpy", "array_api_strict")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"numpy": ["numpy"] * 2, "array_api_strict": ["array_api_strict"] * 2}


def test_asarray_and_to_numpy_round_trip(backend: bg.Backend) -> None:
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    a = bg.asarray(host)
    assert backend.owns(a) and a.dtype == backend.xp.float32
    assert bg.asarray(a) is a  # already on the device: no copy
    b = bg.asarray([[1, 2]], dtype="float64")
    assert b.dtype == backend.xp.float64
    back = bg.to_numpy(a)
    assert isinstance(back, np.ndarray) and np.array_equal(back, host)
    assert bg.to_numpy([1.5, 2.5]).tolist() == [1.5, 2.5]


def test_strict_arrays_never_convert_implicitly() -> None:
    """The GPU stand-in refuses what CuPy refuses: this is why tests run on it."""
    with bg.use_backend("array_api_strict"):
        a = bg.asarray([1.0, 2.0])
    with pytest.raises(RuntimeError, match="Can't convert"):
        np.asarray(a)
    assert bg.to_numpy(a).tolist() == [1.0, 2.0]


def test_layer_refuses_an_array_from_another_device() -> None:
    with bg.use_backend("array_api_strict"):
        device_array = bg.asarray(np.ones((2, 3)))
    with bg.use_backend("numpy"):
        layer = bg.Dense(3, 2)
    with pytest.raises(
        ValueError, match=r"Dense\(\d+, \d+\)\.forward inputs comes from array_api_strict.*numpy"
    ):
        layer.forward(device_array)

    import array_api_strict as xps

    cpu_array = xps.asarray(np.ones((2, 3)), device=xps.Device("CPU_DEVICE"))
    with bg.use_backend("array_api_strict"):
        layer = bg.Dense(3, 2)
        relu = bg.ReLU()
    with pytest.raises(
        ValueError, match=r"Dense\(\d+, \d+\)\.forward inputs is on device .*CPU_DEVICE"
    ):
        layer.forward(cpu_array)
    with pytest.raises(ValueError, match=r"ReLU.forward inputs is on device"):
        relu.forward(cpu_array)
    # host data is fine: moved to the layer's device
    assert bg.to_numpy(layer.forward(np.ones((2, 3)))).shape == (2, 2)


def test_layer_keeps_the_backend_it_was_built_on() -> None:
    with bg.use_backend("array_api_strict"):
        layer = bg.Dense(3, 2, seed=0)
    with bg.use_backend("numpy"):
        out = layer.forward(np.ones((4, 3)))  # host data goes to the layer's device
    assert layer.backend.owns(out) and not isinstance(out, np.ndarray)


@gpu_only
def test_cupy_backend_on_a_real_gpu() -> None:
    with bg.use_backend("cupy") as b:
        import cupy

        a = bg.asarray(np.ones((2, 2)))
        assert isinstance(a, cupy.ndarray) and b.owns(a)
        assert bg.to_numpy(a @ a).tolist() == [[2.0, 2.0], [2.0, 2.0]]
    with bg.use_backend("numpy"):
        layer = bg.Dense(2, 2)
    with pytest.raises(ValueError, match="comes from cupy"):
        layer.forward(a)


@gpu_only
def test_a_model_on_the_last_gpu_trains_there() -> None:
    """cupy:N on a real GPU: a model built under use_backend("cupy:N") lives on GPU N and
    Model.train/predict run there after the block too, while GPU 0 is current."""
    import cupy

    last = cupy.cuda.runtime.getDeviceCount() - 1
    if last == 0:
        pytest.skip("needs 2 GPUs (this machine has 1): on GPU 0 the test proves nothing")
    with bg.use_backend(f"cupy:{last}") as b:
        model = bg.Model([bg.Dense(3, 8, seed=0), bg.ReLU(), bg.Dense(8, 2, seed=1)])
        model.set(loss=bg.SoftmaxCrossEntropy(), optimizer=bg.SGD(0.1)).finalize()
    assert cupy.cuda.Device().id == 0 and b.device.id == last
    history = model.train(np.ones((16, 3)), np.zeros(16, int), epochs=2, print_every=0)
    assert (
        model.layers[0].weights.device.id == last
        and model.predict(np.ones((2, 3))).device.id == last
    )
    assert history[-1]["loss"] < history[0]["loss"]


def test_auto_fallback_is_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", None)
    calls = []
    real = backend_mod.detect_gpu
    monkeypatch.setattr(backend_mod, "detect_gpu", lambda: calls.append(1) or real())
    with caplog.at_level("INFO", logger="backprop_gpu"):
        for _ in range(3):
            with bg.use_backend("auto"):
                pass
    assert len(calls) == 1  # a failed detection is remembered too
    records = [r for r in caplog.records if r.name == "backprop_gpu"]
    assert len(records) == 1 and "CuPy is not importable" in records[0].getMessage()


def test_backends_compare_by_library_and_device() -> None:
    """A CuPy Device is unhashable and ``reason`` differs between ``auto`` and a name: the
    Model's same-backend check must still work."""

    class Device:  # like cupy.cuda.Device: no hash
        __hash__ = None  # type: ignore[assignment]

        def __repr__(self) -> str:
            return "<CUDA Device 0>"

    fake = types.SimpleNamespace(asarray=np.asarray, ndarray=np.ndarray)
    a = CupyBackend(fake, Device(), reason="auto: CUDA device works")
    b = CupyBackend(fake, Device(), fast_ops=False)
    assert a == b and len({a, b}) == 1
    assert NumpyBackend(reason="auto: x") == NumpyBackend(fast_ops=False)
    with bg.use_backend("auto"):
        dense = bg.Dense(2, 3)
    with bg.use_backend("numpy"):
        model = bg.Model([dense]).set(loss=bg.SoftmaxCrossEntropy())
    if not GPU_OK:
        model.finalize()  # auto's NumPy and a named NumPy are one backend


def test_dense_refuses_parameters_from_another_backend() -> None:
    with bg.use_backend("array_api_strict"):
        device_weights = bg.asarray(np.ones((2, 3)))
    with bg.use_backend("numpy"), pytest.raises(ValueError, match="weights come from array_api"):
        bg.Dense(2, 3, weights=device_weights)
    with bg.use_backend("array_api_strict"):
        assert bg.Dense(2, 3, weights=device_weights).weights.dtype == device_weights.dtype


def test_synchronize_is_safe_everywhere(backend: bg.Backend) -> None:
    bg.asarray(np.ones(3)) * 2
    assert backend.synchronize() is None  # waits on a GPU, nothing to wait for elsewhere
