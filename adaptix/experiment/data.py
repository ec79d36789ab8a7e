"""Real data offline: a small IDX reader and Fashion-MNIST with deterministic splits.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``), which puts the four gzipped IDX files in
``/usr/share/datasets/fashion-mnist``; ``ADAPTIX_DATA_DIR`` or the ``directory`` argument points
elsewhere.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import numpy as np
import torch
from torch import Tensor

from adaptix.errors import ValidationError

_T = TypeVar("_T")

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}  # fmt: skip


def read_idx(path: str | os.PathLike[str]) -> np.ndarray[Any, Any]:
    """Read an IDX file (optionally gzipped) into a numpy array.

    Raises:
        ValidationError: the file is missing, truncated or not IDX.
    """
    source = Path(path)
    raw = _read(source, lambda handle: handle.read())
    dtype = _idx_dtype(raw, source)
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise ValidationError(
            f"IDX file {source} is truncated or corrupt: header says {shape} ({expected} bytes), "
            f"file has {len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """The shape an IDX file's header declares, read without the data (a few bytes, even of a
    gzipped file): how many rows a split holds, before loading it.

    Raises:
        ValidationError: the file is missing, unreadable or not IDX.
    """
    source = Path(path)

    def header(handle: BinaryIO) -> tuple[bytes, bytes]:
        head = handle.read(4)
        return head, handle.read(4 * head[3] if len(head) == 4 else 0)

    head, dims = _read(source, header)
    _idx_dtype(head, source)
    ndim = head[3]
    if len(dims) != 4 * ndim:
        raise ValidationError(f"IDX file {source} is truncated: its header is cut short.")
    return tuple(int.from_bytes(dims[4 * i : 4 + 4 * i], "big") for i in range(ndim))


def _read(source: Path, read: Callable[[BinaryIO], _T]) -> _T:
    """``read`` applied to the IDX file ``source`` opened (gunzipped if it ends in ``.gz``).

    Raises:
        ValidationError: the file is missing or unreadable.
    """
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as handle:
            return read(handle)  # type: ignore[arg-type]  # GzipFile is a binary file, not typed as BinaryIO
    except FileNotFoundError as err:
        raise ValidationError(f"no IDX file at {source}.") from err
    except (OSError, EOFError) as err:
        raise ValidationError(f"could not read IDX file {source}: {err}.") from err


def _idx_dtype(head: bytes, source: Path) -> np.dtype[Any]:
    """The element type an IDX header's magic number declares (ValidationError if none)."""
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
        raise ValidationError(f"expected an IDX file at {source}, got another format.")
    return _IDX_DTYPES[head[2]]


def data_directory(directory: str | os.PathLike[str] | None = None) -> Path:
    """Where the IDX files are read from: ``directory``, else ``ADAPTIX_DATA_DIR``, else
    Debian's path."""
    return Path(directory or os.environ.get("ADAPTIX_DATA_DIR") or DEFAULT_FASHION_MNIST_DIR)


def idx_sizes(directory: str | os.PathLike[str] | None = None) -> tuple[int, int]:
    """How many (training, test) rows the four IDX files of ``directory`` hold, read from their
    headers (see `data_directory`).

    Raises:
        ValidationError: a file is missing or not IDX, or images and labels disagree in rows.
    """
    root = data_directory(directory)
    shapes = {key: read_idx_shape(_find(root, stem)) for key, stem in _FILES.items()}
    sizes = []
    for split in ("train", "test"):
        images, labels = shapes[f"{split}_images"], shapes[f"{split}_labels"]
        if len(images) != 3 or len(labels) != 1 or images[0] != labels[0]:
            raise ValidationError(
                f"expected the {split} IDX files in {root} to hold images [n, height, width] "
                f"and labels [n] of the same n, got {list(images)} and {list(labels)}."
            )
        sizes.append(images[0])
    return sizes[0], sizes[1]


def arrays_digest(arrays: dict[str, np.ndarray[Any, Any]]) -> str:
    """SHA-256 of named arrays (names, dtypes, shapes and bytes, in name order): what was
    loaded, whatever the files' compression."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        digest.update(array.data)  # the buffer itself: no copy of the arrays
    return digest.hexdigest()


def _find(directory: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise ValidationError(
        f"Fashion-MNIST file {stem}(.gz) not found in {directory}. Install Debian's package "
        "(`apt-get install dataset-fashion-mnist`, or `make data`), or set ADAPTIX_DATA_DIR to a "
        "directory with the four IDX files."
    )


@dataclass(frozen=True)
class Split:
    """Images ``[n, 1, 28, 28]`` (float32, normalised) and int64 labels ``[n]``."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def pair(self) -> tuple[Tensor, Tensor]:
        """``(images, labels)``, the form `adaptix.train_exits` takes."""
        return self.images, self.labels


