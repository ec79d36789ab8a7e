"""Exit adapters for a frozen decoder: one affine map per early exit, trained by distillation.

A decoder trained without early exits reads poorly at its middle layers through its own final
norm and LM head. An adapter ``h -> W h + b`` per early exit (identity at the start, so an
untrained adapter is the plain read-out) is trained with the backbone frozen: the hidden states
after the exit layers are computed once (teacher-forced, full depth) and kept, then each
adapter learns from them alone:

- ``"distill"``: KL divergence from the final layer's next-token distribution to the exit's
  (the exit learns to agree with the full model, which is what a consistency target measures);
- ``"next"``: cross-entropy with the text's next token;
- ``"both"``: their sum.

`train_adapters` keys its result by everything that determines the weights (the decoder's
weights, the exit layers, the tokens, the recipe) in a `adaptix.core.cache.ModelCache`, so a
second call with the same inputs loads instead of training.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptix.components import DecoderParts
from adaptix.core.cache import ModelCache, cache_key
from adaptix.core.files import tensor_digest
from adaptix.errors import ValidationError
from adaptix.online.decoder import DecoderModel

Loss = Literal["distill", "next", "both"]
_LOSSES = ("distill", "next", "both")


class AffineAdapter(nn.Module):
    """``h -> W h + b`` on ``[n, d]`` hidden states, initialised to the identity."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(size, size)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(size))
            self.linear.bias.zero_()

    def forward(self, hidden: Tensor) -> Tensor:
        return self.linear(hidden)


@dataclass(frozen=True)
class AdapterRecipe:
    """How adapters are trained (every field enters the cache key).

    Attributes:
        loss: ``"distill"``, ``"next"`` or ``"both"`` (see the module docstring).
        epochs: passes over the tokens.
        batch_size: tokens per step.
        lr: Adam's learning rate.
        seed: the shuffling and initialisation seed.
    """

    loss: Loss = "distill"
    epochs: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.loss not in _LOSSES:
            raise ValidationError(
                f"expected an adapter loss in {list(_LOSSES)}, got {self.loss!r}."
            )
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"expected {name} as an integer ≥ 1, got {value!r}.")
        if not (isinstance(self.lr, (int, float)) and 0 < self.lr < 1):
            raise ValidationError(f"expected lr in (0, 1), got {self.lr!r}.")


@torch.no_grad()
def exit_hidden_states(
    model: DecoderModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
) -> tuple[list[Tensor], Tensor, Tensor]:
    """The hidden states after every early exit's layer, the final layer's logits' targets.

    Teacher-forced at full depth over rows of ``[B, S]`` tokens (left-padded), ``batch_size``
    rows at a time. Only slots with a next token are kept.

    Returns:
        Per early exit, hidden states ``[N, d]``; the final layer's log-probabilities' argmax is
        not kept (V is large) but its hidden states ``[N, d]`` are (the teacher is recomputed
        through the frozen norm and head per batch); and the next tokens ``[N]``.
    """
    ids, mask = model.check_tokens(input_ids, attention_mask, trailing=True)
    keep = mask.clone()
    keep[:, :-1] &= mask[:, 1:]
    keep[:, -1] = False
    nexts = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    per_exit: list[list[Tensor]] = [[] for _ in model.exit_layers]
    targets = []
    for start in tqdm(
        range(0, ids.shape[0], batch_size),
        desc="exit hidden states",
        unit="batch",
        disable=not progress,
    ):
        rows = slice(start, start + batch_size)
        _, states = model.prefill(ids[rows], mask[rows], ids.shape[1])
        chosen = keep[rows]
        for e, state in enumerate(states):
            per_exit[e].append(state[chosen].float().cpu())
        targets.append(nexts[rows][chosen].cpu())
    hidden = [torch.cat(parts) for parts in per_exit]
    return hidden[:-1], hidden[-1], torch.cat(targets)


