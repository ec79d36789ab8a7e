"""The abstract interfaces a plugin implements: exit criterion, calibrator, exit head, backbone,
KV strategy.

A plugin registers component *classes* (through the hooks in `adaptix.hookspecs`); adaptix
instantiates them with validated parameters once, when a component is resolved, and then calls
plain methods on the hot path. Each component class owns a pydantic model of its parameters.
"""

from __future__ import annotations

import reprlib
import types
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator
from pydantic import ValidationError as PydanticValidationError
from torch import Tensor, nn

from adaptix._frozen import FrozenModel, describe_problem
from adaptix.errors import CalibrationError, ValidationError
from adaptix.scalars import flag, integer, real, unit

if TYPE_CHECKING:
    from adaptix.core.calibration import Calibration
    from adaptix.core.trace import Trace
    from adaptix.kernels.types import ExitKind


class ParamsModel(FrozenModel):
    """Base of every component's parameter model: frozen, unknown keys rejected, and numbers
    read by adaptix's one rule (`adaptix.scalars`), not pydantic's lax coercion.

    A field declared ``int`` refuses a bool, a float (even ``3.0``) and a string; ``float``
    refuses a bool, a string and NaN; ``bool`` refuses 0/1 and ``"true"``; numpy scalars and
    0-d arrays are accepted as numbers. The same holds inside ``X | None`` and in the items of
    ``tuple[X, ...]`` and ``list[X]``. Fields of any other type are validated by pydantic alone,
    so a plugin's own types and validators are untouched.
    """

    @field_validator("*", mode="before")
    @classmethod
    def _one_rule_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        name = info.field_name or "value"
        field = cls.model_fields.get(name)
        check = None if field is None else _number_rule(field.annotation)
        return value if check is None else check(value, name)


class NoParams(ParamsModel):
    """For components without parameters."""


_Check = Callable[[Any, str], Any]
_NUMBERS: dict[Any, _Check] = {
    int: integer,
    float: lambda value, name: real(value, name, finite=False),  # pydantic's float admits inf
    bool: flag,
}


def _number_rule(annotation: Any) -> _Check | None:
    """The `adaptix.scalars` check of a field declared with ``annotation`` (None: the field holds
    no number, or not only numbers, and pydantic alone validates it)."""
    if get_origin(annotation) is Annotated:
        return _number_rule(get_args(annotation)[0])
    if annotation in _NUMBERS:
        return _NUMBERS[annotation]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        kinds = [arg for arg in args if arg is not type(None)]
        if len(kinds) != 1:
            return None  # e.g. int | str: a string may be meant
        inner = _number_rule(kinds[0])
        if inner is None:
            return None
        return lambda value, name: None if value is None else inner(value, name)
    homogeneous = origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis)
    item = _number_rule(args[0]) if homogeneous else None
    if item is None:
        return None

    def items(value: Any, name: str) -> Any:
        if not isinstance(value, (list, tuple)):
            return value  # not a sequence: pydantic says so, or a plugin's own validator reads it
        return type(value)(item(v, f"{name}[{i}]") for i, v in enumerate(value))

    return items


def params_items(params: ParamsModel) -> tuple[tuple[str, Any], ...]:
    """Parameters as saved files record them: ``model_dump(mode="json")`` items, sorted."""
    return tuple(sorted(params.model_dump(mode="json").items()))


