"""Write the small example data files of this folder (a few KB each), the same bytes every
time, for the README's "Your own data" commands and the tests:

- ``iris-like.csv``: 4 measurements and a string ``species`` (3 classes, 40 rows each), and
  ``iris-like-new.csv``: 6 rows of the same measurements without ``species``, to predict;
- ``wave.tsv``: a regression table, ``y = sin(x1) + x2 / 2`` from two features (tab-separated);
- ``blobs.npz``: ``X_train``, ``y_train``, ``X_val``, ``y_val``, 2-D points of 4 classes;
- ``bars-*-idx*-ubyte.gz``: 8x8 images of a horizontal bar, a vertical bar and a diagonal
  (classes 0, 1, 2) in the MNIST IDX format, gzipped, ``train`` and ``t10k`` sets; written
  here by the format's spec, since the real MNIST cannot be downloaded where the tests run;
- ``shapes/<class>/*.png``: the same kind of 8x8 grayscale images as PNG files in a folder
  per class (the book's chapter 19 layout), written with zlib alone (no Pillow needed here).

Run ``python examples/data/make_examples.py [FOLDER]`` (default: this script's folder).
"""

from __future__ import annotations

import csv
import gzip
import struct
import sys
import zlib
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SPECIES = {"setosa": (5.0, 3.4, 1.5, 0.25), "versicolor": (5.9, 2.8, 4.3, 1.3),
           "virginica": (6.6, 3.0, 5.6, 2.0)}  # fmt: skip
COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def write_iris_like(folder: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for name, means in SPECIES.items():
        for values in rng.normal(means, 0.25, size=(40, 4)):
            rows.append([f"{v:.1f}" for v in values] + [name])
    order = rng.permutation(len(rows))
    with (folder / "iris-like.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([*COLUMNS, "species"])
        writer.writerows(rows[i] for i in order)
    with (folder / "iris-like-new.csv").open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMNS)
        for means in list(SPECIES.values()) * 2:
            writer.writerow([f"{v:.1f}" for v in rng.normal(means, 0.1)])


def write_wave(folder: Path) -> None:
    rng = np.random.default_rng(1)
    X = rng.uniform(-3, 3, size=(150, 2))
    y = np.sin(X[:, 0]) + X[:, 1] / 2
    with (folder / "wave.tsv").open("w", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(["x1", "x2", "y"])
        for (a, b), c in zip(X, y, strict=True):
            writer.writerow([f"{a:.3f}", f"{b:.3f}", f"{c:.4f}"])


def write_blobs(folder: Path) -> None:
    rng = np.random.default_rng(2)
    centres = np.array([[0, 0], [3, 0], [0, 3], [3, 3]], dtype=np.float32)

    def sample(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(4), per_class)
        X = centres[y] + rng.normal(0, 0.6, size=(len(y), 2))
        return X.astype(np.float32), y.astype(np.int64)

    X_train, y_train = sample(40)
    X_val, y_val = sample(10)
    with (folder / "blobs.npz").open("wb") as f:  # (np.savez of a file object: no timestamps)
        np.savez(f, X_train=X_train, y_train=y_train, X_val=X_val, y_val=y_val)


def bar_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` 8x8 uint8 images of class 0 (a horizontal bar), 1 (a vertical bar) or 2
    (a diagonal), at random positions, with noise; and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 3
    images = rng.integers(0, 40, size=(count, 8, 8))
    for image, label in zip(images, labels, strict=True):
        at = rng.integers(1, 7)
        if label == 0:
            image[at, 1:7] = 255
        elif label == 1:
            image[1:7, at] = 255
        else:
            np.fill_diagonal(image, 255)
    return images.astype(np.uint8), labels.astype(np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    """``array`` (uint8) in the IDX format: 0, 0, type 0x08 (unsigned byte), the number of
    dimensions, each dimension as a big-endian 32-bit integer, then the values."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(np.uint8).tobytes()


def write_idx(folder: Path) -> None:
    for name, count, seed in (("train", 60, 3), ("t10k", 15, 4)):
        images, labels = bar_images(count, seed)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            path = folder / f"bars-{name}-{kind}-ubyte.gz"
            path.write_bytes(gzip.compress(idx_bytes(array), mtime=0))


def png_bytes(image: np.ndarray) -> bytes:
    """A grayscale 8-bit PNG of ``image`` (rows, columns): the signature, then the IHDR,
    IDAT (each row after filter byte 0, deflated) and IEND chunks."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    height, width = image.shape
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8 bits, grayscale
    raw = b"".join(b"\x00" + row.tobytes() for row in image.astype(np.uint8))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))  # fmt: skip


def write_shapes(folder: Path) -> None:
    images, labels = bar_images(48, 5)
    names = ("horizontal", "vertical", "diagonal")
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        path = folder / "shapes" / names[label] / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes(image))


def main(folder: Path = HERE) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_iris_like(folder)
    write_wave(folder)
    write_blobs(folder)
    write_idx(folder)
    write_shapes(folder)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
