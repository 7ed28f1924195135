"""Backend selection, device transfer and the errors that keep devices apart."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

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
    """CuPy's Device as far as backprop_gpu uses it: an id and PCI bus id, ``use()`` and
    ``synchronize()``. The current device is per thread, as in CUDA (``threads.current``,
    0 until a thread chooses one, as ``cudaGetDevice`` says)."""

    threads = threading.local()

    def __init__(self, cuda: _FakeCuda, index: int | None = None) -> None:
        self.id = _FakeDevice.current() if index is None else index
        self.pci_bus_id = f"0000:{self.id + 0x17:02x}:00.0"
        self.cuda = cuda

    @staticmethod
    def current() -> int:
        return getattr(_FakeDevice.threads, "current", 0)

    def use(self) -> None:
        self.cuda.runtime.setDevice(self.id)

    def synchronize(self) -> None:
        self.cuda.syncs.append(self.id)

    def __str__(self) -> str:
        return f"<CUDA Device {self.id}>"


class _FakeCuda:
    """``cupy.cuda``: the runtime calls detection and the backend make, with a record of
    each GPU given a CUDA context (``contexts``: by cudaSetDevice, as since CUDA 12, or by
    work on it) and of each cudaSetDevice (``set_calls``); ``driver.ctxGetCurrent`` is
    nonzero in a thread that has a current context. ``nvrtc`` and ``cublas`` fail to load as
    CuPy 14's do when their library is missing."""

    def __init__(
        self, driver: int, runtime_version: int, gpus: int, count_error: str | None,
        nvrtc_missing: bool, cublas_missing: bool,
    ) -> None:  # fmt: skip
        self.contexts: set[int] = set()
        self.set_calls: list[int] = []
        self.syncs: list[int] = []
        self.mem_info_on: list[int] = []
        self.cublas_missing = cublas_missing
        cuda = self

        class Runtime:
            @staticmethod
            def driverGetVersion() -> int:
                return driver

            @staticmethod
            def runtimeGetVersion() -> int:
                return runtime_version

            @staticmethod
            def getDeviceCount() -> int:
                if count_error:
                    raise RuntimeError(count_error)
                if driver < runtime_version:  # (no driver, 0: what CuPy 14 says here)
                    raise RuntimeError("cudaErrorInsufficientDriver: CUDA driver version is "
                                       "insufficient for CUDA runtime version")  # fmt: skip
                return gpus

            @staticmethod
            def getDevice() -> int:
                return _FakeDevice.current()

            @staticmethod
            def setDevice(i: int) -> None:
                cuda.set_calls.append(i)
                cuda.touch(i)

            @staticmethod
            def deviceSynchronize() -> None:
                cuda.syncs.append(_FakeDevice.current())

            @staticmethod
            def getDeviceProperties(i: int) -> dict[str, object]:
                return {"name": f"Fake GPU {i}".encode(), "totalGlobalMem": (80 + i) * 2**30}

            @staticmethod
            def memGetInfo() -> tuple[int, int]:
                i = _FakeDevice.current()
                cuda.mem_info_on.append(i)
                cuda.touch(i)
                return (10 + i) * 2**30, (80 + i) * 2**30

        class Driver:
            @staticmethod
            def ctxGetCurrent() -> int:
                return 0x1000 + _FakeDevice.current() if _FakeDevice.threads.has_context else 0

        def nvrtc_version() -> tuple[int, int]:
            if nvrtc_missing:
                raise RuntimeError('Failure finding "libnvrtc.so": No such file')
            return (12, 9)

        self.runtime, self.driver = Runtime, Driver
        self.nvrtc = types.SimpleNamespace(getVersion=nvrtc_version)
        _FakeDevice.threads.current, _FakeDevice.threads.has_context = 0, False

    def touch(self, i: int) -> None:
        """GPU ``i`` made current in this thread, with a context."""
        _FakeDevice.threads.current, _FakeDevice.threads.has_context = i, True
        self.contexts.add(i)

    @property
    def cublas(self) -> object:
        if self.cublas_missing:
            raise ImportError('Failure finding "libcublasLt.so.13 or libcublasLt.so.12"')
        return types.SimpleNamespace()

    def Device(self, i: int | None = None) -> _FakeDevice:
        return _FakeDevice(self, i)