def build_params(model: type[ParamsModel], params: Mapping[str, Any], owner: str) -> ParamsModel:
    """Validate ``params`` against ``model``; errors name the component and the dotted path.

    Raises:
        ValidationError: ``params`` is not a mapping with string keys, or does not validate.
    """
    accepted = sorted(model.model_fields) or "none"
    if not isinstance(params, Mapping) or not all(isinstance(key, str) for key in params):
        got = (
            f"the keys {reprlib.repr([key for key in params if not isinstance(key, str)])}"
            if isinstance(params, Mapping)
            else f"{type(params).__name__} {reprlib.repr(params)}"
        )
        raise ValidationError(
            f"expected the parameters of {owner} as a mapping of parameter names (str) to "
            f"values, got {got}. Pass a dict such as {{'name': value}}; accepted parameters: "
            f"{accepted}."
        )
    try:
        return model(**params)
    except PydanticValidationError as err:
        problems = "; ".join(describe_problem(owner, e) for e in err.errors())
        raise ValidationError(
            f"invalid parameters for {owner}: {problems}. Accepted parameters: {accepted}."
        ) from err


class Component(ABC):
    """What every component class declares.

    Attributes:
        name: the registry name users pass (``policy("pcee", ...)``); unique per kind.
        Params: pydantic model of the component's parameters.
        description: one line for ``adaptix plugins``.
    """

    name: ClassVar[str]
    Params: ClassVar[type[ParamsModel]] = NoParams
    description: ClassVar[str] = ""

    def __init__(self, params: ParamsModel) -> None:
        self.params = params


# --------------------------------------------------------------------------------- criteria


Direction = Literal["ge", "le"]


@dataclass(frozen=True)
class AccuracyReading:
    """What a criterion's threshold means for an accuracy target δ (``PCEE.md``: control).

    A criterion declares one as `ExitCriterion.accuracy_reading`. The main job's threshold grids
    and control tables, `adaptix.offline.control.control_summary`, the ``shortfall`` that
    `adaptix.tracking.log_frontier` logs and the report all read it there, never a list of
    names, so a third-party criterion joins them by declaring its reading.

    Attributes:
        is_target: True when the threshold *is* the accuracy target, which the rule is built to
            deliver (``pcee``: calibrated bin accuracy ≥ δ); False when setting it from δ is only
            the literal reading a user would try (``confidence`` at τ = δ), the naive baseline
            that calibrated rules are judged against.
        complement: the threshold for δ is 1 − δ instead of δ, for scores where lower means
            surer (``entropy``).

    For another mapping, subclass and override `threshold` and `target`, keeping them inverse.
    """

    is_target: bool = False
    complement: bool = False

    def threshold(self, delta: float) -> float:
        """The threshold that reads as target δ (1 − δ rounded to 12 places: 1 − 0.9 is 0.1).

        Raises:
            ValidationError: δ is not a number in [0, 1].
        """
        value = unit(delta, "an accuracy target δ", open_low=False, open_high=False)
        return round(1.0 - value, 12) if self.complement else value

    def target(self, threshold: float) -> float:
        """The target δ that ``threshold`` reads as: the inverse of `threshold`."""
        return round(1.0 - threshold, 12) if self.complement else threshold


