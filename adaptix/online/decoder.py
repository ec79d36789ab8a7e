"""A decoder language model with token exits: its layers run by adaptix, its KV cache by slot.

`DecoderModel` holds a decoder cut into layers (`adaptix.components.DecoderParts`, from a
causal-LM backbone) and the layers after which a token may exit. Exit e reads the hidden state
after layer ``exit_layers[e]`` through an optional adapter, the model's final norm and its LM
head; the last exit is the full model. adaptix runs the layers itself rather than through the
model's ``forward`` so that, at one step of generation, every row of a batch can leave at its
own layer and carry its own number of query positions (`adaptix.online.generate`).

`KVCache` stores keys and values by *slot*: the column of a token in the left-padded batch, the
same for every layer. Each layer has its own mask of which slots hold a key, so a token that
exited early is visible at the layers it ran and invisible (or filled by a `KVStrategy`) at the
layers it skipped. Rotary positions count real tokens only (``slot - padding``), as
transformers' ``generate`` counts them from the attention mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adaptix.components import DecoderParts, build_params
from adaptix.core.calibration import Calibration
from adaptix.core.trace import Trace
from adaptix.errors import PluginError, ValidationError
from adaptix.plugins import AdaptixPluginManager, call_plugin, resolve_manager

#: The largest KV cache a call may allocate (bytes): beyond it, a clear error instead of a raw
#: allocation failure.
_CACHE_LIMIT = 64 * 2**30

#: Module names every decoder layer must have (the Llama anatomy of `DecoderParts`).
LAYER_ANATOMY = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
ATTENTION_ANATOMY = ("q_proj", "k_proj", "v_proj", "o_proj")


def check_parts(parts: object, owner: str = "the decoder") -> DecoderParts:
    """``parts`` if it is a `DecoderParts` whose layers have the Llama anatomy, else a
    `ValidationError` naming the first missing piece."""
    if not isinstance(parts, DecoderParts):
        raise ValidationError(
            f"expected {owner} as adaptix.components.DecoderParts (from a causal-LM backbone), "
            f"got a {type(parts).__name__}."
        )
    if len(parts.blocks) == 0:
        raise ValidationError(f"{owner} has no layers.")
    for index, layer in enumerate(parts.blocks):
        for name in LAYER_ANATOMY:
            if not hasattr(layer, name):
                raise ValidationError(
                    f"{owner}: layer {index} has no '{name}'; a decoder layer needs "
                    f"{', '.join(LAYER_ANATOMY)} (see adaptix.components.DecoderParts)."
                )
        for name in ATTENTION_ANATOMY:
            if not hasattr(layer.self_attn, name):
                raise ValidationError(
                    f"{owner}: layer {index}'s self_attn has no '{name}'; it needs "
                    f"{', '.join(ATTENTION_ANATOMY)}."
                )
    if parts.num_heads % parts.num_kv_heads:
        raise ValidationError(
            f"{owner}: {parts.num_heads} attention heads are not a multiple of "
            f"{parts.num_kv_heads} KV heads."
        )
    return parts


# ------------------------------------------------------------------------------------ the maths


def rotary(parts: DecoderParts, like: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin ``[*positions.shape, head_dim]`` for int64 ``positions``, in ``like``'s dtype."""
    flat = positions.reshape(1, -1)
    cos, sin = parts.rotary(like, flat)
    shape = (*positions.shape, cos.shape[-1])
    return cos.reshape(shape).to(like.dtype), sin.reshape(shape).to(like.dtype)


def _rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on ``x [..., heads, head_dim]`` with cos/sin ``[..., head_dim]``."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def key_value(
    parts: DecoderParts, layer: int, normed: Tensor, cos: Tensor, sin: Tensor
) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s keys (rotated) and values ``[..., num_kv_heads, head_dim]`` of the
    normed hidden states ``normed [..., d]``."""
    attention: Any = parts.blocks[layer].self_attn  # the Llama anatomy (check_parts)
    shape = (*normed.shape[:-1], parts.num_kv_heads, parts.head_dim)
    keys = attention.k_proj(normed).view(shape)
    if hasattr(attention, "k_norm"):
        keys = attention.k_norm(keys)
    values = attention.v_proj(normed).view(shape)
    return _rotate(keys, cos, sin), values


def exit_key_value(
    parts: DecoderParts, layer: int, hidden: Tensor, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """Layer ``layer``'s keys and values ``[n, num_kv_heads, head_dim]`` computed from hidden
    states ``[n, d]`` taken as that layer's input (what the ``copy`` strategy fills)."""
    block: Any = parts.blocks[layer]
    normed = block.input_layernorm(hidden)
    cos, sin = rotary(parts, hidden, positions)
    return key_value(parts, layer, normed, cos, sin)


