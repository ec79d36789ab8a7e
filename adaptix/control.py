"""How well a criterion controls accuracy, and what scale buys: the metrics of ``PCEE.md``.

Control is judged on held-out test data over a grid of targets δ: violation rate, worst
shortfall, cost against the naive confidence reading (τ = δ), and regret against the hindsight
oracle (the cheapest confidence threshold whose early accuracy reaches δ on the test data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from adaptix.simulate import Frontier, FrontierPoint


def naive_threshold(criterion: str, delta: float) -> float:
    """The threshold a user would set for target δ when reading the criterion literally.

    ``confidence``, ``pcee`` and ``pcee_ws`` take δ itself; ``entropy`` takes 1 - δ (low
    entropy is high certainty). Other criteria have no accuracy reading.
    """
    if criterion == "entropy":
        return round(1.0 - delta, 12)
    return delta


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


def oracle_costs(
    confidence_points: Sequence[FrontierPoint], deltas: Sequence[float]
) -> dict[float, float]:
    """Hindsight cost at each δ: the cheapest confidence threshold with early accuracy ≥ δ.

    ``confidence_points`` should be a dense sweep of ``confidence`` on the test trace itself.
    Where no threshold reaches δ, the oracle exits nothing early: relative cost 1.
    """
    result = {}
    for delta in deltas:
        feasible = [
            p.relative_cost
            for p in confidence_points
            if p.early_accuracy is None or p.early_accuracy >= delta
        ]
        result[delta] = min(feasible) if feasible else 1.0
    return result


def control_summary(
    frontier: Frontier,
    criterion: str,
    deltas: Sequence[float],
    oracle: Mapping[float, float],
) -> ControlSummary:
    """Control metrics of ``criterion`` in ``frontier``, read at the naive threshold for each δ."""
    by_threshold = {round(p.threshold, 9): p for p in frontier.of(criterion)}
    confidence = {round(p.threshold, 9): p for p in frontier.of("confidence")}
    per_delta: dict[float, tuple[float | None, float, float]] = {}
    violations, worst, worst_share, versus = 0, 0.0, 0.0, []
    for delta in deltas:
        point = by_threshold.get(round(naive_threshold(criterion, delta), 9))
        if point is None:
            raise KeyError(
                f"sweep of '{criterion}' lacks threshold {naive_threshold(criterion, delta)} "
                f"for δ = {delta}"
            )
        early = point.early_accuracy
        if early is not None and early < delta:
            violations += 1
            if delta - early > worst:
                worst, worst_share = delta - early, point.early_exit_rate
        naive = confidence.get(round(delta, 9))
        if naive is not None and naive.relative_cost > 0:
            versus.append(point.relative_cost / naive.relative_cost)
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


def best_accuracy_within(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """Highest accuracy among (cost, accuracy) points whose cost ≤ ``budget`` (None if none)."""
    feasible = [acc for cost, acc in points if cost <= budget * (1 + 1e-9)]
    return max(feasible) if feasible else None


def cheapest_reaching(points: Sequence[tuple[float, float]], accuracy: float) -> float | None:
    """Lowest cost among (cost, accuracy) points whose accuracy ≥ ``accuracy`` (None if none)."""
    feasible = [cost for cost, acc in points if acc >= accuracy]
    return min(feasible) if feasible else None