def train_adapters(
    model: DecoderModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    recipe: AdapterRecipe | None = None,
    *,
    cache: str | os.PathLike[str] | None = None,
    progress: bool = True,
) -> list[AffineAdapter]:
    """Train one `AffineAdapter` per early exit of ``model`` on teacher-forced tokens.

    Args:
        model: the decoder with its exits (its backbone stays frozen; its adapters are ignored).
        input_ids: the training text's token ids, left-padded ``[B, S]``.
        attention_mask: their real slots, ``[B, S]``.
        recipe: loss, epochs, batch size, learning rate, seed (default `AdapterRecipe()`).
        cache: a directory for trained adapters (None: no cache).
        progress: progress bars.

    Returns:
        The adapters, on the model's device and dtype, in eval mode: pass them to
        ``DecoderModel(parts, exit_layers, adapters=...)``.
    """
    recipe = AdapterRecipe() if recipe is None else recipe
    if not isinstance(recipe, AdapterRecipe):
        raise ValidationError(f"expected an AdapterRecipe, got a {type(recipe).__name__}.")
    parts = model.parts
    ids, mask = model.check_tokens(input_ids, attention_mask, trailing=True)
    size = int(parts.feature_dims[0]) if parts.feature_dims else _width(parts)
    parameter = next(model.parameters())
    store = None if cache is None else ModelCache(cache)
    key = cache_key(
        model=weights_digest(parts),
        exit_layers=list(model.exit_layers),
        tokens=tensor_digest({"ids": ids.cpu(), "mask": mask.cpu()}),
        recipe=recipe.__dict__,
    )
    adapters = [AffineAdapter(size) for _ in model.exit_layers[:-1]]
    if store is not None:
        entry = store.load("exit-adapters", key)
        if entry is not None:
            state, _ = entry
            nn.ModuleList(adapters).load_state_dict(state)
            return _placed(adapters, parameter)
    early, final, targets = exit_hidden_states(model, ids, mask, progress=progress)
    torch.manual_seed(recipe.seed)
    head = _Head(parts)
    order = torch.Generator().manual_seed(recipe.seed)
    losses = []
    for e, adapter in enumerate(adapters):
        adapter.float()
        optimizer = torch.optim.Adam(adapter.parameters(), lr=recipe.lr)
        bar = tqdm(
            range(recipe.epochs),
            desc=f"adapter of exit {e} (layer {model.exit_layers[e]})",
            unit="epoch",
            disable=not progress,
        )
        for _ in bar:
            permutation = torch.randperm(final.shape[0], generator=order)
            total = 0.0
            for start in range(0, final.shape[0], recipe.batch_size):
                batch = permutation[start : start + recipe.batch_size]
                logits = head(adapter(early[e][batch]))
                loss = _loss(recipe.loss, logits, head, final[batch], targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * batch.numel()
            bar.set_postfix(loss=f"{total / final.shape[0]:.4f}")
        losses.append(total / final.shape[0])
    if store is not None:
        state = nn.ModuleList(adapters).state_dict()
        store.save("exit-adapters", key, state, {"loss": losses, "recipe": recipe.__dict__})
    return _placed(adapters, parameter)


def _loss(kind: str, logits: Tensor, head: nn.Module, final: Tensor, targets: Tensor) -> Tensor:
    total = logits.new_zeros(())
    if kind in ("distill", "both"):
        with torch.no_grad():
            teacher = F.log_softmax(head(final), -1)
        student = F.log_softmax(logits, -1)
        total = total + F.kl_div(student, teacher, log_target=True, reduction="batchmean")
    if kind in ("next", "both"):
        total = total + F.cross_entropy(logits, targets)
    return total


class _Head(nn.Module):
    """The decoder's final norm and LM head as a float32 copy (frozen)."""

    def __init__(self, parts: DecoderParts) -> None:
        super().__init__()
        import copy

        self.norm = copy.deepcopy(parts.norm).float().cpu()
        self.lm_head = copy.deepcopy(parts.lm_head).float().cpu()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.lm_head(self.norm(hidden))


def weights_digest(parts: DecoderParts) -> str:
    """SHA-256 of every weight of ``parts`` that exit logits depend on (embedding, layers,
    final norm, LM head): identifies the model in caches and provenance."""
    named = {}
    for prefix, module in (
        ("embed", parts.embed),
        ("blocks", parts.blocks),
        ("norm", parts.norm),
        ("lm_head", parts.lm_head),
    ):
        named.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    return tensor_digest(named)


def _width(parts: DecoderParts) -> int:
    return int(parts.num_heads * parts.head_dim)


def _placed(adapters: Sequence[AffineAdapter], like: Tensor) -> list[AffineAdapter]:
    return [a.to(device=like.device, dtype=like.dtype).eval() for a in adapters]


__all__ = [
    "AdapterRecipe",
    "AffineAdapter",
    "exit_hidden_states",
    "train_adapters",
    "weights_digest",
]
