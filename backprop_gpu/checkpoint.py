"""Checkpoint files: named host arrays plus JSON metadata in one ``.npz``, written atomically
and read back without pickle.

- Writing goes to a temporary file ``.NAME.<random>.tmp`` in the same folder, which is
  flushed, synced and then renamed over the target (``os.replace``): a crash mid-save leaves
  the previous file intact (and at worst that temporary file, recognisable by its name). A
  save that fails with an exception removes its temporary file. The new file gets the
  permission bits of the file it replaces, or ``0o666`` less the umask for a new file, as
  ``numpy.save`` would.
- Reading never runs code and never trusts a size it has not checked: the zip directory and
  every member's ``.npy`` header are read first, only plain numeric dtypes (bool, integer,
  float, complex) are accepted, and each member must hold exactly the bytes its header
  declares before its data is read. So a crafted header (a shape of ``2**40``, a 64 GiB
  array) or any damaged byte raises ``CheckpointError`` naming the file, never a
  ``MemoryError`` or a zip library's error. Each array is read straight into its own
  buffer, a MiB at a time, so loading takes about the memory of the arrays (as ``np.load``),
  and a deflated member that declares more than its data holds fails where its data ends.
- The metadata carries a SHA-256 of the rest of the metadata (canonical JSON) and of every
  array's name, dtype, shape and bytes; a file whose metadata or numbers differ from what
  was saved raises ``CheckpointError`` instead of loading wrong numbers or settings.

What the checksum protects against: damage (a truncated copy, a flipped bit, a half-synced
disk) and edits by tools that do not recompute it (``np.savez`` of edited arrays or
metadata). It is not a signature: someone who rewrites the file and its checksum too can
make it say anything. Telling a trusted file from a forged one needs a key (an HMAC or a
signature), which is out of scope; ``Model.load`` still checks the metadata's values (counts
are non-negative integers, the learning rate is positive and finite, each layer's settings
fit its arrays), so even such a file cannot set ``epochs_trained=-5``.

Format versions: files are written as ``backprop_gpu-checkpoint-2``. Files written as
``backprop_gpu-checkpoint-1`` by earlier releases still load: their checksum covers the
arrays only, so damage to the numbers is still caught but an edit to the metadata is not
(beyond the value checks above). Loading such a file and saving it again
(``bg.Model.load(p).save(p)``) rewrites it as version 2.
"""

from __future__ import annotations

# hashlib (OpenSSL), zipfile, struct and zlib are imported where used: at the top they would
# add about 5 MiB of resident memory to every process that imports backprop_gpu
import json
import math
import os
import reprlib
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

FORMAT = "backprop_gpu-checkpoint-2"
FORMAT_1 = "backprop_gpu-checkpoint-1"  # earlier releases: the checksum covers arrays only
_META = "__meta__"
_NUMERIC = "biufc"  # dtype kinds a checkpoint array may have: bool, ints, floats, complex
_DEFLATE_MAX_RATIO = 1032  # deflate cannot expand a byte to more than this many
_CHUNK = 2**20  # bytes read at a time


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, corrupted, or not matching."""


def checksum(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``meta`` without its ``"checksum"`` entry, as canonical JSON (sorted
    keys, no spaces), then of each array in name order: a JSON line ``[name, dtype, shape]``
    and the array's bytes in C order. Every part has a known length, so no two different
    checkpoints hash the same input."""
    import hashlib

    digest = hashlib.sha256()
    rest = {key: value for key, value in meta.items() if key != "checksum"}
    digest.update(json.dumps(rest, sort_keys=True, separators=(",", ":")).encode() + b"\n")
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode() + b"\n")
        digest.update(a.data)  # the buffer itself: no copy
    return digest.hexdigest()