#: `arrays_digest` of the four Fashion-MNIST IDX files (Debian's dataset-fashion-mnist, gzipped
#: or not): how `FashionMNIST.is_fashion_mnist` knows the data it loaded.
FASHION_MNIST_SHA256 = "3afe9b4c8e58f1f5a7112d9e9f292b67d1c76428e4b1075b17b543dc55c3e7e4"


@dataclass(frozen=True)
class FashionMNIST:
    """Deterministic splits of four IDX files: train, calibration (held out of the training
    images), test (the test file's images).

    Attributes:
        train, calibration, test: the splits.
        directory: where the IDX files were read.
        digest: `arrays_digest` of the four files' contents, as loaded (before splitting).
    """

    train: Split
    calibration: Split
    test: Split
    directory: Path = DEFAULT_FASHION_MNIST_DIR
    digest: str = ""

    @property
    def is_fashion_mnist(self) -> bool:
        """Whether the files hold Fashion-MNIST itself (their digest is `FASHION_MNIST_SHA256`),
        rather than other IDX data (MNIST, say)."""
        return self.digest == FASHION_MNIST_SHA256


# Mean and standard deviation of Fashion-MNIST training pixels (scaled to [0, 1]).
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530


def load_fashion_mnist(
    directory: str | os.PathLike[str] | None = None,
    *,
    calibration_size: int = 10_000,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> FashionMNIST:
    """Load Fashion-MNIST (or other IDX files of the same layout) and split it deterministically.

    Args:
        directory: where the IDX files are (default: ``ADAPTIX_DATA_DIR`` or Debian's path).
        calibration_size: images held out of the training images (60,000 in Fashion-MNIST) for
            calibration.
        train_size: keep only this many training images (None: all the rest).
        test_size: keep only the first this-many test images (None: all, 10,000 in
            Fashion-MNIST).
        seed: seeds the permutation that picks the calibration images.

    Raises:
        ValidationError: missing or corrupt files, or a size the files cannot hold (sizes are
            never clipped: the message says how many rows there are).
    """
    root = data_directory(directory)
    problems = split_size_problems(
        *idx_sizes(root), calibration_size=calibration_size, train_size=train_size,
        test_size=test_size, where=str(root),
    )  # fmt: skip
    if problems:
        raise ValidationError(" ".join(message for _, message in problems))
    arrays = {key: read_idx(_find(root, stem)) for key, stem in _FILES.items()}
    total = len(arrays["train_labels"])
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))
    calibration_idx = order[:calibration_size]
    train_idx = order[calibration_size:]
    if train_size is not None:
        train_idx = train_idx[:train_size]

    def split(
        images: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], index: Tensor | None
    ) -> Split:
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        y = torch.from_numpy(labels.astype(np.int64))
        if index is not None:
            x, y = x[index], y[index]
        return Split(((x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD).contiguous(), y.contiguous())

    test_index = None if test_size is None else torch.arange(test_size)
    return FashionMNIST(
        train=split(arrays["train_images"], arrays["train_labels"], train_idx),
        calibration=split(arrays["train_images"], arrays["train_labels"], calibration_idx),
        test=split(arrays["test_images"], arrays["test_labels"], test_index),
        directory=root,
        digest=arrays_digest(arrays),
    )


def split_size_problems(
    train_rows: int,
    test_rows: int,
    *,
    calibration_size: int,
    train_size: int | None,
    test_size: int | None,
    where: str,
) -> list[tuple[str, str]]:
    """What keeps the splits asked for from fitting data of ``train_rows`` training and
    ``test_rows`` test rows, as (size's name, message) pairs (none: they fit): calibration held
    out of the training rows with some left to train on, and no size beyond what is there (a
    size is never clipped silently)."""
    problems = []
    if not 0 < calibration_size < train_rows:
        problems.append(
            (
                "calibration_size",
                f"expected calibration_size below the {train_rows} training rows of {where} "
                f"(some must be left to train on), got {calibration_size}.",
            )
        )
    left = train_rows - calibration_size
    if train_size is not None and 0 < left < train_size:
        problems.append(
            (
                "train_size",
                f"expected train_size at most {left}, the training rows of {where} left after "
                f"calibration_size {calibration_size} of {train_rows}, got {train_size}.",
            )
        )
    if test_size is not None and test_size > test_rows:
        problems.append(
            (
                "test_size",
                f"expected test_size at most {test_rows}, the test rows of {where}, got "
                f"{test_size}.",
            )
        )
    return problems
