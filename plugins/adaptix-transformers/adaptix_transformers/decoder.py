"""The ``causal_lm`` backbone: a Hugging Face decoder (Llama family) cut into its layers.

``source`` is a loaded causal LM whose layers have the Llama anatomy (`adaptix.components.
DecoderParts`): Llama, SmolLM, Mistral, Qwen2 and Qwen3 (a sliding attention window is kept,
and sequences longer than it are refused, since adaptix runs full attention). The parts are
the model's own modules (shared, not copied). `tiny_llama` builds a small randomly initialised
Llama (no download) for tests and contract checks.

Importing this module does not import transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from adaptix.components import Backbone, DecoderParts
from adaptix.errors import ValidationError

#: Model types whose decoder layers adaptix runs (the Llama anatomy, full attention).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def tiny_llama(
    *,
    layers: int = 4,
    hidden: int = 64,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 128,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """A randomly initialised ``LlamaForCausalLM`` small enough for a test (eval mode)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(dtype)
    # a std larger than the default 0.02 gives logits with clear winners (no near-ties)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() > 1:
                parameter.normal_(0.0, 0.2)
    return model.eval()


def decoder_parts(model: Any) -> DecoderParts:
    """Cut a loaded causal LM into `DecoderParts`, or raise a `ValidationError` saying what
    does not fit."""
    config = getattr(model, "config", None)
    base = getattr(model, "model", None)
    if config is None or base is None or not hasattr(model, "lm_head"):
        raise ValidationError(
            "backbone 'causal_lm' expects a Hugging Face causal LM (a model with .model, "
            f".lm_head and .config, e.g. LlamaForCausalLM), got a {type(model).__name__}."
        )
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValidationError(
            f"backbone 'causal_lm' runs the decoder layers of {list(SUPPORTED_MODEL_TYPES)}, "
            f"got model_type {model_type!r}."
        )
    window = getattr(config, "sliding_window", None)
    if not getattr(config, "use_sliding_window", True):
        window = None  # Qwen2 keeps a window size it does not use
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(kind != "full_attention" for kind in layer_types):
        raise ValidationError(
            "backbone 'causal_lm' runs full attention only; the model's layers are "
            f"{sorted(set(layer_types))}."
        )
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    attention = base.layers[0].self_attn
    eos = config.eos_token_id
    eos_ids = (
        () if eos is None else ((int(eos),) if isinstance(eos, int) else tuple(int(e) for e in eos))
    )
    ids = torch.tensor([[1, 2, 3, 4]], device=next(model.parameters()).device)
    return DecoderParts(
        blocks=base.layers,
        embed=base.embed_tokens,
        norm=base.norm,
        lm_head=model.lm_head,
        rotary=base.rotary_emb,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        attention_scale=float(getattr(attention, "scaling", head_dim**-0.5)),
        vocab_size=int(config.vocab_size),
        eos_token_id=eos_ids,
        sliding_window=None if window is None else int(window),
        max_positions=_max_positions(config),
        feature=base.norm,
        feature_dims=(int(config.hidden_size),) * len(base.layers),
        example_input=ids,
    )


def _max_positions(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) and value > 0 else None


class CausalLMBackbone(Backbone):
    """A Hugging Face decoder LM (Llama family) as `DecoderParts`, for token exits.

    ``source``: a loaded causal LM (``LlamaForCausalLM``, SmolLM2, Mistral, Qwen2/3), or None for
    `tiny_llama` (random weights: for tests and contract checks only).
    """

    name = "causal_lm"
    description = "Hugging Face decoder LM (Llama, SmolLM, Mistral, Qwen2/3), token exits"

    def build(self, source: Any = None) -> DecoderParts:
        return decoder_parts(tiny_llama() if source is None else source)


__all__ = ["SUPPORTED_MODEL_TYPES", "CausalLMBackbone", "decoder_parts", "tiny_llama"]
