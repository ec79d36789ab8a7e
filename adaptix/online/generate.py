"""Batched generation in which every row, at every step, leaves at its own exit.

`EarlyExitGenerator` decodes a batch of prompts with a `DecoderModel`. The prompts run at full
depth (prefill), and so does the first new token. At each later step the batch's current tokens
go up the layers together; after each exit layer the policy's criterion scores the rows'
token logits, and the rows it lets exit take their token from that exit and **leave the batch**
there, so the layers above run on fewer rows. What the cache holds at the layers a token
skipped is the `KVStrategy`'s (a plugin kind): ``deferred`` runs them at the row's next step,
batched with its next token (so every row's block of queries may hold several tokens and the
cache stays equal to the full model's), ``copy`` fills them from the exit's hidden state.

With a policy that never exits early the generator is the plain model: greedy output equals
transformers' ``generate`` token for token (tests/test_decoder.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import torch
from torch import Tensor

from adaptix.components import KVStrategy
from adaptix.errors import PluginError, ValidationError
from adaptix.offline.policy import ExitPolicy
from adaptix.online.decoder import DecoderModel, KVCache, attend, block_rotary
from adaptix.online.monitor import ShiftMonitor
from adaptix.plugins import AdaptixPluginManager, Entry, call_plugin, resolve_manager


@dataclass
class GenerationOutput:
    """What `EarlyExitGenerator.generate` returns.

    Attributes:
        tokens: per row, its new tokens (the end-of-sequence token included when produced).
        exits: per row, the exit index that produced each new token (the first new token comes
            from the prefill, at the last exit).
        sequences: ``[B, S + max_new]`` the left-padded prompts followed by the new tokens,
            ``pad_token_id`` after a row's end.
        attention_mask: bool, same shape: the real slots of ``sequences``.
        prompt_length: S, the padded prompt length (the first new token's slot).
        exit_layers: the decoder layer of each exit.
        num_layers: L.
        cache: the KV cache after the last step (only with ``keep_cache=True``).
    """

    tokens: list[list[int]]
    exits: list[list[int]]
    sequences: Tensor
    attention_mask: Tensor
    prompt_length: int
    exit_layers: tuple[int, ...]
    num_layers: int
    cache: KVCache | None = field(default=None, repr=False)

    @property
    def num_tokens(self) -> int:
        """New tokens in all rows."""
        return sum(len(row) for row in self.tokens)

    def layers_per_token(self, *, skip_first: bool = True) -> float:
        """Mean layers a new token's own step ran (its exit layer + 1): the ideal cost in
        layer passes. ``skip_first`` leaves out each row's first token (prefill, full depth)."""
        layers = [
            self.exit_layers[e] + 1 for row in self.exits for e in (row[1:] if skip_first else row)
        ]
        return sum(layers) / len(layers) if layers else float(self.num_layers)

    def exit_histogram(self, *, skip_first: bool = True) -> list[int]:
        """New tokens per exit (``skip_first`` as in `layers_per_token`)."""
        counts = [0] * len(self.exit_layers)
        for row in self.exits:
            for e in row[1:] if skip_first else row:
                counts[e] += 1
        return counts


class EarlyExitGenerator:
    """Generate with per-row token exits (see the module docstring).

    Args:
        model: the decoder with its exits.
        policy: the exit rule on token logits (any registered criterion; None: never exit
            early, the plain model).
        kv: the KV strategy's registered name (``"deferred"``, ``"copy"`` or a plugin's).
        plugins: the plugin manager to resolve ``kv`` with (default: the shared one).
        check_finite: refuse NaN or infinite exit logits (one host read per exit).
        monitor: an `adaptix.ShiftMonitor` built for ``policy`` (the same object) on a token
            trace of calibration-kind text (`adaptix.token_trace`): every decode step counts
            each token's confidence bins at every exit it reaches and the exit it took, and
            the monitor tests every ``check_every`` steps. Its false-alarm bound assumes a
            stream exchangeable with the reference; tokens of one text are not independent,
            so on text the bound is a design figure, checked empirically (the docs say how).
            Auditing (``audit > 0``) is not supported here.

    Raises:
        ValidationError: the policy does not fit the model (exits, vocabulary), or the
            monitor is not built for this policy and model.
        PluginError: unknown KV strategy.
    """

    def __init__(
        self,
        model: DecoderModel,
        policy: ExitPolicy | None = None,
        *,
        kv: str = "deferred",
        plugins: AdaptixPluginManager | None = None,
        check_finite: bool = True,
        monitor: ShiftMonitor | None = None,
    ) -> None:
        if not isinstance(model, DecoderModel):
            raise ValidationError(
                f"expected an adaptix DecoderModel, got a {type(model).__name__}."
            )
        if policy is not None and not isinstance(policy, ExitPolicy):
            raise ValidationError(
                f"expected policy as an adaptix ExitPolicy or None, got a {type(policy).__name__}."
            )
        if not isinstance(kv, str):
            raise ValidationError(f"expected kv as a registered strategy name, got {kv!r}.")
        manager = resolve_manager(plugins)
        entry: Entry[KVStrategy] = manager.kv_strategies.entry(kv)
        self.kv_entry = entry
        self.kv: KVStrategy = call_plugin(
            entry, "__init__", entry.component, entry.component.Params()
        )
        self.model = model
        self.policy = policy
        if policy is not None:
            policy.check_model(model.num_exits, model.parts.vocab_size)
        self.check_finite = check_finite
        self.monitor = _checked_monitor(monitor, policy, model)
        # a monitor counts every exit's bins: no exit may skip its head then
        self.silent_exits = (
            frozenset() if monitor is not None else _silent_exits(policy, model.num_exits)
        )

    # -- the public call -------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]] | Tensor,
        *,
        max_new_tokens: int | Sequence[int],
        attention_mask: Tensor | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int = 0,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
        keep_cache: bool = False,
    ) -> GenerationOutput:
        """Generate up to ``max_new_tokens`` per row.

        Args:
            prompts: token ids: a list of rows (ragged lengths allowed) or a left-padded
                int tensor ``[B, S]`` with its ``attention_mask``.
            max_new_tokens: per batch, or per row.
            attention_mask: for a tensor of prompts (default: every slot real).
            eos_token_id: a row ends after producing one of these (default: the model's).
            pad_token_id: fills ``sequences`` where there is no token.
            do_sample: sample from the exit's softmax at ``temperature`` (else greedy).
            seed: the sampling generator's seed (default: drawn from torch's global one).
            keep_cache: return the final cache (tests compare it with the full model's).

        Raises:
            ValidationError: prompts of the wrong type or empty, token ids out of the
                vocabulary, a bad length, temperature or seed.
            PluginError: the criterion or the KV strategy raised or broke its contract.
        """
        ids, mask = left_padded(self.model, prompts, attention_mask)
        budget = token_budget(max_new_tokens, ids.shape[0])
        eos = eos_ids(self.model, eos_token_id)
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature)) or (
            do_sample and temperature <= 0
        ):
            raise ValidationError(f"expected a finite temperature > 0, got {temperature!r}.")
        generator = None
        if do_sample:
            generator = torch.Generator(device=ids.device)
            if seed is not None:
                if isinstance(seed, bool) or not isinstance(seed, int):
                    raise ValidationError(f"expected an integer seed, got {seed!r}.")
                generator.manual_seed(seed)
            else:
                generator.seed()
        run = _Run(
            self,
            ids,
            mask,
            budget,
            eos,
            pad_token_id,
            temperature if do_sample else None,
            generator,
        )
        return run.output(keep_cache)

    # -- checks ----------------------------------------------------------------------------

    def check_fill(
        self, filled: object, exit_layer: int, count: int, like: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        """What the KV strategy's `fill` returned, checked against its contract."""
        parts = self.model.parts
        entry = self.kv_entry
        shape = (count, parts.num_kv_heads, parts.head_dim)

        def broken(what: str) -> PluginError:
            return PluginError(
                f"KV strategy '{entry.name}' from plugin '{entry.plugin}' broke its contract: "
                f"fill(exit_layer={exit_layer}) {what}. See adaptix.components.KVStrategy.fill."
            )

        if not isinstance(filled, Mapping):
            raise broken(
                f"returned a {type(filled).__name__}, expected a dict layer -> (keys, values)"
            )
        for layer, pair in filled.items():
            if (
                isinstance(layer, bool)
                or not isinstance(layer, int)
                or not (exit_layer < layer < len(parts.blocks))
            ):
                raise broken(
                    f"returned layer {layer!r}; only the skipped layers {exit_layer + 1}.."
                    f"{len(parts.blocks) - 1} may be filled"
                )
            if not (isinstance(pair, tuple) and len(pair) == 2):
                raise broken(f"gave layer {layer} a {type(pair).__name__}, expected (keys, values)")
            for name, value in zip(("keys", "values"), pair, strict=True):
                if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                    got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                    raise broken(f"gave layer {layer} {name} {got}, expected {shape}")
                if value.dtype != like.dtype or value.device != like.device:
                    raise broken(
                        f"gave layer {layer} {name} as {value.dtype} on {value.device}, expected "
                        f"{like.dtype} on {like.device}"
                    )
        finite = [torch.isfinite(v).all() for pair in filled.values() for v in pair]
        if finite and not bool(torch.stack(finite).all()):  # one host read for all layers
            bad = [
                layer
                for layer, pair in filled.items()
                if not all(bool(torch.isfinite(v).all()) for v in pair)
            ]
            raise broken(f"gave layer {bad[0]} keys or values with NaN or infinite values")
        return filled


def _checked_monitor(
    monitor: ShiftMonitor | None, policy: ExitPolicy | None, model: DecoderModel
) -> ShiftMonitor | None:
    if monitor is None:
        return None
    if not isinstance(monitor, ShiftMonitor):
        raise ValidationError(
            f"expected monitor to be an adaptix.ShiftMonitor, got {type(monitor).__name__}."
        )
    if policy is None or monitor.policy is not policy:
        raise ValidationError(
            "the monitor watches another policy than the generator's: build it with the same "
            "ExitPolicy object the generator gets."
        )
    if monitor.num_exits != model.num_exits:
        raise ValidationError(
            f"the monitor's reference has {monitor.num_exits} exits, the decoder "
            f"{model.num_exits}: count the reference on this decoder's token trace."
        )
    if monitor.audit > 0:
        raise ValidationError("the generator does not audit rows: build the monitor with audit=0.")
    return monitor


def _silent_exits(policy: ExitPolicy | None, num_exits: int) -> frozenset[int]:
    """Early exits where ``policy`` can never fire, whose heads need not run: every exit of a
    policy that does not exit early; for a criterion that scores by its calibration's bin
    table (``fused_kind == "table"``, stateless), the exits whose table has no entry that
    reaches the threshold."""
    if policy is None or not policy.exits_early:
        return frozenset(range(num_exits))
    criterion = policy.criterion
    if criterion.fused_kind != "table" or criterion.direction != "ge":
        return frozenset()
    silent = set()
    for e in range(num_exits - 1):
        table = criterion.fused_table(e)
        if table is None:
            continue
        defined = table[~torch.isnan(table)]
        if defined.numel() == 0 or float(defined.max()) < policy.threshold:
            silent.add(e)
    return frozenset(silent)


def left_padded(
    model: DecoderModel, prompts: Sequence[Sequence[int]] | Tensor, attention_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Prompts as left-padded ids ``[B, S]`` and a bool mask on the model's device, checked
    (`DecoderModel.check_tokens`): a list of token-id lists or a tensor with its mask."""
    device = next(model.parameters()).device
    if isinstance(prompts, Tensor):
        mask = (
            torch.ones_like(prompts, dtype=torch.bool) if attention_mask is None else attention_mask
        )
        return model.check_tokens(prompts, mask)
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValidationError(
            "expected prompts as token ids (a list of lists of int, or an int tensor with "
            f"an attention_mask), got a {type(prompts).__name__}; tokenize text first."
        )
    if len(prompts) == 0:
        raise ValidationError("expected at least one prompt, got none.")
    rows = []
    for index, row in enumerate(prompts):
        if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, Tensor)):
            raise ValidationError(
                f"prompt {index}: expected a list of token ids, got a {type(row).__name__}."
            )
        values = row.tolist() if isinstance(row, Tensor) else list(row)
        if not values:
            raise ValidationError(f"prompt {index} is empty: every prompt needs a token.")
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            raise ValidationError(
                f"prompt {index}: token ids must be integers, got {values[:8]!r}."
            )
        rows.append(values)
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.bool)
    for index, values in enumerate(rows):
        ids[index, width - len(values) :] = torch.tensor(values)
        mask[index, width - len(values) :] = True
    return model.check_tokens(ids.to(device), mask.to(device))


def eos_ids(model: DecoderModel, eos_token_id: int | Sequence[int] | None) -> Tensor:
    """The end-of-sequence ids as a tensor (None: the model's own)."""
    values = model.parts.eos_token_id if eos_token_id is None else eos_token_id
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    if not isinstance(values, Sequence) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in values
    ):
        raise ValidationError(f"expected eos_token_id as an int or ints, got {eos_token_id!r}.")
    device = next(model.parameters()).device
    return torch.tensor(list(values), dtype=torch.long, device=device)


def token_budget(max_new_tokens: int | Sequence[int], rows: int) -> Tensor:
    values = [max_new_tokens] * rows if isinstance(max_new_tokens, int) else max_new_tokens
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != rows:
        raise ValidationError(
            f"expected max_new_tokens as an int or one int per row ({rows}), got "
            f"{max_new_tokens!r}."
        )
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValidationError(f"expected max_new_tokens ≥ 1, got {max_new_tokens!r}.")
    return torch.tensor(list(values), dtype=torch.long)


class _Run:
    """One call of `generate`: the batch's state from prefill to the last step."""

    def __init__(
        self,
        owner: EarlyExitGenerator,
        ids: Tensor,
        mask: Tensor,
        budget: Tensor,
        eos: Tensor,
        pad: int,
        temperature: float | None,
        generator: torch.Generator | None,
    ) -> None:
        self.owner = owner
        self.model = owner.model
        self.parts = owner.model.parts
        self.policy = owner.policy
        self.temperature = temperature
        self.generator = generator
        self.eos = eos
        rows, length = ids.shape
        self.length = length
        most = int(budget.max())
        self.slots = length + most
        device = ids.device
        self.sequences = torch.full((rows, self.slots), pad, dtype=torch.long, device=device)
        self.sequences[:, :length] = ids
        # per row: tokens produced, the exit of each, the budget (all on the device: recording
        # a step's tokens reads nothing back to the host)
        self.count = torch.zeros(rows, dtype=torch.long, device=device)
        self.exit_table = torch.full((rows, most), -1, dtype=torch.long, device=device)
        self.budget = budget.to(device)
        self.exit_of_layer = self.model.exit_at_layer
        self.last_exit = self.model.num_exits - 1
        self.defers = owner.kv.defers
        # prefill: every prompt slot at full depth; the first new token from the last exit
        self.cache, states = self.model.prefill(ids, mask, self.slots)
        first = self._choose(self.model.exit_logits(self.last_exit, states[-1][:, -1]))
        self.finished = torch.zeros(rows, dtype=torch.bool, device=device)
        self._record(torch.arange(rows, device=device), first, self.last_exit)
        # deferred work: the hidden state and the layers done of each slot (L: nothing pending)
        layers = self.model.num_layers
        self.level = torch.full((rows, self.slots), layers, dtype=torch.long, device=device)
        self.pending = (
            torch.zeros(
                rows, self.slots, states[-1].shape[-1], dtype=states[-1].dtype, device=device
            )
            if self.defers
            else None
        )
        self.oldest = self.slots  # the oldest slot with pending work in any row
        self.join_layers = {layer + 1 for layer in self.model.exit_layers[:-1]}
        for step in range(1, most):
            if bool(self.finished.all()):
                break
            self._step(length + step - 1)

    # -- one step --------------------------------------------------------------------------

    def _step(self, slot: int) -> None:
        model, parts, cache = self.model, self.parts, self.cache
        rows = (~self.finished).nonzero().squeeze(1)
        cache.real[rows, slot] = True
        hidden = parts.embed(self.sequences[rows, slot]).unsqueeze(1)  # [R, 1, d]
        slots = torch.full((rows.shape[0], 1), slot, dtype=torch.long, device=hidden.device)
        live: Tensor | None = None  # every query of the block is a token (no ragged rows)
        exits_early = self.policy is not None and self.policy.exits_early
        policy = self.policy
        monitor = self.owner.monitor
        step_rows = rows
        state = (
            policy.start(rows.shape[0], hidden.device)
            if policy is not None and exits_early
            else None
        )
        levels = None
        if self.defers and self.oldest < slot:
            levels = self.level[rows, self.oldest : slot]  # [R, w]
        rope: tuple[Tensor, Tensor] | None = None  # the block's rotary cos/sin, kept across layers
        for layer in range(model.num_layers):
            if levels is not None and layer in self.join_layers:
                width = hidden.shape[1]
                hidden, slots, live = self._join(hidden, slots, live, rows, levels, layer, slot)
                if hidden.shape[1] != width:
                    rope = None
            if rope is None:
                rope = block_rotary(parts, cache, rows, slots, hidden)
            hidden = attend(parts, layer, hidden, cache, rows, slots, live, slot + 1, rope)
            exit_index = self.exit_of_layer.get(layer)
            if exit_index is None or exit_index == self.last_exit:
                continue
            decides = exits_early and exit_index not in self.owner.silent_exits
            if not decides and monitor is None:
                continue
            logits = model.exit_logits(exit_index, hidden[:, -1])
            if monitor is not None:
                monitor.count_exit(exit_index, logits)
            if not decides:
                continue
            assert self.policy is not None
            score, state = self.policy.score(logits, exit_index, state)
            leave = self.policy.fires(score)
            if not self._any_leave(leave, logits, exit_index):
                continue
            out = leave.nonzero().squeeze(1)
            self._record(rows[out], self._choose(logits[out]), exit_index)
            self._leave(
                layer, rows[out], hidden[out], slots[out], None if live is None else live[out]
            )
            keep = (~leave).nonzero().squeeze(1)
            rows, hidden, slots = rows[keep], hidden[keep], slots[keep]
            live = None if live is None else live[keep]
            if levels is not None:
                levels = levels[keep]
            state = self.policy.select_state(state, keep)
            if rows.numel() == 0:
                self._end_step(step_rows)
                return
            width = hidden.shape[1]
            hidden, slots, live = _trim(hidden, slots, live)
            cos, sin = rope
            rope = (cos[keep, width - hidden.shape[1] :], sin[keep, width - hidden.shape[1] :])
        logits = model.exit_logits(self.last_exit, hidden[:, -1])
        self._check_logits(logits, self.last_exit)
        if monitor is not None:
            monitor.count_exit(self.last_exit, logits)
        self._record(rows, self._choose(logits), self.last_exit)
        self._end_step(step_rows)
        if self.defers:
            if live is None:
                self.level[rows.unsqueeze(1), slots] = model.num_layers
            else:
                where = live.nonzero(as_tuple=True)
                self.level[rows[where[0]], slots[where]] = model.num_layers

    def _end_step(self, rows: Tensor) -> None:
        """Tell the monitor the exit each of the step's rows took."""
        monitor = self.owner.monitor
        if monitor is not None:
            monitor.end_batch(self.exit_table[rows, self.count[rows] - 1])

    def _join(
        self,
        hidden: Tensor,
        slots: Tensor,
        live: Tensor | None,
        rows: Tensor,
        levels: Tensor,
        layer: int,
        slot: int,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Add to each row's block the pending slots whose next layer is ``layer``."""
        joins = (levels == layer).sum(1)  # [R]
        old = hidden.shape[1]
        counts = (old if live is None else live.sum(1)) + joins
        width, narrowest = torch.stack([counts.max(), counts.min()]).tolist()
        if width == old and live is None:
            return hidden, slots, live  # nobody joins
        assert self.pending is not None
        columns = torch.arange(width, device=hidden.device)
        new_slots = (slot - (width - 1 - columns)).expand(rows.shape[0], width)
        new_live = columns.unsqueeze(0) >= (width - counts).unsqueeze(1)
        new_hidden = self.pending[rows.unsqueeze(1), new_slots.clamp(min=0)]
        # the block's own queries keep their hidden states
        if live is None:
            new_hidden[:, width - old :] = hidden
        else:
            new_hidden[:, width - old :] = torch.where(
                live.unsqueeze(2), hidden, new_hidden[:, width - old :]
            )
        return new_hidden, new_slots, (None if narrowest == width else new_live)

    def _leave(
        self, layer: int, rows: Tensor, hidden: Tensor, slots: Tensor, live: Tensor | None
    ) -> None:
        """Rows whose token exited after ``layer``: defer or fill the layers they skip."""
        if self.defers:
            assert self.pending is not None
            if live is None:
                live = torch.ones(slots.shape, dtype=torch.bool, device=slots.device)
            where = live.nonzero(as_tuple=True)
            cache_rows, cache_slots = rows[where[0]], slots[where]
            self.pending[cache_rows, cache_slots] = hidden[where]
            self.level[cache_rows, cache_slots] = layer + 1
            self.oldest = min(self.oldest, int(cache_slots.min()))
            return
        current = hidden[:, -1]
        positions = self.cache.positions[rows, slots[:, -1]]
        entry = self.owner.kv_entry
        filled = call_plugin(
            entry, "fill", self.owner.kv.fill, self.parts, layer, current, positions
        )
        checked = self.owner.check_fill(filled, layer, rows.shape[0], current)
        for target, (keys, values) in checked.items():
            self.cache.write(target, rows, slots[:, -1], keys, values)

    # -- tokens ----------------------------------------------------------------------------

    def _choose(self, logits: Tensor) -> Tensor:
        if self.temperature is None:
            return logits.argmax(-1)
        probabilities = torch.softmax(logits.float() / self.temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=self.generator).squeeze(1)

    def _record(self, rows: Tensor, tokens: Tensor, exit_index: int) -> None:
        """Rows ``rows`` produced ``tokens`` at exit ``exit_index`` (device work only)."""
        position = self.count[rows]
        self.sequences[rows, self.length + position] = tokens
        self.exit_table[rows, position] = exit_index
        self.count[rows] = position + 1
        ended = (position + 1 >= self.budget[rows]) | torch.isin(tokens, self.eos)
        self.finished[rows] = self.finished[rows] | ended

    def _any_leave(self, leave: Tensor, logits: Tensor, exit_index: int) -> bool:
        """Whether any row leaves at this exit, with the logits' finite check, in one host
        read."""
        if not self.owner.check_finite:
            return bool(leave.any())
        anyone, finite = torch.stack([leave.any(), torch.isfinite(logits).all()]).tolist()
        if not finite:
            self._non_finite(exit_index)
        return bool(anyone)

    def _check_logits(self, logits: Tensor, exit_index: int) -> None:
        if self.owner.check_finite and not bool(torch.isfinite(logits).all()):
            self._non_finite(exit_index)

    def _non_finite(self, exit_index: int) -> NoReturn:
        raise ValidationError(
            f"exit {exit_index} (after layer {self.model.exit_layers[exit_index]}) gave NaN "
            "or infinite logits; check the model's weights and dtype."
        )

    def output(self, keep_cache: bool) -> GenerationOutput:
        counts = self.count.tolist()
        new = self.sequences[:, self.length :].tolist()
        exits = self.exit_table.tolist()
        mask = self.cache.real.clone()
        for row, produced in enumerate(counts):
            mask[row, self.length : self.length + produced] = True
        return GenerationOutput(
            tokens=[new[row][:n] for row, n in enumerate(counts)],
            exits=[exits[row][:n] for row, n in enumerate(counts)],
            sequences=self.sequences,
            attention_mask=mask,
            prompt_length=self.length,
            exit_layers=self.model.exit_layers,
            num_layers=self.model.num_layers,
            cache=self.cache if keep_cache else None,
        )


def _trim(
    hidden: Tensor, slots: Tensor, live: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Drop leading columns that no remaining row uses (None: the block is not ragged)."""
    if live is None:
        return hidden, slots, live
    used = live.any(0)
    first = int(used.nonzero()[0]) if bool(used.any()) else live.shape[1] - 1
    hidden, slots, live = hidden[:, first:], slots[:, first:], live[:, first:]
    return hidden, slots, (None if bool(live.all()) else live)


__all__ = [
    "EarlyExitGenerator",
    "GenerationOutput",
    "eos_ids",
    "left_padded",
    "token_budget",
]