def _checksum_1(arrays: dict[str, np.ndarray]) -> str:
    """The arrays-only checksum of format 1, kept to verify files of earlier releases."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.data)
    return digest.hexdigest()


# --- writing -------------------------------------------------------------------------------


def save(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write ``arrays`` (host NumPy arrays of numeric dtypes) and JSON-able ``meta`` to
    ``path`` atomically, with ``"format"`` and ``"checksum"`` entries added to ``meta``.

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
        if not isinstance(a, np.ndarray) or not _numeric(a.dtype):
            what = a.dtype if isinstance(a, np.ndarray) else type(a).__name__
            raise TypeError(f"checkpoint: {name!r} must be a numeric NumPy array, got {what}")
    # the metadata as load will parse it back (tuples become lists, ...), so both hash the same
    meta = json.loads(json.dumps({**meta, "format": FORMAT}))
    meta["checksum"] = checksum(arrays, meta)
    payload = {**arrays, _META: np.array(json.dumps(meta))}
    return atomic_write(path, lambda f: np.savez(f, **payload))  # type: ignore[arg-type]


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """Replace ``path`` all at once by what ``write(f)`` writes to the binary file ``f``.

    ``f`` is a new temporary file ``.NAME.<random>.tmp`` beside ``path`` (so on the same file
    system), created with the mode the result should get (that of the file it replaces, or
    ``0o666`` less the umask); after ``write`` it is flushed, synced and renamed over
    ``path`` (``os.replace``: a link at ``path`` is replaced, not written through). Readers
    see the old file or the new one, never a mix. Any exception (a full disk, Ctrl-C) removes
    the temporary file and leaves ``path`` as it was; only a process killed outright leaves
    it, recognisable by its name. Returns ``path``."""
    path = Path(path)
    fd, tmp = _temporary(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def copy_file(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Replace ``path`` by a copy of ``source``, atomically (as ``save``)."""
    with Path(source).open("rb") as f:
        return atomic_write(path, lambda to: shutil.copyfileobj(f, to))


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


# --- reading -------------------------------------------------------------------------------


