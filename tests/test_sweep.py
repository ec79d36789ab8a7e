"""`sweep` against `simulate` point by point, monotone thresholds, grids and the `Frontier`."""

from __future__ import annotations

import csv
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import adaptix
from adaptix import PluginError, ValidationError
from adaptix.default_plugins.criteria import Confidence
from adaptix.testing import synthetic_trace

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: The mapping form: pcee_ws with a non-default window.
CRITERIA = {"confidence": {}, "entropy": {}, "patience": {}, "pcee": {}, "pcee_ws": {"window": 2}}


def _grids(data: st.DataObject, trace: adaptix.Trace) -> dict[str, list[float]]:
    """Random grids with exact scores mixed in (ties with the threshold), patience integers."""
    scores = adaptix.core.scores.confidence_and_prediction(trace.logits)[0].flatten().tolist()
    unit = st.floats(0.0, 1.0) | st.sampled_from(scores)
    grids: dict[str, list[float]] = {
        name: data.draw(st.lists(unit, min_size=1, max_size=8), label=f"{name} grid")
        for name in ("confidence", "entropy", "pcee", "pcee_ws")
    }
    patience = st.lists(st.integers(1, trace.num_exits + 1), min_size=1, max_size=6)
    grids["patience"] = data.draw(patience, label="patience grid")
    return grids


def _calibration(data: st.DataObject, traces, trace: adaptix.Trace, plugins):
    held_out = data.draw(
        traces(num_exits=trace.num_exits, num_classes=trace.num_classes), label="held out"
    )
    bins = data.draw(st.integers(1, 12), label="bins")
    return adaptix.calibrate(held_out, bins=bins, plugins=plugins)


def _same_point(point: adaptix.FrontierPoint, result: adaptix.SimulationResult) -> None:
    assert point.accuracy == result.accuracy
    assert point.early_accuracy == result.early_accuracy
    assert point.exit_histogram == tuple(result.exit_histogram.tolist())
    assert point.early_exit_rate == pytest.approx(result.early_exit_rate, abs=1e-12)
    assert point.relative_cost == pytest.approx(result.relative_cost, rel=1e-12)
    assert point.mean_cost == pytest.approx(result.mean_cost, rel=1e-12)


@SETTINGS
@given(data=st.data())
def test_sweep_equals_simulate_point_by_point(data, traces, plugins) -> None:
    trace = data.draw(traces(labelled=None), label="trace")
    calibration = _calibration(data, traces, trace, plugins)
    grids = _grids(data, trace)
    frontier = adaptix.sweep(trace, CRITERIA, grids, calibration, plugins=plugins)
    assert frontier.criteria() == list(CRITERIA)
    for name, params in CRITERIA.items():
        points = frontier.of(name)
        assert [p.threshold for p in points] == [float(t) for t in grids[name]]
        for point in points:
            pol = adaptix.policy(name, point.threshold, calibration, plugins=plugins, **params)
            _same_point(point, adaptix.simulate(trace, pol))


@pytest.mark.parametrize("name", list(CRITERIA))
@SETTINGS
@given(data=st.data())
def test_a_stricter_threshold_never_exits_earlier(name, data, traces, plugins) -> None:
    trace = data.draw(traces(labelled=None, min_exits=2), label="trace")
    calibration = _calibration(data, traces, trace, plugins)
    if name == "patience":
        grid = sorted(data.draw(st.lists(st.integers(1, 6), min_size=2, max_size=5)))
    else:
        grid = sorted(data.draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=5)))
    pol = adaptix.policy(name, grid[0], calibration, plugins=plugins, **CRITERIA[name])
    if pol.criterion.direction == "le":
        grid.reverse()  # entropy: smaller is stricter
    results = [adaptix.simulate(trace, pol.with_threshold(t)) for t in grid]
    for loose, strict in pairwise(results):
        assert bool((strict.exit_index >= loose.exit_index).all())
        assert strict.relative_cost >= loose.relative_cost


