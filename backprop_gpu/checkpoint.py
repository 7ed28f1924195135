"""Checkpoint files: named host arrays plus JSON metadata in one ``.npz``, written atomically
and read back without pickle.

- Writing goes to a temporary file in the same folder, which is flushed, synced and then
  renamed over the target (``os.replace``): a crash mid-save leaves the previous file intact.
- Reading uses ``numpy.load(allow_pickle=False)``, so loading never runs code; object arrays
  are refused.
- The metadata carries a SHA-256 of every array's name, dtype, shape and bytes: a truncated
  or altered file raises ``CheckpointError`` instead of loading wrong numbers.
"""

from __future__ import annotations

# hashlib (OpenSSL), tempfile and zipfile are imported where used: at the top they would add
# about 5 MiB of resident memory to every process that imports backprop_gpu
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "backprop_gpu-checkpoint-1"
_META = "__meta__"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not matching."""


def checksum(arrays: dict[str, np.ndarray]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def save(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` (host NumPy arrays) and JSON-able ``meta`` to ``path`` atomically."""
    path = Path(path)
    if _META in arrays:
        raise ValueError(f"checkpoint: array name {_META!r} is reserved")
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.hasobject:
            raise TypeError(f"checkpoint: {name!r} must be a numeric NumPy array, got {type(a)}")
    import tempfile

    meta = {**meta, "format": FORMAT, "checksum": checksum(arrays)}
    payload = {**arrays, _META: np.array(json.dumps(meta))}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by ``save``: ``(arrays, meta)``, checksum verified."""
    import zipfile

    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        # ValueError here also covers "Object arrays cannot be loaded when allow_pickle=False"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    if _META not in arrays:
        raise CheckpointError(f"{path}: no {_META} entry; not a backprop_gpu checkpoint")
    try:
        meta = json.loads(str(arrays.pop(_META)))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from e
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if meta.get("checksum") != checksum(arrays):
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted or was altered")
    return arrays, meta
