"""Dropout's generator, Philox4x32-10 (backprop_gpu.philox): the Random123 known answers, one
independent scalar implementation, the same bits from the xp reference, the C extension and
the CUDA kernel on every backend, and Dropout's masks as a function of (seed, epoch, draw)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import backprop_gpu as bg
from backprop_gpu import philox
from backprop_gpu.datasets import spiral_data

from .conftest import gpu_only
from .test_model import classifier, params

# Random123 tests/kat_vectors (github.com/DEShawResearch/random123 at 9545ff6, lines 27-29):
# "philox4x32 10" CTR (4 words) KEY (2 words) EXPECTED (4 words)
KAT = [
    ((0x00000000,) * 4, (0x00000000,) * 2, (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]
SEED = 0x0123456789ABCDEF  # both key words nonzero
needs_ext = pytest.mark.skipif(
    not philox.HAVE_C and os.environ.get("BACKPROP_GPU_REQUIRE_EXT") != "1",
    reason="backprop_gpu._cpu is not built here",
)


def scalar_philox(counter: tuple[int, ...], key: tuple[int, ...]) -> tuple[int, ...]:
    """Philox4x32-10 on Python ints, written from the paper's definition (bump the key, then
    round, for rounds 2..10), independently of philox.philox4x32."""
    c, k = list(counter), list(key)
    for r in range(10):
        if r:
            k = [(k[0] + 0x9E3779B9) % 2**32, (k[1] + 0xBB67AE85) % 2**32]
        hi0, lo0 = divmod(0xD2511F53 * c[0], 2**32)
        hi1, lo1 = divmod(0xCD9E8D57 * c[2], 2**32)
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0]
    return tuple(c)


def scalar_uniform(seed: int, stream: tuple[int, int], i: int, dtype: str) -> float:
    """Element ``i`` of the (seed, stream) sequence as the module docstring defines it."""

    def word(w: int) -> int:
        b = w // 4
        return scalar_philox((b % 2**32, b >> 32, *stream), (seed % 2**32, seed >> 32))[w % 4]

    if dtype == "float32":
        return (word(i) >> 8) / 2**24
    return ((word(2 * i) >> 5) * 2**26 + (word(2 * i + 1) >> 6)) / 2**53


def host(a: object) -> np.ndarray:
    return bg.to_numpy(a)


# --- the generator ------------------------------------------------------------------------


@pytest.mark.parametrize(("counter", "key", "expected"), KAT)
def test_known_answers(
    backend: bg.Backend, counter: tuple[int, ...], key: tuple[int, int], expected: tuple[int, ...]
) -> None:
    words = [backend.asarray(np.array([c, c], dtype=np.uint32)) for c in counter]
    out = philox.philox4x32(backend, (words[0], words[1], words[2], words[3]), key)
    assert all(o.dtype == backend.xp.uint32 for o in out)
    assert [host(o).tolist() for o in out] == [[e, e] for e in expected]
    assert scalar_philox(counter, key) == expected


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniforms_are_the_documented_function_of_seed_stream_and_index(
    backend: bg.Backend, dtype: str
) -> None:
    """Against the scalar implementation, at the start and beyond 2**32 blocks (the counter's
    high word), through the rows= path."""
    u = host(philox.uniform(backend, SEED, (7, 2**32 - 1), (3, 5), dtype))
    assert u.dtype == np.dtype(dtype)
    expected = [scalar_uniform(SEED, (7, 2**32 - 1), i, dtype) for i in range(15)]
    assert u.reshape(-1).tolist() == expected
    far = 2**35 + 3  # element index: block 2**33 + ... (float32) / 2**34 + ... (float64)
    part = host(philox.uniform(backend, SEED, (1, 0), (2, 1), dtype, rows=(2**36, far, far + 2)))
    assert part.reshape(-1).tolist() == [
        scalar_uniform(SEED, (1, 0), far + j, dtype) for j in (0, 1)
    ]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(0, 3), (1,), (7, 3), (64, 33, 2)])
def test_every_implementation_gives_the_same_bits(
    backend: bg.Backend, dtype: str, shape: tuple[int, ...]
) -> None:
    """uniform (C on NumPy, the CUDA kernel on CuPy) == the xp reference on this backend ==
    the xp reference on NumPy."""
    with bg.use_backend("numpy") as numpy_backend:
        expected = philox.uniform_reference(numpy_backend, SEED, (3, 9), shape, dtype)
    for draw in (philox.uniform, philox.uniform_reference):
        got = draw(backend, SEED, (3, 9), shape, dtype)
        assert backend.owns(got) and tuple(got.shape) == shape
        assert host(got).tobytes() == expected.tobytes(), draw.__name__


@needs_ext
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_c_equals_the_reference_at_every_offset_and_length(dtype: str) -> None:
    """Every start and length mod 4 (partial first and last blocks), and a long draw (the GIL
    is released)."""
    numpy_backend = bg.get_backend()
    for lo in range(6):
        for rows in range(6):
            args = (numpy_backend, SEED, (5, 6), (rows, 3), dtype, (12, lo, lo + rows))
            assert philox.uniform_c(*args).tobytes() == philox.uniform_reference(*args).tobytes()
    args = (numpy_backend, 2**64 - 1, (2**32 - 1, 0), (300, 301), dtype, None)
    assert philox.uniform_c(*args).tobytes() == philox.uniform_reference(*args).tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_equal_the_slice_of_the_whole_draw(backend: bg.Backend, dtype: str) -> None:
    whole = host(philox.uniform(backend, 11, (0, 1), (10, 7), dtype))
    for lo, hi in [(0, 10), (0, 3), (3, 7), (9, 10), (4, 4)]:
        part = philox.uniform(backend, 11, (0, 1), (hi - lo, 7), dtype, rows=(10, lo, hi))
        assert host(part).tobytes() == whole[lo:hi].tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_uniform_moments_and_range(dtype: str) -> None:
    """n = 2**22 draws: the mean is within 6 standard errors (sqrt(1/12/n) = 1.4e-4) of 1/2
    and the variance within 6 of its own (sqrt(1/180/n) = 3.6e-5) of 1/12; all lie in [0, 1)
    on the dtype's grid (multiples of 2**-24 / 2**-53); a tenth of them lie in each tenth."""
    n = 2**22
    u = philox.uniform(bg.get_backend(), 2024, (0, 0), (n,), dtype).astype(np.float64)
    assert abs(u.mean() - 0.5) < 6 * np.sqrt(1 / 12 / n)
    assert abs(u.var() - 1 / 12) < 6 * np.sqrt(1 / 180 / n)
    assert u.min() >= 0.0 and u.max() < 1.0
    bits = 24 if dtype == "float32" else 53
    assert np.all(u * 2.0**bits == np.floor(u * 2.0**bits))
    counts = np.histogram(u, bins=10, range=(0, 1))[0]  # binomial sd sqrt(n 0.1 0.9) = 614
    assert np.all(np.abs(counts - n / 10) < 6 * np.sqrt(n * 0.09))


