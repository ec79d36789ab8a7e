"""Decoder LMs by name, with their tokenizers, for the language-model job (`load_causal_lm`).

``smollm2`` is SmolLM2-135M-Instruct (`load_smollm2`), ``tiny-llama`` a random `tiny_llama` with
a byte-level tokenizer (`ByteTokenizer`: no download, for CI and smoke runs), and any other
source a local directory holding a Hugging Face causal LM and its tokenizer, loaded offline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adaptix.errors import ValidationError
from adaptix_transformers.decoder import tiny_llama
from adaptix_transformers.smollm import file_sha256, load_smollm2, smollm2_gguf

#: The token ids `ByteTokenizer` keeps for itself; byte b is token b + `BYTE_OFFSET`.
PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3


class ByteTokenizer:
    """UTF-8 bytes as tokens (byte b is token b + 3; 0 pad, 1 bos, 2 eos): a tokenizer that
    needs no files, for random tiny models. Called like a Hugging Face tokenizer on a text or a
    list of texts (``["input_ids"]``), and decodes ids back to text (invalid UTF-8 replaced)."""

    vocab_size = 256 + BYTE_OFFSET
    pad_token_id = PAD
    bos_token_id = BOS
    eos_token_id = EOS

    def __call__(
        self, texts: str | Sequence[str], add_special_tokens: bool = False
    ) -> dict[str, Any]:
        single = isinstance(texts, str)
        rows = [self._encode(t, add_special_tokens) for t in ([texts] if single else texts)]
        return {"input_ids": rows[0] if single else rows}

    def _encode(self, text: str, special: bool) -> list[int]:
        if not isinstance(text, str):
            raise ValidationError(f"expected text as a str, got a {type(text).__name__}.")
        ids = [b + BYTE_OFFSET for b in text.encode("utf-8")]
        return [BOS, *ids] if special else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids``; special tokens are dropped (or shown as ``<pad>`` etc.)."""
        out = bytearray()
        names = {PAD: "<pad>", BOS: "<s>", EOS: "</s>"}
        for i in (int(t) for t in ids):
            if i >= BYTE_OFFSET:
                out.append(i - BYTE_OFFSET)
            elif not skip_special_tokens:
                out.extend(names[i].encode())
        return out.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class LoadedLM:
    """A decoder LM, its tokenizer, the model in words and (for a file-backed model) the
    sha256 of the file it was loaded from."""

    model: Any
    tokenizer: Any
    description: str
    file_sha256: str | None


def load_causal_lm(
    source: str,
    *,
    tiny: Mapping[str, int] | None = None,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> LoadedLM:
    """The decoder LM ``source`` in eval mode, float32, on the CPU.

    Args:
        source: ``"smollm2"``, ``"tiny-llama"`` or a directory with a Hugging Face causal LM
            (Llama family, `adaptix_transformers.decoder.SUPPORTED_MODEL_TYPES`) and its
            tokenizer.
        tiny: `tiny_llama`'s geometry for ``"tiny-llama"`` (``layers``, ``hidden``, ``heads``,
            ``kv_heads``, ``seed``); the vocabulary is the byte tokenizer's.
        cache_dir: where SmolLM2's conversion is cached (default `load_smollm2`'s).
        progress: progress output while converting SmolLM2.

    Raises:
        ValidationError: an unknown source, or a directory transformers cannot load offline.
        AdaptixError: SmolLM2's packages are missing (`load_smollm2` says what to install).
    """
    if source == "smollm2":
        model, tokenizer = load_smollm2(cache_dir, progress=progress)
        return LoadedLM(model, tokenizer, "SmolLM2-135M-Instruct", file_sha256(smollm2_gguf()))
    if source == "tiny-llama":
        geometry = dict(tiny or {})
        model = tiny_llama(vocab=ByteTokenizer.vocab_size, **geometry)
        return LoadedLM(model, ByteTokenizer(), f"random tiny Llama {geometry}", None)
    directory = Path(source)
    if not directory.is_dir():
        raise ValidationError(
            f"expected 'smollm2', 'tiny-llama' or a model directory, got {source!r}."
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValidationError(f"cannot load a causal LM from {directory}: {err}") from err
    return LoadedLM(model.float().eval(), tokenizer, f"causal LM from {directory}", None)


__all__ = ["BYTE_OFFSET", "ByteTokenizer", "LoadedLM", "load_causal_lm"]
