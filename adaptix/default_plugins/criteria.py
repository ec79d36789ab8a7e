"""Built-in exit criteria: ``confidence``, ``entropy``, ``patience``, ``pcee``, ``pcee_ws``,
``pcee_lcb``.

Each implements exactly the rule of ``PCEE.md``; see `adaptix.components.ExitCriterion` for how
a score and a threshold make an exit decision.
"""

from __future__ import annotations

from typing import Any, ClassVar, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from adaptix.components import (
    AccuracyReading,
    Direction,
    ExitCriterion,
    ParamsModel,
    integer_threshold,
    params_items,
)
from adaptix.core.bounds import clopper_pearson_lower
from adaptix.core.calibration import Calibration, SurvivorRule, bin_accuracy
from adaptix.core.scores import confidence_and_prediction, normalized_entropy, prediction
from adaptix.errors import CalibrationError, ValidationError
from adaptix.hookspecs import hookimpl
from adaptix.kernels import ExitKind
from adaptix.kernels.reference import table_passes
from adaptix.plugins import Registrar


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
    """Exit when the calibrated accuracy a[e, bin(c_e)] is defined and >= δ.

    Reads the paper's calibration (`adaptix.calibrate`: a[e, m] over every calibration input)
    or a survivor calibration made for this criterion, its parameters and δ
    (`adaptix.calibrate_survivors`: a[e, m] over the calibration inputs that the rule at δ
    sends on from exits 0 … e − 1); it then decides at that δ only.
    """

    name = "pcee"
    description = "calibrated bin accuracy >= δ (PCEE)"
    needs_calibration = True
    fused_kind: ClassVar[ExitKind | None] = "table"
    accuracy_reading: ClassVar[AccuracyReading | None] = AccuracyReading(is_target=True)

    def __init__(self, params: ParamsModel, calibration: Any = None) -> None:
        super().__init__(params, calibration)
        self.calibration: Calibration = calibration  # not None: checked by super().__init__
        self.accuracy = _table(self, calibration)
        # Undefined bins (no calibration input) score -inf so that they never fire, even at δ = 0;
        # bin M, where `Calibration.bin_index` puts NaN confidences, scores NaN: never fires.
        undefined = torch.full((self.accuracy.shape[0], 1), float("nan"), dtype=torch.float64)
        self.table = torch.cat([self.accuracy.nan_to_num(nan=float("-inf")), undefined], dim=1)
        if calibration.survivors is not None:
            self._check_survivors(calibration.survivors)

    @classmethod
    def bin_table(cls, params: ParamsModel, counts: Tensor, correct: Tensor) -> Tensor | None:
        """a = k / n per bin (``PCEE.md``), NaN where n = 0."""
        return bin_accuracy(counts, correct)

    def _check_survivors(self, rule: SurvivorRule) -> None:
        """`CalibrationError` unless the survivor calibration was made for this criterion with
        these parameters, and its exits count exactly the inputs its rule at δ sends on."""
        own = params_items(self.params)
        if (rule.criterion, rule.params) != (self.name, own):
            raise CalibrationError(
                f"expected a survivor calibration made for criterion '{self.name}' with "
                f"parameters {dict(own)}, got one made for '{rule.criterion}' with "
                f"{dict(rule.params)}: its later exits count the survivors of another rule. "
                f"Make one with adaptix.calibrate_survivors(trace, deltas, '{self.name}', ...)."
            )
        counts = self.calibration.counts
        sent_on = (counts * ~table_passes(self.accuracy, rule.delta)).sum(dim=1)[:-1]
        reached = counts.sum(dim=1)[1:]
        if not torch.equal(sent_on, reached):
            e = int((sent_on != reached).nonzero()[0])
            raise CalibrationError(
                f"expected a survivor calibration whose exit {e + 1} counts the inputs that "
                f"'{self.name}' at δ = {rule.delta} sends on from exit {e}, got "
                f"{int(reached[e])} counted for {int(sent_on[e])} sent on: the tables do not "
                "come from that rule. Make it with adaptix.calibrate_survivors."
            )

    def check_threshold(self, threshold: float) -> None:
        """A survivor calibration's tables hold at its δ only: refuse any other threshold."""
        rule = self.calibration.survivors
        if rule is not None and threshold != rule.delta:
            raise ValidationError(
                f"criterion '{self.name}' reads a survivor calibration made for δ = "
                f"{rule.delta}, got threshold {threshold}: exit e's tables count the inputs "
                "that the rule at that δ sends on, and hold for no other threshold. Use "
                "threshold δ, or take SurvivorCounts.calibration(threshold) from a grid that "
                "holds it."
            )

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
    """PCEE with smoothing: exit when the pooled accuracy ã[e, bin(c_e)] is defined and >= δ.

    Reads the paper's calibration or a survivor calibration made for it, as `PCEE` does.
    """

    name = "pcee_ws"
    description = "bin accuracy pooled with w neighbours >= δ (PCEE-WS)"
    Params = PCEEWSParams
    params: PCEEWSParams

    @classmethod
    def bin_table(cls, params: ParamsModel, counts: Tensor, correct: Tensor) -> Tensor | None:
        """ã = Σ k / Σ n over each bin and its w neighbours on each side, NaN where Σ n = 0."""
        return bin_accuracy(counts, correct, _own_params(cls, params, PCEEWSParams).window)


