"""The IDX reader and the Fashion-MNIST loader."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from adaptix import ValidationError
from adaptix.experiment.data import FashionMNIST, load_fashion_mnist, read_idx


@pytest.fixture(scope="module")
def fashion() -> FashionMNIST:
    """Small deterministic Fashion-MNIST splits."""
    return load_fashion_mnist(calibration_size=1000, train_size=2000, test_size=1000, seed=0)


def idx_bytes(array: np.ndarray, code: int) -> bytes:
    """``array`` as an IDX file: zero, zero, type code, rank, big-endian sizes, big-endian data."""
    dims = b"".join(int(size).to_bytes(4, "big") for size in array.shape)
    return (
        bytes([0, 0, code, array.ndim])
        + dims
        + array.astype(array.dtype.newbyteorder(">")).tobytes()
    )


def write(path: Path, payload: bytes) -> Path:
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    ("array", "code"),
    [
        (np.arange(60, dtype=np.uint8).reshape(3, 4, 5), 0x08),
        (np.array([[-7, 0, 2**31 - 1], [5, -(2**31), 1]], dtype=np.int32), 0x0C),
        (np.array([0.5, -1.25, 3e10], dtype=np.float32), 0x0D),
    ],
    ids=["uint8", "int32", "float32"],
)
def test_read_idx(tmp_path: Path, suffix: str, array: np.ndarray, code: int) -> None:
    path = write(tmp_path / f"data{suffix}", idx_bytes(array, code))
    np.testing.assert_array_equal(read_idx(path), array)
    assert read_idx(path).shape == array.shape


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_idx_is_refused(tmp_path: Path, suffix: str) -> None:
    payload = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8), 0x08)
    path = write(tmp_path / f"short{suffix}", payload[:-1])
    with pytest.raises(ValidationError, match="truncated"):
        read_idx(path)


def test_cut_gzip_stream_is_refused(tmp_path: Path) -> None:
    compressed = gzip.compress(idx_bytes(np.zeros((50, 9), dtype=np.uint8), 0x08))
    path = tmp_path / "cut.gz"
    path.write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(ValidationError):
        read_idx(path)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00", b"PK\x03\x04 not idx", b"\x00\x00\x42\x01"])
def test_not_idx_is_refused(tmp_path: Path, payload: bytes) -> None:
    with pytest.raises(ValidationError, match="IDX"):
        read_idx(write(tmp_path / "other", payload))


def test_missing_idx_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no IDX file"):
        read_idx(tmp_path / "absent")


def test_missing_directory_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ValidationError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path / "absent")
    monkeypatch.setenv("ADAPTIX_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(ValidationError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist()


def image_hashes(images: Tensor) -> set[str]:
    return {hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in images}


def test_fashion_mnist_splits_are_deterministic_and_disjoint(fashion: FashionMNIST) -> None:
    again = load_fashion_mnist(calibration_size=1000, test_size=10, seed=0)
    assert torch.equal(again.calibration.images, fashion.calibration.images)
    assert torch.equal(again.calibration.labels, fashion.calibration.labels)
    # train_size and test_size keep prefixes of the same order.
    assert torch.equal(again.train.images[:2000], fashion.train.images)
    assert torch.equal(again.test.images, fashion.test.images[:10])
    assert (len(fashion.train), len(fashion.calibration), len(fashion.test)) == (2000, 1000, 1000)
    assert (len(again.train), len(again.test)) == (59_000, 10)
    assert image_hashes(again.train.images).isdisjoint(image_hashes(again.calibration.images))
    other = load_fashion_mnist(calibration_size=1000, train_size=10, test_size=10, seed=1)
    assert not torch.equal(other.calibration.images, fashion.calibration.images)


def test_fashion_mnist_tensors(fashion: FashionMNIST) -> None:
    for split in (fashion.train, fashion.calibration, fashion.test):
        images, labels = split.pair()
        assert images.dtype == torch.float32
        assert images.shape[1:] == (1, 28, 28)
        assert labels.dtype == torch.int64
        assert labels.shape == (len(split),)
        assert set(labels.unique().tolist()) == set(range(10))
    assert abs(float(fashion.train.images.mean())) < 0.1  # normalised
    assert 0.9 < float(fashion.train.images.std()) < 1.1


def test_calibration_size_out_of_range_is_refused() -> None:
    with pytest.raises(ValidationError, match="calibration_size"):
        load_fashion_mnist(calibration_size=60_000)
