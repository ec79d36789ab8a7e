"""adaptix-transformers: Hugging Face encoders (BERT, MiniLM, RoBERTa) and decoder LMs (Llama,
SmolLM2, Mistral, Qwen2/3) as adaptix backbones.

Installed, it registers the backbones ``transformers`` (encoders, whole-input exits) and
``causal_lm`` (decoders, token exits: `adaptix.online.generate`) through the ``adaptix``
entry-point group::

    import adaptix
    from adaptix_transformers import load_minilm

    encoder, tokenizer = load_minilm()
    model = adaptix.build_model("transformers", num_classes=5, source=encoder)
    batch = dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt"))

For token-level work on a decoder, `load_smollm2` gives SmolLM2-135M-Instruct offline and
`bbc_token_blocks` BBC News as packed token blocks, split by article; `load_causal_lm` gives
a decoder by name (``smollm2``, ``tiny-llama``, or a model directory) with its tokenizer.

Importing this package does not import transformers; building a backbone from a path or
calling `load_minilm` or `load_smollm2` does.
"""

from __future__ import annotations

from adaptix.components import Backbone
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar
from adaptix_transformers.backbone import TransformersBackbone, TransformersParams
from adaptix_transformers.bbc import bbc_articles, bbc_token_blocks, split_articles
from adaptix_transformers.data import bbc_news_dir, load_bbc_news, load_minilm, minilm_path
from adaptix_transformers.decoder import CausalLMBackbone, decoder_parts, tiny_llama
from adaptix_transformers.lm_sources import ByteTokenizer, LoadedLM, load_causal_lm
from adaptix_transformers.smollm import load_smollm2, smollm2_gguf

__version__ = "0.1.0"


@hookimpl
def adaptix_register_backbones(registry: Registrar[Backbone]) -> None:
    """Register the ``transformers`` and ``causal_lm`` backbones."""
    registry.add(TransformersBackbone)
    registry.add(CausalLMBackbone)


__all__ = [
    "ByteTokenizer",
    "CausalLMBackbone",
    "LoadedLM",
    "TransformersBackbone",
    "TransformersParams",
    "__version__",
    "adaptix_register_backbones",
    "bbc_articles",
    "bbc_news_dir",
    "bbc_token_blocks",
    "decoder_parts",
    "load_bbc_news",
    "load_causal_lm",
    "load_minilm",
    "load_smollm2",
    "minilm_path",
    "smollm2_gguf",
    "split_articles",
    "tiny_llama",
]