class ExitCriterion(Component):
    """An exit rule: a per-exit score compared against a threshold.

    An input exits at the first exit e in 0..E-2 whose score fires (``score >= threshold`` when
    `direction` is ``"ge"``, ``score <= threshold`` when ``"le"``), else at exit E-1. Framing
    every criterion as a score makes thresholds monotone by construction (a stricter threshold
    never makes an input exit earlier) and lets `adaptix.sweep` evaluate many thresholds at once.
    Comparisons are exact: the score is compared to the threshold in float64.

    Subclasses implement `score`; stateful criteria (patience) also override `start` and
    `select_state`. Instances are immutable after construction and safe to share.

    Attributes:
        direction: ``"ge"`` (higher scores exit, e.g. confidence) or ``"le"`` (lower scores
            exit, e.g. entropy).
        needs_calibration: whether the criterion reads a `Calibration`.
        fused_kind: the fused exit-decision kernel this criterion can use on GPU (None: none).
        accuracy_reading: how a threshold reads as an accuracy target δ (`AccuracyReading`);
            None when it has no such reading (patience counts exits): the criterion is then
            swept and compared on cost, but has no control metrics.
    """

    direction: ClassVar[Direction] = "ge"
    needs_calibration: ClassVar[bool] = False
    fused_kind: ClassVar[ExitKind | None] = None
    accuracy_reading: ClassVar[AccuracyReading | None] = None

    def __init__(self, params: ParamsModel, calibration: Calibration | None = None) -> None:
        if self.needs_calibration and calibration is None:
            raise CalibrationError(
                f"criterion '{self.name}' needs a calibration, got none. Build one with "
                "adaptix.calibrate(calibration_trace) and pass calibration=..."
            )
        super().__init__(params)
        self.calibration = calibration

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        """Check and normalise a threshold; the default accepts real numbers in [0, 1].

        Override for other ranges (a third-party criterion's threshold need not lie in [0, 1]).
        """
        value = _real(threshold, cls.name)
        if not 0.0 <= value <= 1.0:
            raise ValidationError(
                f"criterion '{cls.name}' expects a threshold in [0, 1], got {threshold!r}."
            )
        return value

    @classmethod
    def default_thresholds(cls, count: int = 50) -> list[float]:
        """A grid for sweeps when the user gives none (default: ``count`` points in [0, 1])."""
        return torch.linspace(0.0, 1.0, count, dtype=torch.float64).tolist()

    def check_threshold(self, threshold: float) -> None:
        """Raise `ValidationError` unless this instance (its parameters and calibration) may
        decide at ``threshold``, already checked by `validate_threshold`.

        Every valid threshold by default; a criterion reading a survivor calibration accepts
        only the δ it was made for (`adaptix.core.calibration.SurvivorRule`).
        """

    @classmethod
    def bin_table(cls, params: ParamsModel, counts: Tensor, correct: Tensor) -> Tensor | None:
        """For a criterion whose score is a table of its calibration's bins: that table from
        the counts, else None (the default).

        A criterion that returns one scores an input at exit e by the table's entry for its
        confidence bin and fires where the entry is ≥ the threshold (``fused_kind`` "table",
        `fused_table` reads it); `adaptix.offline.survivors` reads it to decide, exit by exit, which
        calibration inputs the criterion lets leave.

        Args:
            params: the criterion's validated parameters.
            counts: n, int64 ``[..., E, M]`` (a calibration's tables, or a stack of them).
            correct: k, of the same shape.

        Returns:
            float64 ``[..., E, M]``, NaN where the bin's entry is undefined (never fires), or
            None.
        """
        return None

    def check_model(self, num_exits: int, num_classes: int) -> None:
        """Raise unless this criterion (and its calibration) fits a model of that shape."""
        if self.calibration is not None:
            self.calibration.check_compatible(num_exits, num_classes)

    def start(self, batch_size: int, device: torch.device) -> Any:
        """Per-batch state before exit 0 (None for stateless criteria)."""
        return None

    @abstractmethod
    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        """Score the rows that reached exit ``exit_index``.

        Args:
            logits: ``[n, C]`` logits of the rows still active at this exit.
            exit_index: e, the exit being decided.
            state: the state returned for these same rows at the previous exit (or `start`).

        Returns:
            A float ``[n]`` score per row, and the state to carry to exit e + 1.
        """

    def select_state(self, state: Any, keep: Tensor) -> Any:
        """The state of the rows in ``keep`` (an index tensor): rows that exit leave the batch."""
        return state

    def fused_table(self, exit_index: int) -> Tensor | None:
        """For ``fused_kind == "table"``: exit e's bin accuracies (float64 ``[M]``, NaN where
        undefined), which the fused kernel looks up; None for other kinds. The table is indexed
        by the bins of the criterion's calibration (`Calibration.bin_index`, edges
        ``calibration.edges[e]``), or by M equal-width bins when it has none."""
        return None

    def scores(self, logits: Tensor) -> Tensor:
        """Scores of every exit for stored logits ``[N, E, C]``: ``[N, E]``, stacked as `score`
        returns them, not cast (`adaptix.ExitPolicy.scores` refuses a complex or bool score,
        which a cast would hide, and compares the others in float64)."""
        n, num_exits, _ = logits.shape
        state = self.start(n, logits.device)
        columns = []
        for e in range(num_exits):
            value, state = self.score(logits[:, e], e, state)
            columns.append(value)
        return torch.stack(columns, dim=1)


