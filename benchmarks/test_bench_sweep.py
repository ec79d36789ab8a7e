"""`sweep` against the straightforward loop of one `simulate` per threshold.

5 criteria × 200 thresholds (patience: the integers 1..200, through the mapping form) on a trace
of 10,000 inputs × 8 exits × 10 classes. Both sides are measured in the same run; the speed-up
is reported in the sweep benchmark's ``extra_info`` and at the end of the session, not asserted.
Each benchmark checks what its timed call returned against the other method.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

import adaptix

CRITERIA: dict[str, dict[str, int]] = {
    "confidence": {},
    "entropy": {},
    "patience": {},
    "pcee": {},
    "pcee_ws": {"window": 1},
}
POINTS = 200
GRIDS: dict[str, list[float]] = {
    name: torch.linspace(0.0, 1.0, POINTS, dtype=torch.float64).tolist()
    for name in CRITERIA
    if name != "patience"
}
GRIDS["patience"] = [float(t) for t in range(1, POINTS + 1)]
#: Every 20th threshold of each grid: 10 points a criterion checked against `simulate`.
SAMPLE = range(0, POINTS, 20)

#: accuracy, early accuracy, relative cost, exit histogram.
Point = tuple[float | None, float | None, float, tuple[float, ...]]


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One intra-op thread for both sides: on a shared two-core machine a second thread mostly
    measures how busy the neighbours are."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _simulate(trace, calibration, plugins, name: str, threshold: float) -> Point:
    pol = adaptix.policy(name, threshold, calibration, plugins=plugins, **CRITERIA[name])
    result = adaptix.simulate(trace, pol)
    histogram = tuple(result.exit_histogram.tolist())
    return result.accuracy, result.early_accuracy, result.relative_cost, histogram


def _assert_same(got: Point, expected: Point, where: str) -> None:
    assert got[0] == expected[0], where
    assert got[1] == expected[1], where
    assert got[2] == pytest.approx(expected[2], rel=1e-12), where
    assert got[3] == expected[3], where


def _record(benchmark, timings: dict[str, float], key: str) -> None:
    if not benchmark.disabled:
        timings[key] = benchmark.stats.stats.mean


def test_simulate_loop(benchmark, trace, calibration, plugins, timings) -> None:
    def loop() -> dict[str, list[Point]]:
        return {
            name: [_simulate(trace, calibration, plugins, name, t) for t in GRIDS[name]]
            for name in CRITERIA
        }

    # One round: the loop takes seconds, and its spread is small next to the gap it measures.
    results = benchmark.pedantic(loop, rounds=1, iterations=1, warmup_rounds=0)
    frontier = adaptix.sweep(trace, CRITERIA, GRIDS, calibration, plugins=plugins)
    for name in CRITERIA:
        for i in SAMPLE:
            point = frontier.of(name)[i]
            expected = (
                point.accuracy,
                point.early_accuracy,
                point.relative_cost,
                point.exit_histogram,
            )
            _assert_same(results[name][i], expected, f"{name} at {GRIDS[name][i]}")
    benchmark.extra_info["simulate_calls"] = sum(len(grid) for grid in GRIDS.values())
    _record(benchmark, timings, "simulate_loop")


def test_sweep(benchmark, trace, calibration, plugins, timings) -> None:
    frontier = benchmark(adaptix.sweep, trace, CRITERIA, GRIDS, calibration, plugins=plugins)
    assert len(frontier) == len(CRITERIA) * POINTS
    for name in CRITERIA:
        points = frontier.of(name)
        assert [p.threshold for p in points] == GRIDS[name]
        for i in SAMPLE:
            point = points[i]
            got = (point.accuracy, point.early_accuracy, point.relative_cost, point.exit_histogram)
            expected = _simulate(trace, calibration, plugins, name, GRIDS[name][i])
            _assert_same(got, expected, f"{name} at {GRIDS[name][i]}")
    _record(benchmark, timings, "sweep")
    if "simulate_loop" in timings and "sweep" in timings:
        ratio = timings["simulate_loop"] / timings["sweep"]
        benchmark.extra_info["speedup_vs_simulate_loop"] = round(ratio, 2)
        print(f"\nsweep speed-up over the per-threshold simulate loop: {ratio:.1f}x")
