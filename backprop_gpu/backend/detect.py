"""Finding out whether CuPy can run here, without side effects beyond what that needs.

``detect_gpu`` is what ``auto`` and ``cupy`` ask; ``gpu_count`` counts GPUs without creating
a CUDA context on any. With no NVIDIA driver library on the machine CuPy is not imported.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from typing import Any

INSTALL_HINT = (
    "install CuPy for your CUDA version (the cuda12 or cuda13 extra: pip install '.[cuda12]' "
    "in a checkout of backprop_gpu, or pip install cupy-cuda12x), or use set_backend('numpy')"
)


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
        available = cupy.is_available()
    except Exception as e:
        return None, f"CuPy is installed but cannot query CUDA ({type(e).__name__}: {e})"
    if not available:
        try:
            return None, _why_no_device(cupy)
        except Exception as e:
            return None, f"CuPy is installed but CUDA is unusable ({type(e).__name__}: {e})"
    try:
        a = cupy.ones((2, 2), dtype=cupy.float32)
        (a @ a).sum()
        cupy.cuda.Device().synchronize()
    except Exception as e:
        return (
            None,
            f"CuPy sees a device but a test matmul failed ({type(e).__name__}: {e})",
        )
    return cupy, ""


NO_DRIVER = (
    "CuPy is installed but no NVIDIA driver was found (no GPU on this machine?); "
    "install the NVIDIA driver, or use the numpy backend"
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
    runtime = cupy.cuda.runtime
    try:
        driver = runtime.driverGetVersion()
    except Exception:
        driver = 0
    if driver == 0:
        return NO_DRIVER
    try:
        count = runtime.getDeviceCount()
    except Exception as e:
        need = runtime.runtimeGetVersion()
        return (
            f"CuPy is installed but CUDA failed ({e}); the driver supports CUDA "
            f"{driver // 1000}.{driver % 1000 // 10} and CuPy was built for "
            f"{need // 1000}.{need % 1000 // 10}: update the driver or install the matching "
            "cupy-cudaXXx wheel"
        )
    if count == 0:
        return "CuPy is installed but reports no CUDA device"
    return "CuPy is installed but cupy.is_available() is False"


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
