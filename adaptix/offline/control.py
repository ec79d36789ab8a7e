"""How well a criterion controls accuracy, and what scale buys: the metrics of ``PCEE.md``.

Control is judged on held-out test data over a grid of targets δ: violation rate, worst
shortfall, cost against the naive confidence reading (τ = δ), and regret against the hindsight
oracle (the cheapest confidence threshold whose early accuracy reaches δ on the test data).
Each criterion is read at the threshold that its declared `AccuracyReading` gives for δ
(`control_summary`); a rule that picks its policy per δ another way (`adaptix.guarantee`) is
summarised from its per-δ points by the same computation (`summarise_control`).
`distinct_policies` measures how fine the knob is: how many distinct behaviours a grid of δ gives.

The hindsight oracle has one definition, `hindsight_oracle` on the thresholds of `oracle_grid`,
read by the job's control tables and by the study alike.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from adaptix.components import AccuracyReading
from adaptix.core.trace import Trace
from adaptix.errors import ValidationError
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.offline.statistics import (
    CANDIDATES,
    ThresholdCounts,
    count_thresholds,
    default_grid,
)
from adaptix.plugins import AdaptixPluginManager, resolve_manager
from adaptix.scalars import real, unit


@dataclass(frozen=True)
class ControlSummary:
    """Control of one criterion over a δ grid.

    Attributes:
        criterion: the criterion.
        violation_rate: share of δ where early accuracy < δ (δ with no early exit never violate).
        worst_shortfall: the largest δ - early accuracy (0 when never violated).
        worst_shortfall_early_share: share of inputs that left early at that worst δ (a large
            shortfall on a handful of inputs is a small-sample effect, not a calibration bias).
        mean_relative_cost: mean relative cost over the grid.
        mean_cost_vs_confidence: mean over δ of cost(criterion at δ) / cost(confidence at τ=δ).
        mean_regret: mean over δ of cost / hindsight-oracle cost.
        per_delta: δ -> (early accuracy, relative cost, regret).
    """

    criterion: str
    violation_rate: float
    worst_shortfall: float
    worst_shortfall_early_share: float
    mean_relative_cost: float
    mean_cost_vs_confidence: float | None
    mean_regret: float
    per_delta: dict[float, tuple[float | None, float, float]]


def oracle_points(
    confidence_points: Sequence[FrontierPoint], deltas: Sequence[float]
) -> dict[float, FrontierPoint | None]:
    """The hindsight oracle at each δ: the cheapest confidence threshold with early accuracy ≥ δ.

    ``confidence_points`` should be a dense sweep of ``confidence`` on the test trace itself.
    Where no threshold reaches δ the oracle exits nothing early, given as None. Among equally
    cheap points, the first of the sweep.

    Raises:
        ValidationError: no points, an entry that is not a `FrontierPoint`, or a δ that is not
            a number in [0, 1].
    """
    _check_deltas(deltas, allow_empty=True)
    points = list(confidence_points)
    if not points or not all(isinstance(p, FrontierPoint) for p in points):
        raise ValidationError(
            "expected the FrontierPoints of a sweep of 'confidence' on the test trace, got "
            f"{'none' if not points else [type(p).__name__ for p in points][:5]}. Pass "
            "list(adaptix.sweep(test_trace, 'confidence', grid))."
        )
    return {
        delta: min(
            (p for p in points if p.early_accuracy is None or p.early_accuracy >= delta),
            key=lambda p: p.relative_cost,
            default=None,
        )
        for delta in deltas
    }


def oracle_costs(
    confidence_points: Sequence[FrontierPoint], deltas: Sequence[float]
) -> dict[float, float]:
    """Hindsight cost at each δ: the relative cost of `oracle_points` (1 where no threshold
    reaches δ: the oracle then exits nothing early).

    Raises:
        ValidationError: as `oracle_points`.
    """
    return {
        delta: 1.0 if point is None else point.relative_cost
        for delta, point in oracle_points(confidence_points, deltas).items()
    }


#: The criterion the hindsight oracle reads: confidence, whose thresholds the guarantee certifies.
ORACLE_CRITERION = "confidence"


def oracle_grid(
    deltas: Sequence[float], *, plugins: AdaptixPluginManager | None = None
) -> list[float]:
    """The hindsight oracle's confidence thresholds for the targets ``deltas``, sorted, each once.

    The union of: 0, 0.001, …, 1 (1001 points); 1 − 10^-k for k from 1 to 7 in 241 log steps
    (confidence crowds towards 1 on overconfident logits, where a linear grid has no point);
    the guarantee's candidate thresholds (``default_grid("confidence", …, CANDIDATES)``, so
    that the oracle is never dearer than a certified threshold that reaches δ on the test
    data); and each δ (the naive reading τ = δ).

    Raises:
        ValidationError: a δ that is not a number in [0, 1].
    """
    _check_deltas(deltas, allow_empty=True)
    linear = [i / 1000 for i in range(1001)]
    near_one = (1.0 - torch.logspace(-1.0, -7.0, 241, dtype=torch.float64)).tolist()
    candidates = default_grid(ORACLE_CRITERION, resolve_manager(plugins), CANDIDATES)
    return sorted({*linear, *near_one, *map(float, candidates), *map(float, deltas)})


def oracle_counts(
    trace: Trace, deltas: Sequence[float], *, plugins: AdaptixPluginManager | None = None
) -> ThresholdCounts:
    """`ORACLE_CRITERION` counted on ``trace`` at every threshold of `oracle_grid` (``deltas``):
    what `hindsight_oracle` reads.

    Raises:
        ValidationError: as `oracle_grid`, or ``trace`` is not a trace.
    """
    grid = oracle_grid(deltas, plugins=plugins)
    return count_thresholds(trace, ORACLE_CRITERION, grid, plugins=plugins)


def hindsight_oracle(
    test: Trace | ThresholdCounts,
    deltas: Sequence[float],
    *,
    plugins: AdaptixPluginManager | None = None,
) -> dict[float, float]:
    """The hindsight oracle's relative cost at each δ on the test data: `oracle_costs` of
    `ORACLE_CRITERION` at every threshold of `oracle_grid`.

    Args:
        test: a labelled trace of the test data, or its `oracle_counts` already made (e.g. a
            pool's minus a calibration split's, as the study does).
        deltas: the targets δ.
        plugins: the plugin manager (for the guarantee's candidate thresholds).

    Raises:
        ValidationError: an unlabelled trace, counts that are not `oracle_counts` for
            ``deltas``, or a δ that is not a number in [0, 1].
    """
    counts = (
        test if isinstance(test, ThresholdCounts) else oracle_counts(test, deltas, plugins=plugins)
    )
    grid = tuple(oracle_grid(deltas, plugins=plugins))
    if counts.criterion != ORACLE_CRITERION or counts.thresholds != grid:
        raise ValidationError(
            f"expected the counts of '{ORACLE_CRITERION}' at the {len(grid)} thresholds of "
            f"oracle_grid(deltas), got '{counts.criterion}' at {len(counts.thresholds)} "
            "thresholds. Count them with oracle_counts(test_trace, deltas)."
        )
    if not counts.labelled:
        raise ValidationError(
            "expected labelled test data for the hindsight oracle, got unlabelled counts: it "
            "reads the early accuracy."
        )
    return oracle_costs(counts.points(), deltas)


def control_summary(
    frontier: Frontier,
    criterion: str,
    deltas: Sequence[float],
    oracle: Mapping[float, float],
    *,
    plugins: AdaptixPluginManager | None = None,
) -> ControlSummary:
    """Control metrics of ``criterion`` in ``frontier`` over the δ grid ``deltas``.

    Each δ is read at the threshold that the criterion's declared `AccuracyReading` gives for
    it (``entropy``: τ = 1 − δ; ``confidence``, ``pcee``, ``pcee_ws``: τ = δ), so the sweep must
    hold those thresholds; ``oracle`` is what `oracle_costs` returned for the same grid.

    Args:
        frontier: a sweep holding ``criterion`` (and ``confidence``, for the naive comparison).
        criterion: a criterion with an accuracy reading.
        deltas: the δ grid, each in [0, 1].
        oracle: δ -> hindsight cost, for every δ of the grid.
        plugins: the plugin manager whose registry declares the reading (default: the shared one).

    Raises:
        ValidationError: an empty or out-of-range grid, a δ the oracle or the sweep lacks, or a
            criterion without an accuracy reading.
        PluginError: ``criterion`` is not registered.
    """
    _check_deltas(deltas, allow_empty=False)
    reading = _reading(criterion, plugins)
    by_threshold = {round(p.threshold, 9): p for p in frontier.of(criterion)}
    points = {}
    for delta in deltas:
        threshold = reading.threshold(delta)
        point = by_threshold.get(round(threshold, 9))
        if point is None:
            swept = [p.threshold for p in frontier.of(criterion)]
            raise ValidationError(
                f"expected the sweep of '{criterion}' to hold threshold {threshold:g} (what "
                f"δ = {delta:g} reads as), got thresholds {swept or 'none'}. Sweep it at "
                "accuracy_reading.threshold(δ) for every δ of the grid."
            )
        points[delta] = point
    return summarise_control(criterion, points, oracle, frontier.of("confidence"))


def summarise_control(
    criterion: str,
    points: Mapping[float, FrontierPoint],
    oracle: Mapping[float, float],
    confidence: Sequence[FrontierPoint] = (),
) -> ControlSummary:
    """Control metrics from the point each δ of a grid is read at: the one computation behind
    `control_summary` and any rule that picks its policy per δ another way (a certified
    policy of `adaptix.guarantee` per δ, simulated on the test split).

    Args:
        criterion: the name the summary carries.
        points: δ -> the point (early accuracy, relative cost, exit histogram) realised for it.
        oracle: δ -> hindsight cost (`oracle_costs`), for every δ of ``points``.
        confidence: points of ``confidence`` on the same data; those at τ = δ give the cost
            against the naive reading (none: `ControlSummary.mean_cost_vs_confidence` is None).

    Raises:
        ValidationError: no δ, a δ out of [0, 1] or missing from the oracle, or a point that is
            not a `FrontierPoint`.
    """
    deltas = list(points)
    _check_deltas(deltas, allow_empty=False)
    missing = [d for d in deltas if d not in oracle]
    if missing:
        raise ValidationError(
            f"expected a hindsight cost for every δ of the grid, got none for {missing}. Build "
            "the oracle with oracle_costs(confidence_points, deltas) on the same grid."
        )
    bad = {d: type(p).__name__ for d, p in points.items() if not isinstance(p, FrontierPoint)}
    if bad:
        raise ValidationError(
            f"expected a FrontierPoint for every δ, got {bad}. Build them from what "
            "adaptix.sweep or adaptix.simulate returned."
        )
    naive = {round(p.threshold, 9): p for p in confidence}
    per_delta: dict[float, tuple[float | None, float, float]] = {}
    violations, worst, worst_share, versus = 0, 0.0, 0.0, []
    for delta, point in points.items():
        early = point.early_accuracy
        if early is not None and early < delta:
            violations += 1
            if delta - early > worst:
                worst, worst_share = delta - early, point.early_exit_rate
        reference = naive.get(round(delta, 9))
        if reference is not None and reference.relative_cost > 0:
            versus.append(point.relative_cost / reference.relative_cost)
        regret = point.relative_cost / oracle[delta] if oracle[delta] > 0 else math.inf
        per_delta[delta] = (early, point.relative_cost, regret)
    costs = [v[1] for v in per_delta.values()]
    return ControlSummary(
        criterion=criterion,
        violation_rate=violations / len(deltas),
        worst_shortfall=worst,
        worst_shortfall_early_share=worst_share,
        mean_relative_cost=sum(costs) / len(costs),
        mean_cost_vs_confidence=sum(versus) / len(versus) if versus else None,
        mean_regret=sum(v[2] for v in per_delta.values()) / len(per_delta),
        per_delta=per_delta,
    )


def distinct_policies(exit_index: Tensor) -> int:
    """How many distinct behaviours a knob gives: distinct columns of exit indices ``[N, T]``.

    Column t is the exit every input takes at the t-th setting (δ) of the knob (what
    `adaptix.offline.statistics.exit_indices` returns, or `SimulationResult.exit_index` stacked).
    Two settings that send every input to the same exit are one policy, however their thresholds
    differ.

    Raises:
        ValidationError: ``exit_index`` is not a 2-D integer tensor.
    """
    if not (
        isinstance(exit_index, Tensor)
        and exit_index.dim() == 2
        and not exit_index.is_floating_point()
        and not exit_index.is_complex()
    ):
        got = (
            f"{exit_index.dtype} {tuple(exit_index.shape)}"
            if isinstance(exit_index, Tensor)
            else type(exit_index).__name__
        )
        raise ValidationError(
            f"expected exit indices as an integer tensor [inputs, settings], got {got}. Stack "
            "one column of exits per setting of the knob."
        )
    if exit_index.shape[1] == 0:
        return 0
    return int(torch.unique(exit_index, dim=1).shape[1])


def best_accuracy_within(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Highest accuracy among (cost, accuracy) points whose cost ≤ ``budget`` (None if none).

    Raises:
        ValidationError: ``budget`` or a point holds NaN or something that is not a number.
    """
    _check_curve(points, budget, "budget")
    feasible = [acc for cost, acc in points if cost <= budget * (1 + 1e-9)]
    return max(feasible) if feasible else None


def cheapest_reaching(points: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """Lowest cost among (cost, accuracy) points whose accuracy ≥ ``accuracy`` (None if none).

    Raises:
        ValidationError: ``accuracy`` or a point holds NaN or something that is not a number.
    """
    _check_curve(points, accuracy, "accuracy")
    feasible = [cost for cost, acc in points if acc >= accuracy]
    return min(feasible) if feasible else None


def _reading(criterion: str, plugins: AdaptixPluginManager | None) -> AccuracyReading:
    """The criterion's declared accuracy reading, or a ValidationError saying it has none."""
    reading = resolve_manager(plugins).criteria.get(criterion).accuracy_reading
    if reading is None:
        raise ValidationError(
            f"expected a criterion whose threshold reads as an accuracy target, got "
            f"'{criterion}', which declares no accuracy_reading: control against δ is undefined "
            "for it. Compare it on cost instead, or declare an AccuracyReading on its class."
        )
    return reading


def _check_deltas(deltas: Sequence[float], *, allow_empty: bool) -> None:
    try:
        for i, delta in enumerate(deltas):
            unit(delta, f"δ[{i}]", open_low=False, open_high=False)
        problem = "" if len(deltas) or allow_empty else "no δ"
    except ValidationError as err:
        problem = str(err)
    if problem:
        raise ValidationError(
            f"expected a grid of targets δ, numbers in [0, 1], got {list(deltas)!r} "
            f"({problem.rstrip('.')}). "
            "Pass e.g. [0.8, 0.85, 0.9]."
        )


def _check_curve(points: Sequence[tuple[float, float]], bound: float, name: str) -> None:
    real(bound, name, finite=False)
    for point in points:
        problem = "not a pair"
        if isinstance(point, Sequence) and len(point) == 2:
            try:
                real(point[0], "the cost", finite=False)
                real(point[1], "the accuracy", finite=False)
                continue
            except ValidationError as err:
                problem = str(err).rstrip(".")
        raise ValidationError(
            f"expected (cost, accuracy) pairs of numbers, got {point!r} ({problem}). Leave out "
            "points whose accuracy is undefined (None)."
        )
