"""The ``xp`` layer: which array library (NumPy, CuPy or array-api-strict) does the math, and
the ``Ops`` object that runs a training step's hot paths on it.

Who owns what:

- ``select.py``: choosing a backend (``auto``, ``numpy``, ``cupy``, ``cupy:N``,
  ``array_api_strict``; ``BACKPROP_GPU_BACKEND``; ``set_backend`` / ``use_backend``);
- ``detect.py``: whether CuPy can run here, and why not;
- ``base.py``: ``Backend`` (one library on one device) and the host helpers;
- ``ops.py``: ``Ops``, every hot-path operation as plain ``xp`` code, the reference;
- one file per backend, each a ``Backend`` subclass with its ``Ops`` subclass overriding only
  what it accelerates: ``numpy_backend.py`` (the C extension), ``cupy_backend.py`` (CUDA
  kernels, source in ``cuda_source.py``), ``strict_backend.py`` (the GPU stand-in for tests).

Nothing outside this package imports an array library by name (NumPy aside, the host format).
"""

from .base import (
    Backend,
    BackendUnavailableError,
    array_library,
    dtype_name,
    host_array,
    host_values,
    to_numpy,
)
from .detect import INSTALL_HINT, MIN_CUPY, NO_DRIVER, detect_gpu, gpu_count
from .ops import Ops
from .select import (
    BACKEND_NAMES,
    ENV_VAR,
    KERNELS_VAR,
    asarray,
    auto_fallback,
    backend_names,
    fast_ops_enabled,
    get_backend,
    gpu_index,
    register_backend,
    set_backend,
    use_backend,
)

__all__ = [
    "BACKEND_NAMES",
    "ENV_VAR",
    "INSTALL_HINT",
    "KERNELS_VAR",
    "MIN_CUPY",
    "NO_DRIVER",
    "Backend",
    "BackendUnavailableError",
    "Ops",
    "array_library",
    "asarray",
    "auto_fallback",
    "backend_names",
    "detect_gpu",
    "dtype_name",
    "fast_ops_enabled",
    "get_backend",
    "gpu_count",
    "gpu_index",
    "host_array",
    "host_values",
    "register_backend",
    "set_backend",
    "to_numpy",
    "use_backend",
]