@dataclass
class KVCache:
    """Keys and values by slot for a batch of ``rows``, with a per-layer mask of filled slots.

    Attributes:
        keys, values: per layer, ``[rows, num_kv_heads, slots, head_dim]``.
        filled: per layer, bool ``[rows, slots]``: the slot holds this layer's key and value.
        real: bool ``[rows, slots]``: the slot holds a token (not left padding).
        positions: int64 ``[rows, slots]``: the rotary position of each slot.
    """

    keys: list[Tensor]
    values: list[Tensor]
    filled: list[Tensor]
    real: Tensor
    positions: Tensor

    @classmethod
    def empty(
        cls, parts: DecoderParts, real: Tensor, dtype: torch.dtype, device: torch.device
    ) -> KVCache:
        """An empty cache for the slots of ``real [rows, slots]``."""
        rows, slots = real.shape
        shape = (rows, parts.num_kv_heads, slots, parts.head_dim)
        layers = len(parts.blocks)

        # left padding: a row's tokens sit at its last slots, so position = slot - padding
        padding = (~real).long().cumprod(1).sum(1, keepdim=True)  # leading empty slots
        positions = (torch.arange(slots, device=device).unsqueeze(0) - padding).clamp(min=0)
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            filled=[
                torch.zeros(rows, slots, dtype=torch.bool, device=device) for _ in range(layers)
            ],
            real=real,
            positions=positions,
        )

    def write(self, layer: int, rows: Tensor, slots: Tensor, keys: Tensor, values: Tensor) -> None:
        """Store ``keys``/``values [n, kv_heads, head_dim]`` at (``rows[i]``, ``slots[i]``)."""
        self.keys[layer][rows, :, slots] = keys
        self.values[layer][rows, :, slots] = values
        self.filled[layer][rows, slots] = True


