"""Control and scale metrics of PCEE.md on hand-built frontiers."""

from __future__ import annotations

import pytest

from adaptix.control import (
    best_accuracy_within,
    cheapest_reaching,
    control_summary,
    naive_threshold,
    oracle_costs,
)
from adaptix.simulate import Frontier, FrontierPoint


def _point(criterion: str, threshold: float, early: float | None, cost: float) -> FrontierPoint:
    early_share = 0.0 if early is None else 1.0 - cost
    return FrontierPoint(
        criterion, threshold, 0.8, early, cost, cost, (early_share, 1 - early_share)
    )


def test_violations_shortfall_cost_and_regret() -> None:
    points = [
        _point("confidence", 0.8, 0.75, 0.4),  # violates δ = 0.8 by 5 points
        _point("confidence", 0.9, 0.93, 0.6),
        _point("pcee", 0.8, 0.85, 0.5),
        _point("pcee", 0.9, None, 1.0),  # nothing exits early: no violation
    ]
    frontier = Frontier(points, [1.0, 2.0])
    oracle = oracle_costs(frontier.of("confidence"), [0.8, 0.9])
    assert oracle == {0.8: 0.6, 0.9: 0.6}  # 0.4 misses 0.8; 0.6 reaches both
    confidence = control_summary(frontier, "confidence", [0.8, 0.9], oracle)
    assert confidence.violation_rate == 0.5
    assert confidence.worst_shortfall == pytest.approx(0.05)
    assert confidence.worst_shortfall_early_share == pytest.approx(0.6)
    assert confidence.mean_cost_vs_confidence == 1.0
    pcee = control_summary(frontier, "pcee", [0.8, 0.9], oracle)
    assert pcee.violation_rate == 0.0
    assert pcee.worst_shortfall == 0.0
    assert pcee.mean_cost_vs_confidence == pytest.approx((0.5 / 0.4 + 1.0 / 0.6) / 2)
    assert pcee.mean_regret == pytest.approx((0.5 / 0.6 + 1.0 / 0.6) / 2)


def test_oracle_without_a_feasible_threshold_exits_nothing() -> None:
    assert oracle_costs([_point("confidence", 0.5, 0.6, 0.3)], [0.9]) == {0.9: 1.0}


def test_a_missing_threshold_is_reported() -> None:
    frontier = Frontier([_point("pcee", 0.8, 0.9, 0.5)], [1.0, 2.0])
    with pytest.raises(KeyError, match=r"lacks threshold 0\.9"):
        control_summary(frontier, "pcee", [0.9], {0.9: 1.0})


def test_naive_reading_and_budget_helpers() -> None:
    assert naive_threshold("entropy", 0.9) == pytest.approx(0.1)
    assert naive_threshold("pcee", 0.9) == 0.9
    curve = [(1.0, 0.80), (2.0, 0.85), (3.0, 0.90)]
    assert best_accuracy_within(curve, 2.5) == 0.85
    assert best_accuracy_within(curve, 0.5) is None
    assert cheapest_reaching(curve, 0.84) == 2.0
    assert cheapest_reaching(curve, 0.95) is None
