"""`load_job_data`: the job's datasets as deterministic train / calibration / test splits."""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest
import torch

from adaptix import ConfigError
from adaptix.experiment.config import DataConfig, parse_config
from adaptix.experiment.data import FASHION_MNIST_CLASSES, load_fashion_mnist
from adaptix.experiment.datasets import JobData, Split, load_job_data

BBC_ARTICLES = 2225


def data_config(**data: Any) -> DataConfig:
    return parse_config({"data": data}).data


# ---------------------------------------------------------------------------- fashion-mnist


@pytest.fixture(scope="module")
def fashion() -> JobData:
    return load_job_data(data_config(train_size=100, calibration_size=50, test_size=30, seed=3))


def test_fashion_mnist_splits_have_the_sizes_and_types_asked(fashion: JobData) -> None:
    assert fashion.dataset == "fashion-mnist"
    assert fashion.class_names == FASHION_MNIST_CLASSES
    assert fashion.num_classes == 10
    for split, size in ((fashion.train, 100), (fashion.calibration, 50), (fashion.test, 30)):
        assert len(split) == size
        assert split.inputs.shape == (size, 1, 28, 28)
        assert split.inputs.dtype == torch.float32
        assert split.labels.dtype == torch.int64
        assert int(split.labels.min()) >= 0
        assert int(split.labels.max()) <= 9
    assert "Fashion-MNIST" in fashion.description


def test_fashion_mnist_splits_are_those_of_load_fashion_mnist(fashion: JobData) -> None:
    direct = load_fashion_mnist(calibration_size=50, train_size=100, test_size=30, seed=3)
    for ours, theirs in (
        (fashion.train, direct.train),
        (fashion.calibration, direct.calibration),
        (fashion.test, direct.test),
    ):
        inputs, labels = theirs.pair()
        assert torch.equal(ours.inputs, inputs)
        assert torch.equal(ours.labels, labels)


def test_split_batches_cover_the_rows_in_order(fashion: JobData) -> None:
    batches = fashion.train.batches(40)
    assert [len(b) for b in batches] == [40, 40, 20]
    assert torch.equal(torch.cat(batches), fashion.train.inputs)
    inputs, labels = fashion.test.pair()
    assert inputs is fashion.test.inputs
    assert labels is fashion.test.labels


def test_dict_inputs_are_batched_key_by_key() -> None:
    split = Split(
        {"a": torch.arange(5), "b": torch.arange(5) * 2}, torch.zeros(5, dtype=torch.long)
    )
    batches = split.batches(2)
    assert [b["a"].tolist() for b in batches] == [[0, 1], [2, 3], [4]]
    assert [b["b"].tolist() for b in batches] == [[0, 2], [4, 6], [8]]


# --------------------------------------------------------------------------------- bbc-news


def rows(split: Split) -> list[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """Every example of a split as (input ids, attention mask, label)."""
    ids, mask = split.inputs["input_ids"], split.inputs["attention_mask"]
    return [
        (tuple(i), tuple(m), label)
        for i, m, label in zip(ids.tolist(), mask.tolist(), split.labels.tolist(), strict=True)
    ]


@pytest.fixture(scope="module")
def bbc() -> JobData:
    """Every article: calibration and test as asked, the rest for training."""
    return load_job_data(
        data_config(dataset="bbc-news", calibration_size=700, max_length=32, seed=0)
    )


@pytest.fixture(scope="module")
def corpus() -> Counter[tuple[tuple[int, ...], tuple[int, ...], int]]:
    """Every article tokenized as the dataset does, with its label (a multiset: the corpus
    holds a few duplicate articles)."""
    from adaptix_transformers import load_bbc_news, minilm_path
    from transformers import AutoTokenizer

    texts, labels, _ = load_bbc_news()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)
    encoded = tokenizer(
        texts, padding="max_length", truncation=True, max_length=32, return_tensors="pt"
    )
    whole = Split(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}, labels
    )
    return Counter(rows(whole))