def block_rotary(
    parts: DecoderParts, cache: KVCache, rows: Tensor, slots: Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """cos, sin ``[R, Q, head_dim]`` of a block's query slots (the same at every layer)."""
    return rotary(parts, like, cache.positions[rows.unsqueeze(1), slots])


def attend(
    parts: DecoderParts,
    layer: int,
    hidden: Tensor,
    cache: KVCache,
    rows: Tensor,
    slots: Tensor,
    live: Tensor | None,
    span: int,
    rope: tuple[Tensor, Tensor] | None = None,
) -> Tensor:
    """Run layer ``layer`` on a block of query slots per row, writing their keys and values.

    Args:
        hidden: ``[R, Q, d]`` the inputs of the block's queries.
        cache: the batch's cache (written at the live queries' slots).
        rows: int64 ``[R]``: the cache rows of the block's rows.
        slots: int64 ``[R, Q]``: each query's slot (any slot where not live).
        live: bool ``[R, Q]``: the query is a token (not a filler of a ragged block); None:
            every query is.
        span: attend to slots ``0..span-1`` (every query's slot is below ``span``).
        rope: the block's ``(cos, sin)`` (`block_rotary`), when the caller keeps them across
            layers; computed here if None.

    Returns:
        ``[R, Q, d]``: the layer's output (meaningless where not live).
    """
    block: Any = parts.blocks[layer]  # the Llama anatomy (check_parts)
    attention = block.self_attn
    r, q, _ = hidden.shape
    cos, sin = block_rotary(parts, cache, rows, slots, hidden) if rope is None else rope
    normed = block.input_layernorm(hidden)
    queries = attention.q_proj(normed).view(r, q, parts.num_heads, parts.head_dim)
    if hasattr(attention, "q_norm"):
        queries = attention.q_norm(queries)
    queries = _rotate(queries, cos, sin)
    keys, values = key_value(parts, layer, normed, cos, sin)
    if live is None:
        row_index = rows.unsqueeze(1).expand(r, q).reshape(-1)
        cache.write(layer, row_index, slots.reshape(-1), keys.flatten(0, 1), values.flatten(0, 1))
    else:
        where = live.nonzero(as_tuple=True)
        cache.write(layer, rows[where[0]], slots[where], keys[where], values[where])
    # every row of the cache (rows is sorted and unique): views, not gathered copies
    every = r == cache.real.shape[0]
    filled = cache.filled[layer][:, :span] if every else cache.filled[layer][rows, :span]
    real = cache.real[:, :span] if every else cache.real[rows, :span]
    visible = filled & real  # [R, S]
    order = torch.arange(span, device=hidden.device).view(1, 1, span)
    query_slots = slots.unsqueeze(2)
    # causal over filled real slots; a query always sees its own slot, so that the softmax of
    # a padding or filler query is defined (its output is never used) and no NaN enters a key
    mask = (visible.unsqueeze(1) & (order <= query_slots)) | (order == query_slots)
    out = F.scaled_dot_product_attention(
        queries.transpose(1, 2),
        cache.keys[layer][:, :, :span] if every else cache.keys[layer][rows, :, :span],
        cache.values[layer][:, :, :span] if every else cache.values[layer][rows, :, :span],
        attn_mask=mask.unsqueeze(1),
        scale=parts.attention_scale,
        enable_gqa=parts.num_heads != parts.num_kv_heads,
    )
    out = attention.o_proj(out.transpose(1, 2).reshape(r, q, parts.num_heads * parts.head_dim))
    hidden = hidden + out
    return hidden + block.mlp(block.post_attention_layernorm(hidden))


# ---------------------------------------------------------------------------------- the model


class DecoderModel(nn.Module):
    """A decoder with token exits after chosen layers.

    Args:
        parts: the decoder (`adaptix.components.DecoderParts`).
        exit_layers: the layers (0-based) after which a token may exit, increasing; the last
            layer is always the last exit and is appended if missing.
        adapters: one module ``[n, d] -> [n, d]`` per early exit (None: none), applied to the
            hidden state before the final norm and the LM head (`adaptix.online.lm_adapters`).

    Raises:
        ValidationError: an exit layer out of range or out of order, or adapters that do not
            match the exits.
    """

    def __init__(
        self,
        parts: DecoderParts,
        exit_layers: Sequence[int],
        adapters: Sequence[nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.parts = check_parts(parts)
        layers = len(parts.blocks)
        chosen = _exit_layers(exit_layers, layers)
        self.exit_layers: tuple[int, ...] = chosen
        self.layers = nn.ModuleList(parts.blocks)
        self.embed, self.norm, self.lm_head, self.rotary = (
            parts.embed,
            parts.norm,
            parts.lm_head,
            parts.rotary,
        )
        if adapters is not None and len(adapters) != len(chosen) - 1:
            raise ValidationError(
                f"expected one adapter per early exit ({len(chosen) - 1}, at layers "
                f"{list(chosen[:-1])}), got {len(adapters)}."
            )
        self.adapters = None if adapters is None else nn.ModuleList(adapters)

    @property
    def num_layers(self) -> int:
        """L, the decoder's layers."""
        return len(self.parts.blocks)

    @property
    def num_exits(self) -> int:
        """E, the exits (the last is the full model)."""
        return len(self.exit_layers)

    @property
    def exit_at_layer(self) -> dict[int, int]:
        """Exit index by layer."""
        return {layer: e for e, layer in enumerate(self.exit_layers)}

    def exit_logits(self, e: int, hidden: Tensor) -> Tensor:
        """Exit ``e``'s logits ``[n, V]`` from the hidden states ``[n, d]`` after its layer."""
        if self.adapters is not None and e < len(self.adapters):
            hidden = self.adapters[e](hidden)
        return self.parts.lm_head(self.parts.norm(hidden))

    def check_tokens(
        self, input_ids: object, attention_mask: object, *, trailing: bool = False
    ) -> tuple[Tensor, Tensor]:
        """``input_ids`` int64 ``[B, S]`` and a bool ``attention_mask`` of the same shape,
        left-padded (every row's tokens contiguous and, unless ``trailing``, at its end; at
        least one per row), or a `ValidationError`."""
        if (
            not isinstance(input_ids, Tensor)
            or input_ids.dim() != 2
            or input_ids.is_floating_point()
        ):
            raise ValidationError(
                "expected input_ids as an integer tensor [batch, tokens], got "
                f"{_describe(input_ids)}."
            )
        if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            raise ValidationError(
                f"expected an attention_mask of shape {tuple(input_ids.shape)}, got "
                f"{_describe(attention_mask)}."
            )
        mask = attention_mask.bool()
        if input_ids.shape[1] == 0 or not bool(mask.any(1).all()):
            raise ValidationError("every row needs at least one token; got an empty prompt.")
        starts = (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()
        if bool((starts != 1).any()) or (not trailing and not bool(mask[:, -1].all())):
            raise ValidationError(
                "expected left-padded rows (padding before the tokens, none between or after "
                "them); a row has a padded slot after a token."
            )
        vocab = self.parts.vocab_size
        real = input_ids[mask]
        if bool(((real < 0) | (real >= vocab)).any()):
            raise ValidationError(
                f"token ids must lie in [0, {vocab}); got {real.min()}..{real.max()}."
            )
        device = next(self.parameters()).device
        if input_ids.device != device:
            raise ValidationError(f"expected tokens on {device}, got them on {input_ids.device}.")
        return input_ids.long(), mask

    @torch.no_grad()
    def prefill(self, input_ids: Tensor, mask: Tensor, slots: int) -> tuple[KVCache, list[Tensor]]:
        """Run every layer on the prompts (full depth) into a cache of ``slots`` slots.

        Returns:
            The cache and, per exit, the hidden states ``[B, S, d]`` after its layer.
        """
        rows, length = input_ids.shape
        window = self.parts.sliding_window
        if window is not None and slots > window:
            raise ValidationError(
                f"{slots} token slots exceed the model's sliding attention window ({window}); "
                "adaptix runs full attention: shorten the prompts or max_new_tokens."
            )
        longest = self.parts.max_positions
        if longest is not None and slots > longest:
            raise ValidationError(
                f"{slots} token slots (prompt and new tokens) exceed the {longest} positions the "
                "model was made for: shorten the prompts or max_new_tokens."
            )
        parts = self.parts
        size = 2 * len(parts.blocks) * rows * parts.num_kv_heads * slots * parts.head_dim
        size *= next(parts.embed.parameters()).element_size()
        if size > _CACHE_LIMIT:
            raise ValidationError(
                f"the KV cache for {rows} rows of {slots} token slots would take "
                f"{size / 2**30:.1f} GiB (limit {_CACHE_LIMIT / 2**30:.0f} GiB): fewer rows, "
                "shorter prompts or fewer new tokens."
            )
        real = torch.zeros(rows, slots, dtype=torch.bool, device=input_ids.device)
        real[:, :length] = mask
        hidden = self.parts.embed(input_ids)
        cache = KVCache.empty(self.parts, real, hidden.dtype, hidden.device)
        row_index = torch.arange(rows, device=hidden.device)
        slot_index = torch.arange(length, device=hidden.device).expand(rows, length)
        exits = self.exit_at_layer
        states = []
        for layer in range(self.num_layers):
            hidden = attend(self.parts, layer, hidden, cache, row_index, slot_index, None, length)
            if layer in exits:
                states.append(hidden)
        return cache, states

    @torch.no_grad()
    def token_logits(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Every exit's logits at every slot, teacher-forced at full depth: ``[B, S, E, V]``."""
        ids, mask = self.check_tokens(input_ids, attention_mask, trailing=True)
        _, states = self.prefill(ids, mask, ids.shape[1])
        return torch.stack([self.exit_logits(e, h) for e, h in enumerate(states)], dim=2)


def build_decoder(
    backbone: str,
    source: object = None,
    *,
    exit_layers: Sequence[int],
    adapters: Sequence[nn.Module] | None = None,
    backbone_params: dict[str, object] | None = None,
    plugins: AdaptixPluginManager | None = None,
) -> DecoderModel:
    """A `DecoderModel` from a registered causal-LM backbone (``causal_lm`` for Hugging Face
    Llama-family models, in the ``adaptix-transformers`` plugin, or a plugin's own).

    Args:
        backbone: the backbone's registered name.
        source: what it adapts (a loaded causal LM).
        exit_layers: the layers (0-based) after which a token may exit; the last layer is
            appended if missing.
        adapters: one module per early exit (`adaptix.online.lm_adapters.train_adapters`).
        backbone_params: the backbone's parameters.
        plugins: the plugin manager (default: the shared one).

    Raises:
        PluginError: unknown backbone, or one that raised or returned something else than
            `adaptix.components.DecoderParts`.
        ValidationError: exit layers out of range or order, parts without the Llama anatomy.
    """
    manager = resolve_manager(plugins)
    entry = manager.backbones.entry(backbone)
    params = build_params(entry.component.Params, backbone_params or {}, f"backbone '{backbone}'")
    maker = call_plugin(entry, "__init__", entry.component, params)
    parts = call_plugin(entry, "build", maker.build, source)
    if not isinstance(parts, DecoderParts):
        raise PluginError(
            f"backbone '{backbone}' from plugin '{entry.plugin}' returned "
            f"{type(parts).__name__}, not adaptix.components.DecoderParts: it is not a decoder "
            "LM backbone (use adaptix.build_model for whole-input exits)."
        )
    return DecoderModel(parts, exit_layers, adapters)


def token_trace(
    model: DecoderModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    select: Tensor | None = None,
    labels: str = "final",
) -> Trace:
    """A `Trace` of token exits, teacher-forced at full depth: one row per selected slot.

    Args:
        model: the decoder with exits.
        input_ids: left-padded ``[B, S]`` token ids (rows may end in padding).
        attention_mask: their real slots (bool or 0/1, ``[B, S]``).
        select: bool ``[B, S]``: the slots to keep (default: every real slot followed by a
            real slot, i.e. with a next token).
        labels: ``"final"`` (the full model's greedy token: an exit is right when it agrees
            with the full model: the *consistency* target) or ``"next"`` (the sequence's next
            token: the *accuracy* target).

    Returns:
        A trace with logits ``[N, E, V]`` (float32), labels ``[N]``, and costs = layers run.
    """
    if labels not in ("final", "next"):
        raise ValidationError(f"expected labels 'final' or 'next', got {labels!r}.")
    consistency, accuracy = token_traces(model, input_ids, attention_mask, select)
    return consistency if labels == "final" else accuracy


def token_traces(
    model: DecoderModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    select: Tensor | None = None,
) -> tuple[Trace, Trace]:
    """The two token traces of one teacher-forced pass, sharing their logits: labelled by the
    full model's token (consistency) and by the text's next token (accuracy). Arguments as
    `token_trace`'s."""
    ids, mask, select = _token_slots(model, input_ids, attention_mask, select)
    logits = model.token_logits(ids, mask)[select].float()
    final = logits[:, -1].argmax(-1)
    nexts = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)[select]
    costs = torch.tensor([layer + 1.0 for layer in model.exit_layers], dtype=torch.float64)
    return Trace(logits, final, costs), Trace(logits, nexts, costs)


def _token_slots(
    model: DecoderModel, input_ids: Tensor, attention_mask: Tensor, select: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """The checked ids and mask, and the slots a token trace keeps (default: every real slot
    with a next token; a given ``select`` may keep no slot without one)."""
    ids, mask = model.check_tokens(input_ids, attention_mask, trailing=True)
    has_next = mask & torch.cat([mask[:, 1:], torch.zeros_like(mask[:, :1])], dim=1)
    if select is None:
        return ids, mask, has_next
    if not isinstance(select, Tensor) or select.shape != mask.shape:
        raise ValidationError(
            f"expected select as a bool tensor of shape {tuple(mask.shape)}, got "
            f"{_describe(select)}."
        )
    select = select.bool()
    if bool((select & ~has_next).any()):
        raise ValidationError(
            "select keeps a slot with no next token (padding, or a row's last token): "
            "its next-token label does not exist."
        )
    return ids, mask, select


@torch.no_grad()
def compact_token_traces(
    model: DecoderModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    select: Tensor | None = None,
    *,
    scale: float = 1.0,
    batch_size: int = 8,
    progress: bool = False,
) -> tuple[Trace, Trace]:
    """`token_traces` with memory that does not grow with the vocabulary, for large LMs.

    A row of a full token trace holds E × V logits (49,152 wide for SmolLM2). Here each row's
    classes are its *candidates*, the distinct tokens that are some exit's prediction or one of
    its two labels (the full model's token, the next token), with their exact logits, plus M
    *rest* classes that share equally, at each exit, the probability of every other token. M is
    chosen so that every rest class is below the row's top probability at every exit, so the
    predictions, the top probabilities (confidence), the right/wrong of each exit under both
    labels, and with them every criterion that reads only those (``confidence``,
    ``patience``, ``pcee``, ``pcee_ws``, ``pcee_lcb``, `adaptix.calibrate`,
    `adaptix.guarantee`) are exactly those of the full trace. Entropy is **not** kept (the rest
    classes flatten the tail): use `token_traces` for ``entropy``. Logits are multiplied by
    ``scale`` before reducing (the study's overconfidence stress needs the full logits, so
    each scale is its own compact trace; study them with ``scales=(1.0,)``). A calibration
    counted on them records their class count: `vocabulary_calibration` gives the same tables
    for the model, to run in the generator.

    Rows are computed ``batch_size`` sequences at a time (``progress``: a progress bar over
    them); arguments otherwise as
    `token_traces`'s. The class layout (K, M) depends on the rows: traces to be joined or
    compared (a study's calibration and test texts) come from one call, then `Trace.subset`.

    Returns:
        (consistency, accuracy) traces with logits ``[N, E, K + M]``, K the most candidates of
        a row (an unused candidate class has logit -1e30: no probability).
    """
    ids, mask, select = _token_slots(model, input_ids, attention_mask, select)
    nexts_all = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)
    parts: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []
    starts = range(0, ids.shape[0], batch_size)
    bar = tqdm(starts, desc=f"token traces (x{scale:g})", unit="batch", disable=not progress)
    for start in bar:
        rows = slice(start, start + batch_size)
        chosen = select[rows]
        if not bool(chosen.any()):
            continue
        logits = model.token_logits(ids[rows], mask[rows])[chosen].float() * scale  # [n, E, V]
        final = logits[:, -1].argmax(-1)
        nexts = nexts_all[rows][chosen]
        candidates = torch.cat([final[:, None], nexts[:, None], logits.argmax(-1)], dim=1)
        parts.append((*_reduce(logits, candidates), final, nexts))
    if not parts:
        raise ValidationError("select keeps no slot: the traces would be empty.")
    width = max(p[0].shape[2] for p in parts)
    rest = max(p[1] for p in parts)
    reduced = torch.cat([_widen(p[0], p[1], width, int(rest)) for p in parts]).float()
    # an unused candidate or an empty rest holds no probability: a finite stand-in for -inf
    # (traces refuse infinities; exp(-1e30 - top) is exactly 0, also under the study's scales)
    reduced = torch.nan_to_num(reduced, neginf=_NO_MASS)
    finals = torch.cat([p[2] for p in parts])
    nexts = torch.cat([p[3] for p in parts])
    # labels as class indices: the full model's token is candidate 0, the next token 1
    consistency_labels = torch.zeros(finals.shape, dtype=torch.long)
    accuracy_labels = torch.where(nexts == finals, 0, 1)
    costs = torch.tensor([layer + 1.0 for layer in model.exit_layers], dtype=torch.float64)
    meta = {"compact": "candidates+rest", "scale": f"{scale:g}"}
    return (
        Trace(reduced, consistency_labels, costs, meta=meta),
        Trace(reduced.clone(), accuracy_labels, costs, meta=meta),
    )


_NO_MASS = -1e30


def vocabulary_calibration(calibration: Calibration, model: DecoderModel) -> Calibration:
    """A calibration counted on `compact_token_traces` of ``model``, for the model itself.

    Compact traces have their own class count (candidates and rest classes), which a
    calibration counted on them records; the counts are those of the full traces, so the same
    tables serve the model, whose classes are its vocabulary. Raises a `ValidationError` when
    the calibration is for another number of exits.
    """
    if not isinstance(calibration, Calibration):
        raise ValidationError(f"expected an adaptix.Calibration, got {_describe(calibration)}.")
    if calibration.num_exits != model.num_exits:
        raise ValidationError(
            f"expected a calibration of the decoder's {model.num_exits} exits, got one of "
            f"{calibration.num_exits}."
        )
    return Calibration(
        calibration.counts,
        calibration.correct,
        model.parts.vocab_size,
        confidence_sum=calibration.confidence_sum,
        edges=calibration.edges,
        method=calibration.method,
        meta=calibration.meta,
    )


def _reduce(logits: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
    """Candidate logits ``[n, E, K]`` (duplicates -inf; candidate 0 the full model's token,
    1 the next token unless equal to it) and each row's rest mass in log space, with the M
    that keeps every rest class below the top probability."""
    n, exits, _ = logits.shape
    k = candidates.shape[1]
    # one class per distinct token, in order of first appearance
    first = torch.ones(n, k, dtype=torch.bool)
    for j in range(1, k):
        first[:, j] = (candidates[:, :j] != candidates[:, j : j + 1]).all(1)
    picked = logits.gather(2, candidates.unsqueeze(1).expand(n, exits, k))  # [n, E, K]
    picked = torch.where(first.unsqueeze(1), picked, torch.full_like(picked, float("-inf")))
    total = torch.logsumexp(logits, dim=2)  # [n, E]
    kept = torch.logsumexp(picked, dim=2)
    rest = total + torch.log1p(-torch.exp(kept - total).clamp(max=1.0))  # log of the rest mass
    top = logits.max(2).values
    # M rest classes of mass rest/M each stay below the top class: M > rest / top
    needed = torch.exp(rest - top).max() if rest.numel() else torch.tensor(0.0)
    m = int(torch.floor(needed).item()) + 1 if torch.isfinite(needed) else 1
    return torch.cat([picked, rest.unsqueeze(2)], dim=2), torch.tensor(m)


def _widen(block: Tensor, m: Tensor, width: int, rest_classes: int) -> Tensor:
    """A batch's ``[n, E, K_b + 1]`` (candidates, log rest mass) as ``[n, E, width - 1 +
    rest_classes]``: candidates padded with -inf, the rest mass split into equal classes."""
    candidates, rest = block[..., :-1], block[..., -1:]
    pad = width - 1 - candidates.shape[2]
    if pad:
        candidates = torch.cat(
            [
                candidates,
                torch.full((*candidates.shape[:2], pad), float("-inf"), dtype=block.dtype),
            ],
            dim=2,
        )
    share = rest - torch.log(torch.tensor(float(rest_classes), dtype=block.dtype))
    return torch.cat([candidates, share.expand(*share.shape[:2], rest_classes)], dim=2)


def _exit_layers(exit_layers: Sequence[int], layers: int) -> tuple[int, ...]:
    """The exit layers, checked, with the last layer appended if missing."""
    try:
        chosen = [int(layer) for layer in exit_layers]
    except (TypeError, ValueError):
        raise ValidationError(
            f"expected exit layers as a sequence of integers, got {exit_layers!r}."
        ) from None
    if any(isinstance(layer, bool) for layer in exit_layers):
        raise ValidationError(f"expected exit layers as integers, got {exit_layers!r}.")
    bad = [layer for layer in chosen if not 0 <= layer < layers]
    if bad:
        raise ValidationError(
            f"exit layer {bad[0]} is out of range: the decoder has {layers} layers "
            f"(0..{layers - 1})."
        )
    if any(b <= a for a, b in pairwise(chosen)):
        raise ValidationError(f"expected increasing exit layers, got {chosen}.")
    if not chosen or chosen[-1] != layers - 1:
        chosen.append(layers - 1)
    return tuple(chosen)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


__all__ = [
    "DecoderModel",
    "KVCache",
    "attend",
    "build_decoder",
    "check_parts",
    "compact_token_traces",
    "exit_key_value",
    "token_trace",
    "token_traces",
    "vocabulary_calibration",
]
