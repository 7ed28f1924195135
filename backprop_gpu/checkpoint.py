"""Checkpoint files: named host arrays plus JSON metadata in one ``.npz``, written atomically
and read back without pickle.

- Writing goes to a temporary file ``.NAME.<random>.tmp`` in the same folder, which is
  flushed, synced and then renamed over the target (``os.replace``): a crash mid-save leaves
  the previous file intact (and at worst that temporary file, recognisable by its name). A
  save that fails with an exception removes its temporary file. The new file gets the
  permission bits of the file it replaces, or ``0o666`` less the umask for a new file, as
  ``numpy.save`` would.
- Reading uses ``numpy.load(allow_pickle=False)``, so loading never runs code; object arrays
  are refused.
- The metadata carries a SHA-256 of every array's name, dtype, shape and bytes: a truncated
  or altered file raises ``CheckpointError`` instead of loading wrong numbers.
"""

from __future__ import annotations

# hashlib (OpenSSL) and zipfile are imported where used: at the top they would add
# about 5 MiB of resident memory to every process that imports backprop_gpu
import json
import os
import stat
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
    """Write ``arrays`` (host NumPy arrays) and JSON-able ``meta`` to ``path`` atomically.

    The data goes to ``.NAME.<random>.tmp`` beside ``path``, is synced, then renamed over
    ``path``: readers see the old file or the new one, never a mix. If anything fails (a full
    disk, an exception, Ctrl-C) the temporary file is removed and ``path`` is untouched.
    The new file keeps the permission bits of the file it replaces; a new file gets
    ``0o666`` less the umask (``0o644`` under the usual ``022``).

    If ``path`` is a symbolic link, the link itself is replaced by the new file and the file
    it pointed to is left as it was (``os.replace`` semantics, unlike ``numpy.save``, which
    writes through the link). To update the link's target, save to
    ``os.path.realpath(path)``.
    """
    path = Path(path)
    if _META in arrays:
        raise ValueError(f"checkpoint: array name {_META!r} is reserved")
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.hasobject:
            raise TypeError(f"checkpoint: {name!r} must be a numeric NumPy array, got {type(a)}")
    meta = {**meta, "format": FORMAT, "checksum": checksum(arrays)}
    payload = {**arrays, _META: np.array(json.dumps(meta))}
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)  # type: ignore[arg-type]
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _temporary(path: Path) -> tuple[int, Path]:
    """Create ``.NAME.<random>.tmp`` beside ``path`` (exclusively, so never someone else's
    file) with the mode the saved file should get, and return its descriptor and path.

    ``os.open`` with ``0o666`` lets the kernel apply the umask (and a default ACL), as
    ``open()`` does: no process-wide ``os.umask`` call, so no race with other threads."""
    try:
        old = os.lstat(path)
        keep = stat.S_IMODE(old.st_mode) & 0o777 if stat.S_ISREG(old.st_mode) else None
    except OSError:  # no file there yet (or unreadable: then the umask decides)
        keep = None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    flags |= getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{os.urandom(6).hex()}.tmp"
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileExistsError:  # 1 in 2**48 per try
            continue
        if keep is not None:
            try:
                os.chmod(fd if os.chmod in os.supports_fd else tmp, keep)
            except BaseException:
                os.close(fd)
                tmp.unlink(missing_ok=True)
                raise
        return fd, tmp
    raise FileExistsError(f"{path.parent}: could not create a temporary file for {path.name}")


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