def test_bbc_news_splits_have_the_sizes_asked_and_tokenized_inputs(bbc: JobData) -> None:
    assert bbc.dataset == "bbc-news"
    assert bbc.class_names == ("business", "entertainment", "politics", "sports", "tech")
    assert bbc.num_classes == 5
    assert bbc.batch_size == 64
    # test_size None: a quarter of the articles; training gets what is left.
    assert (len(bbc.test), len(bbc.calibration), len(bbc.train)) == (556, 700, 969)
    for split in (bbc.train, bbc.calibration, bbc.test):
        assert set(split.inputs) == {"input_ids", "attention_mask"}
        for tensor in split.inputs.values():
            assert tensor.shape == (len(split), 32)
            assert tensor.dtype == torch.int64
        assert split.labels.dtype == torch.int64
        assert set(split.labels.tolist()) == {0, 1, 2, 3, 4}
    assert "32 tokens" in bbc.description


def test_bbc_news_splits_partition_the_articles_with_their_labels(
    bbc: JobData, corpus: Counter[Any]
) -> None:
    together = Counter(rows(bbc.train)) + Counter(rows(bbc.calibration)) + Counter(rows(bbc.test))
    assert sum(together.values()) == BBC_ARTICLES
    assert together == corpus  # each article once, in one split, with its own label


@pytest.fixture(scope="module")
def small_bbc() -> dict[int, JobData]:
    sizes = {"calibration_size": 40, "test_size": 30, "train_size": 20, "max_length": 16}
    return {
        seed: load_job_data(data_config(dataset="bbc-news", seed=seed, **sizes)) for seed in (0, 1)
    }


def test_bbc_news_honours_train_size_and_keeps_splits_disjoint(
    small_bbc: dict[int, JobData], corpus: Counter[Any]
) -> None:
    data = small_bbc[0]
    assert (len(data.train), len(data.calibration), len(data.test)) == (20, 40, 30)
    assert data.train.inputs["input_ids"].shape == (20, 16)
    seen = [set(rows(s)) for s in (data.train, data.calibration, data.test)]
    assert not seen[0] & seen[1]
    assert not seen[0] & seen[2]
    assert not seen[1] & seen[2]


def test_bbc_news_splits_are_seeded(small_bbc: dict[int, JobData]) -> None:
    again = load_job_data(
        data_config(dataset="bbc-news", seed=0, calibration_size=40, test_size=30, train_size=20,
                    max_length=16)
    )  # fmt: skip
    first, other = small_bbc[0], small_bbc[1]
    for name in ("train", "calibration", "test"):
        a, b = getattr(first, name), getattr(again, name)
        assert torch.equal(a.labels, b.labels)
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in a.inputs)
    assert not torch.equal(first.test.inputs["input_ids"], other.test.inputs["input_ids"])


def test_the_test_split_does_not_move_when_the_other_sizes_change(
    small_bbc: dict[int, JobData],
) -> None:
    bigger = load_job_data(
        data_config(dataset="bbc-news", seed=0, calibration_size=50, test_size=30, train_size=10,
                    max_length=16)
    )  # fmt: skip
    assert torch.equal(bigger.test.inputs["input_ids"], small_bbc[0].test.inputs["input_ids"])


@pytest.mark.parametrize(
    "sizes",
    [
        {"calibration_size": 1700, "test_size": 525},  # 2225: nothing left
        {"calibration_size": 2000, "test_size": 400},  # more than there is
        {},  # the fashion-mnist default calibration of 10,000
        {"calibration_size": 1800},  # with the default test split of 556
    ],
    ids=["exactly-all", "more-than-all", "default-calibration", "default-test"],
)
def test_sizes_that_leave_nothing_to_train_on_are_config_errors(sizes: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="left to train on"):
        load_job_data(data_config(dataset="bbc-news", **sizes))


def test_bbc_news_without_the_plugin_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "adaptix_transformers", None)
    with pytest.raises(ConfigError, match="needs the plugin adaptix-transformers"):
        load_job_data(data_config(dataset="bbc-news", calibration_size=40, test_size=30))


def test_an_unknown_dataset_is_refused_by_the_configuration() -> None:
    with pytest.raises(ConfigError, match=r"data\.dataset"):
        data_config(dataset="mnist")