def test_default_grids(plugins) -> None:
    trace = synthetic_trace(100, 4, 5)
    frontier = adaptix.sweep(trace, ["confidence", "entropy", "patience"], plugins=plugins)
    confidence = [p.threshold for p in frontier.of("confidence")]
    entropy = [p.threshold for p in frontier.of("entropy")]
    # Half linear, half crowding towards certainty (1 for confidence, 0 for entropy).
    assert confidence == sorted(set(confidence))
    assert confidence[0] == 0.0
    assert confidence[-1] == 1.0
    assert len(confidence) == 50
    assert sum(t > 0.99 for t in confidence) >= 15
    assert entropy == pytest.approx(sorted(1.0 - t for t in confidence), abs=1e-12)
    pcee = adaptix.get_plugin_manager().criteria.get("pcee").default_thresholds()
    assert pcee == torch.linspace(0.0, 1.0, 50, dtype=torch.float64).tolist()
    assert [p.threshold for p in frontier.of("patience")] == [float(t) for t in range(1, 51)]
    # A name missing from a mapping of grids gets its default grid too.
    partial = adaptix.sweep(trace, ["confidence", "patience"], {"patience": [2]}, plugins=plugins)
    assert [p.threshold for p in partial.of("patience")] == [2.0]
    assert len(partial.of("confidence")) == 50


def test_one_grid_for_every_criterion_and_a_tensor_grid(plugins) -> None:
    trace = synthetic_trace(60, 3, 4)
    grid = torch.tensor([0.2, 0.6, 0.9])
    frontier = adaptix.sweep(trace, ["confidence", "entropy"], grid, plugins=plugins)
    assert [p.criterion for p in frontier] == ["confidence"] * 3 + ["entropy"] * 3
    assert [p.threshold for p in frontier.of("entropy")] == [float(v) for v in grid.tolist()]


def test_sweep_without_labels(plugins) -> None:
    labelled = synthetic_trace(80, 4, 5, seed=3)
    unlabelled = synthetic_trace(80, 4, 5, seed=3, labelled=False)
    grids = {"confidence": [0.3, 0.7], "patience": [1, 2]}
    frontier = adaptix.sweep(unlabelled, list(grids), grids, plugins=plugins)
    reference = adaptix.sweep(labelled, list(grids), grids, plugins=plugins)
    assert len(frontier) == 4
    for point, known in zip(frontier, reference, strict=True):
        assert (point.accuracy, point.early_accuracy) == (None, None)
        assert known.accuracy is not None
        assert point.exit_histogram == known.exit_histogram
        assert point.relative_cost == known.relative_cost


def test_a_single_exit_trace(plugins) -> None:
    trace = synthetic_trace(10, 1, 3)
    frontier = adaptix.sweep(trace, "confidence", [0.0, 1.0], plugins=plugins)
    assert [p.exit_histogram for p in frontier] == [(1.0,), (1.0,)]
    assert [p.early_accuracy for p in frontier] == [None, None]