def _fake_cupy(
    *,
    available: bool = True,
    matmul_fails: bool = False,
    driver: int | None = None,
    gpus: int = 1,
    version: str = "14.2.0",
    count_error: str | None = None,
    nvrtc_missing: bool = False,
    cublas_missing: bool = False,
    runtime: int = 12090,
) -> Any:
    """A CuPy module as far as detection and the backend use it. ``available=False``: no
    driver (unless ``driver`` is given); the CUDA versions are 1000 * major + 10 * minor."""
    if driver is None:
        driver = 12090 if available else 0
    cuda = _FakeCuda(driver, runtime, gpus, count_error, nvrtc_missing, cublas_missing)
    tested_on: list[int] = []  # the GPU current at each test matmul of the detection

    def ones(shape: tuple[int, ...], dtype: object) -> np.ndarray:
        tested_on.append(_FakeDevice.current())
        cuda.touch(_FakeDevice.current())
        if matmul_fails:
            raise RuntimeError("CUDA_ERROR_NO_BINARY_FOR_GPU")
        return np.ones(shape)

    return types.SimpleNamespace(
        __version__=version,
        ones=ones,
        tested_on=tested_on,
        ndarray=np.ndarray,
        asarray=np.asarray,
        float32=np.float32,
        cuda=cuda,
        syncs=cuda.syncs,
    )


@pytest.fixture(autouse=True)
def _no_cached_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test detects afresh (a fake CuPy must not leak a cached detection), and logs
    the fallback afresh."""
    monkeypatch.setattr(backend_mod, "_detected", None)
    monkeypatch.setattr(backend_mod, "_fallback_logged", False)


def test_auto_picks_a_working_cupy_and_detects_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_cupy(available=True)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with bg.use_backend("auto") as b:
        assert b.name == "cupy" and b.xp is fake and b.reason == "auto: CUDA device works"
    assert fake.syncs == [0]  # the test matmul was synchronised
    for name in ("cupy", "auto", "cupy"):
        with bg.use_backend(name) as b:
            assert b.name == "cupy"
    assert fake.syncs == [0]  # detected once per process, not at every scope
    assert bg.backend.auto_fallback() is None


def test_cupy_n_names_a_gpu_and_makes_it_current(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "cupy:N" is GPU N: the backend's device, current inside use_backend and made current
    by set_backend, as torch.cuda.set_device does; CuPy is detected on GPU N (its test matmul
    runs there). Leaving the block goes back to the previous GPU only if this thread had a
    context on it: a process that never used GPU 0 gets no context there (cudaSetDevice(0),
    as cupy.cuda.Device's exit calls it, would make one)."""
    fake = _fake_cupy(available=True, gpus=2)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    current, cuda = _FakeDevice.current, fake.cuda
    with bg.use_backend("cupy:1") as second:
        assert second.name == "cupy" and second.device.id == 1 and current() == 1
        second.synchronize()
    assert fake.tested_on == [1] and fake.syncs == [1, 1]
    assert cuda.set_calls == [1] and cuda.contexts == {1} and current() == 1  # GPU 0 untouched
    with bg.use_backend("cupy:1"):
        pass
    assert cuda.set_calls == [1] and cuda.contexts == {1}
    cuda.Device(0).use()  # the program uses GPU 0 now: blocks come back to it
    with bg.use_backend("cupy") as first:  # (GPU 0: the one current at detection)
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
    assert fake.tested_on == [1]  # detected once


