"""Checkpoint integrity: the checksum covers the metadata, the metadata's values are checked,
crafted or damaged files raise ``CheckpointError`` (naming the file) before any large
allocation, and saved files get the usual permissions."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib import format as npy

import backprop_gpu as bg
from backprop_gpu import checkpoint

from .test_checkpoint import X, Y, assert_refused_and_model_unchanged, trained
from .test_model import params

# --- helpers -------------------------------------------------------------------------------


def _contents(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A checkpoint's arrays and metadata read with plain NumPy, as a user's tool would."""
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    return arrays, json.loads(str(arrays.pop("__meta__")))


def _rezip(path: Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Rewrite the file with ``np.savez``, keeping the stored checksum (an edit by a tool)."""
    np.savez(path, **arrays, __meta__=np.array(json.dumps(meta)))  # type: ignore[arg-type]


def _npy(header: dict[str, Any], data: bytes = b"") -> bytes:
    """A ``.npy`` member: a hand-written header, then ``data``."""
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + data


def _member(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a)
    return buffer.getvalue()


def _zip(path: Path, members: dict[str, bytes] | list[tuple[str, bytes]], **kw: Any) -> Path:
    items = members.items() if isinstance(members, dict) else members
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", **kw) as z:
        warnings.simplefilter("ignore")  # "Duplicate name": on purpose in one case
        for name, data in items:
            z.writestr(name, data)
    return path


META_OK = _member(np.array(json.dumps({"format": checkpoint.FORMAT, "kind": "parameters"})))


def _refused(path: Path, match: str) -> str:
    """Load ``path`` both ways; each must raise CheckpointError naming the file and ``match``."""
    with pytest.raises(bg.CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and re.search(match, message), message
    with pytest.raises(bg.CheckpointError, match=match):
        bg.Model.load(path)
    return message


# --- item 4: the checksum covers the metadata ----------------------------------------------

EDITS = {
    "ReLU -> Sigmoid": lambda m: m["layers"][1].update({"class": "Sigmoid"}),
    "learning rate 1e6": lambda m: m["optimizer"]["config"].update({"learning_rate": 1e6}),
    "epochs_trained 999": lambda m: m.update({"epochs_trained": 999}),
    "epochs_trained -5": lambda m: m.update({"epochs_trained": -5}),
    "iterations 0": lambda m: m["optimizer"].update({"iterations": 0}),
    "L2 off": lambda m: m["layers"][0]["config"].update({"weight_regularizer_l2": 0.0}),
    "kind": lambda m: m.update({"kind": "parameters"}),
    "extra key": lambda m: m.update({"note": "hello"}),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_edited_metadata_fails_the_checksum(backend: bg.Backend, tmp_path: Path, edit: str) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    arrays, meta = _contents(path)
    EDITS[edit](meta)
    _rezip(path, arrays, meta)  # a well-formed file whose settings no longer match
    assert_refused_and_model_unchanged(path, "checksum mismatch")


def test_checksum_covers_names_dtypes_shapes_and_bytes(tmp_path: Path) -> None:
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(3, np.int64)}
    meta = {"kind": "parameters", "format": checkpoint.FORMAT}
    reference = checkpoint.checksum(arrays, meta)
    variants = [
        ({"c": arrays["a"], "b": arrays["b"]}, meta),  # renamed
        ({**arrays, "a": arrays["a"].astype(np.float64)}, meta),  # same values, other dtype
        ({**arrays, "a": arrays["a"].reshape(3, 2)}, meta),  # same bytes, other shape
        ({**arrays, "a": arrays["a"] + np.float32(1e-6)}, meta),  # other bytes
        ({**arrays, "extra": np.zeros(0)}, meta),  # one more array, even empty
        (arrays, {**meta, "kind": "model"}),  # other metadata
    ]
    digests = {checkpoint.checksum(a, m) for a, m in variants}
    assert reference not in digests and len(digests) == len(variants)
    # neither key order nor the stored checksum itself changes it
    assert checkpoint.checksum(arrays, {"format": checkpoint.FORMAT, "kind": "parameters",
                                        "checksum": "x"}) == reference  # fmt: skip


def _resaved(path: Path, edit: Any) -> None:
    """Edit the metadata and save through ``checkpoint.save``, which recomputes the checksum
    (what a deliberate forger would do)."""
    arrays, meta = checkpoint.load(path)
    edit(meta)
    checkpoint.save(path, arrays, meta)


BAD_VALUES = {
    "epochs_trained -5": (lambda m: m.update(epochs_trained=-5), r"epochs_trained must be a non-negative integer, got -5"),  # noqa: E501
    "epochs_trained 2.5": (lambda m: m.update(epochs_trained=2.5), r"epochs_trained .* got 2\.5"),
    "epochs_trained true": (lambda m: m.update(epochs_trained=True), r"epochs_trained .* got True"),
    "epochs_trained '3'": (lambda m: m.update(epochs_trained="3"), r"epochs_trained .* got '3'"),
    "epochs_trained a long list": (lambda m: m.update(epochs_trained=list(range(1000))), r"epochs_trained must be a non-negative integer, got \[0, 1, 2, 3, 4, 5, \.\.\.\]$"),  # noqa: E501
    "epochs_trained missing": (lambda m: m.pop("epochs_trained"), r"no epochs_trained"),
    "iterations -1": (lambda m: m["optimizer"].update(iterations=-1), r"optimizer\.iterations must be a non-negative integer"),  # noqa: E501
    "lr -0.1": (lambda m: m["optimizer"].update(current_learning_rate=-0.1), r"current_learning_rate must be a finite number >= 0, got -0\.1"),  # noqa: E501
    "lr nan": (lambda m: m["optimizer"].update(current_learning_rate=float("nan")), r"current_learning_rate .* got nan"),  # noqa: E501
    "lr inf": (lambda m: m["optimizer"].update(current_learning_rate=float("inf")), r"current_learning_rate .* got inf"),  # noqa: E501
    "lr string": (lambda m: m["optimizer"].update(current_learning_rate="0.1"), r"current_learning_rate .* got '0\.1'"),  # noqa: E501
    "layers not a list": (lambda m: m.update(layers={"0": 1}), r"layers must be a non-empty list"),
    "layers empty": (lambda m: m.update(layers=[]), r"layers must be a non-empty list"),
    "layer not an object": (lambda m: m["layers"].__setitem__(1, "ReLU"), r"layers\[1\] must be an object"),  # noqa: E501
    "config not an object": (lambda m: m["layers"][0].update(config=[2, 32]), r"layers\[0\]\.config must be an object"),  # noqa: E501
    "loss missing": (lambda m: m.pop("loss"), r"no loss"),
    "optimizer class": (lambda m: m["optimizer"].update({"class": 5}), r"optimizer must be an object"),  # noqa: E501
    "n_inputs 3": (lambda m: m["layers"][0]["config"].update(n_inputs=3), r"layers\[0\] \(Dense\): Dense: expected weights of shape \(3, 32\), got \(2, 32\)"),  # noqa: E501
    "n_inputs 2**40": (lambda m: m["layers"][0]["config"].update(n_inputs=2**40), r"layers\[0\] \(Dense\): Dense: expected weights of shape \(1099511627776, 32\)"),  # noqa: E501
    "n_neurons '32'": (lambda m: m["layers"][0]["config"].update(n_neurons="32"), r"layers\[0\] \(Dense\): Dense: n_neurons must be a positive integer"),  # noqa: E501
    "regularizer -1": (lambda m: m["layers"][0]["config"].update(weight_regularizer_l2=-1.0), r"layers\[0\] \(Dense\): .*weight_regularizer_l2"),  # noqa: E501
    "dropout rate 2": (lambda m: m["layers"][2]["config"].update(rate=2.0), r"layers\[2\] \(Dropout\)"),  # noqa: E501
    "unknown option": (lambda m: m["layers"][0]["config"].update(color="red"), r"layers\[0\] \(Dense\): .*color"),  # noqa: E501
    "optimizer lr -1": (lambda m: m["optimizer"]["config"].update(learning_rate=-1.0), r"cannot rebuild the model: .*learning_rate"),  # noqa: E501
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_VALUES, ids=list(BAD_VALUES))
def test_metadata_values_are_checked_even_with_a_valid_checksum(
    backend: bg.Backend, tmp_path: Path, case: str
) -> None:
    """A file whose checksum was recomputed after the edit still cannot set nonsense; the
    error names the file and the field, and nothing as big as a forged shape is allocated."""
    path = tmp_path / "m.npz"
    trained(dropout=0.1).save(path)
    edit, match = BAD_VALUES[case]
    _resaved(path, edit)
    tracemalloc.start()
    try:
        with pytest.raises(bg.CheckpointError) as info:
            bg.Model.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{path}: ") and re.search(match, str(info.value))
    assert peak < 2**22  # 4 MiB: a 2**40-input layer was never drawn


def _checksum_1(arrays: dict[str, np.ndarray]) -> str:
    """Format 1's checksum as earlier releases computed it: the arrays only."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        digest.update(a.tobytes())
    return digest.hexdigest()


def _format_1(path: Path, edit: Any = None) -> None:
    """Rewrite ``path`` as an earlier release wrote it: format 1, arrays-only checksum."""
    arrays, meta = _contents(path)
    if edit is not None:
        edit(meta)
    meta |= {"format": checkpoint.FORMAT_1, "checksum": _checksum_1(arrays)}
    _rezip(path, arrays, meta)


def test_format_1_files_of_earlier_releases_still_load(backend: bg.Backend, tmp_path: Path) -> None:
    source = trained()
    path = tmp_path / "m.npz"
    source.save(path)
    _format_1(path)
    loaded = bg.Model.load(path)
    assert loaded.epochs_trained == 2 and loaded.optimizer.iterations == 10  # type: ignore[union-attr]
    for a, b in zip(params(source), params(loaded), strict=True):
        assert np.array_equal(a, b)
    loaded.save(path)  # saving again upgrades the file
    assert checkpoint.load(path)[1]["format"] == checkpoint.FORMAT == "backprop_gpu-checkpoint-2"

    # their numbers are still verified, and their metadata's values checked
    _format_1(path)
    arrays, meta = _contents(path)
    arrays["layers.0.weights"][0, 0] += 1
    _rezip(path, arrays, meta)
    with pytest.raises(bg.CheckpointError, match="checksum mismatch"):
        bg.Model.load(path)
    source.save(path)
    _format_1(path, lambda m: m.update(epochs_trained=-5))
    with pytest.raises(bg.CheckpointError, match="epochs_trained must be a non-negative integer"):
        bg.Model.load(path)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    trained().save(path)
    arrays, meta = _contents(path)
    _rezip(path, arrays, meta | {"format": "backprop_gpu-checkpoint-3"})
    _refused(
        path,
        r"format 'backprop_gpu-checkpoint-3', expected 'backprop_gpu-checkpoint-2' "
        r"\(or 'backprop_gpu-checkpoint-1'\); was it written by a newer backprop_gpu\?$",
    )


# --- item 5: crafted and damaged files -----------------------------------------------------

CRAFTED: dict[str, tuple[Any, str]] = {
    # sizes: refused from the header, before anything that big is allocated
    "shape 2**40": ({"x.npy": _npy({"descr": "<f4", "fortran_order": False, "shape": (2**40,)})},
                    r"x declares shape \(1099511627776,\) of float32 \(4398046511104 bytes\), but its member holds 0 bytes"),  # noqa: E501
    "64 GiB": ({"x.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (2**33,)}, b"\0" * 64)},  # noqa: E501
               r"x declares shape \(8589934592,\) of float64 \(68719476736 bytes\)"),
    "8 bytes short": ({"x.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (3,)}, b"\0" * 16)},  # noqa: E501
                      r"x declares shape \(3,\) of float64 \(24 bytes\), but its member holds 16"),
    "negative shape": ({"x.npy": _npy({"descr": "<f4", "fortran_order": False, "shape": (-1, 4)})},
                       r"x declares a negative shape \(-1, 4\)"),
    # dtypes: plain numeric only
    "object dtype": ({"x.npy": _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\0" * 8)},  # noqa: E501
                     r"x has dtype object, not a numeric type"),
    "structured": ({"x.npy": _member(np.zeros(2, [("a", "<f4"), ("b", "<i4")]))},
                   r"x has dtype \[\('a', '<f4'\), \('b', '<i4'\)\], not a numeric type"),
    "sub-array": ({"x.npy": _npy({"descr": ("<f4", (2**20,)), "fortran_order": False, "shape": (2**20,)})},  # noqa: E501
                  r"x has dtype \('<f4', \(1048576,\)\), not a numeric type"),
    "strings": ({"x.npy": _member(np.array(["a", "b"]))}, r"x has dtype <U1, not a numeric type"),
    "datetime": ({"x.npy": _member(np.zeros(2, "datetime64[s]"))}, r"x has dtype datetime64\[s\]"),
    # the metadata
    "meta a list": ({"__meta__.npy": _member(np.array("[1, 2]"))}, r"metadata must be a JSON object, got list"),  # noqa: E501
    "meta a number": ({"__meta__.npy": _member(np.array("5"))}, r"metadata must be a JSON object, got int"),  # noqa: E501
    "meta not text": ({"__meta__.npy": _member(np.array(5))}, r"__meta__ must be one JSON string, got a int64 array of shape \(\)"),  # noqa: E501
    "meta two strings": ({"__meta__.npy": _member(np.array(["{}", "{}"]))}, r"__meta__ must be one JSON string, got a <U2 array of shape \(2,\)"),  # noqa: E501
    "meta bad JSON": ({"__meta__.npy": _member(np.array("{'format': 1"))}, r"unreadable metadata"),
    "meta nested": ({"__meta__.npy": _member(np.array("[" * 100_000))}, r"unreadable metadata"),
    "meta no format": ({"__meta__.npy": _member(np.array("{}"))}, r"format None, expected .*\); not a backprop_gpu checkpoint$"),  # noqa: E501
    "no meta": ({"x.npy": _member(np.zeros(2))}, r"no __meta__ entry"),
    # the zip members
    "not .npy": ({"__meta__.npy": META_OK, "notes.txt": b"hello"}, r"member 'notes\.txt' is not a \.npy array"),  # noqa: E501
    "a folder": ({"__meta__.npy": META_OK, "sub/": b""}, r"member 'sub/' is not a \.npy array"),
    "duplicate": ([("__meta__.npy", META_OK), ("x.npy", _member(np.zeros(2))), ("x.npy", _member(np.ones(2)))],  # noqa: E501
                  r"member 'x\.npy' appears more than once"),
    "not .npy inside": ({"__meta__.npy": META_OK, "x.npy": b"PK\3\4 not an array"}, r"not a readable checkpoint \(ValueError: .*magic"),  # noqa: E501
    "npy version 9": ({"__meta__.npy": META_OK, "x.npy": b"\x93NUMPY\x09\x00" + b"\0" * 40}, r"x has .npy format version \(9, 0\)"),  # noqa: E501
    "npy header junk": ({"__meta__.npy": META_OK, "x.npy": b"\x93NUMPY\x01\x00\x08\x00[1, 2]\n"}, r"not a readable checkpoint"),  # noqa: E501
    "npy header huge": ({"__meta__.npy": META_OK, "x.npy": b"\x93NUMPY\x02\x00\xff\xff\xff\xff"}, r"not a readable checkpoint"),  # noqa: E501
}  # fmt: skip


@pytest.mark.parametrize("case", CRAFTED, ids=list(CRAFTED))
def test_crafted_files_raise_checkpoint_error(tmp_path: Path, case: str) -> None:
    members, match = CRAFTED[case]
    if isinstance(members, dict) and "__meta__.npy" not in members and case != "no meta":
        members = {"__meta__.npy": META_OK, **members}
    path = _zip(tmp_path / "bad.npz", members)
    tracemalloc.start()
    try:
        _refused(path, match)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**24  # 16 MiB (the nested JSON costs a few): nothing of the declared size


def test_pickled_objects_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.touch, (marker,))

    path = tmp_path / "evil.npz"
    np.savez(path, __meta__=np.array("{}"), payload=np.array([Evil()], dtype=object))
    _refused(path, "payload has dtype object, not a numeric type")
    assert not marker.exists()


def test_other_compression_methods_are_refused_and_deflate_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    source = trained()
    source.save(path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    _zip(path, members, compression=zipfile.ZIP_BZIP2)
    _refused(path, r"member '.*' uses compression method 12")
    _zip(path, members, compression=zipfile.ZIP_DEFLATED)  # as numpy.savez_compressed writes
    loaded = bg.Model.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(params(source), params(loaded), strict=True))


LYING = textwrap.dedent(
    """
    import io, resource, struct, sys, zipfile
    import numpy as np
    from numpy.lib import format as npy
    from backprop_gpu import checkpoint

    path, limit = sys.argv[1], sys.argv[2] == "limit"
    # a deflated member x.npy whose header and directory declare 3.5 GiB (less than 1032
    # times its 4 MiB of incompressible deflated data), and its stream holding only those
    declared = 7 * 2**29
    header = {"descr": "<u1", "fortran_order": False, "shape": (declared - 128,)}
    buffer = io.BytesIO()
    npy.write_array_header_1_0(buffer, header)
    head = buffer.getvalue()
    assert len(head) == 128
    meta = np.array('{"format": "%s", "kind": "parameters"}' % checkpoint.FORMAT)
    meta_bytes = io.BytesIO()
    np.save(meta_bytes, meta)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("__meta__.npy", meta_bytes.getvalue())
        z.writestr("x.npy", head + np.random.default_rng(0).bytes(4 * 2**20))
    raw = bytearray(open(path, "rb").read())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("x.npy")
    assert declared <= 1032 * info.compress_size
    # the size fields, in its local header and in the central directory
    raw[info.header_offset + 22 : info.header_offset + 26] = struct.pack("<I", declared)
    central = raw.rindex(b"PK\\x01\\x02")
    raw[central + 24 : central + 28] = struct.pack("<I", declared)
    open(path, "wb").write(raw)

    if limit:  # less memory than declared: np.empty itself fails
        size = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.RLIM_INFINITY))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        print(e)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print(f"grew {grown // 1024} MiB")
    """
)


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status, sets RLIMIT_AS")
@pytest.mark.parametrize("limit", [True, False], ids=["less memory than declared", "enough"])
def test_a_deflated_member_declaring_more_than_its_data_is_refused(
    tmp_path: Path, limit: bool
) -> None:
    """A directory entry that says 3.5 GiB of 4 MiB deflated (within deflate's ratio, so not
    refused from the directory): with less memory than that, the allocation's MemoryError is
    a CheckpointError naming the member and its sizes; with enough, the read stops where the
    data ends, having touched no more memory than the data (run in a child process: a memory
    limit is process-wide)."""
    path = tmp_path / "lying.npz"
    out = subprocess.run(
        [sys.executable, "-c", LYING, str(path), "limit" if limit else "no"], capture_output=True,
        text=True, timeout=120, env=os.environ | {"OPENBLAS_NUM_THREADS": "1"},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    message, grown = out.stdout.splitlines()
    assert message.startswith(f"{path}: ")
    if limit:
        assert message == (
            f"{path}: x declares 3758096256 bytes (shape (3758096256,) of uint8) from "
            f"{zipfile.ZipFile(path).getinfo('x.npy').compress_size} compressed bytes, more "
            "memory than is free here; a damaged or crafted file, or one too big for this machine"
        )
    else:
        assert re.search(r"the data ends after 4194304 of 3758096256 bytes", message), message
    assert int(grown.split()[1]) < 100  # MiB: the 4 MiB of data and zlib's buffers


@pytest.mark.parametrize(
    "compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"]
)
def test_loading_takes_about_the_memory_of_the_arrays(tmp_path: Path, compression: int) -> None:
    """Each array is read into its own buffer a MiB at a time (zipfile's readinto alone would
    read the whole member into a bytes object first, then copy it: 3 to 4 times the size)."""
    path = tmp_path / "big.npz"
    a = np.random.default_rng(0).random(4_000_000)  # 32 MB
    checkpoint.save(path, {"a": a}, {"kind": "parameters"})
    if compression == zipfile.ZIP_DEFLATED:
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}
        _zip(path, members, compression=compression)
    tracemalloc.start()
    try:
        arrays, _ = checkpoint.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(arrays["a"], a)
    assert peak < a.nbytes + 4 * 2**20  # the array, plus a MiB-sized chunk or two


def _small_checkpoint(tmp_path: Path) -> tuple[Path, bytes]:
    path = tmp_path / "p.npz"
    model = bg.Model([bg.Dense(2, 3, seed=0)]).set(loss=bg.MeanSquaredError()).finalize()
    model.save_parameters(path)  # 1.5 kB: three members
    return path, path.read_bytes()


def test_every_flipped_byte_is_caught_or_harmless(tmp_path: Path) -> None:
    """Flip each byte of a whole checkpoint in turn (zip headers, .npy headers, metadata,
    numbers, central directory): each load raises CheckpointError naming the file, or gives
    exactly what was saved (a flip in a field nothing reads, such as a timestamp)."""
    path, good = _small_checkpoint(tmp_path)
    arrays, meta = checkpoint.load(path)
    caught = harmless = 0
    for i in range(len(good)):
        mask = (0x01, 0x80, 0xFF)[i % 3]  # one flip a byte, every bit pattern in each field
        damaged = bytearray(good)
        damaged[i] ^= mask
        path.write_bytes(damaged)
        try:
            got_arrays, got_meta = checkpoint.load(path)
        except bg.CheckpointError as e:
            assert str(e).startswith(f"{path}: "), (i, mask, e)
            caught += 1
            continue
        assert got_meta == meta and got_arrays.keys() == arrays.keys(), (i, mask)
        for name, a in arrays.items():
            b = got_arrays[name]
            assert a.dtype == b.dtype and np.array_equal(a, b), (i, mask, name)
        harmless += 1
    assert caught > 0.6 * len(good) and harmless > 0  # most bytes matter


def test_every_truncation_is_caught(tmp_path: Path) -> None:
    path, good = _small_checkpoint(tmp_path)
    for n in range(len(good)):
        path.write_bytes(good[:n])
        with pytest.raises(bg.CheckpointError) as info:
            checkpoint.load(path)
        assert str(info.value).startswith(f"{path}: "), n


# --- item 12: file modes, links and temporary files ----------------------------------------

MODES = textwrap.dedent(
    """
    import os, sys, stat
    import numpy as np
    import backprop_gpu as bg
    from backprop_gpu import checkpoint
    folder = sys.argv[1]
    model = bg.Model([bg.Dense(2, 3, seed=0)]).set(loss=bg.MeanSquaredError(),
                                                   optimizer=bg.SGD()).finalize()
    for umask in (0o022, 0o077, 0o002):
        os.umask(umask)
        for how in ("save", "save_parameters", "checkpoint"):
            path = os.path.join(folder, f"{how}-{umask:03o}.npz")
            if how == "checkpoint":
                checkpoint.save(path, {"a": np.zeros(2)}, {})
            else:
                getattr(model, how)(path)
            print(how, f"{umask:03o}", f"{stat.S_IMODE(os.stat(path).st_mode):03o}")
    """
)


def test_saved_files_get_the_mode_the_umask_gives(tmp_path: Path) -> None:
    """0o666 less the umask, as numpy.save and open() give (run in a child process: the
    umask is process-wide)."""
    out = subprocess.run(
        [sys.executable, "-c", MODES, str(tmp_path)], capture_output=True, text=True,
        timeout=120, check=True, env=os.environ | {"BACKPROP_GPU_BACKEND": "numpy"},
    ).stdout.split()  # fmt: skip
    modes = {(out[i], out[i + 1]): out[i + 2] for i in range(0, len(out), 3)}
    expected = {"022": "644", "077": "600", "002": "664"}
    assert len(modes) == 9
    assert all(mode == expected[umask] for (_, umask), mode in modes.items()), modes


def test_saving_over_a_file_keeps_its_permissions(tmp_path: Path) -> None:
    path = tmp_path / "m.npz"
    model = trained()
    model.save(path)
    for mode in (0o640, 0o600, 0o444):
        path.chmod(mode)
        model.save(path)
        assert path.stat().st_mode & 0o777 == mode
    bg.Model.load(path)


def test_saving_over_a_symlink_replaces_the_link(tmp_path: Path) -> None:
    """os.replace semantics, as documented in checkpoint.save: the link becomes the new file
    and the file it pointed to is left as it was."""
    target = tmp_path / "target.npz"
    model = trained()
    model.save_parameters(target)
    before = target.read_bytes()
    link = tmp_path / "link.npz"
    link.symlink_to(target)
    model.train(X, Y, epochs=1, print_every=0)
    model.save(link)
    assert not link.is_symlink() and target.read_bytes() == before
    assert bg.Model.load(link).epochs_trained == 3
    assert checkpoint.load(target)[1]["kind"] == "parameters"


def test_the_temporary_file_is_hidden_beside_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``.NAME.<random>.tmp`` in the same folder (what run folders clean up after a killed
    save), already with the final mode while it is written."""
    seen: list[tuple[str, int]] = []
    savez = np.savez

    def spy(f: Any, **arrays: Any) -> None:
        seen.extend((p.name, p.stat().st_mode & 0o777) for p in tmp_path.iterdir())
        savez(f, **arrays)

    monkeypatch.setattr(checkpoint.np, "savez", spy)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(b"old")
    path.chmod(0o640)
    trained().save(path)
    temporary = [(name, mode) for name, mode in seen if name != "checkpoint.npz"]
    assert len(temporary) == 1
    name, mode = temporary[0]
    assert re.fullmatch(r"\.checkpoint\.npz\.[0-9a-f]{12}\.tmp", name) and mode == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.npz"]


FULL_DISK = textwrap.dedent(
    """
    import resource, signal, sys
    import backprop_gpu as bg
    path = sys.argv[1]
    model = bg.Model([bg.Dense(300, 300, seed=0)]).set(loss=bg.MeanSquaredError()).finalize()
    model.save_parameters(path)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails, EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
    model.layers[0].biases[...] = 1
    try:
        model.save_parameters(path)
    except OSError as e:
        print("failed:", e.errno)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs RLIMIT_FSIZE (POSIX)")
def test_a_write_error_mid_save_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The kernel refuses a write half-way (file size limit, as a full disk would): the save
    raises, its temporary file is gone and the previous file is intact."""
    path = tmp_path / "p.npz"
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(path)], capture_output=True, text=True,
        timeout=120, check=True, env=os.environ | {"BACKPROP_GPU_BACKEND": "numpy"},
    ).stdout  # fmt: skip
    assert out.split() == ["failed:", "27"]  # EFBIG
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]
    assert np.all(checkpoint.load(path)[0]["layers.0.biases"] == 0)


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "m.npz"
    (folder / "inside").mkdir(parents=True)  # a non-empty folder where the file should go
    with pytest.raises(OSError):
        trained().save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.npz"]
    assert [p.name for p in folder.iterdir()] == ["inside"]