class PCEELCBParams(ParamsModel):
    """``alpha``: the level of each bin's bound; ``bonferroni``: split α over all bins."""

    alpha: float = Field(default=0.05, gt=0.0, lt=1.0)
    bonferroni: bool = False


class PCEELCB(PCEE):
    """PCEE with a per-bin guarantee: exit when the one-sided Clopper–Pearson lower bound of
    the bin's accuracy, LCB_α(k[e, m], n[e, m]), is ≥ δ.

    What it guarantees (``PCEE.md``: Guarantees), calibration and deployment data exchangeable,
    with ``bonferroni=True`` each bound taken at level α / ((E − 1) · M):

    - On the paper's calibration (`adaptix.calibrate`): for each bin (e, m), the probability
      over the calibration draw that the bin lets inputs exit at δ while its true accuracy is
      below δ is at most α (with ``bonferroni``: with probability ≥ 1 − α, no bin of any early
      exit that lets inputs exit is below δ). A bin's accuracy is that of *all* inputs whose
      exit-e confidence falls in it. This does not bound the early accuracy of the policy: the
      inputs that reach exit e are those that did not leave before, harder than the bin's
      average (measured on the main job's large model with logits × 2: pcee_lcb missed δ in
      most random splits, ``adaptix study``).
    - On a survivor calibration at δ (`adaptix.calibrate_survivors`): the same statement for
      the accuracy of bin (e, m) *among the inputs that reach exit e under the policy*, the
      ones that actually leave there. If every early bin that fires is at least δ accurate
      among those inputs, so is their mixture, the early accuracy: with ``bonferroni`` the
      per-bin mode then bounds the early accuracy too. Exact where the earlier exits' tables
      are independent of the inputs counted at e; here they are counted on the same inputs,
      whose labels chose the survivors through the earlier bins' pass/fail decisions, so the
      statement is approximate (``PCEE.md``: survivor calibration, measured in
      ``tests/test_survivors.py``).

    Empty bins never fire, as in ``pcee``; for a statement that holds exactly about the inputs
    that leave early, use `adaptix.guarantee`.
    """

    name = "pcee_lcb"
    description = "Clopper–Pearson lower bound of the bin accuracy >= δ (per-bin guarantee)"
    Params = PCEELCBParams
    params: PCEELCBParams

    @classmethod
    def bin_table(cls, params: ParamsModel, counts: Tensor, correct: Tensor) -> Tensor | None:
        """LCB_α(k, n) per bin, at α / ((E − 1) · M) with ``bonferroni``; NaN where n = 0."""
        own = _own_params(cls, params, PCEELCBParams)
        level = own.alpha
        if own.bonferroni:
            level /= max(counts.shape[-2] - 1, 1) * counts.shape[-1]
        lower = clopper_pearson_lower(correct.cpu().numpy(), counts.cpu().numpy(), level)
        return torch.from_numpy(lower).to(torch.float64)


_P = TypeVar("_P", bound=ParamsModel)


def _own_params(criterion: type[ExitCriterion], params: ParamsModel, kind: type[_P]) -> _P:
    """``params`` as ``kind``, the criterion's own parameter model, or `ValidationError`."""
    if not isinstance(params, kind):
        raise ValidationError(
            f"expected the parameters of criterion '{criterion.name}' as {kind.__name__}, got "
            f"{type(params).__name__}. Build them with adaptix.components.build_params."
        )
    return params


def _table(criterion: ExitCriterion, calibration: Calibration) -> Tensor:
    """The criterion's table ``[E, M]`` from its calibration's counts (`bin_table`)."""
    table = criterion.bin_table(criterion.params, calibration.counts, calibration.correct)
    if table is None:  # PCEE and its subclasses always return one
        raise TypeError(f"{type(criterion).__qualname__}.bin_table returned None")
    return table


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
