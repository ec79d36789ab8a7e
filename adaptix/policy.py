"""`ExitPolicy`: a resolved criterion (with its parameters and calibration) and a threshold."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import Tensor

from adaptix.components import ExitCriterion, build_params
from adaptix.errors import AdaptixError, ValidationError
from adaptix.plugins import AdaptixPluginManager, Entry, call_plugin, resolve_manager

if TYPE_CHECKING:
    from adaptix.calibration import Calibration


class ExitPolicy:
    """When to exit: ``criterion`` fires at a threshold.

    Build it with `adaptix.policy`. Policies are immutable; `with_threshold` gives a sibling.

    Attributes:
        criterion: the criterion instance (parameters and calibration bound).
        threshold: the validated threshold.
        entry: the registry entry (name, provider) the criterion came from.
    """

    __slots__ = ("criterion", "entry", "threshold")

    def __init__(self, criterion: ExitCriterion, threshold: float, entry: Entry[Any]) -> None:
        self.criterion = criterion
        self.entry = entry
        self.threshold = call_plugin(
            entry, "validate_threshold", type(criterion).validate_threshold, threshold
        )

    @property
    def name(self) -> str:
        """The criterion's registry name."""
        return self.entry.name

    @property
    def calibration(self) -> Calibration | None:
        """The calibration the criterion reads, if any."""
        return self.criterion.calibration

    def with_threshold(self, threshold: float) -> ExitPolicy:
        """The same criterion at another threshold (validated)."""
        return ExitPolicy(self.criterion, threshold, self.entry)

    def fires(self, score: Tensor) -> Tensor:
        """Boolean mask: where ``score`` (compared exactly, in float64) triggers an exit."""
        return fires(score, self.threshold, self.criterion.direction)

    def check_model(self, num_exits: int, num_classes: int) -> None:
        """Raise `AdaptixError` unless this policy fits a model with that many exits/classes."""
        call_plugin(self.entry, "check_model", self.criterion.check_model, num_exits, num_classes)

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        """The criterion's score for the rows at one exit (plugin errors are chained)."""
        return call_plugin(self.entry, "score", self.criterion.score, logits, exit_index, state)

    def scores(self, logits: Tensor) -> Tensor:
        """Scores of every exit for stored logits ``[N, E, C]``, checked: float64 ``[N, E]``."""
        values = call_plugin(self.entry, "scores", self.criterion.scores, logits)
        expected = tuple(logits.shape[:2])
        if not isinstance(values, Tensor) or tuple(values.shape) != expected:
            got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise AdaptixError(
                f"criterion '{self.name}' from plugin '{self.entry.plugin}' returned scores "
                f"{got}, expected a tensor of shape {expected}."
            )
        return values.double()

    def __repr__(self) -> str:
        params = self.criterion.params.model_dump()
        extra = f", {params}" if params else ""
        calibrated = ", calibrated" if self.calibration is not None else ""
        return f"ExitPolicy({self.name!r}, threshold={self.threshold}{extra}{calibrated})"


def fires(score: Tensor, threshold: float, direction: str) -> Tensor:
    """``score >= threshold`` ("ge") or ``<=`` ("le"), exact in float64; NaN never fires."""
    value = score.double()
    return value >= threshold if direction == "ge" else value <= threshold


def policy(
    name: str,
    threshold: float,
    calibration: Calibration | None = None,
    *,
    plugins: AdaptixPluginManager | None = None,
    **params: Any,
) -> ExitPolicy:
    """Resolve a registered criterion into an `ExitPolicy`.

    Args:
        name: any registered criterion, built-in (``confidence``, ``entropy``, ``patience``,
            ``pcee``, ``pcee_ws``) or from a plugin.
        threshold: validated by the criterion itself (built-ins: [0, 1]; patience: integer >= 1).
        calibration: required by criteria that read one (``pcee``, ``pcee_ws``).
        plugins: the plugin manager to resolve ``name`` with (default: a fresh one).
        **params: the criterion's own parameters (e.g. ``window=2`` for ``pcee_ws``).

    Raises:
        PluginError: unknown criterion (the message lists the available ones).
        ValidationError: threshold or parameters out of range.
        CalibrationError: a calibration is needed and missing.
    """
    if not isinstance(name, str):
        raise ValidationError(f"expected a criterion name (str), got {name!r}.")
    manager = resolve_manager(plugins)
    entry = manager.criteria.entry(name)
    built = build_params(entry.component.Params, params, f"criterion '{name}'")
    criterion = call_plugin(entry, "__init__", entry.component, built, calibration)
    return ExitPolicy(criterion, threshold, entry)
