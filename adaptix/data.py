"""Real data offline: a small IDX reader and Fashion-MNIST with deterministic splits.

Fashion-MNIST comes from Debian's ``dataset-fashion-mnist`` package (``apt-get install
dataset-fashion-mnist``), which puts the four gzipped IDX files in
``/usr/share/datasets/fashion-mnist``; ``ADAPTIX_DATA_DIR`` or the ``directory`` argument points
elsewhere.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from adaptix.errors import ValidationError

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
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError as err:
        raise ValidationError(f"no IDX file at {source}.") from err
    except (OSError, EOFError) as err:
        raise ValidationError(f"could not read IDX file {source}: {err}.") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValidationError(f"expected an IDX file at {source}, got another format.")
    dtype = _IDX_DTYPES[raw[2]]
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


@dataclass(frozen=True)
class FashionMNIST:
    """Deterministic splits: train, calibration (held out from the 60k), test (official 10k)."""

    train: Split
    calibration: Split
    test: Split


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
    """Load Fashion-MNIST and split it deterministically.

    Args:
        directory: where the IDX files are (default: ``ADAPTIX_DATA_DIR`` or Debian's path).
        calibration_size: images held out of the 60,000 training images for calibration.
        train_size: keep only this many training images (None: all the rest).
        test_size: keep only the first this-many test images (None: all 10,000).
        seed: seeds the permutation that picks the calibration images.
    """
    root = Path(directory or os.environ.get("ADAPTIX_DATA_DIR") or DEFAULT_FASHION_MNIST_DIR)
    arrays = {key: read_idx(_find(root, stem)) for key, stem in _FILES.items()}
    total = len(arrays["train_labels"])
    if not 0 < calibration_size < total:
        raise ValidationError(f"expected 0 < calibration_size < {total}, got {calibration_size}.")
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

    test_index = None if test_size is None else torch.arange(min(test_size, 10_000))
    return FashionMNIST(
        train=split(arrays["train_images"], arrays["train_labels"], train_idx),
        calibration=split(arrays["train_images"], arrays["train_labels"], calibration_idx),
        test=split(arrays["test_images"], arrays["test_labels"], test_index),
    )