def load(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint written by ``save``: ``(arrays, meta)``, checksum verified.

    Every size and dtype is checked from the zip directory and the ``.npy`` headers before
    any array data is read; anything malformed, damaged or altered raises
    ``CheckpointError`` naming the file (a missing file raises ``FileNotFoundError``)."""
    import struct
    import zipfile
    import zlib

    path = Path(path)
    # what a damaged zip or .npy header can make zipfile and numpy raise (UnicodeDecodeError
    # is a ValueError, an encrypted member a RuntimeError); not MemoryError: every size is
    # checked first, so one means a real file too big for this machine
    damaged = (OSError, EOFError, ValueError, LookupError, NotImplementedError, RuntimeError,
               OverflowError, struct.error, zlib.error, zipfile.BadZipFile)  # fmt: skip
    try:
        with zipfile.ZipFile(path) as archive:
            members = _members(archive, path.stat().st_size, path)
            if _META not in members:
                raise CheckpointError(
                    f"{path}: no {_META} entry; not a backprop_gpu checkpoint (or a damaged one)"
                )
            headers = {name: _header(archive, info, name, path) for name, info in members.items()}
            text = _read(archive, members.pop(_META), headers.pop(_META), _META, path)
            meta = _metadata(text, path)
            arrays = {n: _read(archive, members[n], headers[n], n, path) for n in members}
    except (FileNotFoundError, CheckpointError):
        raise
    except damaged as e:
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    try:
        expected = _checksum_1(arrays) if meta["format"] == FORMAT_1 else checksum(arrays, meta)
    except RecursionError as e:  # metadata nested too deep for json to write it back
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from e
    if meta.get("checksum") != expected:
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted or was altered")
    return arrays, meta


def _members(archive: Any, file_size: int, path: Path) -> dict[str, Any]:
    """The archive's members by array name, after checking that each is a ``.npy`` entry,
    named once, not encrypted, and no bigger than the file can hold."""
    import zipfile

    members: dict[str, Any] = {}
    for info in archive.infolist():
        member = info.filename
        if not member.endswith(".npy") or info.is_dir():
            raise CheckpointError(f"{path}: member {member!r} is not a .npy array")
        name = member[: -len(".npy")]
        if name in members:
            raise CheckpointError(f"{path}: member {member!r} appears more than once")
        if info.flag_bits & 0x1:
            raise CheckpointError(f"{path}: member {member!r} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(
                f"{path}: member {member!r} uses compression method {info.compress_type}; "
                "checkpoints are stored (or deflated, as by numpy.savez_compressed)"
            )
        if info.compress_type == zipfile.ZIP_STORED:
            expands = info.file_size == info.compress_size
        else:  # deflate turns a byte into at most ~1032
            expands = info.file_size <= _DEFLATE_MAX_RATIO * info.compress_size + 64
        if not expands or info.header_offset + info.compress_size > file_size:
            raise CheckpointError(
                f"{path}: member {member!r} declares {info.file_size} bytes from "
                f"{info.compress_size} at offset {info.header_offset}, more than the "
                f"{file_size}-byte file can hold"
            )
        members[name] = info
    return members


def _header(archive: Any, info: Any, name: str, path: Path) -> tuple[Any, ...]:
    """``(shape, fortran_order, dtype, header_length)`` from a member's ``.npy`` header,
    after checking that the dtype is plain numeric (a JSON string for ``__meta__``) and
    that the member holds exactly the bytes the shape and dtype declare."""
    from numpy.lib import format as npy

    with archive.open(info) as f:
        version = npy.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = npy.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy.read_array_header_2_0(f)
        else:  # 3.0 only adds UTF-8 field names, for structured dtypes: never ours
            raise CheckpointError(f"{path}: {name} has .npy format version {version}")
        header_length = f.tell()
    if name == _META:
        if dtype.kind != "U" or shape != ():
            raise CheckpointError(
                f"{path}: {_META} must be one JSON string, got a {dtype} array of shape {shape}"
            )
    elif not _numeric(dtype):
        raise CheckpointError(f"{path}: {name} has dtype {dtype}, not a numeric type")
    if any(n < 0 for n in shape):
        raise CheckpointError(f"{path}: {name} declares a negative shape {shape}")
    declared, held = math.prod(shape) * dtype.itemsize, info.file_size - header_length
    if declared != held:
        raise CheckpointError(
            f"{path}: {name} declares shape {shape} of {dtype} ({declared} bytes), "
            f"but its member holds {held} bytes"
        )
    return shape, fortran_order, dtype, header_length


def _read(archive: Any, info: Any, header: tuple[Any, ...], name: str, path: Path) -> np.ndarray:
    """A member's array, from its header checked by ``_header``, read straight into the
    array ``_CHUNK`` bytes at a time: memory stays about the array's size, and a member whose
    data ends before its declared size (a deflated member whose directory entry lies about
    its size) fails at the end of its data, not after a buffer of the declared size."""
    shape, fortran_order, dtype, header_length = header
    size = math.prod(shape)
    try:
        flat = np.empty(size, dtype)  # no bigger than the member's declared size: checked
    except MemoryError:  # (a declared size that the compressed data cannot really hold)
        raise CheckpointError(
            f"{path}: {name} declares {size * dtype.itemsize} bytes (shape {shape} of "
            f"{dtype}) from {info.compress_size} compressed bytes, more memory than is free "
            "here; a damaged or crafted file, or one too big for this machine"
        ) from None
    buffer = memoryview(flat.view(np.uint8))  # type: ignore[arg-type]
    with archive.open(info) as f:
        f.read(header_length)
        done = 0
        while done < len(buffer):
            got = f.readinto(buffer[done : done + _CHUNK])
            if not got:
                raise EOFError(
                    f"{info.filename}: the data ends after {done} of {len(buffer)} bytes"
                )
            done += got
    array: np.ndarray = flat.reshape(shape[::-1]).T if fortran_order else flat.reshape(shape)
    return array


def _metadata(text: np.ndarray, path: Path) -> dict[str, Any]:
    """The parsed ``__meta__`` JSON object, with a known ``format``."""
    try:
        meta = json.loads(str(text[()]))
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable metadata ({e})") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object, got {type(meta).__name__}")
    found = meta.get("format")
    if found not in (FORMAT, FORMAT_1):
        ours = isinstance(found, str) and found.startswith("backprop_gpu-checkpoint-")
        why = "was it written by a newer backprop_gpu?" if ours else "not a backprop_gpu checkpoint"
        raise CheckpointError(
            f"{path}: format {reprlib.repr(found)}, expected {FORMAT!r} (or {FORMAT_1!r}); {why}"
        )
    return meta


def _numeric(dtype: np.dtype[Any]) -> bool:
    """A plain numeric dtype: not object, string, structured or with a sub-array."""
    return dtype.kind in _NUMERIC and dtype.names is None and dtype.subdtype is None
