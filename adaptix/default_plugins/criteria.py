"""Built-in exit criteria: ``confidence``, ``entropy``, ``patience``, ``pcee``, ``pcee_ws``,
``pcee_lcb``.

Each implements exactly the rule of ``PCEE.md``; see `adaptix.components.ExitCriterion` for how
a score and a threshold make an exit decision.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor

from adaptix.bounds import clopper_pearson_lower
from adaptix.calibration import Calibration
from adaptix.components import (
    AccuracyReading,
    Direction,
    ExitCriterion,
    ParamsModel,
    integer_threshold,
)
from adaptix.hookspecs import hookimpl
from adaptix.kernels import ExitKind
from adaptix.plugins import Registrar
from adaptix.scores import confidence_and_prediction, normalized_entropy, prediction


class Confidence(ExitCriterion):
    """Exit when the top softmax probability c_e >= τ."""

    name = "confidence"
    description = "max softmax probability >= τ"
    fused_kind: ClassVar[ExitKind | None] = "confidence"
    accuracy_reading: ClassVar[AccuracyReading | None] = AccuracyReading()  # naive: τ = δ

    @classmethod
    def default_thresholds(cls, count: int = 50) -> list[float]:
        """``count`` thresholds, half of them spread over [0, 1), half crowding towards 1.

        Late exits put most inputs above 0.99, where τ = 0.999 and τ = 0.9999 are different
        policies: a linear grid cannot tell them apart (`adaptix.guarantee` picks from here).
        """
        return _towards_certainty(count)

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        return confidence_and_prediction(logits)[0], state


class Entropy(ExitCriterion):
    """Exit when the normalised entropy h_e <= τ."""

    name = "entropy"
    description = "normalised softmax entropy <= τ"
    direction: ClassVar[Direction] = "le"
    fused_kind: ClassVar[ExitKind | None] = "entropy"
    accuracy_reading: ClassVar[AccuracyReading | None] = AccuracyReading(complement=True)

    @classmethod
    def default_thresholds(cls, count: int = 50) -> list[float]:
        """``count`` thresholds, half spread over (0, 1], half crowding towards 0 (certainty)."""
        return sorted(round(1.0 - t, 15) for t in _towards_certainty(count))

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
    fused_kind: ClassVar[ExitKind | None] = "table"
    accuracy_reading: ClassVar[AccuracyReading | None] = AccuracyReading(is_target=True)
    window: int = 0

    def __init__(self, params: ParamsModel, calibration: Any = None) -> None:
        super().__init__(params, calibration)
        self.calibration: Calibration = calibration  # not None: checked by super().__init__
        self.accuracy = self._bin_accuracy(calibration)
        # Undefined bins (no calibration input) score -inf so that they never fire, even at δ = 0;
        # bin M, where `Calibration.bin_index` puts NaN confidences, scores NaN: never fires.
        undefined = torch.full((self.accuracy.shape[0], 1), float("nan"), dtype=torch.float64)
        self.table = torch.cat([self.accuracy.nan_to_num(nan=float("-inf")), undefined], dim=1)

    def _window(self) -> int:
        return self.window

    def _bin_accuracy(self, calibration: Calibration) -> Tensor:
        """The accuracy each bin is compared with δ: float64 ``[E, M]``, NaN where undefined."""
        return calibration.accuracy(self._window())

    def score(self, logits: Tensor, exit_index: int, state: Any) -> tuple[Tensor, Any]:
        confidence = confidence_and_prediction(logits)[0]
        row = self.table[exit_index].to(logits.device)
        return row[self.calibration.bin_index(confidence, exit_index)], state

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


class PCEELCBParams(ParamsModel):
    """``alpha``: the level of each bin's bound; ``bonferroni``: split α over all bins."""

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    bonferroni: bool = False


class PCEELCB(PCEE):
    """PCEE with a per-bin guarantee: exit when the one-sided Clopper–Pearson lower bound of
    the bin's accuracy, LCB_α(k[e, m], n[e, m]), is ≥ δ.

    What it guarantees (``PCEE.md``: Guarantees), calibration and deployment data exchangeable:
    for each bin (e, m), the probability over the calibration draw that the bin lets inputs exit
    at δ while its true accuracy is below δ is at most α. A bin's accuracy is that of *all*
    inputs whose exit-e confidence falls in it, as the reliability table counts them. With
    ``bonferroni=True`` each bound is taken at level α / ((E − 1) · M), so that with
    probability ≥ 1 − α no bin of any early exit that lets inputs exit is below δ.

    What it does not guarantee: the early accuracy of the policy. The inputs that reach exit e
    are those that did not leave before, harder than the bin's average, so their accuracy in a
    bin can be below the bin's. Measured on the main job's large model with logits × 2, this
    selection made pcee_lcb miss δ in most random splits (``adaptix study``); for a statement
    about the inputs that actually leave early, use `adaptix.guarantee`. Empty bins never
    fire, as in ``pcee``.
    """

    name = "pcee_lcb"
    description = "Clopper–Pearson lower bound of the bin accuracy >= δ (per-bin guarantee)"
    Params = PCEELCBParams
    params: PCEELCBParams

    def _bin_accuracy(self, calibration: Calibration) -> Tensor:
        level = self.params.alpha
        if self.params.bonferroni:
            level /= max(calibration.num_exits - 1, 1) * calibration.bins
        lower = clopper_pearson_lower(
            calibration.correct.numpy(), calibration.counts.numpy(), level
        )
        return torch.from_numpy(lower).to(torch.float64)


def _towards_certainty(count: int) -> list[float]:
    """``count`` (at least 3) distinct thresholds in [0, 1]: linear in [0, 0.9), then
    1 − 10^-k for k from 1 to 7, log-spaced, and 1 itself."""
    count = max(int(count), 3)
    linear = torch.linspace(0.0, 0.9, count - count // 2 + 1, dtype=torch.float64)[:-1]
    near_one = 1.0 - torch.logspace(-1.0, -7.0, count // 2 - 1, dtype=torch.float64)
    return sorted({*linear.tolist(), *near_one.tolist(), 1.0})


@hookimpl
def adaptix_register_criteria(registry: Registrar[ExitCriterion]) -> None:
    """Register the built-in criteria."""
    for criterion in (Confidence, Entropy, Patience, PCEE, PCEEWS, PCEELCB):
        registry.add(criterion)
