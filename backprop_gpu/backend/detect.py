"""Finding out whether CuPy can run here, and if not, which piece is missing.

``detect_gpu`` is what ``auto`` and ``cupy`` ask; ``gpu_count`` counts GPUs without creating
a CUDA context on any. With no NVIDIA driver library on the machine CuPy is not imported.

The reasons tell apart what a user fixes differently: CuPy missing or too old (pip), no
NVIDIA driver, a driver that sees no GPU, a driver too old for CuPy's CUDA runtime (update
the driver, or take the wheel of the driver's CUDA), and no CUDA toolkit libraries (NVRTC,
cuBLAS: a CuPy wheel does not bring them; its ``[ctk]`` extra does).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import sys
from typing import Any

INSTALL_HINT = (
    "install CuPy for your CUDA version (the cuda12 or cuda13 extra: pip install '.[cuda12]' "
    "in a checkout of backprop_gpu, or pip install cupy-cuda12x), or use set_backend('numpy')"
)
MIN_CUPY = (14, 0)  # cupy.astype, cupy.concat, asarray(copy=): the array API of CuPy 14
UPGRADE_HINT = "pip install -U cupy-cuda12x (or cupy-cuda13x, for a CUDA 13 driver)"
TOOLKIT_HINT = (
    "a CuPy wheel does not bring the CUDA libraries: pip install 'cupy-cuda12x[ctk]' (or "
    "'cupy-cuda13x[ctk]') installs them, or install the CUDA toolkit"
)
NO_DRIVER = (
    "CuPy is installed but no NVIDIA driver was found (no GPU on this machine?); "
    "install the NVIDIA driver, or use the numpy backend"
)


def cupy_installed() -> bool:
    """CuPy is importable here (found on the path, or imported already); says nothing of
    whether it can run."""
    if sys.modules.get("cupy") is not None:
        return True
    try:
        return importlib.util.find_spec("cupy") is not None
    except (ImportError, ValueError):  # (sys.modules["cupy"] set to None: "not importable")
        return False


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``(major, minor, patch)`` of a version string such as ``"14.0.0rc1"``, ``"13.6.0"``,
    ``"14.1"``; a pre-release counts as its release. None when ``text`` starts with no
    number."""
    match = re.match(r"\s*v?(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(text))
    if match is None:
        return None
    major, minor, patch = (int(part) if part else 0 for part in match.groups())
    return major, minor, patch


def cuda_version(code: int) -> str:
    """CUDA's version integer (1000 * major + 10 * minor) as text: 12090 -> ``"12.9"``."""
    return f"{code // 1000}.{code % 1000 // 10}"


def detect_gpu() -> tuple[Any, str]:
    """Try CuPy: return ``(cupy_module, "")`` when a GPU works, else ``(None, reason)``.

    Never raises. A CuPy that imports but finds no driver or device returns quickly. With no
    NVIDIA driver library on the machine CuPy is not even imported (it would cost 16 MiB of
    memory and a tenth of a second for nothing), unless the program imported it already.
    """
    if "cupy" not in sys.modules and not _driver_library_present():
        if importlib.util.find_spec("cupy") is None:
            return None, f"CuPy is not installed; {INSTALL_HINT}"
        return None, NO_DRIVER
    try:
        import cupy
    except Exception as e:  # ImportError, or a broken CUDA install failing at import
        return None, f"CuPy is not importable ({type(e).__name__}: {e}); {INSTALL_HINT}"
    try:
        reason = too_old(cupy) or _why_no_device(cupy) or _missing_library(cupy)
    except Exception as e:
        reason = f"CuPy is installed but CUDA is unusable ({type(e).__name__}: {e})"
    if reason:
        return None, reason
    try:
        a = cupy.ones((2, 2), dtype=cupy.float32)
        (a @ a).sum()
        cupy.cuda.Device().synchronize()
    except Exception as e:
        return None, f"CuPy sees a device but a test matmul failed ({type(e).__name__}: {e})"
    return cupy, ""


def too_old(cupy: Any) -> str:
    """Why this CuPy is too old for backprop_gpu ("" when it is new enough, or its version
    cannot be read: the test matmul decides then)."""
    text = getattr(cupy, "__version__", "")
    version = parse_version(text)
    if version is None or version[:2] >= MIN_CUPY:
        return ""
    need = ".".join(map(str, MIN_CUPY))
    return (
        f"CuPy {text} is installed but backprop_gpu needs CuPy >= {need} (it uses "
        f"cupy.astype, cupy.concat and asarray(copy=), new in CuPy 14); upgrade: {UPGRADE_HINT}"
    )


def _driver_library_present() -> bool:
    """The CUDA driver library loads (what CuPy needs before it can see any device)."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def _why_no_device(cupy: Any) -> str:
    """Why CUDA shows no usable device: no driver, a driver too old for CuPy's runtime, or a
    driver that sees none ("" when there is one)."""
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()
    except Exception:  # (libcuda missing: CuPy 14 fails to load it)
        driver = 0
    if driver == 0:
        return NO_DRIVER
    need = runtime.runtimeGetVersion()  # the CUDA runtime CuPy was built with
    try:
        count = runtime.getDeviceCount()
    except Exception as e:
        if "cudaErrorNoDevice" in str(e):  # (a driver is fine without a GPU: not a mismatch)
            return _no_device(driver)
        if driver < need:
            wheel = f"cupy-cuda{driver // 1000}x"
            other = (
                f", or install the CuPy wheel for CUDA {driver // 1000} ({wheel})"
                if driver // 1000 in (12, 13) and driver // 1000 != need // 1000
                else ""
            )
            return (
                f"CuPy is installed but the NVIDIA driver is too old: it supports CUDA "
                f"{cuda_version(driver)} and CuPy's CUDA runtime is {cuda_version(need)} "
                f"({e}); update the NVIDIA driver to one for CUDA {cuda_version(need)} or "
                f"newer{other}"
            )
        return (
            f"CuPy is installed but CUDA failed to count the GPUs ({type(e).__name__}: {e}); "
            f"the driver (CUDA {cuda_version(driver)}) is new enough for CuPy's runtime "
            f"(CUDA {cuda_version(need)}): check nvidia-smi"
        )
    if count == 0:
        return _no_device(driver)
    return ""


def _no_device(driver: int) -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    hidden = f"; CUDA_VISIBLE_DEVICES={visible!r} may hide them" if visible is not None else ""
    return (
        f"CuPy is installed and the NVIDIA driver works (CUDA {cuda_version(driver)}) but it "
        f"reports no CUDA device (check nvidia-smi{hidden}); or use the numpy backend"
    )


def _missing_library(cupy: Any) -> str:
    """Which CUDA library CuPy cannot load ("" when both load): NVRTC, which compiles every
    elementwise kernel, and cuBLAS, which does the matmuls."""
    missing = []
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as e:
        missing.append(f"NVRTC, the CUDA runtime compiler ({type(e).__name__}: {e})")
    try:
        cupy.cuda.cublas  # noqa: B018  (CuPy 14 loads libcublas on first access)
    except Exception as e:
        missing.append(f"cuBLAS ({type(e).__name__}: {e})")
    if not missing:
        return ""
    return f"CuPy sees a GPU but cannot load {' and '.join(missing)}; {TOOLKIT_HINT}"


def gpu_count() -> int:
    """How many GPUs CuPy sees, without creating a CUDA context on any (0 without CuPy or
    without a driver)."""
    if "cupy" not in sys.modules and not _driver_library_present():
        return 0
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # not installed, or no usable driver: detect_gpu says why
        return 0
