"""Count the device-to-host reads of array-api-strict's fake device (the GPU stand-in).

``HostReads`` patches every way ``array_api_strict.Array`` hands a value to the host while it
is active: ``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``__complex__``,
``__dlpack__``, ``__iter__``, ``__array__``, ``__buffer__``, ``__repr__`` (it prints values),
``tolist`` where the version has it, and ``to_device`` to another device. Each call on an
array that lives on a device other than the CPU counts as one read, with its call site, so a
failing test names the line that reads. (On a GPU each of these waits for the device.)
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any

import pytest

READS = ("__bool__", "__float__", "__int__", "__index__", "__complex__", "__dlpack__",
         "__iter__", "__array__", "__buffer__", "__repr__", "tolist", "to_device")  # fmt: skip


class HostReads:
    """``with HostReads() as reads:``; ``reads.count`` so far, ``reads.sites`` the file:line
    and conversion of each. (Its own patches, undone on leaving.)"""

    def __init__(self) -> None:
        self.monkeypatch = pytest.MonkeyPatch()
        self.sites: list[str] = []
        self.active = False

    @property
    def count(self) -> int:
        return len(self.sites)

    def __enter__(self) -> HostReads:
        from array_api_strict import _array_object

        array = _array_object.Array
        cpu = _array_object.CPU_DEVICE
        for name in READS:
            if hasattr(array, name):
                counted = self._counted(name, getattr(array, name), cpu)
                self.monkeypatch.setattr(array, name, counted)
        self.active = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.active = False
        self.monkeypatch.undo()

    def _counted(self, name: str, method: Callable[..., Any], cpu: Any) -> Callable[..., Any]:
        @functools.wraps(method)
        def read(array: Any, *args: Any, **kwargs: Any) -> Any:
            leaves = name != "to_device" or (args and args[0] != array.device)
            if self.active and array.device != cpu and leaves:
                self.active = False  # (a conversion may call another: count the outer one)
                try:
                    caller = _caller()
                    self.sites.append(f"{caller}: {name}")
                    return method(array, *args, **kwargs)
                finally:
                    self.active = True
            return method(array, *args, **kwargs)

        return read

    def since(self, start: int) -> list[str]:
        return self.sites[start:]


def _caller() -> str:
    """The innermost frame outside this file and array_api_strict."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        if "array_api_strict" not in frame.filename and not frame.filename.endswith(
            "host_reads.py"
        ):
            return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"