def test_bad_arguments_are_named() -> None:
    b = bg.get_backend()
    with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*64\), got -1"):
        philox.uniform(b, -1, (0, 0), (2,), "float32")
    with pytest.raises(
        ValueError, match=r"stream\[1\] must be an int in \[0, 2\*\*32\), got 4294967296"
    ):
        philox.uniform(b, 0, (0, 2**32), (2,), "float32")
    with pytest.raises(TypeError, match="dtype must be float32 or float64, got int32"):
        philox.uniform(b, 0, (0, 0), (2,), "int32")
    with pytest.raises(ValueError, match=r"rows \(10, 2, 5\) give 3 rows but shape is \(4, 2\)"):
        philox.uniform(b, 0, (0, 0), (4, 2), "float32", rows=(10, 2, 5))
    with pytest.raises(
        ValueError, match="rows must be .total, lo, hi. with 0 <= lo <= hi <= total"
    ):
        philox.uniform(b, 0, (0, 0), (4, 2), "float32", rows=(3, 0, 4))
    with pytest.raises(TypeError, match=r"key\[1\] must be an int"):
        philox.philox4x32(b, (np.zeros(1, np.uint32),) * 4, (0, 1.5))  # type: ignore[arg-type]


# --- the CUDA source ------------------------------------------------------------------------


# (compiled to PTX with the other kernels, in one module: test_kernels.py's
# test_cuda_source_compiles_to_ptx)


@gpu_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_cuda_kernel_equals_the_reference_bitwise(dtype: str) -> None:
    with bg.use_backend("cupy") as gpu:
        for lo in range(5):
            for rows in (0, 1, 2, 3, 5, 1000):
                args = (gpu, SEED, (2, 3), (rows, 3), dtype, (lo + rows + 1, lo, lo + rows))
                got, ref = philox.uniform_cuda(*args), philox.uniform_reference(*args)
                assert host(got).tobytes() == host(ref).tobytes(), (lo, rows)


# --- Dropout ------------------------------------------------------------------------------


def numpy_mask(seed: int, epoch: int, draw: int, shape: tuple[int, ...], rate: float) -> np.ndarray:
    """Dropout's mask by the definition, from the xp reference on NumPy (no C)."""
    with bg.use_backend("numpy") as b:
        u = philox.uniform_reference(b, seed, (epoch, draw), shape, "float32")
    return (u >= rate).astype(np.float32) / np.float32(1 - rate)