def test_threads_in_cupy_blocks_keep_their_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two threads in use_backend("cupy") blocks at once each get their own previous GPU back
    (a device to restore kept on a shared object would swap them)."""
    fake = _fake_cupy(available=True, gpus=2)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    with bg.use_backend("cupy"):  # detected here, in this thread: the threads share it
        pass
    steps = [threading.Barrier(2) for _ in range(3)]
    after: dict[str, int] = {}

    def work(name: str, start: int, exit_first: bool) -> None:
        fake.cuda.runtime.setDevice(start)  # this thread works on GPU `start`
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
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(available=False))
    with pytest.raises(RuntimeError, match="backend 'cupy:1' was requested but cannot run: CuPy"):
        bg.set_backend("cupy:1")


TOO_OLD = (
    r"CuPy 13\.6\.0 is installed but backprop_gpu needs CuPy >= 14\.0 \(it uses cupy\.astype, "
    r"cupy\.concat and asarray\(copy=\), new in CuPy 14\); upgrade: pip install -U cupy-cuda12x "
    r"\(or cupy-cuda13x"
)
NO_DEVICE = (
    r"the NVIDIA driver works \(CUDA 12\.9\) but it reports no CUDA device \(check nvidia-smi"
)
CTK = r"pip install 'cupy-cuda12x\[ctk\]' \(or 'cupy-cuda13x\[ctk\]'\) installs them"


@pytest.mark.parametrize(
    ("fake", "reason"),
    [
        (dict(version="13.6.0"), f"^{TOO_OLD}"),
        (
            dict(version="v13.0.0rc1", available=False),
            r"^CuPy v13\.0\.0rc1 is installed but backprop_gpu needs CuPy >= 14\.0 ",
        ),
        (dict(available=False, driver=0), "no NVIDIA driver"),
        (
            dict(driver=11040),
            r"driver is too old: it supports CUDA 11\.4 and CuPy's CUDA runtime "
            r"is 12\.9 \(cudaErrorInsufficientDriver.*\); update the NVIDIA driver to one for CUDA "
            r"12\.9 or newer$",
        ),
        (
            dict(driver=12020, runtime=13000),
            r"supports CUDA 12\.2 and CuPy's CUDA runtime is 13\.0"
            r".*or newer, or install the CuPy wheel for CUDA 12 \(cupy-cuda12x\)$",
        ),
        (dict(gpus=0), NO_DEVICE),
        (dict(count_error="cudaErrorNoDevice: no CUDA-capable device is detected"), NO_DEVICE),
        (
            dict(driver=11040, count_error="cudaErrorNoDevice: no CUDA-capable device"),
            r"CUDA 11\.4"
            r"\) but it reports no CUDA device",
        ),  # (no device: not blamed on the old driver)
        (
            dict(count_error="cudaErrorUnknown"),
            r"failed to count the GPUs \(RuntimeError: "
            r"cudaErrorUnknown\); the driver \(CUDA 12\.9\) is new enough",
        ),
        (
            dict(nvrtc_missing=True),
            r"sees a GPU but cannot load NVRTC, the CUDA runtime compiler "
            rf"\(RuntimeError: Failure finding \"libnvrtc\.so\".*\); a CuPy wheel .*{CTK}",
        ),
        (
            dict(cublas_missing=True),
            r"cannot load cuBLAS \(ImportError: Failure finding "
            rf"\"libcublasLt.*{CTK}",
        ),
        (dict(nvrtc_missing=True, cublas_missing=True), r"cannot load NVRTC.* and cuBLAS \("),
        (dict(available=True, matmul_fails=True), "test matmul failed.*NO_BINARY"),
    ],
)
def test_auto_explains_each_fallback(
    monkeypatch: pytest.MonkeyPatch, fake: dict[str, Any], reason: str
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(**fake))
    with bg.use_backend("auto") as b:
        assert b.name == "numpy"
        assert b.reason.startswith("auto: ")
        assert re.search(reason, b.reason.removeprefix("auto: ")), b.reason
    with pytest.raises(bg.BackendUnavailableError, match=reason.removeprefix("^")) as e:
        bg.set_backend("cupy")
    assert str(e.value).startswith("backend 'cupy' was requested but cannot run: ")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("14.0.0rc1", (14, 0, 0)), ("13.6.0", (13, 6, 0)), ("14.2", (14, 2, 0)), ("15", (15, 0, 0)),
     ("v14.1.1", (14, 1, 1)), ("14.0.0.dev0+abc", (14, 0, 0)), ("", None), ("unknown", None)],
)  # fmt: skip
def test_cupy_versions_are_parsed(text: str, parsed: tuple[int, int, int] | None) -> None:
    assert detect_mod.parse_version(text) == parsed


def test_a_cupy_14_release_candidate_is_new_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    for version in ("14.0.0rc1", "14.0.0a1", "15.0.0"):
        monkeypatch.setattr(backend_mod, "_detected", None)
        monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(version=version))
        with bg.use_backend("auto") as b:
            assert b.name == "cupy", version


def test_detection_loads_nothing_more_on_a_cupy_13(monkeypatch: pytest.MonkeyPatch) -> None:
    """A too-old CuPy is refused before CUDA is asked anything (no context, no matmul)."""
    fake = _fake_cupy(version="13.6.0")
    monkeypatch.setitem(sys.modules, "cupy", fake)
    assert bg.use_backend("auto").__enter__().name == "numpy"
    assert fake.tested_on == [] and fake.cuda.contexts == set()


def test_auto_with_the_real_cupy_install() -> None:
    """CI installs cupy-cuda12x: no driver or device here must give NumPy, fast, and say so
    once on stderr (a WARNING: CuPy is installed, so a GPU was meant; with no logging set up,
    Python's last-resort handler prints it)."""
    pytest.importorskip("cupy")
    result = _run(
        "import time, warnings; warnings.simplefilter('error'); t = time.perf_counter();"
        "import backprop_gpu as bg; b = bg.get_backend();"
        "print(b.name, round(time.perf_counter() - t, 3)); print(b.reason)",
    )
    assert result.returncode == 0, result.stderr
    expected = "" if GPU_OK else f"backprop_gpu: auto uses NumPy: {GPU_REASON}\n"
    assert result.stderr == expected
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


def test_a_fallback_with_cupy_installed_is_one_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "cupy", _fake_cupy(version="13.6.0"))
    with caplog.at_level("INFO", logger="backprop_gpu"):
        for name in ("auto", "auto", "numpy", "auto"):
            with bg.use_backend(name):
                pass
        with pytest.raises(bg.BackendUnavailableError):
            bg.set_backend("cupy")
    (record,) = [r for r in caplog.records if r.name == "backprop_gpu"]  # once a process
    assert record.levelname == "WARNING"
    assert record.getMessage().startswith("backprop_gpu: auto uses NumPy: CuPy 13.6.0 is ")
    assert bg.backend.auto_fallback() == record.getMessage().removeprefix("backprop_gpu: ")