def test_records_and_csv(tmp_path: Path, plugins) -> None:
    trace = synthetic_trace(50, 3, 4)
    frontier = adaptix.sweep(trace, "confidence", [0.5, 0.9], plugins=plugins)
    records = frontier.records()
    assert [r["threshold"] for r in records] == [0.5, 0.9]
    assert set(records[0]) >= {"criterion", "accuracy", "exit_share_0", "exit_share_2"}
    with frontier.to_csv(tmp_path / "frontier.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [float(r["relative_cost"]) for r in rows] == [r["relative_cost"] for r in records]
    assert "Frontier(2 points" in repr(frontier)


def test_bad_sweeps_are_refused(plugins) -> None:
    trace = synthetic_trace(20, 3, 4)
    with pytest.raises(ValidationError, match="distinct criterion names"):
        adaptix.sweep(trace, ["confidence", "confidence"], [0.5], plugins=plugins)
    with pytest.raises(PluginError, match="unknown criterion 'confidnce'"):
        adaptix.sweep(trace, ["confidnce"], [0.5], plugins=plugins)
    with pytest.raises(ValidationError, match="integer threshold"):
        adaptix.sweep(trace, "patience", [1, 1.5], plugins=plugins)
    with pytest.raises(ValidationError, match=r"adaptix\.Trace"):
        adaptix.sweep(trace.logits, "confidence", [0.5], plugins=plugins)


@pytest.mark.parametrize(
    ("criteria", "thresholds", "message"),
    [
        ("confidence", [], r"expected thresholds to hold at least one threshold"),
        ("confidence", torch.tensor([]), r"at least one threshold, got an empty Tensor"),
        (
            ["confidence", "entropy"],
            {"confidence": [0.5], "entropy": []},
            r"expected thresholds\['entropy'\] to hold at least one threshold",
        ),
        ([], [0.5], "at least one criterion to sweep, got none"),
        ({}, None, "at least one criterion to sweep, got none"),
        (3, [0.5], "expected criteria as a name, a list of names or a mapping"),
        ([1], [0.5], r"expected criterion names \(str\), got \[1\]"),
        ({1: {}}, [0.5], r"expected criterion names \(str\), got \[1\]"),
        ("confidence", 0.5, "as a list of thresholds, got float 0.5. For a single threshold"),
        ("confidence", "0.5", "as a list of thresholds, got str"),
        ("confidence", [0.5, math.nan], "NaN threshold"),
        ("confidence", [0.5, "0.9"], "real threshold, got '0.9'"),
        ("confidence", [None], "real threshold, got None"),
        ({"pcee": {"window": -1}}, [0.5], r"criterion 'pcee'\.window: Extra inputs"),
    ],
    ids=[
        "empty-shared-grid",
        "empty-tensor-grid",
        "empty-grid-of-one-criterion",
        "no-criteria-list",
        "no-criteria-mapping",
        "criteria-not-a-sequence",
        "criterion-not-a-string",
        "mapping-key-not-a-string",
        "bare-threshold",
        "string-grid",
        "nan-threshold",
        "string-threshold",
        "none-threshold",
        "unknown-parameter",
    ],
)
def test_a_sweep_that_would_be_empty_partial_or_garbled_is_refused(
    plugins, criteria, thresholds, message
) -> None:
    trace = synthetic_trace(20, 3, 4)
    calibration = adaptix.calibrate(trace, plugins=plugins)
    with pytest.raises(ValidationError, match=message):
        adaptix.sweep(trace, criteria, thresholds, calibration, plugins=plugins)


def test_repeated_thresholds_give_repeated_points(plugins) -> None:
    trace = synthetic_trace(20, 3, 4)
    frontier = adaptix.sweep(trace, "confidence", [0.5, 0.5], plugins=plugins)
    assert [p.threshold for p in frontier] == [0.5, 0.5]
    assert frontier[0] == frontier[1]


class NoDefaults(Confidence):
    name = "no_defaults"

    @classmethod
    def default_thresholds(cls, count: int = 50) -> list[float]:
        return []


def test_a_criterion_without_default_thresholds_is_a_plugin_error(manager_with) -> None:
    manager = manager_with(NoDefaults, name="stingy")
    trace = synthetic_trace(20, 3, 4)
    with pytest.raises(PluginError, match="'no_defaults' from plugin 'stingy' gives no usable"):
        adaptix.sweep(trace, "no_defaults", plugins=manager)
    assert len(adaptix.sweep(trace, "no_defaults", [0.5], plugins=manager)) == 1


def test_csv_goes_into_a_new_directory_and_never_onto_a_directory(tmp_path: Path, plugins) -> None:
    frontier = adaptix.sweep(synthetic_trace(20, 3, 4), "confidence", [0.5], plugins=plugins)
    target = frontier.to_csv(tmp_path / "new" / "frontier.csv")
    assert target.read_text().splitlines()[0].startswith("criterion,threshold,")
    with pytest.raises(ValidationError, match="got the directory"):
        frontier.to_csv(tmp_path / "new")
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["frontier.csv"]
