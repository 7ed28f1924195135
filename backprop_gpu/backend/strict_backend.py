"""The array-api-strict backend: the GPU stand-in for tests.

Its arrays live on ``array_api_strict.Device("device1")``, a fake device that refuses
implicit conversion to NumPy and mixing devices, so the tests catch a host copy or a device
mix-up that only a real GPU would otherwise show. It runs the reference ``Ops``.
"""

from __future__ import annotations

from typing import Any

from .base import Backend, BackendUnavailableError


class StrictBackend(Backend):
    """array-api-strict on its fake device ``device1``."""

    name = "array_api_strict"

    def __init__(
        self, xp: Any = None, device: Any = None, reason: str = "", fast_ops: bool = True
    ) -> None:
        if xp is None:
            try:
                import array_api_strict as xp
            except ImportError as e:
                raise BackendUnavailableError(
                    "backend 'array_api_strict' needs the array-api-strict package "
                    "(the test extra: pip install -e '.[test]' in a checkout of backprop_gpu)"
                ) from e
        super().__init__(xp, xp.Device("device1") if device is None else device, reason, fast_ops)
