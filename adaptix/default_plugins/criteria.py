"""Built-in exit criteria: ``confidence``, ``entropy``, ``patience``, ``pcee``, ``pcee_ws``.

Each implements exactly the rule of ``PCEE.md``; see `adaptix.components.ExitCriterion` for how
a score and a threshold make an exit decision.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from adaptix.calibration import Calibration
from adaptix.components import (
    Direction,
    ExitCriterion,
    FusedKind,
    ParamsModel,
    integer_threshold,
)
from adaptix.hookspecs import hookimpl
from adaptix.plugins import Registrar
from adaptix.scores import bin_index, confidence_and_prediction, normalized_entropy, prediction


class Confidence(ExitCriterion):
    """Exit when the top softmax probability c_e >= τ."""

    name = "confidence"
    description = "max softmax probability >= τ"
    fused_kind: ClassVar[FusedKind | None] = "confidence"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return confidence_and_prediction(logits)[0], state


class Entropy(ExitCriterion):
    """Exit when the normalised entropy h_e <= τ."""

    name = "entropy"
    description = "normalised softmax entropy <= τ"
    direction: ClassVar[Direction] = "le"
    fused_kind: ClassVar[FusedKind | None] = "entropy"

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return normalized_entropy(logits), state


class Patience(ExitCriterion):
    """PABEE: exit when the prediction has stayed the same for t consecutive exits.

    k_0 = 0 and k_e = k_{e-1} + 1 if y_e = y_{e-1}, else 0; fires when k_e >= t (t >= 1).
    The state carried between exits is (previous prediction, k).
    """

    name = "patience"
    description = "prediction unchanged for t consecutive exits (PABEE)"

    @classmethod
    def validate_threshold(cls, threshold: float) -> float:
        return integer_threshold(threshold, cls.name, minimum=1)

    @classmethod
    def default_thresholds(cls, count: int = 50) -> list[float]:
        return [float(t) for t in range(1, max(count, 1) + 1)]

    def start(self, batch_size: int, device: torch.device) -> Any:
        return None

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        predicted = prediction(logits)
        if state is None:
            streak = torch.zeros_like(predicted)
        else:
            previous, previous_streak = state
            streak = torch.where(predicted == previous, previous_streak + 1, 0)
        return streak.float(), (predicted, streak)

    def select_state(self, state: Any, keep: Tensor) -> Any:
        if state is None:
            return None
        previous, streak = state
        return previous[keep], streak[keep]


class PCEE(ExitCriterion):
    """Exit when the calibrated accuracy a[e, bin(c_e)] is defined and >= δ."""

    name = "pcee"
    description = "calibrated bin accuracy >= δ (PCEE)"
    needs_calibration = True
    fused_kind: ClassVar[FusedKind | None] = "table"
    window: int = 0

    def __init__(self, params: ParamsModel, calibration: Any = None) -> None:
        super().__init__(params, calibration)
        self.calibration: Calibration = calibration  # not None: checked by super().__init__
        self.accuracy = calibration.accuracy(self._window())
        # Undefined bins (no calibration input) score -inf so that they never fire, even at δ = 0.
        self.table = self.accuracy.nan_to_num(nan=float("-inf"))

    def _window(self) -> int:
        return self.window

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        confidence = confidence_and_prediction(logits)[0]
        row = self.table[exit_index].to(logits.device)
        return row[bin_index(confidence, row.shape[0])], state

    def fused_table(self, exit_index: int) -> Tensor | None:
        return self.accuracy[exit_index]


class PCEEWSParams(ParamsModel):
    """``window``: w, how many neighbouring bins on each side pool into each bin."""

    window: int = Field(default=1, ge=0)


class PCEEWS(PCEE):
    """PCEE with smoothing: exit when the pooled accuracy ã[e, bin(c_e)] is defined and >= δ."""

    name = "pcee_ws"
    description = "bin accuracy pooled with w neighbours >= δ (PCEE-WS)"
    Params = PCEEWSParams
    params: PCEEWSParams

    def _window(self) -> int:
        return self.params.window


@hookimpl
def adaptix_register_criteria(registry: Registrar[ExitCriterion]) -> None:
    """Register the built-in criteria."""
    for criterion in (Confidence, Entropy, Patience, PCEE, PCEEWS):
        registry.add(criterion)
