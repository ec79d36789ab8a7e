"""Lossless token exits: self-speculative decoding, batched, with per-row acceptance.

An early exit drafts and the full model verifies (LayerSkip's self-speculation): each round,
every row drafts ``draft_tokens`` tokens greedily from the draft exit, running only the layers
up to it; then the drafted positions run the remaining layers together, in one pass per layer,
starting from the hidden states the draft left at the exit layer. A row keeps the longest
prefix of its draft that the full model agrees with, plus the full model's own token where they
first disagree. The output is greedy full-depth decoding's, token for token
(tests/test_speculative.py); what early exit buys is fewer layer passes per token.

The cache is the exact one of `adaptix.online.decoder`: a drafted token's entries at the draft
layers are the full model's (same layers, same inputs), the verification fills the deeper ones,
and the entries of rejected draft positions are dropped. Rows advance by different numbers of
tokens, so each row has its own current slot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptix.errors import ValidationError
from adaptix.online.decoder import DecoderModel, KVCache, attend
from adaptix.online.generate import eos_ids, left_padded, token_budget


@dataclass
class SpeculativeOutput:
    """What `SelfSpeculativeGenerator.generate` returns.

    Attributes:
        tokens: per row, its new tokens (end-of-sequence included when produced).
        drafted: per row, the draft tokens the full model checked.
        accepted: per row, those it agreed with.
        rounds: draft-and-verify rounds run.
        sequences: ``[B, slots]`` prompts (left-padded) and new tokens, per row from its first
            new slot; ``pad_token_id`` elsewhere.
        attention_mask: bool, same shape: the real slots.
        prompt_length: S, the padded prompt length.
        cache: the final cache (``keep_cache=True`` only).
    """

    tokens: list[list[int]]
    drafted: list[int]
    accepted: list[int]
    rounds: int
    sequences: Tensor
    attention_mask: Tensor
    prompt_length: int
    cache: KVCache | None = None

    @property
    def acceptance_rate(self) -> float:
        """Accepted / drafted tokens over all rows (1.0 when nothing was drafted)."""
        drafted = sum(self.drafted)
        return sum(self.accepted) / drafted if drafted else 1.0


class SelfSpeculativeGenerator:
    """Greedy decoding that drafts with an early exit and verifies with the full model.

    Args:
        model: the decoder; its exit ``draft_exit`` drafts (its adapter included).
        draft_exit: an early exit's index (not the last).
        draft_tokens: tokens drafted per round (k ≥ 1).

    Raises:
        ValidationError: ``draft_exit`` is not an early exit, or ``draft_tokens`` < 1.
    """

    def __init__(self, model: DecoderModel, draft_exit: int = 0, draft_tokens: int = 4) -> None:
        if not isinstance(model, DecoderModel):
            raise ValidationError(
                f"expected an adaptix DecoderModel, got a {type(model).__name__}."
            )
        if (
            isinstance(draft_exit, bool)
            or not isinstance(draft_exit, int)
            or not (0 <= draft_exit < model.num_exits - 1)
        ):
            raise ValidationError(
                f"expected draft_exit as an early exit's index in 0..{model.num_exits - 2}, got "
                f"{draft_exit!r}."
            )
        if isinstance(draft_tokens, bool) or not isinstance(draft_tokens, int) or draft_tokens < 1:
            raise ValidationError(f"expected draft_tokens ≥ 1, got {draft_tokens!r}.")
        self.model = model
        self.draft_exit = draft_exit
        self.draft_layer = model.exit_layers[draft_exit]
        self.draft_tokens = draft_tokens

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Tensor,
        *,
        max_new_tokens: int | Sequence[int],
        attention_mask: Tensor | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int = 0,
        keep_cache: bool = False,
    ) -> SpeculativeOutput:
        """Generate greedily up to ``max_new_tokens`` per row (arguments as
        `EarlyExitGenerator.generate`'s)."""
        ids, mask = left_padded(self.model, prompts, attention_mask)
        budget = token_budget(max_new_tokens, ids.shape[0]).tolist()
        eos = set(eos_ids(self.model, eos_token_id).tolist())
        return _Rounds(self, ids, mask, budget, eos, pad_token_id).output(keep_cache)


class _Rounds:
    """One call of `SelfSpeculativeGenerator.generate`."""

    def __init__(
        self,
        owner: SelfSpeculativeGenerator,
        ids: Tensor,
        mask: Tensor,
        budget: list[int],
        eos: set[int],
        pad: int,
    ) -> None:
        model = owner.model
        self.model, self.parts, self.k = model, model.parts, owner.draft_tokens
        self.draft_exit, self.draft_layer = owner.draft_exit, owner.draft_layer
        rows, length = ids.shape
        self.length = length
        self.slots = length + max(budget) + self.k + 1
        device = ids.device
        self.sequences = torch.full((rows, self.slots), pad, dtype=torch.long, device=device)
        self.sequences[:, :length] = ids
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.drafted, self.accepted = [0] * rows, [0] * rows
        self.budget, self.eos, self.pad = budget, eos, pad
        self.cache, states = model.prefill(ids, mask, self.slots)
        first = model.exit_logits(model.num_exits - 1, states[-1][:, -1]).argmax(-1).tolist()
        self.current = [length] * rows  # per row: the slot of its token not yet run
        self.done = [False] * rows
        for row, token in enumerate(first):
            self._take(row, [token])
        self.rounds = 0
        while not all(self.done):
            self._round()
            self.rounds += 1

    def _take(self, row: int, tokens: list[int]) -> None:
        """Append ``tokens`` to ``row`` (cut at its budget or end-of-sequence)."""
        for token in tokens:
            slot = self.length + len(self.tokens[row])
            self.sequences[row, slot] = token
            self.cache.real[row, slot] = True
            self.tokens[row].append(token)
            if token in self.eos or len(self.tokens[row]) >= self.budget[row]:
                self.done[row] = True
                return

    def _round(self) -> None:
        model, parts, cache, k = self.model, self.parts, self.cache, self.k
        active = [row for row, done in enumerate(self.done) if not done]
        rows = torch.tensor(active, dtype=torch.long, device=self.sequences.device)
        start = torch.tensor([self.current[row] for row in active], device=rows.device)
        offsets = torch.arange(k, device=rows.device)
        block = start.unsqueeze(1) + offsets  # [R, k]: the slots drafted this round
        cache.real[rows.unsqueeze(1), block] = True
        span = int(block.max()) + 1
        # draft: k greedy tokens from the draft exit, each through the draft layers only
        hidden_at_exit = []
        for j in range(k):
            slots = block[:, j : j + 1]
            hidden = parts.embed(self.sequences[rows, block[:, j]]).unsqueeze(1)
            for layer in range(self.draft_layer + 1):
                hidden = attend(parts, layer, hidden, cache, rows, slots, None, span)
            hidden_at_exit.append(hidden)
            draft = model.exit_logits(self.draft_exit, hidden[:, 0]).argmax(-1)
            self.sequences[rows, block[:, j] + 1] = draft
        # verify: the drafted slots run the deeper layers together
        hidden = torch.cat(hidden_at_exit, dim=1)  # [R, k, d]
        for layer in range(self.draft_layer + 1, model.num_layers):
            hidden = attend(parts, layer, hidden, cache, rows, block, None, span)
        full = model.exit_logits(model.num_exits - 1, hidden.flatten(0, 1)).argmax(-1)
        full = full.view(len(active), k)
        drafts = self.sequences[rows.unsqueeze(1), block + 1]  # [R, k]
        agree = (drafts == full).long().cumprod(1).sum(1).tolist()
        full_list, drafts_list = full.tolist(), drafts.tolist()
        for i, row in enumerate(active):
            n = agree[i]
            self.drafted[row] += k
            self.accepted[row] += n
            new = drafts_list[i][:n] + ([full_list[i][n]] if n < k else [])
            before = len(self.tokens[row])
            self._take(row, new)
            taken = len(self.tokens[row]) - before
            # the row's next unrun token sits after its kept tokens; drafted slots beyond the
            # accepted prefix are dropped from every layer (a kept slot's entries are exact)
            keep_until = self.current[row] + min(n, taken)
            self.current[row] = self.length + len(self.tokens[row]) - 1
            dropped = slice(keep_until + 1, self.slots)
            for layer in range(model.num_layers):
                cache.filled[layer][row, dropped] = False
            cache.real[row, self.current[row] + 1 :] = False
            self.sequences[row, self.current[row] + 1 :] = self.pad

    def output(self, keep_cache: bool) -> SpeculativeOutput:
        mask = self.cache.real.clone()
        for row, produced in enumerate(self.tokens):
            mask[row, self.length + len(produced) :] = False
            mask[row, self.length : self.length + len(produced)] = True
        return SpeculativeOutput(
            tokens=self.tokens,
            drafted=self.drafted,
            accepted=self.accepted,
            rounds=self.rounds,
            sequences=self.sequences,
            attention_mask=mask,
            prompt_length=self.length,
            cache=self.cache if keep_cache else None,
        )


__all__ = ["SelfSpeculativeGenerator", "SpeculativeOutput"]