# ------------------------------------------------------------------------------ calibrators


class Calibrator(Component):
    """Turns a labelled trace of held-out data into a `Calibration`.

    A calibrator whose bin edges depend on the data (``equal_mass``) accepts a parameter
    ``edges`` (``[E, M + 1]``) that counts with given edges instead of fitting them, so that
    the calibrations of shards, counted with the same edges, merge by addition
    (`adaptix.core.calibration.count_bins` does the counting).
    """

    @abstractmethod
    def fit(self, trace: Trace, bins: int) -> Calibration:
        """Count, per exit and confidence bin, the inputs and the correct predictions."""


# ------------------------------------------------------------------------------- exit heads


class ExitHead(Component):
    """Builds the classifier attached after a block."""

    @abstractmethod
    def build(self, in_features: int, num_classes: int) -> nn.Module:
        """A module mapping features ``[n, in_features]`` to logits ``[n, num_classes]``."""


# -------------------------------------------------------------------------------- backbones


class BackboneParts(BaseModel):
    """A backbone cut into the blocks that exits attach to.

    Attributes:
        blocks: block e maps the state after block e-1 (the input for e = 0) to the state after
            block e; a state is a tensor or a dict/tuple of tensors sharing the batch dimension.
        feature: maps a block's output to the ``[n, d]`` features an exit head reads
            (pooling, the CLS token, ...); identity if None.
        feature_dims: d after each block, if known; otherwise measured on an example input.
        input_shape: the shape of one input (no batch dimension), if fixed.
        example_input: a small batch the backbone accepts (for shape inference and contracts).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True, extra="forbid")

    blocks: nn.ModuleList
    feature: nn.Module | None = None
    feature_dims: tuple[int, ...] | None = None
    input_shape: tuple[int, ...] | None = None
    example_input: Any = None


class Backbone(Component):
    """Adapts a network (or builds one) into `BackboneParts`."""

    @abstractmethod
    def build(self, source: Any = None) -> BackboneParts:
        """Cut ``source`` (or a network this backbone builds itself) into blocks."""


class DecoderParts(BackboneParts):
    """A decoder language model cut into the layers that token exits attach to.

    A causal-LM backbone's `Backbone.build` returns these (a `BackboneParts` whose blocks are
    decoder layers). adaptix runs the layers itself (`adaptix.online.decoder`), so every block
    must have the Llama anatomy shared by Llama, Mistral, Qwen2/3 and SmolLM in transformers:
    ``input_layernorm``, ``self_attn`` with ``q_proj``, ``k_proj``, ``v_proj``, ``o_proj`` (and
    optionally ``q_norm``/``k_norm`` on each head), ``post_attention_layernorm`` and ``mlp``;
    a block maps ``h`` to ``h + attn(norm(h))`` then ``h + mlp(norm(h))``. A model of another
    anatomy is adapted by wrapping its modules under these names.

    Attributes:
        embed: token ids ``[..]`` to hidden states ``[.., d]``.
        norm: the final norm, applied before the LM head at every exit.
        lm_head: hidden states ``[n, d]`` to logits ``[n, V]``.
        rotary: ``rotary(x, position_ids) -> (cos, sin)``, the model's rotary embedding.
        num_heads, num_kv_heads, head_dim: the attention's geometry.
        attention_scale: the factor on ``q · k`` (usually ``head_dim ** -0.5``).
        vocab_size: V.
        eos_token_id: the model's end-of-sequence token(s), if known.
        sliding_window: for a model whose attention reaches only this many previous tokens:
            adaptix runs full attention, so it refuses longer sequences (None: no window).
        max_positions: the longest sequence the model was made for (prompt and new tokens),
            if known: longer ones are refused.
    """

    embed: nn.Module
    norm: nn.Module
    lm_head: nn.Module
    rotary: nn.Module
    num_heads: int
    num_kv_heads: int
    head_dim: int
    attention_scale: float
    vocab_size: int
    eos_token_id: tuple[int, ...] = ()
    sliding_window: int | None = None
    max_positions: int | None = None


# ------------------------------------------------------------------------------ KV strategies


class KVStrategy(Component):
    """What a decoder's KV cache holds at the layers a token skipped when it exited early.

    A token that exits after layer l has keys and values at layers 0..l only; later tokens
    attend to it at every layer. Either the skipped layers run later (``defers``), or `fill`
    gives keys and values for some of them right away; a skipped layer it leaves out stays
    empty and later tokens do not attend to this token there. The generator
    (`adaptix.online.generate`) checks what `fill` returns (layers, shapes, dtype, finite
    values) and writes it: a strategy never touches the cache itself.

    Built in: ``deferred`` (exact: the skipped layers of an exited token run at its row's next
    step, batched with the next token, so the cache equals the full model's) and ``copy``
    (CALM: the exit's hidden state stands in for the skipped layers' inputs).

    Attributes:
        exact: whether the cache ends equal to the full model's on the same tokens (the
            contract check compares them).
        defers: the generator runs the skipped layers later instead of calling `fill`.
    """

    exact: ClassVar[bool] = False
    defers: ClassVar[bool] = False

    def fill(
        self, parts: DecoderParts, exit_layer: int, hidden: Tensor, positions: Tensor
    ) -> Mapping[int, tuple[Tensor, Tensor]]:
        """Keys and values, at layers after ``exit_layer``, of tokens that exited there.

        Args:
            parts: the decoder (its layers' projections, its rotary embedding).
            exit_layer: l, the last layer the tokens ran.
            hidden: ``[n, d]`` their hidden states after layer l.
            positions: ``[n]`` their rotary positions (int64).

        Returns:
            ``{layer: (keys, values)}`` for layers in l+1..L-1, each ``[n, num_kv_heads,
            head_dim]`` in the hidden states' dtype, keys with the rotary embedding applied;
            a layer left out stays empty for these tokens. The default fills nothing.
        """
        return {}


def _real(value: object, owner: str) -> float:
    """A threshold as a float by the rule of `adaptix.scalars` (infinities are left to the range
    check), refused in the words sweeps and policies have always used."""
    try:
        return real(value, "threshold", finite=False)
    except ValidationError:
        if isinstance(value, (float, np.floating)) and np.isnan(value):
            raise ValidationError(
                f"criterion '{owner}' expects a real threshold, got a NaN threshold."
            ) from None
        raise ValidationError(
            f"criterion '{owner}' expects a real threshold, got {reprlib.repr(value)} "
            f"({type(value).__name__})."
        ) from None


def integer_threshold(value: object, owner: str, minimum: int = 1) -> float:
    """Validate an integer-valued threshold (e.g. patience) given as int or integral float.

    A threshold is a real number everywhere (grids, sweeps, saved policies hold floats), so an
    integral float such as ``2.0`` is accepted here, unlike for a count."""
    result = _real(value, owner)
    if not result.is_integer() or result < minimum:
        raise ValidationError(
            f"criterion '{owner}' expects an integer threshold >= {minimum}, got {value!r}."
        )
    return result


__all__: Sequence[str] = (
    "AccuracyReading",
    "Backbone",
    "BackboneParts",
    "Calibrator",
    "Component",
    "DecoderParts",
    "Direction",
    "ExitCriterion",
    "ExitHead",
    "KVStrategy",
    "NoParams",
    "ParamsModel",
    "build_params",
    "integer_threshold",
    "params_items",
)