def test_dropout_masks_are_the_same_bits_on_every_backend(backend: bg.Backend) -> None:
    """NumPy with and without C, array-api-strict and CuPy (each with its fast ops and with
    the reference ops): mask (seed, epoch, draw)."""
    x = np.ones((33, 17), dtype=np.float32)
    for ops_backend in (backend, backend.with_reference_ops()):
        bg.set_backend(ops_backend)  # (inside the fixture's block: undone after)
        drop = bg.Dropout(0.3, seed=SEED)
        drop.reseed(4)
        masks = [host(drop.forward(x) if d < 2 else drop.mask) for d in range(3)]
        assert masks[0].tobytes() == numpy_mask(SEED, 4, 0, x.shape, 0.3).tobytes()
        assert masks[1].tobytes() == numpy_mask(SEED, 4, 1, x.shape, 0.3).tobytes()
        assert masks[2].tobytes() == masks[1].tobytes()  # (output == mask for ones)
        drop.reseed(4)  # back to the epoch's draw 0, no generator built
        assert host(drop.forward(x)).tobytes() == masks[0].tobytes()


def test_different_seeds_epochs_and_draws_give_different_masks(backend: bg.Backend) -> None:
    x = np.ones((64, 64))
    drop = bg.Dropout(0.5, seed=1)
    first, second = host(drop.forward(x)), host(drop.forward(x))  # draws 0 and 1
    drop.reseed(1)
    next_epoch = host(drop.forward(x))
    other_seed = host(bg.Dropout(0.5, seed=2).forward(x))
    masks = [first, second, next_epoch, other_seed]
    for i in range(4):
        for j in range(i):
            # 4096 fair coins: two independent masks agree on about half (sd 32)
            assert abs(np.mean((masks[i] == 0) == (masks[j] == 0)) - 0.5) < 0.05, (i, j)


def test_unseeded_dropout_is_random_but_keeps_its_seed(backend: bg.Backend) -> None:
    a, b = bg.Dropout(0.5), bg.Dropout(0.5)
    assert a.mask_seed != b.mask_seed and 0 <= a.mask_seed < 2**63
    assert a.get_config()["seed"] is None
    x = np.ones((64, 64))
    assert not np.array_equal(host(a.forward(x)), host(b.forward(x)))
    a.reseed(0)
    again = host(a.forward(x))
    a.reseed(0)
    assert np.array_equal(host(a.forward(x)), again)


def test_dropout_rows_use_the_rows_path(backend: bg.Backend) -> None:
    """A rank's rows of the mask equal those of the whole batch, for every split."""
    whole = host(bg.Dropout(0.4, seed=3).forward(np.ones((10, 7))))
    for lo, hi in [(0, 4), (4, 7), (7, 10), (5, 5)]:
        part = bg.Dropout(0.4, seed=3)
        part.rows = (10, lo, hi)
        assert host(part.forward(np.ones((hi - lo, 7)))).tobytes() == whole[lo:hi].tobytes()


def test_bad_dropout_seed_and_epoch_are_named() -> None:
    with pytest.raises(ValueError, match=r"Dropout: seed must be None or an int in \[0, 2\*\*64\)"):
        bg.Dropout(0.5, seed=-3)
    with pytest.raises(ValueError, match=r"Dropout: seed must be None or an int"):
        bg.Dropout(0.5, seed=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Dropout.reseed: epoch must be an int in \[0, 2\*\*32\)"):
        bg.Dropout(0.5, seed=1).reseed(-1)


def test_resume_on_another_backend_continues_the_masks(backend: bg.Backend, tmp_path: Path) -> None:
    """Two epochs on NumPy, saved, two more on ``backend``: the masks are those of four
    epochs straight on NumPy, so the run matches up to float rounding."""
    X, Y = spiral_data(samples=50, classes=3, seed=0)
    with bg.use_backend("numpy"):
        straight = classifier(dropout=0.3)
        full = straight.train(X, Y, epochs=4, batch_size=16, print_every=0, seed=9)
        first = classifier(dropout=0.3)
        head = first.train(X, Y, epochs=2, batch_size=16, print_every=0, seed=9)
        first.save(tmp_path / "m.npz")
    resumed = bg.Model.load(tmp_path / "m.npz")
    tail = resumed.train(X, Y, epochs=2, batch_size=16, print_every=0, seed=9)
    # the last step's mask (epoch 3, draw 9): the same bits
    assert host(resumed.layers[2].mask).tobytes() == host(straight.layers[2].mask).tobytes()
    for ours, ref in zip(head + tail, full, strict=True):
        for key in ref:
            assert ours[key] == pytest.approx(ref[key], rel=1e-5), key
    for a, b in zip(params(resumed), params(straight), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