def test_info_makes_a_context_on_the_backends_gpu_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names and sizes of every GPU come from getDeviceProperties (no context); the free
    memory (memGetInfo, which needs one) only of the GPU the backend uses."""
    from backprop_gpu import experiment

    fake = _fake_cupy(gpus=3)
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.delenv(backend_mod.ENV_VAR, raising=False)
    found = experiment.info()
    assert found["backend"]["name"] == "cupy"
    assert found["devices"] == [
        {"id": i, "name": f"Fake GPU {i}", "memory_total": (80 + i) * 2**30,
         "memory_free": 10 * 2**30 if i == 0 else None} for i in range(3)
    ]  # fmt: skip
    assert fake.cuda.mem_info_on == [0] and fake.cuda.contexts == {0}
    assert fake.cuda.set_calls == []


def test_kernels_compile_once_and_load_once_per_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """cupy_backend._function: one RawModule a process; get_function once per (GPU, kernel),
    with that GPU current (CuPy loads the module on the current GPU), from threads at once."""
    from backprop_gpu.backend import cupy_backend

    fake = _fake_cupy(gpus=2)
    modules: list[object] = []
    lookups: list[tuple[str, int]] = []
    launches: list[tuple[str, int, int]] = []

    class RawModule:
        def __init__(self, code: str, options: tuple[str, ...]) -> None:
            assert "--fmad=false" in options
            modules.append(self)

        def get_function(self, name: str) -> Any:
            lookups.append((name, _FakeDevice.current()))
            time.sleep(0.01)  # (a window for a second thread's lookup)

            def launch(grid: tuple[int], block: tuple[int], args: tuple[Any, ...]) -> None:
                launches.append((name, _FakeDevice.current(), int(args[-1])))

            return launch

    fake.RawModule = RawModule
    monkeypatch.setitem(sys.modules, "cupy", fake)
    monkeypatch.setattr(cupy_backend, "_module", None)
    monkeypatch.setattr(cupy_backend, "_functions", {})
    gpus = [CupyBackend(fake, fake.cuda.Device(i)) for i in (0, 1)]
    fake.cuda.Device(0).use()

    def work(backend: CupyBackend) -> None:
        for _ in range(5):
            with backend.on_device():
                backend.ops._launch("relu_backward_f32", 300, "in", "out")  # type: ignore[attr-defined]
            backend.ops._launch("sgd_momentum_f64", 7)  # type: ignore[attr-defined]

    threads = [threading.Thread(target=work, args=(b,)) for b in gpus * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(modules) == 1
    assert sorted(lookups) == [(k, i) for k in ("relu_backward_f32", "sgd_momentum_f64")
                               for i in (0, 1)]  # fmt: skip
    relu = [(gpu, n) for name, gpu, n in launches if name == "relu_backward_f32"]
    assert sorted(relu) == [(0, 300)] * 10 + [(1, 300)] * 10  # each on its backend's GPU
    assert len(launches) == 40


def test_the_stand_in_without_its_package_is_an_unavailable_backend() -> None:
    """Without array-api-strict, asking for it raises BackendUnavailableError (what a script
    skipping the backends it cannot run catches, as examples/custom_layer.py does), naming the
    extra."""
    code = (
        "import sys; sys.modules['array_api_strict'] = None\n"
        "import backprop_gpu as bg\n"
        "try:\n    bg.set_backend('array_api_strict')\n"
        "except bg.BackendUnavailableError as e:\n    print(e)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == (
        "backend 'array_api_strict' needs the array-api-strict package (the test extra: "
        "pip install -e '.[test]' in a checkout of backprop_gpu)"
    )
