"""Control and scale metrics of PCEE.md on hand-built frontiers, and the accuracy readings
that criteria declare for them."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

import adaptix
from adaptix import PluginError, ValidationError
from adaptix.components import AccuracyReading
from adaptix.offline.control import (
    best_accuracy_within,
    cheapest_reaching,
    control_summary,
    distinct_policies,
    hindsight_oracle,
    oracle_costs,
    oracle_counts,
    oracle_grid,
    oracle_points,
    summarise_control,
)
from adaptix.offline.frontier import Frontier, FrontierPoint
from adaptix.testing import synthetic_trace


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


def test_per_delta_points_of_another_rule_share_the_computation() -> None:
    """A rule that picks its point per δ (a certified policy per δ) is summarised like a sweep:
    the same points give the same summary, whatever their thresholds."""
    sweep_points = [
        _point("confidence", 0.8, 0.75, 0.4),
        _point("confidence", 0.9, 0.93, 0.6),
        _point("pcee", 0.8, 0.78, 0.5),
        _point("pcee", 0.9, None, 1.0),
    ]
    frontier = Frontier(sweep_points, [1.0, 2.0])
    oracle = {0.8: 0.6, 0.9: 0.6}
    swept = control_summary(frontier, "pcee", [0.8, 0.9], oracle)
    chosen = {  # the same points, reached at thresholds of their own
        0.8: _point("certified", 0.31, 0.78, 0.5),
        0.9: _point("certified", 0.77, None, 1.0),
    }
    summary = summarise_control("certified", chosen, oracle, frontier.of("confidence"))
    assert summary.criterion == "certified"
    assert (summary.violation_rate, summary.per_delta) == (swept.violation_rate, swept.per_delta)
    assert summary.worst_shortfall == pytest.approx(0.02)
    assert summary.worst_shortfall_early_share == pytest.approx(0.5)
    assert summary.mean_cost_vs_confidence == swept.mean_cost_vs_confidence
    assert summary.mean_regret == pytest.approx((0.5 / 0.6 + 1.0 / 0.6) / 2)
    assert summarise_control("certified", chosen, oracle).mean_cost_vs_confidence is None


@pytest.mark.parametrize(
    ("points", "oracle", "message"),
    [
        ({}, {}, "grid of targets"),
        ({0.9: _point("x", 0.5, 0.9, 0.5)}, {}, r"none for \[0\.9\]"),
        ({0.9: (0.9, 0.5)}, {0.9: 0.5}, r"FrontierPoint for every δ, got \{0\.9: 'tuple'\}"),
        ({1.5: _point("x", 0.5, 0.9, 0.5)}, {1.5: 0.5}, "grid of targets"),
    ],
    ids=["empty", "oracle-missing", "not-a-point", "delta-out-of-range"],
)
def test_bad_per_delta_points_are_validation_errors(
    points: dict[float, Any], oracle: dict[float, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        summarise_control("x", points, oracle)


def test_distinct_policies_count_distinct_behaviours_not_thresholds() -> None:
    exits = torch.tensor([[0, 0, 1, 0], [2, 2, 2, 1], [1, 1, 1, 1]])  # [inputs, settings]
    assert distinct_policies(exits) == 3  # settings 0 and 1 send every input to the same exit
    assert distinct_policies(exits[:, :2]) == 1
    assert distinct_policies(torch.zeros(5, 0, dtype=torch.long)) == 0
    for bad in (exits.double(), exits[0], [[0, 1]]):
        with pytest.raises(ValidationError, match=r"integer tensor \[inputs, settings\]"):
            distinct_policies(bad)  # type: ignore[arg-type]


def test_oracle_without_a_feasible_threshold_exits_nothing() -> None:
    assert oracle_costs([_point("confidence", 0.5, 0.6, 0.3)], [0.9]) == {0.9: 1.0}
    assert oracle_points([_point("confidence", 0.5, 0.6, 0.3)], [0.9]) == {0.9: None}


def test_the_oracle_point_is_the_cheapest_reaching_delta_first_of_equal_costs() -> None:
    points = [
        _point("confidence", 0.1, 0.84, 0.2),
        _point("confidence", 0.2, 0.84, 0.2),  # same cost: the first one is kept
        _point("confidence", 0.5, 0.9, 0.4),
        _point("confidence", 1.0, None, 1.0),
    ]
    oracle = oracle_points(points, [0.8, 0.85, 0.95])
    assert oracle == {0.8: points[0], 0.85: points[2], 0.95: points[3]}
    assert oracle_costs(points, [0.8, 0.85, 0.95]) == {0.8: 0.2, 0.85: 0.4, 0.95: 1.0}


def test_a_missing_threshold_is_a_validation_error() -> None:
    frontier = Frontier([_point("pcee", 0.8, 0.9, 0.5)], [1.0, 2.0])
    with pytest.raises(ValidationError, match=r"hold threshold 0\.9 .*got thresholds \[0\.8\]"):
        control_summary(frontier, "pcee", [0.9], {0.9: 1.0})


def test_entropy_is_read_at_one_minus_delta() -> None:
    frontier = Frontier(
        [_point("entropy", 0.1, 0.95, 0.5), _point("entropy", 0.2, 0.75, 0.3)], [1.0, 2.0]
    )
    summary = control_summary(frontier, "entropy", [0.8, 0.9], {0.8: 0.5, 0.9: 0.5})
    assert summary.per_delta == {0.8: (0.75, 0.3, 0.6), 0.9: (0.95, 0.5, 1.0)}
    assert summary.violation_rate == 0.5


BAD_CONTROL_CALLS: dict[str, tuple[dict[str, Any], str]] = {
    "delta missing from the oracle": ({"oracle": {0.8: 0.5}}, r"no.* for \[0\.9\]"),
    "empty grid": ({"deltas": []}, "grid of targets"),
    "NaN delta": ({"deltas": [0.8, math.nan]}, "grid of targets"),
    "delta above 1": ({"deltas": [0.8, 1.5]}, "grid of targets"),
    "delta as text": ({"deltas": ["0.8"]}, "grid of targets"),
    "no accuracy reading": ({"criterion": "patience"}, "'patience', which declares no"),
}


@pytest.mark.parametrize("case", list(BAD_CONTROL_CALLS))
def test_bad_control_calls_are_validation_errors(case: str) -> None:
    frontier = Frontier(
        [_point(c, t, 0.9, 0.5) for c in ("pcee", "patience") for t in (0.8, 0.9)], [1.0, 2.0]
    )
    arguments: dict[str, Any] = {
        "criterion": "pcee",
        "deltas": [0.8, 0.9],
        "oracle": {0.8: 0.5, 0.9: 0.5},
    }
    updates, message = BAD_CONTROL_CALLS[case]
    arguments.update(updates)
    with pytest.raises(ValidationError, match=message):
        control_summary(frontier, **arguments)


def test_an_unknown_criterion_is_a_plugin_error() -> None:
    frontier = Frontier([_point("pcee", 0.8, 0.9, 0.5)], [1.0, 2.0])
    with pytest.raises(PluginError, match="unknown criterion 'pcie'"):
        control_summary(frontier, "pcie", [0.8], {0.8: 1.0})


@pytest.mark.parametrize(
    "points",
    [[], [("confidence", 0.5, 0.3)]],
    ids=["empty", "not-frontier-points"],
)
def test_an_oracle_without_frontier_points_is_a_validation_error(points: list[Any]) -> None:
    with pytest.raises(ValidationError, match="FrontierPoints of a sweep"):
        oracle_costs(points, [0.9])


def test_budget_helpers_refuse_nan_and_non_numbers() -> None:
    curve = [(1.0, 0.80), (2.0, 0.85)]
    with pytest.raises(ValidationError, match="budget to be a finite real number"):
        best_accuracy_within(curve, math.nan)
    with pytest.raises(ValidationError, match="accuracy to be a finite real number"):
        cheapest_reaching(curve, math.nan)
    with pytest.raises(ValidationError, match=r"\(cost, accuracy\) pairs"):
        best_accuracy_within([(1.0, math.nan)], 2.0)
    with pytest.raises(ValidationError, match=r"\(cost, accuracy\) pairs"):
        cheapest_reaching([(1.0, None)], 0.5)  # type: ignore[list-item]
    assert best_accuracy_within(curve, math.inf) == 0.85


def test_budget_helpers() -> None:
    curve = [(1.0, 0.80), (2.0, 0.85), (3.0, 0.90)]
    assert best_accuracy_within(curve, 2.5) == 0.85
    assert best_accuracy_within(curve, 0.5) is None
    assert cheapest_reaching(curve, 0.84) == 2.0
    assert cheapest_reaching(curve, 0.95) is None


def test_builtin_criteria_declare_their_accuracy_reading() -> None:
    criteria = adaptix.get_plugin_manager().criteria
    readings = {name: criteria.get(name).accuracy_reading for name in criteria.names()}
    assert readings["confidence"] == AccuracyReading(is_target=False)
    assert readings["entropy"] == AccuracyReading(complement=True)
    assert readings["pcee"] == readings["pcee_ws"] == AccuracyReading(is_target=True)
    assert readings["pcee_lcb"] == AccuracyReading(is_target=True)
    assert readings["patience"] is None
    entropy = readings["entropy"]
    assert entropy is not None
    assert entropy.threshold(0.9) == 0.1  # exactly: 1 - 0.9 is 0.09999999999999998
    assert entropy.target(0.1) == 0.9
    for delta in (math.nan, -0.1, 1.5, "0.9", True):
        with pytest.raises(ValidationError, match=r"accuracy target δ (in \[0, 1\]|to be a)"):
            entropy.threshold(delta)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", adaptix.get_plugin_manager().criteria.names())
def test_every_reading_is_invertible_and_gives_valid_thresholds(name: str) -> None:
    criterion = adaptix.get_plugin_manager().criteria.get(name)
    reading = criterion.accuracy_reading
    if reading is None:
        pytest.skip(f"{name} has no accuracy reading")
    for delta in [0.0, 0.33, 0.5, 0.9, 0.99, 1.0]:
        threshold = reading.threshold(delta)
        assert criterion.validate_threshold(threshold) == threshold
        assert reading.target(threshold) == pytest.approx(delta, abs=1e-12)


def test_the_hindsight_oracle_is_the_cheapest_point_of_its_one_grid() -> None:
    """One oracle: confidence swept over `oracle_grid`, from a trace or from its counts."""
    trace = synthetic_trace(300, 4, 5, seed=2)
    deltas = (0.6, 0.8, 0.95)
    grid = oracle_grid(deltas)
    assert grid == sorted(set(grid))
    assert {0.0, 0.001, 0.5, 1.0, *deltas} <= set(grid)
    assert max(g for g in grid if g < 1) > 0.999999  # 1 − 10^-k crowds towards 1
    assert set(adaptix.Certifier(trace, "confidence").thresholds) <= set(grid)
    expected = oracle_costs(list(adaptix.sweep(trace, "confidence", grid)), deltas)
    assert hindsight_oracle(trace, deltas) == expected
    assert hindsight_oracle(oracle_counts(trace, deltas), deltas) == expected
    with pytest.raises(ValidationError, match="oracle_grid"):
        hindsight_oracle(oracle_counts(trace, deltas), (0.6, 0.8005))  # another δ, another grid
